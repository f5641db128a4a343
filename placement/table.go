package placement

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/google/btree"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// RangeID names a range: it is shard.RangeID, the range's raft shard id,
// so that placement and the packages below it share one range id type.
// ReplicaID names a replica within a range's raft group: it is
// shard.ReplicaID. NodeID names a node (a member). Range ids and replica
// ids are never reused.
type (
	RangeID   = shard.RangeID
	ReplicaID = shard.ReplicaID
	NodeID    uint64
)

// Refusals of a command (they travel in Result.error).
var (
	ErrBootstrapped   = errors.New("placement: the range map is already bootstrapped")
	ErrUnknownRange   = errors.New("placement: no such range")
	ErrStaleRange     = errors.New("placement: the range changed since (stale generation)")
	ErrSplitKey       = errors.New("placement: split key must lie strictly inside the range")
	ErrSplitKeysOrder = errors.New("placement: split keys must ascend, without the empty key")
	ErrNoNode         = errors.New("placement: a node needs an id")
	ErrReconfiguring  = errors.New("placement: a membership change is under way; splits wait until it is over (or the member it adds is removed)")
	ErrMoving         = errors.New("placement: a move of the range is open")
	ErrNoReplica      = errors.New("placement: the range has no such replica")
	ErrHasReplica     = errors.New("placement: the member holds a replica of the range already")
	ErrLastVoter      = errors.New("placement: the range's last voter stays")
	ErrNoMove         = errors.New("placement: the range has no such move open")
	ErrMoveStep       = errors.New("placement: the move is not at the step that allows it")
)

// Table is the placement state machine's state: the range map (ranges by
// start key, covering the key space without gap or overlap once
// bootstrapped), the node registry, the open moves, the open merges and
// the tombstones of merged ranges, and the oracle's persisted bound. Apply changes it deterministically; everything else
// reads.
//
//	bootstrap split=m        → r1 [,m) g1  r2 [m,) g1
//	split r2 g1 at t         → r2 [m,t) g2  r3 [t,) g2
//	lookup "p"               → r2
//
// A range's replicas are (member, replica id) pairs (replicas.go):
//
//	bootstrap founders=1..5 range-replicas=3, 2 ranges
//	                         → r1 {1:6 2:7 3:8}  r2 {2:9 3:10 4:11}   (ids skip member ids 1..5)
//	bootstrap founders=1,2,3 (range-replicas 0, as before) → every range {1:1 2:2 3:3}
//
// Invariant: the ranges' [start, end) tile the key space: the first starts
// at "", each ends where the next starts, the last ends at "" (∞).
// Invariant: nextRangeID is above every range id ever made.
// Invariant: nextReplicaID is above every replica id ever allocated; an
// allocated id never equals a member id the table knew of then.
// Invariant: a descriptor's replicas and founders are its replica_set's
// and founder_set's voters' members (mirrors for older readers).
// Invariant: at most one move per range is open, and its range does not
// split meanwhile.
// Invariant: a range in an open merge does not split, move or change
// replicas, and no membership change is marked while a merge is open
// (merges.go has the merge's own).
//
// Every command a log written before replica pairs holds applies as it
// did then (plus the pairs (m, m)): the new behaviour is keyed on fields
// and commands older logs do not have.
//
// A Table is not safe for concurrent use; its owner (the placement group's
// state machine) serializes Apply and reads.
type Table struct {
	ranges      *btree.BTreeG[*placementpb.RangeDescriptor] // by start
	byID        map[RangeID]*placementpb.RangeDescriptor    // the same descriptors
	nodes       map[NodeID]*placementpb.Node
	bound       mvcc.Revision
	nextRangeID RangeID
	// nextReplicaID is the next replica id to allocate (skipping member ids).
	nextReplicaID ReplicaID
	// moves are the open moves, by range.
	moves map[RangeID]*placementpb.Move
	// reconfiguring is the member whose membership change is under way
	// (0: none); splits wait for it. adding and learner are its mark's
	// (placementpb.Reconfigure).
	reconfiguring                               uint64
	reconfAdding, reconfLearner, reconfRemoving bool
	// merges are the open merges, by id (merges.go); merging names the
	// open merge each range is in (the right range only until the
	// commit); merged are the tombstones of the ranges merged away.
	merges  map[uint64]*placementpb.Merge
	merging map[RangeID]uint64
	merged  map[RangeID]*placementpb.Merged
	// nextMergeID is the next merge id to allocate (0: 1).
	nextMergeID uint64
}

func lessStart(a, b *placementpb.RangeDescriptor) bool { return bytes.Compare(a.Start, b.Start) < 0 }

// NewTable returns an empty, unbootstrapped table.
func NewTable() *Table {
	return &Table{ranges: btree.NewG(16, lessStart), byID: map[RangeID]*placementpb.RangeDescriptor{},
		nodes: map[NodeID]*placementpb.Node{}, nextRangeID: 1, nextReplicaID: 1, moves: map[RangeID]*placementpb.Move{},
		merges: map[uint64]*placementpb.Merge{}, merging: map[RangeID]uint64{}, merged: map[RangeID]*placementpb.Merged{}}
}

// Apply applies one command and answers it; a refused command changes
// nothing and says why in Result.Error.
func (t *Table) Apply(c *placementpb.Command) *placementpb.Result {
	res, err := t.apply(c)
	if err != nil {
		return &placementpb.Result{Error: err.Error(), Bound: int64(t.bound)}
	}
	res.Bound = int64(t.bound)
	return res
}

func (t *Table) apply(c *placementpb.Command) (*placementpb.Result, error) {
	switch op := c.Op.(type) {
	case *placementpb.Command_Bootstrap:
		return t.bootstrap(op.Bootstrap)
	case *placementpb.Command_Split:
		return t.split(op.Split)
	case *placementpb.Command_AddNode:
		n := op.AddNode.Node
		if n == nil || n.Id == 0 {
			return nil, ErrNoNode
		}
		t.addNode(op.AddNode)
		return &placementpb.Result{}, nil
	case *placementpb.Command_RaiseBound:
		if b := mvcc.Revision(op.RaiseBound.Bound); b > t.bound {
			t.bound = b
		}
		return &placementpb.Result{}, nil
	case *placementpb.Command_Reconfigure:
		r := op.Reconfigure
		if !r.Done && len(t.merges) > 0 {
			mg := t.Merges()[0]
			return nil, fmt.Errorf("%w: merge %d of r%d into r%d; membership changes wait until it is over", ErrMerging, mg.Id, mg.Right, mg.Left)
		}
		switch {
		case !r.Done:
			t.reconfiguring, t.reconfAdding, t.reconfLearner, t.reconfRemoving = r.Member, r.Adding, r.Learner, r.Removing
		case t.reconfiguring == r.Member && (!r.Adding || t.reconfAdding):
			t.reconfiguring, t.reconfAdding, t.reconfLearner, t.reconfRemoving = 0, false, false, false
		}
		return &placementpb.Result{}, nil
	case *placementpb.Command_ChangeReplicas:
		c := op.ChangeReplicas
		d := t.byID[RangeID(c.Range)]
		if d == nil {
			return nil, fmt.Errorf("%w: %d", ErrUnknownRange, c.Range)
		}
		if err := t.refuseMerging(d); err != nil {
			return nil, err
		}
		t.changeReplicas(d, c)
		return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d)}}, nil
	case *placementpb.Command_SetLeader:
		d, err := t.current(RangeID(op.SetLeader.Range), op.SetLeader.Generation)
		if err != nil {
			return nil, err
		}
		d.Leader = op.SetLeader.Leader
		return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d)}}, nil
	case *placementpb.Command_AddReplica:
		return t.addReplica(op.AddReplica)
	case *placementpb.Command_PromoteReplica:
		return t.promoteReplica(op.PromoteReplica)
	case *placementpb.Command_RemoveReplica:
		return t.removeReplica(op.RemoveReplica)
	case *placementpb.Command_BeginMove:
		return t.beginMove(op.BeginMove)
	case *placementpb.Command_AdvanceMove:
		return t.advanceMove(op.AdvanceMove)
	case *placementpb.Command_EndMove:
		return t.endMove(op.EndMove)
	case *placementpb.Command_BeginMerge:
		return t.beginMerge(op.BeginMerge)
	case *placementpb.Command_AdvanceMerge:
		return t.advanceMerge(op.AdvanceMerge)
	case *placementpb.Command_CommitMerge:
		return t.commitMerge(op.CommitMerge)
	case *placementpb.Command_EndMerge:
		return t.endMerge(op.EndMerge)
	case *placementpb.Command_RemoveNode:
		if op.RemoveNode.Id == 0 {
			return nil, ErrNoNode
		}
		delete(t.nodes, NodeID(op.RemoveNode.Id))
		return &placementpb.Result{}, nil
	}
	return nil, fmt.Errorf("placement: unknown command %v", c)
}

// addNode registers or updates a node (placementpb.AddNode).
func (t *Table) addNode(a *placementpb.AddNode) {
	n := a.Node
	old := t.nodes[NodeID(n.Id)]
	if !a.Merge || old == nil {
		t.nodes[NodeID(n.Id)] = proto.Clone(n).(*placementpb.Node)
		return
	}
	if n.Name != "" {
		old.Name = n.Name
	}
	if n.RaftAddress != "" {
		old.RaftAddress = n.RaftAddress
	}
	if len(n.ClientUrls) > 0 {
		old.ClientUrls = slices.Clone(n.ClientUrls)
	}
	if len(n.PeerUrls) > 0 && (!a.PeersIfAbsent || len(old.PeerUrls) == 0) {
		old.PeerUrls = slices.Clone(n.PeerUrls)
	}
	if a.SetLearner {
		old.Learner = n.Learner
	}
}

func (t *Table) bootstrap(b *placementpb.Bootstrap) (*placementpb.Result, error) {
	if t.ranges.Len() > 0 {
		return nil, ErrBootstrapped
	}
	for i, k := range b.SplitKeys {
		if len(k) == 0 || (i > 0 && bytes.Compare(b.SplitKeys[i-1], k) >= 0) {
			return nil, ErrSplitKeysOrder
		}
	}
	if bound := mvcc.Revision(b.Bound); bound > t.bound {
		t.bound = bound
	}
	// The founders (absent from older logs) are registered: the placement
	// leader adds those its group lacks (Membership.FillPlacement).
	for _, m := range b.Members {
		if _, ok := t.nodes[NodeID(m)]; !ok && m != 0 {
			t.nodes[NodeID(m)] = &placementpb.Node{Id: m}
		}
	}
	starts := append([][]byte{{}}, b.SplitKeys...)
	// With range_replicas (absent from older logs) the founders are
	// placed round robin with allocated ids; without, every founder holds
	// every range under its member id, as before.
	founders := slices.Clone(b.Replicas)
	var skip map[uint64]bool
	if b.RangeReplicas > 0 {
		slices.Sort(founders)
		founders = slices.Compact(founders)
		skip = t.memberIDs(append(slices.Clone(founders), b.Members...)...)
	}
	res := &placementpb.Result{}
	for i, s := range starts {
		var end []byte
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		d := &placementpb.RangeDescriptor{Id: uint64(t.nextRangeID), Start: slices.Clone(s), End: slices.Clone(end),
			Generation: 1, Replicas: slices.Clone(b.Replicas), Founders: slices.Clone(b.Replicas)}
		if b.RangeReplicas > 0 && len(founders) > 0 {
			var pairs []*placementpb.Replica
			for j := range min(int(b.RangeReplicas), len(founders)) {
				pairs = append(pairs, &placementpb.Replica{Member: founders[(i+j)%len(founders)], Id: uint64(t.allocReplica(skip))})
			}
			setPairs(d, pairs)
			setFounders(d, clonePairs(pairs))
			d.Leader = pairs[0].Member
		}
		t.nextRangeID++
		t.put(d)
		res.Ranges = append(res.Ranges, clone(d))
	}
	return res, nil
}

func (t *Table) split(s *placementpb.Split) (*placementpb.Result, error) {
	if t.reconfiguring != 0 {
		return nil, fmt.Errorf("%w (member %x)", ErrReconfiguring, t.reconfiguring)
	}
	d, err := t.current(RangeID(s.Range), s.Generation)
	if err != nil {
		return nil, err
	}
	if err := t.refuseMerging(d); err != nil {
		return nil, err
	}
	if mv := t.moves[RangeID(d.Id)]; mv != nil {
		return nil, fmt.Errorf("%w: range %d, to replica %d", ErrMoving, d.Id, mv.To.GetId())
	}
	if bytes.Compare(s.Key, d.Start) <= 0 || (len(d.End) > 0 && bytes.Compare(s.Key, d.End) >= 0) {
		return nil, ErrSplitKey
	}
	// The new range's raft group starts with the parent's replicas, under
	// the same ids (a new group, so no id is reused within one).
	right := &placementpb.RangeDescriptor{Id: uint64(t.nextRangeID), Start: slices.Clone(s.Key), End: d.End,
		Generation: d.Generation + 1, Replicas: slices.Clone(d.Replicas), Leader: d.Leader, Parent: d.Id,
		Founders: slices.Clone(d.Replicas), ReplicaSet: clonePairs(d.ReplicaSet)}
	setFounders(right, clonePairs(d.ReplicaSet))
	t.nextRangeID++
	d.End = slices.Clone(s.Key)
	d.Generation++
	t.put(right)
	return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d), clone(right)}}, nil
}

// current returns range id if it is at generation gen.
func (t *Table) current(id RangeID, gen uint64) (*placementpb.RangeDescriptor, error) {
	found := t.byID[id]
	if found == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownRange, id)
	}
	if found.Generation != gen {
		return nil, fmt.Errorf("%w: range %d is at generation %d, not %d", ErrStaleRange, id, found.Generation, gen)
	}
	return found, nil
}

// Lookup returns the range holding key, or nil before bootstrap.
func (t *Table) Lookup(key []byte) *placementpb.RangeDescriptor {
	if found := t.lookup(key); found != nil {
		return clone(found)
	}
	return nil
}

// lookup is Lookup without the copy.
func (t *Table) lookup(key []byte) *placementpb.RangeDescriptor {
	var found *placementpb.RangeDescriptor
	t.ranges.DescendLessOrEqual(&placementpb.RangeDescriptor{Start: key}, func(d *placementpb.RangeDescriptor) bool {
		found = d
		return false
	})
	return found
}

// Overlapping returns, in key order, the ranges that hold a key of
// [start, end) (end empty: to the end of the key space).
func (t *Table) Overlapping(start, end []byte) []*placementpb.RangeDescriptor {
	var out []*placementpb.RangeDescriptor
	t.EachOverlapping(start, end, func(d *placementpb.RangeDescriptor) bool {
		out = append(out, clone(d))
		return true
	})
	return out
}

// EachOverlapping calls fn, in key order, with each range that holds a key
// of [start, end) (end empty: to the end of the key space) until fn
// returns false. fn gets the table's own descriptors, not copies: it must
// not change them, and may keep them only while the table is not changed
// again — what a reader of a table nobody changes any more (a router's
// snapshot of the map) can do on its hot path without copying.
func (t *Table) EachOverlapping(start, end []byte, fn func(d *placementpb.RangeDescriptor) bool) {
	first := t.lookup(start)
	if first == nil {
		return
	}
	t.ranges.AscendGreaterOrEqual(first, func(d *placementpb.RangeDescriptor) bool {
		if len(end) > 0 && bytes.Compare(d.Start, end) >= 0 {
			return false
		}
		return fn(d)
	})
}

// Ranges returns every range in key order.
func (t *Table) Ranges() []*placementpb.RangeDescriptor { return t.Overlapping(nil, nil) }

// Node returns a registered node, or nil.
func (t *Table) Node(id NodeID) *placementpb.Node {
	if n := t.nodes[id]; n != nil {
		return proto.Clone(n).(*placementpb.Node)
	}
	return nil
}

// Nodes returns every registered node, by id.
func (t *Table) Nodes() []*placementpb.Node {
	ids := slices.Sorted(maps.Keys(t.nodes))
	out := make([]*placementpb.Node, 0, len(ids))
	for _, id := range ids {
		out = append(out, proto.Clone(t.nodes[id]).(*placementpb.Node))
	}
	return out
}

// Bound is the oracle's persisted bound: no revision above it was handed out.
func (t *Table) Bound() mvcc.Revision { return t.bound }

// State returns the whole state, for a snapshot.
func (t *Table) State() *placementpb.State {
	st := &placementpb.State{Ranges: t.Ranges(), Bound: int64(t.bound), NextRangeId: uint64(t.nextRangeID),
		Reconfiguring: t.reconfiguring, NextReplicaId: uint64(t.nextReplicaID), Moves: t.Moves(),
		ReconfigureAdding: t.reconfAdding, ReconfigureLearner: t.reconfLearner, ReconfigureRemoving: t.reconfRemoving,
		Merges: t.Merges(), Merged: t.Tombstones(), NextMergeId: t.nextMergeID}
	ids := make([]NodeID, 0, len(t.nodes))
	for id := range t.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		st.Nodes = append(st.Nodes, t.Node(id))
	}
	return st
}

// Load replaces the table with a snapshot's state. A state written before
// replica pairs loads as the same map with each replica's id its member's
// id (normalize).
func (t *Table) Load(st *placementpb.State) {
	*t = *NewTable()
	for _, d := range st.Ranges {
		t.put(clone(d))
	}
	for _, n := range st.Nodes {
		t.nodes[NodeID(n.Id)] = proto.Clone(n).(*placementpb.Node)
	}
	t.bound = mvcc.Revision(st.Bound)
	t.nextRangeID = RangeID(st.NextRangeId)
	t.reconfiguring, t.reconfAdding, t.reconfLearner, t.reconfRemoving = st.Reconfiguring, st.ReconfigureAdding, st.ReconfigureLearner, st.ReconfigureRemoving
	t.nextReplicaID = max(ReplicaID(st.NextReplicaId), 1)
	for _, mv := range st.Moves {
		t.moves[RangeID(mv.Range)] = proto.Clone(mv).(*placementpb.Move)
	}
	for _, mg := range st.Merges {
		t.putMerge(proto.Clone(mg).(*placementpb.Merge))
	}
	for _, m := range st.Merged {
		t.merged[RangeID(m.Range)] = proto.Clone(m).(*placementpb.Merged)
	}
	t.nextMergeID = st.NextMergeId
}

// put adds or replaces d, normalized.
func (t *Table) put(d *placementpb.RangeDescriptor) {
	normalize(d)
	t.ranges.ReplaceOrInsert(d)
	t.byID[RangeID(d.Id)] = d
}

func clone(d *placementpb.RangeDescriptor) *placementpb.RangeDescriptor {
	return proto.Clone(d).(*placementpb.RangeDescriptor)
}
