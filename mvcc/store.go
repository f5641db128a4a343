package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Revision is a store revision: every write transaction that changes
// something gets one, and reads can ask for any revision not compacted.
type Revision int64

// Span is the range of user keys a store owns: [Start, End). A nil End is
// unbounded; the zero Span is the whole key space.
type Span struct{ Start, End []byte }

// Contains reports whether key lies in the span.
func (s Span) Contains(key []byte) bool {
	return bytes.Compare(key, s.Start) >= 0 && (s.End == nil || bytes.Compare(key, s.End) < 0)
}

// LeaseChecker tells the store whether a lease exists; the lessor above
// implements it (the store never imports it).
type LeaseChecker interface{ LeaseExists(id int64) bool }

// Options configure a Store.
type Options struct {
	// ID namespaces the store's internal records (the shard id).
	ID uint64
	// Span is the range of user keys the store owns.
	Span Span
	// Leases answers lease lookups for puts; nil means no lease exists.
	Leases LeaseChecker
	// Carried are raw pebble key ranges that other parts of the shard own
	// (the lessor's records): snapshots carry them verbatim and a restore
	// replaces them, so they move with the store's data.
	Carried []RawSpan
	// EventLog is the lock over the DB's event log (NewEventLog), the same
	// for every store of the DB; nil: a lock of this store's own, enough
	// only while no other store of the DB restores, compacts or is swept
	// concurrently with it.
	EventLog *EventLog
}

// RawSpan is a range [Lo, Hi) of raw pebble keys.
type RawSpan struct{ Lo, Hi []byte }

// Internal record names.
const (
	metaRev     = "rev"     // the current revision
	metaCompact = "compact" // the compacted revision
	metaSpan    = "span"    // the span, once a split changed it (encodeSpan)
)

// Store is the multi-version store of one key range. See doc.go.
//
// Reads (Range, ReadTxn, GetMeta) may run concurrently with each other and
// with one Batch; writes go through one Batch at a time.
type Store struct {
	db   *pebble.DB
	opts Options

	// rev and compact are published by Batch.Commit: compact before the
	// pebble commit (so a reader that sees compacted data sees the new
	// compact revision), rev after it (so a reader never asks for a revision
	// whose data is not visible yet).
	// Invariant: compact <= rev. compact is -1 until the first compaction.
	rev     atomic.Int64
	compact atomic.Int64
	// span is the key range the store owns: Options.Span, or the one a
	// split recorded (metaSpan), replaced by Batch.Commit after a split.
	span atomic.Pointer[Span]
	// resized: the store has a span record (a split or a merge changed its
	// span, here or in the store a snapshot restored), so it never counts
	// its revisions itself (Resized).
	resized atomic.Bool
}

// Open loads the store of opts.ID from db. A new store is at revision 1,
// like a new etcd, so the first write gets revision 2.
func Open(db *pebble.DB, opts Options) (*Store, error) {
	if err := checkComparer(db); err != nil {
		return nil, err
	}
	if opts.EventLog == nil {
		opts.EventLog = NewEventLog(db)
	} else if opts.EventLog.db != db {
		return nil, fmt.Errorf("mvcc: store %d opened with another DB's event log lock", opts.ID)
	}
	s := &Store{db: db, opts: opts}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) load() error {
	rev, err := s.metaInt(metaRev, 1)
	if err != nil {
		return err
	}
	compact, err := s.metaInt(metaCompact, -1)
	if err != nil {
		return err
	}
	s.rev.Store(rev)
	s.compact.Store(compact)
	sp := s.opts.Span
	v, err := s.GetMeta(metaSpan)
	if err != nil {
		return err
	} else if v != nil {
		if sp, err = decodeSpan(v); err != nil {
			return err
		}
	}
	s.span.Store(&sp)
	s.resized.Store(v != nil)
	return nil
}

// SplitHere reports whether a split applied in db made store id: whether
// its span record, which Batch.SplitOff writes, is there.
func SplitHere(db *pebble.DB, id uint64) (bool, error) {
	_, closer, err := db.Get(metaKey(id, metaSpan))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mvcc: read the span record of store %d: %w", id, err)
	}
	return true, closer.Close()
}

// encodeSpan encodes a span: uvarint(len(start)) start, then 1 end or 0
// for no end.
func encodeSpan(sp Span) []byte {
	out := binary.AppendUvarint(nil, uint64(len(sp.Start)))
	out = append(out, sp.Start...)
	if sp.End == nil {
		return append(out, 0)
	}
	return append(append(out, 1), sp.End...)
}

func decodeSpan(v []byte) (Span, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || uint64(len(v)-k) < n+1 {
		return Span{}, fmt.Errorf("mvcc: corrupt span record %x", v)
	}
	sp := Span{Start: append([]byte{}, v[k:k+int(n)]...)}
	rest := v[k+int(n):]
	switch rest[0] {
	case 0:
		if len(rest) != 1 {
			return Span{}, fmt.Errorf("mvcc: corrupt span record %x", v)
		}
	case 1:
		sp.End = append([]byte{}, rest[1:]...)
	default:
		return Span{}, fmt.Errorf("mvcc: corrupt span record %x", v)
	}
	return sp, nil
}

func (s *Store) metaInt(name string, def int64) (int64, error) {
	v, err := s.GetMeta(name)
	if err != nil || v == nil {
		return def, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("mvcc: internal record %q has %d bytes, want 8", name, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// Rev returns the current revision.
func (s *Store) Rev() Revision { return Revision(s.rev.Load()) }

// CompactRev returns the compacted revision, -1 if never compacted.
func (s *Store) CompactRev() Revision { return Revision(s.compact.Load()) }

// Span returns the store's key range.
func (s *Store) Span() Span { return *s.span.Load() }

// Resized reports whether the store's span was ever changed by a split
// (Batch.SplitOff, in it or in the store it split off from) or a merge
// (Batch.Absorb): whether it has a span record. Such a store takes its
// revisions from the caller (stamps), even once its span is the whole key
// space again: only a store that has always been the whole key space
// counts its own revisions.
func (s *Store) Resized() bool { return s.resized.Load() }

// GetMeta returns the internal record name of this store, nil if absent.
func (s *Store) GetMeta(name string) ([]byte, error) {
	v, closer, err := s.db.Get(metaKey(s.opts.ID, name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mvcc: read internal record %q: %w", name, err)
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// ScanMeta calls fn with every committed internal record of this store
// whose name starts with prefix, in name order.
func (s *Store) ScanMeta(prefix string, fn func(name string, value []byte)) error {
	lo := metaKey(s.opts.ID, prefix)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return fmt.Errorf("mvcc: new iterator: %w", err)
	}
	defer it.Close()
	mp := len(metaPrefix(s.opts.ID))
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("mvcc: read internal records %q: %w", prefix, err)
		}
		fn(string(it.Key()[mp:]), v)
	}
	return it.Error()
}

// reader is what views read from: the DB, a snapshot or an indexed batch.
type reader interface {
	NewIter(*pebble.IterOptions) (*pebble.Iterator, error)
}

// view is a point-in-time read of the store: cur is the revision reads
// default to (and report in headers), compact the compacted revision.
type view struct {
	it      *pebble.Iterator
	cur     Revision
	compact Revision
	span    Span
}

func newView(r reader, cur, compact Revision, span Span) (*view, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: versionsStart, UpperBound: versionsEnd})
	if err != nil {
		return nil, fmt.Errorf("mvcc: new iterator: %w", err)
	}
	return &view{it: it, cur: cur, compact: compact, span: span}, nil
}

func (v *view) close() { _ = v.it.Close() }

// readView returns a view of the committed store whose current revision
// is the store's, or floor if that is higher (see RangeAt).
func (s *Store) readView(floor Revision) (*view, error) {
	cur := max(s.Rev(), floor)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: versionsStart, UpperBound: versionsEnd})
	if err != nil {
		return nil, fmt.Errorf("mvcc: new iterator: %w", err)
	}
	// Loaded after the iterator exists: if the iterator misses versions a
	// compaction removed, this load sees that compaction's revision.
	return &view{it: it, cur: cur, compact: s.CompactRev(), span: s.Span()}, nil
}

// get returns key's newest version at or below at, or nil if there is none
// or it is a tombstone.
func (v *view) get(key []byte, at Revision) (*version, error) {
	p := keyPrefix(key)
	// A prefix seek: the bloom filters skip every table without the key.
	if !v.it.SeekPrefixGE(binary.BigEndian.AppendUint64(append([]byte(nil), p...), ^uint64(at))) {
		return nil, v.it.Error()
	}
	k := v.it.Key()
	if !bytes.HasPrefix(k, p) || len(k) != len(p)+8 {
		return nil, nil
	}
	rev := Revision(^binary.BigEndian.Uint64(k[len(p):]))
	val, err := v.it.ValueAndErr()
	if err != nil {
		return nil, err
	}
	ver, err := decodeVersion(append([]byte(nil), key...), rev, val)
	if err != nil || ver.tombstone {
		return nil, err
	}
	return ver, nil
}

// scan calls fn with the live version at revision at of every key in
// [start, end) in key order (end empty: no upper bound), until fn returns
// false.
func (v *view) scan(start, end []byte, at Revision, fn func(*version) bool) error {
	var upper []byte
	if len(end) > 0 {
		upper = keyBound(end)
	}
	seek := keyBound(start)
	for v.it.SeekGE(seek) {
		k := v.it.Key()
		if upper != nil && bytes.Compare(k, upper) >= 0 {
			return nil
		}
		prefix, key, rev, err := decodeVersionKey(k)
		if err != nil {
			return err
		}
		if rev > at {
			// Newer than asked for: jump to the newest version at or below at.
			seek = binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), ^uint64(at))
			if bytes.Compare(seek, k) <= 0 { // at is negative: no version qualifies
				seek = nextKeyBound(prefix)
			}
			continue
		}
		val, err := v.it.ValueAndErr()
		if err != nil {
			return err
		}
		ver, err := decodeVersion(key, rev, val)
		if err != nil {
			return err
		}
		if !ver.tombstone && !fn(ver) {
			return nil
		}
		seek = nextKeyBound(prefix)
	}
	return v.it.Error()
}

// mkGteRange turns etcd's "\x00" range end (all keys from key on) into an
// empty, unbounded end, as etcd does.
func mkGteRange(end []byte) []byte {
	if len(end) == 1 && end[0] == 0 {
		return []byte{}
	}
	return end
}

// checkSpan refuses a key range that is not inside the store's span.
func (v *view) checkSpan(key, end []byte) error {
	if !v.span.Contains(key) {
		return ErrOutsideSpan
	}
	if end == nil || v.span.End == nil {
		return nil
	}
	if len(end) == 0 || bytes.Compare(end, v.span.End) > 0 {
		return ErrOutsideSpan
	}
	return nil
}

// rangeResult is what the store returns to the range logic above it, as
// etcd's mvcc.RangeResult.
type rangeResult struct {
	kvs   []*mvccpb.KeyValue
	count int
	rev   Revision
}

// rangeKeys reads the live keys of [key, end) at ro.rev (0: current), up
// to limit (<= 0: all) while counting all of them, as etcd's rangeKeys.
func (v *view) rangeKeys(key, end []byte, rev Revision, limit int64, countOnly bool) (*rangeResult, error) {
	if rev > v.cur {
		return nil, ErrFutureRev
	}
	if rev <= 0 {
		rev = v.cur
	}
	if rev < v.compact {
		return nil, ErrCompacted
	}
	if err := v.checkSpan(key, end); err != nil {
		return nil, err
	}
	res := &rangeResult{rev: v.cur}
	if end == nil {
		ver, err := v.get(key, rev)
		if err != nil || ver == nil {
			return res, err
		}
		res.count = 1
		if !countOnly {
			res.kvs = []*mvccpb.KeyValue{ver.kv()}
		}
		return res, nil
	}
	err := v.scan(key, end, rev, func(ver *version) bool {
		res.count++
		if !countOnly && (limit <= 0 || int64(len(res.kvs)) < limit) {
			res.kvs = append(res.kvs, ver.kv())
		}
		return true
	})
	return res, err
}

func (ver *version) kv() *mvccpb.KeyValue {
	return &mvccpb.KeyValue{
		Key:            ver.key,
		CreateRevision: int64(ver.create),
		ModRevision:    int64(ver.mod),
		Version:        ver.ver,
		Value:          ver.value,
		Lease:          ver.lease,
	}
}

// Range serves a RangeRequest from the committed store. The header's
// revision is the current revision, whatever revision was read, as in etcd.
func (s *Store) Range(r *pb.RangeRequest) (*pb.RangeResponse, error) { return s.RangeAt(r, 0) }

// RangeAt is Range with the current revision raised to floor: in sharded
// mode a shard's current revision is the higher of its last write and its
// closed revision (no write at or below it is still to come), so a read at
// any revision up to floor is a read of a settled past.
func (s *Store) RangeAt(r *pb.RangeRequest, floor Revision) (*pb.RangeResponse, error) {
	v, err := s.readView(floor)
	if err != nil {
		return nil, err
	}
	defer v.close()
	return v.executeRange(r)
}

// executeRange is etcd's Range evaluation: fetch (limit+1 when the order is
// the store's own and there are no filters), filter, sort, cut to limit.
func (v *view) executeRange(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	rr, err := v.rangeKeys(r.Key, mkGteRange(r.RangeEnd), Revision(r.Revision), rangeLimit(r), r.CountOnly)
	if err != nil {
		return nil, err
	}
	filterRange(rr, r)
	sortRange(rr, r)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: int64(rr.rev)}, Count: int64(rr.count)}
	if r.Limit > 0 && len(rr.kvs) > int(r.Limit) {
		rr.kvs = rr.kvs[:r.Limit]
		resp.More = true
	}
	resp.Kvs = make([]*mvccpb.KeyValue, len(rr.kvs))
	for i, kv := range rr.kvs {
		if r.KeysOnly {
			kv.Value = nil
		}
		resp.Kvs[i] = kv
	}
	return resp, nil
}

// ReadTxn serves, from the committed store, a Txn whose compares choose a
// branch that only reads (every op a Range): as etcd, it takes no revision,
// whatever the branch not taken would have written. A txn whose chosen
// branch writes (or nests a txn) is ErrNotReadOnly.
func (s *Store) ReadTxn(r *pb.TxnRequest) (*pb.TxnResponse, error) { return s.ReadTxnAt(r, 0) }

// ReadTxnAt is ReadTxn with the current revision raised to floor (see RangeAt).
func (s *Store) ReadTxnAt(r *pb.TxnRequest, floor Revision) (*pb.TxnResponse, error) {
	v, err := s.readView(floor)
	if err != nil {
		return nil, err
	}
	defer v.close()
	path, err := compareToPath(v, r)
	if err != nil {
		return nil, err
	}
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	for _, op := range ops {
		if op.GetRequestRange() == nil {
			return nil, ErrNotReadOnly
		}
	}
	if err := checkTxn(v, r, path, nil); err != nil {
		return nil, err
	}
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: int64(v.cur)}, Succeeded: path[0], Responses: make([]*pb.ResponseOp, len(ops))}
	for i, op := range ops {
		rr, err := v.executeRange(op.GetRequestRange())
		if err != nil {
			return nil, err
		}
		resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
	}
	return resp, nil
}
