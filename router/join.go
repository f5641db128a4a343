package router

import (
	"context"
	"log/slog"
	"time"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Online merge (sharded mode, docs/plan-merge.md), the member's side: the
// right range R, frozen by its own log, is absorbed in place by the left
// range L's log (MergeCommit); every replica of L applies the commit at
// the same index, and the member then takes R's keys into L here
// (Joiner.OnMerge), as a split applying is taken in by Splitter.OnSplit:
//
//	set: r2 [f,m) g1, r3 [m,) g2 → r2 [f,) g3 (Set.Merge; r3 out of routing)
//	cache: one view swap, r3 gone into r2 (RangeCache.Merge)
//	watches: r3's watchers move to r2's hub from their marks (watch.Merger.Merge)
//	r3's replica: handed to the node's merge worker (Retire: close, stop, drop)
//
// Requests routed to R meanwhile are refused with ERROR_CODE_MERGING while
// R is frozen (the router retries them to their deadline, rerouted), and
// once R is gone here, a member asking for R is answered that L holds its
// keys (OutsideRangeError with L's descriptor, internalServer), so that it
// routes by L without waiting for the range map.

// JoinerConfig wires a Joiner.
type JoinerConfig struct {
	// Ranges is this member's range cache.
	Ranges *RangeCache
	// Local is this member's replicas of the ranges.
	Local *shard.Set
	// Merger serves watches over the ranges: a merge moves the right
	// range's watchers to the left range.
	Merger *watch.Merger
	// Retire takes the right range's replica here, out of routing already,
	// to the node's merge worker, which closes it (closer, pump, hub),
	// stops its raft replica and drops its records and raft data (the
	// left range owns its keys: none is deleted). It is called on the
	// left range's apply goroutine: it must not block. nil: the replica
	// is left as it is (tests).
	Retire func(right *shard.Range)
	// Log receives what the joiner notes; nil discards it.
	Log *slog.Logger
}

// Joiner takes the merges that commit here into this member's ranges
// (OnMerge).
//
// Concurrency: OnMerge runs on the left range's apply goroutine; the
// Joiner keeps no state of its own and starts no goroutine (retiring the
// right range is the merge worker's, through Retire).
type Joiner struct {
	cfg JoinerConfig
}

// NewJoiner returns a joiner.
func NewJoiner(cfg JoinerConfig) *Joiner {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Joiner{cfg: cfg}
}

// OnMerge is shard.Config.OnMerge of left, this member's replica of a
// range: it runs on left's apply goroutine as left commits the merge of
// range right, after the commit's batch and before its OnApply. left spans
// span from now on, at generation; rev is its store's revision after the
// merge. It takes right's keys into left in this member's ranges and the
// range cache, moves right's watchers to left's hub, and hands right's
// replica here to Retire. A merge applied again (left's log replayed
// after a restart, right no longer here) changes left's descriptor only.
func (j *Joiner) OnMerge(left *shard.Range, right shard.RangeID, span mvcc.Span, rev mvcc.Revision, generation uint64) {
	gone := j.cfg.Local.Merge(left, right, span, generation)
	j.cfg.Ranges.Merge(left, right)
	if gone == nil {
		j.cfg.Log.Info("merge applied again: its right range is not here", "left", left.ID(), "right", right, "rev", rev)
		return
	}
	if j.cfg.Merger != nil {
		// Before the commit's OnApply raises left's hub: the watchers'
		// marks are right's, caught up from left's store above them.
		j.cfg.Merger.Merge(gone.Hub(), watch.Part{Hub: left.Hub(), Kick: left.WantClosed})
	}
	j.cfg.Log.Info("range merged", "left", left.ID(), "right", right, "start", string(span.Start), "end", string(span.End),
		"generation", generation, "rev", rev)
	if j.cfg.Retire != nil {
		j.cfg.Retire(gone)
	}
}

// mergeRetryMax is the longest pause between two tries of a request a
// range frozen for a merge refused (the freeze lasts two apply rounds
// normally, the merge driver's patience at worst: seconds).
const mergeRetryMax = 50 * time.Millisecond

// mergeRetry paces one request's tries while ranges it reaches are frozen
// for a merge: with backoff, up to the request's deadline — the caller's,
// or etcd's server-side bound on a request (requestTimeout), whichever
// comes first — not a number of tries.
type mergeRetry struct {
	deadline time.Time
	pause    time.Duration
}

// mergeWait starts the pacing of a request that starts now.
func (s *Server) mergeWait(ctx context.Context) *mergeRetry {
	deadline := time.Now().Add(s.requestTimeout())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return &mergeRetry{deadline: deadline, pause: time.Millisecond}
}

// wait pauses before the next try and reports whether there is time for
// it; false once the deadline passed or ctx ended.
func (m *mergeRetry) wait(ctx context.Context) bool {
	left := time.Until(m.deadline)
	if left <= 0 {
		return false
	}
	t := time.NewTimer(min(m.pause, left))
	defer t.Stop()
	m.pause = min(2*m.pause, mergeRetryMax)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
