package placement

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// ErrNotLeader: this replica does not lead the placement group, so it
// hands out no revisions; ask the leader.
var ErrNotLeader = errors.New("placement: not the placement group's leader")

// Allocator serves the revision oracle from one replica of the placement
// group, while that replica leads. Requests that arrive while a round is
// under way fold into the next round, so many concurrent callers cost one
// leadership check (and, when the window runs low, one bound raised through
// raft) between them:
//
//	round: gather waiting requests (n revisions in all)
//	       new term? read the persisted bound linearizably, start an Oracle above it
//	       Want(n) > 0? persist a higher bound (RaiseBound through raft)
//	       Take(n), then confirm leadership (ReadIndex), then answer
//
// The check after Take is what orders revisions in real time: a deposed
// leader that has not noticed can still take from its old window, but its
// check fails, so a revision it took is never handed out once a successor
// (which starts above every old window) may have served someone.
//
// A round gives up, answering ErrNotLeader, as soon as its replica no
// longer leads in the term the round began in (dragonboat's GetLeaderID,
// polled every leaderPoll): a leader cut off from the others is deposed
// by check quorum after an election timeout, and its read index would
// otherwise hold the round, and every caller folded into it, for the
// round's whole timeout (issue 27). Giving up early hands out nothing, so
// it cannot weaken the argument above: a round answers only after its
// check succeeded, and an abandoned round's taken revisions are simply
// never used (revisions need not be dense).
type Allocator struct {
	nh        *dragonboat.NodeHost
	shardID   uint64
	replicaID uint64
	window    int64

	reqs chan *allocation
	stop chan struct{}
	// stopped is done once stop is closed.
	stopped       context.Context
	cancelStopped context.CancelFunc
	wg            sync.WaitGroup
	once          sync.Once
}

type allocation struct {
	n     int64
	above mvcc.Revision  // every revision handed out exceeds it
	done  chan allocated // size 1
}

type allocated struct {
	first mvcc.Revision
	err   error
}

// NewAllocator starts the allocator of replica replicaID of the placement
// group shardID on nh. window is how many revisions a persisted bound
// covers ahead of those handed out. Close stops it.
func NewAllocator(nh *dragonboat.NodeHost, shardID, replicaID uint64, window int64) *Allocator {
	a := &Allocator{nh: nh, shardID: shardID, replicaID: replicaID, window: window,
		reqs: make(chan *allocation), stop: make(chan struct{})}
	a.stopped, a.cancelStopped = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.run()
	return a
}

// Close stops the allocator; waiting and later calls get an error.
func (a *Allocator) Close() {
	a.once.Do(func() {
		close(a.stop)
		a.cancelStopped()
	})
	a.wg.Wait()
}

// Revisions hands out n consecutive revisions, first..first+n-1, each
// unique in the cluster and above every revision handed out before this
// call began. ErrNotLeader means another replica leads.
func (a *Allocator) Revisions(ctx context.Context, n int64) (mvcc.Revision, error) {
	return a.RevisionsAbove(ctx, n, 0)
}

// RevisionsAbove is Revisions with every revision handed out above above
// (Oracle.Raise): the oracle jumps past it if it is not there yet. With n
// 0 it hands out nothing and returns the revision the next one would be
// (so first-1 is at or above every revision handed out before the call
// began), leadership confirmed as for any round: the oracle's current
// value, read without consuming a revision (Current).
func (a *Allocator) RevisionsAbove(ctx context.Context, n int64, above mvcc.Revision) (mvcc.Revision, error) {
	if n < 0 {
		return 0, fmt.Errorf("placement: asked for %d revisions", n)
	}
	req := &allocation{n: n, above: above, done: make(chan allocated, 1)}
	select {
	case a.reqs <- req:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-a.stop:
		return 0, errAllocatorClosed
	}
	select {
	case r := <-req.done:
		return r.first, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Current is the oracle's current value while this replica leads: a
// revision at or above every one handed out before the call began, read
// without handing one out (OracleClient.Current).
func (a *Allocator) Current(ctx context.Context) (mvcc.Revision, error) {
	next, err := a.RevisionsAbove(ctx, 0, 0)
	if err != nil {
		return 0, err
	}
	return next - 1, nil
}

var errAllocatorClosed = errors.New("placement: allocator closed")

// roundTimeout bounds one round's raft work.
const roundTimeout = 5 * time.Second

// leaderPoll is how often a round waiting on raft checks that its replica
// still leads (whileLeading); GetLeaderID reads memory only.
const leaderPoll = 10 * time.Millisecond

// whileLeading returns a ctx under parent that ends, its cause
// ErrNotLeader, once leads (asked every poll) reports false, and a stop
// function that ends it and waits for its watcher.
func whileLeading(parent context.Context, poll time.Duration, leads func() bool) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(poll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if !leads() {
					cancel(ErrNotLeader)
					return
				}
			}
		}
	}()
	return ctx, func() { cancel(nil); <-done }
}

// deposed wraps err, from work under a ctx of whileLeading, as
// ErrNotLeader if the ctx ended because the leader changed.
func deposed(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), ErrNotLeader) {
		return fmt.Errorf("%w: the placement group's leader changed (%v)", ErrNotLeader, err)
	}
	return err
}

func (a *Allocator) run() {
	defer a.wg.Done()
	var (
		oracle *Oracle
		term   uint64
	)
	for {
		var batch []*allocation
		select {
		case r := <-a.reqs:
			batch = append(batch, r)
		case <-a.stop:
			return
		}
	gather:
		for {
			select {
			case r := <-a.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		var (
			n     int64
			above mvcc.Revision
		)
		for _, r := range batch {
			n += r.n
			above = max(above, r.above)
		}
		first, err := a.round(&oracle, &term, n, above)
		if errors.Is(err, dragonboat.ErrShardNotReady) {
			// A leader new in its term drops read indexes until it has
			// committed in it: not ready to lead yet, so callers wait and
			// ask again (issue 27), as they do while no leader is known.
			err = fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		for _, r := range batch {
			r.done <- allocated{first: first, err: err}
			first += mvcc.Revision(r.n)
		}
	}
}

// round hands out n revisions above above for one batch, (re)starting the
// oracle when this replica's leadership is new.
func (a *Allocator) round(oracle **Oracle, term *uint64, n int64, above mvcc.Revision) (mvcc.Revision, error) {
	ctx, cancel := context.WithTimeout(context.Background(), roundTimeout)
	defer cancel()
	// Close does not wait out a round the placement group cannot finish
	// (its quorum gone with the members that stopped first).
	stopRound := context.AfterFunc(a.stopped, cancel)
	defer stopRound()
	leader, t, ok, err := a.nh.GetLeaderID(a.shardID)
	if err != nil {
		return 0, fmt.Errorf("placement: %w", err)
	}
	if !ok || leader != a.replicaID {
		*oracle = nil
		return 0, ErrNotLeader
	}
	// The round's raft work ends once this replica no longer leads in
	// term t (see the type's comment: safe, as it hands out nothing).
	ctx, stopWatch := whileLeading(ctx, leaderPoll, func() bool {
		l, t2, ok, _ := a.nh.GetLeaderID(a.shardID)
		return ok && l == a.replicaID && t2 == t
	})
	defer stopWatch()
	if *oracle == nil || *term != t {
		v, err := a.nh.SyncRead(ctx, a.shardID, BoundQuery{})
		if err != nil {
			return 0, deposed(ctx, fmt.Errorf("placement: read the oracle's bound: %w", err))
		}
		*oracle, *term = NewOracle(v.(mvcc.Revision), a.window), t
	}
	o := *oracle
	o.Raise(above)
	if n == 0 {
		// Only reads of the current value in this round: nothing to take
		// or persist, but leadership is confirmed all the same.
		first := o.Next()
		if _, err := a.nh.SyncRead(ctx, a.shardID, BoundQuery{}); err != nil {
			*oracle = nil
			return 0, deposed(ctx, fmt.Errorf("placement: confirm leadership: %w", err))
		}
		if leader, t2, ok, _ := a.nh.GetLeaderID(a.shardID); !ok || leader != a.replicaID || t2 != t {
			*oracle = nil
			return 0, ErrNotLeader
		}
		return first, nil
	}
	if want := o.Want(n); want > 0 {
		bound, err := a.raiseBound(ctx, want)
		if err != nil {
			*oracle = nil // the next round reads the bound again
			return 0, deposed(ctx, err)
		}
		o.Persisted(bound)
	}
	first, ok := o.Take(n)
	if !ok {
		*oracle = nil
		return 0, fmt.Errorf("placement: the persisted bound does not cover %d revisions", n)
	}
	// Still the leader after the take (see the type's comment).
	if _, err := a.nh.SyncRead(ctx, a.shardID, BoundQuery{}); err != nil {
		*oracle = nil
		return 0, deposed(ctx, fmt.Errorf("placement: confirm leadership: %w", err))
	}
	if leader, t2, ok, _ := a.nh.GetLeaderID(a.shardID); !ok || leader != a.replicaID || t2 != t {
		*oracle = nil
		return 0, ErrNotLeader
	}
	return first, nil
}

// raiseBound persists bound b through raft and returns the group's bound
// after it applied.
func (a *Allocator) raiseBound(ctx context.Context, b mvcc.Revision) (mvcc.Revision, error) {
	cmd, err := proto.Marshal(&placementpb.Command{Op: &placementpb.Command_RaiseBound{RaiseBound: &placementpb.RaiseBound{Bound: int64(b)}}})
	if err != nil {
		return 0, err
	}
	res, err := a.nh.SyncPropose(ctx, a.nh.GetNoOPSession(a.shardID), cmd)
	if err != nil {
		return 0, fmt.Errorf("placement: persist the oracle's bound: %w", err)
	}
	var out placementpb.Result
	if err := proto.Unmarshal(res.Data, &out); err != nil {
		return 0, fmt.Errorf("placement: decode result: %w", err)
	}
	if out.Error != "" {
		return 0, fmt.Errorf("placement: persist the oracle's bound: %s", out.Error)
	}
	return mvcc.Revision(out.Bound), nil
}
