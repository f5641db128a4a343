package placement

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestScheduler runs the scripts in testdata/scheduler: a cluster report
// in, the scheduler's operations out. Commands:
//
//	config [max-bytes=B] [min-bytes=B] [split-load=N] [windows=N] [merge-load=N]
//	       [suspect=D] [down=D] [moves=N]     a new scheduler, no history; prints its configuration
//	cluster                                 the report, one member or range a line (replaces it):
//	  member id=N [age=D] [disk=B] [removing]
//	  range id=N [gen=G] [start=K] [end=K] replicas=M,M,M/l [leader=M] [size=B] [keys=N]
//	        [writes=N] [reads=N] [middle=K] [load-key=K] [move=F>T] [splitting] [merging]
//	set                                     lines as cluster's: only the fields given change; a new id adds
//	round                                   one Plan: its operations
//	apply                                   the last round's operations done (as the sim below does them)
//	refuse                                  the last round's merges refused by their executor (Scheduler.Refuse)
//	converge [max=N]                        round and apply until a round plans nothing
//	show                                    the report
//
// Sizes take B, KiB, MiB or GiB; ages are Go durations. A range's
// replica ids are made up (they do not matter to the scheduler). Every
// round also checks that Plan leaves its report as it was and that a twin
// scheduler, given the same history and the report's members, ranges and
// replicas in a shuffled order, plans the same operations.
func TestScheduler(t *testing.T) {
	datadriven.Walk(t, "testdata/scheduler", func(t *testing.T, path string) {
		h := &schedHarness{s: NewScheduler(SchedulerConfig{}), nextReplica: 100}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg, num := cmdArgs(d)
			switch d.Cmd {
			case "config":
				cfg := SchedulerConfig{
					RangeMaxBytes:     parseBytes(t, arg("max-bytes")),
					RangeMinBytes:     parseBytes(t, arg("min-bytes")),
					SplitLoad:         int64(num("split-load")),
					SplitLoadWindows:  int(num("windows")),
					MergeMaxLoad:      int64(num("merge-load")),
					SuspectAfter:      parseAge(t, arg("suspect")),
					MemberDownTimeout: parseAge(t, arg("down")),
					MaxMovesPerMember: int(num("moves")),
				}
				if arg("min-bytes") == "off" {
					cfg.RangeMinBytes = -1
				}
				h.s = NewScheduler(cfg)
				c := h.s.Config()
				return fmt.Sprintf("max-bytes=%s min-bytes=%s split-load=%d windows=%d merge-load=%d suspect=%s down=%s moves=%d",
					fmtBytes(c.RangeMaxBytes), fmtBytes(c.RangeMinBytes), c.SplitLoad, c.SplitLoadWindows, c.MergeMaxLoad,
					c.SuspectAfter, c.MemberDownTimeout, c.MaxMovesPerMember)
			case "cluster":
				h.rep = ClusterReport{}
				h.set(t, d.Input)
				return h.summary()
			case "set":
				h.set(t, d.Input)
				return h.summary()
			case "round":
				h.last = h.round(t)
				return fmtOps(h.last)
			case "refuse":
				var out []string
				for _, op := range h.last {
					if op.Kind == OpMerge {
						h.s.Refuse(op)
						out = append(out, "refused: "+op.String())
					}
				}
				h.last = nil
				if len(out) == 0 {
					return "no merge to refuse"
				}
				return strings.Join(out, "\n")
			case "apply":
				for _, op := range h.last {
					h.apply(t, op)
				}
				h.last = nil
				return h.summary()
			case "converge":
				max := int(num("max"))
				if max == 0 {
					max = 20
				}
				var out []string
				for i := 1; ; i++ {
					if i > max {
						t.Fatalf("%s: no balance after %d rounds:\n%s", d.Pos, max, strings.Join(out, "\n"))
					}
					ops := h.round(t)
					if len(ops) == 0 {
						out = append(out, fmt.Sprintf("round %d: no operations", i))
						break
					}
					for _, op := range ops {
						out = append(out, fmt.Sprintf("round %d: %s", i, op))
						h.apply(t, op)
					}
				}
				return strings.Join(out, "\n") + "\n" + h.summary()
			case "show":
				return fmtReport(h.rep)
			default:
				t.Fatalf("%s: unknown command %s", d.Pos, d.Cmd)
			}
			return ""
		})
	})
}

// schedHarness is a script's scheduler and the report it plans from.
type schedHarness struct {
	s           *Scheduler
	rep         ClusterReport
	last        []Op
	nextReplica uint64
}

// round plans once, checking that Plan leaves the report alone and that a
// shuffled twin agrees.
func (h *schedHarness) round(t *testing.T) []Op {
	t.Helper()
	twin := &Scheduler{cfg: h.s.cfg, hot: maps.Clone(h.s.hot), refused: maps.Clone(h.s.refused)}
	shuffled := cloneReport(h.rep)
	rng := rand.New(rand.NewPCG(uint64(len(h.rep.Ranges)), uint64(len(h.rep.Members))))
	rng.Shuffle(len(shuffled.Members), func(i, j int) {
		shuffled.Members[i], shuffled.Members[j] = shuffled.Members[j], shuffled.Members[i]
	})
	rng.Shuffle(len(shuffled.Ranges), func(i, j int) {
		shuffled.Ranges[i], shuffled.Ranges[j] = shuffled.Ranges[j], shuffled.Ranges[i]
	})
	for _, r := range shuffled.Ranges {
		rng.Shuffle(len(r.Replicas), func(i, j int) { r.Replicas[i], r.Replicas[j] = r.Replicas[j], r.Replicas[i] })
	}
	before := fmtReport(h.rep)
	ops := h.s.Plan(h.rep)
	if after := fmtReport(h.rep); after != before {
		t.Fatalf("Plan changed its report:\n%s\n---\n%s", before, after)
	}
	if a, b := fmtOps(ops), fmtOps(twin.Plan(shuffled)); a != b {
		t.Fatalf("a shuffled report planned otherwise:\n%s\n---\n%s", a, b)
	}
	if a, b := fmt.Sprint(h.s.hot), fmt.Sprint(twin.hot); a != b {
		t.Fatalf("a shuffled report left another history: %s, %s", a, b)
	}
	if a, b := fmt.Sprint(h.s.refused), fmt.Sprint(twin.refused); a != b {
		t.Fatalf("a shuffled report left other refusals: %s, %s", a, b)
	}
	return ops
}

// set parses member and range lines into the report.
func (h *schedHarness) set(t *testing.T, input string) {
	t.Helper()
	for _, line := range strings.Split(input, "\n") {
		kind, args, err := datadriven.ParseLine(line)
		if err != nil {
			t.Fatal(err)
		}
		if kind == "" {
			continue
		}
		td := &datadriven.TestData{CmdArgs: args}
		arg, num := cmdArgs(td)
		has := td.HasArg
		switch kind {
		case "member":
			id := NodeID(num("id"))
			i := slices.IndexFunc(h.rep.Members, func(m MemberReport) bool { return m.ID == id })
			if i < 0 {
				h.rep.Members = append(h.rep.Members, MemberReport{ID: id})
				i = len(h.rep.Members) - 1
			}
			m := &h.rep.Members[i]
			if has("age") {
				m.HeartbeatAge = parseAge(t, arg("age"))
			}
			if has("disk") {
				m.DiskBytes = parseBytes(t, arg("disk"))
			}
			if has("removing") {
				m.Removing = arg("removing") != "false"
			}
		case "range":
			id := RangeID(num("id"))
			i := slices.IndexFunc(h.rep.Ranges, func(r RangeReport) bool { return r.ID == id })
			if i < 0 {
				h.rep.Ranges = append(h.rep.Ranges, RangeReport{ID: id, Generation: 1})
				i = len(h.rep.Ranges) - 1
			}
			r := &h.rep.Ranges[i]
			if has("gen") {
				r.Generation = num("gen")
			}
			if has("start") {
				r.Start = []byte(arg("start"))
			}
			if has("end") {
				r.End = []byte(arg("end"))
			}
			if has("replicas") {
				r.Replicas = nil
				for _, s := range strings.Split(arg("replicas"), ",") {
					m, learner := strings.CutSuffix(s, "/l")
					n, err := strconv.ParseUint(m, 10, 64)
					if err != nil {
						t.Fatalf("replicas=%s: %v", arg("replicas"), err)
					}
					r.Replicas = append(r.Replicas, &placementpb.Replica{Member: n, Id: h.replicaID(), Learner: learner})
				}
			}
			if has("leader") {
				r.Leader = NodeID(num("leader"))
			}
			if has("size") {
				r.Bytes = parseBytes(t, arg("size"))
			}
			if has("keys") {
				r.Keys = int64(num("keys"))
			}
			if has("writes") {
				r.Writes = int64(num("writes"))
			}
			if has("reads") {
				r.Reads = int64(num("reads"))
			}
			if has("middle") {
				r.MiddleKey = []byte(arg("middle"))
			}
			if has("load-key") {
				r.LoadKey = []byte(arg("load-key"))
			}
			if has("move") {
				r.MoveFrom, r.MoveTo = 0, 0
				if from, to, ok := strings.Cut(arg("move"), ">"); ok {
					f, _ := strconv.ParseUint(from, 10, 64)
					g, _ := strconv.ParseUint(to, 10, 64)
					r.MoveFrom, r.MoveTo = NodeID(f), NodeID(g)
				}
			}
			if has("splitting") {
				r.Splitting = arg("splitting") != "false"
			}
			if has("merging") {
				r.Merging = arg("merging") != "false"
			}
		default:
			t.Fatalf("unknown line %q", line)
		}
	}
}

func (h *schedHarness) replicaID() uint64 {
	h.nextReplica++
	return h.nextReplica
}

func (h *schedHarness) rangeIndex(t *testing.T, id RangeID) int {
	i := slices.IndexFunc(h.rep.Ranges, func(r RangeReport) bool { return r.ID == id })
	if i < 0 {
		t.Fatalf("no range r%d", id)
	}
	return i
}

// apply does op to the report as if it had finished: a move replaces
// the source's replica with a new one (the source's leadership goes to
// the first other voter), a split halves the range's size, keys and load
// (the halves' middle and load keys are unknown until reported), a merge
// adds them up.
func (h *schedHarness) apply(t *testing.T, op Op) {
	t.Helper()
	r := &h.rep.Ranges[h.rangeIndex(t, op.Range)]
	if r.Generation != op.Generation {
		t.Fatalf("%s: r%d is at generation %d", op, r.ID, r.Generation)
	}
	switch op.Kind {
	case OpRecreate, OpMove:
		j := slices.IndexFunc(r.Replicas, func(rr *placementpb.Replica) bool { return NodeID(rr.Member) == op.From })
		r.Replicas[j] = &placementpb.Replica{Member: uint64(op.To), Id: h.replicaID()}
		if r.Leader == op.From {
			r.Leader = 0
			for _, rr := range r.Replicas {
				if !rr.Learner && NodeID(rr.Member) != op.To {
					r.Leader = NodeID(rr.Member)
					break
				}
			}
		}
	case OpTransferLeader:
		r.Leader = op.To
	case OpSplit:
		right := RangeReport{ID: h.nextRange(), Generation: r.Generation + 1, Start: op.Key, End: r.End,
			Leader: r.Leader, Bytes: r.Bytes - r.Bytes/2, Keys: r.Keys - r.Keys/2,
			Writes: r.Writes - r.Writes/2, Reads: r.Reads - r.Reads/2}
		for _, rr := range r.Replicas {
			right.Replicas = append(right.Replicas, &placementpb.Replica{Member: rr.Member, Id: h.replicaID(), Learner: rr.Learner})
		}
		r.End, r.Generation = op.Key, r.Generation+1
		r.Bytes, r.Keys, r.Writes, r.Reads = r.Bytes/2, r.Keys/2, r.Writes/2, r.Reads/2
		r.MiddleKey, r.LoadKey = nil, nil
		h.rep.Ranges = append(h.rep.Ranges, right)
	case OpMerge:
		j := h.rangeIndex(t, op.Right)
		right := h.rep.Ranges[j]
		r.End, r.Generation = right.End, max(r.Generation, right.Generation)+1
		r.Bytes, r.Keys, r.Writes, r.Reads = r.Bytes+right.Bytes, r.Keys+right.Keys, r.Writes+right.Writes, r.Reads+right.Reads
		r.MiddleKey, r.LoadKey = nil, nil
		h.rep.Ranges = slices.Delete(h.rep.Ranges, j, j+1)
	}
}

func (h *schedHarness) nextRange() RangeID {
	var top RangeID
	for _, r := range h.rep.Ranges {
		top = max(top, r.ID)
	}
	return top + 1
}

// summary prints each member's replica and leader counts.
func (h *schedHarness) summary() string {
	replicas, leaders := map[NodeID]int{}, map[NodeID]int{}
	for _, r := range h.rep.Ranges {
		for _, rr := range r.Replicas {
			replicas[NodeID(rr.Member)]++
		}
		if r.Leader != 0 {
			leaders[r.Leader]++
		}
	}
	var lines []string
	for _, m := range h.rep.Members {
		s := fmt.Sprintf("m%d: replicas=%d leaders=%d", m.ID, replicas[m.ID], leaders[m.ID])
		if m.Removing {
			s += " removing"
		}
		lines = append(lines, s)
	}
	return strings.Join(lines, "\n")
}

func fmtOps(ops []Op) string {
	if len(ops) == 0 {
		return "no operations"
	}
	var lines []string
	for _, op := range ops {
		lines = append(lines, op.String())
	}
	return strings.Join(lines, "\n")
}

// fmtReport prints the report: members, then ranges in key order.
func fmtReport(rep ClusterReport) string {
	var lines []string
	for _, m := range rep.Members {
		s := fmt.Sprintf("m%d age=%s disk=%s", m.ID, m.HeartbeatAge, fmtBytes(m.DiskBytes))
		if m.Removing {
			s += " removing"
		}
		lines = append(lines, s)
	}
	rs := slices.Clone(rep.Ranges)
	slices.SortStableFunc(rs, func(a, b RangeReport) int { return strings.Compare(string(a.Start), string(b.Start)) })
	for _, r := range rs {
		end := string(r.End)
		if end == "" {
			end = "∞"
		}
		var ms []string
		for _, rr := range r.Replicas {
			s := strconv.FormatUint(rr.Member, 10)
			if rr.Learner {
				s += "/l"
			}
			ms = append(ms, s)
		}
		s := fmt.Sprintf("r%d [%s,%s) g%d replicas=%s leader=%d size=%s keys=%d writes=%d reads=%d",
			r.ID, r.Start, end, r.Generation, strings.Join(ms, ","), r.Leader, fmtBytes(r.Bytes), r.Keys, r.Writes, r.Reads)
		if len(r.MiddleKey) > 0 {
			s += " middle=" + string(r.MiddleKey)
		}
		if len(r.LoadKey) > 0 {
			s += " load-key=" + string(r.LoadKey)
		}
		if r.MoveTo != 0 {
			s += fmt.Sprintf(" move=%d>%d", r.MoveFrom, r.MoveTo)
		}
		if r.Splitting {
			s += " splitting"
		}
		if r.Merging {
			s += " merging"
		}
		lines = append(lines, s)
	}
	return strings.Join(lines, "\n")
}

func cloneReport(rep ClusterReport) ClusterReport {
	out := ClusterReport{Members: slices.Clone(rep.Members), Ranges: slices.Clone(rep.Ranges)}
	for i := range out.Ranges {
		r := &out.Ranges[i]
		r.Replicas = clonePairs(r.Replicas)
	}
	return out
}

var byteUnits = []struct {
	suffix string
	n      int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

func parseBytes(t *testing.T, s string) int64 {
	if s == "" || s == "off" {
		return 0
	}
	for _, u := range byteUnits {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("size %q: %v", s, err)
			}
			return n * u.n
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("size %q: %v", s, err)
	}
	return n
}

func fmtBytes(n int64) string {
	for _, u := range byteUnits {
		if n != 0 && n%u.n == 0 {
			return fmt.Sprintf("%d%s", n/u.n, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", n)
}

func parseAge(t *testing.T, s string) time.Duration {
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("age %q: %v", s, err)
	}
	return d
}
