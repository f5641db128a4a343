// Package watch holds the watchers of one shard and serves etcd's watch
// semantics over them, fed by the shard's committed change events.
//
// # Model
//
// A Hub has streams (one per client Watch stream), each with watchers and
// an ordered, bounded queue of responses. Every watcher has next, the first
// revision it has not been sent, and is either synced (it has everything
// below the hub's revision; live events reach it through Notify) or
// unsynced (it lags; Catchup reads the missing revisions from the store
// and delivers them):
//
//	create start=5 at hub rev 9 → unsynced, next=5
//	Catchup reads 5..9 once for every lagging watcher → next=10 → synced
//	Notify(rev 10) → queued on the stream, next=11
//	stream queue full at rev 11 → unsynced again, next=11; caught up later
//
// Notify never blocks, so a stalled client never stalls writes or other
// streams; memory stays bounded by the queue limit, and nothing is lost
// because the store keeps the history. Synced watchers are found through
// an index (index.go): single keys by hash, ranges through a segment map
// on a btree, so an event costs O(log n + matches); identical ranges share
// one entry, and one catch-up round reads the store once for all lagging
// watchers.
//
// The scripts in testdata/ show the groups at work (TestDataDriven).
//
// Invariants: responses about a watcher follow its created response in the
// queue; a progress response (watch id -1) is queued only when every
// watcher of the stream is synced, so it never overtakes queued events.
//
// # Concurrency
//
// One mutex in the Hub guards the hub, its streams and watchers. The
// package reads no clock and starts no goroutines but a fan's wake-up
// relay (fan.go): the owner (the node) calls Notify from the apply path,
// Catchup when Pending is signalled, ProgressTick on etcd's
// --watch-progress-notify-interval, and each stream's consumer calls Next.
//
// # The hold (Hub.Apply)
//
// A range holding locks of cross-range transactions (shard's txn.go)
// applies writes to other keys above a transaction's revision R before the
// commit at R. Its hub then holds: Apply carries, with each batch, the
// highest revision it may release (the locks' lowest cap); events above it
// wait, in revision order, and the hub's revision — hence catch-up from the
// store, marks, progress and WaitRev — stays at it. When the hold lifts or
// rises, the held events go out merged with the commit's, each revision's
// in one response, so every watcher, feed and mirror gets R whole and
// before the range's later revisions:
//
//	hold 40: put b@50 (held)   commit a@45, hold lifted → send 45, then 50
//
// A hub raised to its store's revision without the events (Sync: a store
// opened at a restart, or restored from a snapshot) hands its synced
// watchers to catch-up, at once or, above a hold, when it lifts.
//
// # Merged streams (merge.go)
//
// A client stream is a Merged stream. Over one range — single-group mode,
// or a sharded cluster before its first split — it is direct: that
// range's hub stream as it is, so it answers exactly as a hub stream (and
// etcd) does, until a split of the range turns its watches into merged
// ones of one part each. Over several ranges each watch has a
// watcher in every range its keys reach, on one hub stream per range (all
// of them signalling one channel). A part's mark is the revision below
// which its range has delivered everything it matches — a synced
// watcher's max(next-1, hub revision), which rises with the range's
// writes and with its closed revision (Hub.Advance: nothing at or below it
// is still to come there). Next drains the ranges' streams and releases,
// per watch, the events at or below the lowest mark of its parts, in
// revision order; header revisions say how far a watch has been sent, so
// a client resuming from header+1 misses nothing:
//
//	watch [a, z) over ranges A [a, m) and B [m, z)
//	A: put b@7, put c@9   B: put x@8          marks A=9, B=8 → send 7, 8
//	B closes 10 (idle)                         marks A=9, B=10 → send 9
//
// A watch held back by a range asks that range's hub to wake the stream
// when it gets there (Hub.WaitRev) and the range to close that revision
// soon (Part.Kick), so an idle range costs latency of one closing round,
// not of the periodic one. Progress requests are answered at the highest
// revision of all ranges once every watch has passed it. A watch canceled
// for compaction in any range ends as etcd ends it.
//
// Memory: events a watch has drained from a range that is ahead wait for
// the ranges behind; that is bounded by how far closed revisions lag
// (milliseconds with kicks), not by the stream's queue limit.
//
// # Coalescing (fan.go)
//
// Identical watches of the node's client streams — the same keys, filters
// and prev_kv — that start at the current revision or later share one fan:
// one watcher in each range, merged once; each subscribing watch takes the
// fan's released events (from its own start) and mark as its one part, so
// the release rules above hold per stream unchanged. A watch that needs
// history has watchers of its own; so does one whose client reads too
// slowly (more than fanBehind events per queue slot waiting): it leaves the
// fan and catches up from the stores. The fan's stream is pumped by its
// subscribers' Next; one goroutine per fan only relays its wake-ups.
//
// A member serves its watches from its own replicas' hubs, and, for a
// range it holds no replica of, from a mirror hub — a plain Hub that the
// router feeds with a holder's events and marks (router/feed.go; Skip
// starts it where its feed starts). Closed revisions from the ranges'
// leaders travel one message at a time per node pair (node's side
// channel). A split moves a stream's watchers (a fan's too) to
// the new range (Merger.Split); a replica leaving the member moves them to
// the range's mirror, each from the revision after what it has been sent
// (Merger.Move), except a feed's (NewMergedStream: pinned to the member's
// replicas, it ends with the hub; pinned and client watches share no
// fan). A merge moves every stream's watchers, a feed's too, from the
// absorbed range's hub to the absorbing range's (Merger.Merge), whose
// store now holds the absorbed keys' history; the absorbing hub is first
// raised to the absorbed one's revision as a skip, so what it never heard
// of is caught up from the store. Leader-loss monitoring of streams that
// require a leader is the router's (it knows the raft group; this package
// does not).
package watch
