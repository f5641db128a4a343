package shard_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// TestWatchHeldByLock: a participant of a cross-range transaction writes
// another key of its range, above the transaction's revision R, while the
// transaction is prepared; its watchers get nothing above the lock's cap
// until the commit, then R's events in one response, before the later
// writes (docs/plan-txn.md, invariant 2). A watcher created meanwhile, from
// the store, does not read past the hold either.
func TestWatchHeldByLock(t *testing.T) {
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
	addr := testport.Addr(t)
	nh, err := dragonboat.NewNodeHost(dbconfig.NodeHostConfig{
		NodeHostDir:    filepath.Join(t.TempDir(), "raft"),
		RTTMillisecond: 5,
		RaftAddress:    addr,
		Expert:         dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig()},
	})
	if err != nil {
		t.Fatal(err)
	}
	members := map[uint64]dragonboat.Target{1: addr}
	raftCfg := dbconfig.Config{ReplicaID: 1, HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true, ShardID: placementShard}
	if err := nh.StartReplica(members, false, placement.NewStateMachine, raftCfg); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open("db", mvcc.PebbleOptions(&pebble.Options{FS: vfs.NewMem()}))
	if err != nil {
		t.Fatal(err)
	}
	alloc := placement.NewAllocator(nh, placementShard, 1, 64)
	r := shard.NewRange(shard.RangeConfig{NodeHost: nh, ReplicaID: 1, Stamper: alloc, ProgressEvery: time.Hour},
		&placementpb.RangeDescriptor{Id: dataShard, Start: []byte("a"), End: []byte("z")}, 0)
	if err := r.Start(shard.Config{DB: db, Sharded: true, Span: mvcc.Span{Start: []byte("a"), End: []byte("z")}},
		members, false, dbconfig.Config{HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); alloc.Close(); nh.Close(); db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := r.Replica()
	var rev int64
	for {
		if rev, err = put(ctx, c, "b"); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	if err != nil {
		t.Fatal(err)
	}
	waitHub(t, r, mvcc.Revision(rev))
	first := rev

	// A watcher of the whole range, synced.
	s := r.Hub().NewStream(64)
	if resp := s.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")}); resp.Canceled {
		t.Fatalf("create: %v", resp)
	}
	next(ctx, t, s)

	capRev, err := alloc.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_TxnPrepare{TxnPrepare: &shardpb.TxnPrepare{
		Id: 1, Spans: []*shardpb.KeySpan{{Key: []byte("a")}, {Key: []byte("a1")}}, Cap: int64(capRev)}}})
	if err != nil {
		t.Fatal(err)
	}
	lockCap := mvcc.Revision(resp.GetTxnPrepared().GetCap())
	R, err := alloc.Revisions(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var later []int64
	for range 3 {
		if rev, err = put(ctx, c, "c"); err != nil {
			t.Fatal(err)
		}
		later = append(later, rev)
	}
	// The puts applied above R; the hub holds them at the cap.
	if got := r.Hub().Rev(); got > lockCap {
		t.Fatalf("hub at %d with a lock capped at %d (writes up to %d)", got, lockCap, rev)
	}
	// A watcher caught up from the store reads nothing past the hold.
	late := r.Hub().NewStream(64)
	late.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z"), StartRevision: first})
	next(ctx, t, late)
	if got := drainNow(t, s); len(got) > 0 {
		t.Fatalf("released while the lock stands: %v", got)
	}
	if got := drainNow(t, late); len(got) != 1 || len(got[0].Events) != 1 || got[0].Events[0].Kv.ModRevision != first {
		t.Fatalf("caught up while the lock stands: %v; want b@%d alone", got, first)
	}

	data, _ := proto.Marshal(&pb.TxnRequest{Success: []*pb.RequestOp{
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), Value: []byte("t")}}},
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a1"), Value: []byte("t")}}},
	}})
	if _, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_TxnCommit{TxnCommit: &shardpb.TxnCommit{Id: 1, Revision: int64(R), Intents: data}}}); err != nil {
		t.Fatal(err)
	}
	// The synced watcher: R's events in one response, then the puts, in
	// revision order.
	var got []*pb.WatchResponse
	var n int
	for n < 5 {
		rs := next(ctx, t, s)
		got = append(got, rs...)
		for _, x := range rs {
			n += len(x.Events)
		}
	}
	if len(got[0].Events) != 2 || got[0].Events[0].Kv.ModRevision != int64(R) || got[0].Events[1].Kv.ModRevision != int64(R) {
		t.Fatalf("first response after the commit %v; want R=%d's two events", got[0], R)
	}
	var revs []int64
	for _, x := range got[1:] {
		for _, ev := range x.Events {
			revs = append(revs, ev.Kv.ModRevision)
		}
	}
	if len(revs) != 3 || revs[0] != later[0] || revs[1] != later[1] || revs[2] != later[2] {
		t.Fatalf("after R=%d got revisions %v; want %v", R, revs, later)
	}
	// So does the caught-up one.
	var lateRevs []int64
	for len(lateRevs) < 5 {
		for _, x := range next(ctx, t, late) {
			for _, ev := range x.Events {
				lateRevs = append(lateRevs, ev.Kv.ModRevision)
			}
		}
	}
	if want := []int64{int64(R), int64(R), later[0], later[1], later[2]}; !slices.Equal(lateRevs, want) {
		t.Fatalf("caught-up watcher got %v, want %v", lateRevs, want)
	}
	if r.Hub().Rev() < mvcc.Revision(rev) {
		t.Fatalf("hub at %d after the commit; want at least %d", r.Hub().Rev(), rev)
	}
}

// waitHub waits for the range's hub to reach rev.
func waitHub(t *testing.T, r *shard.Range, rev mvcc.Revision) {
	t.Helper()
	ch := make(chan struct{}, 1)
	r.Hub().WaitRev(rev, ch)
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("hub at %d, not %d, after 10s", r.Hub().Rev(), rev)
	}
}

type nexter interface {
	Next(ctx context.Context) ([]*pb.WatchResponse, error)
}

func next(ctx context.Context, t *testing.T, s nexter) []*pb.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rs, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	return rs
}

// drainNow returns what the streams hold once the hub's catch-up had a
// chance to run: it waits for a progress response, which a stream queues
// after everything before it.
func drainNow(t *testing.T, ss ...interface {
	nexter
	RequestProgress()
}) []*pb.WatchResponse {
	t.Helper()
	var out []*pb.WatchResponse
	for _, s := range ss {
		s.RequestProgress()
		for done := false; !done; {
			for _, x := range next(context.Background(), t, s) {
				if x.WatchId == -1 {
					done = true
					continue
				}
				out = append(out, x)
			}
		}
	}
	return out
}
