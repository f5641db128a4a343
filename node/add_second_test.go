package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestShardedAddSecondMember: a one-member sharded cluster (how a cluster
// restored from a snapshot starts) grows to two as etcd's does. MemberAdd
// answers within etcdctl's 5 s although the placement group has no quorum
// from then until the new member runs; the member then joins with
// --initial-cluster-state existing, the member list shows both started,
// each range gets a voting replica on it (the default --range-replicas 3,
// with two members: both), writes and reads go through either member, and
// later changes (a split, another add and its removal) are not held up by
// the add's mark. In "restarted", the first member stops right after the
// answer and starts again before the new member does (it cannot elect
// itself then): the walk over the ranges is the one its placement leader
// resumes from the range map's mark.
func TestShardedAddSecondMember(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := "answered"
		if restart {
			name = "restarted"
		}
		t.Run(name, func(t *testing.T) { testAddSecondMember(t, restart) })
	}
}

func testAddSecondMember(t *testing.T, restart bool) {
	// The token Join starts the new member with: the member's id derives
	// from it.
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) { c.InitialClusterToken = "test-cluster" }))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c0 := cl.Client(0)
	for _, k := range []string{"a", "z"} { // one key in each range
		if _, err := c0.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}

	peer := "http://" + testport.Addr(t)
	actx, acancel := context.WithTimeout(ctx, 5*time.Second) // etcdctl's --command-timeout
	began := time.Now()
	added, err := c0.MemberAdd(actx, []string{peer})
	acancel()
	t.Logf("member add answered in %v", time.Since(began))
	if err != nil {
		t.Fatalf("member add on a one-member cluster: %v", err)
	}
	if len(added.Members) != 2 {
		t.Fatalf("member add answered the member list %v, want both members", added.Members)
	}
	newcomer := placement.NodeID(added.Member.ID)
	n0 := cl.Node(0)
	var restarted chan error
	if restart {
		if err := cl.Stop(0); err != nil {
			t.Fatal(err)
		}
		// It starts once the new member runs: it reads the range map,
		// which takes the placement group's quorum, through the new member
		// (so not nodetest's Restart, which would wait for it first).
		restarted = make(chan error, 1)
		go func() {
			var err error
			n0, err = node.Start(ctx, cl.Config(0))
			restarted <- err
		}()
	}
	i := cl.Join(added.Members, added.Member.ID, peer)
	if restart {
		if err := <-restarted; err != nil {
			t.Fatalf("restart of the first member: %v", err)
		}
		t.Cleanup(func() { _ = n0.Close() })
		c0 = nodetest.NewClient(t, n0.ClientURLs()...)
	}
	c1 := cl.Client(i)

	nodetest.WaitFor(ctx, t, func() error {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		ml, err := c1.MemberList(rctx)
		if err != nil {
			return err
		}
		if len(ml.Members) != 2 {
			return fmt.Errorf("member list %v, want two members", ml.Members)
		}
		for _, m := range ml.Members {
			if m.Name == "" || len(m.ClientURLs) == 0 || m.IsLearner {
				return fmt.Errorf("member %x has not started as a voter: %v", m.ID, m)
			}
		}
		return nil
	})
	nodetest.WaitFor(ctx, t, func() error {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		ranges, err := n0.RangeMap(rctx)
		if err != nil || len(ranges) != 2 {
			return fmt.Errorf("range map %v: %v", ranges, err)
		}
		for n, nd := range []*node.Node{n0, cl.Node(i)} {
			raft := nd.RaftReplicas()
			for _, d := range ranges {
				id, ok := placement.ReplicaOf(d, newcomer)
				votes := slices.ContainsFunc(placement.Voters(d), func(p *placementpb.Replica) bool { return p.Id == uint64(id) })
				if !ok || !votes || !slices.Contains(raft[d.Id], uint64(id)) {
					return fmt.Errorf("range %d: the newcomer's replica %d (named %t) votes in the map %v and in raft on m%d %v",
						d.Id, id, ok, placement.Pairs(d), n, raft[d.Id])
				}
			}
		}
		return nil
	})

	for n, c := range []*clientv3.Client{c0, c1} {
		for _, k := range []string{"a", "z"} {
			v := fmt.Sprintf("through m%d", n)
			if _, err := c.Put(ctx, k, v); err != nil {
				t.Fatalf("put %s through m%d: %v", k, n, err)
			}
			for r, rc := range []*clientv3.Client{c0, c1} {
				resp, err := rc.Get(ctx, k)
				if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != v {
					t.Fatalf("get %s through m%d after a put through m%d: %v %v", k, r, n, resp, err)
				}
			}
		}
	}

	// The add's mark is over: splits and further changes go on.
	if _, err := cl.Node(i).SplitRange(ctx, []byte("t")); err != nil {
		t.Fatalf("split after the add: %v", err)
	}
	actx, acancel = context.WithTimeout(ctx, 5*time.Second)
	third, err := c1.MemberAdd(actx, []string{"http://" + testport.Addr(t)})
	acancel()
	if err != nil {
		t.Fatalf("a third member: %v", err)
	}
	if _, err := c0.MemberRemove(ctx, third.Member.ID); err != nil {
		t.Fatalf("removing the third member: %v", err)
	}
}
