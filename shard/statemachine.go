package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// appliedKey names the internal record holding the raft index of the last
// applied entry; it is written in the same pebble batch as the entry's data.
const appliedKey = "applied-index"

// Config describes the range one StateMachine serves.
type Config struct {
	// DB is the node's pebble, shared by every shard on the node.
	DB *pebble.DB
	// Events is DB's event log lock (mvcc.NewEventLog), the same for every
	// shard on the node; nil: the store's own (mvcc.Options.EventLog).
	Events *mvcc.EventLog
	// Span is the range of user keys; {nil, nil} is the whole key space.
	Span mvcc.Span
	// Sharded makes the shard a range of sharded mode (DESIGN.md "Keys,
	// values, revisions"). While its span is the whole key space it counts
	// revisions at apply time as etcd does (dense; an unstamped write
	// applies at current + 1) and its closed revision is its revision; a
	// split needs an oracle revision above the range's (SplitRange.Above),
	// and from the split on every write must carry a stamp: one without is
	// refused as stale, for the proposer to stamp it. Single-group mode
	// (false) assigns current + 1 to every unstamped write, and while its
	// span is the whole key space (always, outside tests) each unstamped
	// request raises its closed revision to its revision, so that it
	// follows the revision as a counting range's does (the router's reads
	// at a revision and watch merge rely on it). It is not Counting: the
	// stamps and closed revisions its commands carry, which only tests
	// send, still count as a stamping client's, and a split of it needs
	// no oracle revision.
	Sharded bool
	// Lease configures the shard's lessor (its ID is the shard id).
	Lease lease.Options
	// Now is the clock the lessor is given when a grant applies on the
	// primary; nil means time.Now.
	Now func() time.Time
	// OnApply, if set, receives the change events of every applied batch, in
	// the order they applied (revision order but for a cross-range
	// transaction's commit, which applies at R after the range's writes
	// above R: txn.go), and the closed revision after it, after the batch
	// is committed: for every batch with events, a raised closed revision
	// or changed locks (LockLimit is the batch's during the call). It runs
	// on dragonboat's apply goroutine: it must not block.
	OnApply func(closed mvcc.Revision, events []*mvccpb.Event)
	// OnHold, if set, is called after a batch that applied a TransferHold
	// (the last one of the batch), on dragonboat's apply goroutine: it must
	// not block. The hold is the replica client's to honour (Replica.Hold).
	OnHold func(target ReplicaID, until time.Time, max time.Duration)
	// OnPeers, if set, receives every member's recorded peer URLs: each
	// record as it applies (after its batch commits), and all of them when
	// the store opens or is restored from a snapshot. It runs on
	// dragonboat's goroutines: it must not block.
	OnPeers func(id uint64, peerURLs []string)
	// OnSplit, if set, is called for each split applied (a SplitRange
	// request), after its batch commits and before OnApply, on dragonboat's
	// apply goroutine: it must not block. rev is the store's revision at
	// the split: the child holds the keys of span, their history included,
	// up to it. founders are the child's replicas the command names
	// (SplitFounders; nil: none named).
	OnSplit func(child RangeID, span mvcc.Span, rev mvcc.Revision, founders []*shardpb.ReplicaRef)
	// OnMerge, if set, is called for each merge this range committed as
	// its left range (a MergeCommit request, docs/plan-merge.md), after
	// its batch commits and before OnApply, on dragonboat's apply
	// goroutine: it must not block. span is the merged span, rev the
	// store's revision after the merge and generation the merged range's
	// (the command's). right's replica here is frozen and is to be
	// retired: this range serves its keys from now on.
	OnMerge func(right RangeID, span mvcc.Span, rev mvcc.Revision, generation uint64)
	// OnRecover, if set, is called after the store was replaced by a
	// snapshot, on dragonboat's goroutine: it must not block. A split the
	// replica missed (it was cut off) shows only so: the snapshot's store
	// no longer holds the keys the split handed on.
	OnRecover func()
	// onRestored, set by Range.Start, is called after the store was
	// replaced by a snapshot, before OnRecover, with the store's revision
	// and the locks' limit (LockLimit): the range's watch hub syncs to
	// the restored store (watch.Hub.Sync), whose events it never saw.
	onRestored func(rev, limit mvcc.Revision)
	// Journal, if set, receives a record of every applied entry (see
	// journal.go): a testing aid for history checkers.
	Journal io.Writer
	// Observer, if set, receives what the node's metrics count: the
	// operations applied and read, commit and sync times (the state
	// machine), failed proposals and restamps (the range's Replica).
	Observer Observer
}

// StateMachine is dragonboat's IOnDiskStateMachine for one range: it composes
// the range's mvcc store with the raft log. Business refusals travel in each
// entry's Result; only storage failures are returned as errors (and stop the
// replica, as they must).
type StateMachine struct {
	shardID, replicaID uint64
	cfg                Config

	// lessor is set by Open and never replaced: Recover rebuilds it in
	// place after a snapshot restore.
	lessor atomic.Pointer[lease.Lessor]

	// alarms are the raised alarms, loaded with the store.
	alarms alarms
	// auth is the auth state (range 1's is the cluster's), loaded with
	// the store.
	auth authState

	// mu guards store and closed. Update, Open, Recover and Close take it
	// exclusively only to swap or drop the store; Lookup holds it shared, so
	// a read during recovery waits for the restored store instead of seeing a
	// half-written one, and a read after Close gets ErrClosed.
	mu     sync.RWMutex
	store  *mvcc.Store
	closed bool

	// applied is the raft index of the last applied entry, for Status.
	applied atomic.Uint64
	// closedRev is the closed revision: no write at or below it will apply
	// (Command.closed, kept with the store), capped by the locks of
	// cross-range transactions (txn.go); floor is the revision stamps are
	// refused at or below, uncapped (the one kept with the store).
	// Invariant: closedRev <= floor, equal while no lock is held.
	closedRev, floor atomic.Int64
	// locks are the locks of cross-range transactions the range holds
	// (txn.go), published after each batch commits; nil: none.
	locks atomic.Pointer[lockTable]
	// fence is the newest proposer term of a command with stamped writes
	// (Command.term, kept with the store).
	fence atomic.Uint64
	// frozen is the merge this range is frozen for as the right range
	// (merge.go; nil: none), published after the freeze's batch is synced;
	// thawed is the highest merge whose freeze was undone here. Both are
	// kept with the store.
	frozen atomic.Pointer[shardpb.MergeFrozen]
	thawed atomic.Uint64
}

var _ sm.IOnDiskStateMachine = (*StateMachine)(nil)

// ErrClosed is returned by reads against a closed state machine.
var ErrClosed = fmt.Errorf("shard: state machine closed")

// Factory returns dragonboat's constructor for state machines of cfg's range.
func Factory(cfg Config) sm.CreateOnDiskStateMachineFunc {
	return func(shardID, replicaID uint64) sm.IOnDiskStateMachine {
		return &StateMachine{shardID: shardID, replicaID: replicaID, cfg: cfg}
	}
}

func (s *StateMachine) storeOptions(leases mvcc.LeaseChecker) mvcc.Options {
	lo, hi := lease.RecordBounds(s.shardID)
	return mvcc.Options{ID: s.shardID, Span: s.cfg.Span, Leases: leases, Carried: []mvcc.RawSpan{{Lo: lo, Hi: hi}}, EventLog: s.cfg.Events}
}

func (s *StateMachine) now() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now()
	}
	return time.Now()
}

// Lessor returns the shard's lessor, for the primary's duties (expiry,
// checkpoints, renewals) and lease reads. Valid after Open.
func (s *StateMachine) Lessor() *lease.Lessor { return s.lessor.Load() }

// Open loads the store and the lessor and returns the applied index stored
// with their data.
func (s *StateMachine) Open(stop <-chan struct{}) (uint64, error) {
	opts := s.cfg.Lease
	opts.ID = s.shardID
	lessor, err := lease.Open(s.cfg.DB, opts)
	if err != nil {
		return 0, fmt.Errorf("shard %d: open lessor: %w", s.shardID, err)
	}
	s.lessor.Store(lessor)
	store, err := mvcc.Open(s.cfg.DB, s.storeOptions(lessor))
	if err != nil {
		return 0, fmt.Errorf("shard %d: open store: %w", s.shardID, err)
	}
	applied, err := appliedIndex(store)
	if err != nil {
		return 0, err
	}
	if err := s.alarms.load(store); err != nil {
		return 0, err
	}
	if err := s.auth.load(store); err != nil {
		return 0, err
	}
	if err := s.reportPeers(store); err != nil {
		return 0, err
	}
	if err := s.loadLocks(store); err != nil {
		return 0, err
	}
	if err := s.loadClosed(store); err != nil {
		return 0, err
	}
	if err := s.loadMerge(store); err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.store = store
	s.mu.Unlock()
	s.applied.Store(applied)
	return applied, nil
}

func appliedIndex(store *mvcc.Store) (uint64, error) {
	v, err := store.GetMeta(appliedKey)
	if err != nil {
		return 0, fmt.Errorf("shard: read applied index: %w", err)
	}
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("shard: applied index record has %d bytes, want 8", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Update applies a batch of entries as one pebble batch together with the
// new applied index. Each entry's Result.Data is an encoded shardpb.Result.
func (s *StateMachine) Update(entries []sm.Entry) ([]sm.Entry, error) {
	if len(entries) == 0 {
		return entries, nil
	}
	s.mu.RLock()
	store := s.store
	s.mu.RUnlock()
	b := store.NewBatch()
	defer b.Close()
	var events []*mvccpb.Event
	closedBefore, locksBefore := mvcc.Revision(s.closedRev.Load()), s.locks.Load()
	a := &applier{b: b, lessor: s.Lessor(), now: s.now, alarms: &s.alarms, auth: &s.auth, closed: mvcc.Revision(s.floor.Load()), fence: s.fence.Load(),
		published: closedBefore, locks: s.locks.Load(),
		obs: s.cfg.Observer, sharded: s.cfg.Sharded, counting: s.cfg.Sharded && counts(store), whole: wholeSpan(store.Span()) && !store.Resized(),
		self: s.shardID, db: s.cfg.DB, eventLog: s.cfg.Events, frozen: s.frozen.Load(), thawed: s.thawed.Load()}
	for i := range entries {
		a.index = entries[i].Index
		res, err := a.command(entries[i].Cmd)
		if err != nil {
			return nil, fmt.Errorf("shard %d: apply index %d: %w", s.shardID, entries[i].Index, err)
		}
		data, err := proto.Marshal(res)
		if err != nil {
			return nil, fmt.Errorf("shard %d: encode result: %w", s.shardID, err)
		}
		entries[i].Result = sm.Result{Value: uint64(len(res.Responses)), Data: data}
		if s.cfg.OnApply != nil {
			events = append(events, a.events...)
		}
		a.events = a.events[:0:0]
	}
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], entries[len(entries)-1].Index)
	b.SetMeta(appliedKey, idx[:])
	start := time.Now()
	if err := b.Commit(); err != nil {
		return nil, fmt.Errorf("shard %d: commit: %w", s.shardID, err)
	}
	if a.sync {
		// A freeze: the left range's commit reads this range's records
		// from the member's pebble, never replaying this log (merge.go).
		if err := s.cfg.DB.LogData(nil, pebble.Sync); err != nil {
			return nil, fmt.Errorf("shard %d: sync a merge freeze: %w", s.shardID, err)
		}
	}
	s.frozen.Store(a.frozen)
	s.thawed.Store(a.thawed)
	if obs := s.cfg.Observer; obs != nil {
		obs.Committed(time.Since(start))
		a.counts.Splits = len(a.splits)
		obs.Applied(a.counts)
	}
	s.applied.Store(entries[len(entries)-1].Index)
	// The locks first: a read that sees the new closed revision sees the
	// locks that cap it.
	s.locks.Store(a.locks)
	closed := a.capClosed(a.closed)
	s.floor.Store(int64(a.closed))
	s.closedRev.Store(int64(closed))
	s.fence.Store(a.fence)
	if s.cfg.Journal != nil {
		indexes, cmds := make([]uint64, len(entries)), make([][]byte, len(entries))
		for i := range entries {
			indexes[i], cmds[i] = entries[i].Index, entries[i].Cmd
		}
		if err := appendJournal(s.cfg.Journal, indexes, cmds); err != nil {
			return nil, fmt.Errorf("shard %d: journal: %w", s.shardID, err)
		}
	}
	if s.cfg.OnSplit != nil {
		for _, sp := range a.splits {
			s.cfg.OnSplit(sp.child, sp.span, sp.rev, sp.founders)
		}
	}
	if s.cfg.OnMerge != nil {
		for _, m := range a.merges {
			s.cfg.OnMerge(m.right, m.span, m.rev, m.generation)
		}
	}
	if s.cfg.OnApply != nil && (len(events) > 0 || closed > closedBefore || a.locks != locksBefore) {
		s.cfg.OnApply(closed, events)
	}
	if s.cfg.OnPeers != nil {
		for _, m := range a.peers {
			s.cfg.OnPeers(m.Id, m.PeerUrls)
		}
	}
	if h := a.hold; h != nil && s.cfg.OnHold != nil {
		s.cfg.OnHold(ReplicaID(h.Target), time.Unix(0, h.UntilUnixNano), time.Duration(h.MaxNanos))
	}
	return entries, nil
}

// applier applies the entries of one Update into one batch.
type applier struct {
	b      *mvcc.Batch
	alarms *alarms
	auth   *authState
	lessor *lease.Lessor
	now    func() time.Time
	// events are the change events of the entry being applied.
	events []*mvccpb.Event
	// hold is the last TransferHold applied in this batch.
	hold *shardpb.TransferHold
	// peers are the MemberPeers records written in this batch.
	peers []*shardpb.MemberPeers
	// closed is the closed revision as of the entry being applied;
	// cmdClosed includes the entry's own. Both are uncapped (the stale
	// stamp floor): what is published is capClosed(closed).
	closed, cmdClosed mvcc.Revision
	// published is the closed revision published before this batch.
	published mvcc.Revision
	// locks are the locks of cross-range transactions as of the entry
	// being applied (a copy once changed; published after the commit).
	locks *lockTable
	// fence is the newest proposer term of stamped writes; term is the
	// term of the entry being applied.
	fence, term uint64
	// index is the raft index of the entry being applied.
	index uint64
	// stamp is the revision stamp of the request being applied (0: none).
	stamp mvcc.Revision
	// splits are the splits applied in this batch.
	splits []appliedSplit
	// counts are the etcd operations applied in this batch (Observer).
	counts OpCounts
	// obs is Config.Observer: it hears each request's time.
	obs Observer
	// sharded is Config.Sharded; counting is true while the range of
	// sharded mode spans the whole key space (it then numbers revisions
	// itself and its closed revision follows them); a split ends it.
	sharded, counting bool
	// whole is true while the range spans the whole key space, in either
	// mode, and never split or merged: an unstamped request then raises
	// its closed revision to its revision (see Config.Sharded); a split
	// ends it.
	whole bool
	// self is the range's id; db and eventLog are the member's pebble and
	// its event log lock (a merge reads the right range's records).
	self     uint64
	db       *pebble.DB
	eventLog *mvcc.EventLog
	// frozen is the merge the range is frozen for as of the entry being
	// applied (nil: none); thawed the highest merge thawed here; sync:
	// the batch froze the range and must be synced (merge.go).
	frozen *shardpb.MergeFrozen
	thawed uint64
	sync   bool
	// merges are the merges committed in this batch (as the left range);
	// persistClosed: the request just applied raised closed, to persist.
	merges        []appliedMerge
	persistClosed bool
}

// wholeSpan reports whether sp is the whole key space.
func wholeSpan(sp mvcc.Span) bool { return len(sp.Start) == 0 && sp.End == nil }

// counts reports whether a range of sharded mode with store counts its
// revisions: its span is the whole key space and always was (a range
// that split or merged, even back to the whole key space, never counts
// again: mvcc.Store.Resized).
func counts(store *mvcc.Store) bool { return wholeSpan(store.Span()) && !store.Resized() }

// appliedSplit is a split applied in a batch, for Config.OnSplit.
type appliedSplit struct {
	child    RangeID
	span     mvcc.Span
	rev      mvcc.Revision
	founders []*shardpb.ReplicaRef // the command's (nil: not named)
}

// SplitFounders are the child's replicas a split names: its
// founder_replicas, else (splits proposed before replica ids were
// allocated) its founders, each replica's id its member's; nil if it names
// none.
func SplitFounders(op *shardpb.SplitRange) []*shardpb.ReplicaRef {
	if len(op.GetFounderReplicas()) > 0 {
		return op.FounderReplicas
	}
	var out []*shardpb.ReplicaRef
	for _, m := range op.GetFounders() {
		out = append(out, &shardpb.ReplicaRef{Member: m, Id: m})
	}
	return out
}

// command applies every request of one entry. A request the store
// refuses gets an error response and changes nothing; a command that does
// not decode is refused as a whole. Only storage failures return an error.
func (a *applier) command(cmd []byte) (*shardpb.Result, error) {
	var c shardpb.Command
	if err := proto.Unmarshal(cmd, &c); err != nil {
		return &shardpb.Result{Responses: []*shardpb.Response{errResponse(badRequest("shard: undecodable command: %v", err))}}, nil
	}
	res := &shardpb.Result{Responses: make([]*shardpb.Response, len(c.Requests))}
	a.term = c.Term
	// The closed revision of a range that counts is its revision (a write
	// still to come applies above it), raised with each request below; the
	// proposer's closed revision means nothing there.
	counting := a.counting
	cmdClosed := mvcc.Revision(c.Closed)
	if counting {
		cmdClosed = 0
	}
	// Every write at or below the command's closed revision is before it
	// in the log: a compaction in it may reach that far.
	a.b.SetClosed(a.capClosed(max(a.closed, cmdClosed)))
	// A stamp at or below the command's own closed revision is stale too:
	// the leader closed that revision (AdvanceIdle, published to watchers
	// without a log write) while this batch, stamped before, was on its
	// way to being proposed; it is stamped again, above.
	a.cmdClosed = max(a.closed, cmdClosed)
	persist := false // a.closed rose past what the store records
	if c.Term > a.fence && a.frozen == nil {
		a.fence = c.Term
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], c.Term)
		a.b.SetMeta(fenceKey, v[:])
	}
	for i, r := range c.Requests {
		var start time.Time
		if a.obs != nil {
			start = time.Now()
		}
		resp, err := a.request(r)
		if err == nil {
			err = a.track()
		}
		if err != nil {
			e, ok := toError(err)
			if !ok {
				return nil, err
			}
			resp = errResponse(e)
		}
		res.Responses[i] = resp
		if a.obs != nil {
			a.obs.Took(Timing{Took: time.Since(start), applied: r, response: resp})
		}
		if err == nil && a.stamp > a.b.Rev() {
			// A stamped request that wrote nothing (a txn whose compare
			// failed, a delete of nothing) reported its stamp: no stamp at
			// or below it may apply here after it, so it is closed.
			a.closed = max(a.closed, a.stamp)
			a.b.SetClosed(a.capClosed(a.closed))
			a.cmdClosed = max(a.cmdClosed, a.closed)
			persist = true
		}
		if a.persistClosed {
			persist, a.persistClosed = true, false
		}
		if a.frozen == nil && (a.counting || (a.whole && a.stamp == 0)) {
			// The range numbered this request itself (or numbers every
			// one): whatever comes next applies above its revision.
			// Single-group mode's range keeps it across a restart; a
			// counting range's is its revision on open (loadClosed).
			persist = persist || (!a.counting && a.b.Rev() > a.closed)
			a.closed = max(a.closed, a.b.Rev())
			a.b.SetClosed(a.capClosed(a.closed))
			a.cmdClosed = max(a.cmdClosed, a.closed)
		}
	}
	// A frozen range raises no closed revision (its records stay as they
	// were at the freeze, for the left range to read).
	if c := cmdClosed; c > a.closed && a.frozen == nil {
		a.closed = c
		persist = true
	}
	if persist {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(a.closed))
		a.b.SetMeta(closedKey, v[:])
	}
	return res, nil
}

func errResponse(e *Error) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_Error{Error: e.toProto()}}
}

// track takes the events of the request just applied and keeps the
// lessor's attachments in step with them: a put with lease L attaches the
// key to L; a put whose previous version had another lease P, or a delete
// of a key with lease P, detaches it from P.
func (a *applier) track() error {
	evs := a.b.TakeEvents()
	for _, ev := range evs {
		var prev, cur int64
		if ev.PrevKv != nil {
			prev = ev.PrevKv.Lease
		}
		if ev.Type == mvccpb.PUT {
			cur = ev.Kv.Lease
		}
		if prev == cur {
			continue
		}
		key := [][]byte{ev.Kv.Key}
		if prev != 0 {
			// A revoked lease has no attachments left: not found is fine.
			if err := a.lessor.Detach(a.b.Pebble(), lease.ID(prev), key); err != nil && !errors.Is(err, lease.ErrLeaseNotFound) {
				return err
			}
		}
		if cur != 0 {
			if err := a.lessor.Attach(a.b.Pebble(), lease.ID(cur), key); err != nil {
				// The store checked the lease before the put: a missing
				// lease here is a broken invariant, not a refusal.
				return fmt.Errorf("shard: attach %q to lease %d: %v", ev.Kv.Key, cur, err)
			}
		}
	}
	a.events = append(a.events, evs...)
	return nil
}

func (a *applier) request(r *shardpb.Request) (*shardpb.Response, error) {
	b := a.b
	stamp := mvcc.Revision(r.Stamp)
	a.stamp = stamp
	if a.frozen != nil && !passesFreeze(r) {
		return nil, errMerging(a.frozen)
	}
	if stamp != 0 && stamp <= a.cmdClosed {
		return nil, fmt.Errorf("%w: stamp %d, closed revision %d", mvcc.ErrStaleStamp, stamp, a.cmdClosed)
	}
	if stamp != 0 && a.term < a.fence {
		return nil, fmt.Errorf("%w: stamped in term %d, a leader of term %d has written since", mvcc.ErrStaleStamp, a.term, a.fence)
	}
	if stamp != 0 && txnOp(r) {
		return nil, badRequest("shard: a cross-range transaction's request carries no stamp")
	}
	if stamp != 0 && mergeOp(r) {
		return nil, badRequest("shard: a merge's request carries no stamp")
	}
	if stamp == 0 && a.sharded && !a.counting && stamps(r) {
		return nil, fmt.Errorf("%w: a write without a stamp in a range that no longer counts its revisions", mvcc.ErrStaleStamp)
	}
	if err := a.checkAuthInfo(r.AuthInfo); err != nil {
		return nil, err
	}
	for _, sl := range r.ShadowLeases {
		// A lease this shard revoked gets no shadow: the store then
		// refuses a put with it as etcd refuses an unknown lease.
		if err := a.lessor.Shadow(b.Pebble(), lease.ID(sl.Lease), sl.Generation); err != nil && !errors.Is(err, lease.ErrLeaseNotFound) {
			return nil, err
		}
	}
	switch op := r.Op.(type) {
	case *shardpb.Request_Put:
		return etcdOp("put", op.Put, a.put, putResult)
	case *shardpb.Request_DeleteRange:
		return etcdOp("delete range", op.DeleteRange, a.deleteRange, deleteRangeResult)
	case *shardpb.Request_Txn:
		return etcdOp("txn", op.Txn, a.txn, txnResult)
	case *shardpb.Request_Compaction:
		return etcdOp("compaction", op.Compaction, a.compact, compactionResult)
	case *shardpb.Request_LeaseGrant:
		return etcdOp("lease grant", op.LeaseGrant, a.leaseGrant, leaseGrantResult)
	case *shardpb.Request_LeaseRevoke:
		return etcdOp("lease revoke", op.LeaseRevoke, a.leaseRevoke, leaseRevokeResult)
	case *shardpb.Request_LeaseRegister:
		if op.LeaseRegister == nil {
			return nil, badRequest("shard: lease registration without its fields")
		}
		if err := a.lessor.Register(b.Pebble(), lease.ID(op.LeaseRegister.Lease), op.LeaseRegister.Shard); err != nil {
			return nil, err
		}
		// The entry's raft index: each registration's is newer.
		return &shardpb.Response{Result: &shardpb.Response_LeaseRegistered{LeaseRegistered: a.index}}, nil
	case *shardpb.Request_LeaseUnregister:
		if op.LeaseUnregister == nil {
			return nil, badRequest("shard: lease registration without its fields")
		}
		if err := a.lessor.Unregister(b.Pebble(), lease.ID(op.LeaseUnregister.Lease), op.LeaseUnregister.Shard); err != nil {
			return nil, err
		}
		return &shardpb.Response{Result: &shardpb.Response_LeaseShard{LeaseShard: true}}, nil
	case *shardpb.Request_ShadowRevoke:
		resp, err := a.revoke(func() ([][]byte, error) {
			if op.ShadowRevoke == nil {
				return nil, badRequest("shard: shadow revoke without its fields")
			}
			if err := a.leaseLocked(op.ShadowRevoke.Lease); err != nil {
				return nil, err
			}
			return a.lessor.RevokeShadow(b.Pebble(), lease.ID(op.ShadowRevoke.Lease), op.ShadowRevoke.Generation)
		})
		return encoded(shadowRevokeResult, resp, err)
	case *shardpb.Request_Split:
		if op.Split == nil || op.Split.Child == 0 {
			return nil, badRequest("shard: split without its fields")
		}
		if !a.locks.empty() {
			// The split waits (its proposer retries) until the range's
			// transactions are resolved.
			return nil, fmt.Errorf("%w: a split of a range holding %d locks", ErrLocked, len(a.locks.byID))
		}
		if a.counting && mvcc.Revision(op.Split.Above) <= b.Rev() {
			// Every revision the oracle hands out after the split must
			// exceed those this range counted: the split carries one.
			return nil, fmt.Errorf("%w: a split at revision %d needs an oracle revision above it, has %d", mvcc.ErrStaleStamp, b.Rev(), op.Split.Above)
		}
		right, err := b.SplitOff(op.Split.Key, op.Split.Child)
		if err != nil {
			return nil, err
		}
		if _, err := a.lessor.SplitOff(b.Pebble(), right.Start, right.End, op.Split.Child); err != nil {
			return nil, err
		}
		if err := a.splitRecords(op.Split.Child, right); err != nil {
			return nil, err
		}
		// The child starts closed where the parent is: writes stamped at or
		// below it were the parent's.
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(a.closed))
		b.SetMetaFor(op.Split.Child, closedKey, v[:])
		if err := a.inheritAuthFence(op.Split.Child); err != nil {
			return nil, err
		}
		a.splits = append(a.splits, appliedSplit{child: RangeID(op.Split.Child), span: right, rev: b.Rev(), founders: SplitFounders(op.Split)})
		if a.counting {
			// The range stops counting: its closed revision, its
			// revision so far, is kept, and every write from now on is
			// stamped by the oracle above op.Split.Above.
			a.counting = false
			b.SetMeta(closedKey, v[:])
		}
		a.whole = false
		return &shardpb.Response{Result: &shardpb.Response_Split{Split: true}}, nil
	case *shardpb.Request_LeaseCheckpoint:
		return etcdOp("lease checkpoint", op.LeaseCheckpoint, a.leaseCheckpoint, leaseCheckpointResult)
	case *shardpb.Request_Alarm:
		return etcdOp("alarm", op.Alarm, a.alarm, alarmResult)
	case *shardpb.Request_Auth:
		return a.applyAuth(op.Auth)
	case *shardpb.Request_AuthFence:
		return a.applyAuthFence(op.AuthFence)
	case *shardpb.Request_TxnPrepare:
		return a.txnPrepare(op.TxnPrepare)
	case *shardpb.Request_TxnCommit:
		return a.txnCommit(op.TxnCommit)
	case *shardpb.Request_TxnAbort:
		return a.txnAbort(op.TxnAbort)
	case *shardpb.Request_TxnDecide:
		return a.txnDecide(op.TxnDecide)
	case *shardpb.Request_TxnResolve:
		return a.txnResolve(op.TxnResolve)
	case *shardpb.Request_TxnForget:
		return a.txnForget(op.TxnForget)
	case *shardpb.Request_MergeFreeze:
		return a.mergeFreeze(op.MergeFreeze)
	case *shardpb.Request_MergeThaw:
		return a.mergeThaw(op.MergeThaw)
	case *shardpb.Request_MergeCommit:
		return a.mergeCommit(op.MergeCommit)
	case *shardpb.Request_MergeAbort:
		return a.mergeAbort(op.MergeAbort)
	case *shardpb.Request_MemberAttrs:
		var m pb.Member
		if err := proto.Unmarshal(op.MemberAttrs, &m); err != nil || m.ID == 0 {
			return nil, badRequest("shard: undecodable member attributes: %v", err)
		}
		b.SetMeta(memberKey(m.ID), op.MemberAttrs)
		return &shardpb.Response{Result: &shardpb.Response_MemberAttrs{MemberAttrs: true}}, nil
	case *shardpb.Request_TransferHold:
		if op.TransferHold == nil {
			return nil, badRequest("shard: transfer hold without its fields")
		}
		a.hold = op.TransferHold
		return &shardpb.Response{Result: &shardpb.Response_TransferHold{TransferHold: true}}, nil
	case *shardpb.Request_MemberPeers:
		m := op.MemberPeers
		if m == nil || m.Id == 0 || len(m.PeerUrls) == 0 {
			return nil, badRequest("shard: member peer URLs without a member or URLs")
		}
		if m.IfAbsent {
			if _, ok, err := b.GetMeta(peersKey(m.Id)); err != nil {
				return nil, err
			} else if ok {
				return &shardpb.Response{Result: &shardpb.Response_MemberPeers{MemberPeers: false}}, nil
			}
		}
		rec := &shardpb.MemberPeers{Id: m.Id, PeerUrls: m.PeerUrls}
		data, err := proto.Marshal(rec)
		if err != nil {
			return nil, err
		}
		b.SetMeta(peersKey(m.Id), data)
		a.peers = append(a.peers, rec)
		return &shardpb.Response{Result: &shardpb.Response_MemberPeers{MemberPeers: true}}, nil
	default:
		return nil, badRequest("shard: request without an operation")
	}
}

// AppliedIndex is the raft index of the last entry applied here.
func (s *StateMachine) AppliedIndex() uint64 { return s.applied.Load() }

// Lookup serves a read query (the *Query types below), as dragonboat's
// reads hand it over; Replica's typed reads (reads.go) are how the rest of
// Cairn asks. It runs concurrently with Update and waits out a snapshot
// recovery.
func (s *StateMachine) Lookup(query interface{}) (interface{}, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.store == nil {
		return nil, ErrClosed
	}
	var (
		resp any
		err  error
	)
	if f := s.frozen.Load(); f != nil {
		switch query.(type) {
		case RangeQuery, TxnQuery:
			// A frozen range serves no reads: the left range serves its
			// keys once it has absorbed them (docs/plan-merge.md).
			e, _ := toError(errMerging(f))
			return nil, e
		}
	}
	if t := s.locks.Load(); !t.empty() {
		if err := t.checkReadQuery(query, max(s.store.Rev(), mvcc.Revision(s.closedRev.Load()), floorOf(query))); err != nil {
			e, _ := toError(err)
			return nil, e
		}
	}
	switch q := query.(type) {
	case RangeQuery:
		start := time.Now()
		var rr *pb.RangeResponse
		rr, err = s.store.RangeAt(q.Req, max(q.Floor, mvcc.Revision(s.closedRev.Load())))
		resp = rr
		if obs := s.cfg.Observer; obs != nil {
			obs.Read(OpCounts{Ranges: 1})
			obs.Took(Timing{Took: time.Since(start), rangeReq: q.Req, rangeRes: rr, err: err})
		}
	case TxnQuery:
		start := time.Now()
		var tr *pb.TxnResponse
		tr, err = s.store.ReadTxnAt(q.Req, max(q.Floor, mvcc.Revision(s.closedRev.Load())))
		resp = tr
		if obs := s.cfg.Observer; obs != nil {
			if err == nil {
				obs.Read(txnCounts(q.Req, tr))
			}
			obs.Took(Timing{Took: time.Since(start), txnReq: q.Req, txnRes: tr, err: err})
		}
	case StatusQuery:
		st := Status{Revision: s.store.Rev(), CompactRevision: s.store.CompactRev(), AppliedIndex: s.applied.Load(),
			Closed: mvcc.Revision(s.closedRev.Load()), Fence: s.fence.Load(), Counting: s.cfg.Sharded && counts(s.store)}
		if f := s.frozen.Load(); f != nil {
			st.Frozen, st.Merge = true, f.Merge
		}
		if t := s.locks.Load(); !t.empty() {
			st.Locks, st.LockCap = len(t.byID), t.capRev
		}
		resp = st
	case LocksQuery:
		resp = s.locks.Load().sorted()
	case TxnRecordQuery:
		var v []byte
		rec := &shardpb.TxnRecord{Id: q.ID}
		if v, err = s.store.GetMeta(recordKey(q.ID)); err == nil && v != nil {
			err = proto.Unmarshal(v, rec)
		}
		resp = rec
	case HashQuery:
		var hr HashResult
		hr.Hash, hr.Revision, hr.CompactRevision, err = s.store.HashKV(q.Rev)
		resp = hr
	case AlarmsQuery:
		resp = s.alarms.list(pb.AlarmType_NONE)
	case AuthQuery:
		resp = s.auth.get()
	case ShadowKeysQuery:
		resp, err = s.Lessor().ShadowKeys(lease.ID(q.ID))
	case RegisteredQuery:
		resp, err = s.Lessor().Registered(lease.ID(q.ID))
	case MembersQuery:
		attrs := map[uint64]*pb.Member{}
		err = s.store.ScanMeta(membersPrefix, func(_ string, v []byte) {
			var m pb.Member
			if proto.Unmarshal(v, &m) == nil {
				attrs[m.ID] = &m
			}
		})
		if err == nil {
			err = s.store.ScanMeta(peersPrefix, func(_ string, v []byte) {
				var p shardpb.MemberPeers
				if proto.Unmarshal(v, &p) != nil {
					return
				}
				m := attrs[p.Id]
				if m == nil {
					m = &pb.Member{ID: p.Id}
					attrs[p.Id] = m
				}
				m.PeerURLs = p.PeerUrls
			})
		}
		resp = attrs
	default:
		return nil, fmt.Errorf("shard: unknown query type %T", query)
	}
	if err != nil {
		if e, ok := toError(err); ok {
			return nil, e
		}
		return nil, err
	}
	return resp, nil
}

// Sync makes every applied entry durable: pebble's WAL is fsynced (Update
// commits without sync because the raft log is the durable record until then).
func (s *StateMachine) Sync() error {
	start := time.Now()
	err := s.cfg.DB.LogData(nil, pebble.Sync)
	if obs := s.cfg.Observer; obs != nil && err == nil {
		obs.Synced(time.Since(start))
	}
	return err
}

// Keys counts the range's live keys at its current revision
// (mvcc.Store.Keys: a scan of the range), for the node's range statistics;
// it is not a read any Observer counts.
func (s *StateMachine) Keys() (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.store == nil {
		return 0, ErrClosed
	}
	return s.store.Keys()
}

// DiskUsage estimates the bytes the range's versions take on disk
// (mvcc.Store.DiskUsage), for the node's range statistics.
func (s *StateMachine) DiskUsage() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.store == nil {
		return 0, ErrClosed
	}
	return s.store.DiskUsage()
}

// PrepareSnapshot pins a point-in-time view of this range.
func (s *StateMachine) PrepareSnapshot() (interface{}, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.store.NewSnapshot(), nil
}

// SaveSnapshot streams this range's key span and internal records.
func (s *StateMachine) SaveSnapshot(ctx interface{}, w io.Writer, stop <-chan struct{}) error {
	snap := ctx.(*mvcc.Snapshot)
	defer snap.Close()
	_, err := snap.WriteTo(w)
	return err
}

// RecoverFromSnapshot replaces exactly this range's span with the stream.
// The stream is read and checked without blocking reads; only the final
// atomic commit holds the lock, so a read sees the old state or the new.
// A range frozen for a merge keeps its state (skipRestore) but for the
// applied index, if the image is of the same freeze or the left range
// absorbed it here.
func (s *StateMachine) RecoverFromSnapshot(r io.Reader, stop <-chan struct{}) error {
	s.mu.RLock()
	store := s.store
	s.mu.RUnlock()
	p, err := store.ReadSnapshot(r)
	if err != nil {
		return fmt.Errorf("shard %d: recover from snapshot: %w", s.shardID, err)
	}
	defer p.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.frozen.Load() != nil {
		frozen, _ := p.Meta(frozenKey)
		if skip, err := s.skipRestore(frozen); err != nil {
			return err
		} else if skip {
			// A frozen range's image is its state; the left range may
			// own its keys here already (merge.go, skipRestore).
			applied, _ := p.Meta(appliedKey)
			if len(applied) != 8 {
				return nil
			}
			return s.keepApplied(binary.BigEndian.Uint64(applied))
		}
	}
	if err := p.Apply(); err != nil {
		return fmt.Errorf("shard %d: recover from snapshot: %w", s.shardID, err)
	}
	if err := s.alarms.load(s.store); err != nil {
		return fmt.Errorf("shard %d: recover alarms from snapshot: %w", s.shardID, err)
	}
	if err := s.auth.load(s.store); err != nil {
		return fmt.Errorf("shard %d: recover auth state from snapshot: %w", s.shardID, err)
	}
	if err := s.Lessor().Recover(s.cfg.DB); err != nil {
		return fmt.Errorf("shard %d: recover lessor from snapshot: %w", s.shardID, err)
	}
	if err := s.loadLocks(s.store); err != nil {
		return err
	}
	if err := s.loadClosed(s.store); err != nil {
		return err
	}
	if err := s.loadMerge(s.store); err != nil {
		return err
	}
	if err := s.reportPeers(s.store); err != nil {
		return err
	}
	// The snapshot's applied index is this replica's now: a replica that
	// joined from a snapshot reports it (Status) before it applies an
	// entry, so a move sees it caught up on an idle range too.
	applied, err := appliedIndex(s.store)
	if err != nil {
		return fmt.Errorf("shard %d: recover from snapshot: %w", s.shardID, err)
	}
	s.applied.Store(applied)
	if s.cfg.onRestored != nil {
		s.cfg.onRestored(s.store.Rev(), s.locks.Load().limit())
	}
	if s.cfg.OnRecover != nil {
		s.cfg.OnRecover()
	}
	return nil
}

// closedKey names the internal record of the closed revision.
const closedKey = "closed"

// fenceKey names the internal record of the proposer-term fence.
const fenceKey = "fence"

func (s *StateMachine) loadClosed(store *mvcc.Store) error {
	for _, m := range []struct {
		key string
		set func(uint64)
	}{
		{closedKey, func(v uint64) { s.floor.Store(int64(v)) }},
		{fenceKey, s.fence.Store},
	} {
		v, err := store.GetMeta(m.key)
		if err != nil {
			return fmt.Errorf("shard %d: read %s: %w", s.shardID, m.key, err)
		}
		var x uint64
		if len(v) == 8 {
			x = binary.BigEndian.Uint64(v)
		}
		m.set(x)
	}
	if s.cfg.Sharded && counts(store) {
		// A range that counts is closed at its revision (a data directory
		// from before ranges counted may hold an oracle's revision here).
		s.floor.Store(int64(store.Rev()))
	}
	s.closedRev.Store(int64(min(mvcc.Revision(s.floor.Load()), s.locks.Load().limit())))
	return nil
}

// LockLimit is the lowest cap of the locks of cross-range transactions
// the range holds, as of the last batch applied (watch.NoHold: none): the
// revision its watch hub may not release events above (Range.Start).
func (s *StateMachine) LockLimit() mvcc.Revision { return s.locks.Load().limit() }

// loadLocks reads the locks of cross-range transactions the store holds.
func (s *StateMachine) loadLocks(store *mvcc.Store) error {
	t, err := loadLocks(store)
	if err != nil {
		return fmt.Errorf("shard %d: read locks: %w", s.shardID, err)
	}
	s.locks.Store(t)
	return nil
}

// floorOf is the floor a read query names (0: none).
func floorOf(query any) mvcc.Revision {
	switch q := query.(type) {
	case RangeQuery:
		return q.Floor
	case TxnQuery:
		return q.Floor
	}
	return 0
}

// reportPeers passes every recorded member's peer URLs to OnPeers.
func (s *StateMachine) reportPeers(store *mvcc.Store) error {
	if s.cfg.OnPeers == nil {
		return nil
	}
	err := store.ScanMeta(peersPrefix, func(_ string, v []byte) {
		var m shardpb.MemberPeers
		if proto.Unmarshal(v, &m) == nil {
			s.cfg.OnPeers(m.Id, m.PeerUrls)
		}
	})
	if err != nil {
		return fmt.Errorf("shard %d: read member peer URLs: %w", s.shardID, err)
	}
	return nil
}

// Close drops the store; later reads get ErrClosed. The pebble DB is the
// node's and stays open.
func (s *StateMachine) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// RangeQuery asks Lookup for a Range.
//
// Floor, if set, is a revision the caller knows this shard's closed
// revision has reached (its leader's client published it, see
// Replica.ReadAt): the read may be at any revision up to it.
type RangeQuery struct {
	Req   *pb.RangeRequest
	Floor mvcc.Revision
}

// TxnQuery asks Lookup for a read-only Txn; Floor as RangeQuery's.
type TxnQuery struct {
	Req   *pb.TxnRequest
	Floor mvcc.Revision
}

// HashQuery asks Lookup for the hash of the store's history up to Rev (0:
// the current revision), answered with a HashResult (mvcc.Store.HashKV).
type HashQuery struct{ Rev mvcc.Revision }

// HashResult answers a HashQuery.
type HashResult struct {
	Hash                      uint32
	Revision, CompactRevision mvcc.Revision
}

// AlarmsQuery asks Lookup for the raised alarms, a []*pb.AlarmMember.
type AlarmsQuery struct{}

// RegisteredQuery asks Lookup, at a lease's home, for the shards
// registered as holding keys of lease ID whose revoke there is not done, a
// []uint64 (sharded mode).
type RegisteredQuery struct{ ID int64 }

// ShadowKeysQuery asks Lookup for the keys attached here to lease ID,
// homed in another shard, a [][]byte (sharded mode).
type ShadowKeysQuery struct{ ID int64 }

// MembersQuery asks Lookup for the published member attributes, a
// map[uint64]*pb.Member by member id (name and client URLs, and the peer
// URLs recorded for it).
type MembersQuery struct{}

// membersPrefix names the internal records of member attributes.
const membersPrefix = "member/"

func memberKey(id uint64) string { return fmt.Sprintf("%s%016x", membersPrefix, id) }

// peersPrefix names the internal records of members' peer URLs.
const peersPrefix = "peers/"

func peersKey(id uint64) string { return fmt.Sprintf("%s%016x", peersPrefix, id) }

// StatusQuery asks Lookup for the store's revisions.
type StatusQuery struct{}

// Status is the answer to a StatusQuery.
type Status struct {
	Revision        mvcc.Revision
	CompactRevision mvcc.Revision
	// AppliedIndex is the raft index of the last applied entry.
	AppliedIndex uint64
	// Closed is the closed revision: no write at or below it will apply
	// here any more (a range spanning the whole key space: at least its
	// revision, in either mode).
	Closed mvcc.Revision
	// Fence is the newest raft term a stamped command was proposed in.
	Fence uint64
	// Counting: the range numbers its revisions itself (Config.Sharded,
	// before its first split); false in single-group mode.
	Counting bool
	// Locks is how many cross-range transactions hold locks here;
	// LockCap, with any, is the lowest of their caps, which Closed stays
	// at or below until they are resolved.
	Locks   int
	LockCap mvcc.Revision
	// Frozen: the range is frozen for merge Merge as its right range
	// (docs/plan-merge.md): it serves and changes nothing, and its closed
	// revision no longer rises.
	Frozen bool
	Merge  uint64
}

// Events reads the store's change history (see mvcc.Store.Events) for
// watchers catching up; it is safe to call concurrently with Update.
func (s *StateMachine) Events(from, to mvcc.Revision, fn func(rev mvcc.Revision, evs []*mvccpb.Event) bool) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.store == nil {
		return ErrClosed
	}
	return s.store.Events(from, to, fn)
}

// Counting reports whether the range numbers its revisions itself (see
// Config.Sharded): a proposer then leaves its writes unstamped. False once
// a split has applied, and in single-group mode.
func (s *StateMachine) Counting() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cfg.Sharded && s.store != nil && counts(s.store)
}

// Rev returns the store's revision (0 if not open).
func (s *StateMachine) Rev() mvcc.Revision {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.store == nil {
		return 0
	}
	return s.store.Rev()
}

// CompactRev returns the store's compacted revision (-1 if none or closed).
func (s *StateMachine) CompactRev() mvcc.Revision {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.store == nil {
		return -1
	}
	return s.store.CompactRev()
}
