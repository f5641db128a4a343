package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/raftio"

	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Replica records and drops (sharded mode; DESIGN.md "Ranges, placement,
// membership", docs/plan-scale-out.md decisions 5 and 6):
//
//   - Before any replica of a range starts here — from the range map at a
//     start, or for a range a split made — its record ('r', shard.WriteRecord)
//     is in the member's pebble, synced. An old data directory gets its
//     records this way on its first start with this code: from the ranges
//     shard.LocalRanges finds.
//   - When raft removes a replica of a range here (dragonboat's NodeDeleted,
//     today only for a member removed from the cluster), the range leaves
//     the router's cache and the set, its goroutines stop, and shard.Set.Drop
//     deletes its raft data (dragonboat's SyncRemoveData) and its data in
//     the pebble. This runs on the node's drop worker (runDrops), never on
//     dragonboat's goroutine, and Close waits for it.
//   - The watches of this member's clients on the replica go on from the
//     range's mirror (moveWatches), with no gap or repeat; a replica this
//     member gains (a move's destination) takes new watches, while those
//     already on the mirror stay there, fed from a holder as before.
//   - A drop a stop cut short is finished at the next start before any
//     replica starts (resumeDrops: shard.Set.ResumeDrops).
//
//	start: records r1:5 r2:5     member removed: NodeDeleted r1:5, r2:5
//	→ worker: r1 out of the cache, Drop(r1) · r2 out, Drop(r2)
//	→ pebble: no 'k' 'm' 'l' 'r' of r1, r2; raft dir: no data of 1:5, 2:5

// dropQueue holds the replicas dragonboat reported deleted here until the
// drop worker takes them: the listener must not block.
type dropQueue struct {
	mu      sync.Mutex
	deleted []raftio.NodeInfo // REQUIRES: mu; in the order reported
	// wake has a value once something is queued (size 1: one wake-up
	// covers everything queued before it is taken).
	wake chan struct{}
}

func newDropQueue() *dropQueue { return &dropQueue{wake: make(chan struct{}, 1)} }

func (q *dropQueue) put(info raftio.NodeInfo) {
	q.mu.Lock()
	q.deleted = append(q.deleted, info)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *dropQueue) take() []raftio.NodeInfo {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.deleted
	q.deleted = nil
	return out
}

// systemListener is the NodeHost's system event listener: it queues the
// replicas raft removed here for the drop worker and ignores the rest.
type systemListener struct{ n *Node }

func (l systemListener) NodeDeleted(info raftio.NodeInfo) { l.n.drops.put(info) }

func (systemListener) NodeHostShuttingDown()                       {}
func (systemListener) NodeUnloaded(raftio.NodeInfo)                {}
func (systemListener) NodeReady(raftio.NodeInfo)                   {}
func (systemListener) MembershipChanged(raftio.NodeInfo)           {}
func (systemListener) ConnectionEstablished(raftio.ConnectionInfo) {}
func (systemListener) ConnectionFailed(raftio.ConnectionInfo)      {}
func (systemListener) SendSnapshotStarted(raftio.SnapshotInfo)     {}
func (systemListener) SendSnapshotCompleted(raftio.SnapshotInfo)   {}
func (systemListener) SendSnapshotAborted(raftio.SnapshotInfo)     {}
func (systemListener) SnapshotReceived(raftio.SnapshotInfo)        {}
func (systemListener) SnapshotRecovered(raftio.SnapshotInfo)       {}
func (systemListener) SnapshotCreated(raftio.SnapshotInfo)         {}
func (systemListener) SnapshotCompacted(raftio.SnapshotInfo)       {}
func (systemListener) LogCompacted(raftio.EntryInfo)               {}
func (systemListener) LogDBCompacted(raftio.EntryInfo)             {}

var _ raftio.ISystemEventListener = systemListener{}

// resumeDrops finishes, in sharded mode, the drops of replicas' data that
// a stop cut short (their records say how far each got), before any
// replica of a range starts, and reads the records of the rest. A drop
// that fails stops the start: the replica it drops must not run again,
// and one overlapping it must not start over its data. The drops need no
// more of a set than its pebble and event log: the member's set is made
// later (startRanges), once a joining member knows its id.
func (n *Node) resumeDrops(ctx context.Context) error {
	if !n.cfg.Sharded {
		return nil
	}
	if err := shard.NewSet(shard.SetConfig{DB: n.db, Events: n.events}).ResumeDrops(ctx, n.removeRaftData); err != nil {
		return fmt.Errorf("node: finish dropping removed replicas' data: %w", err)
	}
	recs, err := shard.Records(n.db)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.records.mu.Lock()
	defer n.records.mu.Unlock()
	n.records.known = map[replicaKey]bool{}
	for _, rec := range recs {
		n.records.known[replicaKey{rec.Range, rec.Replica}] = rec.Learner
	}
	return nil
}

// replicaKey names one replica of one range.
type replicaKey struct {
	id      shard.RangeID
	replica shard.ReplicaID
}

// recordReplica writes, synced, the record of this member's replica r
// (sharded mode) unless it is written already (with the same learner
// flag): before r starts, so that the replica is known here — and its data
// can be dropped — whatever happens next.
func (n *Node) recordReplica(r *shard.Range) error {
	if !n.cfg.Sharded {
		return nil
	}
	key := replicaKey{r.ID(), r.ReplicaID()}
	learner := n.learner.Load()
	n.records.mu.Lock()
	defer n.records.mu.Unlock()
	if was, ok := n.records.known[key]; ok && was == learner {
		return nil
	}
	rec := shard.ReplicaRecord{Range: key.id, Replica: key.replica, Learner: learner, Span: shard.SpanOf(r.Descriptor())}
	if err := shard.WriteRecord(n.db, rec); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.records.known[key] = learner
	return nil
}

// moveWatches moves the watches on r's hub (a replica of a range leaving
// this member) to the range's mirror hub, which a holder feeds from the
// revision after the mirror's: each watch goes on from the revision after
// everything it has been sent (watch.Merger.Move).
func (n *Node) moveWatches(r *shard.Range) {
	if n.merger == nil || n.mirrors == nil {
		return
	}
	d := r.Descriptor()
	hub, kick := n.mirrors.Part(r.ID(), d.GetStart(), d.GetEnd())
	n.merger.Move(r.Hub(), watch.Part{Hub: hub, Kick: kick})
}

// removeDataTry bounds one SyncRemoveData (it needs a deadline), and
// removeDataRetry is the wait before another while dragonboat is still
// unloading the replica.
const (
	removeDataTry   = 10 * time.Second
	removeDataRetry = 20 * time.Millisecond
)

// removeRaftData is shard.RemoveRaftData on this member's NodeHost:
// dragonboat's SyncRemoveData, tried again while the replica it removed is
// still being unloaded, until ctx is done.
func (n *Node) removeRaftData(ctx context.Context, id shard.RangeID, replica shard.ReplicaID) error {
	for {
		try, cancel := context.WithTimeout(ctx, removeDataTry)
		err := n.nh.SyncRemoveData(try, uint64(id), uint64(replica))
		cancel()
		if !errors.Is(err, dragonboat.ErrShardNotStopped) && !errors.Is(err, dragonboat.ErrTimeout) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(removeDataRetry):
		}
	}
}

// untilStop returns a context that ends when the node stops (or cancel is
// called), for a worker counted in n.wg; the goroutine watching for the
// stop is counted too.
func (n *Node) untilStop() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// runDrops is the drop worker (sharded mode): it drops each replica of a
// range that dragonboat reported deleted here, in order, until the node
// stops. A drop cut short by the stop keeps its record; the next start
// finishes it.
func (n *Node) runDrops() {
	defer n.wg.Done()
	ctx, cancel := n.untilStop()
	defer cancel()
	for {
		select {
		case <-n.stop:
			return
		case <-n.drops.wake:
		}
		for _, info := range n.drops.take() {
			n.dropDeleted(ctx, info)
		}
	}
}

// dropDeleted drops this member's replica of a range that raft removed
// (info): the router stops routing to it, its watches end, its goroutines
// stop, and shard.Set.Drop deletes its data. The placement group's replica
// and a replica this member does not run (an id it ran before) are left
// alone.
func (n *Node) dropDeleted(ctx context.Context, info raftio.NodeInfo) {
	if info.ShardID == placementShardID {
		n.log.Warn("raft removed this member's replica of the placement group", "replica", info.ReplicaID)
		return
	}
	id, replica := shard.RangeID(info.ShardID), shard.ReplicaID(info.ReplicaID)
	r := n.rangeSet.Get(id, false)
	if r == nil || r.ReplicaID() != replica {
		n.log.Info("raft removed a replica this member does not run; nothing to drop", "range", id, "replica", replica)
		return
	}
	n.log.Info("raft removed this member's replica of a range; dropping its data", "range", id, "replica", replica)
	if id == singleShardID {
		n.unwireFirst(r) // its primary stops; range 1 is served through its holders (first.go)
	}
	// Served through the members holding it from now on: new watches
	// from the range's mirror here (router.Mirrors), and the watches on
	// the replica's hub move to it from after what each has been sent
	// (watch.Merger.Move), before the hub closes. Only the feeds this
	// member served from the replica end with the hub: their callers open
	// them again on a holder.
	n.routes.Leave(id)
	n.moveWatches(r)
	r.Hub().Close()
	r.Close()
	remove := n.removeRaftData
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if uint64(id) == n.hooks.dropCutShort.Load() {
		// A crash right after the drop's data batch: the sweep finds the
		// drop's context done before its first chunk.
		remove = func(ctx context.Context, id shard.RangeID, replica shard.ReplicaID) error {
			defer cancel()
			return n.removeRaftData(ctx, id, replica)
		}
	}
	if err := n.rangeSet.Drop(ctx, id, remove); err != nil {
		n.log.Warn("dropping a removed replica's data stopped; the next start finishes it", "range", id,
			"replica", replica, "error", err)
		return
	}
	n.records.mu.Lock()
	delete(n.records.known, replicaKey{id, replica})
	n.records.mu.Unlock()
}
