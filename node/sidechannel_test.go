package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestSideChannelPerNodePair: the closed revisions of the eight idle
// ranges of a three-member cluster reach each member over one side
// channel per peer: never more than one message from each peer at a time,
// and messages that carry several ranges at once.
func TestSideChannelPerNodePair(t *testing.T) {
	nodes := nodetest.Start(t, 3, nodetest.Sharded("b", "d", "f", "h", "j", "l", "n")).Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	report := func() string {
		s := ""
		for i, n := range nodes {
			m, r, f := n.SideChannelReceived()
			s += fmt.Sprintf(" m%d: %d messages, at most %d ranges in one, %d at once;", i, m, r, f)
		}
		return s
	}
	nodetest.WaitFor(ctx, t, func() error {
		// A member leading every range is sent nothing: count them all.
		var messages int64
		batched := false
		for _, n := range nodes {
			m, r, _ := n.SideChannelReceived()
			messages += m
			batched = batched || r >= 2
		}
		if messages >= 80 && batched {
			return nil
		}
		return fmt.Errorf("want 80 side-channel messages, some carrying several ranges:%s", report())
	})
	for i, n := range nodes {
		if _, _, f := n.SideChannelReceived(); f > 2 {
			t.Fatalf("m%d handled %d side-channel messages at once, want at most one per peer:%s", i, f, report())
		}
	}
	t.Log(report())
}
