package placement

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestTableMergeModel applies random merge, split, move, replica and
// membership commands (stale, misplaced and out-of-order ones included) to
// a map of ranges on three members, and checks after every step: the
// ranges tile the key space; every open merge before its commit names two
// live neighbours at its recorded generations, a committed one a live
// left range and a tombstone of the right one; no range is in two open
// merges, or in one while a move of it is open; no membership change is
// marked while a merge is open; every tombstone leads, through the chain,
// to a live range, and names no live range; a range's generation never
// falls. At the end, replaying the log from scratch, and from a snapshot
// taken halfway, gives the same state.
func TestTableMergeModel(t *testing.T) {
	committed, abandoned := 0, 0
	for seed := uint64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewPCG(seed, 3))
		tb := NewTable()
		log := []*placementpb.Command{{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
			SplitKeys: [][]byte{[]byte("300"), []byte("600")}, Replicas: []uint64{1, 2, 3}}}}}
		tb.Apply(log[0])
		gens := map[uint64]uint64{}
		var half *placementpb.State
		for step := 0; step < 400; step++ {
			if step == 200 {
				half = tb.State()
			}
			rs := tb.Ranges()
			i := r.IntN(len(rs))
			d := rs[i]
			gen := d.Generation
			if r.IntN(10) == 0 {
				gen-- // stale
			}
			open := tb.Merges()
			var mg *placementpb.Merge
			if len(open) > 0 {
				mg = open[r.IntN(len(open))]
			}
			var c *placementpb.Command
			switch x := r.IntN(20); {
			case x < 3:
				c = &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: d.Id, Generation: gen,
					Key: []byte(fmt.Sprintf("%03d", r.IntN(1000)))}}}
			case x < 7:
				right := rs[min(i+1, len(rs)-1)]
				if r.IntN(8) == 0 {
					right = rs[r.IntN(len(rs))] // likely not adjacent
				}
				c = &placementpb.Command{Op: &placementpb.Command_BeginMerge{BeginMerge: &placementpb.BeginMerge{
					Left: d.Id, LeftGeneration: gen, Right: right.Id, RightGeneration: right.Generation}}}
			case x < 10:
				a := &placementpb.AdvanceMerge{Merge: uint64(r.IntN(5)), FromStep: placementpb.MergeStep(r.IntN(4)),
					Step: placementpb.MergeStep(r.IntN(4)), FreezeIndex: uint64(r.IntN(100))}
				if mg != nil && r.IntN(4) > 0 {
					a.Merge, a.FromStep = mg.Id, mg.Step
					if next := mergeSteps[mg.Step]; len(next) > 0 {
						a.Step = next[r.IntN(len(next))]
					}
				}
				c = &placementpb.Command{Op: &placementpb.Command_AdvanceMerge{AdvanceMerge: a}}
			case x < 12:
				c = &placementpb.Command{Op: &placementpb.Command_CommitMerge{CommitMerge: &placementpb.CommitMerge{Merge: mg.GetId()}}}
			case x < 14:
				c = &placementpb.Command{Op: &placementpb.Command_EndMerge{EndMerge: &placementpb.EndMerge{Merge: mg.GetId(), Done: r.IntN(2) == 0}}}
			case x < 15:
				c = &placementpb.Command{Op: &placementpb.Command_BeginMove{BeginMove: &placementpb.BeginMove{Range: d.Id, Generation: gen,
					FromMember: uint64(1 + r.IntN(3)), ToMember: uint64(4 + r.IntN(2))}}}
			case x < 16:
				mv := tb.moves[RangeID(d.Id)]
				c = &placementpb.Command{Op: &placementpb.Command_EndMove{EndMove: &placementpb.EndMove{Range: d.Id, ToId: mv.GetTo().GetId()}}}
			case x < 17:
				c = &placementpb.Command{Op: &placementpb.Command_AddReplica{AddReplica: &placementpb.AddReplica{Range: d.Id,
					Member: uint64(1 + r.IntN(5)), Learner: r.IntN(2) == 0}}}
			case x < 18:
				if p := Pairs(d); len(p) > 3 {
					c = &placementpb.Command{Op: &placementpb.Command_RemoveReplica{RemoveReplica: &placementpb.RemoveReplica{Range: d.Id, Id: p[len(p)-1].Id}}}
				} else {
					c = &placementpb.Command{Op: &placementpb.Command_PromoteReplica{PromoteReplica: &placementpb.PromoteReplica{Range: d.Id, Id: p[0].Id}}}
				}
			default:
				c = &placementpb.Command{Op: &placementpb.Command_Reconfigure{Reconfigure: &placementpb.Reconfigure{Member: 9, Done: r.IntN(2) == 0}}}
			}
			before := proto.Clone(tb.State()).(*placementpb.State)
			res := tb.Apply(c)
			log = append(log, c)
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("seed %d step %d (%v → %q): %s\n%s\n%s\n%s", seed, step, c, res.Error, fmt.Sprintf(format, args...),
					fmtRanges(tb.Ranges()), fmtMerges(tb.Merges()), fmtTombstones(tb))
			}
			if res.Error != "" && !proto.Equal(before, tb.State()) {
				fail("a refused command changed the state")
			}
			if e, ok := c.Op.(*placementpb.Command_EndMerge); ok && res.Error == "" {
				if e.EndMerge.Done {
					committed++
				} else {
					abandoned++
				}
			}
			rs = tb.Ranges()
			if len(rs[0].Start) != 0 || len(rs[len(rs)-1].End) != 0 {
				fail("the ranges do not cover the key space")
			}
			for i := 1; i < len(rs); i++ {
				if !bytes.Equal(rs[i-1].End, rs[i].Start) {
					fail("gap or overlap")
				}
			}
			live := map[uint64]*placementpb.RangeDescriptor{}
			for _, d := range rs {
				live[d.Id] = d
				if d.Generation < gens[d.Id] {
					fail("r%d's generation fell from %d to %d", d.Id, gens[d.Id], d.Generation)
				}
				gens[d.Id] = d.Generation
			}
			in := map[uint64]uint64{}
			for _, mg := range tb.Merges() {
				if tb.reconfiguring != 0 {
					fail("member %x marked while merge %d is open", tb.reconfiguring, mg.Id)
				}
				ids := []uint64{mg.Left}
				l, rr := live[mg.Left], live[mg.Right]
				if mg.Step == placementpb.MergeStep_COMMITTED {
					if l == nil || rr != nil || tb.merged[RangeID(mg.Right)].GetInto() != mg.Left {
						fail("committed merge %d: left live %t, right live %t, tombstone %v", mg.Id, l != nil, rr != nil, tb.merged[RangeID(mg.Right)])
					}
				} else {
					ids = append(ids, mg.Right)
					if l == nil || rr == nil || !bytes.Equal(l.End, rr.Start) || l.Generation != mg.LeftGeneration || rr.Generation != mg.RightGeneration {
						fail("open merge %d does not name two live neighbours at its generations", mg.Id)
					}
				}
				for _, id := range ids {
					if other, ok := in[id]; ok {
						fail("r%d in merges %d and %d", id, other, mg.Id)
					}
					in[id] = mg.Id
					if tb.moves[RangeID(id)] != nil {
						fail("r%d merging and moving", id)
					}
				}
			}
			for _, m := range tb.Tombstones() {
				if live[m.Range] != nil {
					fail("tombstone of live r%d", m.Range)
				}
				if into, ok := tb.MergedInto(RangeID(m.Range)); !ok || live[uint64(into)] == nil {
					fail("tombstone r%d leads to r%d, not a live range", m.Range, into)
				}
			}
		}
		checkReplay(t, seed, tb, log, half, 201)
	}
	if committed == 0 || abandoned == 0 {
		t.Fatalf("the random commands ended %d merges done and %d abandoned: too few to test merges", committed, abandoned)
	}
	t.Logf("%d merges done, %d abandoned", committed, abandoned)
}
