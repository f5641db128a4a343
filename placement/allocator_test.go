package placement

import (
	"context"
	"errors"
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

// leader waits until every live replica names the same live leader and
// returns its index.
func (g *group) leader(t *testing.T) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		agreed, leader := true, uint64(0)
		for _, nh := range g.nhs {
			if nh == nil {
				continue
			}
			l, _, ok, err := nh.GetLeaderID(testShard)
			if err != nil || !ok || (leader != 0 && l != leader) {
				agreed = false
				break
			}
			leader = l
		}
		if agreed && leader != 0 && g.nhs[leader-1] != nil {
			return int(leader - 1)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	t.Fatal("no leader within 30s")
	return -1
}

// take asks the leader's allocator for n revisions, following leadership
// while it settles (a busy machine may see several elections).
func (g *group) take(t *testing.T, n int64) mvcc.Revision {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		i := g.leader(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		first, err := g.allocs[i].Revisions(ctx, n)
		cancel()
		if err == nil {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatalf("allocator %d, leading a moment ago: %v", i+1, err)
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
	notLeading := 0
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
				first := g.take(t, n)
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
	// Followers hand out nothing (one that leads by now stays above).
	for i := range g.allocs {
		first, err := g.allocs[i].Revisions(context.Background(), 1)
		if err == nil && first <= blocks[len(blocks)-1].last {
			t.Fatalf("allocator %d handed out %d after %d", i+1, first, blocks[len(blocks)-1].last)
		}
		if err != nil && !errors.Is(err, ErrNotLeader) {
			t.Fatalf("allocator %d: %v", i+1, err)
		}
		if err != nil {
			notLeading++
		}
	}
	if notLeading < len(g.allocs)-1 {
		t.Fatalf("%d allocators refused as followers, want at least %d", notLeading, len(g.allocs)-1)
	}
}

// TestAllocatorLeaderChange: after leadership moves (by transfer, then by
// the leader's NodeHost stopping), the new leader hands out revisions above
// every one handed out before, and the old one refuses.
func TestAllocatorLeaderChange(t *testing.T) {
	g := startGroup(t, 3, 1000)
	var max mvcc.Revision
	check := func(first mvcc.Revision, n int64, what string) {
		t.Helper()
		if first <= max {
			t.Fatalf("%s: revision %d handed out after %d", what, first, max)
		}
		max = first + mvcc.Revision(n) - 1
	}
	for range 5 {
		check(g.take(t, 3), 3, "first leader")
	}
	a := g.leader(t)
	b := (a + 1) % 3
	// dragonboat's target skips the campaign if it has entries to apply
	// when asked; the transfer is asked again until it takes.
	deadline := time.Now().Add(30 * time.Second)
	for g.leader(t) != b {
		if time.Now().After(deadline) {
			t.Fatal("leadership did not move")
		}
		if l := g.leader(t); l != b {
			if err := g.nhs[l].RequestLeaderTransfer(testShard, uint64(b+1)); err != nil {
				t.Logf("transfer: %v", err)
			}
		}
		time.Sleep(200 * time.Millisecond) // an election timeout for the transfer to take, with a deadline
	}
	check(g.take(t, 3), 3, "after a transfer")
	// A former leader either refuses or, if it leads again, stays above.
	if first, err := g.allocs[a].Revisions(context.Background(), 1); err == nil {
		check(first, 1, "the former leader")
	} else if !errors.Is(err, ErrNotLeader) {
		t.Fatal(err)
	}
	g.stop(g.leader(t))
	check(g.take(t, 3), 3, "after the leader stopped")
}

// TestAllocatorAbove: a request with a floor far above the oracle gets
// revisions above it, persisted, so that everything handed out later —
// to plain requests, and by a new leader after a transfer — exceeds it.
func TestAllocatorAbove(t *testing.T) {
	g := startGroup(t, 3, 100)
	before := g.take(t, 1)
	const above = 50_000
	var first mvcc.Revision
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if first, err = g.allocs[g.leader(t)].RevisionsAbove(context.Background(), 3, above); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("RevisionsAbove: %v", err)
		}
	}
	if first <= above || first <= before {
		t.Fatalf("RevisionsAbove(3, %d) after %d handed out %d", above, before, first)
	}
	if next := g.take(t, 1); next <= first+2 {
		t.Fatalf("a plain request after the raise got %d, want above %d", next, first+2)
	}
	// A new leader starts above the persisted bound, itself above the floor.
	old := g.leader(t)
	g.stop(old)
	if next := g.take(t, 1); next <= first+2 {
		t.Fatalf("the next leader handed out %d, want above %d", next, first+2)
	}
}

// TestAllocatorCurrent: the leader's current value is the last revision
// handed out, reading it consumes none, and followers refuse to answer it.
func TestAllocatorCurrent(t *testing.T) {
	g := startGroup(t, 3, 100)
	last := g.take(t, 5) + 4
	l := g.leader(t)
	for i := 0; i < 3; i++ {
		next, err := g.allocs[l].RevisionsAbove(context.Background(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if next-1 != last {
			t.Fatalf("current value after %d handed out: %d", last, next-1)
		}
	}
	if first := g.take(t, 1); first != last+1 {
		t.Fatalf("after reading the current value the oracle handed out %d, want %d", first, last+1)
	}
	for i := range g.allocs {
		if i == l {
			continue
		}
		if _, err := g.allocs[i].RevisionsAbove(context.Background(), 0, 0); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("follower %d answered the current value: %v", i+1, err)
		}
	}
}

// TestAllocatorDeposedRefuses (issue 27): a leader cut off from the others
// (here: they stop) answers ErrNotLeader — callers then ask the new leader
// — once check quorum deposes it, also to requests whose round was already
// waiting on its read index; it never hands out a revision without its
// quorum. Before, such a round waited out its 5 s timeout, past the
// callers' 3 s deadline here.
func TestAllocatorDeposedRefuses(t *testing.T) {
	g := startGroup(t, 3, 1000)
	g.take(t, 1)
	l := g.leader(t)
	var stops sync.WaitGroup
	for i := range g.nhs {
		if i != l {
			stops.Go(func() { g.stop(i) })
		}
	}
	// Rounds asked while the followers go, and after: each is refused, by
	// a replica that knows it no longer leads or that stops leading while
	// its round waits; none is answered, none waits out its round.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := g.allocs[l].Revisions(ctx, 1)
		cancel()
		if err == nil {
			continue // answered before the followers were gone
		}
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("the cut-off leader's allocator: %v, want ErrNotLeader", err)
		}
		if _, _, ok, _ := g.nhs[l].GetLeaderID(testShard); !ok {
			break // deposed, and it said so
		}
	}
	stops.Wait()
}
