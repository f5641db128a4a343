package mvcc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"slices"
	"sort"

	"github.com/cockroachdb/pebble/v2"
)

// A snapshot stream holds exactly one store's state: the version records of
// its span, its part of the event log and its internal records. Layout:
//
//	magic | frame* | end frame (kind 0) | crc32 (IEEE, big-endian) of all before
//	frame = kind uvarint(len(key)) key uvarint(len(value)) value
//
// The first frame is a meta frame named metaImageSpan whose value is the
// image's span (encodeSpan); version frames carry the record key as
// stored; event frames the 8-byte revision and only this span's entries;
// meta frames the record name; carried frames a raw key of one of
// Options.Carried, as stored.
//
// Streams written before the span frame existed have none: their span is
// taken to be the restoring store's. The span travels in a meta frame, not
// a frame kind of its own, so that a member still running a version that
// predates it restores the stream (an unknown kind would fail it), at the
// cost of one stray internal record there that nothing reads.
const snapshotMagic = "cairn-mvcc-snapshot-v1\n"

// metaImageSpan names the first frame of a snapshot stream: the image's
// span. It is never stored as a record by this version (a stray one,
// stored by an older version, is never written into a stream).
const metaImageSpan = "image-span"

// kindCarried is the frame kind of a carried record (the other kinds are
// the record kinds of keys.go).
const kindCarried = 'c'

// Snapshot is a point-in-time image of one store, taken between batches.
type Snapshot struct {
	snap    *pebble.Snapshot
	id      uint64
	span    Span
	carried []RawSpan
}

// NewSnapshot pins the store's committed state. Close releases it.
func (s *Store) NewSnapshot() *Snapshot {
	return &Snapshot{snap: s.db.NewSnapshot(), id: s.opts.ID, span: s.Span(), carried: s.opts.Carried}
}

// Close releases the pinned state.
func (sn *Snapshot) Close() error { return sn.snap.Close() }

// Span returns the key span the image holds.
func (sn *Snapshot) Span() Span { return sn.span }

type snapWriter struct {
	w   *bufio.Writer
	crc hash.Hash32
	n   int64
	err error
}

func (sw *snapWriter) write(p []byte) {
	if sw.err != nil {
		return
	}
	sw.crc.Write(p)
	m, err := sw.w.Write(p)
	sw.n += int64(m)
	sw.err = err
}

func (sw *snapWriter) frame(kind byte, key, value []byte) {
	var buf [1 + 2*binary.MaxVarintLen64]byte
	b := append(buf[:0], kind)
	b = binary.AppendUvarint(b, uint64(len(key)))
	sw.write(b)
	sw.write(key)
	sw.write(binary.AppendUvarint(buf[:0], uint64(len(value))))
	sw.write(value)
}

// spanBounds returns the version record bounds of span.
func VersionBounds(span Span) (lo, hi []byte) {
	lo, hi = keyBound(span.Start), versionsEnd
	if span.End != nil {
		hi = keyBound(span.End)
	}
	return lo, hi
}

// WriteTo streams the snapshot.
func (sn *Snapshot) WriteTo(w io.Writer) (int64, error) {
	sw := &snapWriter{w: bufio.NewWriterSize(w, 1<<16), crc: crc32.NewIEEE()}
	sw.write([]byte(snapshotMagic))
	sw.frame(kindMeta, []byte(metaImageSpan), encodeSpan(sn.span))
	lo, hi := VersionBounds(sn.span)
	if err := sn.each(lo, hi, func(k, v []byte) error {
		sw.frame(kindVersion, k, v)
		return sw.err
	}); err != nil {
		return sw.n, err
	}
	if err := sn.each(eventsStart, eventsEnd, func(k, v []byte) error {
		es, err := decodeEvents(v)
		if err != nil {
			return err
		}
		mine := es[:0]
		for _, e := range es {
			if sn.span.Contains(e.key) {
				mine = append(mine, e)
			}
		}
		if len(mine) > 0 {
			sw.frame(kindEvent, k[1:], encodeEvents(mine))
		}
		return sw.err
	}); err != nil {
		return sw.n, err
	}
	mp := metaPrefix(sn.id)
	if err := sn.each(mp, prefixEnd(mp), func(k, v []byte) error {
		if string(k[len(mp):]) != metaImageSpan {
			sw.frame(kindMeta, k[len(mp):], v)
		}
		return sw.err
	}); err != nil {
		return sw.n, err
	}
	for _, c := range sn.carried {
		if err := sn.each(c.Lo, c.Hi, func(k, v []byte) error {
			sw.frame(kindCarried, k, v)
			return sw.err
		}); err != nil {
			return sw.n, err
		}
	}
	return sw.n, sw.finish()
}

// finish ends the stream: the end frame, the checksum, and a flush.
func (sw *snapWriter) finish() error {
	sw.write([]byte{0})
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], sw.crc.Sum32())
	if sw.err == nil {
		_, sw.err = sw.w.Write(sum[:])
		sw.n += 4
	}
	if sw.err == nil {
		sw.err = sw.w.Flush()
	}
	return sw.err
}

func (sn *Snapshot) each(lo, hi []byte, fn func(k, v []byte) error) error {
	return eachRecord(sn.snap, lo, hi, fn)
}

func prefixEnd(p []byte) []byte {
	out := append([]byte(nil), p...)
	for i := len(out) - 1; i >= 0; i-- {
		if out[i] < 0xff {
			out[i]++
			return out[:i+1]
		}
	}
	return nil
}

type snapReader struct {
	r   *bufio.Reader
	crc hash.Hash32
}

func (sr *snapReader) ReadByte() (byte, error) {
	c, err := sr.r.ReadByte()
	if err == nil {
		sr.crc.Write([]byte{c})
	}
	return c, err
}

func (sr *snapReader) bytes() ([]byte, error) {
	n, err := binary.ReadUvarint(sr)
	if err != nil {
		return nil, err
	}
	if n > 1<<31 {
		return nil, fmt.Errorf("mvcc: snapshot frame of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(sr.r, b); err != nil {
		return nil, err
	}
	sr.crc.Write(b)
	return b, nil
}

// ErrBadSnapshot reports a snapshot stream that is corrupt or truncated.
var ErrBadSnapshot = errors.New("mvcc: bad snapshot stream")

// Restore replaces this store's state (its span's versions, its part of the
// event log, its internal records) with a snapshot stream, atomically and
// durably: on any error nothing changed. The image's span may be wider than
// the store's (an image of a range that absorbed another since this
// replica applied anything, docs/plan-merge.md): what is replaced is then
// the union of the two spans, and the store's span is the image's from the
// restore on.
func (s *Store) Restore(r io.Reader) error {
	p, err := s.ReadSnapshot(r)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Apply()
}

// PendingRestore is a snapshot stream read and checked, not yet applied.
// No Batch may commit between ReadSnapshot and Apply. It holds the DB's
// EventLog from its read of the event log (the end of ReadSnapshot) to
// Apply or Close: its rewrite of the records its span shares with other
// stores must not race another rewrite of them.
type PendingRestore struct {
	s *Store
	b *pebble.Batch
	// meta holds the image's internal records of the store, by name.
	meta map[string][]byte
	// held: the EventLog is still held (until Apply or Close).
	held bool
}

// Apply commits the restore, atomically and durably, and reloads the
// store's revisions. Reads racing it see the old state or the new one.
func (p *PendingRestore) Apply() error {
	err := p.b.Commit(pebble.Sync)
	p.release()
	if err != nil {
		return fmt.Errorf("mvcc: restore: %w", err)
	}
	return p.s.load()
}

// Close releases the pending restore (discarding it if not applied).
func (p *PendingRestore) Close() {
	p.release()
	_ = p.b.Close()
}

func (p *PendingRestore) release() {
	if p.held {
		p.held = false
		p.s.opts.EventLog.mu.Unlock()
	}
}

// Meta returns the image's internal record name of the store (ok false:
// the image has none), so that a caller may look at the image before it
// applies it (a shard frozen for a merge keeps its state).
func (p *PendingRestore) Meta(name string) (v []byte, ok bool) {
	v, ok = p.meta[name]
	return v, ok
}

// ReadSnapshot reads and verifies a snapshot stream into a pending restore
// without changing the store, so reads keep being served while it streams.
func (s *Store) ReadSnapshot(r io.Reader) (*PendingRestore, error) {
	meta := map[string][]byte{}
	b, err := s.readSnapshot(r, meta)
	if err != nil {
		return nil, err
	}
	return &PendingRestore{s: s, b: b, meta: meta, held: true}, nil
}

func (s *Store) readSnapshot(r io.Reader, meta map[string][]byte) (_ *pebble.Batch, err error) {
	sr := &snapReader{r: bufio.NewReaderSize(r, 1<<16), crc: crc32.NewIEEE()}
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(sr.r, magic); err != nil || string(magic) != snapshotMagic {
		return nil, fmt.Errorf("%w: no header", ErrBadSnapshot)
	}
	sr.crc.Write(magic)

	b := s.db.NewBatch()
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	local := s.Span()
	lo, hi := VersionBounds(local)
	mp := metaPrefix(s.opts.ID)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return nil, err
	}
	if err := b.DeleteRange(mp, prefixEnd(mp), nil); err != nil {
		return nil, err
	}
	for _, c := range s.opts.Carried {
		if err := b.DeleteRange(c.Lo, c.Hi, nil); err != nil {
			return nil, err
		}
	}
	// image is the span the stream holds: its first frame's, or for a
	// stream without one (an older writer's) the local span. Version
	// records must lie in it.
	image := local
	incoming := make(map[Revision][]eventEntry)
	for first := true; ; first = false {
		kind, err := sr.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
		}
		if kind == 0 {
			break
		}
		k, err := sr.bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
		}
		v, err := sr.bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
		}
		switch kind {
		case kindVersion:
			if bytes.Compare(k, lo) < 0 || bytes.Compare(k, hi) >= 0 {
				return nil, fmt.Errorf("%w: version record outside the span", ErrBadSnapshot)
			}
			if err := b.Set(k, v, nil); err != nil {
				return nil, err
			}
		case kindEvent:
			if len(k) != 8 {
				return nil, fmt.Errorf("%w: event key of %d bytes", ErrBadSnapshot, len(k))
			}
			es, err := decodeEvents(v)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
			}
			incoming[Revision(binary.BigEndian.Uint64(k))] = es
		case kindMeta:
			if string(k) == metaImageSpan {
				if !first {
					continue // a stray record an older version stored and streamed
				}
				if image, err = decodeSpan(v); err != nil {
					return nil, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
				}
				// Versions of the image's span are replaced too, where it
				// reaches beyond the local span.
				lo, hi = VersionBounds(image)
				if err := b.DeleteRange(lo, hi, nil); err != nil {
					return nil, err
				}
				continue
			}
			if err := b.Set(append(append([]byte(nil), mp...), k...), v, nil); err != nil {
				return nil, err
			}
			meta[string(k)] = v
		case kindCarried:
			if !s.carries(k) {
				return nil, fmt.Errorf("%w: carried record outside the carried spans", ErrBadSnapshot)
			}
			if err := b.Set(k, v, nil); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%w: frame kind %d", ErrBadSnapshot, kind)
		}
	}
	want := sr.crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(sr.r, sum[:]); err != nil || binary.BigEndian.Uint32(sum[:]) != want {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadSnapshot)
	}
	// Held until the pending restore is applied or closed (on success).
	s.opts.EventLog.mu.Lock()
	if err := s.mergeEvents(b, incoming, local, image); err != nil {
		s.opts.EventLog.mu.Unlock()
		return nil, err
	}
	return b, nil
}

// mergeEvents replaces the entries of keys in spans in the event log with
// incoming, keeping other stores' entries at the same revisions.
// REQUIRES: s.opts.EventLog held, until b commits.
func (s *Store) mergeEvents(b *pebble.Batch, incoming map[Revision][]eventEntry, spans ...Span) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventsStart, UpperBound: eventsEnd})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		rev, err := decodeEventKey(it.Key())
		if err != nil {
			it.Close()
			return err
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		es, err := decodeEvents(v)
		if err != nil {
			it.Close()
			return err
		}
		var rest []eventEntry
		for _, e := range es {
			if !slices.ContainsFunc(spans, func(sp Span) bool { return sp.Contains(e.key) }) {
				rest = append(rest, e)
			}
		}
		add, ok := incoming[rev]
		if len(rest) == len(es) && !ok {
			continue
		}
		delete(incoming, rev)
		rest = append(rest, add...)
		sort.SliceStable(rest, func(i, j int) bool { return rest[i].sub < rest[j].sub })
		if len(rest) == 0 {
			err = b.Delete(eventKey(rev), nil)
		} else {
			err = b.Set(eventKey(rev), encodeEvents(rest), nil)
		}
		if err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	for rev, es := range incoming {
		if err := b.Set(eventKey(rev), encodeEvents(es), nil); err != nil {
			return err
		}
	}
	return nil
}

// carries reports whether raw key k lies in one of Options.Carried.
func (s *Store) carries(k []byte) bool {
	for _, c := range s.opts.Carried {
		if bytes.Compare(k, c.Lo) >= 0 && bytes.Compare(k, c.Hi) < 0 {
			return true
		}
	}
	return false
}

// Rev returns the store's revision in the pinned state.
func (sn *Snapshot) Rev() (Revision, error) {
	v, closer, err := sn.snap.Get(metaKey(sn.id, metaRev))
	if errors.Is(err, pebble.ErrNotFound) {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("mvcc: read revision: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("mvcc: revision record has %d bytes", len(v))
	}
	return Revision(binary.BigEndian.Uint64(v)), nil
}
