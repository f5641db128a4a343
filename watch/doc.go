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
// package starts no goroutines and reads no clock: the owner (the node)
// calls Notify from the apply path, Catchup when Pending is signalled,
// ProgressTick on etcd's --watch-progress-notify-interval, and each
// stream's consumer calls Next.
//
// # Non-goals (yet)
//
// Watches over several shards (the router merges shard streams in sharded
// mode). Leader-loss monitoring of streams that require a leader is the
// router's (it knows the raft group; this package does not).
package watch
