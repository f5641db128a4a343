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
// registry (table, bootstrap, membership), the revision oracle across
// leaders (oracle), a bootstrap on a restored backup (restored); the
// scripts in testdata/client are TestClient's. Commands:
//
//	bootstrap [split=a,b] [replicas=1,2,3] [bound=B]
//	split range=N gen=G key=K
//	leader range=N gen=G node=M
//	add-node id=N addr=A
//	raise bound=B
//	lookup key=K | overlapping [start=S] [end=E] | ranges | node id=N
//	snapshot-roundtrip                   State → Load → State must agree
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
				return fmtRanges(tb.Ranges()) + fmt.Sprintf("\nbound %d next range %d reconfiguring %d", tb.Bound(), tb.nextRangeID, tb.reconfiguring)
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
	return s
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
