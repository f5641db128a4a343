package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/lease"
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
// Concurrency: safe for concurrent use; mu guards ranges and drops. A
// range's descriptor is changed (Split) under mu, so a reader of the set
// sees the parent shortened and the child after it together. Lock order:
// SetConfig.Events before mu (a sweep asks Owns holding the event log; Add
// takes the event log, then mu); mu is never held while waiting for
// anything.
type Set struct {
	cfg SetConfig

	mu sync.RWMutex
	// Invariant: ranges are in the order of their descriptors' start keys,
	// and no two have the same id.
	ranges []*Range // REQUIRES: mu
	// drops are the drops of replicas' data under way (Drop, ResumeDrops),
	// and those that failed before their data batch, by replica.
	drops map[dropKey]*pendingDrop // REQUIRES: mu
}

type dropKey struct {
	id      RangeID
	replica ReplicaID
}

// pendingDrop is one replica's drop under way.
type pendingDrop struct {
	// key and span (the record's when the drop began) do not change.
	key  dropKey
	span mvcc.Span
	// rec is the drop's record as it moves on; only the drop's goroutine
	// uses it.
	rec ReplicaRecord
	// batched is closed once the drop's data batch is committed (ok) or
	// the attempt failed before it (!ok); ok is written before.
	batched chan struct{}
	ok      bool
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
	// Events is the event log lock of DB, the one the ranges' stores are
	// opened with (Config.Events); Drop and ResumeDrops need it.
	Events *mvcc.EventLog
}

// NewSet returns an empty set.
func NewSet(cfg SetConfig) *Set { return &Set{cfg: cfg} }

// Add puts r in the set in key order, replacing the range of the same id
// if there is one. With SetConfig.Events it holds the event log while it
// does, so that a sweep's chunk sees r's keys owned (Owns) throughout or
// not at all: r's replica, started after Add, never writes an event
// record a chunk read before Add and writes back after. It must not be
// called by a goroutine whose batch holds the event log (a compaction not
// yet committed).
func (s *Set) Add(r *Range) {
	add := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.ranges = slices.DeleteFunc(s.ranges, func(o *Range) bool { return o.ID() == r.ID() })
		start := r.Descriptor().Start
		i, _ := slices.BinarySearchFunc(s.ranges, start, func(o *Range, key []byte) int {
			return bytes.Compare(o.Descriptor().Start, key)
		})
		s.ranges = slices.Insert(s.ranges, i, r)
	}
	if s.cfg.Events != nil {
		s.cfg.Events.Do(add)
	} else {
		add()
	}
}

// Owns reports whether key lies in the span of a range of the set, started
// or still starting: whether a replica here owns its data.
func (s *Set) Owns(key []byte) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.ranges {
		if SpanOf(r.Descriptor()).Contains(key) {
			return true
		}
	}
	return false
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

// Merge records that left absorbed range right here (Config.OnMerge):
// left's descriptor spans span from now on, at generation, and right
// leaves the set, under one hold of mu, so that a reader never sees both
// over right's keys. It returns right's range, for the caller to retire
// (nil if the set does not hold it).
//
//	r1 [,m) g1 r2 [m,t) g2 r3 [t,) g2   Merge(r2, 3, [m,), g3)
//	→ r1 [,m) g1 r2 [m,) g3
func (s *Set) Merge(left *Range, right RangeID, span mvcc.Span, generation uint64) *Range {
	ld := proto.Clone(left.Descriptor()).(*placementpb.RangeDescriptor)
	ld.End = slices.Clone(span.End)
	ld.Generation = generation
	s.mu.Lock()
	defer s.mu.Unlock()
	left.SetDescriptor(ld)
	var gone *Range
	s.ranges = slices.DeleteFunc(s.ranges, func(r *Range) bool {
		if r.ID() == right {
			gone = r
			return true
		}
		return false
	})
	return gone
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
//
// A replica of the range of a drop under way (Drop, ResumeDrops), or whose
// span overlaps that drop's, waits for the drop's data batch before it
// starts (which deletes the dropped store's records, the same keys as its
// own if the range is the same), and fails if that drop failed before it.
func (s *Set) Start(r *Range, cfg Config, raftCfg dbconfig.Config, founders, join bool) error {
	d := r.Descriptor()
	if err := s.waitDrops(RangeID(d.Id), SpanOf(d)); err != nil {
		return err
	}
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

// StartNonVoting starts the raft replica of r (Range.Start) with cfg as
// Start does, joining its group as a non-voting member whatever this
// member is: a move's destination, added non-voting before it votes
// (placement.Mover), and restarted so until the move promoted it.
func (s *Set) StartNonVoting(r *Range, cfg Config, raftCfg dbconfig.Config) error {
	d := r.Descriptor()
	if err := s.waitDrops(RangeID(d.Id), SpanOf(d)); err != nil {
		return err
	}
	cfg.Span = SpanOf(d)
	raftCfg.IsNonVoting = true
	return r.Start(cfg, nil, true, raftCfg)
}

// LocalRanges returns the ranges member self starts, in key order: the
// range map's, except that a range the map names whose split has not
// applied here is left in the range it was to split from (pending), and a
// range a merge absorbed here (mvcc.MergedInto) is left out, for the
// caller to drop (merged), its span the range's that absorbed it (at
// the generation the merge gave it: one above both). A split is recorded
// in the map before the range applies it, and a merge after the left
// range applied it, so a stop in between leaves the map ahead of the
// range, or behind it; the caller proposes the rest, or drops the merged
// range's replica. On a first start (founding) the map is the ranges.
// What it finds unfinished it logs to log.
//
//	map r1 [,g) g1  r2 [g,p) g2  r3 [p,) g2; r3 merged into r2 here
//	→ local r1 [,g) g1  r2 [g,) g3; merged r3
func LocalRanges(db *pebble.DB, self uint64, ranges []*placementpb.RangeDescriptor, founding bool, log *slog.Logger) (local, pending, merged []*placementpb.RangeDescriptor, err error) {
	if founding {
		return ranges, nil, nil, nil
	}
	for i, d := range ranges {
		into, ok, err := mvcc.MergedInto(db, d.Id)
		if err != nil {
			return nil, nil, nil, err
		}
		if ok {
			merged = append(merged, d)
			if j := slices.IndexFunc(local, func(l *placementpb.RangeDescriptor) bool { return l.Id == into }); j >= 0 {
				l := proto.Clone(local[j]).(*placementpb.RangeDescriptor)
				l.End = slices.Clone(d.End)
				l.Generation = max(l.Generation, d.Generation) + 1
				local[j] = l
			}
			log.Warn("a merge applied here is not recorded in the range map yet; its right range is to be dropped", "range", d.Id, "into", into)
			continue
		}
		// A range this member did not found it joins (a membership
		// change added it): raft sends it whole, split or not here.
		if i == 0 || d.Parent == 0 || !slices.Contains(FoundersOf(d), self) {
			local = append(local, d)
			continue
		}
		here, err := mvcc.SplitHere(db, d.Id)
		if err != nil {
			return nil, nil, nil, err
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
	return local, pending, merged, nil
}

// StoredSpan is the span range id's store here holds as this member's
// pebble records it (ok false: none recorded).
func (s *Set) StoredSpan(id RangeID) (sp mvcc.Span, ok bool, err error) {
	return mvcc.StoredSpan(s.cfg.DB, uint64(id))
}

// RemoveRaftData removes this member's raft data of replica of range id
// (dragonboat's SyncRemoveData): its log, snapshots and bootstrap record.
// The replica is stopped. It must succeed again for data already removed,
// since a drop resumed after a crash calls it again.
type RemoveRaftData func(ctx context.Context, id RangeID, replica ReplicaID) error

// sweepChunk is how many event log records a drop's sweep rewrites per
// hold of the event log.
const sweepChunk = 10000

var errNoEventLog = errors.New("shard: dropping a replica's data needs SetConfig.Events")

// Drop deletes this member's replica of range id and all of its data from
// the member: the replica leaves the set; its record is marked dropping
// (MarkDropping; a record is written from the set's range if there is
// none); remove deletes its raft data; one batch deletes its store's
// versions (of its span, less the spans of the set's other ranges), its
// store's and its lessor's records and moves its record to DropSweeping;
// then the event log is swept of its keys' entries that no range of the
// set owns (Owns), in chunks; then the record is deleted. A crash or an
// error anywhere leaves the record, and ResumeDrops goes on from it. The
// replica must be stopped (dragonboat reported it deleted, or it was never
// started since this process began).
//
//	r1 [,g) r2 [g,p) r3 [p,)   Drop(r2)
//	→ marked · raft data gone · versions [g,p), 'm' 2, 'l' 2 gone · entries of [g,p) swept · record gone
func (s *Set) Drop(ctx context.Context, id RangeID, remove RemoveRaftData) error {
	if s.cfg.Events == nil {
		return errNoEventLog
	}
	recs, err := Records(s.cfg.DB)
	if err != nil {
		return err
	}
	var rec *ReplicaRecord
	for i := range recs {
		if recs[i].Range == id && !recs[i].Dropping() {
			rec = &recs[i]
			break
		}
	}
	if rec == nil {
		r := s.Get(id, false)
		if r == nil {
			return fmt.Errorf("%w: range %d", ErrNoReplica, id)
		}
		rec = &ReplicaRecord{Range: id, Replica: r.cfg.ReplicaID, Span: SpanOf(r.Descriptor())}
		if err := WriteRecord(s.cfg.DB, *rec); err != nil {
			return err
		}
	}
	d := s.beginDrops([]ReplicaRecord{*rec})[0]
	marked, err := MarkDropping(s.cfg.DB, rec.Range, rec.Replica)
	if err != nil {
		s.failDrop(d)
		return err
	}
	d.rec = marked
	return s.runDrop(ctx, d, remove)
}

// ResumeDrops finishes every drop a record says is under way (after a
// restart: before any replica starts), each from where its record says it
// got to (Drop), and returns their errors joined.
func (s *Set) ResumeDrops(ctx context.Context, remove RemoveRaftData) error {
	if s.cfg.Events == nil {
		return errNoEventLog
	}
	recs, err := Records(s.cfg.DB)
	if err != nil {
		return err
	}
	recs = slices.DeleteFunc(recs, func(r ReplicaRecord) bool { return !r.Dropping() })
	var errs []error
	for _, d := range s.beginDrops(recs) {
		if err := s.runDrop(ctx, d, remove); err != nil {
			errs = append(errs, fmt.Errorf("drop replica %d of range %d: %w", d.rec.Replica, d.rec.Range, err))
		}
	}
	return errors.Join(errs...)
}

// beginDrops registers drops of recs (a failed one's registration is
// replaced) and takes their replicas out of the set, so that nothing here
// owns their keys from now on.
func (s *Set) beginDrops(recs []ReplicaRecord) []*pendingDrop {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drops == nil {
		s.drops = map[dropKey]*pendingDrop{}
	}
	out := make([]*pendingDrop, len(recs))
	for i, rec := range recs {
		d := &pendingDrop{key: dropKey{rec.Range, rec.Replica}, span: rec.Span, rec: rec, batched: make(chan struct{})}
		s.drops[d.key] = d
		s.ranges = slices.DeleteFunc(s.ranges, func(r *Range) bool {
			return r.ID() == rec.Range && r.cfg.ReplicaID == rec.Replica
		})
		out[i] = d
	}
	return out
}

// failDrop records that d failed before its data batch: replicas that
// overlap it must not start until a retry gets that far.
func (s *Set) failDrop(d *pendingDrop) {
	d.ok = false
	close(d.batched)
}

func (s *Set) endDrop(d *pendingDrop) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drops[d.key] == d {
		delete(s.drops, d.key)
	}
}

// runDrop takes d on from its record's phase to its end.
func (s *Set) runDrop(ctx context.Context, d *pendingDrop, remove RemoveRaftData) error {
	if d.rec.Drop == DropMarked {
		if err := remove(ctx, d.rec.Range, d.rec.Replica); err != nil {
			s.failDrop(d)
			return fmt.Errorf("shard: remove the raft data of replica %d of range %d: %w", d.rec.Replica, d.rec.Range, err)
		}
		if err := s.dropData(d); err != nil {
			s.failDrop(d)
			return err
		}
	}
	d.ok = true
	close(d.batched)
	defer s.endDrop(d)
	for from, more := mvcc.Revision(0), true; more; {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		if from, more, err = mvcc.SweepEvents(s.cfg.DB, s.cfg.Events, d.rec.Span, s.Owns, from, sweepChunk); err != nil {
			return err
		}
	}
	if err := s.cfg.DB.Delete(replicaKey(d.rec.Range, d.rec.Replica), pebble.Sync); err != nil {
		return fmt.Errorf("shard: delete the record of replica %d of range %d: %w", d.rec.Replica, d.rec.Range, err)
	}
	return nil
}

// dropData commits d's data batch: the store's versions (of its span as the
// store records it, or else as d's record has it, less every span of the
// set), its and its lessor's records, and d's record in phase DropSweeping
// with that span (what the sweep covers).
func (s *Set) dropData(d *pendingDrop) error {
	id := uint64(d.rec.Range)
	span := d.rec.Span
	if sp, ok, err := mvcc.StoredSpan(s.cfg.DB, id); err != nil {
		return err
	} else if ok {
		span = sp
	}
	b := s.cfg.DB.NewBatch()
	defer b.Close()
	unowned, err := s.unowned(span, d.rec.Range)
	if err != nil {
		return err
	}
	if err := mvcc.DropSpan(b, id, unowned...); err != nil {
		return err
	}
	if err := lease.DropStore(b, id); err != nil {
		return err
	}
	d.rec.Drop, d.rec.Span = DropSweeping, span
	if err := b.Set(replicaKey(d.rec.Range, d.rec.Replica), encodeReplicaRecord(d.rec), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("shard: drop the data of range %d: %w", id, err)
	}
	return nil
}

// unowned returns the parts of span that no range of the set covers, nor
// the store of any replica record here not being dropped (other than
// dropping's), in key order. The records count because a drop resumed
// before any replica is in the set (ResumeDrops) must not delete what a
// replica still to start owns: a merged range's span is its left range's
// (LocalRanges), whose store spans it.
func (s *Set) unowned(span mvcc.Span, dropping RangeID) ([]mvcc.Span, error) {
	recs, err := Records(s.cfg.DB)
	if err != nil {
		return nil, err
	}
	var owned []mvcc.Span
	for _, rec := range recs {
		if rec.Dropping() || rec.Range == dropping {
			continue
		}
		sp, ok, err := mvcc.StoredSpan(s.cfg.DB, uint64(rec.Range))
		if err != nil {
			return nil, err
		}
		if !ok {
			sp = rec.Span
		}
		owned = append(owned, sp)
	}
	s.mu.RLock()
	for _, r := range s.ranges {
		owned = append(owned, SpanOf(r.Descriptor()))
	}
	s.mu.RUnlock()
	slices.SortFunc(owned, func(a, b mvcc.Span) int { return bytes.Compare(a.Start, b.Start) })
	var out []mvcc.Span
	cur := span.Start
	for _, o := range owned {
		if !overlaps(mvcc.Span{Start: cur, End: span.End}, o) {
			continue
		}
		if bytes.Compare(o.Start, cur) > 0 {
			out = append(out, mvcc.Span{Start: cur, End: o.Start})
		}
		if o.End == nil {
			return out, nil
		}
		if bytes.Compare(o.End, cur) > 0 {
			cur = o.End
		}
	}
	if span.End == nil || bytes.Compare(cur, span.End) < 0 {
		out = append(out, mvcc.Span{Start: cur, End: span.End})
	}
	return out, nil
}

// overlaps reports whether spans a and b share a key.
func overlaps(a, b mvcc.Span) bool {
	return (b.End == nil || bytes.Compare(a.Start, b.End) < 0) && (a.End == nil || bytes.Compare(b.Start, a.End) < 0)
}

// waitDrops waits for the data batch of every drop under way of range id or
// of a span overlapping span (Start).
func (s *Set) waitDrops(id RangeID, span mvcc.Span) error {
	s.mu.RLock()
	var wait []*pendingDrop
	for _, d := range s.drops {
		if d.key.id == id || overlaps(d.span, span) {
			wait = append(wait, d)
		}
	}
	s.mu.RUnlock()
	for _, d := range wait {
		<-d.batched
		if !d.ok {
			return fmt.Errorf("shard: range %d cannot start: the drop of replica %d of range %d, which it overlaps, failed before its data batch",
				id, d.key.replica, d.key.id)
		}
	}
	return nil
}
