package placement

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	dbclient "github.com/lni/dragonboat/v4/client"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// What a Client tells apart besides the refusals of a command (table.go).
var (
	// ErrNotBootstrapped: the range map has no ranges yet and the caller
	// cannot bootstrap it (it names no founders).
	ErrNotBootstrapped = errors.New("placement: the range map is not bootstrapped")
	// ErrRestoredSplit: a cluster started on a restored backup starts as
	// one range, so it is bootstrapped without split keys.
	ErrRestoredSplit = errors.New("placement: a restored backup starts as one range")
)

// refusals are the errors a command's Result names by their message.
var refusals = []error{ErrBootstrapped, ErrUnknownRange, ErrStaleRange, ErrSplitKey, ErrSplitKeysOrder,
	ErrNoNode, ErrReconfiguring, ErrMoving, ErrNoReplica, ErrHasReplica, ErrLastVoter, ErrNoMove, ErrMoveStep,
	ErrMerging, ErrNotAligned, ErrNotAdjacent, ErrNoMerge, ErrMergeStep}

// Raft is the placement group's raft as a Client uses it: dragonboat's
// *NodeHost is one; a test's fake applies to a StateMachine directly.
type Raft interface {
	// SyncRead answers query linearizably (StateMachine.Lookup).
	SyncRead(ctx context.Context, shardID uint64, query interface{}) (interface{}, error)
	// SyncPropose commits cmd, an encoded placementpb.Command, and
	// answers its encoded placementpb.Result.
	SyncPropose(ctx context.Context, session *dbclient.Session, cmd []byte) (sm.Result, error)
	// GetNoOPSession is the session SyncPropose takes.
	GetNoOPSession(shardID uint64) *dbclient.Session
}

// Client is one member's client of the range map kept by the placement
// group: it reads the group's state linearizably and proposes commands to
// it. A read or proposal the group drops (no leader yet, a leader change,
// a busy or not yet ready replica) is tried again until ctx ends; a
// command the group refuses answers its refusal, errors.Is-comparable to
// the sentinels of table.go:
//
//	RecordSplit(r2 g1 at t)  → try 1 times out, committed meanwhile
//	                         → try 2 refused: ErrStaleRange (r2 is at g2)
//	                         → the map holds r2 g2 [m,t) and r3 [t,) parent r2: the split, answered
//
// It holds no state of its own and starts no goroutine: safe for
// concurrent use.
type Client struct {
	cfg ClientConfig
}

// ClientConfig wires a Client to its member.
type ClientConfig struct {
	// Raft reaches the placement group, ShardID.
	Raft    Raft
	ShardID uint64
	// Retry is the wait between tries while the group has no leader; 0
	// means 10ms.
	Retry time.Duration
	// TryTimeout bounds one try; 0 means 2s.
	TryTimeout time.Duration
}

// NewClient returns a client over cfg.
func NewClient(cfg ClientConfig) *Client {
	if cfg.Retry <= 0 {
		cfg.Retry = 10 * time.Millisecond
	}
	if cfg.TryTimeout <= 0 {
		cfg.TryTimeout = 2 * time.Second
	}
	return &Client{cfg: cfg}
}

// State reads the placement group's whole state linearizably, waiting for
// a leader until ctx ends.
func (c *Client) State(ctx context.Context) (*placementpb.State, error) {
	for {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.TryTimeout)
		v, err := c.cfg.Raft.SyncRead(tctx, c.cfg.ShardID, StateQuery{})
		cancel()
		if err == nil {
			st, ok := v.(*placementpb.State)
			if !ok {
				return nil, fmt.Errorf("placement: the state read answered %T", v)
			}
			return st, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("placement: read the range map: %w", ctx.Err())
		}
		c.wait(ctx)
	}
}

// Propose proposes cmd until the group commits it, and returns its
// result. A refusal is returned both in the result and as the error (a
// table.go sentinel, wrapped, with the result's message). If ctx ends
// first, the error is ctx's; the command may have committed all the same.
func (c *Client) Propose(ctx context.Context, cmd *placementpb.Command) (*placementpb.Result, error) {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("placement: encode command: %w", err)
	}
	for {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.TryTimeout)
		res, err := c.cfg.Raft.SyncPropose(tctx, c.cfg.Raft.GetNoOPSession(c.cfg.ShardID), data)
		cancel()
		if err == nil {
			var out placementpb.Result
			if err := proto.Unmarshal(res.Data, &out); err != nil {
				return nil, fmt.Errorf("placement: decode result: %w", err)
			}
			if out.Error != "" {
				return &out, refusal(out.Error)
			}
			return &out, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c.wait(ctx)
	}
}

// refusal is the error a result's message names: the sentinel it starts
// with, wrapped so that the message stays the result's.
func refusal(msg string) error {
	for _, s := range refusals {
		if rest, ok := strings.CutPrefix(msg, s.Error()); ok {
			return fmt.Errorf("%w%s", s, rest)
		}
	}
	return errors.New(msg)
}

// wait waits Retry, or until ctx ends.
func (c *Client) wait(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(c.cfg.Retry):
	}
}

// Bootstrap returns the range map, bootstrapping it first if no member
// has: ranges cut at splitKeys, each with founders (in ascending order) as
// its replicas, and the oracle's bound at bound(), which is asked only
// then. A bootstrap another founder committed first is as good: its map
// is returned. Without founders (this member founded nothing) an
// unbootstrapped map is ErrNotBootstrapped; a bound above 1 (a restored
// backup's revision) with split keys is ErrRestoredSplit.
func (c *Client) Bootstrap(ctx context.Context, founders []NodeID, splitKeys [][]byte, bound func() (mvcc.Revision, error)) ([]*placementpb.RangeDescriptor, error) {
	return c.BootstrapReplicas(ctx, founders, 0, splitKeys, bound)
}

// BootstrapReplicas is Bootstrap with each range held by rangeReplicas of
// the founders, round robin, under allocated replica ids (Table; 0: every
// founder, under its member id, as Bootstrap).
func (c *Client) BootstrapReplicas(ctx context.Context, founders []NodeID, rangeReplicas int, splitKeys [][]byte, bound func() (mvcc.Revision, error)) ([]*placementpb.RangeDescriptor, error) {
	for {
		st, err := c.State(ctx)
		if err != nil {
			return nil, err
		}
		if len(st.Ranges) > 0 {
			return st.Ranges, nil
		}
		if len(founders) == 0 {
			return nil, fmt.Errorf("%w and this member is not a founder", ErrNotBootstrapped)
		}
		replicas := make([]uint64, 0, len(founders))
		for _, id := range founders {
			replicas = append(replicas, uint64(id))
		}
		slices.Sort(replicas)
		b, err := bound()
		if err != nil {
			return nil, err
		}
		if b > 1 && len(splitKeys) > 0 {
			return nil, ErrRestoredSplit
		}
		_, err = c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
			SplitKeys: splitKeys, Replicas: replicas, Members: replicas, Bound: int64(b), RangeReplicas: uint32(max(rangeReplicas, 0))}}})
		if err != nil && !errors.Is(err, ErrBootstrapped) {
			return nil, fmt.Errorf("placement: bootstrap the range map: %w", err)
		}
	}
}

// RecordNode registers or updates a node (placementpb.AddNode says how).
func (c *Client) RecordNode(ctx context.Context, a *placementpb.AddNode) error {
	_, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_AddNode{AddNode: a}})
	return err
}

// SetLearner records whether member is an etcd learner in its node record
// (registering it if it is not).
func (c *Client) SetLearner(ctx context.Context, member NodeID, learner bool) error {
	return c.RecordNode(ctx, &placementpb.AddNode{Node: &placementpb.Node{Id: uint64(member), Learner: learner}, Merge: true, SetLearner: true})
}

// RecordSplit records in the range map that range r, at generation gen,
// splits at key, and returns the two ranges the split makes: r up to key
// and the new range from it. If the proposal fails (a refusal, or ctx
// ended) but the map holds this very split already — an earlier call, or
// an earlier try of this one, committed it without an answer reaching the
// caller — that split is the answer.
func (c *Client) RecordSplit(ctx context.Context, r RangeID, gen uint64, key []byte) (left, right *placementpb.RangeDescriptor, err error) {
	res, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{
		Range: uint64(r), Generation: gen, Key: key}}})
	if err != nil {
		if left, right := c.recordedSplit(ctx, r, gen, key); left != nil {
			return left, right, nil
		}
		return nil, nil, err
	}
	if len(res.Ranges) != 2 {
		return nil, nil, fmt.Errorf("placement: the placement group answered a split with %d ranges", len(res.Ranges))
	}
	return res.Ranges[0], res.Ranges[1], nil
}

// recordedSplit returns the two ranges of a split of r at key if the range
// map holds it, gen being r's generation before it, or nils.
func (c *Client) recordedSplit(ctx context.Context, r RangeID, gen uint64, key []byte) (left, right *placementpb.RangeDescriptor) {
	st, err := c.State(ctx)
	if err != nil {
		return nil, nil
	}
	for _, d := range st.Ranges {
		switch {
		case d.Id == uint64(r) && d.Generation == gen+1 && bytes.Equal(d.End, key):
			left = d
		case d.Parent == uint64(r) && d.Generation == gen+1 && bytes.Equal(d.Start, key):
			right = d
		}
	}
	if left == nil || right == nil {
		return nil, nil
	}
	return left, right
}

// Reconfigure marks a membership change of member under way in the range
// map (splits are refused, ErrReconfiguring, until it is over), or, with
// done, over. Marking over a change of another member changes nothing.
func (c *Client) Reconfigure(ctx context.Context, member NodeID, done bool) error {
	return c.reconfigure(ctx, member, done, markPlain)
}

// reconfigure is Reconfigure with the mark's kind (placementpb.Reconfigure:
// adding, learner, removing).
func (c *Client) reconfigure(ctx context.Context, member NodeID, done bool, k markKind) error {
	_, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_Reconfigure{Reconfigure: &placementpb.Reconfigure{
		Member: uint64(member), Done: done, Adding: k.adding, Learner: k.learner, Removing: k.removing}}})
	return err
}

// ChangeReplicas records in the range map that range r's raft group gained
// add and lost remove (0: none).
func (c *Client) ChangeReplicas(ctx context.Context, r RangeID, add, remove NodeID) error {
	_, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_ChangeReplicas{ChangeReplicas: &placementpb.ChangeReplicas{
		Range: uint64(r), Add: uint64(add), Remove: uint64(remove)}}})
	return err
}

// AddReplica records in the range map that member holds a replica of range
// r (a learner, or a voter), allocating its replica id, and returns the
// range and that id. If member holds one already, that one is the answer,
// so a retried call allocates nothing new.
func (c *Client) AddReplica(ctx context.Context, r RangeID, member NodeID, learner bool) (*placementpb.RangeDescriptor, ReplicaID, error) {
	res, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_AddReplica{AddReplica: &placementpb.AddReplica{
		Range: uint64(r), Member: uint64(member), Learner: learner}}})
	if err != nil {
		return nil, 0, err
	}
	d, err := oneRange(res)
	if err != nil {
		return nil, 0, err
	}
	id, ok := ReplicaOf(d, member)
	if !ok {
		return nil, 0, fmt.Errorf("placement: the placement group answered an added replica of range %d without member %x", r, member)
	}
	return d, id, nil
}

// PromoteReplica records in the range map that replica id of range r
// votes, and returns the range.
func (c *Client) PromoteReplica(ctx context.Context, r RangeID, id ReplicaID) (*placementpb.RangeDescriptor, error) {
	res, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_PromoteReplica{PromoteReplica: &placementpb.PromoteReplica{
		Range: uint64(r), Id: uint64(id)}}})
	if err != nil {
		return nil, err
	}
	return oneRange(res)
}

// RemoveReplica records in the range map that replica id of range r is
// gone (nothing changes if it is not there), and returns the range.
func (c *Client) RemoveReplica(ctx context.Context, r RangeID, id ReplicaID) (*placementpb.RangeDescriptor, error) {
	res, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_RemoveReplica{RemoveReplica: &placementpb.RemoveReplica{
		Range: uint64(r), Id: uint64(id)}}})
	if err != nil {
		return nil, err
	}
	return oneRange(res)
}

// BeginMove opens a move of range r's replica on member from to member to,
// r being at generation gen, and returns the move (its destination's
// replica id allocated). The same move, open already, is the answer.
func (c *Client) BeginMove(ctx context.Context, r RangeID, gen uint64, from, to NodeID) (*placementpb.Move, error) {
	return c.move(ctx, &placementpb.Command{Op: &placementpb.Command_BeginMove{BeginMove: &placementpb.BeginMove{
		Range: uint64(r), Generation: gen, FromMember: uint64(from), ToMember: uint64(to)}}})
}

// AdvanceMove records that range r's move to replica to got from step
// from to step (a move at step already is the answer), and returns it.
func (c *Client) AdvanceMove(ctx context.Context, r RangeID, to ReplicaID, from, step placementpb.MoveStep) (*placementpb.Move, error) {
	return c.move(ctx, &placementpb.Command{Op: &placementpb.Command_AdvanceMove{AdvanceMove: &placementpb.AdvanceMove{
		Range: uint64(r), ToId: uint64(to), FromStep: from, Step: step}}})
}

// EndMove closes range r's move to replica to: done, or abandoned.
func (c *Client) EndMove(ctx context.Context, r RangeID, to ReplicaID, done bool) error {
	_, err := c.move(ctx, &placementpb.Command{Op: &placementpb.Command_EndMove{EndMove: &placementpb.EndMove{
		Range: uint64(r), ToId: uint64(to), Done: done}}})
	return err
}

func (c *Client) move(ctx context.Context, cmd *placementpb.Command) (*placementpb.Move, error) {
	res, err := c.Propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if res.Move == nil {
		return nil, errors.New("placement: the placement group answered a move command without the move")
	}
	return res.Move, nil
}

// BeginMerge opens a merge of range right, at generation rgen, into its
// left neighbour left, at generation lgen, and returns it (its id
// allocated). The same merge, open already, is the answer.
func (c *Client) BeginMerge(ctx context.Context, left RangeID, lgen uint64, right RangeID, rgen uint64) (*placementpb.Merge, error) {
	return c.merge(ctx, &placementpb.Command{Op: &placementpb.Command_BeginMerge{BeginMerge: &placementpb.BeginMerge{
		Left: uint64(left), LeftGeneration: lgen, Right: uint64(right), RightGeneration: rgen}}})
}

// AdvanceMerge records that merge id got from step from to step (FROZEN
// with the right range's freeze index; a merge at step already is the
// answer), and returns it.
func (c *Client) AdvanceMerge(ctx context.Context, id uint64, from, step placementpb.MergeStep, freezeIndex uint64) (*placementpb.Merge, error) {
	return c.merge(ctx, &placementpb.Command{Op: &placementpb.Command_AdvanceMerge{AdvanceMerge: &placementpb.AdvanceMerge{
		Merge: id, FromStep: from, Step: step, FreezeIndex: freezeIndex}}})
}

// CommitMerge records that the left range's log committed merge id: the
// map's left range takes the right one's span, the right one leaves the
// map. It returns the merge and the left range as the map has it then.
func (c *Client) CommitMerge(ctx context.Context, id uint64) (*placementpb.Merge, *placementpb.RangeDescriptor, error) {
	res, err := c.Propose(ctx, &placementpb.Command{Op: &placementpb.Command_CommitMerge{CommitMerge: &placementpb.CommitMerge{Merge: id}}})
	if err != nil {
		return nil, nil, err
	}
	if res.Merge == nil || len(res.Ranges) == 0 {
		return nil, nil, errors.New("placement: the placement group answered a merge commit without the merge or its range")
	}
	return res.Merge, res.Ranges[0], nil
}

// EndMerge closes merge id: done (committed), or abandoned (aborted). A
// try whose answer was lost after it committed makes the next one find no
// merge open (ErrNoMerge): the caller reads the map to tell.
func (c *Client) EndMerge(ctx context.Context, id uint64, done bool) error {
	_, err := c.merge(ctx, &placementpb.Command{Op: &placementpb.Command_EndMerge{EndMerge: &placementpb.EndMerge{
		Merge: id, Done: done}}})
	return err
}

func (c *Client) merge(ctx context.Context, cmd *placementpb.Command) (*placementpb.Merge, error) {
	res, err := c.Propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if res.Merge == nil {
		return nil, errors.New("placement: the placement group answered a merge command without the merge")
	}
	return res.Merge, nil
}

// oneRange is the one range a command's result names.
func oneRange(res *placementpb.Result) (*placementpb.RangeDescriptor, error) {
	if len(res.Ranges) != 1 {
		return nil, fmt.Errorf("placement: the placement group answered with %d ranges, not 1", len(res.Ranges))
	}
	return res.Ranges[0], nil
}
