package router

import (
	"context"
	"errors"
	"io"
	"slices"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
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
	for _, p := range s.cfg.Ranges.All() {
		if rc, ok := p.Shard.(*RangeClient); ok && rc.Remote() {
			return s.backupFrom(ctx, w)
		}
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

// ImageAssembler builds a backup out of the ranges' images, wherever they
// come from; the node implements it (in a scratch store it removes after).
type ImageAssembler interface {
	// AssembleImage restores each range of ds, in key order, from the
	// image that image writes (its replica's store in the mvcc snapshot
	// format, taken once it had applied every write up to rev) into one
	// scratch DB, then, if ready returns nil, writes to w the backup of the
	// whole key space at rev (shard.WriteImageBackup), with the leases of
	// every range. Nothing is written to w before ready is called;
	// mvcc.ErrImageCompacted if a range was compacted past rev, also
	// before.
	AssembleImage(ctx context.Context, rev mvcc.Revision, ds []*placementpb.RangeDescriptor,
		image func(ctx context.Context, d *placementpb.RangeDescriptor, w io.Writer) error, ready func() error, w io.Writer) error
}

// backupFrom is backup when some ranges have no replica here (--range-
// replicas): at the cluster's now R, each range's image comes from this
// member's replica or is streamed from a member holding one, once the
// range's leader has closed R (RangeClient.Image), and the node assembles
// them into one store (ImageAssembler). Leases are as each range's image
// has them, and keys of a lease revoked since R are deleted at R+1, as in
// backup. A split meanwhile (the map's ranges are not those listed before
// R was taken) or a compaction past R takes another R.
func (s *Server) backupFrom(ctx context.Context, w io.Writer) error {
	asm, ok := s.cfg.Node.(ImageAssembler)
	if !ok {
		return Refuse(ErrPrecondition, "cairn: snapshot: this member cannot assemble a backup of ranges held elsewhere")
	}
	for attempt := 0; ; attempt++ {
		before := s.descriptors()
		rev, err := s.now(ctx)
		if err != nil {
			return err
		}
		image := func(ctx context.Context, d *placementpb.RangeDescriptor, w io.Writer) error {
			rc := s.cfg.Ranges.Client(shard.RangeID(d.Id))
			if rc == nil {
				return shard.ErrRangesChanged
			}
			return rc.Image(ctx, rev, w)
		}
		ready := func() error {
			if !sameRanges(before, s.descriptors()) {
				return shard.ErrRangesChanged
			}
			return nil
		}
		err = asm.AssembleImage(ctx, rev, before, image, ready, w)
		if err != nil && !sameRanges(before, s.descriptors()) {
			err = shard.ErrRangesChanged // a part cut by a split refused
		}
		if errors.Is(err, shard.ErrRangesChanged) || errors.Is(err, mvcc.ErrImageCompacted) {
			if attempt < imageTries-1 {
				continue
			}
			return Refuse(ErrTryAgain, "cairn: snapshot: %v; try again", err)
		}
		return err
	}
}

// sameRanges reports whether a and b are the same ranges at the same
// generations.
func sameRanges(a, b []*placementpb.RangeDescriptor) bool {
	return slices.EqualFunc(a, b, func(x, y *placementpb.RangeDescriptor) bool {
		return x.Id == y.Id && x.Generation == y.Generation
	})
}
