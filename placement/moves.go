package placement

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// A move takes one replica of a range from one member to another. Its
// record lets whoever drives it (on the placement leader's member) resume
// it from the last step the range's raft group took, after any crash; the
// range's replicas follow the steps:
//
//	begin_move r1 g1 from=1 to=4       → move r1 1:1 → 4:6, begun (id 6 allocated; replicas unchanged)
//	advance_move r1 to=6 begun→added   → replicas + 4:6 (learner)
//	advance_move r1 to=6 added→promoted→ 4:6 votes
//	advance_move r1 to=6 promoted→left → replicas − 1:1
//	end_move r1 to=6 done              → no move open
//
// Before LEFT a move may be abandoned: advance to UNDOING (the driver
// takes the destination out of the group), then end_move not done, which
// takes it out of the replicas. While a move of a range is open the range
// does not split, and add/promote/remove_replica leave its source and
// destination alone.

// nextSteps are the steps a move may advance to from each step.
var nextSteps = map[placementpb.MoveStep][]placementpb.MoveStep{
	placementpb.MoveStep_MOVE_STEP_UNSPECIFIED: {placementpb.MoveStep_ADDED, placementpb.MoveStep_UNDOING},
	placementpb.MoveStep_ADDED:                 {placementpb.MoveStep_PROMOTED, placementpb.MoveStep_UNDOING},
	placementpb.MoveStep_PROMOTED:              {placementpb.MoveStep_LEFT, placementpb.MoveStep_UNDOING},
}

// Moves returns the open moves, by range.
func (t *Table) Moves() []*placementpb.Move {
	out := make([]*placementpb.Move, 0, len(t.moves))
	for _, mv := range t.moves {
		out = append(out, proto.Clone(mv).(*placementpb.Move))
	}
	slices.SortFunc(out, func(a, b *placementpb.Move) int { return cmp.Compare(a.Range, b.Range) })
	if len(out) == 0 {
		return nil
	}
	return out
}

func (t *Table) beginMove(c *placementpb.BeginMove) (*placementpb.Result, error) {
	d, err := t.current(RangeID(c.Range), c.Generation)
	if err != nil {
		return nil, err
	}
	if mv := t.moves[RangeID(d.Id)]; mv != nil {
		if mv.From.GetMember() == c.FromMember && mv.To.GetMember() == c.ToMember {
			return moveResult(d, mv), nil // the same move again
		}
		return nil, fmt.Errorf("%w: range %d, to replica %d", ErrMoving, d.Id, mv.To.GetId())
	}
	if err := t.refuseMerging(d); err != nil {
		return nil, err
	}
	if c.ToMember == 0 {
		return nil, ErrNoNode
	}
	from := pairOf(d.ReplicaSet, c.FromMember)
	if from == nil || from.Learner {
		return nil, fmt.Errorf("%w: range %d has no voter on member %x", ErrNoReplica, d.Id, c.FromMember)
	}
	if pairOf(d.ReplicaSet, c.ToMember) != nil {
		return nil, fmt.Errorf("%w: range %d, member %x", ErrHasReplica, d.Id, c.ToMember)
	}
	id := t.allocReplica(t.memberIDs(c.ToMember))
	mv := &placementpb.Move{Range: d.Id, Generation: d.Generation, From: proto.Clone(from).(*placementpb.Replica),
		To: &placementpb.Replica{Member: c.ToMember, Id: uint64(id), Learner: true}}
	t.moves[RangeID(d.Id)] = mv
	return moveResult(d, mv), nil
}

func (t *Table) advanceMove(c *placementpb.AdvanceMove) (*placementpb.Result, error) {
	d, mv, err := t.openMove(c.Range, c.ToId)
	if err != nil {
		return nil, err
	}
	if mv.Step == c.Step {
		return moveResult(d, mv), nil // recorded already
	}
	if mv.Step != c.FromStep {
		return nil, fmt.Errorf("%w: range %d's move is %s, not %s", ErrMoveStep, d.Id, stepName(mv.Step), stepName(c.FromStep))
	}
	if !slices.Contains(nextSteps[mv.Step], c.Step) {
		return nil, fmt.Errorf("%w: range %d's move is %s; it cannot go to %s", ErrMoveStep, d.Id, stepName(mv.Step), stepName(c.Step))
	}
	switch c.Step {
	case placementpb.MoveStep_ADDED:
		if pairByID(d.ReplicaSet, mv.To.Id) == nil {
			setPairs(d, append(d.ReplicaSet, proto.Clone(mv.To).(*placementpb.Replica)))
		}
	case placementpb.MoveStep_PROMOTED:
		if r := pairByID(d.ReplicaSet, mv.To.Id); r != nil {
			r.Learner = false
			setPairs(d, d.ReplicaSet)
		}
		mv.To.Learner = false
	case placementpb.MoveStep_LEFT:
		setPairs(d, slices.DeleteFunc(d.ReplicaSet, func(r *placementpb.Replica) bool { return r.Id == mv.From.Id }))
		forgetLeader(d, mv.From.Member)
	}
	mv.Step = c.Step
	return moveResult(d, mv), nil
}

func (t *Table) endMove(c *placementpb.EndMove) (*placementpb.Result, error) {
	d, mv, err := t.openMove(c.Range, c.ToId)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Done && mv.Step != placementpb.MoveStep_LEFT,
		!c.Done && mv.Step != placementpb.MoveStep_MOVE_STEP_UNSPECIFIED && mv.Step != placementpb.MoveStep_UNDOING:
		what := "done"
		if !c.Done {
			what = "abandoned"
		}
		return nil, fmt.Errorf("%w: range %d's move is %s; it cannot end %s", ErrMoveStep, d.Id, stepName(mv.Step), what)
	}
	if !c.Done {
		setPairs(d, slices.DeleteFunc(d.ReplicaSet, func(r *placementpb.Replica) bool { return r.Id == mv.To.Id }))
		forgetLeader(d, mv.To.Member)
	}
	delete(t.moves, RangeID(d.Id))
	return moveResult(d, mv), nil
}

// openMove returns range r and its open move to replica to.
func (t *Table) openMove(r, to uint64) (*placementpb.RangeDescriptor, *placementpb.Move, error) {
	d := t.byID[RangeID(r)]
	if d == nil {
		return nil, nil, fmt.Errorf("%w: %d", ErrUnknownRange, r)
	}
	mv := t.moves[RangeID(r)]
	if mv == nil || mv.To.GetId() != to {
		return nil, nil, fmt.Errorf("%w: range %d, to replica %d", ErrNoMove, r, to)
	}
	return d, mv, nil
}

func moveResult(d *placementpb.RangeDescriptor, mv *placementpb.Move) *placementpb.Result {
	return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d)}, Move: proto.Clone(mv).(*placementpb.Move)}
}

// stepName names a step in messages.
func stepName(s placementpb.MoveStep) string {
	if s == placementpb.MoveStep_MOVE_STEP_UNSPECIFIED {
		return "begun"
	}
	return strings.ToLower(s.String())
}
