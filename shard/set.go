package shard

import (
	"bytes"
	"log/slog"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// Set is this member's replicas of ranges, by id and in key order (by
// their descriptors' start keys), started or still starting (a split's new
// range is in the set before its replica starts). It also knows how this
// member starts a replica (Start); LocalRanges says which ranges of the
// range map it runs after a restart.
//
//	add r1 [,m) r2 [m,)           → routing r1 r2
//	split of r2 at t makes r3     → r2 [m,t) r3 [t,)  (r3 not started)
//	all (started)                 → r1 r2
//
// Concurrency: safe for concurrent use; mu guards ranges. A range's
// descriptor is changed (Split) under mu, so a reader of the set sees the
// parent shortened and the child after it together.
type Set struct {
	cfg SetConfig

	mu sync.RWMutex
	// Invariant: ranges are in the order of their descriptors' start keys,
	// and no two have the same id.
	ranges []*Range // REQUIRES: mu
}

// SetConfig is what a member's Set needs to start replicas and to read
// what splits applied here.
type SetConfig struct {
	// DB is the member's pebble, which every range shares.
	DB *pebble.DB
	// Self is this member's id, as descriptors' replica pairs name
	// members.
	Self uint64
	// Target is the raft target of member id (the NodeHost's address or
	// registry name): a founder's replica is reached at its member's.
	Target func(id uint64) dragonboat.Target
	// Learner reports whether this member is a learner now; nil: never.
	Learner func() bool
}

// NewSet returns an empty set.
func NewSet(cfg SetConfig) *Set { return &Set{cfg: cfg} }

// Add puts r in the set in key order, replacing the range of the same id
// if there is one.
func (s *Set) Add(r *Range) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ranges = slices.DeleteFunc(s.ranges, func(o *Range) bool { return o.ID() == r.ID() })
	start := r.Descriptor().Start
	i, _ := slices.BinarySearchFunc(s.ranges, start, func(o *Range, key []byte) int {
		return bytes.Compare(o.Descriptor().Start, key)
	})
	s.ranges = slices.Insert(s.ranges, i, r)
}

// Get returns this member's replica of range id, nil if there is none (or,
// with startedOnly, none started yet).
func (s *Set) Get(id RangeID, startedOnly bool) *Range {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.ranges {
		if r.ID() == id && (!startedOnly || r.Started()) {
			return r
		}
	}
	return nil
}

// All returns every range whose replica is started, in key order.
func (s *Set) All() []*Range {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Range, 0, len(s.ranges))
	for _, r := range s.ranges {
		if r.Started() {
			out = append(out, r)
		}
	}
	return out
}

// Routing returns every range in key order, those still starting (a
// split's new range) included: requests for them wait until it is.
func (s *Set) Routing() []*Range {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.ranges)
}

// Split records that child, a range not started, split off parent:
// parent's descriptor ends where child's starts (one generation on), and
// child follows it in the set. It returns child, or nil if a range of
// child's id is in the set already (parent is shortened all the same).
func (s *Set) Split(parent, child *Range) *Range {
	cd := child.Descriptor()
	pd := proto.Clone(parent.Descriptor()).(*placementpb.RangeDescriptor)
	pd.End = slices.Clone(cd.Start)
	pd.Generation++
	s.mu.Lock()
	defer s.mu.Unlock()
	parent.SetDescriptor(pd)
	if slices.ContainsFunc(s.ranges, func(r *Range) bool { return r.ID() == child.ID() }) {
		return nil
	}
	i := slices.Index(s.ranges, parent)
	s.ranges = slices.Insert(s.ranges, i+1, child)
	return child
}

// RaftMembers returns the replicas of each raft shard that the NodeHost
// running the set's ranges runs, by shard id (a range's is its id),
// sorted, as raft has them: membership changes since a range started show
// (router.Config.RangeMembers). Nil for an empty set.
func (s *Set) RaftMembers() map[uint64][]uint64 {
	s.mu.RLock()
	var nh *dragonboat.NodeHost
	if len(s.ranges) > 0 {
		nh = s.ranges[0].cfg.NodeHost
	}
	s.mu.RUnlock()
	if nh == nil {
		return nil
	}
	members := map[uint64][]uint64{}
	for _, si := range nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}).ShardInfoList {
		for id := range si.Replicas {
			members[si.ShardID] = append(members[si.ShardID], id)
		}
		slices.Sort(members[si.ShardID])
	}
	return members
}

// SpanOf is a descriptor's span in mvcc's form (nil end: ∞).
func SpanOf(d *placementpb.RangeDescriptor) mvcc.Span {
	sp := mvcc.Span{Start: d.Start, End: d.End}
	if sp.Start == nil {
		sp.Start = []byte{}
	}
	if len(sp.End) == 0 {
		sp.End = nil
	}
	return sp
}

// FoundersOf are the members that started range d's raft group (maps
// written before descriptors named them: its replicas, which no membership
// change had changed then).
func FoundersOf(d *placementpb.RangeDescriptor) []uint64 {
	if len(d.Founders) > 0 {
		return d.Founders
	}
	return d.Replicas
}

// founderPairs are the replicas that started range d's raft group, as
// placement.Founders reads them (shard cannot import placement): d's
// founder_set, else its founders (or, in maps written before descriptors
// named founders, its replicas) each under its member's id.
func founderPairs(d *placementpb.RangeDescriptor) []*placementpb.Replica {
	if len(d.FounderSet) > 0 {
		return d.FounderSet
	}
	var out []*placementpb.Replica
	for _, m := range FoundersOf(d) {
		out = append(out, &placementpb.Replica{Member: m, Id: m})
	}
	return out
}

// Start starts the raft replica of r (Range.Start) with cfg, its Span
// taken from r's descriptor and its replica id r's (RangeConfig.ReplicaID).
// With founders, a member among the range's voting founders (under r's
// replica id) starts it with them — each founder's replica under its id,
// reached at its member (SetConfig.Target); raft takes them again on a
// restart —; any other member joins it (or restarts what it joined), to be added by a
// membership change and sent a snapshot. With join, this member joins it
// whatever it is (a split it missed, joined late). A founder votes; a
// member joining is a learner (IsNonVoting) while SetConfig.Learner says
// so, as it is in range 1 (a member added as a voter is promoted at once).
//
//	founder_set 1:5 2:6 3:7 (member:id), self 2 → members {5: T(1), 6: T(2), 7: T(3)}, r's id 6
func (s *Set) Start(r *Range, cfg Config, raftCfg dbconfig.Config, founders, join bool) error {
	d := r.Descriptor()
	cfg.Span = SpanOf(d)
	var members map[uint64]dragonboat.Target
	if founders && !join {
		pairs := slices.DeleteFunc(slices.Clone(founderPairs(d)), func(p *placementpb.Replica) bool { return p.Learner })
		// A founder's replica under another id (removed since, and added
		// again) is not this one: this one joined.
		if slices.ContainsFunc(pairs, func(p *placementpb.Replica) bool {
			return p.Member == s.cfg.Self && ReplicaID(p.Id) == r.cfg.ReplicaID
		}) {
			members = map[uint64]dragonboat.Target{}
			for _, p := range pairs {
				members[p.Id] = s.cfg.Target(p.Member)
			}
		} else {
			join = true
		}
	}
	raftCfg.IsNonVoting = members == nil && s.cfg.Learner != nil && s.cfg.Learner()
	return r.Start(cfg, members, join, raftCfg)
}

// LocalRanges returns the ranges member self starts, in key order: the
// range map's, except that a range the map names whose split has not
// applied here is left in the range it was to split from (pending). A
// split is recorded in the map before the range applies it, so a stop in
// between leaves the map ahead of the range; the caller proposes the rest.
// On a first start (founding) the map is the ranges.
// What it finds unfinished it logs to log.
func LocalRanges(db *pebble.DB, self uint64, ranges []*placementpb.RangeDescriptor, founding bool, log *slog.Logger) (local, pending []*placementpb.RangeDescriptor, err error) {
	if founding {
		return ranges, nil, nil
	}
	for i, d := range ranges {
		// A range this member did not found it joins (a membership
		// change added it): raft sends it whole, split or not here.
		if i == 0 || d.Parent == 0 || !slices.Contains(FoundersOf(d), self) {
			local = append(local, d)
			continue
		}
		here, err := mvcc.SplitHere(db, d.Id)
		if err != nil {
			return nil, nil, err
		}
		if here {
			local = append(local, d)
			continue
		}
		// The range before it in key order is what it splits from, as
		// it was before the map's split.
		prev := proto.Clone(local[len(local)-1]).(*placementpb.RangeDescriptor)
		prev.End = d.End
		prev.Generation--
		local[len(local)-1] = prev
		pending = append(pending, d)
		log.Warn("a split recorded in the range map has not applied here; proposing it again", "range", d.Id,
			"parent", d.Parent, "key", string(d.Start))
	}
	return local, pending, nil
}

// StoredSpan is the span range id's store here holds as this member's
// pebble records it (ok false: none recorded).
func (s *Set) StoredSpan(id RangeID) (sp mvcc.Span, ok bool, err error) {
	return mvcc.StoredSpan(s.cfg.DB, uint64(id))
}
