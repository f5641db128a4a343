package placement

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/node/testport"
)

const testShard = 100

// group is a placement group of real NodeHosts on 127.0.0.1, one replica
// and one allocator each (replica ids 1..n).
type group struct {
	nhs    []*dragonboat.NodeHost
	allocs []*Allocator
}

func startGroup(t *testing.T, size int, window int64) *group {
	t.Helper()
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
	members := map[uint64]dragonboat.Target{}
	for i := 1; i <= size; i++ {
		members[uint64(i)] = testport.Addr(t)
	}
	g := &group{}
	for i := 1; i <= size; i++ {
		nh, err := dragonboat.NewNodeHost(dbconfig.NodeHostConfig{
			NodeHostDir:    filepath.Join(t.TempDir(), "raft"),
			RTTMillisecond: 5,
			RaftAddress:    members[uint64(i)],
			Expert:         dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig()},
		})
		if err != nil {
			t.Fatal(err)
		}
		err = nh.StartReplica(members, false, NewStateMachine, dbconfig.Config{
			ReplicaID: uint64(i), ShardID: testShard, HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true})
		if err != nil {
			t.Fatal(err)
		}
		a := NewAllocator(nh, testShard, uint64(i), window)
		g.nhs, g.allocs = append(g.nhs, nh), append(g.allocs, a)
		t.Cleanup(func() { g.stop(i - 1) })
	}
	return g
}

// stop closes member i's allocator and NodeHost, once.
func (g *group) stop(i int) {
	if g.nhs[i] == nil {
		return
	}
	g.allocs[i].Close()
	g.nhs[i].Close()
	g.nhs[i] = nil
}

// leader waits for a leader every live replica agrees on and returns its index.
func (g *group) leader(t *testing.T) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for i, nh := range g.nhs {
			if nh == nil {
				continue
			}
			if l, _, ok, err := nh.GetLeaderID(testShard); err == nil && ok && l == uint64(i+1) {
				return i
			}
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	t.Fatal("no leader within 30s")
	return -1
}

// take asks allocator i for n revisions, retrying while leadership settles.
func (g *group) take(t *testing.T, i int, n int64) mvcc.Revision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		first, err := g.allocs[i].Revisions(ctx, n)
		if err == nil {
			return first
		}
		if ctx.Err() != nil {
			t.Fatalf("allocator %d: %v", i+1, err)
		}
		time.Sleep(5 * time.Millisecond) // retrying while leadership settles, with a deadline
	}
}

// TestAllocatorUniqueAndOrdered: concurrent callers on the leader get
// disjoint blocks of the sizes they asked for, each caller's blocks
// increasing; a small window makes many of them raise the bound through
// raft. Followers hand out nothing.
func TestAllocatorUniqueAndOrdered(t *testing.T) {
	g := startGroup(t, 3, 16)
	l := g.leader(t)
	const callers, calls = 16, 40
	type block struct{ first, last mvcc.Revision }
	var (
		mu     sync.Mutex
		blocks []block
		wg     sync.WaitGroup
	)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev mvcc.Revision
			for i := range calls {
				n := int64(1 + (c+i)%5)
				first := g.take(t, l, n)
				if first <= prev {
					t.Errorf("caller %d: block at %d after one ending at %d", c, first, prev)
				}
				prev = first + mvcc.Revision(n) - 1
				mu.Lock()
				blocks = append(blocks, block{first, prev})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].first < blocks[j].first })
	for i := 1; i < len(blocks); i++ {
		if blocks[i].first <= blocks[i-1].last {
			t.Fatalf("blocks %v and %v overlap", blocks[i-1], blocks[i])
		}
	}
	for i := range g.allocs {
		if i == l {
			continue
		}
		if _, err := g.allocs[i].Revisions(context.Background(), 1); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("follower %d handed out revisions: %v", i+1, err)
		}
	}
}

// TestAllocatorLeaderChange: after leadership moves (by transfer, then by
// the leader's NodeHost stopping), the new leader hands out revisions above
// every one handed out before, and the old one refuses.
func TestAllocatorLeaderChange(t *testing.T) {
	g := startGroup(t, 3, 1000)
	var max mvcc.Revision
	check := func(i int, what string) {
		t.Helper()
		first := g.take(t, i, 3)
		if first <= max {
			t.Fatalf("%s: revision %d handed out after %d", what, first, max)
		}
		max = first + 2
	}
	a := g.leader(t)
	for range 5 {
		check(a, "first leader")
	}
	b := (a + 1) % 3
	if err := g.nhs[a].RequestLeaderTransfer(testShard, uint64(b+1)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for g.leader(t) != b {
		if time.Now().After(deadline) {
			t.Fatal("leadership did not move")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	check(b, "after a transfer")
	if _, err := g.allocs[a].Revisions(context.Background(), 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the previous leader handed out revisions: %v", err)
	}
	g.stop(b)
	c := g.leader(t)
	check(c, fmt.Sprintf("after leader %d stopped", b+1))
}
