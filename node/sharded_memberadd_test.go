package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
)

// TestShardedMemberAddResumes: MemberAdd answers once the new member is in
// the placement group, and the placement leader walks it into every range
// afterwards. The member that took the add (the placement leader) is
// stopped right after it answers; once the cluster has its quorum again
// (the stopped member restarts: the unstarted newcomer votes), the
// placement leader finishes the walk from the range map's mark: every
// range's raft group has the newcomer's replica as a voter, the map
// records it so, and splits, refused while a change is under way, go on.
func TestShardedMemberAddResumes(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("h", "p"), nodetest.RangeReplicas(node.EveryMember))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var leader int
	nodetest.Eventually(t, "a placement leader", func() bool {
		id := cl.Node(0).PlacementLeader()
		leader = cl.MemberIndex(id)
		return id != 0 && leader >= 0
	})
	c := nodetest.NewClient(t, cl.URLs()[leader])
	added, err := c.MemberAdd(ctx, []string{"http://" + testport.Addr(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Stop(leader); err != nil {
		t.Fatal(err)
	}
	cl.Restart(leader)
	other := cl.Node((leader + 1) % 3)
	newcomer := placement.NodeID(added.Member.ID)
	// Within the test's deadline: the add resumes after the restarted
	// leader's member is back and a new placement leader looks (seconds
	// on a loaded machine).
	nodetest.WaitFor(ctx, t, func() error {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		ranges, err := other.RangeMap(rctx)
		if err != nil || len(ranges) != 3 {
			return fmt.Errorf("the newcomer votes in every range: range map %v, %v", ranges, err)
		}
		raft := other.RaftReplicas()
		for _, d := range ranges {
			id, ok := placement.ReplicaOf(d, newcomer)
			if !ok || !slices.Contains(raft[d.Id], uint64(id)) {
				return fmt.Errorf("the newcomer votes in every range: range %d: map replica %d (%v), raft %v", d.Id, id, ok, raft[d.Id])
			}
			for _, p := range placement.Pairs(d) {
				if p.Member == uint64(newcomer) && p.Learner {
					return fmt.Errorf("the newcomer votes in every range: still a learner in range %d", d.Id)
				}
			}
		}
		return nil
	})
	nodetest.Eventually(t, "splits go on", func() bool {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		_, err := other.SplitRange(rctx, []byte("x"))
		return err == nil
	})
}
