package router

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// memHistory is a range's history in memory (watch.History).
type memHistory struct {
	mu  sync.Mutex
	evs map[mvcc.Revision][]*mvccpb.Event
}

func (h *memHistory) CompactRev() mvcc.Revision { return 0 }

func (h *memHistory) Events(from, to mvcc.Revision, fn func(rev mvcc.Revision, evs []*mvccpb.Event) bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for rev := from; rev <= to; rev++ {
		if evs := h.evs[rev]; len(evs) > 0 && !fn(rev, evs) {
			break
		}
	}
	return nil
}

// memRanges are the ranges a holder serves feeds from: real hubs over
// in-memory histories, [start, end) each.
type memRanges struct {
	spans [][2][]byte
	hubs  []*watch.Hub
	hists []*memHistory
}

func newMemRanges(splits ...string) *memRanges {
	f := &memRanges{}
	start := []byte(nil)
	for i := 0; i <= len(splits); i++ {
		var end []byte
		if i < len(splits) {
			end = []byte(splits[i])
		}
		f.spans = append(f.spans, [2][]byte{start, end})
		f.hubs = append(f.hubs, watch.NewHub(0))
		f.hists = append(f.hists, &memHistory{evs: map[mvcc.Revision][]*mvccpb.Event{}})
		start = end
	}
	return f
}

func (f *memRanges) feedRanges(key, end []byte) ([]feedRange, bool) {
	ek, ee := spanEtcd(key, end)
	var out []feedRange
	for i, sp := range f.spans {
		if lo, hi, ok := clipRange(ek, ee, sp[0], sp[1]); ok {
			out = append(out, feedRange{part: watch.Part{Hub: f.hubs[i], Key: lo, RangeEnd: hi}, hist: f.hists[i]})
		}
	}
	return out, len(out) > 0
}

func (f *memRanges) parts(key, rangeEnd []byte) []watch.Part {
	var out []watch.Part
	for i, sp := range f.spans {
		if lo, hi, ok := clipRange(key, rangeEnd, sp[0], sp[1]); ok {
			out = append(out, watch.Part{Hub: f.hubs[i], Key: lo, RangeEnd: hi})
		}
	}
	return out
}

// put writes key at rev in its range (history, then hub) and closes rev
// in the others, as their closers would.
func (f *memRanges) put(key string, rev mvcc.Revision) {
	for i, sp := range f.spans {
		if !inSpan([]byte(key), sp[0], sp[1]) {
			f.hubs[i].Advance(rev)
			continue
		}
		ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(fmt.Sprint(rev)),
			ModRevision: int64(rev), CreateRevision: int64(rev), Version: 1}}
		f.hists[i].mu.Lock()
		f.hists[i].evs[rev] = []*mvccpb.Event{ev}
		f.hists[i].mu.Unlock()
		f.hubs[i].Notify(rev, []*mvccpb.Event{ev})
	}
}

// holder is one member serving feeds over bufconn.
type holder struct {
	fs  *feedServer
	g   *grpc.Server
	lis *bufconn.Listener
}

func startHolder(t *testing.T, src feedSource) *holder {
	t.Helper()
	h := &holder{fs: &feedServer{src: src, merger: watch.NewMerger()}, g: grpc.NewServer(), lis: bufconn.Listen(1 << 20)}
	internalpb.RegisterNodeServer(h.g, &internalServer{feeds: h.fs})
	go func() { _ = h.g.Serve(h.lis) }()
	t.Cleanup(h.g.Stop)
	return h
}

// TestFeedOneStreamPerPeer: many watches over three ranges held on other
// members share one mirror, one feed per range, and all feeds to one
// member travel on one Feed stream; watches start from history (the
// holder's, through Events), see exactly what was written, and go on
// without gap or repeat when their holder stops and the feeds re-open on
// another member from the mirrors' revisions.
func TestFeedOneStreamPerPeer(t *testing.T) {
	src := newMemRanges("h", "p")
	stop := make(chan struct{})
	defer close(stop)
	for i, h := range src.hubs {
		// Each range's catch-up, as shard.Range runs it.
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-h.Pending():
				}
				for more := true; more; {
					more, _ = h.Catchup(src.hists[i], 1000)
				}
			}
		}()
	}
	// History before any watch: revisions 1..3, one in each range.
	for i, k := range []string{"a", "i", "q"} {
		src.put(k, mvcc.Revision(i+1))
	}
	holders := map[placement.NodeID]*holder{1: startHolder(t, src), 2: startHolder(t, src)}
	var mu sync.Mutex
	order := []placement.NodeID{1, 2}
	ms := NewMirrors(MirrorsConfig{Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		Holders: func(key, end []byte) []placement.NodeID { mu.Lock(); defer mu.Unlock(); return slices.Clone(order) },
		Dial: func(m placement.NodeID) (internalpb.NodeClient, error) {
			h := holders[m]
			cc, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return h.lis.DialContext(ctx) }))
			if err != nil {
				return nil, err
			}
			t.Cleanup(func() { _ = cc.Close() })
			return internalpb.NewNodeClient(cc), nil
		},
	})
	defer ms.Close()
	split := func(key, rangeEnd []byte) []watch.Part {
		var out []watch.Part
		for i, sp := range src.spans {
			if lo, hi, ok := clipRange(key, rangeEnd, sp[0], sp[1]); ok {
				hub, kick := ms.Part(shard.RangeID(i+1), sp[0], sp[1])
				out = append(out, watch.Part{Hub: hub, Key: lo, RangeEnd: hi, Kick: kick})
			}
		}
		return out
	}
	mg := watch.NewMerger()
	const watches = 8
	streams := make([]*watch.Merged, watches)
	for i := range streams {
		streams[i] = mg.NewStream(128, split)
		defer streams[i].Close()
		if r := streams[i].Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte{0}, StartRevision: 1, PrevKv: true}); r.Canceled {
			t.Fatalf("watch %d refused: %v", i, r.CancelReason)
		}
	}
	var want []string
	for i, k := range []string{"a", "i", "q"} {
		want = append(want, fmt.Sprintf("%s@%d", k, i+1))
	}
	got := make([][]string, watches)
	// collect reads every stream until it has seen want.
	collect := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i, st := range streams {
			for len(got[i]) < len(want) {
				rs, err := st.Next(ctx)
				if err != nil {
					t.Fatalf("%s: watch %d: %v after %v", what, i, err, got[i])
				}
				for _, r := range rs {
					for _, ev := range r.Events {
						got[i] = append(got[i], fmt.Sprintf("%s@%d", ev.Kv.Key, ev.Kv.ModRevision))
					}
				}
			}
			if !slices.Equal(got[i], want) {
				t.Fatalf("%s: watch %d saw %v, want %v", what, i, got[i], want)
			}
		}
	}
	collect("from history")
	rev := mvcc.Revision(3)
	write := func(n int) {
		for range n {
			rev++
			k := []string{"b", "j", "r", "c"}[rev%4]
			src.put(k, rev)
			want = append(want, fmt.Sprintf("%s@%d", k, rev))
		}
	}
	write(12)
	collect("live")
	if n := holders[1].fs.streams.Load(); n != 1 {
		t.Errorf("member 1 served %d Feed streams, want 1", n)
	}
	if n := ms.Feeds(); n != 3 {
		t.Errorf("%d feeds open for %d watches over 3 ranges, want 3", n, watches)
	}
	for id, m := range ms.Sources() {
		if m != 1 {
			t.Errorf("range %d fed by member %d, want 1", id, m)
		}
	}

	// Member 1 stops: the feeds re-open on member 2, from the mirrors'
	// revisions.
	holders[1].g.Stop()
	write(5)
	collect("after the holder stopped")
	mu.Lock()
	order = []placement.NodeID{2}
	mu.Unlock()
	write(5)
	collect("on the other holder")
	if n := holders[2].fs.streams.Load(); n != 1 {
		t.Errorf("member 2 served %d Feed streams, want 1", n)
	}
	for id, m := range ms.Sources() {
		if m != 2 {
			t.Errorf("range %d fed by member %d after member 1 stopped, want 2", id, m)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
