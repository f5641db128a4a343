// Package mvcc is the multi-version store of one key range, on pebble, with
// etcd's semantics exactly: revisions, generations, tombstones, historical
// reads, compaction, Range with every option, Put, DeleteRange, Txn, and the
// change events of every write.
//
// # Model
//
// The store has a current revision (1 when new, as in etcd). Every write op
// (Put, DeleteRange, Txn) that changes something takes one revision for all
// its writes: current+1, or the op's stamp when the caller assigns
// revisions (sharded mode). A key's history is a list of generations; a
// put continues the open generation (version+1, same create revision) or
// starts one (version 1, create revision = this revision); a delete ends it
// with a tombstone:
//
//	put a@2  put a@3  del a@4  put a@6
//	→ a: [{create 2: v1@2 v2@3 tombstone@4} {create 6: v1@6}]
//	read a at 3 → v2 (mod 3); at 5 → nothing; at 6 → v1 (create 6)
//
// Compact(c) drops what no read at or above c can see: per key, every
// version older than the newest one at or below c, and that one too if it
// is a tombstone. Reads below c get ErrCompacted, above the current
// revision ErrFutureRev.
//
// # Storage
//
// Records live in a pebble DB shared by every store of a node (keys.go has
// the layout): version records keyed by escaped user key then inverted
// revision, so reading a key at a revision is one seek and a range scan
// visits keys in order; an event log keyed by revision (the keys written at
// each revision, for compaction and for watchers catching up); and internal
// records (current and compact revision, and whatever the caller stores
// with SetMeta, such as the raft applied index) under 'm'+store id, out of
// reach of any etcd request. User keys are stored by key, not by store id,
// so a later split of a range moves no data. There is no in-memory index of
// keys: memory does not grow with the number of keys (pebble's block cache
// is the only cache).
//
// # Concurrency
//
// Reads (Range, ReadTxn, GetMeta, NewSnapshot) may run concurrently with
// each other and with one Batch. Each read is a consistent point-in-time
// view: it takes the published revision, then a pebble iterator, then the
// published compact revision (Batch.Commit publishes the compact revision
// before the pebble commit and the current revision after it). Writes go
// through one Batch at a time; the caller (the shard state machine)
// serialises them. The event log's records are shared by the stores of a
// DB, so every rewrite of an existing record (a restore, a compaction, a
// sweep) holds the DB's one EventLog from its read to its commit. The
// package starts no goroutines and reads no clock.
//
// # Splits and merges
//
// Batch.SplitOff gives the keys of the span from a key on to a new store;
// Batch.Absorb, the inverse, makes a store own its right neighbour's span
// too (merge.go). Neither moves user data: only the stores' internal
// records change (and, for a merge, the lagging side's compaction is
// caught up). A store that either ever changed has a span record and is
// Resized: it never counts its own revisions again. Absorb is not called
// outside tests yet (docs/plan-merge.md, slice S1).
//
// # Dropping a store
//
// A member that no longer holds a range deletes its store's data in two
// steps: DropSpan (its versions, by span, and its internal records, in one
// batch with whatever else the caller drops), then SweepEvents, in chunks,
// for its keys' entries in the shared event log (those no live store of
// the DB owns). Both can be repeated after a crash and change nothing the
// second time.
//
// # Non-goals
//
// Leases are not kept here: the store asks a LeaseChecker whether a lease
// exists. Watchers live in package watch, fed by Batch.TakeEvents and the
// event log. Count and limit scan the range (etcd walks its in-memory index
// for the same answer).
package mvcc
