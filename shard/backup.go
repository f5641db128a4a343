package shard

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
)

// ErrPartialBackup refuses a backup of a shard that holds only part of the
// key space (a range after a split): restored alone, it would lose the rest.
var ErrPartialBackup = errors.New("shard: the shard holds part of the key space; a backup holds all of it")

// WriteBackup writes a consistent image of the shard — keys with their
// history, leases, internal records — at one revision to w, in the format
// of its raft snapshots, and returns that revision. The shard must hold the
// whole key space (single-group mode); WriteImageBackup is for several.
func (s *StateMachine) WriteBackup(w io.Writer) (mvcc.Revision, error) {
	s.mu.RLock()
	if s.closed || s.store == nil {
		s.mu.RUnlock()
		return 0, ErrClosed
	}
	snap := s.store.NewSnapshot()
	s.mu.RUnlock()
	defer snap.Close()
	if sp := snap.Span(); len(sp.Start) > 0 || sp.End != nil {
		return 0, ErrPartialBackup
	}
	rev, err := snap.Rev()
	if err != nil {
		return 0, err
	}
	if _, err := snap.WriteTo(w); err != nil {
		return 0, fmt.Errorf("shard %d: write backup: %w", s.shardID, err)
	}
	return rev, nil
}

// RestoreBackup makes a backup the first state of shard shardID in db, for
// a new cluster: its data and leases are kept; what belonged to the old
// cluster — the applied raft index, the members' attributes, the alarms,
// sharded mode's closed revision and proposer fence — is dropped, so the
// new raft group starts its log from the beginning on top of the restored
// data. It returns the restored revision.
func RestoreBackup(db *pebble.DB, shardID uint64, r io.Reader) (mvcc.Revision, error) {
	lo, hi := lease.RecordBounds(shardID)
	store, err := mvcc.Open(db, mvcc.Options{ID: shardID, Carried: []mvcc.RawSpan{{Lo: lo, Hi: hi}}})
	if err != nil {
		return 0, err
	}
	if err := store.Restore(r); err != nil {
		return 0, err
	}
	var stale []string
	for _, prefix := range []string{appliedKey, membersPrefix, peersPrefix, alarmsPrefix, closedKey, fenceKey} {
		if err := store.ScanMeta(prefix, func(name string, _ []byte) { stale = append(stale, name) }); err != nil {
			return 0, err
		}
	}
	b := store.NewBatch()
	defer b.Close()
	for _, name := range stale {
		b.DeleteMeta(name)
	}
	if err := b.Commit(); err != nil {
		return 0, err
	}
	if err := db.Flush(); err != nil {
		return 0, fmt.Errorf("shard: flush restored backup: %w", err)
	}
	return store.Rev(), nil
}

// WriteImageBackup writes a backup of every range of a sharded node at
// revision rev from snap, a pebble snapshot of the node's DB taken once
// every range had applied every write up to rev there: one store of the
// whole key space (mvcc.WriteImage) named for shard into, with the leases
// of every range (lease.NewImage), in the format of WriteBackup, so
// RestoreBackup takes it alike. It returns the backup's revision: rev, or
// rev+1 if keys of leases revoked after rev were deleted in it.
func WriteImageBackup(snap *pebble.Snapshot, into uint64, rev mvcc.Revision, w io.Writer) (mvcc.Revision, error) {
	stores, err := mvcc.StoreIDs(snap)
	if err != nil {
		return 0, err
	}
	leases, err := lease.NewImage(snap, stores, into)
	if err != nil {
		return 0, err
	}
	return mvcc.WriteImage(snap, w, mvcc.Image{Stores: stores, Rev: rev, Attach: leases.Attach, Carried: leases.Carried})
}

// ErrRangesChanged refuses an image of a member's ranges whose set changed
// (a split) since the caller listed them: take another revision.
var ErrRangesChanged = errors.New("shard: ranges split while the snapshot was taken")

// IDs returns the ids of the ranges in the set (Routing's), in key order.
func (s *Set) IDs() []RangeID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]RangeID, len(s.ranges))
	for i, r := range s.ranges {
		ids[i] = r.ID()
	}
	return ids
}

// WriteBackup writes the backup of this member's replica of range id,
// which holds the whole key space (StateMachine.WriteBackup; single-group
// mode): ErrClosed before its state machine exists.
func (s *Set) WriteBackup(id RangeID, w io.Writer) error {
	var sm *StateMachine
	if r := s.Get(id, false); r != nil {
		sm = r.StateMachine()
	}
	if sm == nil {
		return ErrClosed
	}
	_, err := sm.WriteBackup(w)
	return err
}

// WriteImage writes a backup of every range of the set at rev, as one
// store of the whole key space named for the first range, range 1
// (WriteImageBackup), from one pebble snapshot of the member's DB taken
// now: the caller has waited until each range here applied every write up
// to rev (the ranges share the DB, keyed by user key). ids are the set's
// ranges as the caller listed them before it chose rev; if a split has
// changed them since, it refuses with ErrRangesChanged, and a range
// compacted past rev since with mvcc.ErrImageCompacted, both before
// anything is written.
func (s *Set) WriteImage(ids []RangeID, rev mvcc.Revision, w io.Writer) error {
	snap := s.cfg.DB.NewSnapshot()
	defer snap.Close()
	if len(ids) == 0 || !slices.Equal(ids, s.IDs()) {
		return ErrRangesChanged
	}
	_, err := WriteImageBackup(snap, uint64(ids[0]), rev, w)
	return err
}

// WriteImage writes this replica's store — its versions, its part of the
// event log, its records and its leases — at what it has applied, in the
// format of its raft snapshots (mvcc.Snapshot.WriteTo): the part of a
// backup that a member without the range assembles (mvcc.Store.Restore of
// each range into one DB, then WriteImageBackup). ErrClosed before the
// state machine exists.
func (r *Range) WriteImage(w io.Writer) error {
	sm := r.StateMachine()
	if sm == nil {
		return ErrClosed
	}
	sm.mu.RLock()
	if sm.closed || sm.store == nil {
		sm.mu.RUnlock()
		return ErrClosed
	}
	snap := sm.store.NewSnapshot()
	sm.mu.RUnlock()
	defer snap.Close()
	if _, err := snap.WriteTo(w); err != nil {
		return fmt.Errorf("shard %d: write image: %w", sm.shardID, err)
	}
	return nil
}
