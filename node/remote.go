package node

import (
	"time"
)

// Sharded mode on several nodes: what only a range's leader may do (stamp
// a write, answer at a closed revision) or only the placement group's
// leader may do (hand out revisions) is sent to the node that leads, over
// the node-to-node service (internalpb.Node) on its client port. The
// router forwards and serves it (router/forward.go, router/internal.go);
// the node wires what it serves from (router.NewMember, in serve).

// forwardRetry is the wait between tries while leadership is moving.
const forwardRetry = 10 * time.Millisecond
