package placement

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestDataDriven runs every file in testdata: the range map and node
// registry (table, bootstrap, membership), replica pairs and ids
// (replicas), moves (moves), merges (merges), the revision oracle across leaders (oracle),
// a bootstrap on a restored backup (restored); the scripts in
// testdata/client are TestClient's. Commands:
//
//	bootstrap [split=a,b] [replicas=1,2,3] [bound=B] [range-replicas=R] [members=1,2]
//	split range=N gen=G key=K
//	leader range=N gen=G node=M
//	add-node id=N addr=A | remove-node id=N
//	change-replicas range=N [add=M] [remove=M]
//	add-replica range=N member=M [learner] | promote-replica range=N id=I | remove-replica range=N id=I
//	begin-move range=N gen=G from=M to=M
//	advance-move range=N to=I from-step=S step=S   (steps: begun added promoted left undoing)
//	end-move range=N to=I [done]
//	begin-merge left=N lgen=G right=N rgen=G
//	advance-merge merge=M from-step=S step=S [freeze=I]   (steps: begun frozen committed aborting)
//	commit-merge merge=M | end-merge merge=M [done]
//	merges                               open merges and tombstones
//	merged-into range=N                  where a merged range's keys went
//	raise bound=B
//	lookup key=K | overlapping [start=S] [end=E] | ranges | node id=N | moves
//	snapshot-roundtrip                   State → Load → State must agree
//
// A range prints its pairs (member:id, "/l" a learner) when any replica's
// id is not its member's or a learner, its founders' pairs when they
// differ from its pairs.
//
//	oracle persisted=B window=W          a new leader's oracle
//	take n=N | want n=N | persisted bound=B
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if filepath.Dir(path) != "testdata" {
			t.Skip("TestClient's script")
		}
		tb := NewTable()
		var o *Oracle
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg, num := cmdArgs(d)
			var cmd *placementpb.Command
			switch d.Cmd {
			case "bootstrap":
				b := &placementpb.Bootstrap{}
				if s := arg("split"); s != "" {
					for _, k := range strings.Split(s, ",") {
						b.SplitKeys = append(b.SplitKeys, []byte(k))
					}
				}
				if s := arg("replicas"); s != "" {
					for _, r := range strings.Split(s, ",") {
						n, _ := strconv.ParseUint(r, 10, 64)
						b.Replicas = append(b.Replicas, n)
					}
				}
				b.Bound = int64(num("bound"))
				b.RangeReplicas = uint32(num("range-replicas"))
				if s := arg("members"); s != "" {
					for _, r := range strings.Split(s, ",") {
						n, _ := strconv.ParseUint(r, 10, 64)
						b.Members = append(b.Members, n)
					}
				}
				cmd = &placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: b}}
			case "split":
				cmd = &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{
					Range: num("range"), Generation: num("gen"), Key: []byte(arg("key"))}}}
			case "leader":
				cmd = &placementpb.Command{Op: &placementpb.Command_SetLeader{SetLeader: &placementpb.SetLeader{
					Range: num("range"), Generation: num("gen"), Leader: num("node")}}}
			case "add-node":
				cmd = &placementpb.Command{Op: &placementpb.Command_AddNode{AddNode: &placementpb.AddNode{
					Node: &placementpb.Node{Id: num("id"), RaftAddress: arg("addr")}}}}
			case "change-replicas":
				cmd = &placementpb.Command{Op: &placementpb.Command_ChangeReplicas{ChangeReplicas: &placementpb.ChangeReplicas{
					Range: num("range"), Add: num("add"), Remove: num("remove")}}}
			case "remove-node":
				cmd = &placementpb.Command{Op: &placementpb.Command_RemoveNode{RemoveNode: &placementpb.RemoveNode{Id: num("id")}}}
			case "add-replica":
				cmd = &placementpb.Command{Op: &placementpb.Command_AddReplica{AddReplica: &placementpb.AddReplica{
					Range: num("range"), Member: num("member"), Learner: d.HasArg("learner")}}}
			case "promote-replica":
				cmd = &placementpb.Command{Op: &placementpb.Command_PromoteReplica{PromoteReplica: &placementpb.PromoteReplica{
					Range: num("range"), Id: num("id")}}}
			case "remove-replica":
				cmd = &placementpb.Command{Op: &placementpb.Command_RemoveReplica{RemoveReplica: &placementpb.RemoveReplica{
					Range: num("range"), Id: num("id")}}}
			case "begin-move":
				cmd = &placementpb.Command{Op: &placementpb.Command_BeginMove{BeginMove: &placementpb.BeginMove{
					Range: num("range"), Generation: num("gen"), FromMember: num("from"), ToMember: num("to")}}}
			case "advance-move":
				cmd = &placementpb.Command{Op: &placementpb.Command_AdvanceMove{AdvanceMove: &placementpb.AdvanceMove{
					Range: num("range"), ToId: num("to"), FromStep: moveStep(t, arg("from-step")), Step: moveStep(t, arg("step"))}}}
			case "end-move":
				cmd = &placementpb.Command{Op: &placementpb.Command_EndMove{EndMove: &placementpb.EndMove{
					Range: num("range"), ToId: num("to"), Done: d.HasArg("done")}}}
			case "moves":
				return fmtMoves(tb.Moves())
			case "begin-merge":
				cmd = &placementpb.Command{Op: &placementpb.Command_BeginMerge{BeginMerge: &placementpb.BeginMerge{
					Left: num("left"), LeftGeneration: num("lgen"), Right: num("right"), RightGeneration: num("rgen")}}}
			case "advance-merge":
				cmd = &placementpb.Command{Op: &placementpb.Command_AdvanceMerge{AdvanceMerge: &placementpb.AdvanceMerge{
					Merge: num("merge"), FromStep: mergeStep(t, arg("from-step")), Step: mergeStep(t, arg("step")),
					FreezeIndex: num("freeze")}}}
			case "commit-merge":
				cmd = &placementpb.Command{Op: &placementpb.Command_CommitMerge{CommitMerge: &placementpb.CommitMerge{Merge: num("merge")}}}
			case "end-merge":
				cmd = &placementpb.Command{Op: &placementpb.Command_EndMerge{EndMerge: &placementpb.EndMerge{
					Merge: num("merge"), Done: d.HasArg("done")}}}
			case "merges":
				return fmtMerges(tb.Merges()) + "\n" + fmtTombstones(tb)
			case "merged-into":
				into, ok := tb.MergedInto(RangeID(num("range")))
				if !ok {
					return "not merged"
				}
				return fmt.Sprintf("r%d", into)
			case "reconfigure":
				cmd = &placementpb.Command{Op: &placementpb.Command_Reconfigure{Reconfigure: &placementpb.Reconfigure{
					Member: num("member"), Done: arg("done") == "true"}}}
			case "raise":
				cmd = &placementpb.Command{Op: &placementpb.Command_RaiseBound{RaiseBound: &placementpb.RaiseBound{Bound: int64(num("bound"))}}}
			case "lookup":
				return fmtRange(tb.Lookup([]byte(arg("key"))))
			case "overlapping":
				return fmtRanges(tb.Overlapping([]byte(arg("start")), []byte(arg("end"))))
			case "ranges":
				return fmtRanges(tb.Ranges())
			case "node":
				n := tb.Node(NodeID(num("id")))
				if n == nil {
					return "none"
				}
				return fmt.Sprintf("node %d at %s", n.Id, n.RaftAddress)
			case "snapshot-roundtrip":
				before := tb.State()
				other := NewTable()
				other.Load(before)
				if a, b := fmt.Sprint(before), fmt.Sprint(other.State()); a != b {
					t.Fatalf("%s: snapshot round trip differs:\n%s\n%s", d.Pos, a, b)
				}
				tb = other
				out := fmtRanges(tb.Ranges()) + fmt.Sprintf("\nbound %d next range %d reconfiguring %d", tb.Bound(), tb.nextRangeID, tb.reconfiguring)
				if tb.nextReplicaID != 1 || len(tb.moves) > 0 {
					out += fmt.Sprintf(" next replica %d\n%s", tb.nextReplicaID, fmtMoves(tb.Moves()))
				}
				if tb.nextMergeID != 0 {
					out += fmt.Sprintf("\nnext merge %d\n%s\n%s", tb.nextMergeID, fmtMerges(tb.Merges()), fmtTombstones(tb))
				}
				return out
			case "oracle":
				o = NewOracle(mvcc.Revision(num("persisted")), int64(num("window")))
				return fmt.Sprintf("next %d", o.Next())
			case "take":
				first, ok := o.Take(int64(num("n")))
				if !ok {
					return "refused: past the persisted bound"
				}
				return fmt.Sprintf("%d..%d", first, first+mvcc.Revision(num("n"))-1)
			case "want":
				if b := o.Want(int64(num("n"))); b != 0 {
					return fmt.Sprintf("persist %d", b)
				}
				return "enough"
			case "persisted":
				o.Persisted(mvcc.Revision(num("bound")))
				return ""
			case "raise-above":
				o.Raise(mvcc.Revision(num("above")))
				return fmt.Sprintf("next %d", o.Next())
			default:
				t.Fatalf("%s: unknown command %s", d.Pos, d.Cmd)
			}
			res := tb.Apply(cmd)
			if res.Error != "" {
				return "refused: " + res.Error
			}
			if len(res.Ranges) == 0 {
				return fmt.Sprintf("ok, bound %d", res.Bound)
			}
			if res.Move != nil {
				return fmtRanges(res.Ranges) + "\n" + fmtMoves([]*placementpb.Move{res.Move})
			}
			if res.Merge != nil {
				return fmtRanges(res.Ranges) + "\n" + fmtMerges([]*placementpb.Merge{res.Merge})
			}
			return fmtRanges(res.Ranges)
		})
	})
}

func fmtRange(r *placementpb.RangeDescriptor) string {
	if r == nil {
		return "none"
	}
	end := string(r.End)
	if end == "" {
		end = "∞"
	}
	s := fmt.Sprintf("r%d [%s,%s) g%d replicas=%v", r.Id, r.Start, end, r.Generation, r.Replicas)
	if r.Parent != 0 {
		s += fmt.Sprintf(" parent=r%d", r.Parent)
	}
	if fmt.Sprint(r.Founders) != fmt.Sprint(r.Replicas) {
		s += fmt.Sprintf(" founders=%v", r.Founders)
	}
	if r.Leader != 0 {
		s += fmt.Sprintf(" leader=%d", r.Leader)
	}
	pairs, founders := fmtPairs(Pairs(r)), fmtPairs(r.FounderSet)
	if pairs != fmtPairs(legacyPairs(r.Replicas)) {
		s += " pairs=" + pairs
	}
	if len(r.FounderSet) > 0 && founders != pairs && founders != fmtPairs(legacyPairs(r.Founders)) {
		s += " founder-pairs=" + founders
	}
	return s
}

// fmtPairs prints replicas as member:id, a learner's with "/l".
func fmtPairs(pairs []*placementpb.Replica) string {
	var parts []string
	for _, p := range pairs {
		s := fmt.Sprintf("%d:%d", p.Member, p.Id)
		if p.Learner {
			s += "/l"
		}
		parts = append(parts, s)
	}
	return "{" + strings.Join(parts, " ") + "}"
}

var moveSteps = map[string]placementpb.MoveStep{"begun": placementpb.MoveStep_MOVE_STEP_UNSPECIFIED,
	"added": placementpb.MoveStep_ADDED, "promoted": placementpb.MoveStep_PROMOTED, "left": placementpb.MoveStep_LEFT,
	"undoing": placementpb.MoveStep_UNDOING}

func moveStep(t *testing.T, name string) placementpb.MoveStep {
	s, ok := moveSteps[name]
	if !ok && name != "" {
		t.Fatalf("unknown move step %q", name)
	}
	return s
}

func mergeStep(t *testing.T, name string) placementpb.MergeStep {
	s, ok := placementpb.MergeStep_value[strings.ToUpper(name)]
	if !ok && name != "" {
		t.Fatalf("unknown merge step %q", name)
	}
	return placementpb.MergeStep(s)
}

func fmtMerges(mgs []*placementpb.Merge) string {
	if len(mgs) == 0 {
		return "no merges"
	}
	var lines []string
	for _, mg := range mgs {
		s := fmt.Sprintf("merge m%d r%d g%d → r%d g%d %s", mg.Id, mg.Right, mg.RightGeneration, mg.Left, mg.LeftGeneration,
			mergeStepName(mg.Step))
		if mg.FreezeIndex != 0 {
			s += fmt.Sprintf(" freeze=%d", mg.FreezeIndex)
		}
		lines = append(lines, s)
	}
	return strings.Join(lines, "\n")
}

func fmtTombstones(tb *Table) string {
	ts := tb.Tombstones()
	if len(ts) == 0 {
		return "no tombstones"
	}
	var lines []string
	for _, m := range ts {
		lines = append(lines, fmt.Sprintf("tombstone r%d → r%d g%d", m.Range, m.Into, m.Generation))
	}
	return strings.Join(lines, "\n")
}

func fmtMoves(mvs []*placementpb.Move) string {
	if len(mvs) == 0 {
		return "no moves"
	}
	var lines []string
	for _, mv := range mvs {
		step := "begun"
		for name, s := range moveSteps {
			if s == mv.Step && name != "begun" {
				step = name
			}
		}
		lines = append(lines, fmt.Sprintf("move r%d g%d %s → %s %s", mv.Range, mv.Generation,
			fmtPairs([]*placementpb.Replica{mv.From}), fmtPairs([]*placementpb.Replica{mv.To}), step))
	}
	return strings.Join(lines, "\n")
}

func fmtRanges(rs []*placementpb.RangeDescriptor) string {
	if len(rs) == 0 {
		return "none"
	}
	var lines []string
	for _, r := range rs {
		lines = append(lines, fmtRange(r))
	}
	return strings.Join(lines, "\n")
}

// cmdArgs returns a script command's argument lookups: arg, its values
// joined by commas ("" if absent), and num, arg as a number (0 if absent).
func cmdArgs(d *datadriven.TestData) (arg func(string) string, num func(string) uint64) {
	arg = func(name string) string {
		for _, a := range d.CmdArgs {
			if a.Key == name && len(a.Vals) > 0 {
				return strings.Join(a.Vals, ",")
			}
		}
		return ""
	}
	num = func(name string) uint64 {
		n, _ := strconv.ParseUint(arg(name), 10, 64)
		return n
	}
	return arg, num
}
