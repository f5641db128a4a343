package shard

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/client"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Errors of the replica client. Each is a condition of the raft group, not
// of the request; the router turns them into etcd's statuses.
var (
	// ErrTimeout: the outcome is unknown (the proposal may still commit).
	ErrTimeout = errors.New("shard: request timed out")
	// ErrLeaderLost is ErrTimeout (errors.Is holds) of a write whose
	// leader was lost while it waited: etcd's "request timed out,
	// possibly due to previous leader failure". The outcome is unknown.
	ErrLeaderLost = fmt.Errorf("%w, possibly due to previous leader failure", ErrTimeout)
	// ErrNoLeader: the group has no leader the request could reach in time.
	ErrNoLeader = errors.New("shard: no leader")
	// ErrStopped: the replica client was closed.
	ErrStopped = errors.New("shard: replica stopped")
	// ErrBusy: dragonboat refused the proposal for back-pressure.
	ErrBusy = errors.New("shard: too many requests")
)

// Batching limits of the proposer. A proposal carries at most maxBatch
// requests or maxBatchBytes of them; at most maxInFlight proposals are
// outstanding, and while they are, new requests queue and form the next
// (larger) batch — that is what packs a busy shard's writes into few entries.
const (
	maxBatch        = 512
	maxBatchBytes   = 4 << 20
	maxInFlight     = 16
	proposalTimeout = 10 * time.Second
	retryBackoff    = 5 * time.Millisecond
	// leaderPoll is how often a linearizable read checks whether the
	// leader its read index went to has been replaced.
	leaderPoll = 10 * time.Millisecond
)

// Timings a replica client starts with, until Range.Start gives it its
// group's (SetElectionTimeout): etcd's defaults.
const (
	defaultElectionTimeout = time.Second
	defaultRequestTimeout  = 5*time.Second + 2*defaultElectionTimeout
)

// RequestTimeout is etcd's server-side bound on a request for a group
// whose election timeout is election: 5 s plus two election timeouts
// (etcd's ReqTimeout).
func RequestTimeout(election time.Duration) time.Duration { return 5*time.Second + 2*election }

// Replica is the client side of one shard on a NodeHost: it batches writes
// into proposals and serves reads through ReadIndex or the local replica.
type Replica struct {
	nh      *dragonboat.NodeHost
	shardID RangeID
	session *client.Session

	queue chan *pending // unbuffered: the batcher owns every queued request
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	// holdMu guards the hold: while time is before holdUntil the batcher
	// gathers requests but proposes none. holdWake is closed (and replaced)
	// whenever the hold changes, to wake a waiting batcher.
	holdMu     sync.Mutex
	holdUntil  time.Time
	holdTarget ReplicaID
	holdWake   chan struct{}

	// stamper, if set, stamps writes with cluster-wide revisions (sharded
	// mode); restamped counts writes refused as stale and stamped again.
	stamper Stamper
	// local is this NodeHost's state machine of the shard (see
	// NewStampingReplica); nil: none given.
	local     func() *StateMachine
	replicaID ReplicaID
	restamped atomic.Uint64
	// proposed counts the requests written through Write, reads those
	// read through Range and ReadTxn; sample holds some of their keys
	// (load.go).
	proposed atomic.Uint64
	reads    atomic.Uint64
	sample   *keySample
	// inFlight counts the writes whose callers wait for their outcome.
	inFlight atomic.Int64
	// obs, if set (by Range.Start, before the client is used), hears of
	// failed proposals and restamps.
	obs Observer
	// election is the group's election timeout and timeout the request
	// timeout derived from it (RequestTimeout): a write waits that long
	// for its outcome, a linearizable read for its read index. Set before
	// the client is used (SetElectionTimeout).
	election, timeout time.Duration

	// seqMu guards the sequencer's state: the first stamp of each batch
	// in flight (proposed, outcome not yet known), by batch number, and
	// the closed revision last proposed.
	seqMu    sync.Mutex
	inflight map[uint64]mvcc.Revision
	batches  uint64
	closed   mvcc.Revision
	// takingStamps is set while the batcher takes stamps for a batch not yet
	// tracked (beginStamp to track): closing then waits, so that it never
	// closes over a stamp just handed out, which would make the batch
	// stale and cost it a second stamp (a revision skipped).
	takingStamps bool
	// fenced is the term this replica, leading, last saw its fence (an
	// empty command carrying the term) applied in: closing needs one
	// read index fewer while it holds (closeAt).
	fenced atomic.Uint64
}

// Stamper hands out cluster-wide revisions: n consecutive ones from first,
// above every revision handed out before the call began (the placement
// group's oracle). Current reads the oracle's current value without handing
// one out: at or above every revision handed out before the call began,
// below every one handed out after it returns.
type Stamper interface {
	Revisions(ctx context.Context, n int64) (first mvcc.Revision, err error)
	Current(ctx context.Context) (mvcc.Revision, error)
}

type pending struct {
	req  *shardpb.Request
	size int
	ctx  context.Context // the caller's: once it ends, nobody waits for the outcome
	done chan outcome    // size 1: the proposer never blocks on a gone caller
}

type outcome struct {
	resp *shardpb.Response
	err  error
}

// NewReplica starts the proposal batcher of shardID on nh. Close stops it.
// Writes get their revisions when they apply (single-group mode).
func NewReplica(nh *dragonboat.NodeHost, shardID RangeID) *Replica {
	return NewStampingReplica(nh, shardID, 0, nil, nil)
}

// NewStampingReplica is NewReplica with writes stamped by stamper before
// they are proposed (sharded mode, DESIGN.md "Keys, values, revisions"):
// one oracle round trip per batch, the batch proposed at once in stamp
// order, and a write the state machine refuses as stale (it reached the
// log behind a newer stamp, say from another proposer) stamped again and
// retried, unseen by its caller. A nil stamper is NewReplica.
//
// replicaID is this NodeHost's replica of the shard: only while it leads
// does the client stamp (a batch otherwise fails with ErrNoLeader, for the
// caller to find the leader), and each command carries the term it leads
// in, so that a deposed leader's writes are refused once its successor has
// written.
//
// local, if set, is this NodeHost's state machine of the shard (nil while it
// is not open): while it counts its revisions (StateMachine.Counting, a
// sharded cluster of one range) writes go unstamped and the closed revision
// is its revision, with no oracle involved.
func NewStampingReplica(nh *dragonboat.NodeHost, shardID RangeID, replicaID ReplicaID, stamper Stamper, local func() *StateMachine) *Replica {
	r := &Replica{
		replicaID: replicaID,
		stamper:   stamper,
		local:     local,
		inflight:  map[uint64]mvcc.Revision{},
		nh:        nh,
		shardID:   shardID,
		session:   nh.GetNoOPSession(uint64(shardID)),
		queue:     make(chan *pending),
		stop:      make(chan struct{}),

		holdWake: make(chan struct{}),
		sample:   newKeySample(uint64(shardID)),
		election: defaultElectionTimeout,
		timeout:  defaultRequestTimeout,
	}
	r.wg.Add(1)
	go r.batch()
	return r
}

// SetElectionTimeout gives the client its group's election timeout, from
// which it derives its request timeout (RequestTimeout). It must be called
// before the client is used; etcd's defaults hold until then.
func (r *Replica) SetElectionTimeout(election time.Duration) {
	if election > 0 {
		r.election, r.timeout = election, RequestTimeout(election)
	}
}

// ShardID names the raft group.
func (r *Replica) ShardID() RangeID { return r.shardID }

// Close stops the batcher and waits for in-flight proposals to finish.
func (r *Replica) Close() {
	r.once.Do(func() { close(r.stop) })
	r.wg.Wait()
}

// Write proposes one request and returns its response. A refusal by the
// state machine is returned as *Error.
func (r *Replica) Write(ctx context.Context, req *shardpb.Request) (resp *shardpb.Response, err error) {
	if err := r.refuseFrozen(req); err != nil {
		return nil, err
	}
	r.proposed.Add(1)
	r.sample.add(writeKey(req))
	r.inFlight.Add(1)
	defer func() {
		r.inFlight.Add(-1)
		r.observeFailure(err)
	}()
	p := &pending{req: req, size: proto.Size(req), ctx: ctx, done: make(chan outcome, 1)}
	leader, term, _ := r.Leader()
	select {
	case r.queue <- p:
	case <-ctx.Done():
		return nil, r.ended(ctx, leader, term)
	case <-r.stop:
		return nil, ErrStopped
	}
	select {
	case o := <-p.done:
		if o.err != nil {
			return nil, o.err
		}
		if e := o.resp.GetError(); e != nil {
			return nil, fromProto(e)
		}
		return o.resp, nil
	case <-ctx.Done():
		return nil, r.ended(ctx, leader, term)
	}
}

// ended is the error of a write whose ctx ended first: ctx's, which a
// deadline passed after the leader the write began under (leader in term)
// was lost also wraps ErrLeaderLost with.
func (r *Replica) ended(ctx context.Context, leader ReplicaID, term uint64) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) && errors.Is(r.lost(ErrTimeout, leader, term), ErrLeaderLost) {
		return fmt.Errorf("%w (%w)", ErrLeaderLost, err)
	}
	return err
}

// WriteAll proposes reqs together — the batcher packs them into as few
// proposals as its limits allow — and returns each one's response or error
// (as Write would), in order.
func (r *Replica) WriteAll(ctx context.Context, reqs []*shardpb.Request) ([]*shardpb.Response, []error) {
	resps, errs := make([]*shardpb.Response, len(reqs)), make([]error, len(reqs))
	r.inFlight.Add(int64(len(reqs)))
	defer func() {
		r.inFlight.Add(-int64(len(reqs)))
		for _, err := range errs {
			r.observeFailure(err)
		}
	}()
	ps := make([]*pending, 0, len(reqs))
enqueue:
	for _, req := range reqs {
		if r.refuseFrozen(req) != nil {
			break
		}
		p := &pending{req: req, size: proto.Size(req), ctx: ctx, done: make(chan outcome, 1)}
		select {
		case r.queue <- p:
			ps = append(ps, p)
		case <-ctx.Done():
			break enqueue
		case <-r.stop:
			break enqueue
		}
	}
	for i := range reqs {
		if i >= len(ps) {
			errs[i] = ErrStopped
			if err := r.refuseFrozen(reqs[i]); err != nil {
				errs[i] = err
			} else if ctx.Err() != nil {
				errs[i] = ctx.Err()
			}
			continue
		}
		select {
		case o := <-ps[i].done:
			switch {
			case o.err != nil:
				errs[i] = o.err
			case o.resp.GetError() != nil:
				errs[i] = fromProto(o.resp.GetError())
			default:
				resps[i] = o.resp
			}
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	return resps, errs
}

// leads reports whether this NodeHost's replica leads the shard.
func (r *Replica) leads() bool {
	_, err := r.leading()
	return err == nil
}

// leading returns the term this NodeHost's replica leads in, or
// ErrNoLeader if it does not lead.
func (r *Replica) leading() (uint64, error) {
	leader, term, ok, err := r.nh.GetLeaderID(uint64(r.shardID))
	if err != nil || !ok || ReplicaID(leader) != r.replicaID {
		return 0, fmt.Errorf("%w: replica %d does not lead shard %d", ErrNoLeader, r.replicaID, r.shardID)
	}
	return term, nil
}

// Proposed reports how many requests were written through Write (the
// range's write load as this node sees it).
func (r *Replica) Proposed() uint64 { return r.proposed.Load() }

// Reads reports how many reads were served through Range and ReadTxn
// (the range's read load as this node sees it).
func (r *Replica) Reads() uint64 { return r.reads.Load() }

// TakeKeySample returns, sorted, a sample of the keys the requests
// counted by Proposed and Reads touched since the last take (at most
// sampleSize of them, one per request, each request equally likely to be
// in it), and starts a new sample. LoadKey turns it into a load key.
func (r *Replica) TakeKeySample() [][]byte { return r.sample.take() }

// InFlight reports how many writes through Write and WriteAll wait for
// their outcome now (etcd_server_proposals_pending).
func (r *Replica) InFlight() int64 { return r.inFlight.Load() }

// observeFailure tells the observer of a write that failed for a reason
// of the group rather than a refusal (*Error) by the state machine.
func (r *Replica) observeFailure(err error) {
	if err == nil || r.obs == nil {
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		r.obs.ProposalFailed()
	}
}

// retryable tells whether a proposal certainly did not commit and may be
// sent again.
func retryable(err error) bool {
	return errors.Is(err, errDropped) || errors.Is(err, dragonboat.ErrShardNotReady) ||
		errors.Is(err, dragonboat.ErrSystemBusy) || errors.Is(err, dragonboat.ErrShardNotInitialized)
}

// classify maps dragonboat's errors to this package's.
func classify(err error) error {
	switch {
	case errors.Is(err, dragonboat.ErrTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, dragonboat.ErrTimeoutTooSmall):
		return ErrTimeout
	case errors.Is(err, errDropped), errors.Is(err, dragonboat.ErrShardNotReady),
		errors.Is(err, dragonboat.ErrShardNotInitialized):
		return ErrNoLeader
	case errors.Is(err, dragonboat.ErrSystemBusy):
		return ErrBusy
	case errors.Is(err, dragonboat.ErrClosed), errors.Is(err, dragonboat.ErrShardClosed),
		errors.Is(err, ErrStopped):
		return ErrStopped
	}
	return err
}

// lookupError keeps refusals (*Error) and classifies the rest.
func lookupError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return classify(err)
}

// Leader reports the group's leader replica and term, as this node knows them.
func (r *Replica) Leader() (leader ReplicaID, term uint64, ok bool) {
	id, term, ok, err := r.nh.GetLeaderID(uint64(r.shardID))
	if err != nil {
		return 0, 0, false
	}
	return ReplicaID(id), term, ok
}
