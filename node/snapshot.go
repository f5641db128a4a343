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
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// A backup file, as `etcdctl snapshot save` writes it: the shard's image,
// zero-padded to a multiple of 512 bytes, then the SHA-256 of everything
// before it (etcd's clients check that shape: size % 512 == 32).
const backupAlign = 512

// Snapshot implements router.Operator: it writes a backup of the store at
// one revision to a temporary file in the data directory and returns it
// open at the start with its size; closing it removes the file. In sharded
// mode the backup is of every range, as one store (shardedBackup).
func (n *Node) Snapshot(ctx context.Context) (io.ReadCloser, int64, error) {
	if n.merger != nil {
		return n.backupFile(func(w io.Writer) error { return n.shardedBackup(ctx, w) })
	}
	m := n.first.StateMachine()
	if m == nil {
		return nil, 0, shard.ErrClosed
	}
	return n.backupFile(func(w io.Writer) error {
		_, err := m.WriteBackup(w)
		return err
	})
}

// backupFile writes a backup file with write: the image, its padding and
// its checksum.
func (n *Node) backupFile(write func(io.Writer) error) (io.ReadCloser, int64, error) {
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

// shardedBackup writes a backup of every range at one revision R, as one
// store of the whole key space (shard.WriteImageBackup): R is a fresh
// oracle revision, and the image is taken from one pebble snapshot of the
// node's DB once each of its ranges has applied every write up to R here
// (the ranges share the DB, keyed by user key). A split or a compaction
// past R meanwhile takes another R. Leases are not revisioned: they are
// as the snapshot has them, and keys at R of a lease revoked since are
// deleted in the backup at R+1, finishing the revoke (as the cluster
// does: a revoke deletes each range's keys at that range's own revision).
func (n *Node) shardedBackup(ctx context.Context, w io.Writer) error {
	for attempt := 0; ; attempt++ {
		before := rangeIDs(n.rangeSet.Routing())
		rev, err := n.Now(ctx)
		if err != nil {
			return err
		}
		for _, p := range n.routes.All() {
			if err := router.WaitApplied(ctx, p, rev); err != nil {
				return err
			}
		}
		snap := n.db.NewSnapshot()
		if !slices.Equal(before, rangeIDs(n.rangeSet.Routing())) {
			err = errRangesChanged
		} else {
			_, err = shard.WriteImageBackup(snap, singleShardID, rev, w)
		}
		_ = snap.Close()
		// Both are refused before anything is written: take another R.
		if errors.Is(err, errRangesChanged) || errors.Is(err, mvcc.ErrImageCompacted) {
			if attempt < 5 {
				continue
			}
			return router.Refuse(router.ErrTryAgain, "cairn: snapshot: %v; try again", err)
		}
		return err
	}
}

var errRangesChanged = errors.New("ranges split while the snapshot was taken")

func rangeIDs(rs []*shard.Range) []shard.RangeID {
	ids := make([]shard.RangeID, len(rs))
	for i, rr := range rs {
		ids[i] = rr.ID()
	}
	return ids
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
