// Package robustness checks Cairn's guarantees under faults with etcd's own
// robustness model and validators, used as a library.
//
// # Model
//
// A scenario starts a Cairn cluster of real `cairn` processes in
// single-group mode, or in the default mode while its key space is one
// range (which numbers revisions as etcd does; a few scenarios of the
// short profile and half the soak's) (1 or 3 members, each behind a TCP
// proxy on its peer port so that it can be cut off), drives it with etcd's traffic generators (the etcd-style mix of
// gets, lists, stale reads, puts, deletes, multi-op txns, compare-and-set,
// leases and compactions, or the Kubernetes-style mix of optimistic
// updates, creates, deletes and list-then-watch) through etcd's recording
// client, injects one fault while the traffic runs, and then checks:
//
//  1. that every member applied the same command at every raft index
//     (from each member's --debug-journal, Cairn's equivalent of the WAL
//     etcd's suite reads);
//  2. the client history, against that persisted history, with
//     go.etcd.io/etcd/tests/v3/robustness/validate: linearizable reads and
//     writes (porcupine), and watches that are ordered, unique, atomic,
//     reliable, resumable, bookmarkable, with correct prev_kv and create
//     flags; serializable reads that match some revision.
//
// Sharded mode past its splits (four ranges whose boundaries fall inside
// both traffic mixes' key spaces, 1 and 3 members; a few scenarios of the
// short profile, a third of the soak's) has neither dense revisions nor
// one raft log, so etcd's model and the journal do not apply. There the
// persisted history is a recorder: one watch on the whole key space from
// revision 1, every revision of which some request must explain, and every
// acknowledged put must be in at its revision. Linearizability is checked
// with the sparse model (sparse_model_test.go: a write's revision exceeds
// every one before it, not by one; a read at R sees exactly the writes at
// or below R; a lease revoke deletes its keys range by range), watches and
// reads at old revisions against the recorder (sparse_check_test.go). A
// write refused for spanning ranges is checked to have changed nothing.
// Compactions there stop at what the recorder has seen.
//
// On a failure the scenario's seed, the porcupine visualisation (an HTML
// page) and the member logs are kept under the test's output directory
// (-robustness.out, default a temporary directory named in the log).
//
// Faults: kill -9 of the leader or of a follower and restart; a network
// partition of the leader (its proxy drops every peer connection); leader
// transfer; SIGSTOP/SIGCONT of the leader; bursts of compaction to the
// newest revision while watches run. Sharded mode alone
// (sharded_faults_test.go): an operator split at a key the traffic holds
// (it found a bug, fixed, see shortProfile); an operator move of a
// range's replica off its leader's member (four members, three replicas a
// range); kill -9 of the placement group's leader, which serves
// the revision oracle; a range's leader cut off from the placement leader
// and from it alone, each one's proxy dropping what the other opens; kill -9
// of a member other than the placement leader while it coordinates
// cross-range transactions (the resolvers on the others settle them).
//
// # Running
//
//	cd tests/robustness && go test ./...                       # the short profile (CI)
//	cd tests/robustness && go test -robustness.soak=30m ./...   # the long soak
//	cd tests/robustness && go test -run TestReplay -robustness.scenario=4node-sharded-etcd-move-replica -robustness.seed=7 ./...
//	cd tests/robustness && go test -tags cairn_planted_stale_reads -run TestPlantedBug ./...
//	cd tests/robustness && go test -tags cairn_planted_txn_revision -run TestPlantedTxnRevision ./...
//	cd tests/robustness && go test -tags cairn_planted_closed_pass -run TestPlantedClosedPass ./...
//
// The last three build cairn with a planted bug and pass only if the
// checker catches it: linearizable reads served from the local replica
// without a read index, in single-group mode and in sharded mode
// (TestPlantedBugSharded); the last participant of every cross-range
// transaction committed at R+1 while the rest of it answers R
// (router/planted_txn_on.go); a range's closed revision, and with it its
// watch feed, not held below a prepared cross-range write
// (shard/planted_closed_on.go). The last two run a sharded scenario with
// no fault but the bug (planted_cross_test.go). make test-robustness runs
// all four with every planted tag: each test builds cairn with its own.
//
// CAIRN_LOG_LEVEL=info (or debug) raises the members' --log-level from warn,
// for a failure's member logs.
package robustness
