package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Merges (sharded mode; placement.MergeDriver, docs/plan-merge.md): the
// placement leader's member drives every merge (MergeRange, forwarded
// there from the member a client asked; runMoves resumes the open ones
// with the open moves). The driver writes the merge's requests to the
// ranges' logs through this member's range clients (mergeRanges) and
// reads their raft groups as the mover does (rangeRaft).
//
// On each member, the left range's apply of the commit takes the right
// range's keys into the left one (router.Joiner.OnMerge) and hands the
// right range's replica to the merge worker (runRetires), which closes it,
// stops its raft replica and drops its records and raft data: the left
// range owns its keys, so no key is deleted. A right range absorbed here
// whose retirement a stop cut short is found at the next start
// (shard.LocalRanges' merged) and retired then; one whose left range's
// replica is not here (the map's tombstone says it merged away) is
// retired by the reconciler (dropIfMerged).
//
//	L r1 [,m) R r2 [m,): r1 applies commit m1 → Set r1 [,∞), r2 out; cache; watches → r1
//	worker: r2 closed, StopShard(2), Drop(2): 'm' 2, 'l' 2, 'r' 2, raft data gone

// retiring is a right range's replica the merge worker retires: r (nil if
// it never started here: found merged at a start, or by the reconciler).
type retiring struct {
	id shard.RangeID
	r  *shard.Range
}

// retireQueue holds what the merge worker has to retire: Retire runs on
// the left range's apply goroutine and must not block.
type retireQueue struct {
	mu      sync.Mutex
	pending []retiring             // REQUIRES: mu
	queued  map[shard.RangeID]bool // REQUIRES: mu; queued or retired (range ids are never reused)
	wake    chan struct{}
}

func newRetireQueue() *retireQueue {
	return &retireQueue{queued: map[shard.RangeID]bool{}, wake: make(chan struct{}, 1)}
}

// put queues it unless its range was queued before.
func (q *retireQueue) put(it retiring) {
	q.mu.Lock()
	if q.queued[it.id] {
		q.mu.Unlock()
		if it.r != nil {
			it.r.Close()
		}
		return
	}
	q.queued[it.id] = true
	q.pending = append(q.pending, it)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *retireQueue) has(id shard.RangeID) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued[id]
}

func (q *retireQueue) take() []retiring {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.pending
	q.pending = nil
	return out
}

// retire is router.JoinerConfig.Retire: right, out of routing already,
// goes to the merge worker.
func (n *Node) retire(right *shard.Range) { n.retires.put(retiring{id: right.ID(), r: right}) }

// runRetires is the merge worker (sharded mode): it retires each right
// range queued, in order, until the node stops. A range's replica stops
// at once; its records and raft data are dropped once this member's copy
// of the range map has the merge (its tombstone): until then a restart
// must find the range's records saying it merged here (LocalRanges'
// merged), or it would take the map's range for a split not applied yet.
// What it has not retired when the node stops, the next start retires.
func (n *Node) runRetires() {
	defer n.wg.Done()
	ctx, cancel := n.untilStop()
	defer cancel()
	t := time.NewTicker(retireRetry)
	defer t.Stop()
	var waiting []retiring
	for {
		select {
		case <-n.stop:
			for _, it := range n.retires.take() {
				if it.r != nil {
					it.r.Hub().Close()
					it.r.Close()
				}
			}
			return
		case <-n.retires.wake:
		case <-t.C:
			if len(waiting) == 0 {
				continue
			}
		}
		items := append(waiting, n.retires.take()...)
		waiting = nil
		for _, it := range items {
			if !n.retireMerged(ctx, &it) {
				waiting = append(waiting, it)
			}
		}
	}
}

// retireRetry is how often the merge worker looks again at the ranges
// whose drop waits for the map (or failed).
const retireRetry = 100 * time.Millisecond

// retireMerged closes it's range (its watchers moved to the left range's
// hub already) and stops its raft replica, then, once the map here has
// the merge, drops its replica: its records and raft data (its keys are
// the left range's, or nobody's here if the left range is not here
// either). It reports whether it is done; false: to be tried again.
func (n *Node) retireMerged(ctx context.Context, it *retiring) bool {
	if it.r != nil {
		it.r.Hub().Close()
		it.r.Close()
		it.r = nil
	}
	if err := n.nh.StopShard(uint64(it.id)); err != nil && !errors.Is(err, dragonboat.ErrShardNotFound) {
		n.log.Warn("stopping a merged range's raft replica failed; trying again", "range", it.id, "error", err)
		return false
	}
	st, err := n.localState()
	if err != nil {
		return false
	}
	if _, ok := mergedInto(st, it.id); !ok {
		return false // the map here does not have the merge yet
	}
	if err := n.rangeSet.Drop(ctx, it.id, n.removeRaftData); err != nil {
		if errors.Is(err, shard.ErrNoReplica) {
			return true // dropped before (a start that finished it)
		}
		n.log.Warn("dropping a merged range's replica stopped; trying again (or at the next start)", "range", it.id, "error", err)
		return ctx.Err() != nil
	}
	n.records.mu.Lock()
	for key := range n.records.known {
		if key.id == it.id {
			delete(n.records.known, key)
		}
	}
	n.records.mu.Unlock()
	n.log.Info("retired a merged range's replica", "range", it.id)
	return true
}

// dropIfMerged retires replica r, a range the map st no longer names, if
// the map says it merged away: once this member's replica of the range
// that absorbed it covers its span (its apply of the commit retires r
// itself normally; this catches what a stop missed), or at once if this
// member holds no replica of that range (its keys are nobody's here).
func (n *Node) dropIfMerged(r *shard.Range, st *placementpb.State) {
	id := r.ID()
	into, ok := mergedInto(st, id)
	if !ok || n.retires.has(id) {
		return
	}
	d := r.Descriptor()
	l := n.rangeSet.Get(into, true)
	if l != nil && !covers(l.Descriptor(), d) {
		return // its commit is still to apply here: it retires r
	}
	n.log.Info("the range map says this range merged away; retiring its replica", "range", id, "into", into)
	// Routed by the map from now on, and its watchers go on from the
	// range that holds its keys here, else from its mirror, as a dropped
	// replica's do (drop.go); the drop takes it out of the set.
	n.routes.Remove(id)
	if l != nil && n.merger != nil {
		n.merger.Merge(r.Hub(), watch.Part{Hub: l.Hub(), Kick: l.WantClosed})
	} else {
		n.moveWatches(r)
	}
	n.retires.put(retiring{id: id, r: r})
}

// retireMergedRecords retires, under dropIfMerged's rule, the replicas
// recorded here that are not in the set and that the map st says merged
// away: a start that read the map after the merge recorded it did not
// start them (and LocalRanges, which looks at the map's ranges, did not
// name them merged).
func (n *Node) retireMergedRecords(st *placementpb.State) {
	if len(st.Merged) == 0 {
		return
	}
	recs, err := shard.Records(n.db)
	if err != nil {
		return // asked again next pass
	}
	for _, rec := range recs {
		if rec.Dropping() || n.retires.has(rec.Range) || n.rangeSet.Get(rec.Range, false) != nil {
			continue
		}
		into, ok := mergedInto(st, rec.Range)
		if !ok {
			continue
		}
		sp := rec.Span
		if stored, ok, err := n.rangeSet.StoredSpan(rec.Range); err != nil {
			continue
		} else if ok {
			sp = stored
		}
		if l := n.rangeSet.Get(into, false); l != nil && (!l.Started() || !spanCovers(shard.SpanOf(l.Descriptor()), sp)) {
			continue // its commit is still to apply here: then it is retired
		}
		n.log.Info("the range map says a range recorded here merged away; retiring its replica", "range", rec.Range, "into", into)
		n.retires.put(retiring{id: rec.Range})
	}
}

// spanCovers reports whether span a covers span b.
func spanCovers(a, b mvcc.Span) bool {
	if bytes.Compare(a.Start, b.Start) > 0 {
		return false
	}
	return a.End == nil || (b.End != nil && bytes.Compare(a.End, b.End) >= 0)
}

// mergedInto follows st's tombstones from range id to the live range that
// holds its keys.
func mergedInto(st *placementpb.State, id shard.RangeID) (shard.RangeID, bool) {
	into := map[uint64]uint64{}
	for _, t := range st.Merged {
		into[t.Range] = t.Into
	}
	cur, ok := into[uint64(id)]
	if !ok {
		return 0, false
	}
	for n := 0; n < len(into); n++ {
		next, ok := into[cur]
		if !ok {
			break
		}
		cur = next
	}
	return shard.RangeID(cur), true
}

// covers reports whether a's span covers b's.
func covers(a, b *placementpb.RangeDescriptor) bool {
	if bytes.Compare(a.Start, b.Start) > 0 {
		return false
	}
	return len(a.End) == 0 || (len(b.End) != 0 && bytes.Compare(a.End, b.End) >= 0)
}

// newMergeDriver returns this member's merge driver (sharded mode).
func (n *Node) newMergeDriver() *placement.MergeDriver {
	return placement.NewMergeDriver(placement.MergeDriverConfig{Map: n.placement, Ranges: mergeRanges{n}, Raft: rangeRaft{n}, Log: n.log,
		Crash: func(step string) bool {
			if f := n.hooks.mergeStep.Load(); f != nil {
				return (*f)(step)
			}
			return false
		}})
}

// MergeRange merges the range right of range left into left: the
// placement leader's member drives the merge; another forwards it there
// (with forward) or refuses.
func (n *Node) MergeRange(ctx context.Context, left shard.RangeID, forward bool) (*placementpb.RangeDescriptor, error) {
	leads, leader := n.leadsPlacement()
	switch {
	case leads:
		if err := n.refuseUnrecorded(ctx, left); err != nil {
			return nil, err
		}
		return n.merges.Merge(ctx, placement.RangeID(left))
	case leader == 0:
		return nil, router.Refuse(router.ErrTryAgain, "cairn: the placement group has no leader")
	case !forward:
		return nil, router.Refuse(router.ErrTryAgain, "cairn: member %x does not lead the placement group (%x does)", n.memberID, uint64(leader))
	}
	return n.fwd.MergeRange(ctx, leader, left)
}

// refuseUnrecorded refuses a merge whose right range (the one starting
// where left ends) was made by the bootstrap (--initial-split-keys) and
// never split since: its store has no span record, which the left
// range's commit reads (mvcc.Batch.Absorb), so the commit could not
// apply. Such a range is at generation 1 with no parent.
//
// TODO(S2): have the freeze write the right range's span record, then
// drop this refusal.
func (n *Node) refuseUnrecorded(ctx context.Context, left shard.RangeID) error {
	st, err := n.placement.State(ctx)
	if err != nil {
		return err
	}
	var l *placementpb.RangeDescriptor
	for _, d := range st.Ranges {
		if d.Id == uint64(left) {
			l = d
		}
	}
	if l == nil || len(l.End) == 0 {
		return nil // the driver's refusal
	}
	for _, d := range st.Ranges {
		if bytes.Equal(d.Start, l.End) && d.Parent == 0 && d.Generation == 1 {
			return router.Refuse(router.ErrPrecondition,
				"cairn: range %d was made by the bootstrap (--initial-split-keys) and never split: it cannot merge into range %d yet", d.Id, left)
		}
	}
	return nil
}

// mergeRanges is placement.MergeRanges over this member's range clients.
type mergeRanges struct{ n *Node }

var _ placement.MergeRanges = mergeRanges{}

// write proposes req to range d, a try bounded by changeTry.
func (mr mergeRanges) write(ctx context.Context, d *placementpb.RangeDescriptor, req *shardpb.Request) (placement.MergeOutcome, error) {
	rc := mr.n.routes.Client(shard.RangeID(d.Id))
	if rc == nil {
		return placement.MergeOutcome{}, fmt.Errorf("node: range %d is not routed here", d.Id)
	}
	try, cancel := context.WithTimeout(ctx, changeTry)
	defer cancel()
	resp, err := rc.Write(try, req)
	if err != nil {
		return placement.MergeOutcome{}, err
	}
	o := resp.GetMergeOutcome()
	if o == nil {
		return placement.MergeOutcome{}, fmt.Errorf("node: range %d answered a merge request without its outcome", d.Id)
	}
	return placement.MergeOutcome{Committed: o.Committed, Aborted: o.Aborted, FreezeIndex: o.FreezeIndex}, nil
}

func (mr mergeRanges) Freeze(ctx context.Context, right *placementpb.RangeDescriptor, merge uint64, left placement.RangeID) (placement.MergeOutcome, error) {
	return mr.write(ctx, right, &shardpb.Request{Op: &shardpb.Request_MergeFreeze{MergeFreeze: &shardpb.MergeFreeze{Merge: merge, Left: uint64(left)}}})
}

func (mr mergeRanges) Thaw(ctx context.Context, right *placementpb.RangeDescriptor, merge uint64) (placement.MergeOutcome, error) {
	return mr.write(ctx, right, &shardpb.Request{Op: &shardpb.Request_MergeThaw{MergeThaw: &shardpb.MergeThaw{Merge: merge}}})
}

// Commit carries the oracle's current value, read now (every R replica
// applied the freeze: R closes nothing more), as the merged range's closed
// revision.
func (mr mergeRanges) Commit(ctx context.Context, left, right *placementpb.RangeDescriptor, merge, generation uint64) (placement.MergeOutcome, error) {
	closed, err := mr.n.oracle.Current(ctx)
	if err != nil {
		return placement.MergeOutcome{}, err
	}
	return mr.write(ctx, left, &shardpb.Request{Op: &shardpb.Request_MergeCommit{MergeCommit: &shardpb.MergeCommit{
		Merge: merge, Right: right.Id, RightStart: right.Start, RightEnd: right.End, Generation: generation, Closed: int64(closed)}}})
}

func (mr mergeRanges) Abort(ctx context.Context, left *placementpb.RangeDescriptor, merge uint64) (placement.MergeOutcome, error) {
	return mr.write(ctx, left, &shardpb.Request{Op: &shardpb.Request_MergeAbort{MergeAbort: &shardpb.MergeAbort{Merge: merge}}})
}

// onMerge is shard.Config.OnMerge of r, this member's replica of a range
// (the left range of the merges it commits).
func (n *Node) onMerge(r *shard.Range) func(right shard.RangeID, span mvcc.Span, rev mvcc.Revision, generation uint64) {
	return func(right shard.RangeID, span mvcc.Span, rev mvcc.Revision, generation uint64) {
		if n.joiner != nil {
			n.joiner.OnMerge(r, right, span, rev, generation)
		}
	}
}
