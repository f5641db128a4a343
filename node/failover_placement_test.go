package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// TestFailoverPlacementLeader (issue 27): three sharded members, every
// range and the placement group on all three. The member leading the
// placement group — the revision oracle — is cut off from the others
// (alive, its raft messages lost, its node-to-node calls still answered:
// it believes it leads until check quorum deposes it). Every range's
// leader is first moved off that member, so that only the oracle fails
// over (a range's own failover is TestFailoverOutsider's). A put and a
// linearizable get through another member, sent at once, both need the
// oracle (a revision to stamp the put with; the cluster's current
// revision for the get's header), and both answer within 3 s: the
// election time plus a round, not the oracle's 5 s trip and round
// timeouts (before the fix: about 5 s each).
func TestFailoverPlacementLeader(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3),
		nodetest.Partitionable())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const key = "x"

	// serves waits until member i reads and writes key.
	serves := func(i int, stage string) {
		t.Helper()
		c := cl.Client(i)
		nodetest.WaitFor(ctx, t, func() error {
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
			defer wcancel()
			if _, err := c.Put(wctx, key, stage); err != nil {
				return err
			}
			_, err := c.Get(wctx, key)
			return err
		})
	}
	serves(0, "before")

	// The placement leader, as every member has it.
	var pl int
	nodetest.Eventually(t, "the members agree on the placement group's leader", func() bool {
		id := cl.Node(0).PlacementLeader()
		for i := range cl.Size() {
			if id == 0 || cl.Node(i).PlacementLeader() != id {
				return false
			}
		}
		pl = cl.MemberIndex(id)
		return true
	})
	// rangeLeaders is each range's leader as member i's replica has it
	// (every member holds every range).
	rangeLeaders := func(i int) map[uint64]uint64 {
		out := map[uint64]uint64{}
		for _, ri := range cl.Node(i).Ranges() {
			out[ri.ID] = ri.Leader
		}
		return out
	}
	// Every range's lead goes to the member after the placement
	// leader's, off the member to be cut off.
	to := (pl + 1) % cl.Size()
	nc := operatorClient(t, cl, to)
	for id := range rangeLeaders(to) {
		nodetest.Eventually(t, fmt.Sprintf("member %d leads range %d", to, id), func() bool {
			switch rangeLeaders(to)[id] {
			case cl.Node(to).MemberID():
				return true
			case 0:
				return false
			}
			// It returns once the lead moved, or failed to (asked again).
			if _, err := nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: id, Member: cl.Node(to).MemberID()}); err != nil {
				t.Logf("range %d's lead to member %d: %v", id, to, err)
			}
			return false
		})
	}
	// The client's member: the one leading neither the placement group
	// nor (after the moves) any range, so that the put is forwarded too.
	via := (pl + 2) % cl.Size()
	serves(via, "moved")
	// Nothing moved back meanwhile (no scheduler runs in these tests).
	if got := cl.Node(via).PlacementLeader(); got != cl.Node(pl).MemberID() {
		t.Fatalf("the placement group's lead moved from member %d to %x before the cut", pl, got)
	}
	for id, l := range rangeLeaders(to) {
		if l != cl.Node(to).MemberID() {
			t.Fatalf("range %d's lead moved from member %d to %x before the cut", id, to, l)
		}
	}

	cl.Partition(pl)
	c := cl.Client(via)
	getErr, getTook, putErr, putTook := getAndPutAtOnce(ctx, c, key, "cut")
	t.Logf("placement leader cut off: get %v after %v, put %v after %v", getErr, getTook, putErr, putTook)
	if getErr != nil || getTook > 3*time.Second {
		t.Errorf("linearizable get through member %d: %v after %v, want an answer within 3 s", via, getErr, getTook)
	}
	if putErr != nil || putTook > 3*time.Second {
		t.Errorf("put through member %d: %v after %v, want success within 3 s", via, putErr, putTook)
	}
	if id := cl.Node(via).PlacementLeader(); id == 0 || id == cl.Node(pl).MemberID() {
		t.Errorf("member %d names placement leader %x after the cut, want one of the others", via, id)
	}

	cl.Heal()
	serves(pl, "healed")
}
