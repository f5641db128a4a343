package node_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedCluster: a three-member sharded cluster serves every request
// from every member, whichever member leads the range (or the placement
// group): writes in every range, reads over several ranges, revisions
// unique and increasing across ranges and members.
func TestShardedCluster(t *testing.T) {
	clis := nodetest.Start(t, 3, nodetest.Sharded("c", "h", "p")).Clients()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	watches := make([]clientv3.WatchChan, len(clis))
	for i, cli := range clis {
		watches[i] = cli.Watch(ctx, "", clientv3.WithPrefix())
	}
	var revs []int64
	var last int64
	for i := range 24 {
		cli := clis[i%3]
		key := fmt.Sprintf("%c%d", "adqz"[i%4], i)
		resp, err := cli.Put(ctx, key, fmt.Sprint(i))
		if err != nil {
			t.Fatalf("put %s through member %d: %v", key, i%3, err)
		}
		if resp.Header.Revision <= last {
			t.Fatalf("put %s at %d after %d", key, resp.Header.Revision, last)
		}
		last = resp.Header.Revision
		revs = append(revs, last)
	}
	// Every member's watch over all ranges sees every put, in order.
	for i, w := range watches {
		var got []int64
		for len(got) < len(revs) {
			select {
			case <-ctx.Done():
				t.Fatalf("member %d's watch saw %v of %v", i, got, revs)
			case wr := <-w:
				if err := wr.Err(); err != nil {
					t.Fatalf("member %d's watch: %v", i, err)
				}
				for _, ev := range wr.Events {
					got = append(got, ev.Kv.ModRevision)
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(revs) {
			t.Fatalf("member %d's watch saw %v, want %v", i, got, revs)
		}
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatalf("read through member %d: %v", i, err)
		}
		if resp.Count != 24 || resp.Header.Revision < last {
			t.Fatalf("member %d: count %d at %d, want 24 at or above %d", i, resp.Count, resp.Header.Revision, last)
		}
		old, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(revs[11]))
		if err != nil || old.Count != 12 {
			t.Fatalf("member %d: read at revision %d: %v, %v", i, revs[11], old, err)
		}
	}

	// Compaction through every member, at the revision of a write to one
	// range while the others are idle: each range takes it (the range's
	// leader closes it), and every range refuses reads below it.
	for i := range clis {
		put, err := clis[i].Put(ctx, "a-compact", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev := put.Header.Revision
		if _, err := clis[(i+1)%3].Compact(ctx, rev); err != nil {
			t.Fatalf("compact at %d through member %d: %v", rev, (i+1)%3, err)
		}
		for _, k := range []string{"a0", "d1", "q2", "z3"} {
			if _, err := clis[i].Get(ctx, k, clientv3.WithRev(rev-1)); !errors.Is(err, rpctypes.ErrCompacted) {
				t.Fatalf("read %s at %d after compacting at %d through member %d: %v, want %v", k, rev-1, rev, i, err, rpctypes.ErrCompacted)
			}
		}
	}

	// A lease granted through one member, its keys put in three ranges
	// through another, revoked through the third: gone everywhere.
	gr, err := clis[1].Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a-l", "d-l", "z-l"} {
		if _, err := clis[2].Put(ctx, k, "v", clientv3.WithLease(gr.ID)); err != nil {
			t.Fatalf("put %s with the lease through member 2: %v", k, err)
		}
	}
	ttl, err := clis[0].TimeToLive(ctx, gr.ID, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 3 {
		t.Fatalf("time-to-live through member 0: %v, %v", ttl, err)
	}
	if _, err := clis[0].Revoke(ctx, gr.ID); err != nil {
		t.Fatal(err)
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 25 {
			t.Fatalf("member %d after the revoke: %v, %v", i, resp, err)
		}
	}
}

// TestShardedOracleFailover: the member leading the placement group (the
// revision oracle) stops while clients write through the other two;
// every acknowledged write has a revision of its own, each client's
// revisions increase, and writes after the failover are above every one
// before it: the new oracle leader starts above the persisted bound.
func TestShardedOracleFailover(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("c", "h", "p"))
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var leader *node.Node
	nodetest.WaitFor(ctx, t, func() error {
		for _, n := range nodes {
			if n.PlacementLeader() == n.MemberID() {
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no placement leader")
		}
		return nil
	})
	var clis []*clientv3.Client
	for i, n := range nodes {
		if n != leader {
			clis = append(clis, cl.Client(i))
		}
	}
	type ack struct {
		rev    int64
		before bool // acknowledged before the leader stopped
	}
	var mu sync.Mutex
	stopped := false
	acks := make([][]ack, 4)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			cli := clis[w%2]
			for i := 0; ; i++ {
				mu.Lock()
				done := stopped && len(acks[w]) > 0 && !acks[w][len(acks[w])-1].before && i > 60
				mu.Unlock()
				if done || ctx.Err() != nil {
					return
				}
				key := fmt.Sprintf("%c%d-%d", "adqz"[(w+i)%4], w, i)
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := cli.Put(wctx, key, "v")
				wcancel()
				if err != nil {
					continue // during the failover; not acknowledged
				}
				mu.Lock()
				acks[w] = append(acks[w], ack{resp.Header.Revision, !stopped})
				mu.Unlock()
			}
		})
	}
	nodetest.WaitFor(ctx, t, func() error {
		mu.Lock()
		n := len(acks[0]) + len(acks[1]) + len(acks[2]) + len(acks[3])
		mu.Unlock()
		if n < 40 {
			return errors.New("too few writes before the failover")
		}
		return nil
	})
	if err := leader.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	stopped = true
	mu.Unlock()
	wg.Wait()
	seen := map[int64]bool{}
	var maxBefore int64
	for _, as := range acks {
		for _, a := range as {
			if a.before {
				maxBefore = max(maxBefore, a.rev)
			}
		}
	}
	after := 0
	for w, as := range acks {
		for i, a := range as {
			if seen[a.rev] {
				t.Fatalf("revision %d acknowledged twice", a.rev)
			}
			seen[a.rev] = true
			if i > 0 && a.rev <= as[i-1].rev {
				t.Fatalf("writer %d: revision %d after %d", w, a.rev, as[i-1].rev)
			}
			if !a.before {
				after++
				// Begun after the stop: above everything acknowledged before.
				if i > 0 && !as[i-1].before && a.rev <= maxBefore {
					t.Fatalf("writer %d: revision %d after the failover, not above %d", w, a.rev, maxBefore)
				}
			}
		}
	}
	if after == 0 {
		t.Fatal("no write acknowledged after the failover")
	}
}

// TestShardedOracleFolds: revision requests that arrive together at a
// member not leading the placement group go to the leader's node folded
// into few round trips (not one each), and each gets revisions of its own:
// no two answers overlap.
func TestShardedOracleFolds(t *testing.T) {
	nodes := nodetest.Start(t, 3, nodetest.Sharded("m")).Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var follower *node.Node
	nodetest.WaitFor(ctx, t, func() error {
		for _, n := range nodes {
			if l := n.PlacementLeader(); l != 0 && l != n.MemberID() {
				follower = n
			}
		}
		if follower == nil {
			return errors.New("no placement leader")
		}
		return nil
	})
	const requests = 64
	type answer struct{ first, count int64 }
	answers := make([]answer, requests)
	errs := make([]error, requests)
	before := follower.OracleRoundTrips()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range requests {
		count := int64(1 + i%3)
		wg.Go(func() {
			<-start
			first, err := follower.OracleRevisions(ctx, count)
			answers[i], errs[i] = answer{first, count}, err
		})
	}
	close(start)
	wg.Wait()
	trips := follower.OracleRoundTrips() - before
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	slices.SortFunc(answers, func(a, b answer) int { return cmp.Compare(a.first, b.first) })
	for i := 1; i < len(answers); i++ {
		if prev := answers[i-1]; prev.first+prev.count > answers[i].first {
			t.Fatalf("answers overlap: [%d, +%d) and [%d, +%d)", prev.first, prev.count, answers[i].first, answers[i].count)
		}
	}
	if trips == 0 || trips > requests/4 {
		t.Fatalf("%d concurrent requests took %d round trips to the placement leader, want between 1 and %d", requests, trips, requests/4)
	}
	t.Logf("%d concurrent requests, %d round trips", requests, trips)
}

// TestShardedHashKV: HashKV in sharded mode hashes a member's replicas of
// every range at one revision: members holding the same data answer the
// same hash at the same revision, whichever member leads which range, a
// past revision keeps its hash after later writes, a new write changes
// the current one, and compacted or future revisions are refused as etcd
// refuses them.
func TestShardedHashKV(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("c", "h", "p"))
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clis := cl.Clients()
	var revs []int64
	for i, k := range []string{"a", "d", "i", "q", "a", "z"} {
		resp, err := clis[i%3].Put(ctx, k, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Header.Revision)
	}
	if _, err := clis[0].Compact(ctx, revs[1]); err != nil {
		t.Fatal(err)
	}
	hashes := func(rev int64) (uint32, int64) {
		t.Helper()
		var first uint32
		var at int64
		for i, n := range nodes {
			resp, err := clis[i].HashKV(ctx, n.ClientURLs()[0], rev)
			if err != nil {
				t.Fatalf("hashkv at %d through member %d: %v", rev, i, err)
			}
			if resp.CompactRevision != revs[1] {
				t.Fatalf("member %d: compact revision %d, want %d", i, resp.CompactRevision, revs[1])
			}
			if i == 0 {
				first, at = resp.Hash, resp.HashRevision
			} else if resp.Hash != first || (rev != 0 && resp.HashRevision != at) {
				t.Fatalf("hashkv at %d: member %d answers %d at %d, member 0 %d at %d", rev, i, resp.Hash, resp.HashRevision, first, at)
			}
		}
		return first, at
	}
	last := revs[len(revs)-1]
	atLast, hashRev := hashes(last)
	if hashRev != last {
		t.Fatalf("hashed at %d, asked %d", hashRev, last)
	}
	atMid, _ := hashes(revs[3])
	if atMid == atLast {
		t.Fatalf("the hashes at %d and %d are equal (%d), though writes lie between", revs[3], last, atMid)
	}
	if _, err := clis[1].Put(ctx, "k", "new"); err != nil {
		t.Fatal(err)
	}
	if again, _ := hashes(last); again != atLast {
		t.Fatalf("the hash at %d changed after a later write: %d, was %d", last, again, atLast)
	}
	if now, _ := hashes(0); now == atLast {
		t.Fatalf("the current hash did not change after a write: %d", now)
	}
	if _, err := clis[2].HashKV(ctx, nodes[2].ClientURLs()[0], revs[0]); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("hashkv at a compacted revision: %v, want %v", err, rpctypes.ErrCompacted)
	}
	if _, err := clis[2].HashKV(ctx, nodes[2].ClientURLs()[0], last+1<<40); !errors.Is(err, rpctypes.ErrFutureRev) {
		t.Fatalf("hashkv at a future revision: %v, want %v", err, rpctypes.ErrFutureRev)
	}
}
