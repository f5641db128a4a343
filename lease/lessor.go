package lease

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// ID identifies a lease, cluster-wide, as etcd's LeaseID.
type ID int64

// NoLease is the absence of a lease (a key put without one).
const NoLease ID = 0

// MaxTTL is the largest TTL a lease may be granted, in seconds (etcd's
// MaxLeaseTTL).
const MaxTTL = 9_000_000_000

// Defaults of Options.
const (
	// DefaultMinTTL is etcd's minimum TTL with its default timing (10
	// election ticks of 100 ms): MinTTLFor(10, 100*time.Millisecond).
	DefaultMinTTL = 2
	// DefaultCheckpointInterval is etcd's lease checkpoint interval.
	DefaultCheckpointInterval = 5 * time.Minute
	// DefaultRetryInterval is how long Expired waits before handing out a
	// lease again whose revoke has not been applied (etcd's).
	DefaultRetryInterval = 3 * time.Second
)

// MinTTLFor returns the minimum TTL etcd grants with the given raft timing:
// ceil(1.5 election timeouts), in seconds, so a lease cannot expire during
// a leader election.
func MinTTLFor(electionTicks int, heartbeat time.Duration) int64 {
	d := time.Duration(3*electionTicks/2) * heartbeat
	return int64(math.Ceil(d.Seconds()))
}

// Options configure a Lessor.
type Options struct {
	// ID namespaces the lessor's records (the shard id, as mvcc's).
	ID uint64
	// MinTTL raises shorter TTLs, at Grant and at recovery (etcd's
	// minLeaseTTL); 0 means DefaultMinTTL.
	MinTTL int64
	// CheckpointInterval is how often the primary checkpoints the remaining
	// TTL of a lease whose TTL is longer than it; 0 means the default.
	CheckpointInterval time.Duration
	// RetryInterval is how long an expired lease handed out by Expired waits
	// before it is handed out again; 0 means the default.
	RetryInterval time.Duration
}

func (o Options) withDefaults() Options {
	if o.MinTTL <= 0 {
		o.MinTTL = DefaultMinTTL
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	return o
}

// Lease is the replicated state of one lease.
type Lease struct {
	ID ID
	// TTL is the granted TTL in seconds, after raising to the minimum.
	TTL int64
	// RemainingTTL is the last checkpointed remaining TTL in seconds; 0
	// means none (the lease has its full TTL at a leader change).
	RemainingTTL int64
}

// Status answers TimeToLive.
type Status struct {
	ID         ID
	GrantedTTL int64
	// TTL is the remaining time in whole seconds (truncated, as etcd); 0
	// for a lease that has expired and waits for its revoke.
	TTL int64
	// Keys are the attached keys in key order, when asked for.
	Keys [][]byte
}

// Checkpoint is a remaining TTL the primary asks to record through raft.
type Checkpoint struct {
	ID           ID
	RemainingTTL int64
}

// lease is one lease in memory.
//
// Invariant: expiry, at and slot are meaningful only on the primary; a
// replica that is not primary has every slot -1.
// Invariant: at[byDeadline] is expiry, or (once Expired handed the lease
// out) the time to hand it out again; either way at[byDeadline] >= expiry.
type lease struct {
	id        ID
	ttl       int64
	remaining int64
	expiry    time.Time
	at        [2]time.Time
	slot      [2]int
}

func (le *lease) public() Lease { return Lease{ID: le.id, TTL: le.ttl, RemainingTTL: le.remaining} }

// effectiveTTL is what a new primary starts the lease with: the checkpoint
// if there is one, else the full TTL.
func (le *lease) effectiveTTL() int64 {
	if le.remaining > 0 {
		return le.remaining
	}
	return le.ttl
}

func seconds(s int64) time.Duration { return time.Duration(s) * time.Second }

// Lessor is the lessor of one shard. See doc.go.
type Lessor struct {
	db   *pebble.DB
	opts Options

	// mu guards the in-memory state. It is never held across a pebble read.
	mu struct {
		sync.Mutex
		leases  map[ID]*lease
		primary bool
		// expiries and checkpoints are empty unless primary.
		// Invariant: every lease is in expiries iff primary.
		// Invariant: a lease is in checkpoints only if primary and its TTL
		// exceeds the checkpoint interval.
		expiries    timeHeap
		checkpoints timeHeap
		// shadows and tombs: leases homed in other shards whose keys may
		// attach here, and those revoked (remote.go).
		shadows, tombs map[ID]uint64 // by the generation they hold
	}
}

// Open loads the lessor of opts.ID from db. It starts as a replica that is
// not primary: no lease expires until Promote.
func Open(db *pebble.DB, opts Options) (*Lessor, error) {
	l := &Lessor{opts: opts.withDefaults()}
	l.mu.expiries.which = byDeadline
	l.mu.checkpoints.which = byCheckpoint
	if err := l.Recover(db); err != nil {
		return nil, err
	}
	return l, nil
}

// Recover rebuilds the lessor from db (after a restart, or after the shard
// restored a snapshot into db) and demotes it. It replaces the in-memory
// state only if reading db succeeds.
func (l *Lessor) Recover(db *pebble.DB) error {
	lo, hi := recordBounds(l.opts.ID)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("lease: new iterator: %w", err)
	}
	defer it.Close()
	leases := make(map[ID]*lease)
	for it.First(); it.Valid(); it.Next() {
		id, err := decodeRecordKey(l.opts.ID, it.Key())
		if err != nil {
			return err
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("lease: read lease %d: %w", id, err)
		}
		r, err := decodeRecord(v)
		if err != nil {
			return fmt.Errorf("lease %d: %w", id, err)
		}
		// As etcd: a minimum raised since the grant applies to old leases
		// too (in memory; the record changes at the next checkpoint).
		r.ttl = max(r.ttl, l.opts.MinTTL)
		leases[id] = &lease{id: id, ttl: r.ttl, remaining: r.remaining, slot: [2]int{-1, -1}}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("lease: scan lease records: %w", err)
	}
	shadows, err := scanIDs(db, l.opts.ID, subShadow)
	if err != nil {
		return err
	}
	tombs, err := scanIDs(db, l.opts.ID, subTomb)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.db = db
	l.mu.leases = leases
	l.mu.shadows, l.mu.tombs = shadows, tombs
	l.demoteLocked()
	return nil
}

// Grant grants lease id with ttl seconds, raised to the minimum TTL, and
// writes its record into b. On the primary the lease expires at now+TTL;
// elsewhere now is unused. id 0 is refused with ErrLeaseNotFound (the
// caller picks an id for a request without one), an existing id with
// ErrLeaseExists, a TTL above MaxTTL with ErrLeaseTTLTooLarge.
func (l *Lessor) Grant(b *pebble.Batch, id ID, ttl int64, now time.Time) (Lease, error) {
	if id == NoLease {
		return Lease{}, ErrLeaseNotFound
	}
	if ttl > MaxTTL {
		return Lease{}, fmt.Errorf("%w: %d seconds (max %d)", ErrLeaseTTLTooLarge, ttl, int64(MaxTTL))
	}
	l.mu.Lock()
	db := l.db
	l.mu.Unlock()
	if db != nil {
		// An id whose revoke is still under way elsewhere (sharded mode)
		// stays taken until it is done.
		if _, pending, err := l.Registrations(db, id); err != nil {
			return Lease{}, err
		} else if pending {
			return Lease{}, fmt.Errorf("%w: %d", ErrLeaseExists, id)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.mu.leases[id]; ok {
		return Lease{}, fmt.Errorf("%w: %d", ErrLeaseExists, id)
	}
	le := &lease{id: id, ttl: max(ttl, l.opts.MinTTL), slot: [2]int{-1, -1}}
	if err := b.Set(recordKey(l.opts.ID, id), encodeRecord(record{ttl: le.ttl}), nil); err != nil {
		return Lease{}, fmt.Errorf("lease: write lease %d: %w", id, err)
	}
	l.mu.leases[id] = le
	if l.mu.primary {
		l.startLocked(le, now.Add(seconds(le.ttl)), now)
	}
	return le.public(), nil
}

// startLocked sets le's expiry and schedules its checkpoints.
// REQUIRES: l.mu, primary.
func (l *Lessor) startLocked(le *lease, expiry, now time.Time) {
	le.expiry = expiry
	l.mu.expiries.set(le, expiry)
	if seconds(le.ttl) > l.opts.CheckpointInterval {
		l.mu.checkpoints.set(le, now.Add(l.opts.CheckpointInterval))
	}
}

// Revoke removes lease id, its record and its attachments, and returns the
// attached keys in key order: the caller deletes them in the store, at one
// revision, in the same batch. b must be indexed so that attachments
// written earlier in it are seen. Unknown id: ErrLeaseNotFound.
func (l *Lessor) Revoke(b *pebble.Batch, id ID) ([][]byte, error) {
	if _, ok := l.Lookup(id); !ok {
		return nil, fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	if !b.Indexed() {
		return nil, ErrBatchNotIndexed
	}
	lo, hi := attachBounds(l.opts.ID, id)
	keys, err := scanKeys(b, lo, hi)
	if err != nil {
		return nil, err
	}
	// Point deletes, not one DeleteRange: every range tombstone in a batch
	// or memtable is re-fragmented by each new iterator, which made a
	// revoke storm quadratic (13 s for 100k leases in 1,000-lease batches).
	for _, k := range keys {
		if err := b.Delete(append(lo[:len(lo):len(lo)], k...), nil); err != nil {
			return nil, fmt.Errorf("lease: detach %q from %d: %w", k, id, err)
		}
	}
	if err := b.Delete(recordKey(l.opts.ID, id), nil); err != nil {
		return nil, fmt.Errorf("lease: delete lease %d: %w", id, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if le := l.mu.leases[id]; le != nil {
		l.mu.expiries.remove(le)
		l.mu.checkpoints.remove(le)
		delete(l.mu.leases, id)
	}
	return keys, nil
}

// reader is what keys are read from: the DB or an indexed batch.
type reader interface {
	NewIter(*pebble.IterOptions) (*pebble.Iterator, error)
}

// scanKeys returns the attached keys in [lo, hi), all sharing lo's
// fixed-width prefix.
func scanKeys(r reader, lo, hi []byte) ([][]byte, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("lease: new iterator: %w", err)
	}
	defer it.Close()
	var keys [][]byte
	for it.First(); it.Valid(); it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()[len(lo):]...))
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("lease: scan attachments: %w", err)
	}
	return keys, nil
}

// Attach records that keys are attached to lease id (a put with the
// lease). Attaching a key twice is harmless. Unknown id: ErrLeaseNotFound,
// and nothing is written.
func (l *Lessor) Attach(b *pebble.Batch, id ID, keys [][]byte) error {
	if !l.LeaseExists(int64(id)) {
		return fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	for _, k := range keys {
		if err := b.Set(attachKey(l.opts.ID, id, k), nil, nil); err != nil {
			return fmt.Errorf("lease: attach %q to %d: %w", k, id, err)
		}
	}
	return nil
}

// Detach removes the attachment of keys to lease id (the key was deleted
// or put with another lease). Detaching a key that is not attached is
// harmless. Unknown id: ErrLeaseNotFound, and nothing is written (as etcd,
// the caller may ignore it: a revoked lease has no attachments left).
func (l *Lessor) Detach(b *pebble.Batch, id ID, keys [][]byte) error {
	if !l.LeaseExists(int64(id)) {
		return fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	for _, k := range keys {
		if err := b.Delete(attachKey(l.opts.ID, id, k), nil); err != nil {
			return fmt.Errorf("lease: detach %q from %d: %w", k, id, err)
		}
	}
	return nil
}

// Checkpoint records the remaining TTL of lease id (0 clears it), which a
// future primary starts the lease with. The expiry on the current primary
// does not change. An unknown id is ignored (the lease was revoked after
// the checkpoint was proposed), as in etcd. A negative remaining TTL is
// taken as 0.
func (l *Lessor) Checkpoint(b *pebble.Batch, id ID, remaining int64) error {
	remaining = max(remaining, 0)
	l.mu.Lock()
	defer l.mu.Unlock()
	le := l.mu.leases[id]
	if le == nil || le.remaining == remaining {
		return nil
	}
	if err := b.Set(recordKey(l.opts.ID, id), encodeRecord(record{ttl: le.ttl, remaining: remaining}), nil); err != nil {
		return fmt.Errorf("lease: write lease %d: %w", id, err)
	}
	le.remaining = remaining
	return nil
}

// Renew restarts lease id's full TTL from now, on the primary, and returns
// the TTL. Nothing is written: renewals stay off the raft log. If the
// lease carries a checkpoint, clear is true and the caller must propose
// Checkpoint(id, 0) and answer the client only once it has applied, as
// etcd does; else a leader change would start the lease from the stale
// checkpoint. Refusals: ErrNotPrimary, ErrLeaseNotFound, ErrLeaseExpired
// (the lease ran out and waits for its revoke).
func (l *Lessor) Renew(id ID, now time.Time) (ttl int64, clear bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.mu.primary {
		return 0, false, ErrNotPrimary
	}
	le := l.mu.leases[id]
	if le == nil {
		return 0, false, fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	if !now.Before(le.expiry) {
		return 0, false, fmt.Errorf("%w: %d", ErrLeaseExpired, id)
	}
	le.expiry = now.Add(seconds(le.ttl))
	l.mu.expiries.set(le, le.expiry)
	return le.ttl, le.remaining > 0, nil
}

// Lookup returns lease id's replicated state.
func (l *Lessor) Lookup(id ID) (Lease, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	le := l.mu.leases[id]
	if le == nil {
		return Lease{}, false
	}
	return le.public(), true
}

// LeaseExists reports whether lease id is granted and not revoked (an
// expired lease exists until its revoke applies), or shadowed here. It
// makes the Lessor an mvcc.LeaseChecker.
func (l *Lessor) LeaseExists(id int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.mu.leases[ID(id)]
	if !ok {
		_, ok = l.mu.shadows[ID(id)]
	}
	return ok
}

// TimeToLive answers etcd's LeaseTimeToLive on the primary: the granted
// TTL, the remaining TTL at now and, if withKeys, the attached keys as
// committed in pebble. Refusals: ErrNotPrimary, ErrLeaseNotFound (the
// router answers TTL -1, as etcd).
func (l *Lessor) TimeToLive(id ID, now time.Time, withKeys bool) (Status, error) {
	l.mu.Lock()
	if !l.mu.primary {
		l.mu.Unlock()
		return Status{}, ErrNotPrimary
	}
	le := l.mu.leases[id]
	if le == nil {
		l.mu.Unlock()
		return Status{}, fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	st := Status{ID: id, GrantedTTL: le.ttl, TTL: max(int64(le.expiry.Sub(now)/time.Second), 0)}
	db := l.db
	l.mu.Unlock()
	if withKeys {
		lo, hi := attachBounds(l.opts.ID, id)
		keys, err := scanKeys(db, lo, hi)
		if err != nil {
			return Status{}, err
		}
		st.Keys = keys
	}
	return st, nil
}

// Leases lists every lease: on the primary by expiry, soonest first (the
// order etcd lists them in), ties and elsewhere by id.
func (l *Lessor) Leases() []Lease {
	l.mu.Lock()
	ls := make([]*lease, 0, len(l.mu.leases))
	for _, le := range l.mu.leases {
		ls = append(ls, le)
	}
	primary := l.mu.primary
	slices.SortFunc(ls, func(a, b *lease) int {
		if primary {
			if c := a.expiry.Compare(b.expiry); c != 0 {
				return c
			}
		}
		return cmp.Compare(a.id, b.id)
	})
	out := make([]Lease, len(ls))
	for i, le := range ls {
		out[i] = le.public()
	}
	l.mu.Unlock()
	return out
}

// Len returns the number of leases.
func (l *Lessor) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.leases)
}

// Expired returns up to max (<= 0: no limit) leases whose expiry is at or
// before now, earliest first (ties by id), for the primary to revoke
// through raft in as few proposals as it likes. A lease handed out is
// handed out again RetryInterval later if its revoke has not applied by
// then (the proposal was lost). Not primary: nil.
func (l *Lessor) Expired(now time.Time, max int) []ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.mu.primary {
		return nil
	}
	var out []ID
	for max <= 0 || len(out) < max {
		le := l.mu.expiries.peek()
		if le == nil || le.at[byDeadline].After(now) {
			break
		}
		out = append(out, le.id)
		l.mu.expiries.set(le, now.Add(l.opts.RetryInterval))
	}
	return out
}

// NextExpiry returns the earliest time Expired will hand out a lease, and
// false if none is due ever (not primary, or no lease): the primary can
// sleep until then instead of polling.
func (l *Lessor) NextExpiry() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	le := l.mu.expiries.peek()
	if le == nil {
		return time.Time{}, false
	}
	return le.at[byDeadline], true
}

// DueCheckpoints returns up to max (<= 0: no limit) checkpoints due at now,
// for the primary to propose through raft (applied with Checkpoint). Each
// lease whose TTL exceeds the checkpoint interval is looked at every
// interval and checkpointed with its remaining TTL (rounded up) when that
// is below its TTL; a lease that has expired is left to Expired. Not
// primary: nil.
func (l *Lessor) DueCheckpoints(now time.Time, max int) []Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.mu.primary {
		return nil
	}
	var out []Checkpoint
	for max <= 0 || len(out) < max {
		le := l.mu.checkpoints.peek()
		if le == nil || le.at[byCheckpoint].After(now) {
			break
		}
		if !now.Before(le.expiry) {
			l.mu.checkpoints.remove(le)
			continue
		}
		l.mu.checkpoints.set(le, now.Add(l.opts.CheckpointInterval))
		if rem := int64(math.Ceil(le.expiry.Sub(now).Seconds())); rem < le.ttl {
			out = append(out, Checkpoint{ID: le.id, RemainingTTL: rem})
		}
	}
	return out
}

// Promote makes this replica the primary (its shard's raft leader): every
// lease expires extend (the election timeout, as etcd) plus its
// checkpointed remaining TTL, or full TTL if none, after now. Promoting the
// primary again restarts every lease the same way.
func (l *Lessor) Promote(now time.Time, extend time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.demoteLocked()
	l.mu.primary = true
	for _, le := range l.mu.leases {
		l.startLocked(le, now.Add(extend+seconds(le.effectiveTTL())), now)
	}
}

// Demote makes this replica a non-primary: nothing expires and nothing is
// checkpointed until the next Promote.
func (l *Lessor) Demote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.demoteLocked()
}

// REQUIRES: l.mu.
func (l *Lessor) demoteLocked() {
	l.mu.primary = false
	l.mu.expiries.clear()
	l.mu.checkpoints.clear()
	for _, le := range l.mu.leases {
		le.expiry, le.at = time.Time{}, [2]time.Time{}
	}
}

// IsPrimary reports whether the lessor is the primary.
func (l *Lessor) IsPrimary() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.primary
}
