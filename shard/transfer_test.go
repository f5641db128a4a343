package shard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	"github.com/lni/dragonboat/v4/raftio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// transferGroup is one range on three NodeHosts on 127.0.0.1, wired as a
// member wires its ranges for leader transfer: applied holds reach the
// range's replica client, leader changes end them.
type transferGroup struct {
	ranges map[ReplicaID]*Range
	// holds counts the holds applied on each replica, by target.
	mu    sync.Mutex
	holds map[ReplicaID]map[ReplicaID]int // REQUIRES: mu
}

// Raft timings of the group, as a member's in the node tests: a 10ms tick,
// heartbeat 2 ticks, election 20 ticks.
const (
	groupHeartbeat = 20 * time.Millisecond
	groupElection  = 200 * time.Millisecond
)

// startTransferGroup starts range id with replicas ids, each on its own
// NodeHost, and waits for a leader.
func startTransferGroup(t *testing.T, id RangeID, ids ...ReplicaID) *transferGroup {
	t.Helper()
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
	g := &transferGroup{ranges: map[ReplicaID]*Range{}, holds: map[ReplicaID]map[ReplicaID]int{}}
	members := map[uint64]dragonboat.Target{}
	for _, rid := range ids {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		members[uint64(rid)] = l.Addr().String()
		l.Close()
	}
	for _, rid := range ids {
		var rng atomic.Pointer[Range]
		nh, err := dragonboat.NewNodeHost(dbconfig.NodeHostConfig{
			NodeHostDir:    filepath.Join(t.TempDir(), "raft"),
			RTTMillisecond: 10,
			RaftAddress:    members[uint64(rid)],
			Expert:         dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig()},
			RaftEventListener: leaderFunc(func(info raftio.LeaderInfo) {
				if r := rng.Load(); r != nil && r.Replica() != nil && info.ShardID == uint64(id) {
					r.Replica().LeaderChanged(ReplicaID(info.LeaderID))
				}
			}),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nh.Close)
		r := NewRange(RangeConfig{NodeHost: nh, ReplicaID: rid, ProgressEvery: time.Second}, &placementpb.RangeDescriptor{Id: uint64(id)}, 0)
		rng.Store(r)
		cfg := Config{DB: openDB(t, vfs.NewMem()), OnHold: func(target ReplicaID, until time.Time, max time.Duration) {
			if rep := r.Replica(); rep != nil {
				rep.Hold(target, until, max)
			}
			g.mu.Lock()
			if g.holds[rid] == nil {
				g.holds[rid] = map[ReplicaID]int{}
			}
			g.holds[rid][target]++
			g.mu.Unlock()
		}}
		if err := r.Start(cfg, members, false, dbconfig.Config{ReplicaID: uint64(rid), HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true, PreVote: true}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Close)
		g.ranges[rid] = r
	}
	g.leader(t)
	return g
}

type leaderFunc func(raftio.LeaderInfo)

func (f leaderFunc) LeaderUpdated(info raftio.LeaderInfo) { f(info) }

// leader waits until every replica knows the same leader and returns it.
func (g *transferGroup) leader(t *testing.T) ReplicaID {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var seen []ReplicaID
		for _, r := range g.ranges {
			if leader, _, ok := r.Replica().Leader(); ok {
				seen = append(seen, leader)
			}
		}
		if len(seen) == len(g.ranges) && !slices.ContainsFunc(seen, func(id ReplicaID) bool { return id != seen[0] }) {
			return seen[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader within 20s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// config is the TransferConfig a member would give: the group's replicas,
// and each one's applied index as its member would report it.
func (g *transferGroup) config(t *testing.T) TransferConfig {
	return TransferConfig{
		Replicas: func(context.Context) ([]ReplicaID, error) {
			var ids []ReplicaID
			for id := range g.ranges {
				ids = append(ids, id)
			}
			return ids, nil
		},
		AppliedOf: func(ctx context.Context, id ReplicaID) (uint64, error) {
			r, ok := g.ranges[id]
			if !ok {
				t.Errorf("applied index asked of replica %d, not one of the range's", id)
				return 0, fmt.Errorf("no replica %d", id)
			}
			st, err := r.Replica().Status(ctx, false)
			return st.AppliedIndex, err
		},
		ElectionTimeout:   groupElection,
		HeartbeatInterval: groupHeartbeat,
	}
}

// heldFor reports how many holds for target replica id applied.
func (g *transferGroup) heldFor(id, target ReplicaID) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.holds[id][target]
}

// TestRangeTransferLeader: a range that is not range 1, with replica ids
// that are not 1…n, moves its leadership to the replica asked for while
// writes keep coming, after holding proposals on every replica for that
// target; asked of the replica that leads already it returns at once;
// asked on a follower that nobody else moves, it gives up with ErrTimeout
// when its context ends.
func TestRangeTransferLeader(t *testing.T) {
	g := startTransferGroup(t, 9, 21, 22, 23)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A write load through whichever replica leads.
	stop := make(chan struct{})
	var writers sync.WaitGroup
	var acked atomic.Int64
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				for _, r := range g.ranges {
					if !r.Replica().leads() {
						continue
					}
					data, _ := proto.Marshal(&pb.PutRequest{Key: fmt.Appendf(nil, "w%d/%d", w, i), Value: []byte("v")})
					wctx, wcancel := context.WithTimeout(ctx, time.Second)
					if _, err := r.Replica().Write(wctx, &shardpb.Request{Op: &shardpb.Request_Put{Put: data}}); err == nil {
						acked.Add(1)
					}
					wcancel()
				}
			}
		}()
	}
	defer func() { close(stop); writers.Wait() }()

	for round := range 3 {
		from := g.leader(t)
		var to ReplicaID
		for id := range g.ranges {
			if id != from {
				to = id
				break
			}
		}
		before := acked.Load()
		if err := g.ranges[from].TransferLeader(ctx, to, g.config(t)); err != nil {
			t.Fatalf("round %d: transfer %d → %d: %v (acked %d)", round, from, to, err, acked.Load()-before)
		}
		if leader, _, ok := g.ranges[from].Replica().Leader(); !ok || leader != to {
			t.Fatalf("round %d: after the transfer to %d the leader is %d (known %v)", round, to, leader, ok)
		}
		if n := g.heldFor(from, to); n == 0 {
			t.Fatalf("round %d: the old leader %d applied no hold for %d", round, from, to)
		}
		// The writes go on through the new leader: the holds ended.
		for acked.Load() < before+20 {
			if ctx.Err() != nil {
				t.Fatalf("round %d: writes stopped after the transfer (%d acknowledged)", round, acked.Load()-before)
			}
			time.Sleep(time.Millisecond) // polling the writers' progress, with the test's deadline
		}
	}

	// The leader asked to lead: done at once, with no hold.
	leader := g.leader(t)
	holds := g.heldFor(leader, leader)
	if err := g.ranges[leader].TransferLeader(ctx, leader, g.config(t)); err != nil {
		t.Fatalf("transfer to the leader itself: %v", err)
	}
	if g.heldFor(leader, leader) != holds {
		t.Fatal("a transfer to the leader itself held proposals")
	}

	// A follower asked to move leadership to the other follower: it does
	// not lead, so it waits for someone else to move it, until ctx ends.
	var follower, other ReplicaID
	for id := range g.ranges {
		switch {
		case id == leader:
		case follower == 0:
			follower = id
		default:
			other = id
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	err := g.ranges[follower].TransferLeader(short, other, g.config(t))
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("transfer asked of follower %d: %v, want ErrTimeout with the context's deadline", follower, err)
	}
}
