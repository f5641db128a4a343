package router

import (
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// MemberConfig is this member as the node-to-node service serves it
// (NewMember).
type MemberConfig struct {
	// Sharded serves this member's ranges to the others; single-group mode
	// serves none.
	Sharded bool
	// Ranges is this member's replicas of the ranges.
	Ranges *shard.Set
	// Side takes the closed revisions the ranges' leaders publish here.
	Side *SideChannel
	// Splitter splits ranges; nil refuses (single-group mode).
	Splitter *Splitter
	// Oracle hands out revisions while this member's placement replica
	// leads (placement.Allocator); nil: not in sharded mode.
	Oracle RevisionSource
	// CompactLog snapshots this member's replica of range id and drops its
	// raft log up to the snapshot (placement.Membership.CompactLog).
	CompactLog func(ctx context.Context, id placement.RangeID) error
	// RemoveMember removes member id from the cluster, here (nil: refused).
	RemoveMember func(ctx context.Context, id uint64) error
	// UpdateMember gives member id new peer URLs, here (nil: refused).
	UpdateMember func(ctx context.Context, id uint64, peerURLs []string) error
	// Mover serves the move calls (move.go); nil refuses them.
	Mover RangeMover
	// Leaving reports the ranges whose replica here is about to be
	// removed (a move's source): the service serves nothing from them.
	// nil: none.
	Leaving func(id shard.RangeID) bool
}

// RevisionSource hands out revisions of the oracle (placement.Allocator).
type RevisionSource interface {
	RevisionsAbove(ctx context.Context, count int64, above mvcc.Revision) (mvcc.Revision, error)
}

// NewMember returns the Member that the node-to-node service serves from
// (RegisterInternal): this member's replicas, its side channel, its
// splits, its oracle and its log compaction as cfg wires them.
func NewMember(cfg MemberConfig) Member { return localMember{cfg} }

type localMember struct{ cfg MemberConfig }

func (m localMember) Range(id shard.RangeID) Local {
	if !m.cfg.Sharded {
		return nil // single-group mode serves no range to other members
	}
	if m.cfg.Leaving != nil && m.cfg.Leaving(id) {
		return nil
	}
	if r := m.cfg.Ranges.Get(id, false); r != nil {
		return LocalRange(r)
	}
	return nil
}

func (m localMember) Revisions(ctx context.Context, count int64, above mvcc.Revision) (mvcc.Revision, error) {
	if m.cfg.Oracle == nil {
		return 0, fmt.Errorf("%w: not in sharded mode", placement.ErrNotLeader)
	}
	return m.cfg.Oracle.RevisionsAbove(ctx, count, above)
}

func (m localMember) Published(r *internalpb.ClosedRequest) {
	defer m.cfg.Side.Got(r)()
	for _, rc := range r.Ranges {
		if rr := m.cfg.Ranges.Get(shard.RangeID(rc.Range), true); rr != nil {
			rr.Published(mvcc.Revision(rc.Closed), rc.Index)
		}
	}
}

func (m localMember) Kick(id shard.RangeID, rev mvcc.Revision) {
	if rr := m.cfg.Ranges.Get(id, true); rr != nil {
		rr.WantClosed(rev)
	}
}

func (m localMember) SplitRange(ctx context.Context, key []byte) ([]*placementpb.RangeDescriptor, error) {
	if m.cfg.Splitter == nil {
		return nil, Refuse(ErrPrecondition, "cairn: splitting needs sharded mode (this cluster runs with --single-group)")
	}
	return m.cfg.Splitter.SplitRange(ctx, key)
}

func (m localMember) CompactLog(ctx context.Context, id shard.RangeID) error {
	return m.cfg.CompactLog(ctx, placement.RangeID(id))
}

// MemberRanges is this member's replicas of the ranges (set) as a
// placement.Membership walks them, reaching the ranges' leaders through
// cache (nil in single-group mode, which walks none).
func MemberRanges(set *shard.Set, cache *RangeCache) placement.LocalRanges {
	return memberRanges{set: set, cache: cache}
}

type memberRanges struct {
	set   *shard.Set
	cache *RangeCache
}

// Runs reports whether this member's replica of range r is started.
func (m memberRanges) Runs(r placement.RangeID) bool {
	return m.set.Get(shard.RangeID(r), true) != nil
}

// Touch commits an empty lease checkpoint to range r.
func (m memberRanges) Touch(ctx context.Context, r placement.RangeID) error {
	var rc *RangeClient
	if m.cache != nil {
		rc = m.cache.Client(shard.RangeID(r))
	}
	if m.set.Get(shard.RangeID(r), true) == nil || rc == nil {
		return fmt.Errorf("router: range %d does not run here", r)
	}
	empty, _ := proto.Marshal(&pb.LeaseCheckpointRequest{})
	_, err := rc.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: empty}})
	return err
}
