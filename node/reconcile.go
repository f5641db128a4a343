package node

import (
	"context"
	"time"

	"github.com/lni/dragonboat/v4/raftio"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// The reconciler (sharded mode) keeps the replicas this member runs what
// its copy of the range map says, on every map change (the map follower
// signals it) and every reconcileEvery:
//
//   - A move naming this member as its destination (placement.Mover) gets
//     its replica started, joining the range non-voting and empty (its
//     record written first, as for every start): the leader sends it a
//     snapshot once the mover adds it.
//   - A destination replica started here that the map names as a voter
//     (the mover promoted it, caught up) is routed here once its hub is at
//     its store's revision; until then the range is served through the
//     other members holding it, and nothing is served from the replica to
//     other members either (notServing: it is empty until its snapshot). (Every other replica is routed by whoever
//     starts it: startRanges, the splitter.)
//   - A replica here that the map names takes the map's descriptor when
//     a move changed the range's replicas (same generation and span).
//   - A replica here that the map does not name (neither its pairs nor an
//     open move's destination) — this member's copy of it, then the
//     placement leader's — is stopped and its data dropped (the drop
//     worker, drop.go) once the range's raft membership, read through a
//     member holding it, no longer has it: a source whose removal it
//     missed (down meanwhile, so no NodeDeleted here), or a destination
//     whose move was undone before raft added it.
//
// Range 1 moves as any range does; its replica is wired as the leases'
// home as it starts here and serves the cluster's records and auth state
// once routed here (first.go). Every pass is idempotent: what is running
// and routed is looked at afresh; a replica whose drop is under way is not
// started again until the drop took it out of the set (shard.Set.Drop),
// and a start waits for the drop's data batch (shard.Set.Start). After a
// crash, the replica records (drop.go) and the map say the same things
// again.
//
//	map: move r2 1:5 → 4:9 begun      member 4: start r2:9 non-voting, not routed
//	map: r2 {2:6 3:7 4:9}, no move    member 4: route r2 here · member 1: raft removed 5 → drop r2:5

// reconcileEvery is how often the reconciler looks without a map change.
const reconcileEvery = time.Second

// runReconciler reconciles after each map change and every
// reconcileEvery until the node stops.
func (n *Node) runReconciler() {
	defer n.wg.Done()
	t := time.NewTicker(reconcileEvery)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-n.stop
		cancel()
	}()
	for {
		select {
		case <-n.stop:
			return
		case <-n.reconcileSignal:
		case <-t.C:
		}
		n.reconcile(ctx)
	}
}

// reconcileSoon asks the reconciler for a pass (never blocks).
func (n *Node) reconcileSoon() {
	select {
	case n.reconcileSignal <- struct{}{}:
	default:
	}
}

// reconcile makes one pass (see above).
func (n *Node) reconcile(ctx context.Context) {
	st, err := n.localState()
	if err != nil {
		return
	}
	self := placement.NodeID(n.memberID)
	byID := map[shard.RangeID]*placementpb.RangeDescriptor{}
	for _, d := range st.Ranges {
		byID[shard.RangeID(d.Id)] = d
	}
	dest := map[shard.RangeID]*placementpb.Move{} // open moves to this member
	for _, mv := range st.Moves {
		if placement.NodeID(mv.To.GetMember()) == self {
			dest[shard.RangeID(mv.Range)] = mv
		}
	}
	for id, mv := range dest {
		if n.rangeSet.Get(id, false) != nil || byID[id] == nil {
			continue
		}
		if err := n.startDestination(byID[id], shard.ReplicaID(mv.To.Id)); err != nil {
			n.log.Warn("starting a move's destination replica failed; trying again", "range", id, "replica", mv.To.Id, "error", err)
		}
	}
	isDestination := func(key replicaKey) bool {
		_, ok := n.destinations.Load(key)
		return ok
	}
	for _, r := range n.rangeSet.All() {
		id := r.ID()
		key := replicaKey{id, r.ReplicaID()}
		d := byID[id]
		if d == nil {
			// A range the map here does not know yet (a split), or one
			// merged away.
			n.dropIfMerged(r, st)
			continue
		}
		named, voter := false, false
		if p, ok := placement.ReplicaOf(d, self); ok && p == r.ReplicaID() {
			named = true
			voter = !placement.Pairs(d)[pairIndex(d, self)].Learner
			// A move changed the range's replicas: the replica's
			// descriptor (what the range info, cairn check and a
			// split's founders read) takes the map's. The routes read it
			// again, routing nothing anew: a source told to leave may be
			// named still.
			if r.SetReplicas(proto.Clone(d).(*placementpb.RangeDescriptor)) {
				n.routes.Reread()
			}
		}
		if mv := dest[id]; mv != nil && shard.ReplicaID(mv.To.Id) == r.ReplicaID() {
			named, voter = true, !mv.To.Learner
		}
		switch {
		case named && voter && isDestination(key) && !n.routes.IsLocal(id):
			if err := r.SyncHub(ctx); err != nil {
				continue
			}
			n.routes.PutRanges(r)
			if id == singleShardID {
				n.first.Store(r) // the cluster's records and auth state read here now
			}
			n.destinations.Delete(key)
			n.log.Info("a replica moved here serves", "range", id, "replica", r.ReplicaID())
		case !named:
			n.dropIfRemoved(ctx, r, d)
		}
	}
	n.retireMergedRecords(st)
}

// namesReplica reports whether st names replica id of range r on member
// self: among the range's pairs, or as an open move's destination.
func namesReplica(st *placementpb.State, r shard.RangeID, self placement.NodeID, id shard.ReplicaID) bool {
	for _, d := range st.Ranges {
		if d.Id == uint64(r) {
			if p, ok := placement.ReplicaOf(d, self); ok && p == id {
				return true
			}
		}
	}
	for _, mv := range st.Moves {
		if mv.Range == uint64(r) && placement.NodeID(mv.To.GetMember()) == self && shard.ReplicaID(mv.To.GetId()) == id {
			return true
		}
	}
	return false
}

// pairIndex is the index of member's pair in d's pairs (-1: none).
func pairIndex(d *placementpb.RangeDescriptor, member placement.NodeID) int {
	for i, p := range placement.Pairs(d) {
		if placement.NodeID(p.Member) == member {
			return i
		}
	}
	return -1
}

// startDestination starts this member's replica id of range d, a move's
// destination: non-voting, joining, empty until the leader's snapshot; not
// routed here yet. A replica of range 1 is wired as the leases' home once
// started (first.go): its primary acts only once it leads.
func (n *Node) startDestination(d *placementpb.RangeDescriptor, id shard.ReplicaID) error {
	r := shard.NewRange(n.rangeCfg(id), d, 0)
	if err := n.recordReplica(r); err != nil {
		return err
	}
	// Not served to other members (notServing) from the moment the set
	// has it: it is empty until the leader's snapshot.
	n.destinations.Store(replicaKey{shard.RangeID(d.Id), id}, true)
	n.rangeSet.Add(r)
	cfg := n.rangeShardCfg(r)
	if d.Id == singleShardID {
		cfg = n.firstShardCfg(r)
	}
	recovered := cfg.OnRecover
	cfg.OnRecover = func() {
		n.destinationSnapshots.Add(1)
		if recovered != nil {
			recovered()
		}
	}
	if err := n.rangeSet.StartNonVoting(r, cfg, n.raftCfg); err != nil {
		return err
	}
	if d.Id == singleShardID {
		n.wireFirst(r)
	}
	n.log.Info("started a move's destination replica", "range", d.Id, "replica", id)
	return nil
}

// dropIfRemoved queues the drop of replica r, which the map d no longer
// names here, once the range's raft membership does not have it either.
func (n *Node) dropIfRemoved(ctx context.Context, r *shard.Range, d *placementpb.RangeDescriptor) {
	key := replicaKey{r.ID(), r.ReplicaID()}
	if n.askedDrop[key] {
		return // the drop worker has it
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// This member's copy of the map may lag (a member just added reads
	// its replicas from the leader's map before its own copy has them):
	// the leader's map must not name the replica either.
	st, err := n.placement.State(ctx)
	if err != nil {
		return // asked again next pass
	}
	if namesReplica(st, r.ID(), placement.NodeID(n.memberID), r.ReplicaID()) {
		return
	}
	d = nil
	for _, rd := range st.Ranges {
		if rd.Id == uint64(r.ID()) {
			d = rd
		}
	}
	if d == nil {
		return // merged away? not a case this code knows: leave it
	}
	ms, err := rangeRaft{n}.Membership(ctx, d)
	if err != nil {
		return // asked again next pass
	}
	if in, _ := ms.Has(placement.ReplicaID(r.ReplicaID())); in {
		return
	}
	n.log.Info("the range map and raft no longer have this replica; dropping it", "range", r.ID(), "replica", r.ReplicaID())
	n.askedDrop[key] = true
	n.drops.put(raftio.NodeInfo{ShardID: uint64(r.ID()), ReplicaID: uint64(r.ReplicaID())})
}

// movesHere returns the ranges whose open move has this member as its
// destination, not voting yet (read linearizably: a start).
func (n *Node) movesHere(ctx context.Context) (map[uint64]bool, error) {
	st, err := n.placement.State(ctx)
	if err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	for _, mv := range st.Moves {
		if mv.To.GetMember() == n.memberID && mv.To.GetLearner() {
			out[mv.Range] = true
		}
	}
	return out, nil
}
