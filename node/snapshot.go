package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// A backup file, as `etcdctl snapshot save` writes it: the shard's image,
// zero-padded to a multiple of 512 bytes, then the SHA-256 of everything
// before it (etcd's clients check that shape: size % 512 == 32).
const backupAlign = 512

// BackupFile implements router.Snapshotter: it writes a backup file with
// write — the image, its padding and its checksum — to a temporary file in
// the data directory and returns it open at the start with its size;
// closing it removes the file.
func (n *Node) BackupFile(write func(io.Writer) error) (io.ReadCloser, int64, error) {
	f, err := os.CreateTemp(n.cfg.DataDir, "backup-*.part")
	if err != nil {
		return nil, 0, fmt.Errorf("node: snapshot: %w", err)
	}
	fail := func(err error) (io.ReadCloser, int64, error) {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return nil, 0, fmt.Errorf("node: snapshot: %w", err)
	}
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, h)}
	if err := write(cw); err != nil {
		return fail(err)
	}
	if pad := (backupAlign - cw.n%backupAlign) % backupAlign; pad > 0 {
		if _, err := cw.Write(make([]byte, pad)); err != nil {
			return fail(err)
		}
	}
	if _, err := f.Write(h.Sum(nil)); err != nil {
		return fail(err)
	}
	size := cw.n + sha256.Size
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	return &removeOnClose{File: f}, size, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type removeOnClose struct{ *os.File }

func (r *removeOnClose) Close() error {
	err := r.File.Close()
	_ = os.Remove(r.Name())
	return err
}

// RestoreSnapshot makes a new data directory from a backup file (`cairn
// snapshot restore`): the checksum is verified, the store and leases are
// restored, and the directory is ready for `cairn` to start as the first
// member of a new cluster (or every member, each restored from the same
// file). dataDir must not exist yet.
func RestoreSnapshot(path, dataDir string) (revision int64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("node: restore: %w", err)
	}
	if len(data) < sha256.Size || (len(data)-sha256.Size)%backupAlign != 0 {
		return 0, fmt.Errorf("node: restore: %s is not a Cairn backup (size %d)", path, len(data))
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return 0, fmt.Errorf("node: restore: %s: checksum mismatch", path)
	}
	if _, err := os.Stat(dataDir); err == nil {
		return 0, fmt.Errorf("node: restore: data directory %s already exists", dataDir)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return 0, fmt.Errorf("node: restore: %w", err)
	}
	db, err := pebble.Open(filepath.Join(dataDir, "state"), mvcc.PebbleOptions(&pebble.Options{Logger: quietPebble{}}))
	if err != nil {
		return 0, fmt.Errorf("node: restore: open state store: %w", err)
	}
	defer func() {
		if cerr := db.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	rev, err := shard.RestoreBackup(db, singleShardID, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("node: restore: %w", err)
	}
	return int64(rev), nil
}

// AssembleImage implements router.ImageAssembler: each range's image is
// restored, as the store of that range, into a scratch pebble DB in the
// data directory (removed after), as a replica receiving it in a raft
// snapshot would (so event log records shared by several ranges merge);
// the backup is then written from that DB as from a member holding every
// range (shard.WriteImageBackup), named for the first range.
func (n *Node) AssembleImage(ctx context.Context, rev mvcc.Revision, ds []*placementpb.RangeDescriptor,
	image func(ctx context.Context, d *placementpb.RangeDescriptor, w io.Writer) error, ready func() error, w io.Writer) error {
	if len(ds) == 0 {
		return shard.ErrRangesChanged
	}
	dir, err := os.MkdirTemp(n.cfg.DataDir, "backup-*.parts")
	if err != nil {
		return fmt.Errorf("node: snapshot: %w", err)
	}
	defer os.RemoveAll(dir)
	db, err := pebble.Open(dir, mvcc.PebbleOptions(&pebble.Options{Logger: quietPebble{}}))
	if err != nil {
		return fmt.Errorf("node: snapshot: open a scratch store: %w", err)
	}
	defer db.Close()
	events := mvcc.NewEventLog(db)
	for _, d := range ds {
		if err := restorePart(ctx, db, events, d, image); err != nil {
			return err
		}
	}
	if err := ready(); err != nil {
		return err
	}
	snap := db.NewSnapshot()
	defer snap.Close()
	_, err = shard.WriteImageBackup(snap, ds[0].Id, rev, w)
	return err
}

// restorePart restores range d's image, as image writes it, into db as
// the store of d.
func restorePart(ctx context.Context, db *pebble.DB, events *mvcc.EventLog, d *placementpb.RangeDescriptor,
	image func(ctx context.Context, d *placementpb.RangeDescriptor, w io.Writer) error) error {
	span := mvcc.Span{Start: d.Start}
	if len(d.End) > 0 {
		span.End = d.End
	}
	lo, hi := lease.RecordBounds(d.Id)
	store, err := mvcc.Open(db, mvcc.Options{ID: d.Id, Span: span, Carried: []mvcc.RawSpan{{Lo: lo, Hi: hi}}, EventLog: events})
	if err != nil {
		return fmt.Errorf("node: snapshot: range %d: %w", d.Id, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := image(ctx, d, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	err = store.Restore(pr)
	_ = pr.CloseWithError(fmt.Errorf("node: snapshot: range %d's image not read to its end", d.Id))
	cancel()
	if ierr := <-done; ierr != nil && err != nil && !errors.Is(ierr, context.Canceled) {
		err = ierr // the stream's own failure, not the restore's view of it
	}
	if err != nil {
		return fmt.Errorf("node: snapshot: range %d: %w", d.Id, err)
	}
	return nil
}
