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
	"github.com/lni/dragonboat/v4"
	dbclient "github.com/lni/dragonboat/v4/client"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// The member's NodeHost is the raft a Membership runs over.
var _ MembershipRaft = (*dragonboat.NodeHost)(nil)

// fakeShardID is the placement group's raft group in the scripts.
const fakeShardID = 100

// fakeCluster is what a Membership reaches, for member 1: every raft
// group's members (the placement group and each range), member 1's
// replicas, the other members, and the range map (a fakeRaft around a real
// StateMachine). It records every change and every try in log.
type fakeCluster struct {
	mu sync.Mutex
	// groups holds each raft group's voters and non-voting members.
	groups map[uint64]*fakeGroup
	// faults fail the next tries of an operation on a group (0: any).
	faults []*fakeFault
	// splitting holds the ranges whose split has not applied here yet,
	// with how many more times Runs answers so (-1: always); giveUp, the
	// ranges whose look ends the change's context (cancel).
	splitting map[RangeID]int
	giveUp    map[RangeID]bool
	cancel    context.CancelFunc
	log       []string
	// quorum, if set, has the placement group (and the range map, its
	// state machine: mapRaft) answer nothing while fewer than a quorum of
	// its voters are started: the founders, and the members started
	// since (start).
	quorum  bool
	started map[uint64]bool
	mapRaft *fakeRaft
}

type fakeGroup struct{ voters, learners map[uint64]bool }

type fakeFault struct {
	op    string
	group uint64
	err   error
	times int
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{groups: map[uint64]*fakeGroup{}, splitting: map[RangeID]int{}, giveUp: map[RangeID]bool{},
		started: map[uint64]bool{}}
}

// hasQuorum reports whether the placement group has a quorum of started
// voters, always unless c.quorum (REQUIRES: c.mu).
func (c *fakeCluster) hasQuorum() bool {
	g := c.groups[fakeShardID]
	if !c.quorum || g == nil {
		return true
	}
	n := 0
	for id := range g.voters {
		if c.started[id] {
			n++
		}
	}
	return n >= len(g.voters)/2+1
}

// checkQuorum has the range map answer nothing while the placement group
// lacks its quorum (REQUIRES: c.mu).
func (c *fakeCluster) checkQuorum() {
	if !c.quorum {
		return
	}
	c.mapRaft.mu.Lock()
	c.mapRaft.noLeader = !c.hasQuorum()
	c.mapRaft.mu.Unlock()
}

func groupName(g uint64) string {
	if g == fakeShardID {
		return "placement"
	}
	return fmt.Sprintf("r%d", g)
}

// try records a try of op on group, what, and answers the fault it meets,
// if any; a quiet try is recorded only if it fails (REQUIRES: c.mu).
func (c *fakeCluster) try(op string, group uint64, what string, quiet bool) error {
	for _, f := range c.faults {
		if f.op == op && (f.group == 0 || f.group == group) && f.times != 0 {
			f.times--
			c.log = append(c.log, fmt.Sprintf("%s: %v", what, f.err))
			return f.err
		}
	}
	if !quiet {
		c.log = append(c.log, what)
	}
	return nil
}

func (c *fakeCluster) group(id uint64) (*fakeGroup, error) {
	g := c.groups[id]
	if g == nil {
		return nil, dragonboat.ErrShardNotFound
	}
	return g, nil
}

func (c *fakeCluster) SyncGetShardMembership(_ context.Context, shardID uint64) (*dragonboat.Membership, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, err := c.group(shardID)
	if err != nil {
		return nil, err
	}
	if err := c.try("membership", shardID, "membership "+groupName(shardID), true); err != nil {
		return nil, err
	}
	if shardID == fakeShardID && !c.hasQuorum() {
		return nil, dragonboat.ErrTimeout // a ReadIndex without a quorum
	}
	ms := &dragonboat.Membership{Nodes: map[uint64]string{}, NonVotings: map[uint64]string{}}
	for id := range g.voters {
		ms.Nodes[id] = fmt.Sprintf("t%d", id)
	}
	for id := range g.learners {
		ms.NonVotings[id] = fmt.Sprintf("t%d", id)
	}
	return ms, nil
}

func (c *fakeCluster) SyncRequestAddReplica(_ context.Context, shardID, replicaID uint64, target string, _ uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, err := c.group(shardID)
	if err != nil {
		return err
	}
	if err := c.try("add-replica", shardID, fmt.Sprintf("add-replica %s %d at %s", groupName(shardID), replicaID, target), false); err != nil {
		return err
	}
	delete(g.learners, replicaID)
	g.voters[replicaID] = true
	c.checkQuorum()
	return nil
}

func (c *fakeCluster) SyncRequestAddNonVoting(_ context.Context, shardID, replicaID uint64, target string, _ uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, err := c.group(shardID)
	if err != nil {
		return err
	}
	if err := c.try("add-non-voting", shardID, fmt.Sprintf("add-non-voting %s %d at %s", groupName(shardID), replicaID, target), false); err != nil {
		return err
	}
	g.learners[replicaID] = true
	return nil
}

func (c *fakeCluster) SyncRequestDeleteReplica(_ context.Context, shardID, replicaID uint64, _ uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, err := c.group(shardID)
	if err != nil {
		return err
	}
	if err := c.try("delete-replica", shardID, fmt.Sprintf("delete-replica %s %d", groupName(shardID), replicaID), false); err != nil {
		return err
	}
	delete(g.voters, replicaID)
	delete(g.learners, replicaID)
	c.checkQuorum()
	return nil
}

func (c *fakeCluster) SyncRequestSnapshot(_ context.Context, shardID uint64, opt dragonboat.SnapshotOption) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.group(shardID); err != nil {
		return 0, err
	}
	what := fmt.Sprintf("snapshot %s here", groupName(shardID))
	if opt.OverrideCompactionOverhead {
		what += ", log dropped"
	}
	return 1, c.try("snapshot", shardID, what, false)
}

// Runs and Touch: member 1's replicas (LocalRanges).
func (c *fakeCluster) Runs(r RangeID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.splitting[r]
	if !ok {
		return c.groups[uint64(r)] != nil
	}
	c.log = append(c.log, fmt.Sprintf("r%d does not run here yet", r))
	if c.giveUp[r] {
		c.log = append(c.log, "the caller gives up")
		c.cancel()
	}
	switch {
	case n > 1:
		c.splitting[r] = n - 1
	case n == 1:
		delete(c.splitting, r)
	}
	return false
}

func (c *fakeCluster) Touch(_ context.Context, r RangeID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.try("touch", uint64(r), fmt.Sprintf("touch r%d", r), false)
}

// CompactLog: the other members (LogCompactor).
func (c *fakeCluster) CompactLog(_ context.Context, member NodeID, r RangeID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.try("compact-log", uint64(r), fmt.Sprintf("compact-log r%d on %d", r, member), false)
}

// loggedRaft is the range map's group, recording the commands a
// Membership proposes in c's log.
type loggedRaft struct {
	*fakeRaft
	c *fakeCluster
}

func (l loggedRaft) SyncPropose(ctx context.Context, s *dbclient.Session, cmd []byte) (sm.Result, error) {
	var c placementpb.Command
	if err := proto.Unmarshal(cmd, &c); err != nil {
		return sm.Result{}, err
	}
	var what string
	switch op := c.Op.(type) {
	case *placementpb.Command_Reconfigure:
		what = fmt.Sprintf("map: reconfigure %d", op.Reconfigure.Member)
		if op.Reconfigure.Done {
			what += " done"
		}
		if op.Reconfigure.Adding {
			what += " adding"
		}
		if op.Reconfigure.Learner {
			what += " learner"
		}
		if op.Reconfigure.Removing {
			what += " removing"
		}
	case *placementpb.Command_ChangeReplicas:
		what = fmt.Sprintf("map: change-replicas r%d", op.ChangeReplicas.Range)
		if op.ChangeReplicas.Add != 0 {
			what += fmt.Sprintf(" add %d", op.ChangeReplicas.Add)
		}
		if op.ChangeReplicas.Remove != 0 {
			what += fmt.Sprintf(" remove %d", op.ChangeReplicas.Remove)
		}
	case *placementpb.Command_AddReplica:
		what = fmt.Sprintf("map: add-replica r%d member %d", op.AddReplica.Range, op.AddReplica.Member)
		if op.AddReplica.Learner {
			what += " learner"
		}
	case *placementpb.Command_PromoteReplica:
		what = fmt.Sprintf("map: promote-replica r%d %d", op.PromoteReplica.Range, op.PromoteReplica.Id)
	case *placementpb.Command_RemoveReplica:
		what = fmt.Sprintf("map: remove-replica r%d %d", op.RemoveReplica.Range, op.RemoveReplica.Id)
	case *placementpb.Command_AddNode:
		what = fmt.Sprintf("map: node %d learner=%t", op.AddNode.Node.GetId(), op.AddNode.Node.GetLearner())
	default:
		what = fmt.Sprintf("map: %T", c.Op)
	}
	res, err := l.fakeRaft.SyncPropose(ctx, s, cmd)
	if err != nil {
		what += ": " + err.Error()
	}
	l.c.mu.Lock()
	l.c.log = append(l.c.log, what)
	l.c.mu.Unlock()
	return res, err
}

// TestMembership runs the scripts in testdata/members: a membership change
// walked by member 1 through the placement group (raft group 100) and the
// ranges, over fakes (fakeCluster) and a range map around a real
// StateMachine. Commands:
//
//	cluster members=1,2,3 [split=a,b] [placement-voters=P] [quorum]
//	                                    every group (the placement group, each range) with
//	                                    members as voters, and the range map; with P, the
//	                                    placement group's voters are the first P members
//	                                    (the others registered in the map only), and the
//	                                    Membership votes at most P members there; with
//	                                    quorum, the placement group and the map answer
//	                                    nothing while fewer than a quorum of its voters
//	                                    are started (the founders are)
//	start member=M                      member M runs (with quorum)
//	fill                                FillPlacement
//	split range=N gen=G key=K           a split recorded in the map; the new range's group
//	                                    has the map's replicas of the range split
//	raft group=N add=M [learner] | remove=M   one group's membership changes
//	splitting range=N [polls=P] [give-up]  range N does not run here yet, for P more
//	                                    looks (none: never); give-up: the first look ends
//	                                    the change's context
//	fail op=O [group=N] [times=T] err=busy|closed|boom
//	                                    the next T tries (none: every try) of O (membership,
//	                                    add-replica, add-non-voting, delete-replica, snapshot,
//	                                    touch, compact-log) fail
//	map [no-leader] [cancel-after=N]    the range map's group has no leader (or has one);
//	                                    cancel-after: each change's caller gives up in the
//	                                    map's Nth try
//	add member=M [learner] | remove member=M | promote member=M
//	state                               every group's members and the range map
//
// A change prints what it did, in order, and its answer.
func TestMembership(t *testing.T) {
	datadriven.Walk(t, "testdata/members", func(t *testing.T, path string) {
		c := newFakeCluster()
		mapRaft := newFakeRaft()
		c.mapRaft = mapRaft
		cfg := MembershipConfig{
			Self: 1, ShardID: fakeShardID,
			Raft:   c,
			Map:    NewClient(ClientConfig{Raft: loggedRaft{mapRaft, c}, ShardID: fakeShardID, Retry: time.Millisecond}),
			Ranges: c, Peers: c,
			Target: func(id NodeID) string { return fmt.Sprintf("t%d", id) },
			Retry:  time.Millisecond, Poll: 10 * time.Millisecond,
		}
		m := NewMembership(cfg)
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg, num := cmdArgs(d)
			var list []uint64
			for _, s := range strings.Split(arg("members"), ",") {
				if n, err := strconv.ParseUint(s, 10, 64); err == nil {
					list = append(list, n)
				}
			}
			newGroup := func(voters []uint64) *fakeGroup {
				g := &fakeGroup{voters: map[uint64]bool{}, learners: map[uint64]bool{}}
				for _, id := range voters {
					g.voters[id] = true
				}
				return g
			}
			switch d.Cmd {
			case "cluster":
				b := &placementpb.Bootstrap{Replicas: list}
				for _, k := range strings.Split(arg("split"), ",") {
					if k != "" {
						b.SplitKeys = append(b.SplitKeys, []byte(k))
					}
				}
				placementVoters := list
				if d.HasArg("placement-voters") {
					cfg.PlacementVoters = int(num("placement-voters"))
					m = NewMembership(cfg)
					b.Members = list
					placementVoters = list[:min(cfg.PlacementVoters, len(list))]
				}
				mapRaft.mu.Lock()
				mapRaft.commit(&placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: b}})
				mapRaft.mu.Unlock()
				c.mu.Lock()
				defer c.mu.Unlock()
				c.quorum = d.HasArg("quorum")
				for _, id := range list {
					c.started[id] = true
				}
				c.groups[fakeShardID] = newGroup(placementVoters)
				for r := range len(b.SplitKeys) + 1 {
					c.groups[uint64(r+1)] = newGroup(list)
				}
				return ""
			case "split":
				cmd, _ := proto.Marshal(&placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{
					Range: num("range"), Generation: num("gen"), Key: []byte(arg("key"))}}})
				res, err := mapRaft.sm.Update(sm.Entry{Cmd: cmd})
				if err != nil {
					t.Fatal(err)
				}
				var out placementpb.Result
				if err := proto.Unmarshal(res.Data, &out); err != nil || out.Error != "" {
					t.Fatalf("%s: split: %v %s", d.Pos, err, out.Error)
				}
				c.mu.Lock()
				defer c.mu.Unlock()
				var founders []uint64
				for _, p := range Voters(out.Ranges[1]) {
					founders = append(founders, p.Id)
				}
				c.groups[out.Ranges[1].Id] = newGroup(founders)
				return fmtRanges(out.Ranges)
			case "raft":
				c.mu.Lock()
				defer c.mu.Unlock()
				g := c.groups[num("group")]
				switch {
				case d.HasArg("add") && d.HasArg("learner"):
					g.learners[num("add")] = true
				case d.HasArg("add"):
					g.voters[num("add")] = true
				default:
					delete(g.voters, num("remove"))
					delete(g.learners, num("remove"))
				}
				return ""
			case "start":
				c.mu.Lock()
				defer c.mu.Unlock()
				c.started[num("member")] = true
				c.checkQuorum()
				return ""
			case "splitting":
				c.mu.Lock()
				defer c.mu.Unlock()
				polls := -1
				if d.HasArg("polls") {
					polls = int(num("polls"))
				}
				c.splitting[RangeID(num("range"))] = polls
				c.giveUp[RangeID(num("range"))] = d.HasArg("give-up")
				return ""
			case "fail":
				f := &fakeFault{op: arg("op"), group: num("group"), times: -1}
				if d.HasArg("times") {
					f.times = int(num("times"))
				}
				switch arg("err") {
				case "busy":
					f.err = dragonboat.ErrSystemBusy
				case "closed":
					f.err = dragonboat.ErrClosed
				default:
					f.err = errors.New("boom")
				}
				c.mu.Lock()
				defer c.mu.Unlock()
				c.faults = append(c.faults, f)
				return ""
			case "map":
				mapRaft.mu.Lock()
				defer mapRaft.mu.Unlock()
				mapRaft.noLeader, mapRaft.cancelAfter = d.HasArg("no-leader"), int(num("cancel-after"))
				return ""
			case "state":
				c.mu.Lock()
				defer c.mu.Unlock()
				var lines []string
				ids := slices.Sorted(maps.Keys(c.groups))
				ids = append([]uint64{fakeShardID}, slices.DeleteFunc(ids, func(id uint64) bool { return id == fakeShardID })...)
				for _, id := range ids {
					g := c.groups[id]
					line := fmt.Sprintf("%s voters=%v", groupName(id), slices.Sorted(maps.Keys(g.voters)))
					if len(g.learners) > 0 {
						line += fmt.Sprintf(" learners=%v", slices.Sorted(maps.Keys(g.learners)))
					}
					lines = append(lines, line)
				}
				v, err := mapRaft.sm.Lookup(StateQuery{})
				if err != nil {
					t.Fatal(err)
				}
				st := v.(*placementpb.State)
				lines = append(lines, fmtRanges(st.Ranges))
				var learners []uint64
				for _, n := range st.Nodes {
					if n.Learner {
						learners = append(learners, n.Id)
					}
				}
				if len(learners) > 0 {
					lines = append(lines, fmt.Sprintf("etcd learners %v", learners))
				}
				if st.Reconfiguring != 0 {
					lines = append(lines, fmt.Sprintf("reconfiguring %d", st.Reconfiguring))
				}
				return strings.Join(lines, "\n")
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c.mu.Lock()
			c.cancel = cancel
			c.mu.Unlock()
			mapRaft.mu.Lock()
			mapRaft.reads, mapRaft.proposals, mapRaft.cancel = 0, 0, cancel
			mapRaft.mu.Unlock()
			member := NodeID(num("member"))
			var err error
			switch d.Cmd {
			case "add":
				err = m.Add(ctx, member, d.HasArg("learner"))
			case "begin":
				err = m.Begin(ctx, member, d.HasArg("learner"), nil)
			case "continue":
				err = m.Continue(ctx, member, d.HasArg("learner"))
			case "pending":
				var ok bool
				var p PendingChange
				p, ok, err = m.Pending(ctx)
				if err == nil {
					c.mu.Lock()
					what := fmt.Sprintf("pending member=%d learner=%t ok=%t", p.Member, p.Learner, ok)
					if p.Removing {
						what += " removing"
					}
					c.log = append(c.log, what)
					c.mu.Unlock()
				}
			case "remove":
				err = m.Remove(ctx, member)
			case "begin-remove":
				var drain bool
				drain, err = m.BeginRemove(ctx, member)
				if err == nil {
					c.mu.Lock()
					c.log = append(c.log, fmt.Sprintf("drain=%t", drain))
					c.mu.Unlock()
				}
			case "continue-remove":
				err = m.ContinueRemove(ctx, member)
			case "removed":
				var done bool
				done, err = m.Removed(ctx, member)
				if err == nil {
					c.mu.Lock()
					c.log = append(c.log, fmt.Sprintf("removed=%t", done))
					c.mu.Unlock()
				}
			case "promote":
				err = m.Promote(ctx, member)
			case "fill":
				err = m.FillPlacement(ctx)
			default:
				t.Fatalf("%s: unknown command %s", d.Pos, d.Cmd)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			out := strings.Join(append(c.log, ""), "\n")
			c.log = nil
			if err != nil {
				return out + "error: " + err.Error()
			}
			return out + "ok"
		})
	})
}
