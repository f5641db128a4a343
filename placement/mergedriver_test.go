package placement

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// fakeMergeLogs is the ranges' logs as a MergeDriver writes to them, over
// fakeRanges' groups: a freeze, thaw, commit or abort that applies raises
// its range's applied index. A right range frozen for one merge refuses
// another's freeze; one thawed answers a late freeze of that merge
// aborted; a left range records each decision and answers it again.
type fakeMergeLogs struct {
	f *fakeRanges

	frozen    map[RangeID]uint64 // right range → the merge it is frozen for
	freezeAt  map[RangeID]uint64 // its freeze index
	thawed    map[RangeID]uint64 // right range → highest merge thawed
	decisions map[RangeID]map[uint64]bool
	// ends are the left ranges' spans' ends as their logs have them.
	ends map[RangeID][]byte
	// fail: the next calls of an op ("freeze", "commit", ...) fail, this
	// many more times; failApplied: a failing commit or abort applies
	// first (its answer is lost).
	fail        map[string]int
	failApplied map[string]bool
	// downOnFreeze: these members go down as the freeze applies.
	downOnFreeze []NodeID
}

func (l *fakeMergeLogs) failing(op string) bool {
	if l.fail[op] > 0 {
		l.fail[op]--
		return true
	}
	return false
}

func (l *fakeMergeLogs) Freeze(_ context.Context, right *placementpb.RangeDescriptor, merge uint64, left RangeID) (MergeOutcome, error) {
	f := l.f
	f.mu.Lock()
	defer f.mu.Unlock()
	r := RangeID(right.Id)
	if l.failing("freeze") {
		f.logf("r%d: freeze for m%d: no leader", r, merge)
		return MergeOutcome{}, errors.New("no leader")
	}
	switch {
	case l.frozen[r] == merge:
		return MergeOutcome{FreezeIndex: l.freezeAt[r]}, nil
	case l.frozen[r] != 0:
		f.logf("r%d: freeze for m%d refused: frozen for m%d", r, merge, l.frozen[r])
		return MergeOutcome{}, fmt.Errorf("range frozen for a merge: m%d", l.frozen[r])
	case merge <= l.thawed[r]:
		f.logf("r%d: freeze for m%d: thawed already", r, merge)
		return MergeOutcome{Aborted: true}, nil
	}
	g := f.groups[r]
	g.applied++
	l.frozen[r], l.freezeAt[r] = merge, g.applied
	f.logf("r%d: frozen for m%d into r%d at index %d", r, merge, left, g.applied)
	for _, m := range l.downOnFreeze {
		f.down[m] = true
		f.logf("member %d is down", m)
	}
	l.downOnFreeze = nil
	return MergeOutcome{FreezeIndex: g.applied}, nil
}

func (l *fakeMergeLogs) Thaw(_ context.Context, right *placementpb.RangeDescriptor, merge uint64) (MergeOutcome, error) {
	f := l.f
	f.mu.Lock()
	defer f.mu.Unlock()
	r := RangeID(right.Id)
	if l.failing("thaw") {
		f.logf("r%d: thaw of m%d: no leader", r, merge)
		return MergeOutcome{}, errors.New("no leader")
	}
	if l.frozen[r] == merge {
		delete(l.frozen, r)
		delete(l.freezeAt, r)
	}
	if merge > l.thawed[r] {
		l.thawed[r] = merge
		f.groups[r].applied++
		f.logf("r%d: thawed m%d", r, merge)
	}
	return MergeOutcome{Aborted: true}, nil
}

func (l *fakeMergeLogs) decide(left RangeID, merge uint64, commit bool) (MergeOutcome, bool) {
	if l.decisions[left] == nil {
		l.decisions[left] = map[uint64]bool{}
	}
	if c, ok := l.decisions[left][merge]; ok {
		return MergeOutcome{Committed: c, Aborted: !c}, true
	}
	l.decisions[left][merge] = commit
	l.f.groups[left].applied++
	return MergeOutcome{Committed: commit, Aborted: !commit}, false
}

func (l *fakeMergeLogs) Commit(_ context.Context, left, right *placementpb.RangeDescriptor, merge, generation uint64) (MergeOutcome, error) {
	f := l.f
	f.mu.Lock()
	defer f.mu.Unlock()
	lid, rid := RangeID(left.Id), RangeID(right.Id)
	fails := l.failing("commit")
	if fails && !l.failApplied["commit"] {
		f.logf("r%d: commit of m%d: no leader", lid, merge)
		return MergeOutcome{}, errors.New("no leader")
	}
	if c, ok := l.decisions[lid][merge]; !ok {
		if !bytes.Equal(l.ends[lid], right.Start) {
			f.logf("r%d: commit of m%d refused: stale", lid, merge)
			return MergeOutcome{}, errors.New("stale merge")
		}
		if l.frozen[rid] != merge {
			return MergeOutcome{}, fmt.Errorf("broken invariant: r%d is not frozen for m%d", rid, merge)
		}
		for _, p := range Pairs(right) {
			if f.down[NodeID(p.Member)] {
				continue
			}
			if st := f.groups[rid].applied; st < l.freezeAt[rid] {
				return MergeOutcome{}, fmt.Errorf("broken invariant: r%d at %d before its freeze", rid, st)
			}
		}
		l.decide(lid, merge, true)
		l.ends[lid] = right.End
		f.logf("r%d: committed m%d (absorbs r%d, g%d)", lid, merge, rid, generation)
	} else if !c {
		f.logf("r%d: commit of m%d: aborted already", lid, merge)
	}
	if fails {
		f.logf("r%d: the commit's answer is lost", lid)
		return MergeOutcome{}, errors.New("leader lost")
	}
	c := l.decisions[lid][merge]
	return MergeOutcome{Committed: c, Aborted: !c}, nil
}

func (l *fakeMergeLogs) Abort(_ context.Context, left *placementpb.RangeDescriptor, merge uint64) (MergeOutcome, error) {
	f := l.f
	f.mu.Lock()
	defer f.mu.Unlock()
	lid := RangeID(left.Id)
	if l.failing("abort") {
		f.logf("r%d: abort of m%d: no leader", lid, merge)
		return MergeOutcome{}, errors.New("no leader")
	}
	out, again := l.decide(lid, merge, false)
	switch {
	case out.Committed:
		f.logf("r%d: abort of m%d: committed already", lid, merge)
	case !again:
		f.logf("r%d: aborted m%d", lid, merge)
	}
	return out, nil
}

// loggedMergeMap is the range map with every merge command recorded.
type loggedMergeMap struct {
	*Client
	f *fakeRanges
}

func (l loggedMergeMap) record(what string, err error) { loggedMap{l.Client, l.f}.record(what, err) }

func (l loggedMergeMap) BeginMerge(ctx context.Context, left RangeID, lgen uint64, right RangeID, rgen uint64) (*placementpb.Merge, error) {
	mg, err := l.Client.BeginMerge(ctx, left, lgen, right, rgen)
	what := fmt.Sprintf("begin-merge r%d g%d → r%d g%d", right, rgen, left, lgen)
	if err == nil {
		what += fmt.Sprintf(" (m%d)", mg.Id)
	}
	l.record(what, err)
	return mg, err
}

func (l loggedMergeMap) AdvanceMerge(ctx context.Context, id uint64, from, step placementpb.MergeStep, freezeIndex uint64) (*placementpb.Merge, error) {
	mg, err := l.Client.AdvanceMerge(ctx, id, from, step, freezeIndex)
	l.record(fmt.Sprintf("advance-merge m%d %s → %s", id, mergeStepName(from), mergeStepName(step)), err)
	return mg, err
}

func (l loggedMergeMap) CommitMerge(ctx context.Context, id uint64) (*placementpb.Merge, *placementpb.RangeDescriptor, error) {
	mg, d, err := l.Client.CommitMerge(ctx, id)
	l.record(fmt.Sprintf("commit-merge m%d", id), err)
	return mg, d, err
}

func (l loggedMergeMap) EndMerge(ctx context.Context, id uint64, done bool) error {
	err := l.Client.EndMerge(ctx, id, done)
	what := fmt.Sprintf("end-merge m%d", id)
	if done {
		what += " done"
	} else {
		what += " undone"
	}
	l.record(what, err)
	return err
}

// TestMergeDriver runs the scripts in testdata/mergedriver: merges driven
// by a MergeDriver over a range map around a real StateMachine, fake raft
// groups (fakeRanges) and fake range logs (fakeMergeLogs). Commands:
//
//	cluster members=1,2,3 split=K,... [range-replicas=R]
//	                                 a new map, as TestMover's
//	down member=M | up member=M      M answers nothing (or again)
//	down-on-freeze member=M          M goes down as the next freeze applies
//	lag member=M looks=L             M's replicas answer applied 0 for L more looks
//	learner range=N replica=I        raft's group of N has a learner the map lacks
//	frozen range=N merge=K           N's log is frozen for another merge K
//	fail op=O times=T [applied]      the next T calls of O fail (applied: after applying)
//	split-log range=N end=K          N's log has N ending at K (a split the map lacks)
//	begin-move range=N from=M to=M   opens a move in the map
//	crash-after step=S               the next merge or resume stops right after step S
//	merge left=N                     Merge; prints what it did and its answer
//	resume                           Resume; the same
//	state                            the map's ranges, merges and tombstones, the logs' freezes
//
// A step gets 3 tries (Patience).
func TestMergeDriver(t *testing.T) {
	datadriven.Walk(t, "testdata/mergedriver", func(t *testing.T, path string) {
		var (
			f          *fakeRanges
			logs       *fakeMergeLogs
			md         *MergeDriver
			crashAfter string
		)
		ctx := context.Background()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg, num := cmdArgs(d)
			drain := func() string {
				f.mu.Lock()
				defer f.mu.Unlock()
				out := strings.Join(f.log, "\n")
				f.log = nil
				return out
			}
			answer := func(rd *placementpb.RangeDescriptor, err error) string {
				out := drain()
				if err != nil {
					if errors.Is(err, ErrCrashed) {
						err = ErrCrashed
					}
					out += "\nerror: " + err.Error()
				}
				if rd != nil {
					out += "\n→ " + fmtRange(rd)
				}
				return strings.TrimPrefix(out, "\n")
			}
			switch d.Cmd {
			case "cluster":
				var members []NodeID
				for _, s := range strings.Split(arg("members"), ",") {
					n, _ := strconv.ParseUint(s, 10, 64)
					members = append(members, NodeID(n))
				}
				var keys [][]byte
				for _, k := range strings.Split(arg("split"), ",") {
					if k != "" {
						keys = append(keys, []byte(k))
					}
				}
				mapc := NewClient(ClientConfig{Raft: newFakeRaft(), ShardID: fakeShardID, Retry: time.Millisecond})
				replicas := int(num("range-replicas"))
				if replicas == 0 {
					replicas = len(members)
				}
				ranges, err := mapc.BootstrapReplicas(ctx, members, replicas, keys, func() (mvcc.Revision, error) { return 0, nil })
				if err != nil {
					t.Fatal(err)
				}
				f = &fakeRanges{mapc: mapc, groups: map[RangeID]*fakeRangeGroup{}, started: map[NodeID]map[RangeID]ReplicaID{},
					down: map[NodeID]bool{}, lag: map[NodeID]int{}}
				logs = &fakeMergeLogs{f: f, frozen: map[RangeID]uint64{}, freezeAt: map[RangeID]uint64{}, thawed: map[RangeID]uint64{},
					decisions: map[RangeID]map[uint64]bool{}, ends: map[RangeID][]byte{}, fail: map[string]int{}, failApplied: map[string]bool{}}
				for _, m := range members {
					f.started[m] = map[RangeID]ReplicaID{}
				}
				for _, rd := range ranges {
					g := &fakeRangeGroup{voters: map[ReplicaID]bool{}, learners: map[ReplicaID]bool{}, removed: map[ReplicaID]bool{}, applied: 10}
					for i, p := range Pairs(rd) {
						g.voters[ReplicaID(p.Id)] = true
						if i == 0 {
							g.leader = ReplicaID(p.Id)
						}
						f.started[NodeID(p.Member)][RangeID(rd.Id)] = ReplicaID(p.Id)
					}
					f.groups[RangeID(rd.Id)] = g
					logs.ends[RangeID(rd.Id)] = rd.End
				}
				crashAfter = ""
				md = NewMergeDriver(MergeDriverConfig{Map: loggedMergeMap{mapc, f}, Ranges: logs, Raft: f, Poll: time.Millisecond, Patience: 3,
					Crash: func(step string) bool {
						if step == crashAfter {
							crashAfter = ""
							return true
						}
						return false
					}})
				return fmtRanges(ranges)
			case "down", "up":
				f.down[NodeID(num("member"))] = d.Cmd == "down"
				return ""
			case "down-on-freeze":
				logs.downOnFreeze = append(logs.downOnFreeze, NodeID(num("member")))
				return ""
			case "lag":
				f.lag[NodeID(num("member"))] = int(num("looks"))
				return ""
			case "learner":
				f.groups[RangeID(num("range"))].learners[ReplicaID(num("replica"))] = true
				return ""
			case "frozen":
				logs.frozen[RangeID(num("range"))] = num("merge")
				return ""
			case "fail":
				logs.fail[arg("op")] = int(num("times"))
				logs.failApplied[arg("op")] = d.HasArg("applied")
				return ""
			case "split-log":
				logs.ends[RangeID(num("range"))] = []byte(arg("end"))
				return ""
			case "crash-after":
				crashAfter = arg("step")
				if !slices.Contains(MergeSteps, crashAfter) {
					t.Fatalf("unknown step %q", crashAfter)
				}
				return ""
			case "merge":
				return answer(md.Merge(ctx, RangeID(num("left"))))
			case "resume":
				return answer(nil, md.Resume(ctx))
			case "state":
				st, err := f.mapc.State(ctx)
				if err != nil {
					t.Fatal(err)
				}
				lines := []string{fmtRanges(st.Ranges), fmtMerges(st.Merges)}
				for _, m := range st.Merged {
					lines = append(lines, fmt.Sprintf("tombstone r%d → r%d g%d", m.Range, m.Into, m.Generation))
				}
				for _, id := range slices.Sorted(maps.Keys(logs.frozen)) {
					lines = append(lines, fmt.Sprintf("log r%d: frozen for m%d", id, logs.frozen[id]))
				}
				for _, id := range slices.Sorted(maps.Keys(logs.thawed)) {
					lines = append(lines, fmt.Sprintf("log r%d: thawed m%d", id, logs.thawed[id]))
				}
				for _, id := range slices.Sorted(maps.Keys(logs.decisions)) {
					for _, m := range slices.Sorted(maps.Keys(logs.decisions[id])) {
						what := "aborted"
						if logs.decisions[id][m] {
							what = "committed"
						}
						lines = append(lines, fmt.Sprintf("log r%d: m%d %s", id, m, what))
					}
				}
				return strings.Join(lines, "\n")
			}
			t.Fatalf("unknown command %s", d.Cmd)
			return ""
		})
	})
}
