package placement

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// fakeRanges is the ranges' raft groups as a Mover reaches them: each
// group's voters, learners, removed ids, leader and applied index, which
// member runs which replica, the members that are down and those whose
// replica lags. A replica raft removes stops. A move's destination starts its replica the first time the
// Mover looks at it (as its reconciler would) unless it is down. Every
// change is recorded in log.
type fakeRanges struct {
	mapc *Client

	mu      sync.Mutex
	groups  map[RangeID]*fakeRangeGroup
	started map[NodeID]map[RangeID]ReplicaID
	down    map[NodeID]bool
	lag     map[NodeID]int // looks a replica still answers applied 0
	log     []string
}

type fakeRangeGroup struct {
	voters, learners, removed map[ReplicaID]bool
	leader                    ReplicaID
	applied                   uint64
}

func (f *fakeRanges) logf(format string, args ...any) {
	f.log = append(f.log, fmt.Sprintf(format, args...))
}

func (f *fakeRanges) group(d *placementpb.RangeDescriptor) *fakeRangeGroup {
	return f.groups[RangeID(d.Id)]
}

func (f *fakeRanges) Membership(_ context.Context, d *placementpb.RangeDescriptor) (RangeMembership, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.group(d)
	return RangeMembership{Voters: slices.Sorted(maps.Keys(g.voters)), Learners: slices.Sorted(maps.Keys(g.learners)),
		Removed: slices.Sorted(maps.Keys(g.removed)), Leader: g.leader}, nil
}

func (f *fakeRanges) AddLearner(_ context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.group(d)
	if g.removed[ReplicaID(r.Id)] {
		return fmt.Errorf("replica %d was removed", r.Id)
	}
	g.learners[ReplicaID(r.Id)] = true
	g.applied++
	f.logf("r%d: add %d on member %d non-voting", d.Id, r.Id, r.Member)
	return nil
}

func (f *fakeRanges) Promote(_ context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.group(d)
	if !g.learners[ReplicaID(r.Id)] && !g.voters[ReplicaID(r.Id)] {
		return fmt.Errorf("replica %d is not in the group", r.Id)
	}
	delete(g.learners, ReplicaID(r.Id))
	g.voters[ReplicaID(r.Id)] = true
	g.applied++
	f.logf("r%d: promote %d", d.Id, r.Id)
	return nil
}

func (f *fakeRanges) Remove(_ context.Context, d *placementpb.RangeDescriptor, id ReplicaID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.group(d)
	delete(g.voters, id)
	delete(g.learners, id)
	g.removed[id] = true
	for _, runs := range f.started {
		if runs[RangeID(d.Id)] == id {
			delete(runs, RangeID(d.Id)) // raft removed it: its member drops it
		}
	}
	if g.leader == id {
		g.leader = 0
	}
	g.applied++
	f.logf("r%d: remove %d", d.Id, id)
	return nil
}

func (f *fakeRanges) TransferLeader(_ context.Context, d *placementpb.RangeDescriptor, to ReplicaID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.group(d)
	if !g.voters[to] {
		return fmt.Errorf("replica %d does not vote", to)
	}
	g.leader = to
	f.logf("r%d: leader → %d", d.Id, to)
	return nil
}

func (f *fakeRanges) Touch(_ context.Context, d *placementpb.RangeDescriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.group(d).applied++
	f.logf("r%d: touch", d.Id)
	return nil
}

func (f *fakeRanges) CompactLog(_ context.Context, member NodeID, d *placementpb.RangeDescriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[member] {
		return fmt.Errorf("member %d is down", member)
	}
	f.logf("r%d: compact log on member %d", d.Id, member)
	return nil
}

func (f *fakeRanges) StopServing(_ context.Context, member NodeID, d *placementpb.RangeDescriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[member] {
		return fmt.Errorf("member %d is down", member)
	}
	f.logf("r%d: member %d stops serving it", d.Id, member)
	return nil
}

func (f *fakeRanges) Status(ctx context.Context, member NodeID, d *placementpb.RangeDescriptor) (ReplicaStatus, error) {
	st, err := f.mapc.State(ctx)
	if err != nil {
		return ReplicaStatus{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[member] {
		return ReplicaStatus{}, fmt.Errorf("member %d is down", member)
	}
	r := RangeID(d.Id)
	id, ok := f.started[member][r]
	if mv := moveIn(st, r); !ok && mv != nil && NodeID(mv.To.Member) == member {
		id, ok = ReplicaID(mv.To.Id), true
		f.started[member][r] = id
		f.logf("r%d: member %d starts replica %d", r, member, id)
	}
	if !ok {
		return ReplicaStatus{}, fmt.Errorf("member %d runs no replica of range %d", member, r)
	}
	g := f.groups[r]
	if f.lag[member] > 0 {
		f.lag[member]--
		return ReplicaStatus{Replica: id, Applied: 0}, nil
	}
	if g.voters[id] || g.learners[id] {
		return ReplicaStatus{Replica: id, Applied: g.applied}, nil
	}
	return ReplicaStatus{Replica: id}, nil
}

// loggedMap is the range map with every move command recorded.
type loggedMap struct {
	*Client
	f *fakeRanges
}

func (l loggedMap) record(what string, err error) {
	l.f.mu.Lock()
	defer l.f.mu.Unlock()
	if err != nil {
		l.f.logf("map: %s: %v", what, err)
		return
	}
	l.f.logf("map: %s", what)
}

func (l loggedMap) BeginMove(ctx context.Context, r RangeID, gen uint64, from, to NodeID) (*placementpb.Move, error) {
	mv, err := l.Client.BeginMove(ctx, r, gen, from, to)
	what := fmt.Sprintf("begin-move r%d %d → %d", r, from, to)
	if err == nil {
		what += fmt.Sprintf(" (replica %d)", mv.To.Id)
	}
	l.record(what, err)
	return mv, err
}

func (l loggedMap) AdvanceMove(ctx context.Context, r RangeID, to ReplicaID, from, step placementpb.MoveStep) (*placementpb.Move, error) {
	mv, err := l.Client.AdvanceMove(ctx, r, to, from, step)
	l.record(fmt.Sprintf("advance-move r%d %s → %s", r, stepName(from), stepName(step)), err)
	return mv, err
}

func (l loggedMap) EndMove(ctx context.Context, r RangeID, to ReplicaID, done bool) error {
	err := l.Client.EndMove(ctx, r, to, done)
	what := fmt.Sprintf("end-move r%d", r)
	if done {
		what += " done"
	} else {
		what += " undone"
	}
	l.record(what, err)
	return err
}

// TestMover runs the scripts in testdata/mover: moves driven by a Mover
// over a range map around a real StateMachine and fake raft groups
// (fakeRanges). Commands:
//
//	cluster members=1,2,3,4 split=K,... range-replicas=R
//	                                 a new map; each range's group is its pairs, led by
//	                                 the first, each replica running on its member
//	leader range=N member=M          M's replica leads range N
//	down member=M | up member=M      M answers nothing (or again)
//	lag member=M looks=L             M's replicas answer applied 0 for L more looks
//	crash-after step=S               the next move or resume stops right after step S
//	move range=N from=M to=M         Move; prints what it did and its answer
//	resume                           Resume; the same
//	state                            the map's ranges and moves, and each group
//
// A destination gets 3 looks to start and to catch up.
func TestMover(t *testing.T) {
	datadriven.Walk(t, "testdata/mover", func(t *testing.T, path string) {
		var (
			f          *fakeRanges
			mv         *Mover
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
				ranges, err := mapc.BootstrapReplicas(ctx, members, int(num("range-replicas")), keys, func() (mvcc.Revision, error) { return 0, nil })
				if err != nil {
					t.Fatal(err)
				}
				f = &fakeRanges{mapc: mapc, groups: map[RangeID]*fakeRangeGroup{}, started: map[NodeID]map[RangeID]ReplicaID{},
					down: map[NodeID]bool{}, lag: map[NodeID]int{}}
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
				}
				crashAfter = ""
				mv = NewMover(MoverConfig{Map: loggedMap{mapc, f}, Raft: f, Poll: time.Millisecond, Patience: 3,
					Crash: func(step string) bool {
						if step == crashAfter {
							crashAfter = ""
							return true
						}
						return false
					}})
				return fmtRanges(ranges)
			case "leader":
				st, err := f.mapc.State(ctx)
				if err != nil {
					t.Fatal(err)
				}
				id, ok := ReplicaOf(rangeIn(st, RangeID(num("range"))), NodeID(num("member")))
				if !ok {
					t.Fatalf("member %d holds no replica of range %d", num("member"), num("range"))
				}
				f.groups[RangeID(num("range"))].leader = id
				return ""
			case "down", "up":
				f.down[NodeID(num("member"))] = d.Cmd == "down"
				return ""
			case "lag":
				f.lag[NodeID(num("member"))] = int(num("looks"))
				return ""
			case "crash-after":
				crashAfter = arg("step")
				if !slices.Contains(MoveSteps, crashAfter) {
					t.Fatalf("unknown step %q", crashAfter)
				}
				return ""
			case "move":
				return answer(mv.Move(ctx, RangeID(num("range")), NodeID(num("from")), NodeID(num("to"))))
			case "resume":
				err := mv.Resume(ctx)
				if errors.Is(err, ErrCrashed) {
					err = ErrCrashed
				}
				return answer(nil, err)
			case "state":
				st, err := f.mapc.State(ctx)
				if err != nil {
					t.Fatal(err)
				}
				lines := []string{fmtRanges(st.Ranges), fmtMoves(st.Moves)}
				for _, id := range slices.Sorted(maps.Keys(f.groups)) {
					g := f.groups[id]
					lines = append(lines, fmt.Sprintf("raft r%d: voters=%v learners=%v removed=%v leader=%d", id,
						slices.Sorted(maps.Keys(g.voters)), slices.Sorted(maps.Keys(g.learners)), slices.Sorted(maps.Keys(g.removed)), g.leader))
				}
				return strings.Join(lines, "\n")
			}
			t.Fatalf("unknown command %s", d.Cmd)
			return ""
		})
	})
}
