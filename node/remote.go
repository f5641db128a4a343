package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// Sharded mode on several nodes: what only a range's leader may do (stamp
// a write, answer at a closed revision) or only the placement group's
// leader may do (hand out revisions) is sent to the node that leads, over
// the node-to-node service (internalpb.Node) on its client port. The
// router forwards and serves it (router/forward.go, router/internal.go);
// the node gives it its replicas (router.Local) and what only the node
// does (router.Member, memberService).

// forwardRetry is the wait between tries while leadership is moving.
const forwardRetry = 10 * time.Millisecond

// dialMember dials member id's client port (router.Dial).
func (n *Node) dialMember(id placement.NodeID) (grpc.ClientConnInterface, error) {
	return n.memberConn(uint64(id))
}

// memberService is what the node-to-node service asks of this node
// (router.Member).
type memberService struct{ n *Node }

func (s memberService) Range(id shard.RangeID) router.Local {
	if !s.n.cfg.Sharded {
		return nil // single-group mode serves no range to other members
	}
	if r := s.n.rangeSet.Get(id, false); r != nil {
		return router.LocalRange(r)
	}
	return nil
}

func (s memberService) Revisions(ctx context.Context, count int64, above mvcc.Revision) (mvcc.Revision, error) {
	if s.n.alloc == nil {
		return 0, fmt.Errorf("%w: not in sharded mode", placement.ErrNotLeader)
	}
	return s.n.alloc.RevisionsAbove(ctx, count, above)
}

func (s memberService) Published(r *internalpb.ClosedRequest) {
	defer s.n.side.Got(r)()
	for _, rc := range r.Ranges {
		if rr := s.n.rangeSet.Get(shard.RangeID(rc.Range), true); rr != nil {
			rr.Published(mvcc.Revision(rc.Closed), rc.Index)
		}
	}
}

func (s memberService) Kick(id shard.RangeID, rev mvcc.Revision) {
	if rr := s.n.rangeSet.Get(id, true); rr != nil {
		rr.WantClosed(rev)
	}
}

func (s memberService) SplitRange(ctx context.Context, key []byte) ([]*placementpb.RangeDescriptor, error) {
	return s.n.SplitRange(ctx, key) // router.Splitter's
}

func (s memberService) CompactLog(ctx context.Context, id shard.RangeID) error {
	return s.n.compactLog(ctx, uint64(id))
}
