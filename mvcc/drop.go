package mvcc

import (
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// EventLog is the lock over the event log records of one pebble DB. The
// records ('e' rev, keys.go) are shared by every store of the DB: entries of
// several stores sit in one record for the revisions a range counted before
// its first split, and a dropped store's entries sit in records that live
// stores read. So every read-modify-write of an existing record — a
// restore merging its span's entries (from the read in ReadSnapshot to the
// commit in PendingRestore.Apply), a Batch's Compact (from its read to the
// batch's Commit or Close) and SweepEvents (per chunk, read to commit) —
// holds the DB's one EventLog from the read to the commit, or two of them
// would each write back the record as they read it and lose the other's
// change.
//
// Writes of a new revision's record (Put, DeleteRange, Txn, DeleteKeys) do
// not take it: a revision is written by one store only (oracle revisions are
// unique in the cluster; a store that counts its own revisions is the only
// store of its cluster).
//
// Lock order: EventLog before any lock of the layers above that a holder
// calls into (a sweep's owned function, a batch's apply callbacks); nothing
// holding such a lock waits for the EventLog.
type EventLog struct {
	db *pebble.DB
	mu sync.Mutex
}

// NewEventLog returns the event log lock of db: one per DB, given to every
// store opened on it (Options.EventLog).
func NewEventLog(db *pebble.DB) *EventLog { return &EventLog{db: db} }

// Do runs fn holding the lock, so that no read-modify-write of an event
// record is in progress while fn runs: a change of what a sweep's owned
// function answers, made in fn, is seen by a sweep's chunk entirely or not
// at all.
func (l *EventLog) Do(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fn()
}

// DropSpan writes into b the deletion of a store's data: the version records
// of every key in spans and every internal record of store id. The event log
// entries of those keys stay (SweepEvents removes them); so do the records
// other parts of the shard keep (the lessor's). The store must not be open
// for writes, and spans must hold no key another store of the DB owns.
func DropSpan(b *pebble.Batch, id uint64, spans ...Span) error {
	for _, sp := range spans {
		lo, hi := VersionBounds(sp)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return fmt.Errorf("mvcc: drop the versions of store %d: %w", id, err)
		}
	}
	mp := metaPrefix(id)
	if err := b.DeleteRange(mp, prefixEnd(mp), nil); err != nil {
		return fmt.Errorf("mvcc: drop the internal records of store %d: %w", id, err)
	}
	return nil
}

// SweepEvents removes from db's event log, in records from revision from
// on, the entries of keys that lie in dropped and that owned says no store
// of the DB owns, and deletes the records it empties. It visits at most
// maxRevs records (a chunk), holding log from the first read to the commit
// (without fsync: a sweep is repeated after a crash, and it changes nothing
// the second time), and returns the revision to continue from and whether
// records remain past it. owned is called with log held.
//
//	e5: a(store 1) m(store 2)   drop store 2 [k, ∞), nothing owns it
//	→ e5: a
//	e6: n                       → e6 deleted
func SweepEvents(db *pebble.DB, log *EventLog, dropped Span, owned func(key []byte) bool, from Revision, maxRevs int) (next Revision, more bool, err error) {
	if log == nil || log.db != db {
		return from, true, fmt.Errorf("mvcc: sweep the event log with another DB's lock")
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	b := db.NewBatch()
	defer b.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: eventKey(max(from, 0)), UpperBound: eventsEnd})
	if err != nil {
		return from, true, fmt.Errorf("mvcc: sweep the event log: %w", err)
	}
	next = from
	n := 0
	for it.First(); it.Valid(); it.Next() {
		if n == maxRevs {
			more = true
			break
		}
		n++
		rev, err := decodeEventKey(it.Key())
		if err != nil {
			it.Close()
			return from, true, err
		}
		next = rev + 1
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return from, true, err
		}
		es, err := decodeEvents(v)
		if err != nil {
			it.Close()
			return from, true, err
		}
		rest := es[:0:0]
		for _, e := range es {
			if !dropped.Contains(e.key) || owned(e.key) {
				rest = append(rest, e)
			}
		}
		if len(rest) == len(es) {
			continue
		}
		if len(rest) == 0 {
			err = b.Delete(eventKey(rev), nil)
		} else {
			err = b.Set(eventKey(rev), encodeEvents(rest), nil)
		}
		if err != nil {
			it.Close()
			return from, true, err
		}
	}
	if err := it.Close(); err != nil {
		return from, true, fmt.Errorf("mvcc: sweep the event log: %w", err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return from, true, fmt.Errorf("mvcc: sweep the event log: %w", err)
	}
	return next, more, nil
}
