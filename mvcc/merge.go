package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Merges (docs/plan-merge.md). Two stores of adjacent spans on one pebble
// become one in place, the inverse of a split: the left store absorbs the
// right one. As with a split, no user data moves — versions and the event
// log are keyed by user key and revision, not by store — so the left store
// owns the right one's keys, their past versions and their history from
// the commit on. What is rewritten is small: the left store's span,
// revision and compaction records, the lagging side's versions and events
// over one compaction window, and a marker in the right store's records:
//
//	store 1 [, k) rev 13 compact -1    store 2 [k, ∞) rev 14 compact 12
//	1 absorbs 2 → store 1 [, ∞) rev 14 compact 12: 1's keys compacted at 12
//	              'm' 2 "merged-into" = 1; 2's other records stay, dropped
//	              with its replica
//
// The shard's merge commit calls Absorb, once the right range is frozen on
// every member (shard/merge.go).

// metaMergedInto names the record Batch.Absorb leaves in the absorbed
// store's records: the id of the store that absorbed it, big-endian.
const metaMergedInto = "merged-into"

// Refusals of Batch.Absorb. Each is returned before anything changes.
var (
	// ErrNotAdjacent: the absorbed store's span does not start where the
	// absorbing store's ends.
	ErrNotAdjacent = errors.New("mvcc: stores are not adjacent")
	// ErrUnknownStore: the store to absorb has no span record in the DB
	// (it never split off here, nor restored a snapshot of a store that
	// did), or was absorbed already.
	ErrUnknownStore = errors.New("mvcc: no such store to absorb")
)

// Absorb makes this store own the keys of store right too, at this batch,
// and returns the merged span. right's span must start where this store's
// ends (ErrNotAdjacent); right must be a store of this DB with a span
// record, not absorbed yet (ErrUnknownStore), and not this store.
//
// From Commit on, the span is [this start, right's end), the revision the
// higher of the two, and the compacted revision the higher of the two; the
// side that lagged is compacted at that revision first, over its own
// window (its keys' versions and event entries from its compacted revision
// on), so that every key of the span reads as compacted at one revision.
// That compaction holds the DB's EventLog, as Compact does, until Commit or
// Close. right's records are read as committed (the caller guarantees they
// no longer change: the right range is frozen) and left in place, but for
// a "merged-into" marker naming this store (MergedInto); the caller drops
// them with right's replica. The merge takes no revision and produces no
// event.
func (b *Batch) Absorb(right uint64) (Span, error) {
	id := b.s.opts.ID
	if right == id {
		return Span{}, fmt.Errorf("%w: store %d cannot absorb itself", ErrNotAdjacent, id)
	}
	if into, ok, err := mergedInto(b.b, right); err != nil {
		return Span{}, err
	} else if ok {
		return Span{}, fmt.Errorf("%w: store %d was merged into store %d", ErrUnknownStore, right, into)
	}
	rspan, ok, err := StoredSpan(b.b, right)
	if err != nil {
		return Span{}, err
	}
	if !ok {
		return Span{}, fmt.Errorf("%w: store %d has no span record", ErrUnknownStore, right)
	}
	sp := b.span()
	if sp.End == nil || !bytes.Equal(sp.End, rspan.Start) {
		return Span{}, fmt.Errorf("%w: store %d %s does not start where store %d %s ends",
			ErrNotAdjacent, right, spanText(rspan), id, spanText(sp))
	}
	rrev, err := readMetaInt(b.b, metaKey(right, metaRev), 1)
	if err != nil {
		return Span{}, err
	}
	rcompact, err := readMetaInt(b.b, metaKey(right, metaCompact), -1)
	if err != nil {
		return Span{}, err
	}
	compact := max(b.compact, Revision(rcompact))
	switch {
	case Revision(rcompact) < compact:
		err = b.compactWindow(rspan, max(Revision(rcompact), 0), compact)
	case b.compact < compact:
		err = b.compactWindow(sp, max(b.compact, 0), compact)
	}
	if err != nil {
		return Span{}, err
	}
	merged := Span{Start: sp.Start, End: rspan.End}
	b.rev = max(b.rev, Revision(rrev))
	b.compact = compact
	b.dirty = true
	b.SetMeta(metaSpan, encodeSpan(merged))
	b.newSpan = &merged
	b.SetMetaFor(right, metaMergedInto, binary.BigEndian.AppendUint64(nil, id))
	return merged, nil
}

// MergedInto reports whether store id was absorbed in db (Batch.Absorb
// committed here), and by which store: a replica of a merged-away range
// whose records are still there is to be dropped, not started.
func MergedInto(db pebble.Reader, id uint64) (into uint64, ok bool, err error) {
	return mergedInto(db, id)
}

func mergedInto(r pebble.Reader, id uint64) (uint64, bool, error) {
	v, closer, err := r.Get(metaKey(id, metaMergedInto))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("mvcc: read the merge record of store %d: %w", id, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, false, fmt.Errorf("mvcc: the merge record of store %d has %d bytes, want 8", id, len(v))
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// spanText formats a span for messages: [start, end), ∞ for no end.
func spanText(s Span) string {
	if s.End == nil {
		return fmt.Sprintf("[%q, ∞)", s.Start)
	}
	return fmt.Sprintf("[%q, %q)", s.Start, s.End)
}
