package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// replicaCheck compares what the members of a sharded cluster run with
// the range map: every member runs every range under the replica id the
// map's pair names for it, and each range's raft voters are the ids of
// its voting pairs. It returns the map as the first member reads it.
func replicaCheck(ctx context.Context, t *testing.T, stage string, nodes []*node.Node) []*placementpb.RangeDescriptor {
	t.Helper()
	var ranges []*placementpb.RangeDescriptor
	nodetest.Eventually(t, stage+": every member runs every range under the id the map names, and raft agrees", func() bool {
		var err error
		if ranges, err = nodes[0].RangeMap(ctx); err != nil {
			return false
		}
		for _, n := range nodes {
			local, raft := n.LocalReplicas(), n.RaftReplicas()
			for _, d := range ranges {
				id, ok := placement.ReplicaOf(d, placement.NodeID(n.MemberID()))
				if !ok || local[d.Id] != uint64(id) {
					return false
				}
				var voters []uint64
				for _, p := range placement.Voters(d) {
					voters = append(voters, p.Id)
				}
				slices.Sort(voters)
				if !slices.Equal(raft[d.Id], voters) {
					return false
				}
			}
		}
		return true
	})
	return ranges
}

// fmtPairs shows a range's pairs as member:id.
func fmtPairs(pairs []*placementpb.Replica) string {
	var out []string
	for _, p := range pairs {
		out = append(out, fmt.Sprintf("%x:%d", p.Member, p.Id))
	}
	return fmt.Sprint(out)
}

// TestShardedReplicaIDs: a new sharded cluster of three founds every range
// with every member, each replica under an id the range map allocated —
// none a member's id —, and each range's raft membership is its pairs; a
// split's new range has its parent's pairs; after every member restarted,
// the same holds and every range serves.
func TestShardedReplicaIDs(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("h", "p"))
	nodes := cl.Nodes()
	c := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	members := map[uint64]bool{}
	for _, n := range nodes {
		members[n.MemberID()] = true
	}
	ranges := replicaCheck(ctx, t, "founded", nodes)
	if len(ranges) != 3 {
		t.Fatalf("%d ranges, want 3", len(ranges))
	}
	for _, d := range ranges {
		pairs := placement.Pairs(d)
		if len(pairs) != 3 {
			t.Fatalf("range %d: pairs %s, want one per member", d.Id, fmtPairs(pairs))
		}
		for _, p := range pairs {
			if members[p.Id] || !members[p.Member] {
				t.Fatalf("range %d: pairs %s: a replica id is a member id, or a member unknown", d.Id, fmtPairs(pairs))
			}
		}
	}

	keys := []string{"a", "j", "s", "z"}
	for _, k := range keys {
		if _, err := c.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	made, err := nodes[1].SplitRange(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	parent, child := made[0], made[1]
	if got, want := fmtPairs(placement.Pairs(child)), fmtPairs(placement.Pairs(parent)); got != want {
		t.Fatalf("the split's new range has pairs %s, want its parent's %s", got, want)
	}
	ranges = replicaCheck(ctx, t, "split", nodes)
	if len(ranges) != 4 {
		t.Fatalf("%d ranges after the split, want 4", len(ranges))
	}

	for i := range nodes {
		nodes[i] = cl.Restart(i)
	}
	replicaCheck(ctx, t, "restarted", nodes)
	c = nodetest.NewClient(t, cl.URLs()...) // restarted members listen on new URLs
	for i, k := range append(keys, "y") {
		if _, err := c.Put(ctx, k, fmt.Sprint("after-", i)); err != nil {
			t.Fatalf("put %s after the restarts: %v", k, err)
		}
	}
	for _, cc := range cl.Clients() {
		nodetest.Eventually(t, "every member reads every range", func() bool {
			r, err := cc.Get(ctx, "", clientv3.WithPrefix())
			return err == nil && len(r.Kvs) == len(keys)+1
		})
	}
}

// TestShardedLegacyDataDir: a cluster whose range map was bootstrapped
// before replica ids were allocated (every founder holds every range
// under its member id) restarts with today's code, adds a member and
// splits: the old ranges keep their founders' replicas under member ids,
// the new member's replicas get allocated ids, and a new range has its
// parent's pairs, old and new.
func TestShardedLegacyDataDir(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("p"), nodetest.Edit(node.LegacyBootstrap), nodetest.RangeReplicas(node.EveryMember))
	nodes := cl.Nodes()
	c := nodetest.NewClient(t, cl.URLs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	legacy := func(d *placementpb.RangeDescriptor) bool {
		for _, p := range placement.Pairs(d) {
			if p.Id != p.Member {
				return false
			}
		}
		return true
	}
	for _, d := range replicaCheck(ctx, t, "founded the old way", nodes) {
		if !legacy(d) {
			t.Fatalf("range %d founded the old way has pairs %s", d.Id, fmtPairs(placement.Pairs(d)))
		}
	}
	for _, k := range []string{"a", "q"} {
		if _, err := c.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range nodes {
		nodes[i] = cl.Restart(i)
	}
	replicaCheck(ctx, t, "restarted", nodes)
	c = nodetest.NewClient(t, cl.URLs()...) // restarted members listen on new URLs

	peer := "http://" + testport.Addr(t)
	// Just restarted, the members may not all answer the reconfiguration
	// check's health round yet ("unhealthy cluster", as etcd answers
	// right after a start): try again within the test's deadline.
	var add *clientv3.MemberAddResponse
	nodetest.WaitFor(ctx, t, func() (err error) {
		add, err = c.MemberAdd(ctx, []string{peer})
		if err != nil && !errors.Is(err, rpctypes.ErrGRPCUnhealthy) && !strings.Contains(err.Error(), "unhealthy cluster") {
			t.Fatal(err)
		}
		return err
	})
	m3 := cl.Join(add.Members, add.Member.ID, peer)
	nodes = append(nodes, cl.Node(m3))
	ranges := replicaCheck(ctx, t, "a member added", nodes)
	for _, d := range ranges {
		for _, p := range placement.Pairs(d) {
			switch {
			case p.Member == add.Member.ID && p.Id == p.Member:
				t.Fatalf("range %d: the new member's replica has its member id: %s", d.Id, fmtPairs(placement.Pairs(d)))
			case p.Member != add.Member.ID && p.Id != p.Member:
				t.Fatalf("range %d: a founder's replica changed id: %s", d.Id, fmtPairs(placement.Pairs(d)))
			}
		}
	}
	made, err := nodes[0].SplitRange(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmtPairs(placement.Pairs(made[1])), fmtPairs(placement.Pairs(made[0])); got != want {
		t.Fatalf("the split's new range has pairs %s, want its parent's %s", got, want)
	}
	replicaCheck(ctx, t, "split", nodes)
	nc := cl.Client(m3)
	nodetest.Eventually(t, "the new member knows it votes", func() bool {
		st, err := nc.Status(ctx, nodes[m3].ClientURLs()[0])
		return err == nil && !st.IsLearner
	})
	for i, k := range []string{"a", "q", "y"} {
		if _, err := nc.Put(ctx, k, fmt.Sprint("after-", i)); err != nil {
			t.Fatalf("put %s through the new member: %v", k, err)
		}
		nodetest.Eventually(t, "the new member's replica has "+k, func() bool {
			r, err := nc.Get(ctx, k, clientv3.WithSerializable())
			return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == fmt.Sprint("after-", i)
		})
	}
}
