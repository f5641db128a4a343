package placement

import (
	"context"
	"errors"
	"fmt"
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

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// The member's NodeHost is what a Client runs over.
var _ Raft = (*dragonboat.NodeHost)(nil)

// fakeRaft is the placement group as a Client reaches it: a real
// StateMachine, with the faults raft shows a client (no leader, a try that
// times out before or after its proposal commits) injected.
type fakeRaft struct {
	sm *StateMachine

	mu sync.Mutex
	// dropReads and dropProposals fail that many next tries as raft does
	// while the group elects a leader; loseAnswers commits that many next
	// proposals but fails them all the same (the answer came too late).
	dropReads, dropProposals, loseAnswers int
	// noLeader fails every try.
	noLeader bool
	// cancelAfter, if set, ends each command's context during its try
	// number cancelAfter (the caller gives up), after a proposal that
	// try makes commits.
	cancelAfter int
	// first, if set, commits just before the next proposal: another
	// member's command winning the race.
	first *placementpb.Command
	// Per command: the tries made and what ends its context.
	reads, proposals int
	cancel           context.CancelFunc
}

func newFakeRaft() *fakeRaft {
	return &fakeRaft{sm: NewStateMachine(1, 1).(*StateMachine)}
}

// try counts a try and reports whether the group fails it.
func (f *fakeRaft) try(ctx context.Context, tries *int, drop *int) error {
	*tries++
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.noLeader {
		return dragonboat.ErrTimeout
	}
	if *drop > 0 {
		*drop--
		return dragonboat.ErrShardNotReady
	}
	return nil
}

// gaveUp ends the command's context if this try is the one its caller
// gives up in, and answers why the try then fails.
func (f *fakeRaft) gaveUp(ctx context.Context) error {
	if f.cancelAfter > 0 && f.reads+f.proposals >= f.cancelAfter {
		f.cancel()
	}
	return ctx.Err()
}

func (f *fakeRaft) SyncRead(ctx context.Context, shardID uint64, query interface{}) (interface{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.try(ctx, &f.reads, &f.dropReads)
	if gerr := f.gaveUp(ctx); gerr != nil {
		return nil, gerr
	}
	if err != nil {
		return nil, err
	}
	return f.sm.Lookup(query)
}

func (f *fakeRaft) SyncPropose(ctx context.Context, _ *dbclient.Session, cmd []byte) (sm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.try(ctx, &f.proposals, &f.dropProposals); err != nil {
		f.gaveUp(ctx)
		return sm.Result{}, err
	}
	if f.first != nil {
		f.commit(f.first)
		f.first = nil
	}
	res, err := f.sm.Update(sm.Entry{Cmd: cmd})
	if err != nil {
		return sm.Result{}, err
	}
	// Committed: the answer is lost if the caller gave up meanwhile.
	if err := f.gaveUp(ctx); err != nil {
		return sm.Result{}, err
	}
	if f.loseAnswers > 0 {
		f.loseAnswers--
		return sm.Result{}, dragonboat.ErrTimeout
	}
	return res, nil
}

func (f *fakeRaft) GetNoOPSession(uint64) *dbclient.Session { return nil }

// commit applies another member's command (REQUIRES: f.mu).
func (f *fakeRaft) commit(c *placementpb.Command) {
	data, _ := proto.Marshal(c)
	if _, err := f.sm.Update(sm.Entry{Cmd: data}); err != nil {
		panic(err)
	}
}

// TestClient runs the scripts in testdata/client: a member's client of the
// range map over a fake placement group (fakeRaft). Commands:
//
//	state                                          the state, linearizably read
//	bootstrap [founders=1,2] [split=a,b] [bound=B] [range-replicas=R]
//	                                               Bootstrap, BootstrapReplicas with R (prints whether the bound was asked)
//	record-split range=N gen=G key=K               RecordSplit
//	reconfigure member=M [done]                    Reconfigure
//	change-replicas range=N [add=A] [remove=R]     ChangeReplicas
//	add-replica range=N member=M [learner]         AddReplica
//	promote-replica range=N id=I                   PromoteReplica
//	remove-replica range=N id=I                    RemoveReplica
//	begin-move range=N gen=G from=M to=M           BeginMove
//	advance-move range=N to=I from-step=S step=S   AdvanceMove
//	end-move range=N to=I [done]                   EndMove
//	begin-merge left=N lgen=G right=N rgen=G       BeginMerge
//	advance-merge merge=M from-step=S step=S [freeze=I]  AdvanceMerge
//	commit-merge merge=M | end-merge merge=M [done]       CommitMerge, EndMerge
//
// and, for the group:
//
//	group [drop-reads=N] [drop-proposals=N] [lose-answers=N] [no-leader] [cancel-after=N]
//	                                      faults for the commands that follow (cancel-after: for
//	                                      each, the try its caller gives up in)
//	elsewhere [first] bootstrap|split ...   another member's command commits now (first: just
//	                                      before this client's next proposal)
//
// A client command prints its answer, or its error with the sentinel it
// is, and the tries it made.
func TestClient(t *testing.T) {
	datadriven.Walk(t, "testdata/client", func(t *testing.T, path string) {
		f := newFakeRaft()
		c := NewClient(ClientConfig{Raft: f, ShardID: 1, Retry: time.Millisecond})
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			has := func(name string) bool { return d.HasArg(name) }
			arg, num := cmdArgs(d)
			list := func(name string) []uint64 {
				var out []uint64
				for _, s := range strings.Split(arg(name), ",") {
					if n, err := strconv.ParseUint(s, 10, 64); err == nil {
						out = append(out, n)
					}
				}
				return out
			}
			keys := func(name string) [][]byte {
				var out [][]byte
				for _, k := range strings.Split(arg(name), ",") {
					if k != "" {
						out = append(out, []byte(k))
					}
				}
				return out
			}
			switch d.Cmd {
			case "group":
				f.mu.Lock()
				f.dropReads, f.dropProposals, f.loseAnswers = int(num("drop-reads")), int(num("drop-proposals")), int(num("lose-answers"))
				f.noLeader, f.cancelAfter = has("no-leader"), int(num("cancel-after"))
				f.mu.Unlock()
				return ""
			case "elsewhere":
				var cmd *placementpb.Command
				switch {
				case has("bootstrap"):
					cmd = &placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
						SplitKeys: keys("split"), Replicas: list("replicas"), Bound: int64(num("bound"))}}}
				case has("split"):
					cmd = &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{
						Range: num("range"), Generation: num("gen"), Key: []byte(arg("key"))}}}
				default:
					t.Fatalf("%s: elsewhere what?", d.Pos)
				}
				f.mu.Lock()
				defer f.mu.Unlock()
				if has("first") {
					f.first = cmd
					return ""
				}
				f.commit(cmd)
				return ""
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			f.mu.Lock()
			f.reads, f.proposals, f.cancel = 0, 0, cancel
			f.mu.Unlock()
			var out string
			var err error
			switch d.Cmd {
			case "state":
				var st *placementpb.State
				if st, err = c.State(ctx); err == nil {
					out = fmtRanges(st.Ranges) + fmt.Sprintf("\nbound %d", st.Bound)
					if st.Reconfiguring != 0 {
						out += fmt.Sprintf(" reconfiguring %d", st.Reconfiguring)
					}
				}
			case "bootstrap":
				var founders []NodeID
				for _, id := range list("founders") {
					founders = append(founders, NodeID(id))
				}
				asked := false
				var ranges []*placementpb.RangeDescriptor
				bound := func() (mvcc.Revision, error) {
					asked = true
					return mvcc.Revision(num("bound")), nil
				}
				if has("range-replicas") {
					ranges, err = c.BootstrapReplicas(ctx, founders, int(num("range-replicas")), keys("split"), bound)
				} else {
					ranges, err = c.Bootstrap(ctx, founders, keys("split"), bound)
				}
				if err == nil {
					out = fmtRanges(ranges)
				}
				if asked {
					out += "\nbound asked"
				}
			case "record-split":
				var left, right *placementpb.RangeDescriptor
				left, right, err = c.RecordSplit(ctx, RangeID(num("range")), num("gen"), []byte(arg("key")))
				if err == nil {
					out = fmtRanges([]*placementpb.RangeDescriptor{left, right})
				}
			case "reconfigure":
				if err = c.Reconfigure(ctx, NodeID(num("member")), has("done")); err == nil {
					out = "ok"
				}
			case "change-replicas":
				if err = c.ChangeReplicas(ctx, RangeID(num("range")), NodeID(num("add")), NodeID(num("remove"))); err == nil {
					out = "ok"
				}
			case "add-replica":
				var rd *placementpb.RangeDescriptor
				var id ReplicaID
				if rd, id, err = c.AddReplica(ctx, RangeID(num("range")), NodeID(num("member")), has("learner")); err == nil {
					out = fmt.Sprintf("id %d\n%s", id, fmtRange(rd))
				}
			case "promote-replica", "remove-replica":
				var rd *placementpb.RangeDescriptor
				if d.Cmd == "promote-replica" {
					rd, err = c.PromoteReplica(ctx, RangeID(num("range")), ReplicaID(num("id")))
				} else {
					rd, err = c.RemoveReplica(ctx, RangeID(num("range")), ReplicaID(num("id")))
				}
				if err == nil {
					out = fmtRange(rd)
				}
			case "begin-move", "advance-move":
				var mv *placementpb.Move
				if d.Cmd == "begin-move" {
					mv, err = c.BeginMove(ctx, RangeID(num("range")), num("gen"), NodeID(num("from")), NodeID(num("to")))
				} else {
					mv, err = c.AdvanceMove(ctx, RangeID(num("range")), ReplicaID(num("to")), moveStep(t, arg("from-step")), moveStep(t, arg("step")))
				}
				if err == nil {
					out = fmtMoves([]*placementpb.Move{mv})
				}
			case "end-move":
				if err = c.EndMove(ctx, RangeID(num("range")), ReplicaID(num("to")), has("done")); err == nil {
					out = "ok"
				}
			case "begin-merge", "advance-merge":
				var mg *placementpb.Merge
				if d.Cmd == "begin-merge" {
					mg, err = c.BeginMerge(ctx, RangeID(num("left")), num("lgen"), RangeID(num("right")), num("rgen"))
				} else {
					mg, err = c.AdvanceMerge(ctx, num("merge"), mergeStep(t, arg("from-step")), mergeStep(t, arg("step")), num("freeze"))
				}
				if err == nil {
					out = fmtMerges([]*placementpb.Merge{mg})
				}
			case "commit-merge":
				var mg *placementpb.Merge
				var left *placementpb.RangeDescriptor
				if mg, left, err = c.CommitMerge(ctx, num("merge")); err == nil {
					out = fmtMerges([]*placementpb.Merge{mg}) + "\n" + fmtRange(left)
				}
			case "end-merge":
				if err = c.EndMerge(ctx, num("merge"), has("done")); err == nil {
					out = "ok"
				}
			default:
				t.Fatalf("%s: unknown command %s", d.Pos, d.Cmd)
			}
			if err != nil {
				out = "error: " + err.Error() + isWhich(err) + out
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			return strings.TrimPrefix(out, "\n") + fmt.Sprintf("\ntries: reads %d, proposals %d", f.reads, f.proposals)
		})
	})
}

// isWhich names the sentinel err is, if any.
func isWhich(err error) string {
	for name, s := range map[string]error{"ErrBootstrapped": ErrBootstrapped, "ErrUnknownRange": ErrUnknownRange,
		"ErrStaleRange": ErrStaleRange, "ErrSplitKey": ErrSplitKey, "ErrSplitKeysOrder": ErrSplitKeysOrder,
		"ErrNoNode": ErrNoNode, "ErrReconfiguring": ErrReconfiguring, "ErrNotBootstrapped": ErrNotBootstrapped,
		"ErrRestoredSplit": ErrRestoredSplit, "context.Canceled": context.Canceled, "ErrMoving": ErrMoving,
		"ErrNoReplica": ErrNoReplica, "ErrHasReplica": ErrHasReplica, "ErrLastVoter": ErrLastVoter, "ErrNoMove": ErrNoMove,
		"ErrMoveStep": ErrMoveStep, "ErrMerging": ErrMerging, "ErrNotAligned": ErrNotAligned, "ErrNotAdjacent": ErrNotAdjacent,
		"ErrNoMerge": ErrNoMerge, "ErrMergeStep": ErrMergeStep} {
		if errors.Is(err, s) {
			return " (is " + name + ")"
		}
	}
	return ""
}
