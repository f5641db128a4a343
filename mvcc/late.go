package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// A cross-range transaction (docs/plan-txn.md) commits its writes in each
// range at one revision R that the oracle handed out after the range locked
// the transaction's keys. Writes to other keys of the range may have
// applied since with higher revisions, so the commit is the one write a
// range applies below its current revision:
//
//	put b@10 (lock a) put c@12 commit a@11 → rev 12; a@11, b@10, c@12
//
// That is sound because nothing else wrote the locked keys since the lock:
// every version of a key the commit writes is below R, so the history of
// each key still grows in revision order, and a read at any revision sees
// what it would have seen had the commit applied in revision order (reads
// of the locked keys above the lock's cap wait for the commit, which the
// shard enforces).

// CommitAt applies r — puts and delete ranges only, no compares (the
// transaction evaluated those in every range before it took rev) — as one
// write transaction at rev, which may lie at or below the current
// revision; the batch's revision becomes the higher of the two. Leases and
// the span are checked as for Txn. The caller guarantees that no key r
// writes has a version at or above rev (it held them locked since before
// rev was handed out); a write that meets one is refused with
// ErrStaleStamp and the whole request changes nothing. The event record
// at rev is merged with the entries other stores wrote there (a
// transaction's participants may share the DB): from then on the batch
// holds the DB's EventLog until Commit or Close.
func (b *Batch) CommitAt(r *pb.TxnRequest, rev Revision) (*pb.TxnResponse, error) {
	if err := b.CheckCommit(r); err != nil {
		return nil, err
	}
	if rev <= 0 || rev <= b.compact {
		return nil, fmt.Errorf("%w: commit at %d, compacted at %d", ErrStaleStamp, rev, b.compact)
	}
	o := &op{b: b, begin: b.rev, rev: rev, stamped: true, late: true}
	path := []bool{true}
	// Every refusal comes before the first write: execTxn writes into the
	// batch as it goes.
	if err := o.checkLateAll(r); err != nil {
		return nil, err
	}
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
	if _, err := o.execTxn(r, path, resp); err != nil {
		return nil, err
	}
	resp.Header.Revision = int64(rev)
	return resp, o.end()
}

// checkLateAll refuses r before anything is written if a key it puts, or a
// live key a delete range of it removes, has a version at or above o.rev.
func (o *op) checkLateAll(r *pb.TxnRequest) error {
	v, err := o.view()
	if err != nil {
		return err
	}
	defer v.close()
	for _, op := range r.Success {
		if p := op.GetRequestPut(); p != nil {
			if err := o.checkLateIn(v, p.Key); err != nil {
				return err
			}
			continue
		}
		d := op.GetRequestDeleteRange()
		end := mkGteRange(d.RangeEnd)
		if len(d.RangeEnd) == 0 {
			if err := o.checkLateIn(v, d.Key); err != nil {
				return err
			}
			continue
		}
		var lateErr error
		if err := v.scan(d.Key, end, v.cur, func(ver *version) bool {
			if ver.mod >= o.rev {
				lateErr = lateError(ver.key, ver.mod, o.rev)
			}
			return lateErr == nil
		}); err != nil {
			return err
		}
		if lateErr != nil {
			return lateErr
		}
	}
	return nil
}

// checkLateIn refuses a late write of key if key has any version (a
// tombstone included) at or above o.rev, other than this op's own.
func (o *op) checkLateIn(v *view, key []byte) error {
	p := keyPrefix(key)
	if !v.it.SeekPrefixGE(p) {
		return v.it.Error()
	}
	k := v.it.Key()
	if !bytes.HasPrefix(k, p) || len(k) != len(p)+8 {
		return nil
	}
	newest := Revision(^binary.BigEndian.Uint64(k[len(p):]))
	if newest > o.rev || newest == o.rev && !o.wrote(key) {
		return lateError(key, newest, o.rev)
	}
	return nil
}

func (o *op) wrote(key []byte) bool {
	for _, c := range o.changes {
		if bytes.Equal(c.key, key) {
			return true
		}
	}
	return false
}

func lateError(key []byte, newest, rev Revision) error {
	return fmt.Errorf("%w: a commit at %d meets %q written at %d", ErrStaleStamp, rev, key, newest)
}

// endLate merges the op's event entries into the record at its revision,
// after whatever other stores wrote there, and raises the batch's revision
// to it if it is higher.
func (o *op) endLate() error {
	o.b.holdLog()
	key := eventKey(o.rev)
	var es []eventEntry
	v, closer, err := o.b.b.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return fmt.Errorf("mvcc: read event record %d: %w", o.rev, err)
	default:
		es, err = decodeEvents(v)
		closer.Close()
		if err != nil {
			return err
		}
	}
	var next int64
	for _, e := range es {
		next = max(next, e.sub+1)
	}
	for _, c := range o.changes {
		c.sub += next
		es = append(es, c)
	}
	if err := o.b.b.Set(key, encodeEvents(es), nil); err != nil {
		return err
	}
	o.b.rev = max(o.b.rev, o.rev)
	o.b.dirty = true
	return nil
}

// CheckCommit returns the refusal CommitAt would give r now for any reason
// but its revision: r must only put and delete (no compares, no failure
// branch, no nested txn), within the span, with leases that exist. It
// changes nothing: a cross-range transaction's prepare checks its intents
// with it, so that its commit is not refused later.
func (b *Batch) CheckCommit(r *pb.TxnRequest) error {
	if err := ValidateTxn(r, 0); err != nil {
		return err
	}
	if len(r.Compare) > 0 || len(r.Failure) > 0 {
		return fmt.Errorf("mvcc: a transaction's commit has compares or a failure branch")
	}
	for _, op := range r.Success {
		if op.GetRequestPut() == nil && op.GetRequestDeleteRange() == nil {
			return fmt.Errorf("mvcc: a transaction's commit may only put and delete")
		}
	}
	v, err := newView(b.b, max(b.rev, b.closed), b.compact, b.span())
	if err != nil {
		return err
	}
	defer v.close()
	path := []bool{true}
	if err := checkTxn(v, r, path, b.s.opts.Leases); err != nil {
		return err
	}
	return checkTxnSpan(v, r, path)
}

// Span is the store's span as this batch sees it (a split in it shrinks
// it).
func (b *Batch) Span() Span { return b.span() }

// WrittenAbove reports whether any key of [key, end) (end nil: key alone;
// empty: no upper bound) has a version, a tombstone included, above rev,
// as this batch sees the store: a cross-range transaction's prepare
// refuses spans written since the coordinator read them. It visits every
// version record of the interval.
func (b *Batch) WrittenAbove(key, end []byte, rev Revision) (bool, error) {
	lo, hi := keyBound(key), nextKeyBound(keyPrefix(key))
	if end != nil {
		hi = versionsEnd
		if len(end) > 0 {
			hi = keyBound(end)
		}
	}
	it, err := b.b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return false, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		_, _, r, err := decodeVersionKey(it.Key())
		if err != nil {
			return false, err
		}
		if r > rev {
			return true, nil
		}
	}
	return false, it.Error()
}

// ScanMeta calls fn with every internal record of this store whose name
// starts with prefix, as this batch sees them (its own writes included),
// in name order.
func (b *Batch) ScanMeta(prefix string, fn func(name string, value []byte) error) error {
	p := metaKey(b.s.opts.ID, prefix)
	it, err := b.b.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return err
	}
	defer it.Close()
	n := len(metaPrefix(b.s.opts.ID))
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(string(it.Key()[n:]), append([]byte(nil), v...)); err != nil {
			return err
		}
	}
	return it.Error()
}
