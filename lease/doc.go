// Package lease is the lessor of one shard: etcd's leases (grant, revoke,
// renew, attach and detach keys, time-to-live, expiry, checkpoints) as a
// deterministic library, persisted in the shard's pebble DB.
//
// # Model
//
// A lease has an id, a granted TTL in seconds (raised to Options.MinTTL,
// at most MaxTTL) and a checkpointed remaining TTL (0: none). That much is
// replicated: the shard applies Grant, Revoke, Attach, Detach and
// Checkpoint from its raft log on every replica, each writing into the
// caller's pebble batch, so a lease change commits atomically with the
// mvcc writes of the same apply.
//
// Expiry is not replicated. Only the primary (the replica on the shard's
// raft leader) keeps an expiry per lease, in a min-heap; Renew moves it
// and writes nothing, as in etcd. Every leader change costs each lease at
// most its checkpoint lag, not its whole TTL:
//
//	t=0   grant 1 ttl=60 on leader A                 record: ttl=60
//	t=30  A checkpoints 1 through raft               record: ttl=60 remaining=30
//	t=32  A fails; B is elected, Promote(t, 1s)      1 expires at 32+1+30 = 63, not 92
//	t=63  B: Expired → [1]; B proposes revoke 1      keys of 1 deleted at one revision
//
// The primary's duties, each a call that returns work to propose:
//
//  1. After winning an election: Promote(now, extend) (extend: the election
//     timeout, as etcd). On losing leadership: Demote().
//  2. Periodically (or at NextExpiry): Expired(now, max) returns expired
//     leases, earliest first; propose their revokes, batched as the caller
//     likes (there is no revoke rate cap here). A lease whose revoke does
//     not apply within RetryInterval is handed out again.
//  3. Periodically: DueCheckpoints(now, max) returns remaining TTLs to
//     propose; apply them with Checkpoint. A lease is looked at every
//     CheckpointInterval if its TTL exceeds the interval.
//  4. On a keepalive: Renew(id, now). If it returns clear, propose
//     Checkpoint(id, 0) and answer only after it applies (as etcd),
//     so that a leader change does not start the lease from a stale
//     checkpoint.
//
// And on every replica, in the apply of each raft entry, with the apply's
// pebble batch (indexed):
//
//  5. Lease grant: Grant. Lease revoke (by a client or by expiry): Revoke,
//     then delete the returned keys in the store at one revision.
//  6. For each write's events: a put with lease L attaches the key to L;
//     a put whose previous version had lease P != L, or a delete of a key
//     with lease P, detaches it from P (Detach of a revoked lease returns
//     ErrLeaseNotFound and may be ignored, as etcd logs it).
//  7. Checkpoint entries: Checkpoint.
//
// # Time
//
// The lessor never reads the clock: every operation that needs the time
// takes now, a time.Time from the caller (time.Now() in production, whose
// monotonic reading makes the arithmetic immune to wall-clock steps; a
// manual clock in tests). now must not go backwards between Promote and
// Demote. Replicated state never depends on now: Grant uses it only on the
// primary, to start the expiry. Remaining TTLs are whole seconds, rounded
// up in checkpoints and truncated in TimeToLive (as etcd); a lease is
// expired at its expiry exactly (now >= expiry).
//
// # Leases across shards (sharded mode)
//
// remote.go: a lease homed in another shard gets a shadow here (Shadow)
// when a write attaches keys to it, so the keys can be found and deleted
// when the home revokes it (RevokeShadow, which leaves a tombstone that
// refuses late puts). The home records which shards hold keys of each
// lease (Register, Unregister, PendingRevokes). Shadows have no TTL and
// never expire here; they are not listed among the shard's leases. A split
// moves the attachments of the keys it gives away to the child as shadows
// (SplitOff); a merge writes the absorbed shard's attachments, shadows and
// tombstones again under the absorbing one (Absorb; not called outside
// tests yet, see docs/plan-merge.md).
//
// # Storage and memory
//
// keys.go has the layout: a record per lease and one pebble key per
// attached key, under 'l' + store id, in Cairn's internal key space.
// Per-lease state is kept in memory (a struct of about 110 bytes, a map
// entry and two heap slots); attachments are not: they live only in pebble, found by
// a prefix scan per lease in Revoke and TimeToLive, so memory does not
// grow with the number of attached keys. Open (and Recover, after a
// snapshot restore) rebuilds the memory from the records and starts
// demoted. RecordBounds gives the shard the range to put in its snapshots.
//
// A write method that fails after writing part of its records into the
// batch, or a batch that is not committed, leaves the memory ahead of
// pebble: the caller must not commit that batch and must Open the lessor
// again (the shard treats an apply error as fatal anyway). Refusals
// (ErrLeaseNotFound, ErrLeaseExists, ErrLeaseTTLTooLarge) change nothing.
//
// # Concurrency
//
// A mutex guards the in-memory state, so the apply goroutine, the
// primary's expiry and checkpoint loop, keepalive handlers and readers may
// all call in. The write methods (Grant, Revoke, Attach, Detach,
// Checkpoint, Recover) must come from one goroutine at a time, the apply
// goroutine that owns the batch; pebble reads happen outside the mutex.
// The package starts no goroutines.
//
// # Non-goals
//
// Picking ids for a grant without one, routing a lease to its home shard,
// registering a shard at the home before its first key of the lease, and
// fanning a revoke out to the registered shards are the router's and the
// node's (see "Leases across shards" above for what is kept here). Promote
// does not spread expiries the way
// etcd does to stay under its 1,000 revokes/s: pacing revokes is the
// primary's loop's choice of max. Short leases (TTL at most the checkpoint
// interval) restart their full TTL at a leader change, as in etcd.
package lease
