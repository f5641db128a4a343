package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
)

// memberListOf is member list l as one line per member, by id: what must
// read the same on every member.
func memberListOf(l []*pb.Member) string {
	ms := slices.Clone(l)
	slices.SortFunc(ms, func(a, b *pb.Member) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	var out string
	for _, m := range ms {
		out += fmt.Sprintf("%x name=%s peers=%v clients=%v learner=%t\n", m.ID, m.Name, m.PeerURLs, m.ClientURLs, m.IsLearner)
	}
	return out
}

// TestPlacementVotersCapped: five founders with --placement-replicas 3
// (and the default --range-replicas: each range on three of them):
// the three with the lowest member ids vote in the placement group, the
// other two run non-voting replicas of it; the member list (as etcdctl
// member list reads it) is the same on every member, complete, and shows
// no learner. With a placement voter stopped, the non-voting members still
// read the range map, get revisions from the oracle and serve writes and
// reads.
func TestPlacementVotersCapped(t *testing.T) {
	cl := nodetest.Start(t, 5, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) { c.PlacementReplicas = 3 }))
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ids := make([]uint64, len(nodes))
	for i, n := range nodes {
		ids[i] = n.MemberID()
	}
	sorted := slices.Sorted(slices.Values(ids))
	voter := func(i int) bool { return slices.Index(sorted, ids[i]) < 3 }
	nodetest.Eventually(t, "the three lowest member ids vote in the placement group, the others do not", func() bool {
		for i, n := range nodes {
			nonVoting, ok := n.PlacementNonVoting()
			if !ok || nonVoting == voter(i) {
				return false
			}
		}
		return true
	})
	var lists []string
	nodetest.Eventually(t, "every member lists all five, with their attributes, the same, none a learner", func() bool {
		lists = lists[:0]
		for i := range nodes {
			resp, err := cl.Client(i).MemberList(ctx)
			if err != nil || len(resp.Members) != len(nodes) {
				return false
			}
			for _, m := range resp.Members {
				if m.IsLearner || m.Name == "" || len(m.ClientURLs) == 0 || len(m.PeerURLs) == 0 {
					return false
				}
			}
			lists = append(lists, memberListOf(resp.Members))
		}
		for _, l := range lists[1:] {
			if l != lists[0] {
				return false
			}
		}
		return true
	})
	t.Logf("member list:\n%s", lists[0])
	// No RangeReplicas given: each range is on DefaultRangeReplicas of the
	// five, not on all of them.
	ds, err := nodes[0].RangeMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if got := len(placement.Pairs(d)); got != node.DefaultRangeReplicas {
			t.Errorf("range %d has %d replicas, want the default %d", d.Id, got, node.DefaultRangeReplicas)
		}
	}

	// Stop a placement voter: the other two still make its quorum.
	stopped := slices.IndexFunc(ids, func(id uint64) bool { return id == sorted[0] })
	if err := cl.Stop(stopped); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if voter(i) {
			continue
		}
		ranges, err := n.RangeMap(ctx)
		if err != nil || len(ranges) != 2 {
			t.Fatalf("member %x (non-voting): range map %v, %v", ids[i], ranges, err)
		}
		rev, err := n.OracleRevisions(ctx, 10)
		if err != nil || rev <= 0 {
			t.Fatalf("member %x (non-voting): oracle: %d, %v", ids[i], rev, err)
		}
		c := cl.Client(i)
		for _, k := range []string{"a", "z"} {
			key := fmt.Sprintf("%s-%x", k, ids[i])
			// A range the stopped member led elects another leader first.
			nodetest.WaitFor(ctx, t, func() error {
				_, err := c.Put(ctx, key, "v")
				return err
			})
			resp, err := c.Get(ctx, key)
			if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
				t.Fatalf("member %x (non-voting): get %s: %v, %v", ids[i], key, resp, err)
			}
		}
	}
}

// TestMemberListFromPlacement: the members' attributes are their node
// records in the placement group: after every member restarted, the
// member list and the records name each member, its client and peer URLs;
// a member update moves the member's peer URLs in the records and in the
// member list of every member.
func TestMemberListFromPlacement(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("m"))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for i := range cl.Size() {
		cl.Restart(i)
	}
	nodes := cl.Nodes()
	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	nodetest.WaitFor(wctx, t, func() error {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		recs, err := nodes[0].NodeRecords(rctx)
		if err != nil {
			return err
		}
		for i, n := range nodes {
			r := recs[n.MemberID()]
			if r == nil || r.Name != cl.Config(i).Name || len(r.ClientUrls) == 0 ||
				!slices.Equal(r.PeerUrls, cl.Config(i).ListenPeerURLs) || r.Learner {
				return fmt.Errorf("member %x (%s, peer URLs %v): node record %v", n.MemberID(), cl.Config(i).Name, cl.Config(i).ListenPeerURLs, r)
			}
		}
		return nil
	})
	same := func(what string, members int, want func(m *pb.Member) bool) {
		t.Helper()
		nodetest.Eventually(t, what, func() bool {
			for i := range members {
				resp, err := cl.Client(i).MemberList(ctx)
				if err != nil || len(resp.Members) != len(nodes) {
					return false
				}
				for _, m := range resp.Members {
					if !want(m) {
						return false
					}
				}
			}
			return true
		})
	}
	urls := map[uint64][]string{}
	for i, n := range nodes {
		urls[n.MemberID()] = cl.Config(i).ListenPeerURLs
	}
	same("every member lists every member's name, client and peer URLs after the restarts", len(nodes), func(m *pb.Member) bool {
		return m.Name != "" && len(m.ClientURLs) > 0 && slices.Equal(m.PeerURLs, urls[m.ID]) && !m.IsLearner
	})

	// Move member 2's peer URLs (it is not restarted there: nothing
	// listens, which the member list does not check).
	id := nodes[2].MemberID()
	moved := []string{"http://" + testport.Addr(t)}
	if _, err := cl.Client(0).MemberUpdate(ctx, id, moved); err != nil {
		t.Fatal(err)
	}
	urls[id] = moved
	nodetest.Eventually(t, "the updated member's node record has its new peer URLs", func() bool {
		recs, err := nodes[1].NodeRecords(ctx)
		return err == nil && recs[id] != nil && slices.Equal(recs[id].PeerUrls, moved)
	})
	// The moved member itself is cut off until it restarts there.
	same("every other member lists the updated member's new peer URLs", 2, func(m *pb.Member) bool {
		return slices.Equal(m.PeerURLs, urls[m.ID])
	})
}
