package placement

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// A merge makes two adjacent ranges one (docs/plan-merge.md): the left
// range L absorbs the right range R in place and keeps its id. Its record
// lets whoever drives it (on the placement leader's member) resume it from
// the last step the ranges' raft groups took, after any crash; the map
// changes only once L's log committed it:
//
//	r1 [,m) g2 {1 2 3}  r2 [m,∞) g3 {1 2 3}
//	begin_merge r1 g2 r2 g3        → merge m1 r2 → r1 begun (ranges unchanged; both refuse
//	                                 splits, moves and replica changes)
//	advance_merge m1 begun→frozen  → frozen at R's freeze index
//	commit_merge m1                → r1 [,∞) g4, r2 gone, tombstone r2 → r1 g4; committed
//	end_merge m1 done              → no merge open
//
// Before the commit a merge may be abandoned: advance to ABORTING (the
// driver records the abort in L's log, then thaws R), then end_merge not
// done. L's log decides between commit and abort, and the map follows it:
// commit_merge is taken at any step, ABORTING included.
//
// Invariant: a range is in at most one open merge; a range in one has no
// open move; while any merge is open no membership change is marked.
// Invariant: an open merge before COMMITTED names two live ranges at its
// recorded generations, R starting where L ends; a COMMITTED one names a
// live L and a tombstone of R.
// Invariant: every tombstone leads, through the tombstones of the ranges
// it names, to a live range (MergedInto).

// Refusals of the merge commands, and of what an open merge holds back.
var (
	ErrMerging     = errors.New("placement: a merge of the range is open")
	ErrNotAligned  = errors.New("placement: the ranges' replicas are not voters on the same members")
	ErrNotAdjacent = errors.New("placement: the right range does not start where the left one ends")
	ErrNoMerge     = errors.New("placement: no such merge is open")
	ErrMergeStep   = errors.New("placement: the merge is not at the step that allows it")
)

// mergeSteps are the steps advance_merge may take from each step.
var mergeSteps = map[placementpb.MergeStep][]placementpb.MergeStep{
	placementpb.MergeStep_BEGUN:  {placementpb.MergeStep_FROZEN, placementpb.MergeStep_ABORTING},
	placementpb.MergeStep_FROZEN: {placementpb.MergeStep_ABORTING},
}

// Merges returns the open merges, by id.
func (t *Table) Merges() []*placementpb.Merge {
	out := make([]*placementpb.Merge, 0, len(t.merges))
	for _, mg := range t.merges {
		out = append(out, proto.Clone(mg).(*placementpb.Merge))
	}
	slices.SortFunc(out, func(a, b *placementpb.Merge) int { return cmp.Compare(a.Id, b.Id) })
	if len(out) == 0 {
		return nil
	}
	return out
}

// MergedInto returns the live range that holds what range id held when it
// was merged away, following the tombstones of ranges merged away since
// (r3 → r2, r2 → r1: r1); ok is false if id was never merged away (a live
// range, or one the map never had). The keys may since have moved further
// by splits of that range: its descendants are the map's, by key.
func (t *Table) MergedInto(id RangeID) (RangeID, bool) {
	tomb := t.merged[id]
	if tomb == nil {
		return 0, false
	}
	for tomb != nil {
		id = RangeID(tomb.Into)
		tomb = t.merged[id]
	}
	return id, true
}

// Tombstones returns the tombstones of the ranges merged away, by range.
func (t *Table) Tombstones() []*placementpb.Merged {
	ids := slices.Sorted(maps.Keys(t.merged))
	if len(ids) == 0 {
		return nil
	}
	out := make([]*placementpb.Merged, 0, len(ids))
	for _, id := range ids {
		out = append(out, proto.Clone(t.merged[id]).(*placementpb.Merged))
	}
	return out
}

// mergeOf returns the open merge that range id is in, or nil.
func (t *Table) mergeOf(id RangeID) *placementpb.Merge {
	return t.merges[t.merging[id]]
}

// refuseMerging refuses a change of range d while it is in an open merge.
func (t *Table) refuseMerging(d *placementpb.RangeDescriptor) error {
	if mg := t.mergeOf(RangeID(d.Id)); mg != nil {
		return fmt.Errorf("%w: range %d, merge %d of r%d into r%d", ErrMerging, d.Id, mg.Id, mg.Right, mg.Left)
	}
	return nil
}

func (t *Table) beginMerge(c *placementpb.BeginMerge) (*placementpb.Result, error) {
	l, err := t.current(RangeID(c.Left), c.LeftGeneration)
	if err != nil {
		return nil, err
	}
	r, err := t.current(RangeID(c.Right), c.RightGeneration)
	if err != nil {
		return nil, err
	}
	if mg := t.mergeOf(RangeID(l.Id)); mg != nil && mg.Left == l.Id && mg.Right == r.Id {
		return t.mergeResult(mg), nil // the same merge again
	}
	for _, d := range []*placementpb.RangeDescriptor{l, r} {
		if err := t.refuseMerging(d); err != nil {
			return nil, err
		}
	}
	if len(l.End) == 0 || !bytes.Equal(l.End, r.Start) {
		return nil, fmt.Errorf("%w: r%d ends at %q, r%d starts at %q", ErrNotAdjacent, l.Id, l.End, r.Id, r.Start)
	}
	if t.reconfiguring != 0 {
		return nil, fmt.Errorf("%w (member %x)", ErrReconfiguring, t.reconfiguring)
	}
	for _, d := range []*placementpb.RangeDescriptor{l, r} {
		if mv := t.moves[RangeID(d.Id)]; mv != nil {
			return nil, fmt.Errorf("%w: range %d, to replica %d", ErrMoving, d.Id, mv.To.GetId())
		}
	}
	if lm, rm := alignedMembers(l), alignedMembers(r); lm == "" || lm != rm {
		return nil, fmt.Errorf("%w: r%d %s, r%d %s", ErrNotAligned, l.Id, fmtMembers(l), r.Id, fmtMembers(r))
	}
	id := max(t.nextMergeID, 1)
	t.nextMergeID = id + 1
	mg := &placementpb.Merge{Id: id, Left: l.Id, Right: r.Id, LeftGeneration: l.Generation, RightGeneration: r.Generation}
	t.putMerge(mg)
	return t.mergeResult(mg), nil
}

// alignedMembers is d's replicas' members, sorted, if every replica
// votes; "" if one is a learner (or there is none).
func alignedMembers(d *placementpb.RangeDescriptor) string {
	pairs := Pairs(d)
	ms := make([]uint64, 0, len(pairs))
	for _, p := range pairs {
		if p.Learner {
			return ""
		}
		ms = append(ms, p.Member)
	}
	if len(ms) == 0 {
		return ""
	}
	slices.Sort(ms)
	return fmt.Sprint(ms)
}

// fmtMembers prints d's replicas for a refusal: members, a learner's with
// "/l".
func fmtMembers(d *placementpb.RangeDescriptor) string {
	var parts []string
	for _, p := range Pairs(d) {
		s := fmt.Sprintf("%x", p.Member)
		if p.Learner {
			s += "/l"
		}
		parts = append(parts, s)
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func (t *Table) advanceMerge(c *placementpb.AdvanceMerge) (*placementpb.Result, error) {
	mg, err := t.openMerge(c.Merge)
	if err != nil {
		return nil, err
	}
	if mg.Step == c.Step {
		return t.mergeResult(mg), nil // recorded already
	}
	if mg.Step != c.FromStep {
		return nil, fmt.Errorf("%w: merge %d is %s, not %s", ErrMergeStep, mg.Id, mergeStepName(mg.Step), mergeStepName(c.FromStep))
	}
	if !slices.Contains(mergeSteps[mg.Step], c.Step) {
		return nil, fmt.Errorf("%w: merge %d is %s; it cannot go to %s", ErrMergeStep, mg.Id, mergeStepName(mg.Step), mergeStepName(c.Step))
	}
	if c.Step == placementpb.MergeStep_FROZEN {
		mg.FreezeIndex = c.FreezeIndex
	}
	mg.Step = c.Step
	return t.mergeResult(mg), nil
}

func (t *Table) commitMerge(c *placementpb.CommitMerge) (*placementpb.Result, error) {
	mg, err := t.openMerge(c.Merge)
	if err != nil {
		return nil, err
	}
	if mg.Step == placementpb.MergeStep_COMMITTED {
		return t.mergeResult(mg), nil
	}
	l, r := t.byID[RangeID(mg.Left)], t.byID[RangeID(mg.Right)]
	if l == nil || r == nil || !bytes.Equal(l.End, r.Start) {
		invariant("open merge %d (r%d into r%d) names ranges %v and %v", mg.Id, mg.Right, mg.Left, l, r)
	}
	t.ranges.Delete(r)
	delete(t.byID, RangeID(r.Id))
	l.End = slices.Clone(r.End)
	l.Generation = max(l.Generation, r.Generation) + 1
	t.merged[RangeID(r.Id)] = &placementpb.Merged{Range: r.Id, Into: l.Id, Generation: l.Generation}
	delete(t.merging, RangeID(r.Id))
	mg.Step = placementpb.MergeStep_COMMITTED
	return t.mergeResult(mg), nil
}

func (t *Table) endMerge(c *placementpb.EndMerge) (*placementpb.Result, error) {
	mg, err := t.openMerge(c.Merge)
	if err != nil {
		return nil, err
	}
	want, what := placementpb.MergeStep_ABORTING, "abandoned"
	if c.Done {
		want, what = placementpb.MergeStep_COMMITTED, "done"
	}
	if mg.Step != want {
		return nil, fmt.Errorf("%w: merge %d is %s; it cannot end %s", ErrMergeStep, mg.Id, mergeStepName(mg.Step), what)
	}
	res := t.mergeResult(mg)
	delete(t.merges, mg.Id)
	for _, id := range []uint64{mg.Left, mg.Right} {
		if t.merging[RangeID(id)] == mg.Id {
			delete(t.merging, RangeID(id))
		}
	}
	return res, nil
}

// openMerge returns the open merge id.
func (t *Table) openMerge(id uint64) (*placementpb.Merge, error) {
	mg := t.merges[id]
	if mg == nil {
		return nil, fmt.Errorf("%w: %d", ErrNoMerge, id)
	}
	return mg, nil
}

// putMerge records mg open, and its ranges in it (the right one only until
// the commit: then it is gone).
func (t *Table) putMerge(mg *placementpb.Merge) {
	t.merges[mg.Id] = mg
	t.merging[RangeID(mg.Left)] = mg.Id
	if mg.Step != placementpb.MergeStep_COMMITTED {
		t.merging[RangeID(mg.Right)] = mg.Id
	}
}

// mergeResult answers a merge command: the merge and its ranges still in
// the map (left, then right).
func (t *Table) mergeResult(mg *placementpb.Merge) *placementpb.Result {
	res := &placementpb.Result{Merge: proto.Clone(mg).(*placementpb.Merge)}
	for _, id := range []uint64{mg.Left, mg.Right} {
		if d := t.byID[RangeID(id)]; d != nil {
			res.Ranges = append(res.Ranges, clone(d))
		}
	}
	return res
}

// mergeStepName names a step in messages.
func mergeStepName(s placementpb.MergeStep) string { return strings.ToLower(s.String()) }

// invariant panics with what a broken invariant of the table was found to
// be: the map's state would be wrong on every replica alike.
func invariant(format string, args ...any) {
	panic(fmt.Sprintf("placement: broken invariant: "+format, args...))
}
