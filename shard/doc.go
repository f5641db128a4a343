// Package shard runs one key range as a dragonboat raft group.
//
// StateMachine is dragonboat's IOnDiskStateMachine over the range's
// mvcc.Store. Replica is the client side on a NodeHost: it batches writes into
// proposals and serves reads. The two meet in the raft log:
//
//	router ─Write→ Replica ─batch→ Propose(Command{req1, req2, …})
//	                                   │ raft log (fsynced before commit)
//	                                   ▼
//	StateMachine.Update([entry…]) → one pebble batch: every request of every
//	entry, then the applied index → Commit without sync → Result{responses}
//
// Durability: the raft log is the durable record. Update commits pebble
// without fsync; Sync fsyncs pebble's WAL (dragonboat calls it before it
// records a snapshot index, and relies on Open never returning less later).
// Open returns the applied index that was written in the same batch as the
// data, so after a crash dragonboat replays exactly the entries whose effects
// were lost.
//
// Determinism: Update's outcome depends only on the store and the entries.
// A refused request (compare failed, compacted revision, stale stamp, key
// outside the range, undecodable bytes) becomes an Error in its Response and
// changes nothing; only storage failures are returned as errors, which stops
// the replica as it must.
//
// Concurrency: dragonboat calls Update, Sync, snapshot and Close from its
// own goroutines, one at a time; Lookup runs concurrently with all of them.
// StateMachine.mu guards the store pointer and the closed flag: Lookup holds
// it shared, RecoverFromSnapshot and Close exclusively, so reads wait out a
// recovery and fail cleanly after Close. Replica owns one batcher goroutine
// and at most maxInFlight sender goroutines; Close waits for all of them.
// A proposal whose callers have all given up is left to a goroutine of its
// own that only waits for dragonboat's answer (bounded by the proposal
// timeout, or the NodeHost's close) and then settles the sequencer.
//
// Batching: requests queue while proposals are in flight, and the next
// proposal takes everything queued (up to maxBatch requests or maxBatchBytes).
// Under load this turns many client writes into one raft entry and one fsync;
// with a single client it adds no delay. Requests whose callers gave up
// while queued are not proposed, a dropped proposal nobody waits for is not
// proposed again, and one nobody waits for no longer holds an in-flight slot
// (as etcd forgets a proposal whose request ended): a follower cut off from
// its leader piles such proposals up, and they must not stall the writes
// that come once it is back.
//
// Failover: a linearizable read's read index is side-effect free, so one
// that cannot answer — dropped, or sent to a leader that has since been
// replaced (dragonboat would hold it until its timeout) — is asked again
// as soon as a new leader is known (Replica.linearRead). A write is never
// proposed again unless dragonboat said it was dropped before reaching a
// log (ErrShardNotReady, a dropped result); otherwise it waits for its
// outcome up to etcd's request timeout (RequestTimeout: 5 s plus two
// election timeouts), and one whose leader was lost meanwhile fails with
// ErrLeaderLost, etcd's "request timed out, possibly due to previous
// leader failure".
//
// Stamping (sharded mode): a replica client made with NewStampingReplica
// takes one block of revisions from the oracle (a Stamper) per batch, stamps
// the batch's writes in order and proposes the batch itself, batch after
// batch, so its writes reach the log in stamp order. The state machine
// refuses a stamp not above the last applied revision (another proposer's
// newer stamp got there first); the client stamps such a write again and
// retries it, and its caller never sees the refusal. Each command also
// carries the client's closed revision — one below the lowest stamp it has
// in flight — and the state machine refuses every later write stamped at
// or below the highest closed revision applied (Status.Closed), so a read
// at R ≤ closed misses no write. Only the leader's client stamps, and each
// command carries the term it leads in: the state machine refuses stamped
// writes from a term older than the newest it applied (Status.Fence), so a
// deposed leader's writes cannot land late. That is what lets an idle
// shard's leader raise the closed revision without a log write
// (AdvanceIdle: a fresh oracle revision, then a read index confirming it
// still leads in the fenced term), for the node to publish on its side
// channel. One stamping client per replica. Single-group mode
// stamps nothing and the state machine assigns last + 1.
//
// Counting (sharded mode, Config.Sharded): a range whose span is the whole
// key space — a cluster of one range, before its first split — numbers its
// revisions itself, exactly as single-group mode and etcd do: its client
// proposes writes unstamped (StateMachine.Counting), the state machine
// assigns last + 1, and its closed revision is its revision, on every
// replica, with no oracle involved. The split that ends it carries a
// revision the oracle handed out above the range's own (SplitRange.Above;
// refused, for the caller to ask again, if the range has counted past it),
// so the oracle, which numbers every write from then on, is above every
// revision counted before; an unstamped write that reaches the log behind
// the split is refused as stale and stamped. testdata/apply_counting.txt
// walks through it:
//
//	count 2, 3, 4 … 12 → split (above 10011) → stamped 10012 … (unstamped: stale)
//
// Leader transfer: a TransferHold entry asks every replica that applies it
// to hold back new proposals (Replica.Hold) until the target leads or a
// bound passes. The log goes quiet, the target applies everything, and
// dragonboat's target then campaigns at once — it skips the campaign while
// it has committed entries not yet applied, and the leader would refuse
// proposals for an election timeout. Range.TransferLeader requests holds
// and the transfer; the node passes the holds that apply to the replica
// client (Config.OnHold, Replica.Hold) and ends them as leadership moves
// (Replica.LeaderChanged). A hold changes no state.
//
// Leases: the state machine owns the shard's lease.Lessor (opened with the
// store, rebuilt after a snapshot restore). Grant, revoke and checkpoint
// requests apply to it in the same pebble batch as the store's writes; after
// each request the applier derives attachments from the request's change
// events (a put with lease L attaches the key to L; a put replacing another
// lease, or a delete, detaches it), and a revoke deletes the lease's keys in
// one write transaction, at one revision, with a DELETE event each. Primary
// runs the leader's side: it follows leadership (Promote on winning, Demote
// on losing, so expiries are only ever judged by the leader's clock),
// proposes the revokes of expired leases in rounds of at most RevokeRound
// that each apply before the next is proposed (no cap on the rate, and
// client writes queue behind one round at most), and proposes checkpoints.
//
// Cross-range transactions (txn.go, docs/plan-txn.md; the coordinator is
// the router's): a participant applies TxnPrepare — refused, never
// waiting, if its spans meet another lock (ErrLocked) or were written
// above its read revision (ErrTxnConflict) — recording a lock (an internal
// record, so restarts and snapshots carry it) and answering reads at the
// prepared state; TxnCommit applies the intents at the transaction's
// revision R (mvcc.Batch.CommitAt: below the range's revision if other
// keys were written since) and drops the lock; TxnAbort drops it. While a
// lock stands, writes, compactions above its cap, splits and revokes that
// meet it are refused with ErrLocked, reads of its spans above its cap
// too, and the closed revision the range publishes (Status.Closed,
// OnApply, AdvanceIdle) stays at or below its cap, so R is above it; the
// revision stamps are refused at keeps rising. The range's watch hub
// holds, the same way, what applies above the lowest cap (writes to other
// keys, above R, before the commit): Range feeds it each batch with the
// locks' limit (StateMachine.LockLimit, watch.Hub.Apply), and it releases
// the held events merged with the commit's at R, in revision order, when
// the lock is resolved. The primary applies
// TxnDecide (the commit point), TxnResolve (abort unless decided) and
// TxnForget on the transaction's record. A range that counts its
// revisions takes no part. testdata/apply_txn.txt walks through it.
//
// Alarms and members: raised alarms (NOSPACE) and the members' published
// attributes are internal records replicated through the log; while
// NOSPACE is raised, writes that add data (Capped) are refused
// deterministically.
//
// Backups: WriteBackup writes the same image as a raft snapshot;
// RestoreBackup makes it the first state of a new cluster's shard.
//
// Snapshots: dragonboat's automatic snapshots of on-disk state machines carry
// metadata only; SaveSnapshot is called to stream this range to a lagging
// replica, and RecoverFromSnapshot replaces exactly this range's key span,
// its internal records and its lessor's records.
//
// Splits: a SplitRange request hands the keys from its key on (their
// history, their leases' attachments as shadows, the closed revision) to a
// new range in the same pebble at the revision it applies at; the data
// stays in place (Config.OnSplit tells the router's Splitter, which puts
// the new range in the member's Set and starts its replica). A split of a
// range that still counts its revisions is described above.
//
// Merges (merge.go, docs/plan-merge.md): two neighbours whose replicas are
// voters on the same members become one in place, the data staying where
// it lies. A MergeFreeze in the right range's log (synced) ends its life
// as a writer and a reader: from that entry it answers ERROR_CODE_MERGING
// (the router retries), closes no revision and holds its records as they
// were. Once every replica of it applied the freeze, a MergeCommit in the
// left range's log absorbs it from the member's pebble (mvcc.Batch.Absorb,
// lease.Lessor.Absorb: span, revision, compaction, closed revision, fence,
// alarms, lease attachments, transaction records), records the decision
// and calls Config.OnMerge; a MergeAbort there decides the other way, and
// only then does MergeThaw let the right range serve again. The left
// range's log decides, so a commit in doubt never absorbs a thawed range;
// Set.Merge and the caller's Set.Drop retire the right range. The
// placement map's MergeDriver drives the steps; the scheduler asks for
// merges of small cold neighbours (node/scheduler.go).
//
// Set (set.go) is a member's replicas of ranges, in key order, started or
// starting; Set.Start starts one with its founders or joins it (a learner
// joins as non-voting), and LocalRanges says which ranges of the range map
// a restart runs (a split recorded in the map but not applied here is left
// pending, for the router to propose again). A Range is also the lease
// home as the router's lease fan-out asks it (Leads, AppliedIndex,
// PendingRevokes).
//
// Replica records (local.go, kind 'r' in the member's pebble, never in a
// snapshot or image) say which replicas the member holds and how far the
// drop of one has gone. Set.Drop deletes a replica's data from the shared
// pebble — raft data (the caller's RemoveRaftData), then one batch with the
// store's versions, internal and lessor records, then a chunked sweep of
// the shared event log under mvcc.EventLog — and Set.ResumeDrops finishes
// a drop a crash interrupted, from the phase its record names. A replica
// overlapping a drop under way starts after the drop's data batch.
//
// Metrics: Config.Observer (observe.go) hears what the node's metrics
// count — the etcd operations applied and read (as etcd's mvcc counts
// them), commit and sync times, failed proposals and restamps; nil
// reports nothing. The package imports no metrics library.
//
// The apply of every request is specified by the scripts
// testdata/apply*.txt (apply_test.go), one topic a file.
//
// Non-goals here: exactly-once client sessions (on-disk state machines use
// dragonboat's no-op session; a timed-out write is ambiguous, as in etcd).
package shard
