package shard

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Online merges (docs/plan-merge.md), the state machine's side. The right
// range R is frozen by its own log, then the left range L absorbs it in
// place by L's log; R's data never moves:
//
//	R: freeze m for L at index F  → 'm' R "merge-frozen" = {m, L, F} (synced);
//	                                R refuses everything but thaw, hold and
//	                                this freeze, raises no closed revision
//	L: commit m                   → span [L.start, R.end), rev and compact the
//	                                higher, R's lessor records, txn records,
//	                                alarms and auth fence taken over, closed
//	                                max(L, R, T), 'm' L "merge/m" = committed
//	L: abort m (first)            → 'm' L "merge/m" = aborted; a commit of m
//	                                then answers aborted
//	R: thaw m                     → R serves again; 'm' R "merge-thawed" = m,
//	                                a later freeze of m answers aborted
//
// Whichever of commit and abort applies first in L decides (each answers
// the recorded outcome again); R is thawed only after L recorded the abort,
// so a commit still travelling can never absorb a thawed R. The commit
// reads R's records from this member's pebble, not through R's raft group
// (an apply never waits on another shard): the driver proposes it once
// every replica of R applied the freeze, whose batch is synced, so they are
// R's records at F on every member.

// Internal record names of merges.
const (
	// frozenKey: this range is frozen for a merge (shardpb.MergeFrozen).
	frozenKey = "merge-frozen"
	// thawedKey: the highest merge whose freeze of this range was undone
	// (8 bytes, big-endian).
	thawedKey = "merge-thawed"
	// decisionPrefix: the outcome of each merge this range was the left
	// range of ("merge/<id>": 1 committed, 0 aborted).
	decisionPrefix = "merge/"
)

func decisionKey(merge uint64) string { return fmt.Sprintf("%s%016x", decisionPrefix, merge) }

// Refusals of merges; each maps to its ErrorCode.
var (
	// ErrMerging refuses every request to a range frozen for a merge but
	// the merge's own (and a freeze for another merge while it is frozen):
	// definitively, so the router retries, and the left range serves the
	// keys once it has absorbed them.
	ErrMerging = errors.New("shard: range frozen for a merge")
	// ErrStaleMerge refuses a merge commit the left range cannot apply:
	// its span does not end where the right range starts (a split or
	// another merge changed it since the merge began).
	ErrStaleMerge = errors.New("shard: stale merge")
)

// appliedMerge is a merge committed in a batch, for Config.OnMerge.
type appliedMerge struct {
	right      RangeID
	span       mvcc.Span
	rev        mvcc.Revision
	generation uint64
}

// passesFreeze reports whether a frozen range still applies r: the
// merge's own requests (a freeze answers whether it is this merge's, a
// thaw ends it) and transfer holds, which change no state.
func passesFreeze(r *shardpb.Request) bool {
	switch r.Op.(type) {
	case *shardpb.Request_MergeFreeze, *shardpb.Request_MergeThaw, *shardpb.Request_TransferHold:
		return true
	}
	return false
}

// mergeOp reports whether r is a merge's request (never stamped).
func mergeOp(r *shardpb.Request) bool {
	switch r.Op.(type) {
	case *shardpb.Request_MergeFreeze, *shardpb.Request_MergeThaw, *shardpb.Request_MergeCommit, *shardpb.Request_MergeAbort:
		return true
	}
	return false
}

// brokenInvariant panics with the facts of a broken invariant of merges.
func brokenInvariant(format string, args ...any) {
	panic(fmt.Sprintf("shard: broken invariant: "+format, args...))
}

func mergeOutcome(o *shardpb.MergeOutcome) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_MergeOutcome{MergeOutcome: o}}
}

// mergeFreeze freezes this range (the right one) for merge op.Merge: again
// for the same merge it answers the first freeze's index; a merge thawed
// here already is answered aborted (its freeze came late); a range frozen
// for another merge or holding locks of cross-range transactions refuses.
// The batch is synced (Update), so the freeze survives a machine crash.
func (a *applier) mergeFreeze(op *shardpb.MergeFreeze) (*shardpb.Response, error) {
	if op == nil || op.Merge == 0 || op.Left == 0 {
		return nil, badRequest("shard: merge freeze without its fields")
	}
	if f := a.frozen; f != nil {
		if f.Merge == op.Merge {
			return mergeOutcome(&shardpb.MergeOutcome{FreezeIndex: f.Index}), nil
		}
		return nil, fmt.Errorf("%w: merge %d, frozen for merge %d", ErrMerging, op.Merge, f.Merge)
	}
	if op.Merge <= a.thawed {
		return mergeOutcome(&shardpb.MergeOutcome{Aborted: true}), nil
	}
	if op.Left == a.self {
		return nil, badRequest("shard: range %d cannot merge into itself", op.Left)
	}
	if !a.locks.empty() {
		return nil, fmt.Errorf("%w: a merge freeze of a range holding %d locks", ErrLocked, len(a.locks.byID))
	}
	f := &shardpb.MergeFrozen{Merge: op.Merge, Left: op.Left, Index: a.index}
	data, err := proto.Marshal(f)
	if err != nil {
		return nil, err
	}
	a.b.SetMeta(frozenKey, data)
	a.frozen = f
	a.sync = true
	return mergeOutcome(&shardpb.MergeOutcome{FreezeIndex: f.Index}), nil
}

// mergeThaw ends the freeze of merge op.Merge (if this range is frozen for
// it) and records the merge as thawed, so that a freeze of it still
// travelling is answered aborted. It answers aborted.
func (a *applier) mergeThaw(op *shardpb.MergeThaw) (*shardpb.Response, error) {
	if op == nil || op.Merge == 0 {
		return nil, badRequest("shard: merge thaw without its fields")
	}
	if f := a.frozen; f != nil && f.Merge == op.Merge {
		a.b.DeleteMeta(frozenKey)
		a.frozen = nil
	}
	if op.Merge > a.thawed {
		a.thawed = op.Merge
		a.b.SetMeta(thawedKey, binary.BigEndian.AppendUint64(nil, op.Merge))
	}
	return mergeOutcome(&shardpb.MergeOutcome{Aborted: true}), nil
}

// mergeDecision returns the recorded outcome of merge m in this (left) range.
func (a *applier) mergeDecision(m uint64) (o *shardpb.MergeOutcome, ok bool, err error) {
	v, ok, err := a.b.GetMeta(decisionKey(m))
	if err != nil || !ok {
		return nil, false, err
	}
	committed := len(v) == 1 && v[0] == 1
	return &shardpb.MergeOutcome{Committed: committed, Aborted: !committed}, true, nil
}

func (a *applier) decideMerge(m uint64, committed bool) {
	v := []byte{0}
	if committed {
		v[0] = 1
	}
	a.b.SetMeta(decisionKey(m), v)
}

// mergeAbort records in this (left) range that merge op.Merge is undone,
// unless its outcome is recorded already, and answers the outcome.
func (a *applier) mergeAbort(op *shardpb.MergeAbort) (*shardpb.Response, error) {
	if op == nil || op.Merge == 0 {
		return nil, badRequest("shard: merge abort without its fields")
	}
	if o, ok, err := a.mergeDecision(op.Merge); err != nil || ok {
		return mergeOutcome(o), err
	}
	a.decideMerge(op.Merge, false)
	return mergeOutcome(&shardpb.MergeOutcome{Aborted: true}), nil
}

// mergeCommit makes this (left) range absorb range op.Right, frozen for
// merge op.Merge on every member (see the top of the file), unless the
// merge's outcome is recorded already, and answers the outcome. A left
// range whose span does not end at op.RightStart refuses it (ErrStaleMerge;
// deterministic on every replica); a right range here not frozen for this
// merge and this range is a broken invariant (the driver proposes the
// commit only once every replica of the right range applied its freeze).
func (a *applier) mergeCommit(op *shardpb.MergeCommit) (*shardpb.Response, error) {
	if op == nil || op.Merge == 0 || op.Right == 0 || len(op.RightStart) == 0 {
		return nil, badRequest("shard: merge commit without its fields")
	}
	if o, ok, err := a.mergeDecision(op.Merge); err != nil || ok {
		return mergeOutcome(o), err
	}
	b := a.b
	if sp := b.Span(); sp.End == nil || string(sp.End) != string(op.RightStart) {
		return nil, fmt.Errorf("%w: merge %d: range %d %s does not end where range %d starts (%q)",
			ErrStaleMerge, op.Merge, a.self, spanText(sp), op.Right, op.RightStart)
	}
	right, err := mvcc.Open(a.db, mvcc.Options{ID: op.Right, EventLog: a.eventLog})
	if err != nil {
		return nil, err
	}
	var f shardpb.MergeFrozen
	if v, err := right.GetMeta(frozenKey); err != nil {
		return nil, err
	} else if v == nil || proto.Unmarshal(v, &f) != nil || f.Merge != op.Merge || f.Left != a.self {
		brokenInvariant("merge %d of range %d into range %d at index %d: the right range here is not frozen for it (frozen record %x)",
			op.Merge, op.Right, a.self, a.index, v)
	}
	if sp := right.Span(); string(sp.Start) != string(op.RightStart) || string(sp.End) != string(op.RightEnd) {
		brokenInvariant("merge %d of range %d into range %d at index %d: the right range here spans %s, the commit says [%q, %q)",
			op.Merge, op.Right, a.self, a.index, spanText(sp), op.RightStart, op.RightEnd)
	}
	// What the right range's records add, read before anything changes.
	rclosed, err := metaUint(right, closedKey)
	if err != nil {
		return nil, err
	}
	var rfence shardpb.AuthFence
	if v, err := right.GetMeta(authFenceKey); err != nil {
		return nil, err
	} else if v != nil {
		if err := proto.Unmarshal(v, &rfence); err != nil {
			return nil, fmt.Errorf("shard: the auth fence of range %d: %w", op.Right, err)
		}
	}
	ralarms, err := scanMeta(right, alarmsPrefix)
	if err != nil {
		return nil, err
	}
	records, err := scanMeta(right, recordPrefix)
	if err != nil {
		return nil, err
	}

	span, err := b.Absorb(op.Right)
	if err != nil {
		if errors.Is(err, mvcc.ErrNotAdjacent) || errors.Is(err, mvcc.ErrUnknownStore) {
			brokenInvariant("merge %d of range %d into range %d at index %d: %v", op.Merge, op.Right, a.self, a.index, err)
		}
		return nil, err
	}
	if err := a.lessor.Absorb(b.Pebble(), op.Right); err != nil {
		return nil, err
	}
	for _, r := range records {
		// The right range was the primary of these transactions: their
		// keys are this range's now.
		b.SetMeta(r.name, r.v)
	}
	for _, r := range ralarms {
		// Raised in either range: raised in the merged one.
		if m, ok := parseAlarmKey(r.name); ok {
			a.alarms.apply(b, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: m.MemberID, Alarm: m.Alarm})
		}
	}
	if fenceBelow(a.auth.getFence(), &rfence) {
		data, err := proto.Marshal(&rfence)
		if err != nil {
			return nil, err
		}
		b.SetMeta(authFenceKey, data)
		a.auth.fence.Store(&rfence)
	}
	// Closed: no write at or below either range's closed revision or T is
	// still to come to any key of the merged span.
	a.closed = max(a.closed, mvcc.Revision(rclosed), mvcc.Revision(op.Closed))
	a.cmdClosed = max(a.cmdClosed, a.closed)
	b.SetClosed(a.capClosed(a.closed))
	a.persistClosed = true
	// A merged range takes its revisions from the oracle, whatever its
	// span (mvcc.Store.Resized).
	a.counting, a.whole = false, false
	a.decideMerge(op.Merge, true)
	a.merges = append(a.merges, appliedMerge{right: RangeID(op.Right), span: span, rev: b.Rev(), generation: op.Generation})
	return mergeOutcome(&shardpb.MergeOutcome{Committed: true}), nil
}

// metaRecord is one internal record of a store.
type metaRecord struct {
	name string
	v    []byte
}

// scanMeta returns store's internal records whose names start with prefix.
func scanMeta(store *mvcc.Store, prefix string) ([]metaRecord, error) {
	var out []metaRecord
	err := store.ScanMeta(prefix, func(name string, v []byte) { out = append(out, metaRecord{name, append([]byte(nil), v...)}) })
	return out, err
}

// metaUint reads an 8-byte internal record of store (0 if absent).
func metaUint(store *mvcc.Store, name string) (uint64, error) {
	v, err := store.GetMeta(name)
	if err != nil || len(v) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

// loadMerge reads the range's freeze and the highest merge thawed here.
func (s *StateMachine) loadMerge(store *mvcc.Store) error {
	var f *shardpb.MergeFrozen
	v, err := store.GetMeta(frozenKey)
	if err != nil {
		return fmt.Errorf("shard %d: read the merge freeze: %w", s.shardID, err)
	}
	if v != nil {
		f = &shardpb.MergeFrozen{}
		if err := proto.Unmarshal(v, f); err != nil {
			return fmt.Errorf("shard %d: read the merge freeze: %w", s.shardID, err)
		}
	}
	thawed, err := metaUint(store, thawedKey)
	if err != nil {
		return fmt.Errorf("shard %d: read the thawed merge: %w", s.shardID, err)
	}
	s.frozen.Store(f)
	s.thawed.Store(thawed)
	return nil
}

// Frozen returns the merge this range is frozen for (ok false: none).
func (s *StateMachine) Frozen() (merge uint64, ok bool) {
	if f := s.frozen.Load(); f != nil {
		return f.Merge, true
	}
	return 0, false
}

// errMerging is the refusal of a request to a frozen range.
func errMerging(f *shardpb.MergeFrozen) error {
	return fmt.Errorf("%w: merge %d into range %d", ErrMerging, f.Merge, f.Left)
}

// frozen returns the merge this NodeHost's replica of the range is frozen
// for (nil: none, or no local state machine given).
func (r *Replica) frozen() *shardpb.MergeFrozen {
	if r.local == nil {
		return nil
	}
	if sm := r.local(); sm != nil {
		return sm.frozen.Load()
	}
	return nil
}

// refuseFrozen is the refusal (*Error, code MERGING) of a request the
// local replica, frozen for a merge, would refuse at apply: it is not
// proposed. nil if the replica is not frozen or applies req.
func (r *Replica) refuseFrozen(req *shardpb.Request) error {
	f := r.frozen()
	if f == nil || (req != nil && passesFreeze(req)) {
		return nil
	}
	e, _ := toError(errMerging(f))
	return e
}

// mergingStatus is the refusal of closing a range whose status says it
// is frozen (nil if it is not).
func mergingStatus(st Status) error {
	if !st.Frozen {
		return nil
	}
	e, _ := toError(fmt.Errorf("%w: merge %d", ErrMerging, st.Merge))
	return e
}

// skipRestore reports whether a snapshot whose internal records include
// imageFrozen (nil: not frozen) must not replace this frozen range's
// state: the left range may have absorbed this range here already
// (MergedInto), or may yet, and write its keys — a restore would delete
// them. A frozen image of the same merge is this state (a frozen range
// changes nothing); an image thawed or frozen for another merge means the
// merge this range is frozen for was undone (R is thawed only after the
// abort is recorded), so it is restored.
func (s *StateMachine) skipRestore(imageFrozen []byte) (bool, error) {
	f := s.frozen.Load()
	if _, merged, err := mvcc.MergedInto(s.cfg.DB, s.shardID); err != nil || merged {
		return merged, err
	}
	if f == nil || imageFrozen == nil {
		return false, nil
	}
	var g shardpb.MergeFrozen
	if err := proto.Unmarshal(imageFrozen, &g); err != nil {
		return false, fmt.Errorf("shard %d: the snapshot's merge freeze: %w", s.shardID, err)
	}
	return g.Merge == f.Merge, nil
}

// keepApplied records applied (a skipped snapshot's index, if higher) as
// this replica's applied index, durably.
func (s *StateMachine) keepApplied(applied uint64) error {
	if applied <= s.applied.Load() {
		return nil
	}
	b := s.store.NewBatch()
	defer b.Close()
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], applied)
	b.SetMeta(appliedKey, idx[:])
	if err := b.Commit(); err != nil {
		return fmt.Errorf("shard %d: record the applied index: %w", s.shardID, err)
	}
	if err := s.cfg.DB.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("shard %d: record the applied index: %w", s.shardID, err)
	}
	s.applied.Store(applied)
	return nil
}

// spanText formats a span for messages: [start, end), ∞ for no end.
func spanText(s mvcc.Span) string {
	if s.End == nil {
		return fmt.Sprintf("[%q, ∞)", s.Start)
	}
	return fmt.Sprintf("[%q, %q)", s.Start, s.End)
}
