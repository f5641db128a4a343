package router

import (
	"context"
	"errors"
	"io"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard"
)

// Backups writes the images of this member's replicas that Snapshot sends
// (shard.Set): one store of the whole key space, in the format
// shard.RestoreBackup reads.
type Backups interface {
	// IDs lists the ranges here, in key order.
	IDs() []shard.RangeID
	// WriteBackup writes the backup of range id, which holds the whole
	// key space.
	WriteBackup(id shard.RangeID, w io.Writer) error
	// WriteImage writes every range here at rev as one store, once each
	// has applied every write up to rev here; shard.ErrRangesChanged if
	// they are no longer ids, mvcc.ErrImageCompacted if one was compacted
	// past rev, both before anything is written.
	WriteImage(ids []shard.RangeID, rev mvcc.Revision, w io.Writer) error
}

// imageTries bounds how many revisions a backup of several ranges takes
// before it gives up.
const imageTries = 6

// backup writes a backup of the store at one revision to w (Snapshot):
// over a static map (single-group mode) the one range's own. Otherwise
// every range's, as one store of the whole key space: the revision R is
// the cluster's now, and the image is taken from one pebble snapshot of
// the member's DB once each of its ranges has applied every write up to R
// here. A split or a compaction past R meanwhile takes another R. Leases
// are not revisioned: they are as the snapshot has them, and keys at R of
// a lease revoked since are deleted in the backup at R+1, finishing the
// revoke (as the cluster does: a revoke deletes each range's keys at that
// range's own revision).
func (s *Server) backup(ctx context.Context, w io.Writer) error {
	if s.cfg.Ranges.static {
		p, _ := s.cfg.Ranges.Lookup(nil)
		return s.cfg.Backups.WriteBackup(p.ID, w)
	}
	for attempt := 0; ; attempt++ {
		before := s.cfg.Backups.IDs()
		rev, err := s.now(ctx)
		if err != nil {
			return err
		}
		for _, p := range s.cfg.Ranges.All() {
			if err := WaitApplied(ctx, p, rev); err != nil {
				return err
			}
		}
		err = s.cfg.Backups.WriteImage(before, rev, w)
		// Both are refused before anything is written: take another R.
		if errors.Is(err, shard.ErrRangesChanged) || errors.Is(err, mvcc.ErrImageCompacted) {
			if attempt < imageTries-1 {
				continue
			}
			return Refuse(ErrTryAgain, "cairn: snapshot: %v; try again", err)
		}
		return err
	}
}
