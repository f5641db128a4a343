package node_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// putEach writes every subset key through c.
func putEach(t *testing.T, ctx context.Context, c *clientv3.Client, value string) {
	t.Helper()
	for _, k := range subsetKeys {
		if _, err := c.Put(ctx, k, value); err != nil {
			t.Fatalf("put %s=%s: %v", k, value, err)
		}
	}
}

// addMember adds a member through c (etcd's MemberAdd), starts it and
// waits until it serves a member list with every member; it returns its
// id and its index in cl.
func addMember(t *testing.T, ctx context.Context, cl *nodetest.Cluster, c *clientv3.Client) (uint64, int) {
	t.Helper()
	peer := "http://" + testport.Addr(t)
	added, err := c.MemberAdd(ctx, []string{peer})
	if err != nil {
		t.Fatal(err)
	}
	i := cl.Join(added.Members, added.Member.ID, peer)
	// A member joins as a learner would, until it finds itself no learner
	// (its node record; it has no replica to be promoted in).
	nodetest.Eventually(t, "the new member serves its member list, of all", func() bool {
		ml, err := cl.Client(i).MemberList(ctx)
		return err == nil && len(ml.Members) == len(added.Members)
	})
	return added.Member.ID, i
}

// leftNothing waits until member gone holds nothing of the ranges in left
// (their descriptors as the map had them while it held them): it runs no
// replica of them and keeps no record of one, no raft data of its replica
// (bootstrap record, snapshots) and, in its pebble, none of their data of
// any kind — versions and event log entries of keys in their spans, their
// stores' and lessors' records (node.RangeData). What it keeps of ranges
// it still holds is theirs, and not looked at.
func leftNothing(t *testing.T, gone *node.Node, left ...*placementpb.RangeDescriptor) {
	t.Helper()
	if len(left) == 0 {
		t.Fatal("leftNothing: no range left")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Bounded by a minute, not Eventually's 20 s: a drop's event log sweep
	// is slower on a loaded machine; a failure says what is left.
	nodetest.WaitFor(ctx, t, func() error {
		recs, err := gone.ReplicaRecords()
		if err != nil {
			return err
		}
		for _, d := range left {
			rid, ok := placement.ReplicaOf(d, placement.NodeID(gone.MemberID()))
			if !ok {
				t.Fatalf("leftNothing: range %d's descriptor %v does not name member %x", d.Id, placement.Pairs(d), gone.MemberID())
			}
			what := fmt.Sprintf("member %x, range %d (replica %d)", gone.MemberID(), d.Id, rid)
			if r, runs := gone.LocalReplicas()[d.Id]; runs {
				return fmt.Errorf("%s: runs replica %d", what, r)
			}
			for _, rec := range recs {
				if uint64(rec.Range) == d.Id {
					return fmt.Errorf("%s: record %+v", what, rec)
				}
			}
			if boot, snaps, err := gone.RaftData(d.Id, uint64(rid)); err != nil || boot || len(snaps) != 0 {
				return fmt.Errorf("%s: raft data: bootstrap %v, snapshots %v (%v)", what, boot, snaps, err)
			}
			kinds, err := gone.RangeData(d)
			if err != nil {
				return err
			}
			for _, k := range rangeKinds {
				if kinds[k] != 0 {
					return fmt.Errorf("%s: pebble holds %s of it", what, fmtKinds(kinds))
				}
			}
		}
		return nil
	})
}

// heldBy returns the descriptors of the ranges the map, read through
// member 0, has on member i.
func heldBy(t *testing.T, cl *nodetest.Cluster, i int) []*placementpb.RangeDescriptor {
	t.Helper()
	var out []*placementpb.RangeDescriptor
	for _, d := range rangeMapOf(t, cl) {
		if _, ok := placement.ReplicaOf(d, placement.NodeID(cl.Node(i).MemberID())); ok {
			out = append(out, d)
		}
	}
	return out
}

// leftEverything is leftNothing of a member removed, which left every
// range in held: besides, it runs no replica at all and keeps no record.
func leftEverything(t *testing.T, gone *node.Node, held []*placementpb.RangeDescriptor) {
	t.Helper()
	leftNothing(t, gone, held...)
	recs, err := gone.ReplicaRecords()
	if got := gone.LocalReplicas(); len(got) != 0 || err != nil || len(recs) != 0 {
		t.Fatalf("the member removed runs replicas %v and keeps records %+v (%v), want none", got, recs, err)
	}
}

// raftIsMap asserts that every range's raft membership, on each member
// the map names as holding it, is the map's voters, and that each range
// has three of them, none on member gone.
func raftIsMap(t *testing.T, cl *nodetest.Cluster, gone uint64) {
	t.Helper()
	nodetest.Eventually(t, "every range has three voters, none on the member gone, and raft agrees", func() bool {
		for _, d := range rangeMapOf(t, cl) {
			voters := placement.Voters(d)
			if len(voters) != 3 || len(placement.Pairs(d)) != 3 {
				return false
			}
			if _, ok := placement.ReplicaOf(d, placement.NodeID(gone)); ok {
				return false
			}
			var want []uint64
			for _, p := range voters {
				want = append(want, p.Id)
			}
			slices.Sort(want)
			for _, p := range voters {
				n := cl.Node(cl.MemberIndex(p.Member))
				if n.LocalReplicas()[d.Id] != p.Id || !slices.Equal(slices.Sorted(slices.Values(n.RaftReplicas()[d.Id])), want) {
					return false
				}
			}
		}
		return true
	})
}

// TestMemberAddGetsNoRanges: five members, three replicas per range, ten
// ranges; a sixth member added (etcd's MemberAdd, started with
// --initial-cluster-state existing) is in the member list but is given no
// replica of any range — every range keeps its three — and serves every
// request through the members holding the ranges.
func TestMemberAddGetsNoRanges(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := cl.Client(0)
	putEach(t, ctx, c, "before")

	addedID, i := addMember(t, ctx, cl, c)
	n, nc := cl.Node(i), cl.Client(i)
	for _, key := range subsetKeys {
		nodetest.Eventually(t, "the new member reads "+key, func() bool {
			r, err := nc.Get(ctx, key)
			return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "before"
		})
	}
	putEach(t, ctx, nc, "through-new")
	all, err := nc.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) != len(subsetKeys) {
		t.Fatalf("read of every range through the new member: %v, %v", all, err)
	}
	for _, kv := range all.Kvs {
		if string(kv.Value) != "through-new" {
			t.Fatalf("read through the new member: %s=%s", kv.Key, kv.Value)
		}
	}
	if r, err := nc.Get(ctx, "c", clientv3.WithSerializable()); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("serializable read through the new member: %v, %v", r, err)
	}
	// The placement leader has had its look at the add (resumeChanges polls
	// every 200ms): the reads above took longer; the map and the member
	// hold nothing for it.
	raftIsMap(t, cl, addedID)
	if got := n.LocalReplicas(); len(got) != 0 {
		t.Fatalf("the new member runs replicas %v, want none", got)
	}
	if kinds, err := n.StoredKinds(); err != nil || kinds['k'] != 0 {
		t.Fatalf("the new member stores %v keys (%v), want none", kinds['k'], err)
	}
}

// TestMemberRemoveDrains: five members, three replicas per range, three
// ranges; removing a member that holds replicas (not range 1's here:
// TestMemberRemoveDrainsFirstRange) moves each of them to another member
// first: every range still has three voters, none on the member removed,
// each range's raft membership is the map's, the member removed runs no
// replica and keeps nothing of the ranges it held (leftNothing), and
// requests through the other members go on working throughout.
func TestMemberRemoveDrains(t *testing.T) {
	// Three ranges, so that the member leaving holds one or two replicas:
	// each is one move, and one shows the drain as well as ten.
	cl := nodetest.Start(t, 5, nodetest.Sharded("g", "o"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	first := holders(t, cl, 1)
	victim := -1
	// Not member 0: the helpers read the range map through it.
	for i := 1; i < cl.Size(); i++ {
		if !slices.Contains(first, i) {
			victim = i
			break
		}
	}
	gone := cl.Node(victim)
	goneID := gone.MemberID()
	held := heldBy(t, cl, victim)
	if len(held) == 0 {
		t.Fatalf("member %d holds no replica", victim)
	}
	var others []string
	for i, u := range cl.URLs() {
		if i != victim {
			others = append(others, u)
		}
	}
	c := nodetest.NewClient(t, others...)
	putEach(t, ctx, c, "before")

	// Load through every other member while the member leaves.
	var (
		mu   sync.Mutex
		errs []error
		puts int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range cl.Size() {
		if i == victim {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cli := cl.Client(i)
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				key := subsetKeys[seq%len(subsetKeys)]
				_, err := cli.Put(ctx, key, fmt.Sprintf("m%d-%d", i, seq))
				if err == nil {
					_, err = cli.Get(ctx, key)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("member %d, %s: %w", i, key, err))
				} else {
					puts++
				}
				mu.Unlock()
			}
		}()
	}

	start := time.Now()
	if _, err := c.MemberRemove(ctx, goneID); err != nil {
		t.Fatalf("remove member %d: %v", victim, err)
	}
	t.Logf("member %d (%d replicas) removed in %v", victim, len(held), time.Since(start))
	close(stop)
	wg.Wait()
	mu.Lock()
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed during the removal, first: %v", len(errs), puts+len(errs), errs[0])
	}
	mu.Unlock()

	ml, err := c.MemberList(ctx)
	if err != nil || len(ml.Members) != 4 {
		t.Fatalf("member list after the removal: %v, %v", ml, err)
	}
	for _, m := range ml.Members {
		if m.ID == goneID {
			t.Fatalf("member %x still listed", goneID)
		}
	}
	// MemberIndex asks every running member: the removed one is stopped
	// first so that only members of the cluster answer.
	leftEverything(t, gone, held)
	if err := cl.Stop(victim); err != nil {
		t.Fatal(err)
	}
	raftIsMap(t, cl, goneID)

	putEach(t, ctx, c, "after")
	all, err := c.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) != len(subsetKeys) {
		t.Fatalf("read of every range after the removal: %v, %v", all, err)
	}
	for _, kv := range all.Kvs {
		if string(kv.Value) != "after" {
			t.Fatalf("after the removal: %s=%s", kv.Key, kv.Value)
		}
	}
}
