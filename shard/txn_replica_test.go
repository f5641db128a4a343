package shard_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// TestAdvanceIdleCappedByLock: the closed revision the leader's client
// publishes for an idle range (AdvanceIdle) stays at the cap of a
// cross-range transaction's lock while the lock stands, though the oracle
// moves on; the commit at a revision above the cap applies (no closed
// revision passed it) and the closed revision then moves on.
func TestAdvanceIdleCappedByLock(t *testing.T) {
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
	cfg := dbconfig.Config{ReplicaID: 1, HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true, ShardID: placementShard}
	if err := nh.StartReplica(members, false, placement.NewStateMachine, cfg); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open("db", mvcc.PebbleOptions(&pebble.Options{FS: vfs.NewMem()}))
	if err != nil {
		t.Fatal(err)
	}
	// A range of sharded mode that no longer spans every key: it takes
	// stamps, and part in cross-range transactions.
	var local *shard.StateMachine
	factory := shard.Factory(shard.Config{DB: db, Sharded: true, Span: mvcc.Span{Start: []byte("a"), End: []byte("z")}})
	cfg.ShardID = dataShard
	if err := nh.StartOnDiskReplica(members, false, func(s, r uint64) sm.IOnDiskStateMachine {
		m := factory(s, r)
		local = m.(*shard.StateMachine)
		return m
	}, cfg); err != nil {
		t.Fatal(err)
	}
	alloc := placement.NewAllocator(nh, placementShard, 1, 64)
	t.Cleanup(func() { alloc.Close(); nh.Close(); db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := shard.NewStampingReplica(nh, dataShard, 1, alloc, func() *shard.StateMachine { return local })
	t.Cleanup(c.Close)
	// Writes wait out the elections.
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
	closed, err := c.AdvanceIdle(ctx)
	if err != nil || int64(closed) != rev {
		t.Fatalf("idle range closed at %d, %v; want %d", closed, err, rev)
	}

	capRev, err := alloc.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_TxnPrepare{TxnPrepare: &shardpb.TxnPrepare{
		Id: 1, Spans: []*shardpb.KeySpan{{Key: []byte("a")}}, Cap: int64(capRev)}}})
	if err != nil {
		t.Fatal(err)
	}
	lockCap := mvcc.Revision(resp.GetTxnPrepared().GetCap())
	if lockCap < capRev {
		t.Fatalf("lock cap %d below the prepare's %d", lockCap, capRev)
	}
	// The transaction's revision comes after the prepare, so above the
	// cap; other keys are written after it, above it, before the commit.
	r, err := alloc.Revisions(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if rev, err = put(ctx, c, "c"); err != nil {
			t.Fatal(err)
		}
	}
	if mvcc.Revision(rev) <= r || r <= lockCap {
		t.Fatalf("cap %d, transaction at %d, last write at %d: want them in this order", lockCap, r, rev)
	}
	// The range's closed revision stays at the cap.
	if closed, err = c.AdvanceIdle(ctx); err != nil || closed != lockCap {
		t.Fatalf("closed %d, %v with a lock capped at %d (writes up to %d)", closed, err, lockCap, rev)
	}
	st, err := c.Status(ctx, true)
	if err != nil || st.Closed > lockCap || st.Locks != 1 {
		t.Fatalf("status %+v, %v; want closed at most %d and one lock", st, err, lockCap)
	}
	// A write to the locked key is refused, not held.
	if _, err := put(ctx, c, "a"); !errors.Is(err, shard.ErrLocked) {
		t.Fatalf("write to a locked key: %v, want ErrLocked", err)
	}

	// The commit applies at r, below the range's revision.
	data, _ := proto.Marshal(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), Value: []byte("t")}}}}})
	resp, err = c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_TxnCommit{TxnCommit: &shardpb.TxnCommit{Id: 1, Revision: int64(r), Intents: data}}})
	if err != nil || !resp.GetTxnSettled().GetHeld() {
		t.Fatalf("commit at %d: %v, %v", r, resp, err)
	}
	got, err := c.Range(ctx, &pb.RangeRequest{Key: []byte("a")}, true)
	if err != nil || len(got.Kvs) != 1 || got.Kvs[0].ModRevision != int64(r) || got.Header.Revision != rev {
		t.Fatalf("read of a after the commit: %v, %v; want a@%d at revision %d", got, err, r, rev)
	}
	if closed, err = c.AdvanceIdle(ctx); err != nil || closed < r {
		t.Fatalf("closed %d, %v after the commit at %d", closed, err, r)
	}
	if _, err := put(ctx, c, "a"); err != nil {
		t.Fatalf("write after the commit: %v", err)
	}
}
