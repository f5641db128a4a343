package placement

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestTableModel splits random ranges at random keys (stale generations and
// bad keys included) and checks after every step that the ranges tile the
// key space, that every key is looked up in the range that holds it, and
// that a snapshot round trip keeps the state.
func TestTableModel(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewPCG(seed, 0))
		tb := NewTable()
		tb.Apply(&placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{}}})
		for step := 0; step < 200; step++ {
			rs := tb.Ranges()
			d := rs[r.IntN(len(rs))]
			gen := d.Generation
			if r.IntN(10) == 0 {
				gen-- // stale
			}
			key := []byte(fmt.Sprintf("%03d", r.IntN(1000)))
			res := tb.Apply(&placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: d.Id, Generation: gen, Key: key}}})
			inside := bytes.Compare(key, d.Start) > 0 && (len(d.End) == 0 || bytes.Compare(key, d.End) < 0)
			if ok := res.Error == ""; ok != (inside && gen == d.Generation) {
				t.Fatalf("seed %d step %d: split %v at %q gen %d: %q", seed, step, fmtRange(d), key, gen, res.Error)
			}
			rs = tb.Ranges()
			if len(rs[0].Start) != 0 || len(rs[len(rs)-1].End) != 0 {
				t.Fatalf("seed %d step %d: the ranges do not cover the key space: %s", seed, step, fmtRanges(rs))
			}
			for i := 1; i < len(rs); i++ {
				if !bytes.Equal(rs[i-1].End, rs[i].Start) {
					t.Fatalf("seed %d step %d: gap or overlap: %s", seed, step, fmtRanges(rs))
				}
			}
			probe := []byte(fmt.Sprintf("%03d", r.IntN(1000)))
			got := tb.Lookup(probe)
			if bytes.Compare(probe, got.Start) < 0 || (len(got.End) > 0 && bytes.Compare(probe, got.End) >= 0) {
				t.Fatalf("seed %d step %d: lookup(%q) = %s", seed, step, probe, fmtRange(got))
			}
		}
		other := NewTable()
		other.Load(tb.State())
		if a, b := fmtRanges(tb.Ranges()), fmtRanges(other.Ranges()); a != b {
			t.Fatalf("seed %d: snapshot round trip:\n%s\n%s", seed, a, b)
		}
	}
}

// TestTableReplicaModel applies random replica and move commands (refused
// ones included) to a map of five founders with three replicas per range,
// and checks after every step: within a range no replica id or member
// twice, at least one voter, the mirrors (replicas, founders) equal to the
// pairs' voters' members, every newly seen replica id allocated above all
// earlier ones and never equal to a member id the table knew of, no id
// seen again once gone, each open move consistent with its range; at the
// end, that replaying the log from scratch, and from a snapshot taken
// halfway, gives the same state.
func TestTableReplicaModel(t *testing.T) {
	steps := []placementpb.MoveStep{placementpb.MoveStep_MOVE_STEP_UNSPECIFIED, placementpb.MoveStep_ADDED,
		placementpb.MoveStep_PROMOTED, placementpb.MoveStep_LEFT, placementpb.MoveStep_UNDOING}
	done, abandoned := 0, 0 // moves ended, over all seeds
	for seed := uint64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		tb := NewTable()
		log := []*placementpb.Command{{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
			SplitKeys: [][]byte{[]byte("300"), []byte("600")}, Replicas: []uint64{5, 3, 1, 4, 2}, RangeReplicas: 3}}}}
		tb.Apply(log[0])
		seen, gone := map[uint64]bool{}, map[uint64]bool{}
		for _, d := range tb.Ranges() {
			for _, p := range d.ReplicaSet {
				seen[p.Id] = true
			}
		}
		var half *placementpb.State
		member := func() uint64 { return uint64(1 + r.IntN(8)) }
		for step := 0; step < 300; step++ {
			if step == 150 {
				half = tb.State()
			}
			rs := tb.Ranges()
			d := rs[r.IntN(len(rs))]
			pairID := func() uint64 {
				if p := Pairs(d); len(p) > 0 && r.IntN(8) > 0 {
					return p[r.IntN(len(p))].Id
				}
				return uint64(r.IntN(40))
			}
			var c *placementpb.Command
			switch r.IntN(10) {
			case 0:
				c = &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: d.Id, Generation: d.Generation,
					Key: []byte(fmt.Sprintf("%03d", r.IntN(1000)))}}}
			case 1:
				c = &placementpb.Command{Op: &placementpb.Command_AddReplica{AddReplica: &placementpb.AddReplica{Range: d.Id, Member: member(), Learner: r.IntN(2) == 0}}}
			case 2:
				c = &placementpb.Command{Op: &placementpb.Command_PromoteReplica{PromoteReplica: &placementpb.PromoteReplica{Range: d.Id, Id: pairID()}}}
			case 3:
				c = &placementpb.Command{Op: &placementpb.Command_RemoveReplica{RemoveReplica: &placementpb.RemoveReplica{Range: d.Id, Id: pairID()}}}
			case 4:
				gen := d.Generation
				if r.IntN(10) == 0 {
					gen--
				}
				c = &placementpb.Command{Op: &placementpb.Command_BeginMove{BeginMove: &placementpb.BeginMove{Range: d.Id, Generation: gen, FromMember: member(), ToMember: member()}}}
			case 5, 6:
				mv := tb.moves[RangeID(d.Id)]
				from, to := steps[r.IntN(len(steps))], steps[r.IntN(len(steps))]
				if mv != nil && r.IntN(4) > 0 {
					from = mv.Step
					if next := nextSteps[mv.Step]; len(next) > 0 {
						to = next[r.IntN(len(next))]
					}
				}
				c = &placementpb.Command{Op: &placementpb.Command_AdvanceMove{AdvanceMove: &placementpb.AdvanceMove{Range: d.Id, ToId: mv.GetTo().GetId(), FromStep: from, Step: to}}}
			case 7:
				c = &placementpb.Command{Op: &placementpb.Command_EndMove{EndMove: &placementpb.EndMove{Range: d.Id, ToId: tb.moves[RangeID(d.Id)].GetTo().GetId(), Done: r.IntN(2) == 0}}}
			case 8:
				c = &placementpb.Command{Op: &placementpb.Command_AddNode{AddNode: &placementpb.AddNode{Node: &placementpb.Node{Id: member()}}}}
			case 9:
				c = &placementpb.Command{Op: &placementpb.Command_RemoveNode{RemoveNode: &placementpb.RemoveNode{Id: member()}}}
			}
			members, nextBefore := tb.memberIDs(), tb.nextReplicaID
			if a, ok := c.Op.(*placementpb.Command_AddReplica); ok {
				members[a.AddReplica.Member] = true
			}
			if b, ok := c.Op.(*placementpb.Command_BeginMove); ok {
				members[b.BeginMove.ToMember] = true
			}
			res := tb.Apply(c)
			log = append(log, c)
			if e, ok := c.Op.(*placementpb.Command_EndMove); ok && res.Error == "" {
				if e.EndMove.Done {
					done++
				} else {
					abandoned++
				}
			}
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("seed %d step %d (%v): %s\n%s\n%s", seed, step, c, fmt.Sprintf(format, args...), fmtRanges(tb.Ranges()), fmtMoves(tb.Moves()))
			}
			present := map[uint64]bool{}
			for _, d := range tb.Ranges() {
				ids, ms := map[uint64]bool{}, map[uint64]bool{}
				for _, p := range d.ReplicaSet {
					if ids[p.Id] || ms[p.Member] {
						fail("r%d holds id %d or member %d twice", d.Id, p.Id, p.Member)
					}
					ids[p.Id], ms[p.Member] = true, true
					present[p.Id] = true
				}
				for _, p := range d.FounderSet {
					present[p.Id] = true
				}
				if len(Voters(d)) == 0 {
					fail("r%d has no voter", d.Id)
				}
				if fmt.Sprint(d.Replicas) != fmt.Sprint(voterMembers(d.ReplicaSet)) || fmt.Sprint(d.Founders) != fmt.Sprint(voterMembers(d.FounderSet)) {
					fail("r%d's mirrors differ from its pairs", d.Id)
				}
			}
			for _, mv := range tb.Moves() {
				present[mv.To.Id] = true
				d := tb.byID[RangeID(mv.Range)]
				if d.Generation != mv.Generation {
					fail("r%d moved at generation %d is at %d", d.Id, mv.Generation, d.Generation)
				}
				hasFrom, hasTo := pairByID(d.ReplicaSet, mv.From.Id) != nil, pairByID(d.ReplicaSet, mv.To.Id) != nil
				// Undoing, the destination may have been added or not.
				wantTo := mv.Step != placementpb.MoveStep_MOVE_STEP_UNSPECIFIED
				if mv.Step == placementpb.MoveStep_UNDOING {
					wantTo = hasTo
				}
				if hasFrom != (mv.Step != placementpb.MoveStep_LEFT) || hasTo != wantTo {
					fail("r%d's replicas do not match its move at %v", d.Id, mv.Step)
				}
			}
			for id := range present {
				switch {
				case gone[id]:
					fail("replica id %d is back", id)
				case !seen[id] && (ReplicaID(id) < nextBefore || members[id]):
					fail("replica id %d reissued (next was %d) or a member's", id, nextBefore)
				case ReplicaID(id) >= tb.nextReplicaID:
					fail("replica id %d not below next %d", id, tb.nextReplicaID)
				}
				seen[id] = true
			}
			for id := range seen {
				if !present[id] {
					gone[id] = true
				}
			}
		}
		checkReplay(t, seed, tb, log, half, 151)
	}
	if done == 0 || abandoned == 0 {
		t.Fatalf("the random commands ended %d moves done and %d abandoned: too few to test moves", done, abandoned)
	}
	t.Logf("%d moves done, %d abandoned", done, abandoned)
}

// checkReplay fails t unless log, applied to a new table, gives tb's state,
// and so does log[from:] applied to a table loaded with half (the state
// after log[:from]).
func checkReplay(t *testing.T, seed uint64, tb *Table, log []*placementpb.Command, half *placementpb.State, from int) {
	t.Helper()
	replay := NewTable()
	for _, c := range log {
		replay.Apply(c)
	}
	if !proto.Equal(replay.State(), tb.State()) {
		t.Fatalf("seed %d: the log replayed gives another state", seed)
	}
	resumed := NewTable()
	resumed.Load(half)
	for _, c := range log[from:] {
		resumed.Apply(c)
	}
	if !proto.Equal(resumed.State(), tb.State()) {
		t.Fatalf("seed %d: the log replayed on the halfway snapshot gives another state", seed)
	}
}
