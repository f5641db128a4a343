package watch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

type quiet struct{}

func (quiet) Infof(string, ...interface{})  {}
func (quiet) Errorf(string, ...interface{}) {}
func (quiet) Fatalf(f string, a ...interface{}) {
	panic(fmt.Sprintf(f, a...))
}

// fixture is a real store feeding a hub, as the shard does.
type fixture struct {
	t     *testing.T
	store *mvcc.Store
	hub   *Hub
}

func newFixture(t *testing.T) *fixture {
	db, err := pebble.Open("", mvcc.PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quiet{}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := mvcc.Open(db, mvcc.Options{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, store: s, hub: NewHub(s.Rev())}
}

func (f *fixture) put(k, v string) {
	b := f.store.NewBatch()
	defer b.Close()
	if _, err := b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(v)}, 0); err != nil {
		f.t.Fatal(err)
	}
	evs := b.TakeEvents()
	if err := b.Commit(); err != nil {
		f.t.Fatal(err)
	}
	f.hub.Notify(f.store.Rev(), evs)
}

// pump runs catch-up until the hub has no more work, as the node's pump.
func (f *fixture) pump() {
	for {
		more, err := f.hub.Catchup(f.store, 3)
		if err != nil {
			f.t.Fatal(err)
		}
		if !more {
			return
		}
	}
}

func drain(t *testing.T, s *Stream) []*pb.WatchResponse {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestSlowStreamLosesNothing: a stream whose queue holds one response
// falls behind while writes keep being notified (Notify never blocks), then
// catches up from the store: every event once, in order; a fast stream on
// the same hub gets every event live.
func TestSlowStreamLosesNothing(t *testing.T) {
	f := newFixture(t)
	slow, fast := f.hub.NewStream(1), f.hub.NewStream(1000)
	slow.Create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	fast.Create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	drain(t, slow)
	drain(t, fast)
	const n = 50
	for i := 0; i < n; i++ {
		f.put(fmt.Sprintf("k%02d", i%7), fmt.Sprint(i))
	}
	var fastRevs []int64
	for _, r := range drain(t, fast) {
		for _, e := range r.Events {
			fastRevs = append(fastRevs, e.Kv.ModRevision)
		}
	}
	var slowRevs []int64
	for len(slowRevs) < n {
		f.pump()
		for _, r := range drain(t, slow) {
			for _, e := range r.Events {
				slowRevs = append(slowRevs, e.Kv.ModRevision)
			}
		}
	}
	for i := 0; i < n; i++ {
		if fastRevs[i] != int64(i+2) || slowRevs[i] != int64(i+2) {
			t.Fatalf("event %d: fast rev %d, slow rev %d, want %d", i, fastRevs[i], slowRevs[i], i+2)
		}
	}
	if len(fastRevs) != n || len(slowRevs) != n {
		t.Fatalf("fast got %d, slow got %d events, want %d", len(fastRevs), len(slowRevs), n)
	}
	// Caught up: the slow watcher is synced again and gets live events.
	f.put("k99", "live")
	rs := drain(t, slow)
	if len(rs) != 1 || len(rs[0].Events) != 1 || string(rs[0].Events[0].Kv.Key) != "k99" {
		t.Fatalf("after catch-up: %v", rs)
	}
}

// TestCreateRefusals: etcd's refusals of a create request.
func TestCreateRefusals(t *testing.T) {
	f := newFixture(t)
	s := f.hub.NewStream(10)
	for _, tc := range []struct {
		req    *pb.WatchCreateRequest
		reason string
	}{
		{&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")}, "mvcc: watcher range is empty"},
		{&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: -1}, "etcdserver: mvcc: required revision has been compacted"},
		{&pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7}, ""},
		{&pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7}, "mvcc: duplicate watch ID provided on the WatchStream"},
	} {
		r := s.Create(tc.req)
		if r.CancelReason != tc.reason || r.Canceled != (tc.reason != "") || !r.Created {
			t.Fatalf("%v: %v", tc.req, r)
		}
		if tc.reason != "" && r.WatchId != -1 {
			t.Fatalf("refused create has watch id %d", r.WatchId)
		}
	}
	if r := s.Create(&pb.WatchCreateRequest{Key: []byte("a")}); r.WatchId != 0 {
		t.Fatalf("first automatic id %d, want 0", r.WatchId)
	}
	_ = mvccpb.PUT
}

// TestSkip: a hub that jumps to the revision its feed starts at (a mirror
// of a range held elsewhere) catches up, from the history, the watchers
// that lacked the revisions up to it, and keeps synced those that start
// above it.
func TestSkip(t *testing.T) {
	f := newFixture(t)
	for i := range 5 {
		b := f.store.NewBatch()
		if _, err := b.Put(&pb.PutRequest{Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte("v")}, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	mirror := NewHub(0) // knows nothing of the store's writes yet
	low, high := mirror.NewStream(100), mirror.NewStream(100)
	low.Create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l"), StartRevision: 3})
	high.Create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l"), StartRevision: 7})
	drain(t, low)
	drain(t, high)
	mirror.Skip(f.store.Rev())
	select {
	case <-mirror.Pending():
	default:
		t.Fatal("Skip left no catch-up work")
	}
	for more := true; more; {
		var err error
		if more, err = mirror.Catchup(f.store, 100); err != nil {
			t.Fatal(err)
		}
	}
	var revs []int64
	for _, r := range drain(t, low) {
		for _, e := range r.Events {
			revs = append(revs, e.Kv.ModRevision)
		}
	}
	if fmt.Sprint(revs) != "[3 4 5 6]" {
		t.Fatalf("caught up %v, want [3 4 5 6]", revs)
	}
	ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("k9"), ModRevision: 7}}
	mirror.Notify(7, []*mvccpb.Event{ev})
	for name, s := range map[string]*Stream{"low": low, "high": high} {
		if rs := drain(t, s); len(rs) != 1 || len(rs[0].Events) != 1 || rs[0].Events[0].Kv.ModRevision != 7 {
			t.Fatalf("%s after Skip: %v", name, rs)
		}
	}
}
