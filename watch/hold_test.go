package watch

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

func ev(key string, rev int64) *mvccpb.Event {
	return &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev, CreateRevision: rev, Version: 1}}
}

func heldRevs(rs []*pb.WatchResponse) (revs [][]int64) {
	for _, r := range rs {
		var rr []int64
		for _, e := range r.Events {
			rr = append(rr, e.Kv.ModRevision)
		}
		if rr != nil {
			revs = append(revs, rr)
		}
	}
	return revs
}

// TestApplyHolds: events above the hold wait, the hub's revision and its
// closed revisions (Advance) stop at it, and when it lifts the held events
// go out in revision order, each revision's in one response, whatever the
// order they came in.
func TestApplyHolds(t *testing.T) {
	h := NewHub(10)
	s := h.NewStream(100)
	s.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
	drain(t, s)
	h.Apply(11, []*mvccpb.Event{ev("b", 11)}, 12) // at or below the hold: out
	h.Apply(15, []*mvccpb.Event{ev("c", 15)}, 12) // above: held
	h.Advance(16)
	if got := h.Rev(); got != 12 {
		t.Fatalf("hub at %d, want the hold, 12", got)
	}
	if got := heldRevs(drain(t, s)); len(got) != 1 || got[0][0] != 11 {
		t.Fatalf("got %v, want [[11]]", got)
	}
	ch := make(chan struct{}, 1)
	h.WaitRev(13, ch)
	// The commit at 13 applies after 15 (one batch: 14, then 13, 13).
	h.Apply(14, []*mvccpb.Event{ev("d", 14), ev("e", 13), ev("f", 13)}, NoHold)
	if got := h.Rev(); got != 16 {
		t.Fatalf("hub at %d after the hold lifts, want 16", got)
	}
	select {
	case <-ch:
	default:
		t.Fatal("a waiter at 13 was not woken")
	}
	got := heldRevs(drain(t, s))
	if len(got) != 3 || len(got[0]) != 2 || got[0][0] != 13 || got[1][0] != 14 || got[2][0] != 15 {
		t.Fatalf("released %v, want [[13 13] [14] [15]]", got)
	}
	// No hold: as Notify.
	h.Apply(17, []*mvccpb.Event{ev("g", 17)}, NoHold)
	if got := heldRevs(drain(t, s)); len(got) != 1 || got[0][0] != 17 || h.Rev() != 17 {
		t.Fatalf("got %v at %d", got, h.Rev())
	}
}

// TestSyncHoldsAndCatchesUp: a hub synced to a store that went past a
// hold (a restart with a lock) stops at the hold; when it lifts, its
// watchers read what it never heard of from the store, in order.
func TestSyncHoldsAndCatchesUp(t *testing.T) {
	f := newFixture(t)
	f.put("k1", "a") // rev 2, notified
	base := f.store.Rev()
	b := f.store.NewBatch()
	for _, k := range []string{"k2", "k3"} { // revs 3, 4: not notified
		if _, err := b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte("v")}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	f.hub.Sync(f.store.Rev(), base)
	if got := f.hub.Rev(); got != base {
		t.Fatalf("hub at %d, want the hold, %d", got, base)
	}
	s := f.hub.NewStream(100)
	s.Create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	drain(t, s)
	f.pump()
	f.hub.Apply(f.store.Rev(), nil, NoHold)
	f.pump()
	var revs []int64
	for len(revs) < 2 {
		for _, r := range heldRevs(drain(t, s)) {
			revs = append(revs, r...)
		}
	}
	if len(revs) != 2 || revs[0] != int64(base)+1 || revs[1] != int64(base)+2 || f.hub.Rev() != mvcc.Revision(base)+2 {
		t.Fatalf("got %v at hub %d, want [%d %d]", revs, f.hub.Rev(), base+1, base+2)
	}
}

// TestSyncCatchesUpWatchers: a hub synced to a store restored past it
// (a snapshot) without a hold: its synced watchers read the revisions it
// never heard of from the store.
func TestSyncCatchesUpWatchers(t *testing.T) {
	f := newFixture(t)
	f.put("k1", "a")
	s := f.hub.NewStream(100)
	s.Create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	drain(t, s)
	base := f.store.Rev()
	b := f.store.NewBatch()
	if _, err := b.Put(&pb.PutRequest{Key: []byte("k2"), Value: []byte("v")}, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	f.hub.Sync(f.store.Rev(), NoHold)
	f.pump()
	if got := heldRevs(drain(t, s)); len(got) != 1 || got[0][0] != int64(base)+1 {
		t.Fatalf("got %v, want [[%d]]", got, base+1)
	}
}
