package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Batch applies writes to the store as one pebble batch. Reads inside the
// batch see its earlier writes; nothing is visible to Store reads until
// Commit. One Batch at a time per Store (the caller serialises).
//
// Every write op takes a stamp: 0 assigns the next revision (current + 1,
// as etcd does); a non-zero stamp must exceed the current revision (else
// ErrStaleStamp) and becomes the op's revision. An op that changes nothing
// (a delete of nothing, a txn whose branch only reads) takes no revision.
// An op that returns an error other than a storage failure changed nothing.
type Batch struct {
	s *Store
	b *pebble.Batch

	rev     Revision // the current revision including this batch's writes
	closed  Revision // see SetClosed
	compact Revision
	dirty   bool // rev or compact changed
	// newSpan is the span after a split or a merge in this batch (nil:
	// none).
	newSpan *Span
	events  []*mvccpb.Event
	// logHeld: the batch holds the store's EventLog, from its first read
	// of event records to rewrite (Compact) to Commit or Close.
	logHeld bool
}

// NewBatch starts a batch on the current revision.
func (s *Store) NewBatch() *Batch {
	return &Batch{s: s, b: s.db.NewIndexedBatch(), rev: s.Rev(), compact: s.CompactRev()}
}

// SetClosed tells the batch that no write at or below closed is still to
// come (the shard's closed revision in sharded mode), so that a compaction
// may reach it though no write of this store is that recent.
func (b *Batch) SetClosed(closed Revision) { b.closed = max(b.closed, closed) }

// SetMeta writes the internal record name of this store.
func (b *Batch) SetMeta(name string, value []byte) {
	_ = b.b.Set(metaKey(b.s.opts.ID, name), value, nil)
}

// GetMeta returns the internal record name as this batch sees it (its own
// writes included), and whether it exists.
func (b *Batch) GetMeta(name string) ([]byte, bool, error) {
	v, closer, err := b.b.Get(metaKey(b.s.opts.ID, name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("mvcc: read internal record %q: %w", name, err)
	}
	defer closer.Close()
	return append([]byte(nil), v...), true, nil
}

// DeleteMeta deletes the internal record name of this store.
func (b *Batch) DeleteMeta(name string) {
	_ = b.b.Delete(metaKey(b.s.opts.ID, name), nil)
}

// TakeEvents returns the change events of the writes since the last call, in
// revision order and, within a revision, in write order. A PUT carries the
// whole key-value, a DELETE the key and the deleting revision; PrevKv is
// set whenever the key had a live version before.
func (b *Batch) TakeEvents() []*mvccpb.Event {
	ev := b.events
	b.events = nil
	return ev
}

// span is the store's span as of this batch (a split in it shrinks it, a
// merge grows it).
func (b *Batch) span() Span {
	if b.newSpan != nil {
		return *b.newSpan
	}
	return b.s.Span()
}

// SplitOff gives the keys of the store's span from key on to a new store,
// child, at this batch's revision: the child's records (revision,
// compaction, span) are written here, and this store's span ends at key
// from Commit on. The data stays where it is — versions and the event log
// are keyed by user key and revision, not by store — so the child sees its
// keys' history as this store had it. key must lie strictly inside the
// span; the returned span is the child's.
func (b *Batch) SplitOff(key []byte, child uint64) (Span, error) {
	sp := b.span()
	if bytes.Compare(key, sp.Start) <= 0 || (sp.End != nil && bytes.Compare(key, sp.End) >= 0) {
		return Span{}, fmt.Errorf("%w: split key %q is not inside [%q, %q)", ErrOutsideSpan, key, sp.Start, sp.End)
	}
	if child == b.s.opts.ID {
		return Span{}, fmt.Errorf("mvcc: a store cannot split off into itself (%d)", child)
	}
	right := Span{Start: append([]byte{}, key...), End: sp.End}
	left := Span{Start: sp.Start, End: append([]byte{}, key...)}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(b.rev))
	b.SetMetaFor(child, metaRev, v[:])
	binary.BigEndian.PutUint64(v[:], uint64(b.compact))
	b.SetMetaFor(child, metaCompact, v[:])
	b.SetMetaFor(child, metaSpan, encodeSpan(right))
	b.SetMeta(metaSpan, encodeSpan(left))
	b.newSpan = &left
	return right, nil
}

// SetMetaFor writes internal record name of another store (a split's
// child) in this batch.
func (b *Batch) SetMetaFor(store uint64, name string, value []byte) {
	_ = b.b.Set(metaKey(store, name), value, nil)
}

// Commit makes the batch durable in pebble's WAL (without fsync: the raft
// log is the durable record until the caller syncs) and visible to reads.
func (b *Batch) Commit() error {
	if b.dirty {
		b.setMetaInt(metaRev, int64(b.rev))
		b.setMetaInt(metaCompact, int64(b.compact))
	}
	if b.compact != b.s.CompactRev() {
		b.s.compact.Store(int64(b.compact))
	}
	err := b.b.Commit(pebble.NoSync)
	b.releaseLog()
	if err != nil {
		return fmt.Errorf("mvcc: commit: %w", err)
	}
	if b.newSpan != nil {
		b.s.span.Store(b.newSpan)
		b.s.resized.Store(true)
	}
	b.s.rev.Store(int64(b.rev))
	return nil
}

// Rev returns the current revision, including this batch's writes.
func (b *Batch) Rev() Revision { return b.rev }

// Pebble returns the underlying indexed pebble batch, for the shard's
// other records (the lessor's) to commit atomically with the store's
// writes. Writes into it must stay out of the store's key space.
func (b *Batch) Pebble() *pebble.Batch { return b.b }

// Close releases the batch, discarding it if it was not committed.
func (b *Batch) Close() {
	b.releaseLog()
	_ = b.b.Close()
}

// holdLog takes the store's EventLog until Commit or Close, if the batch
// does not hold it yet.
func (b *Batch) holdLog() {
	if !b.logHeld {
		b.s.opts.EventLog.mu.Lock()
		b.logHeld = true
	}
}

func (b *Batch) releaseLog() {
	if b.logHeld {
		b.logHeld = false
		b.s.opts.EventLog.mu.Unlock()
	}
}

func (b *Batch) setMetaInt(name string, v int64) {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(v))
	b.SetMeta(name, buf[:])
}

// op is one write transaction in the batch: all its writes share rev.
type op struct {
	b       *Batch
	begin   Revision // the revision before the op
	rev     Revision // the revision its writes get
	stamped bool     // rev is a stamp the caller gave (Batch.Put and co. with stamp ≠ 0)
	// late: a transaction's commit (CommitAt), whose rev may lie at or
	// below begin and whose event record merges with other stores'.
	late    bool
	changes []eventEntry
}

// CheckStamp returns ErrStaleStamp if a write stamped stamp would be
// refused now, and changes nothing: for callers that must refuse before
// touching state the batch does not hold (a lease revoke).
func (b *Batch) CheckStamp(stamp Revision) error {
	_, err := b.begin(stamp)
	return err
}

func (b *Batch) begin(stamp Revision) (*op, error) {
	o := &op{b: b, begin: b.rev, rev: b.rev + 1}
	if stamp != 0 {
		if stamp <= b.rev {
			return nil, fmt.Errorf("%w: stamp %d, current revision %d", ErrStaleStamp, stamp, b.rev)
		}
		o.rev, o.stamped = stamp, true
	}
	return o, nil
}

// cur is the revision reads inside the op see (and report): its own writes
// once it has made any.
func (o *op) cur() Revision {
	if len(o.changes) > 0 {
		return max(o.begin, o.rev) // a late op's rev may be below begin
	}
	return o.begin
}

// reported is the revision the op's response header carries: cur, except
// that a stamped op that changed nothing reports its stamp — a revision
// taken after the request began, so at or above every write that completed
// before it in any range (DESIGN.md "Reads"), and one this range's history
// is settled at (no stamp below it applies here after it).
func (o *op) reported() Revision {
	if len(o.changes) == 0 && o.stamped {
		return max(o.begin, o.rev)
	}
	return o.cur()
}

func (o *op) view() (*view, error) {
	// Reads may reach the closed revision (see SetClosed), below the op's
	// own stamp.
	return newView(o.b.b, max(o.cur(), o.b.closed), o.b.compact, o.b.span())
}

// end writes the op's event log record and advances the batch's revision
// if the op changed anything.
func (o *op) end() error {
	if len(o.changes) == 0 {
		return nil
	}
	if o.late {
		return o.endLate()
	}
	if err := o.b.b.Set(eventKey(o.rev), encodeEvents(o.changes), nil); err != nil {
		return err
	}
	o.b.rev = o.rev
	o.b.dirty = true
	return nil
}

// put writes key at the op's revision, continuing prev's generation (prev
// is the key's live version, nil if none).
func (o *op) put(prev *version, key, value []byte, lease int64) error {
	nv := &version{key: key, mod: o.rev, create: o.rev, ver: 1, lease: lease, value: value}
	if prev != nil {
		nv.create, nv.ver = prev.create, prev.ver+1
	}
	if err := o.b.b.Set(versionKey(key, o.rev), encodeVersion(nv), nil); err != nil {
		return err
	}
	ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: nv.kv()}
	if prev != nil {
		ev.PrevKv = prev.kv()
	}
	o.record(key, ev)
	return nil
}

func (o *op) record(key []byte, ev *mvccpb.Event) {
	o.changes = append(o.changes, eventEntry{sub: int64(len(o.changes)), key: key, del: ev.Type == mvccpb.DELETE})
	o.b.events = append(o.b.events, ev)
}

// deleteRange writes a tombstone for every live key of [key, end).
func (o *op) deleteRange(v *view, key, end []byte) (int64, error) {
	rr, err := v.rangeKeys(key, end, 0, 0, false)
	if err != nil {
		return 0, err
	}
	for _, kv := range rr.kvs {
		if err := o.b.b.Set(versionKey(kv.Key, o.rev), []byte{tagTombstone}, nil); err != nil {
			return 0, err
		}
		o.record(kv.Key, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: int64(o.rev)}, PrevKv: kv})
	}
	return int64(len(rr.kvs)), nil
}

// Put is etcd's Put: ignore_value and ignore_lease keep the previous
// value or lease (the key must exist), prev_kv returns the previous version.
func (b *Batch) Put(r *pb.PutRequest, stamp Revision) (resp *pb.PutResponse, err error) {
	if err := ValidatePut(r); err != nil {
		return nil, err
	}
	err = b.run(stamp, func(o *op, v *view) error {
		if err := v.checkSpan(r.Key, nil); err != nil {
			return err
		}
		if err := checkPut(v, r, b.s.opts.Leases); err != nil {
			return err
		}
		resp, err = o.execPut(v, r)
		return err
	})
	return resp, err
}

// run runs one write op: the stamp check, a view of the batch, fn, then
// the op's event record and revision.
func (b *Batch) run(stamp Revision, fn func(o *op, v *view) error) error {
	o, err := b.begin(stamp)
	if err != nil {
		return err
	}
	v, err := o.view()
	if err != nil {
		return err
	}
	defer v.close()
	if err := fn(o, v); err != nil {
		return err
	}
	return o.end()
}

func (o *op) execPut(v *view, r *pb.PutRequest) (*pb.PutResponse, error) {
	prev, err := v.get(r.Key, v.cur)
	if err != nil {
		return nil, err
	}
	value, lease := r.Value, r.Lease
	if r.IgnoreValue && prev != nil {
		value = prev.value
	}
	if r.IgnoreLease && prev != nil {
		lease = prev.lease
	}
	if err := o.put(prev, r.Key, value, lease); err != nil {
		return nil, err
	}
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: int64(o.rev)}}
	if r.PrevKv && prev != nil {
		resp.PrevKv = prev.kv()
	}
	return resp, nil
}

// DeleteRange is etcd's DeleteRange.
func (b *Batch) DeleteRange(r *pb.DeleteRangeRequest, stamp Revision) (resp *pb.DeleteRangeResponse, err error) {
	if err := ValidateDeleteRange(r); err != nil {
		return nil, err
	}
	err = b.run(stamp, func(o *op, v *view) error {
		if err := v.checkSpan(r.Key, mkGteRange(r.RangeEnd)); err != nil {
			return err
		}
		resp, err = o.execDelete(v, r)
		return err
	})
	return resp, err
}

func (o *op) execDelete(v *view, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	end := mkGteRange(r.RangeEnd)
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{}}
	if r.PrevKv {
		rr, err := v.rangeKeys(r.Key, end, 0, 0, false)
		if err != nil {
			return nil, err
		}
		resp.PrevKvs = rr.kvs
	}
	n, err := o.deleteRange(v, r.Key, end)
	if err != nil {
		return nil, err
	}
	resp.Deleted = n
	resp.Header.Revision = int64(o.reported())
	return resp, nil
}

// DeleteKeys deletes every live key of keys in one write transaction (one
// revision, with a DELETE event each), as a lease revoke does, and returns
// how many it deleted and the revision after the op. Keys that are not live
// are skipped; if none is, nothing changes and no revision is taken.
func (b *Batch) DeleteKeys(keys [][]byte, stamp Revision) (deleted int64, rev Revision, err error) {
	err = b.run(stamp, func(o *op, v *view) error {
		for _, k := range keys {
			if !v.span.Contains(k) {
				continue
			}
			prev, err := v.get(k, v.cur)
			if err != nil {
				return err
			}
			if prev == nil {
				continue
			}
			if err := o.b.b.Set(versionKey(k, o.rev), []byte{tagTombstone}, nil); err != nil {
				return err
			}
			o.record(k, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: k, ModRevision: int64(o.rev)}, PrevKv: prev.kv()})
			deleted++
		}
		return nil
	})
	return deleted, b.rev, err
}

// Txn is etcd's Txn: compares (nested ones included) and the pre-write
// checks run against the state before the txn; then the taken branches run
// in order, each op seeing the earlier ones' writes, all at one revision.
func (b *Batch) Txn(r *pb.TxnRequest, stamp Revision) (*pb.TxnResponse, error) {
	if err := ValidateTxn(r, 0); err != nil {
		return nil, err
	}
	o, err := b.begin(stamp)
	if err != nil {
		return nil, err
	}
	v, err := o.view()
	if err != nil {
		return nil, err
	}
	path, err := compareToPath(v, r)
	if err == nil {
		err = checkTxn(v, r, path, b.s.opts.Leases)
	}
	if err == nil {
		err = checkTxnSpan(v, r, path)
	}
	v.close()
	if err != nil {
		return nil, err
	}
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
	if _, err := o.execTxn(r, path, resp); err != nil {
		return nil, err
	}
	resp.Header.Revision = int64(o.reported())
	return resp, o.end()
}

// checkTxnSpan refuses a txn whose taken branches touch keys outside the
// span, before anything is written.
func checkTxnSpan(v *view, r *pb.TxnRequest, path []bool) error {
	var err error
	eachTakenOp(r, path, func(op *pb.RequestOp) bool {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			err = v.checkSpan(o.RequestRange.Key, mkGteRange(o.RequestRange.RangeEnd))
		case *pb.RequestOp_RequestPut:
			err = v.checkSpan(o.RequestPut.Key, nil)
		case *pb.RequestOp_RequestDeleteRange:
			err = v.checkSpan(o.RequestDeleteRange.Key, mkGteRange(o.RequestDeleteRange.RangeEnd))
		}
		return err == nil
	})
	return err
}

func (o *op) execTxn(r *pb.TxnRequest, path []bool, resp *pb.TxnResponse) (int, error) {
	n := 0
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	resp.Succeeded = path[0]
	resp.Responses = make([]*pb.ResponseOp, len(ops))
	for i, req := range ops {
		v, err := o.view()
		if err != nil {
			return 0, err
		}
		var out *pb.ResponseOp
		switch q := req.Request.(type) {
		case *pb.RequestOp_RequestRange:
			var rr *pb.RangeResponse
			rr, err = v.executeRange(q.RequestRange)
			out = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestPut:
			var pr *pb.PutResponse
			pr, err = o.execPut(v, q.RequestPut)
			out = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}}
		case *pb.RequestOp_RequestDeleteRange:
			var dr *pb.DeleteRangeResponse
			dr, err = o.execDelete(v, q.RequestDeleteRange)
			out = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}}
		case *pb.RequestOp_RequestTxn:
			sub := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
			var k int
			k, err = o.execTxn(q.RequestTxn, path[1:], sub)
			// etcd leaves a nested txn's header empty.
			n += k + 1
			path = path[k+1:]
			out = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}}
		}
		v.close()
		if err != nil {
			return 0, err
		}
		resp.Responses[i] = out
	}
	return n, nil
}

// Compact drops every version no read at or above rev can see: per key,
// all but the newest version at or below rev, and that one too if it is a
// tombstone. It takes no revision. The keys to visit come from the event
// log of (previous compact revision, rev], which is dropped up to rev.
// From its read of the event log on, the batch holds the DB's EventLog
// until it is committed or closed.
func (b *Batch) Compact(rev Revision) (*pb.CompactionResponse, error) {
	if rev <= b.compact {
		return nil, ErrCompacted
	}
	if rev > max(b.rev, b.closed) {
		return nil, ErrFutureRev
	}
	// The record at exactly rev stays, so a watch may still start at rev.
	if err := b.compactWindow(b.span(), max(b.compact, 0), rev); err != nil {
		return nil, err
	}
	b.compact = rev
	b.dirty = true
	return &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: int64(max(b.rev, b.closed))}}, nil
}

// compactWindow compacts, at rev, the keys of sp written in the event log
// records of [from, rev]: their versions that no read at or above rev can
// see go, and so do their entries in the records below rev (the record at
// rev keeps them, so a watch may still start at rev). Other stores' entries
// stay. From its read of the event log on, the batch holds the DB's
// EventLog until it is committed or closed.
func (b *Batch) compactWindow(sp Span, from, rev Revision) error {
	seen := make(map[string]struct{})
	// The records read here are written back with this store's entries
	// removed: no other rewrite of them may commit before this batch does.
	b.holdLog()
	it, err := b.b.NewIter(&pebble.IterOptions{LowerBound: eventKey(from), UpperBound: eventKey(rev + 1)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		r, err := decodeEventKey(it.Key())
		if err != nil {
			it.Close()
			return err
		}
		val, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		es, err := decodeEvents(val)
		if err != nil {
			it.Close()
			return err
		}
		var rest []eventEntry
		for _, e := range es {
			in := sp.Contains(e.key)
			if in {
				seen[string(e.key)] = struct{}{}
			}
			if r == rev || !in { // another store's keys are its compaction's job
				rest = append(rest, e)
			}
		}
		if len(rest) == len(es) {
			continue
		}
		if err := b.rewriteEvents(r, rest); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	for k := range seen {
		if err := b.compactKey([]byte(k), rev); err != nil {
			return err
		}
	}
	return nil
}

func (b *Batch) rewriteEvents(r Revision, rest []eventEntry) error {
	if len(rest) == 0 {
		return b.b.Delete(eventKey(r), nil)
	}
	return b.b.Set(eventKey(r), encodeEvents(rest), nil)
}

// compactKey deletes key's versions that no read at or above rev can see.
func (b *Batch) compactKey(key []byte, rev Revision) error {
	p := keyPrefix(key)
	it, err := b.b.NewIter(&pebble.IterOptions{LowerBound: versionKey(key, rev), UpperBound: nextKeyBound(p)})
	if err != nil {
		return err
	}
	defer it.Close()
	first := true
	for it.First(); it.Valid(); it.Next() {
		if first {
			first = false
			val, err := it.ValueAndErr()
			if err != nil {
				return err
			}
			if len(val) > 0 && val[0] != tagTombstone {
				continue // the newest version at or below rev stays
			}
		}
		if err := b.b.Delete(append([]byte(nil), it.Key()...), nil); err != nil {
			return err
		}
	}
	return it.Error()
}
