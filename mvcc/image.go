package mvcc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/cockroachdb/pebble/v2"
)

// Image describes a whole-key-space image of the stores of one pebble DB
// (a sharded node's ranges) at one revision, written as a snapshot stream
// of one store (WriteImage), so that restoring it (Store.Restore) makes a
// single store of every range. Its internal records are the revision and
// the compacted revision; the caller names the carried records (leases)
// for the store it restores into.
type Image struct {
	// Stores are the stores whose revisions the image merges (for the
	// compacted revision: the highest of theirs).
	Stores []uint64
	// Rev is the image's revision: versions and events above it are left
	// out. Every write at or below it must be in the DB.
	Rev Revision
	// Attach is asked, for every key live at Rev with a lease, whether the
	// lease is in the image; if so it returns the carried record that
	// attaches the key (nil: none). A key whose lease is not is deleted
	// in the image at Rev+1: its lease was revoked after Rev, and the
	// image finishes the revoke.
	Attach func(lease int64, key []byte) (record []byte, ok bool)
	// Carried writes other carried records (the leases) with frame.
	Carried func(frame func(k, v []byte) error) error
}

// ErrImageCompacted refuses an image at a revision some store has
// compacted past since.
var ErrImageCompacted = errors.New("mvcc: a store was compacted past the image's revision")

// WriteImage writes img from r (a pebble snapshot of the DB) to w, in the
// format of Snapshot.WriteTo for a store of the whole key space, and
// returns the image's revision: img.Rev, or img.Rev+1 if it deleted keys
// of leases not in the image.
func WriteImage(r pebble.Reader, w io.Writer, img Image) (Revision, error) {
	compact := Revision(-1)
	for _, id := range img.Stores {
		c, err := readMetaInt(r, metaKey(id, metaCompact), -1)
		if err != nil {
			return 0, err
		}
		compact = max(compact, Revision(c))
	}
	if compact > img.Rev {
		return 0, fmt.Errorf("%w: %d > %d", ErrImageCompacted, compact, img.Rev)
	}

	sw := &snapWriter{w: bufio.NewWriterSize(w, 1<<16), crc: crc32.NewIEEE()}
	sw.write([]byte(snapshotMagic))
	frame := func(k, v []byte) error {
		sw.frame(kindCarried, k, v)
		return sw.err
	}
	// Versions at or below Rev; the newest of each key is its state at Rev.
	var (
		last    []byte // the user key prefix of the key being visited
		settled bool   // its state at Rev was looked at
		revoked [][]byte
	)
	if err := eachRecord(r, versionsStart, versionsEnd, func(k, v []byte) error {
		prefix, key, rev, err := decodeVersionKey(k)
		if err != nil {
			return err
		}
		if !bytes.Equal(prefix, last) {
			last, settled = append(last[:0], prefix...), false
		}
		if rev > img.Rev {
			return nil
		}
		if !settled {
			settled = true
			ver, err := decodeVersion(key, rev, v)
			if err != nil {
				return err
			}
			if !ver.tombstone && ver.lease != 0 {
				rec, ok := img.Attach(ver.lease, key)
				switch {
				case !ok:
					revoked = append(revoked, key)
				case rec != nil:
					if err := frame(rec, nil); err != nil {
						return err
					}
				}
			}
		}
		sw.frame(kindVersion, k, v)
		return sw.err
	}); err != nil {
		return 0, err
	}
	if err := eachRecord(r, eventsStart, eventKey(img.Rev+1), func(k, v []byte) error {
		sw.frame(kindEvent, k[1:], v)
		return sw.err
	}); err != nil {
		return 0, err
	}
	rev := img.Rev
	if len(revoked) > 0 {
		rev++
		es := make([]eventEntry, len(revoked))
		for i, key := range revoked {
			sw.frame(kindVersion, versionKey(key, rev), encodeVersion(&version{tombstone: true}))
			es[i] = eventEntry{sub: int64(i), key: key, del: true}
		}
		sw.frame(kindEvent, eventKey(rev)[1:], encodeEvents(es))
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(rev))
	sw.frame(kindMeta, []byte(metaRev), b[:])
	if compact >= 0 {
		binary.BigEndian.PutUint64(b[:], uint64(compact))
		sw.frame(kindMeta, []byte(metaCompact), b[:])
	}
	if img.Carried != nil {
		if err := img.Carried(frame); err != nil {
			return 0, err
		}
	}
	return rev, sw.finish()
}

func readMetaInt(r pebble.Reader, key []byte, def int64) (int64, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return def, nil
	}
	if err != nil {
		return 0, fmt.Errorf("mvcc: read %q: %w", key, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("mvcc: internal record %q has %d bytes, want 8", key, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

func eachRecord(r pebble.Reader, lo, hi []byte, fn func(k, v []byte) error) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}

// StoreIDs returns the ids of the stores with internal records in r, in
// order: every store of the DB that has applied anything.
func StoreIDs(r pebble.Reader) ([]uint64, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{kindMeta}, UpperBound: []byte{kindMeta + 1}})
	if err != nil {
		return nil, err
	}
	var ids []uint64
	for valid := it.First(); valid; {
		k := it.Key()
		if len(k) < 9 {
			it.Close()
			return nil, fmt.Errorf("mvcc: malformed internal record key %q", k)
		}
		id := binary.BigEndian.Uint64(k[1:9])
		ids = append(ids, id)
		if id == ^uint64(0) {
			break
		}
		valid = it.SeekGE(metaPrefix(id + 1))
	}
	if err := it.Error(); err != nil {
		it.Close()
		return nil, err
	}
	return ids, it.Close()
}

// StoredSpan returns the span store id records in db (a split changed it),
// and false if it records none (its span is the one it was opened with).
func StoredSpan(db pebble.Reader, id uint64) (Span, bool, error) {
	v, closer, err := db.Get(metaKey(id, metaSpan))
	if errors.Is(err, pebble.ErrNotFound) {
		return Span{}, false, nil
	}
	if err != nil {
		return Span{}, false, fmt.Errorf("mvcc: read the span record of store %d: %w", id, err)
	}
	defer closer.Close()
	sp, err := decodeSpan(v)
	return sp, err == nil, err
}
