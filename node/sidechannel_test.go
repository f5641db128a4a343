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
// and messages that carry several ranges at once, on Side streams (no
// Closed call), each message counted in cairn_forwarded_requests_total.
func TestSideChannelPerNodePair(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("b", "d", "f", "h", "j", "l", "n"))
	nodes := cl.Nodes()
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
	// The messages travel on Side streams, each counted as one sent in
	// cairn_forwarded_requests_total (at most one per stream may be
	// taken before its send is counted); none as a Closed call.
	var received int64
	for _, n := range nodes {
		m, _, _ := n.SideChannelReceived()
		received += m
	}
	var sent, calls float64
	for _, u := range cl.URLs() {
		fams := scrape(t, u+"/metrics")
		sent += sum(fams, "cairn_forwarded_requests_total", map[string]string{"kind": "Side", "result": "ok"})
		calls += sum(fams, "cairn_forwarded_requests_total", map[string]string{"kind": "Closed"})
	}
	if sent < float64(received-6) || calls != 0 {
		t.Errorf("cairn_forwarded_requests_total: %v Side messages sent, %v Closed calls; want %d or more (received) and none", sent, calls, received-6)
	}
	t.Log(report())
}
