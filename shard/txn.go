package shard

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Cross-range transactions (docs/plan-txn.md), the participant's and the
// primary's side in the state machine. A participant holds a lock per
// prepared transaction:
//
//	prepare 7 spans=[a] cap=40 → lock{a, cap 40}: writes to a refused (LOCKED),
//	                             reads of a above 40 refused, closed ≤ 40
//	put b@50                   → applies (b is not locked)
//	commit 7 at 45             → a@45 (below the revision, 50), lock gone
//
// A lock is an internal record (txn/lock/<id>, so snapshots, backups and
// restarts carry it) and an entry of an in-memory table (lockTable) that
// every write, read and closed revision consults; the table is empty almost
// always, and an empty table costs one nil check. The primary keeps each
// transaction's record (txn/record/<id>): decide writes Committed unless a
// record exists, resolve writes Aborted unless one exists, whichever
// applies first decides, and both answer the record.
//
// The closed revision the state machine publishes (Status.Closed, OnApply)
// stays at or below the lowest cap of the locks it holds; the one it
// refuses stamps by (the proposers' closed revisions and the stamps of
// writes that changed nothing, persisted under closedKey) goes on rising,
// so that a write stamped below a revision some response already reported
// is still refused. The commit at R is the one write not held to it: it is
// checked against its lock's cap instead (R > cap).

// Internal record names.
const (
	lockPrefix   = "txn/lock/"
	recordPrefix = "txn/record/"
)

func lockKey(id uint64) string   { return fmt.Sprintf("%s%016x", lockPrefix, id) }
func recordKey(id uint64) string { return fmt.Sprintf("%s%016x", recordPrefix, id) }

// Refusals of cross-range transactions; each maps to its ErrorCode.
var (
	// ErrLocked refuses a write, a prepare, a split, a compaction, a lease
	// revoke or a read above a lock's cap that meets a lock of a
	// cross-range transaction in progress. It never waits: the caller
	// retries once the lock is resolved (bounded by its request timeout).
	ErrLocked = errors.New("shard: locked by a cross-range transaction in progress")
	// ErrTxnConflict refuses a prepare whose spans were written above the
	// revision the coordinator read them at.
	ErrTxnConflict = errors.New("shard: written since the transaction read it")
)

// keySpan is an interval of user keys [start, end); end nil: no bound.
type keySpan struct{ start, end []byte }

// spanOf is the interval etcd's key and range_end name: range_end empty is
// the key alone, "\0" every key from key on.
func spanOf(key, rangeEnd []byte) keySpan {
	switch {
	case len(rangeEnd) == 0:
		return keySpan{key, append(append(make([]byte, 0, len(key)+1), key...), 0)}
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return keySpan{key, nil}
	default:
		return keySpan{key, rangeEnd}
	}
}

func (s keySpan) overlaps(o keySpan) bool {
	return (o.end == nil || bytes.Compare(s.start, o.end) < 0) && (s.end == nil || bytes.Compare(o.start, s.end) < 0)
}

// covers reports whether o lies inside s.
func (s keySpan) covers(o keySpan) bool {
	if bytes.Compare(o.start, s.start) < 0 {
		return false
	}
	return s.end == nil || (o.end != nil && bytes.Compare(o.end, s.end) <= 0)
}

// inside reports whether s lies inside the range's span sp.
func (s keySpan) inside(sp mvcc.Span) bool {
	if !sp.Contains(s.start) {
		return false
	}
	return sp.End == nil || (s.end != nil && bytes.Compare(s.end, sp.End) <= 0)
}

func (s keySpan) String() string {
	if s.end == nil {
		return fmt.Sprintf("[%q, ∞)", s.start)
	}
	return fmt.Sprintf("[%q, %q)", s.start, s.end)
}

// heldLock is one lock, decoded.
type heldLock struct {
	rec   *shardpb.TxnLock
	spans []keySpan
	// intents are rec.Intents decoded (nil: the commit brings them).
	intents *pb.TxnRequest
}

// lockTable is the locks a range holds. A table is never changed once
// published: the applier works on a copy (with, without) and the state
// machine publishes it after the batch commits, so a read never sees a
// lock released before the commit's writes are visible.
//
// Invariant: capRev is the lowest rec.Cap of the locks (0 if none).
type lockTable struct {
	byID   map[uint64]*heldLock
	capRev mvcc.Revision
}

func (t *lockTable) empty() bool { return t == nil || len(t.byID) == 0 }

func (t *lockTable) get(id uint64) *heldLock {
	if t.empty() {
		return nil
	}
	return t.byID[id]
}

// limit is the highest closed revision the locks allow (MaxInt64: any).
func (t *lockTable) limit() mvcc.Revision {
	if t.empty() || plantedClosedPass {
		return math.MaxInt64
	}
	return t.capRev
}

// conflict returns a lock other than except's that overlaps sp, if any.
func (t *lockTable) conflict(sp keySpan, except uint64) *heldLock {
	if t.empty() {
		return nil
	}
	for id, l := range t.byID {
		if id == except {
			continue
		}
		for _, s := range l.spans {
			if s.overlaps(sp) {
				return l
			}
		}
	}
	return nil
}

func (t *lockTable) with(l *heldLock) *lockTable {
	n := &lockTable{byID: map[uint64]*heldLock{l.rec.Id: l}}
	if !t.empty() {
		for id, o := range t.byID {
			n.byID[id] = o
		}
	}
	n.recap()
	return n
}

func (t *lockTable) without(id uint64) *lockTable {
	n := &lockTable{byID: map[uint64]*heldLock{}}
	for i, o := range t.byID {
		if i != id {
			n.byID[i] = o
		}
	}
	n.recap()
	return n
}

func (t *lockTable) recap() {
	t.capRev = 0
	for _, l := range t.byID {
		if c := mvcc.Revision(l.rec.Cap); t.capRev == 0 || c < t.capRev {
			t.capRev = c
		}
	}
}

// sorted returns the lock records in id order.
func (t *lockTable) sorted() []*shardpb.TxnLock {
	if t.empty() {
		return nil
	}
	out := make([]*shardpb.TxnLock, 0, len(t.byID))
	for _, l := range t.byID {
		out = append(out, l.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// decodeLock decodes a lock record into a heldLock.
func decodeLock(rec *shardpb.TxnLock) (*heldLock, error) {
	l := &heldLock{rec: rec}
	for _, s := range rec.Spans {
		l.spans = append(l.spans, spanOf(s.Key, s.RangeEnd))
	}
	if len(rec.Intents) > 0 {
		var r pb.TxnRequest
		if err := proto.Unmarshal(rec.Intents, &r); err != nil {
			return nil, err
		}
		l.intents = &r
	}
	return l, nil
}

// loadLocks reads the lock records of store into a table.
func loadLocks(store *mvcc.Store) (*lockTable, error) {
	t := &lockTable{byID: map[uint64]*heldLock{}}
	var bad error
	err := store.ScanMeta(lockPrefix, func(name string, v []byte) {
		var rec shardpb.TxnLock
		if err := proto.Unmarshal(v, &rec); err != nil {
			bad = fmt.Errorf("shard: lock record %s: %w", name, err)
			return
		}
		l, err := decodeLock(&rec)
		if err != nil {
			bad = fmt.Errorf("shard: lock record %s: %w", name, err)
			return
		}
		t.byID[rec.Id] = l
	})
	if err == nil {
		err = bad
	}
	if err != nil {
		return nil, err
	}
	t.recap()
	return t, nil
}

// requestSpans calls fn with every interval an etcd write request reads
// or writes (a txn: its compares and the ops of both branches, nested
// txns included), until fn returns false.
func txnSpans(r *pb.TxnRequest, fn func(keySpan) bool) bool {
	for _, c := range r.Compare {
		if !fn(spanOf(c.Key, c.RangeEnd)) {
			return false
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var ok bool
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				ok = fn(spanOf(o.RequestRange.Key, o.RequestRange.RangeEnd))
			case *pb.RequestOp_RequestPut:
				ok = fn(spanOf(o.RequestPut.Key, nil))
			case *pb.RequestOp_RequestDeleteRange:
				ok = fn(spanOf(o.RequestDeleteRange.Key, o.RequestDeleteRange.RangeEnd))
			case *pb.RequestOp_RequestTxn:
				ok = txnSpans(o.RequestTxn, fn)
			default:
				ok = true
			}
			if !ok {
				return false
			}
		}
	}
	return true
}

// lockedBy returns the refusal of sp if a lock (other than except's)
// holds part of it.
func (t *lockTable) lockedBy(sp keySpan, except uint64) error {
	if l := t.conflict(sp, except); l != nil {
		return fmt.Errorf("%w: %s is locked by transaction %x", ErrLocked, sp, l.rec.Id)
	}
	return nil
}

// checkTxnUnlocked refuses a txn that touches a locked span.
func (t *lockTable) checkTxnUnlocked(r *pb.TxnRequest) error {
	if t.empty() {
		return nil
	}
	var err error
	txnSpans(r, func(sp keySpan) bool {
		err = t.lockedBy(sp, 0)
		return err == nil
	})
	return err
}

// checkRead refuses a read of sp at revision rev if a lock holds part of
// sp and rev is above its cap: the transaction may commit at any revision
// above the cap, and until it has, a read there would miss its writes.
func (t *lockTable) checkRead(sp keySpan, rev mvcc.Revision) error {
	if t.empty() || rev <= t.capRev {
		return nil
	}
	for _, l := range t.byID {
		if rev <= mvcc.Revision(l.rec.Cap) {
			continue
		}
		for _, s := range l.spans {
			if s.overlaps(sp) {
				return fmt.Errorf("%w: a read of %s at revision %d, above the cap %d of transaction %x", ErrLocked, sp, rev, l.rec.Cap, l.rec.Id)
			}
		}
	}
	return nil
}

// checkReadQuery refuses a read query (Lookup's RangeQuery or TxnQuery)
// that meets a lock above its cap; cur is the revision a request without
// one reads at.
func (t *lockTable) checkReadQuery(query any, cur mvcc.Revision) error {
	if t.empty() {
		return nil
	}
	at := func(rev int64) mvcc.Revision {
		if rev > 0 {
			return mvcc.Revision(rev)
		}
		return cur
	}
	switch q := query.(type) {
	case RangeQuery:
		return t.checkRead(spanOf(q.Req.Key, q.Req.RangeEnd), at(q.Req.Revision))
	case TxnQuery:
		// Compares read at the current revision, each range at its own.
		for _, c := range q.Req.Compare {
			if err := t.checkRead(spanOf(c.Key, c.RangeEnd), cur); err != nil {
				return err
			}
		}
		for _, ops := range [][]*pb.RequestOp{q.Req.Success, q.Req.Failure} {
			for _, op := range ops {
				if rr := op.GetRequestRange(); rr != nil {
					if err := t.checkRead(spanOf(rr.Key, rr.RangeEnd), at(rr.Revision)); err != nil {
						return err
					}
				}
				// A branch that writes is refused as not read-only.
			}
		}
	}
	return nil
}

// LocksQuery asks Lookup for the locks the range holds, a
// []*shardpb.TxnLock in id order (the resolver's list: deadlines and
// primaries).
type LocksQuery struct{}

// TxnRecordQuery asks Lookup, at a transaction's primary, for its record,
// a *shardpb.TxnRecord (outcome TXN_OUTCOME_UNSPECIFIED: none).
type TxnRecordQuery struct{ ID uint64 }

// LockCap returns the lowest cap of the locks the range holds, and whether
// it holds any: the closed revision it publishes stays at or below it.
func (s *StateMachine) LockCap() (mvcc.Revision, bool) {
	t := s.locks.Load()
	if t.empty() {
		return 0, false
	}
	return t.capRev, true
}

// capClosed is the closed revision the applier may publish for an
// unclamped closed revision c: c, but no higher than the locks allow and
// never below what was published.
func (a *applier) capClosed(c mvcc.Revision) mvcc.Revision {
	return max(a.published, min(c, a.locks.limit()))
}

// decodeIntents decodes a transaction's intents: puts and delete ranges of
// this range's keys, nothing else.
func decodeIntents(data []byte) (*pb.TxnRequest, error) {
	var r pb.TxnRequest
	if err := proto.Unmarshal(data, &r); err != nil {
		return nil, badRequest("shard: undecodable transaction intents: %v", err)
	}
	if len(r.Compare) > 0 || len(r.Failure) > 0 {
		return nil, badRequest("shard: transaction intents with compares or a failure branch")
	}
	for _, op := range r.Success {
		if op.GetRequestPut() == nil && op.GetRequestDeleteRange() == nil {
			return nil, badRequest("shard: transaction intents may only put and delete")
		}
	}
	return &r, nil
}

// intentSpans are the intervals intents write.
func intentSpans(r *pb.TxnRequest) []keySpan {
	var out []keySpan
	txnSpans(r, func(sp keySpan) bool { out = append(out, sp); return true })
	return out
}

func (a *applier) txnPrepare(p *shardpb.TxnPrepare) (*shardpb.Response, error) {
	if p == nil || p.Id == 0 {
		return nil, badRequest("shard: transaction prepare without an id")
	}
	if !a.sharded || a.counting {
		return nil, badRequest("shard: a range that numbers its own revisions takes no part in cross-range transactions")
	}
	b := a.b
	if l := a.locks.get(p.Id); l != nil {
		// A retried proposal: the lock stands as the first one set it.
		return a.prepared(l.rec.Cap, p.Reads)
	}
	rec := &shardpb.TxnLock{Id: p.Id, PrimaryRange: p.PrimaryRange, PrimaryKey: p.PrimaryKey, Intents: p.Intents,
		DeadlineUnixNano: p.DeadlineUnixNano, Index: a.index}
	var spans []keySpan
	for _, s := range p.Spans {
		if s == nil || len(s.Key) == 0 {
			return nil, badRequest("shard: transaction span without a key")
		}
		rec.Spans = append(rec.Spans, &shardpb.KeySpan{Key: s.Key, RangeEnd: s.RangeEnd})
		spans = append(spans, spanOf(s.Key, s.RangeEnd))
	}
	var intents *pb.TxnRequest
	if len(p.Intents) > 0 {
		var err error
		if intents, err = decodeIntents(p.Intents); err != nil {
			return nil, err
		}
		// The intents' keys are locked too, whether or not spans says so.
		for _, sp := range intentSpans(intents) {
			if !coveredBy(spans, sp) {
				rec.Spans = append(rec.Spans, &shardpb.KeySpan{Key: sp.start, RangeEnd: wireEnd(sp)})
				spans = append(spans, sp)
			}
		}
	}
	if len(spans) == 0 {
		return nil, badRequest("shard: transaction prepare without spans or intents")
	}
	for _, sp := range spans {
		if !sp.inside(b.Span()) {
			return nil, fmt.Errorf("%w: transaction span %s", mvcc.ErrOutsideSpan, sp)
		}
		if err := a.locks.lockedBy(sp, p.Id); err != nil {
			return nil, err
		}
	}
	if p.ReadRevision > 0 {
		for _, sp := range spans {
			written, err := b.WrittenAbove(sp.start, wireSpanEnd(sp), mvcc.Revision(p.ReadRevision))
			if err != nil {
				return nil, err
			}
			if written {
				return nil, fmt.Errorf("%w: %s was written above revision %d", ErrTxnConflict, sp, p.ReadRevision)
			}
		}
	}
	if intents != nil {
		if Capped(intents) && a.alarms.has(pb.AlarmType_NOSPACE) {
			return nil, errNoSpace
		}
		if err := b.CheckCommit(intents); err != nil {
			return nil, err
		}
	}
	// The closed revision may already have passed the proposer's cap
	// (from revisions fetched before the prepare was proposed, so below
	// any revision the transaction takes after it applies): the lock
	// holds it where it is.
	rec.Cap = int64(max(mvcc.Revision(p.Cap), a.cmdClosed, a.published))
	data, err := proto.Marshal(rec)
	if err != nil {
		return nil, err
	}
	b.SetMeta(lockKey(p.Id), data)
	a.locks = a.locks.with(&heldLock{rec: rec, spans: spans, intents: intents})
	return a.prepared(rec.Cap, p.Reads)
}

// prepared answers a prepare: the range's revision, the lock's cap and the
// answer to its reads.
func (a *applier) prepared(capRev int64, reads []byte) (*shardpb.Response, error) {
	out := &shardpb.TxnPrepared{Revision: int64(a.b.Rev()), Cap: capRev}
	if len(reads) > 0 {
		var r pb.TxnRequest
		if err := proto.Unmarshal(reads, &r); err != nil {
			return nil, badRequest("shard: undecodable transaction reads: %v", err)
		}
		if !mvcc.IsTxnReadOnly(&r) {
			return nil, mvcc.ErrNotReadOnly
		}
		resp, err := a.b.Txn(&r, 0)
		if err != nil {
			return nil, err
		}
		if out.Reads, err = proto.Marshal(resp); err != nil {
			return nil, err
		}
	}
	return &shardpb.Response{Result: &shardpb.Response_TxnPrepared{TxnPrepared: out}}, nil
}

func coveredBy(spans []keySpan, sp keySpan) bool {
	for _, s := range spans {
		if s.covers(sp) {
			return true
		}
	}
	return false
}

// wireEnd is sp's end as etcd's range_end names it.
func wireEnd(sp keySpan) []byte {
	if sp.end == nil {
		return []byte{0}
	}
	if len(sp.end) == len(sp.start)+1 && sp.end[len(sp.end)-1] == 0 && bytes.HasPrefix(sp.end, sp.start) {
		return nil // the key alone
	}
	return sp.end
}

// wireSpanEnd is sp's end as mvcc.Batch.WrittenAbove takes it (nil: the
// key alone; empty: no bound).
func wireSpanEnd(sp keySpan) []byte {
	if sp.end == nil {
		return []byte{}
	}
	return wireEnd(sp)
}

func (a *applier) txnCommit(c *shardpb.TxnCommit) (*shardpb.Response, error) {
	if c == nil || c.Id == 0 {
		return nil, badRequest("shard: transaction commit without an id")
	}
	l := a.locks.get(c.Id)
	if l == nil {
		// Settled already (a retried proposal, or the other of the
		// coordinator and the resolver).
		return &shardpb.Response{Result: &shardpb.Response_TxnSettled{TxnSettled: &shardpb.TxnSettled{}}}, nil
	}
	rev := mvcc.Revision(c.Revision)
	if rev <= mvcc.Revision(l.rec.Cap) || rev <= a.published && !plantedClosedPass {
		return nil, fmt.Errorf("%w: transaction %x commits at %d, not above its lock's cap %d (closed %d)", mvcc.ErrStaleStamp, c.Id, rev, l.rec.Cap, a.published)
	}
	intents := l.intents
	if len(c.Intents) > 0 {
		var err error
		if intents, err = decodeIntents(c.Intents); err != nil {
			return nil, err
		}
		for _, sp := range intentSpans(intents) {
			if !coveredBy(l.spans, sp) {
				return nil, badRequest("shard: transaction %x commits %s, outside the spans it locked", c.Id, sp)
			}
		}
	}
	settled := &shardpb.TxnSettled{Held: true}
	if intents != nil && len(intents.Success) > 0 {
		resp, err := a.b.CommitAt(intents, rev)
		if err != nil {
			return nil, err
		}
		a.counts.add(txnCounts(intents, resp))
		if settled.Txn, err = proto.Marshal(resp); err != nil {
			return nil, err
		}
	}
	a.release(c.Id)
	return &shardpb.Response{Result: &shardpb.Response_TxnSettled{TxnSettled: settled}}, nil
}

func (a *applier) txnAbort(c *shardpb.TxnAbort) (*shardpb.Response, error) {
	if c == nil || c.Id == 0 {
		return nil, badRequest("shard: transaction abort without an id")
	}
	held := a.locks.get(c.Id) != nil
	if held {
		a.release(c.Id)
	}
	return &shardpb.Response{Result: &shardpb.Response_TxnSettled{TxnSettled: &shardpb.TxnSettled{Held: held}}}, nil
}

func (a *applier) release(id uint64) {
	a.b.DeleteMeta(lockKey(id))
	a.locks = a.locks.without(id)
}

// record reads transaction id's record as the batch sees it (nil: none).
func (a *applier) record(id uint64) (*shardpb.TxnRecord, error) {
	v, ok, err := a.b.GetMeta(recordKey(id))
	if err != nil || !ok {
		return nil, err
	}
	var rec shardpb.TxnRecord
	if err := proto.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("shard: transaction record %x: %w", id, err)
	}
	return &rec, nil
}

// decide writes rec unless transaction rec.Id has a record, and answers
// the record as it stands.
func (a *applier) decide(rec *shardpb.TxnRecord) (*shardpb.Response, error) {
	if len(rec.PrimaryKey) > 0 && !a.b.Span().Contains(rec.PrimaryKey) {
		return nil, fmt.Errorf("%w: transaction %x's primary key %q", mvcc.ErrOutsideSpan, rec.Id, rec.PrimaryKey)
	}
	old, err := a.record(rec.Id)
	if err != nil {
		return nil, err
	}
	if old == nil {
		data, err := proto.Marshal(rec)
		if err != nil {
			return nil, err
		}
		a.b.SetMeta(recordKey(rec.Id), data)
		old = rec
	}
	return &shardpb.Response{Result: &shardpb.Response_TxnRecord{TxnRecord: old}}, nil
}

func (a *applier) txnDecide(d *shardpb.TxnDecide) (*shardpb.Response, error) {
	if d == nil || d.Id == 0 || d.Revision <= 0 {
		return nil, badRequest("shard: transaction decision without an id or a revision")
	}
	for _, w := range d.Writes {
		if len(w.GetIntents()) > 0 {
			if _, err := decodeIntents(w.Intents); err != nil {
				return nil, err
			}
		}
	}
	return a.decide(&shardpb.TxnRecord{Id: d.Id, Outcome: shardpb.TxnOutcome_TXN_OUTCOME_COMMITTED, Revision: d.Revision,
		Writes: d.Writes, PrimaryKey: d.PrimaryKey})
}

func (a *applier) txnResolve(r *shardpb.TxnResolve) (*shardpb.Response, error) {
	if r == nil || r.Id == 0 {
		return nil, badRequest("shard: transaction resolve without an id")
	}
	return a.decide(&shardpb.TxnRecord{Id: r.Id, Outcome: shardpb.TxnOutcome_TXN_OUTCOME_ABORTED, PrimaryKey: r.PrimaryKey})
}

func (a *applier) txnForget(f *shardpb.TxnForget) (*shardpb.Response, error) {
	if f == nil || f.Id == 0 {
		return nil, badRequest("shard: transaction forget without an id")
	}
	old, err := a.record(f.Id)
	if err != nil {
		return nil, err
	}
	if old != nil {
		a.b.DeleteMeta(recordKey(f.Id))
	}
	return &shardpb.Response{Result: &shardpb.Response_TxnForgotten{TxnForgotten: old != nil}}, nil
}

// leaseLocked refuses a revoke of lease id while a lock holds a key
// attached to it, or intents that put with it: the revoke would delete
// a locked key, or leave the commit a lease that no longer exists.
func (a *applier) leaseLocked(id int64) error {
	if a.locks.empty() {
		return nil
	}
	for _, l := range a.locks.sorted() {
		h := a.locks.byID[l.Id]
		if h.intents != nil {
			for _, op := range h.intents.Success {
				if p := op.GetRequestPut(); p != nil && p.Lease == id {
					return fmt.Errorf("%w: transaction %x puts %q with lease %d", ErrLocked, l.Id, p.Key, id)
				}
			}
		}
		for _, sp := range h.spans {
			r := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: sp.start, RangeEnd: wireEnd(sp)}}}}}
			resp, err := a.b.Txn(r, 0)
			if err != nil {
				return err
			}
			for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
				if kv.Lease == id {
					return fmt.Errorf("%w: %q, attached to lease %d, is locked by transaction %x", ErrLocked, kv.Key, id, l.Id)
				}
			}
		}
	}
	return nil
}

// splitRecords hands the transaction records whose primary key lies in
// the child's span to the child, with the split: the primary is found by
// that key.
func (a *applier) splitRecords(child uint64, span mvcc.Span) error {
	type moved struct {
		name string
		v    []byte
	}
	var move []moved
	err := a.b.ScanMeta(recordPrefix, func(name string, v []byte) error {
		var rec shardpb.TxnRecord
		if err := proto.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("shard: transaction record %s: %w", name, err)
		}
		if len(rec.PrimaryKey) > 0 && span.Contains(rec.PrimaryKey) {
			move = append(move, moved{name, v})
		}
		return nil
	})
	for _, m := range move {
		a.b.SetMetaFor(child, m.name, m.v)
		a.b.DeleteMeta(m.name)
	}
	return err
}

// txnOp reports whether r is one of a cross-range transaction's requests,
// which carry no stamp (the commit's revision is its own field).
func txnOp(r *shardpb.Request) bool {
	switch r.Op.(type) {
	case *shardpb.Request_TxnPrepare, *shardpb.Request_TxnCommit, *shardpb.Request_TxnAbort,
		*shardpb.Request_TxnDecide, *shardpb.Request_TxnResolve, *shardpb.Request_TxnForget:
		return true
	}
	return false
}
