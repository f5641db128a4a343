package placement

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestStateMachine runs the placement group on a real NodeHost: commands
// proposed through raft change the range map and answer with their
// results; a snapshot is taken and the replica restarted from it and the
// log, with the same state; the oracle's bound survives the restart.
func TestStateMachine(t *testing.T) {
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := filepath.Join(t.TempDir(), "raft")
	const shardID = 1
	start := func(initial map[uint64]dragonboat.Target) *dragonboat.NodeHost {
		nh, err := dragonboat.NewNodeHost(dbconfig.NodeHostConfig{NodeHostDir: dir, RTTMillisecond: 5, RaftAddress: addr,
			Expert: dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := nh.StartReplica(initial, false, NewStateMachine,
			dbconfig.Config{ReplicaID: 1, ShardID: shardID, HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true}); err != nil {
			t.Fatal(err)
		}
		return nh
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	propose := func(nh *dragonboat.NodeHost, c *placementpb.Command) *placementpb.Result {
		t.Helper()
		data, _ := proto.Marshal(c)
		for {
			r, err := nh.SyncPropose(ctx, nh.GetNoOPSession(shardID), data)
			if err == nil {
				var res placementpb.Result
				if err := proto.Unmarshal(r.Data, &res); err != nil {
					t.Fatal(err)
				}
				return &res
			}
			if ctx.Err() != nil {
				t.Fatalf("propose: %v", err)
			}
			time.Sleep(10 * time.Millisecond) // no leader yet: retry until the deadline
		}
	}
	state := func(nh *dragonboat.NodeHost) string {
		t.Helper()
		var v interface{}
		var err error
		for {
			if v, err = nh.SyncRead(ctx, shardID, StateQuery{}); err == nil {
				break
			}
			if !errors.Is(err, dragonboat.ErrShardNotReady) || ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond) // no leader yet: retry until the deadline
		}
		st := v.(*placementpb.State)
		return fmt.Sprintf("%s\nbound %d, next range %d, nodes %v", fmtRanges(st.Ranges), st.Bound, st.NextRangeId, st.Nodes)
	}

	nh := start(map[uint64]dragonboat.Target{1: addr})
	res := propose(nh, &placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
		SplitKeys: [][]byte{[]byte("m")}, Replicas: []uint64{1}}}})
	if res.Error != "" || len(res.Ranges) != 2 {
		t.Fatalf("bootstrap: %v", res)
	}
	if res := propose(nh, &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: 2, Generation: 1, Key: []byte("t")}}}); res.Error != "" {
		t.Fatalf("split: %v", res)
	}
	if res := propose(nh, &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: 2, Generation: 1, Key: []byte("p")}}}); res.Error == "" {
		t.Fatal("a split at a stale generation was applied")
	}
	propose(nh, &placementpb.Command{Op: &placementpb.Command_RaiseBound{RaiseBound: &placementpb.RaiseBound{Bound: 5000}}})
	propose(nh, &placementpb.Command{Op: &placementpb.Command_AddNode{AddNode: &placementpb.AddNode{Node: &placementpb.Node{Id: 1, RaftAddress: addr}}}})
	for {
		_, err := nh.SyncRequestSnapshot(ctx, shardID, dragonboat.DefaultSnapshotOption)
		if err == nil {
			break
		}
		if !errors.Is(err, dragonboat.ErrShardNotReady) || ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // busy applying: retry until the deadline
	}
	propose(nh, &placementpb.Command{Op: &placementpb.Command_RaiseBound{RaiseBound: &placementpb.RaiseBound{Bound: 6000}}}) // after the snapshot
	before := state(nh)
	v, err := nh.SyncRead(ctx, shardID, LookupQuery{Key: []byte("q")})
	if err != nil || v.(*placementpb.RangeDescriptor).Id != 2 {
		t.Fatalf("lookup q: %v %v", v, err)
	}
	nh.Close()

	nh = start(nil) // restart: snapshot, then the log after it
	defer nh.Close()
	if after := state(nh); after != before {
		t.Fatalf("after restart:\n%s\nbefore:\n%s", after, before)
	}
	t.Logf("state after restart:\n%s", before)
}
