package node_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// rawWatch opens etcd's Watch stream on n over plain gRPC. Its flow-control
// windows are fixed at 64 KiB (which also turns off gRPC's window growth),
// so a stream the test stops reading stalls the server's sends after a
// few responses, as a stuck consumer does.
func rawWatch(t *testing.T, ctx context.Context, n *node.Node) pb.Watch_WatchClient {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(n.ClientURLs()[0], "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s, err := pb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sendCreate(t *testing.T, s pb.Watch_WatchClient, req *pb.WatchCreateRequest) {
	t.Helper()
	if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}); err != nil {
		t.Fatal(err)
	}
}

// recvRaw reads the next response; the stream's context carries the
// test's deadline.
func recvRaw(t *testing.T, s pb.Watch_WatchClient) *pb.WatchResponse {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// putLoad writes n keys prefix%04d with values of size bytes, one revision
// each, and returns the revision of the first and the last.
func putLoad(t *testing.T, ctx context.Context, c *clientv3.Client, prefix string, n, size int) (first, last int64) {
	t.Helper()
	val := strings.Repeat("v", size)
	for i := 0; i < n; i++ {
		r, err := c.Put(ctx, fmt.Sprintf("%s%04d", prefix, i), val)
		if err != nil {
			t.Fatalf("put %d while a watch stream is stalled: %v", i, err)
		}
		if i == 0 {
			first = r.Header.Revision
		}
		last = r.Header.Revision
	}
	return first, last
}

// TestWatchSlowConsumer: a stream whose client stops reading neither blocks
// writes nor another stream's watchers; when it reads again it gets every
// event, in order, once.
func TestWatchSlowConsumer(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	stalled := rawWatch(t, ctx, n)
	sendCreate(t, stalled, &pb.WatchCreateRequest{Key: []byte("slow/"), RangeEnd: []byte("slow0")})
	if r := recvRaw(t, stalled); !r.Created {
		t.Fatalf("first response %v, want created", r)
	}
	// From here the stalled stream is not read until every write is done:
	// 1,500 events of 2 KiB each are far more than its 64 KiB window and
	// the server's per-stream queue hold.
	const total = 1500
	fast := c.Watch(ctx, "slow/", clientv3.WithPrefix())
	// A second fast watch is synced before the writes begin.
	if err := c.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	if r := next(t, fast); !r.IsProgressNotify() {
		t.Fatalf("fast watcher: %v before any write, want a progress notification", r.Events)
	}

	var (
		wg          sync.WaitGroup
		first, last int64
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		first, last = putLoad(t, ctx, c, "slow/", total, 2048)
	}()
	// The fast watcher keeps up while the writes flow.
	got := 0
	var prev int64
	for got < total {
		for _, e := range next(t, fast).Events {
			if e.Kv.ModRevision <= prev {
				t.Fatalf("fast watcher: revision %d after %d", e.Kv.ModRevision, prev)
			}
			prev = e.Kv.ModRevision
			got++
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// The stalled stream now drains: every revision from first to last,
	// each once, in order.
	want := first
	for want <= last {
		r := recvRaw(t, stalled)
		if r.Canceled {
			t.Fatalf("stalled stream cancelled at revision %d: %s", want, r.CancelReason)
		}
		for _, e := range r.Events {
			if e.Kv.ModRevision != want {
				t.Fatalf("stalled stream: event at revision %d, want %d", e.Kv.ModRevision, want)
			}
			want++
		}
	}
}

// TestWatchCompactionWhileWatching: a watcher that fell behind on a stalled
// stream and whose next revision is then compacted away gets, after the
// events it was sent, etcd's cancellation with the compact revision — and
// nothing is skipped silently.
func TestWatchCompactionWhileWatching(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s := rawWatch(t, ctx, n)
	sendCreate(t, s, &pb.WatchCreateRequest{Key: []byte("c/"), RangeEnd: []byte("c0"), WatchId: 5})
	if r := recvRaw(t, s); !r.Created || r.WatchId != 5 {
		t.Fatalf("first response %v, want created with id 5", r)
	}
	first, last := putLoad(t, ctx, c, "c/", 1000, 2048)
	if _, err := c.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	// A write after the compaction wakes the hub's catch-up, as traffic
	// would.
	if _, err := c.Put(ctx, "other", "x"); err != nil {
		t.Fatal(err)
	}

	want := first
	for {
		r := recvRaw(t, s)
		if r.Canceled {
			if r.WatchId != 5 || r.CompactRevision != last {
				t.Fatalf("cancellation %v, want watch 5 with compact revision %d", r, last)
			}
			if want >= last {
				t.Fatalf("cancelled for compaction at %d though it had reached revision %d", last, want)
			}
			return
		}
		for _, e := range r.Events {
			if e.Kv.ModRevision != want {
				t.Fatalf("event at revision %d, want %d", e.Kv.ModRevision, want)
			}
			want++
		}
		if want > last {
			t.Fatalf("all %d events arrived: the watcher never fell behind, so the test proves nothing", last-first+1)
		}
	}
}

// TestWatchCancelAndDuplicateIDs: on one raw stream, a client-chosen id,
// the same id refused while it is in use, a server-chosen id beside it,
// cancel, and a cancel of an unknown id ignored — as etcd answers each.
func TestWatchCancelAndDuplicateIDs(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := rawWatch(t, ctx, n)

	sendCreate(t, s, &pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7})
	if r := recvRaw(t, s); !r.Created || r.Canceled || r.WatchId != 7 {
		t.Fatalf("create with id 7: %v", r)
	}
	sendCreate(t, s, &pb.WatchCreateRequest{Key: []byte("b"), WatchId: 7})
	r := recvRaw(t, s)
	if !r.Created || !r.Canceled || r.WatchId != clientv3.InvalidWatchID ||
		r.CancelReason != "mvcc: duplicate watch ID provided on the WatchStream" {
		t.Fatalf("duplicate id 7: %v, want etcd's refusal", r)
	}
	sendCreate(t, s, &pb.WatchCreateRequest{Key: []byte("c")})
	r = recvRaw(t, s)
	if !r.Created || r.Canceled || r.WatchId == 7 || r.WatchId < 0 {
		t.Fatalf("create with a server-chosen id: %v", r)
	}
	auto := r.WatchId

	// The refused create registered nothing: b's put is not seen, a's is,
	// by watch 7.
	for _, k := range []string{"b", "a"} {
		if _, err := c.Put(ctx, k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	r = recvRaw(t, s)
	if r.WatchId != 7 || len(r.Events) != 1 || string(r.Events[0].Kv.Key) != "a" {
		t.Fatalf("after puts of b and a: %v, want a's event on watch 7", r)
	}

	// Cancel 7: etcd's canceled response, then no more events for it.
	if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}}); err != nil {
		t.Fatal(err)
	}
	r = recvRaw(t, s)
	if !r.Canceled || r.Created || r.WatchId != 7 {
		t.Fatalf("cancel 7: %v", r)
	}
	// An unknown id is ignored: the next answer is the progress
	// notification asked for after it.
	if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 99}}}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "c"} {
		if _, err := c.Put(ctx, k, "2"); err != nil {
			t.Fatal(err)
		}
	}
	r = recvRaw(t, s)
	if r.WatchId != auto || len(r.Events) != 1 || string(r.Events[0].Kv.Key) != "c" {
		t.Fatalf("after cancelling 7, puts of a and c: %v, want c's event on watch %d", r, auto)
	}
	if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	r = recvRaw(t, s)
	if r.WatchId != clientv3.InvalidWatchID || r.Canceled || len(r.Events) != 0 {
		t.Fatalf("after cancelling unknown 99 and asking for progress: %v, want the progress notification", r)
	}
}

// TestWatchResumeAfterRestart: a client that saw events up to revision L
// watches again from L+1 after the node's process restarted, and gets the
// rest of history and new events without a gap or a duplicate.
func TestWatchResumeAfterRestart(t *testing.T) {
	cl := nodetest.Start(t, 1)
	c := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	w := c.Watch(ctx, "r/", clientv3.WithPrefix())
	if err := c.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	if r := next(t, w); !r.IsProgressNotify() {
		t.Fatalf("%v before any write, want a progress notification", r.Events)
	}
	var revs []int64
	for i := 0; i < 10; i++ {
		r, err := c.Put(ctx, fmt.Sprintf("r/%d", i), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r.Header.Revision)
	}
	var seen []ev
	for len(seen) < 5 { // the client reads five events, then goes away
		seen = append(seen, events(next(t, w))...)
	}
	lastSeen := seen[4].mod
	if lastSeen != revs[4] {
		t.Fatalf("fifth event at %d, want %d", lastSeen, revs[4])
	}
	c.Close()
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}

	cl.Restart(0)
	c = cl.Client(0)
	w = c.Watch(ctx, "r/", clientv3.WithPrefix(), clientv3.WithRev(lastSeen+1))
	got := collect(t, w, 5)
	for i, e := range got {
		if e.typ != mvccpb.PUT || e.key != fmt.Sprintf("r/%d", i+5) || e.mod != revs[i+5] {
			t.Fatalf("resumed event %d: %+v, want r/%d at %d", i, e, i+5, revs[i+5])
		}
	}
	r, err := c.Put(ctx, "r/new", "x")
	if err != nil {
		t.Fatal(err)
	}
	if e := collect(t, w, 1)[0]; e.key != "r/new" || e.mod != r.Header.Revision || e.mod != revs[9]+1 {
		t.Fatalf("live event after resume: %+v, want r/new at %d", e, revs[9]+1)
	}
}
