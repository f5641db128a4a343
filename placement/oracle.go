package placement

import "github.com/cairn-kv/cairn/mvcc"

// Oracle hands out revisions on the placement group's leader, from memory,
// below a bound the group has persisted (RaiseBound through raft):
//
//	persisted bound 1000 → a new leader hands out from 1001
//	take 10 → 1001..1010; the window runs low → persist 1000+window
//	leader dies at next=1500 → its successor starts at 2000+1 (the bound),
//	so no revision is handed out twice, whatever the old leader had in flight
//
// Revisions are unique and increase across leaders; they need not be dense.
// The leader must hand out only while its leadership is confirmed (a read
// index after it last persisted the bound) — the caller's duty.
//
// Invariant: next ≤ limit + 1; every revision handed out is ≤ limit.
// An Oracle is deterministic and not safe for concurrent use.
type Oracle struct {
	next   mvcc.Revision // the next revision to hand out
	limit  mvcc.Revision // the persisted bound
	window int64         // how far above the handed-out revisions a bound is asked for
}

// NewOracle starts an oracle on a leader that found persisted as the
// group's bound: it hands out from persisted + 1, once a bound above is
// persisted (see Want).
func NewOracle(persisted mvcc.Revision, window int64) *Oracle {
	if window < 1 {
		window = 1
	}
	return &Oracle{next: persisted + 1, limit: persisted, window: window}
}

// Take hands out n consecutive revisions, first..first+n-1, if they fit
// under the persisted bound; else it hands out nothing (persist Want first).
func (o *Oracle) Take(n int64) (first mvcc.Revision, ok bool) {
	if n < 1 || o.next+mvcc.Revision(n)-1 > o.limit {
		return 0, false
	}
	first = o.next
	o.next += mvcc.Revision(n)
	return first, true
}

// Want returns the bound to persist so that n more revisions, and a window
// beyond them, can be handed out; 0 if the persisted bound leaves at least
// half a window after n. One persisted bound serves many Takes: that is
// what keeps the oracle off the raft log's critical path.
func (o *Oracle) Want(n int64) mvcc.Revision {
	need := o.next + mvcc.Revision(n) - 1
	if need+mvcc.Revision(o.window/2) <= o.limit {
		return 0
	}
	return need + mvcc.Revision(o.window)
}

// Persisted records that the group persisted bound b.
func (o *Oracle) Persisted(b mvcc.Revision) {
	if b > o.limit {
		o.limit = b
	}
}

// Raise makes every revision handed out from now on exceed above: the
// next one becomes above+1 if it was not higher. It is how a range that
// numbered its own revisions (one range, counting at apply time) hands the
// numbering to the oracle at its first split:
//
//	next 101, range at revision 5000 → Raise(5000+margin) → next 5000+margin+1
//
// Raising never lowers next, so uniqueness and order hold; revisions skip.
func (o *Oracle) Raise(above mvcc.Revision) {
	if o.next <= above {
		o.next = above + 1
	}
}

// Next is the next revision Take would hand out.
func (o *Oracle) Next() mvcc.Revision { return o.next }
