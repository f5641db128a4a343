package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/client"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Errors of the replica client. Each is a condition of the raft group, not
// of the request; the router turns them into etcd's statuses.
var (
	// ErrTimeout: the outcome is unknown (the proposal may still commit).
	ErrTimeout = errors.New("shard: request timed out")
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
)

// Replica is the client side of one shard on a NodeHost: it batches writes
// into proposals and serves reads through ReadIndex or the local replica.
type Replica struct {
	nh      *dragonboat.NodeHost
	shardID uint64
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
	holdTarget uint64
	holdWake   chan struct{}

	// stamper, if set, stamps writes with cluster-wide revisions (sharded
	// mode); restamped counts writes refused as stale and stamped again.
	stamper Stamper
	// local is this NodeHost's state machine of the shard (see
	// NewStampingReplica); nil: none given.
	local     func() *StateMachine
	replicaID uint64
	restamped atomic.Uint64
	// proposed counts the requests written through this client.
	proposed atomic.Uint64

	// seqMu guards the sequencer's state: the first stamp of each batch
	// in flight (proposed, outcome not yet known), by batch number, and
	// the closed revision last proposed.
	seqMu    sync.Mutex
	inflight map[uint64]mvcc.Revision
	batches  uint64
	closed   mvcc.Revision
}

// Stamper hands out cluster-wide revisions: n consecutive ones from first,
// above every revision handed out before the call began (the placement
// group's oracle).
type Stamper interface {
	Revisions(ctx context.Context, n int64) (first mvcc.Revision, err error)
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
func NewReplica(nh *dragonboat.NodeHost, shardID uint64) *Replica {
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
func NewStampingReplica(nh *dragonboat.NodeHost, shardID, replicaID uint64, stamper Stamper, local func() *StateMachine) *Replica {
	r := &Replica{
		replicaID: replicaID,
		stamper:   stamper,
		local:     local,
		inflight:  map[uint64]mvcc.Revision{},
		nh:        nh,
		shardID:   shardID,
		session:   nh.GetNoOPSession(shardID),
		queue:     make(chan *pending),
		stop:      make(chan struct{}),

		holdWake: make(chan struct{}),
	}
	r.wg.Add(1)
	go r.batch()
	return r
}

// ShardID names the raft group.
func (r *Replica) ShardID() uint64 { return r.shardID }

// Close stops the batcher and waits for in-flight proposals to finish.
func (r *Replica) Close() {
	r.once.Do(func() { close(r.stop) })
	r.wg.Wait()
}

// Hold makes this replica client propose nothing new until until (but for
// at most max from now), or until LeaderChanged reports that target leads. Requests keep queueing
// and go out together when the hold ends; proposals already sent are not
// affected. A hold that ended long ago (an entry replayed at start) is a
// no-op.
func (r *Replica) Hold(target uint64, until time.Time, max time.Duration) {
	if limit := time.Now().Add(max); until.After(limit) {
		until = limit
	}
	if time.Until(until) <= 0 {
		return
	}
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	r.holdUntil, r.holdTarget = until, target
	close(r.holdWake)
	r.holdWake = make(chan struct{})
}

// LeaderChanged ends a hold waiting for leader to lead.
func (r *Replica) LeaderChanged(leader uint64) {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	if leader == 0 || leader != r.holdTarget || r.holdUntil.IsZero() {
		return
	}
	r.holdUntil, r.holdTarget = time.Time{}, 0
	close(r.holdWake)
	r.holdWake = make(chan struct{})
}

// held returns how long the current hold lasts (≤ 0: none) and the channel
// closed when it changes.
func (r *Replica) held() (time.Duration, <-chan struct{}) {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	return time.Until(r.holdUntil), r.holdWake
}

// Write proposes one request and returns its response. A refusal by the
// state machine is returned as *Error.
func (r *Replica) Write(ctx context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	r.proposed.Add(1)
	p := &pending{req: req, size: proto.Size(req), ctx: ctx, done: make(chan outcome, 1)}
	select {
	case r.queue <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
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
		return nil, ctx.Err()
	}
}

// WriteAll proposes reqs together — the batcher packs them into as few
// proposals as its limits allow — and returns each one's response or error
// (as Write would), in order.
func (r *Replica) WriteAll(ctx context.Context, reqs []*shardpb.Request) ([]*shardpb.Response, []error) {
	resps, errs := make([]*shardpb.Response, len(reqs)), make([]error, len(reqs))
	ps := make([]*pending, 0, len(reqs))
enqueue:
	for _, req := range reqs {
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
			if ctx.Err() != nil {
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

// batch is the proposer loop: it gathers whatever is queued into one
// proposal and hands it to a sender, keeping at most maxInFlight in flight.
func (r *Replica) batch() {
	defer r.wg.Done()
	slots := make(chan struct{}, maxInFlight) // counting semaphore of proposals in flight
	var senders sync.WaitGroup
	defer senders.Wait()
	for {
		var first *pending
		select {
		case first = <-r.queue:
		case <-r.stop:
			return
		}
		batch := []*pending{first}
		bytes := first.size
		// Wait out a hold, gathering arrivals meanwhile.
		for {
			d, wake := r.held()
			if d <= 0 {
				break
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-wake:
			case p := <-r.room(len(batch), bytes):
				batch = append(batch, p)
				bytes += p.size
			case <-r.stop:
				t.Stop()
				failAll(batch, ErrStopped)
				return
			}
			t.Stop()
		}
		// Wait for a slot, gathering arrivals meanwhile.
	wait:
		for {
			select {
			case slots <- struct{}{}:
				break wait
			case p := <-r.room(len(batch), bytes):
				batch = append(batch, p)
				bytes += p.size
			case <-r.stop:
				failAll(batch, ErrStopped)
				return
			}
		}
	gather:
		for len(batch) < maxBatch && bytes < maxBatchBytes {
			select {
			case p := <-r.queue:
				batch = append(batch, p)
				bytes += p.size
			default:
				break gather
			}
		}
		// Requests whose callers gave up while queued are not proposed.
		if batch = slices.DeleteFunc(batch, gaveUp); len(batch) == 0 {
			<-slots
			continue
		}
		var proposed *proposal
		if r.stamping() && (slices.ContainsFunc(batch, func(p *pending) bool { return stamps(p.req) }) || r.leads()) {
			// Stamp and propose here, one batch after another, so the log
			// gets this replica's writes in stamp order. Only the leader
			// stamps; a batch without writes to stamp may go from any
			// replica, as in single-group mode.
			term, err := r.leading()
			var first mvcc.Revision
			if err == nil {
				first, err = r.stamp(batch)
			}
			if err != nil {
				failAll(batch, err)
				<-slots
				continue
			}
			proposed = r.propose(batch, first, term)
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			defer func() { <-slots }()
			r.send(batch, proposed)
		}()
	}
}

// stamping reports whether writes are to be stamped: in sharded mode, once
// the range no longer counts its revisions itself.
func (r *Replica) stamping() bool {
	return r.stamper != nil && !r.counting()
}

// counting reports whether this NodeHost's state machine of the range
// counts its revisions (StateMachine.Counting).
func (r *Replica) counting() bool {
	if r.local == nil {
		return false
	}
	sm := r.local()
	return sm != nil && sm.Counting()
}

// Stamps reports whether req writes at a revision of its own, so that in
// sharded mode the range's leader must stamp it.
func Stamps(req *shardpb.Request) bool { return stamps(req) }

// stamps reports whether req writes at a revision of its own, so that a
// stamp is what it applies at.
func stamps(req *shardpb.Request) bool {
	switch req.Op.(type) {
	case *shardpb.Request_Put, *shardpb.Request_DeleteRange, *shardpb.Request_Txn, *shardpb.Request_LeaseRevoke,
		*shardpb.Request_ShadowRevoke:
		return true
	}
	return false
}

// stamp gives every write of batch a fresh revision from the stamper, in
// batch order, and returns the first (0 if the batch has no writes).
func (r *Replica) stamp(batch []*pending) (mvcc.Revision, error) {
	var n int64
	for _, p := range batch {
		if stamps(p.req) {
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), proposalTimeout)
	defer cancel()
	first, err := r.stamper.Revisions(ctx, n)
	if err != nil {
		return 0, fmt.Errorf("%w: revision oracle: %v", ErrNoLeader, err)
	}
	next := first
	for _, p := range batch {
		if stamps(p.req) {
			p.req.Stamp = int64(next)
			next++
		}
	}
	return first, nil
}

// track registers a batch whose first stamp is first (0: none) as in
// flight and returns its number and the closed revision its command
// carries: one below the lowest stamp in flight, or, with none, the last
// one proposed. No write of this client at or below it is still to come.
func (r *Replica) track(first mvcc.Revision) (uint64, mvcc.Revision) {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	r.batches++
	id := r.batches
	if first != 0 {
		r.inflight[id] = first
	}
	if len(r.inflight) > 0 {
		low := mvcc.Revision(-1)
		for _, f := range r.inflight {
			if low < 0 || f < low {
				low = f
			}
		}
		r.closed = max(r.closed, low-1)
	}
	return id, r.closed
}

// untrack drops batch id from the batches in flight.
func (r *Replica) untrack(id uint64) {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	delete(r.inflight, id)
}

// leads reports whether this NodeHost's replica leads the shard.
func (r *Replica) leads() bool {
	_, err := r.leading()
	return err == nil
}

// leading returns the term this NodeHost's replica leads in, or
// ErrNoLeader if it does not lead.
func (r *Replica) leading() (uint64, error) {
	leader, term, ok, err := r.nh.GetLeaderID(r.shardID)
	if err != nil || !ok || leader != r.replicaID {
		return 0, fmt.Errorf("%w: replica %d does not lead shard %d", ErrNoLeader, r.replicaID, r.shardID)
	}
	return term, nil
}

// AdvanceIdle raises the closed revision of a shard with no writes in
// flight, without a log write in the steady state: it takes a revision T
// from the oracle, then confirms that this replica still leads (a read
// index) in the term its last command was fenced with; every write still to
// come is then stamped after T (by this leader, or by a successor, which
// only stamps after it was elected, after that check), so T is closed. The
// first call in a term writes one empty command carrying the term, so that
// the state machine fences off the previous leader's proposals. It returns
// the closed revision, raised or not (writes in flight keep it where the
// log has it).
func (r *Replica) AdvanceIdle(ctx context.Context) (mvcc.Revision, error) {
	if r.stamper == nil {
		return 0, fmt.Errorf("shard: AdvanceIdle needs a stamping client")
	}
	if r.counting() {
		// A range that counts is closed at its revision, on every replica
		// (Config.Sharded): nothing to ask the oracle.
		if sm := r.local(); sm != nil {
			return max(r.Closed(), sm.Rev()), nil
		}
	}
	term, err := r.leading()
	if err != nil {
		return r.Closed(), err
	}
	st, err := r.Status(ctx, true)
	if err != nil {
		return r.Closed(), err
	}
	if st.Fence != term {
		// Fence this term in: an empty command carrying it.
		data, err := encode(nil, r.Closed(), term)
		if err != nil {
			return r.Closed(), err
		}
		if _, err := r.proposeOnce(data, proposalTimeout); err != nil {
			return r.Closed(), classify(err)
		}
	}
	r.seqMu.Lock()
	gen, busy := r.batches, len(r.inflight) > 0
	r.seqMu.Unlock()
	if busy {
		return r.Closed(), nil
	}
	t, err := r.stamper.Revisions(ctx, 1)
	if err != nil {
		return r.Closed(), fmt.Errorf("%w: revision oracle: %v", ErrNoLeader, err)
	}
	if st, err = r.Status(ctx, true); err != nil {
		return r.Closed(), err
	}
	if now, err := r.leading(); err != nil || now != term || st.Fence != term {
		return r.Closed(), err
	}
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	if r.batches == gen && len(r.inflight) == 0 {
		r.closed = max(r.closed, t)
	}
	return r.closed, nil
}

// Closed is the closed revision this client last proposed or published.
func (r *Replica) Closed() mvcc.Revision {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	return r.closed
}

// WaitClosed returns once this shard's closed revision, as this client
// (its leader's) knows it, has reached rev: no write at or below rev is
// still to come, and every such write has applied on this replica. It
// raises the closed revision itself (AdvanceIdle) when the shard is idle,
// and fails with ErrNoLeader if this replica does not lead.
func (r *Replica) WaitClosed(ctx context.Context, rev mvcc.Revision) error {
	backoff := time.Millisecond
	for {
		if r.Closed() >= rev {
			return nil
		}
		closed, err := r.AdvanceIdle(ctx)
		if err != nil {
			return err
		}
		if closed >= rev {
			return nil
		}
		// Writes in flight hold it back until they settle.
		select {
		case <-ctx.Done():
			return classify(ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, retryBackoff)
	}
}

// ReadAt answers a range request at revision rev once the shard's closed
// revision has reached it (WaitClosed), through a read index on this
// replica, which leads: one shard's part of a snapshot read over several
// shards at one revision (DESIGN.md "Reads").
func (r *Replica) ReadAt(ctx context.Context, req *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error) {
	if err := r.WaitClosed(ctx, rev); err != nil {
		return nil, err
	}
	q := proto.Clone(req).(*pb.RangeRequest)
	q.Revision = int64(rev)
	return read[*pb.RangeResponse](ctx, r, RangeQuery{Req: q, Floor: rev}, true)
}

// proposal is a batch proposed by the batcher, its outcome awaited by a
// sender, which then calls done.
type proposal struct {
	data []byte
	rs   *dragonboat.RequestState
	err  error
	done func()
}

// propose encodes batch, whose first stamp is first, with the closed
// revision and proposes it without waiting.
func (r *Replica) propose(batch []*pending, first mvcc.Revision, term uint64) *proposal {
	id, closed := r.track(first)
	done := func() { r.untrack(id) }
	data, err := encode(batch, closed, term)
	if err != nil {
		return &proposal{err: err, done: done}
	}
	rs, err := r.nh.Propose(r.session, data, proposalTimeout)
	return &proposal{data: data, rs: rs, err: err, done: done}
}

func encode(batch []*pending, closed mvcc.Revision, term uint64) ([]byte, error) {
	cmd := &shardpb.Command{Requests: make([]*shardpb.Request, len(batch)), Closed: int64(closed), Term: term}
	for i, p := range batch {
		cmd.Requests[i] = p.req
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("shard: encode command: %w", err)
	}
	return data, nil
}

// Proposed reports how many requests were written through Write (the
// range's write load as this node sees it).
func (r *Replica) Proposed() uint64 { return r.proposed.Load() }

// Restamped counts writes refused as stale and stamped again.
func (r *Replica) Restamped() uint64 { return r.restamped.Load() }

// restamp queues p again for a new stamp (its old one reached the log
// behind a newer one).
func (r *Replica) restamp(p *pending) {
	r.restamped.Add(1)
	p.req.Stamp = 0
	go func() {
		select {
		case r.queue <- p:
		case <-r.stop:
			p.done <- outcome{err: ErrStopped}
		}
	}()
}

// room returns the queue while a batch of n requests and size bytes may
// grow, and nil (a channel that never delivers) once it is full: the rest
// wait in the queue for the next batch.
func (r *Replica) room(n, size int) chan *pending {
	if n >= maxBatch || size >= maxBatchBytes {
		return nil
	}
	return r.queue
}

func failAll(batch []*pending, err error) {
	for _, p := range batch {
		p.done <- outcome{err: err}
	}
}

// send proposes one batch (or awaits first, the batcher's proposal of it),
// retrying while the group has no leader, and delivers each request's
// response; a stamped write refused as stale is stamped again.
//
// Once every caller of the batch has given up (as etcd, which forgets a
// proposal whose request ended), send neither proposes it again nor holds
// its in-flight slot: a goroutine waits out a proposal already made, so
// that abandoned proposals — a follower cut off from its leader piles them
// up — do not stall the writes that come after.
func (r *Replica) send(batch []*pending, first *proposal) {
	// settle ends the sequencer's tracking of the batch's stamps, once its
	// outcome is known.
	settle := func() {}
	defer func() { settle() }()
	var data []byte
	if first != nil {
		settle, data = first.done, first.data
	} else {
		var err error
		if data, err = encode(batch, 0, 0); err != nil {
			failAll(batch, err)
			return
		}
	}
	if data == nil {
		failAll(batch, first.err)
		return
	}
	gone, unwatch := leaving(batch)
	defer unwatch()
	deadline := time.Now().Add(proposalTimeout)
	for {
		var (
			rs  *dragonboat.RequestState
			res []byte
			err error
		)
		if first != nil {
			rs, err = first.rs, first.err
			first = nil
		} else {
			rs, err = r.nh.Propose(r.session, data, time.Until(deadline))
		}
		if err == nil {
			if res, err = r.await(rs, gone); errors.Is(err, errLeft) {
				after := settle
				settle = func() {}
				go func() {
					<-rs.ResultC()
					rs.Release()
					after()
				}()
				failAll(batch, ErrTimeout)
				return
			}
		}
		if err == nil {
			// The outcome is known: settled before the callers hear it, so
			// that what they do next sees no batch in flight.
			settle()
			settle = func() {}
			var out shardpb.Result
			if err := proto.Unmarshal(res, &out); err != nil || len(out.Responses) != len(batch) {
				failAll(batch, fmt.Errorf("shard: malformed result (%d responses for %d requests): %v", len(out.Responses), len(batch), err))
				return
			}
			for i, p := range batch {
				if r.stamper != nil && stamps(p.req) && out.Responses[i].GetError().GetCode() == shardpb.ErrorCode_ERROR_CODE_STALE_STAMP {
					r.restamp(p)
					continue
				}
				p.done <- outcome{resp: out.Responses[i]}
			}
			return
		}
		if !retryable(err) || time.Until(deadline) < retryBackoff {
			failAll(batch, classify(err))
			return
		}
		select {
		case <-time.After(retryBackoff):
		case <-gone:
			// Not committed (retryable), and nobody waits: not again.
			failAll(batch, ErrNoLeader)
			return
		case <-r.stop:
			failAll(batch, ErrStopped)
			return
		}
	}
}

// errDropped marks a proposal dropped before it reached a leader: safe to retry.
var errDropped = errors.New("shard: proposal dropped")

// errLeft: every caller of a batch gave up before its outcome was known.
var errLeft = errors.New("shard: every caller left")

// gaveUp reports whether p's caller has stopped waiting, and if so answers
// it (nobody reads the answer; the channel has room for it).
func gaveUp(p *pending) bool {
	if p.ctx.Err() == nil {
		return false
	}
	p.done <- outcome{err: classify(p.ctx.Err())}
	return true
}

// leaving returns a channel closed once every caller of batch has stopped
// waiting (never, if one cannot), and the func that stops watching.
func leaving(batch []*pending) (<-chan struct{}, func()) {
	gone := make(chan struct{})
	left := atomic.Int64{}
	left.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, p := range batch {
		stops[i] = context.AfterFunc(p.ctx, func() {
			if left.Add(-1) == 0 {
				close(gone)
			}
		})
	}
	return gone, func() {
		for _, stop := range stops {
			stop()
		}
	}
}

func (r *Replica) proposeOnce(data []byte, timeout time.Duration) ([]byte, error) {
	rs, err := r.nh.Propose(r.session, data, timeout)
	if err != nil {
		return nil, err
	}
	return r.await(rs, nil)
}

// await waits for a proposal's outcome and releases rs; or, once gone is
// closed first, returns errLeft and leaves rs to the caller.
func (r *Replica) await(rs *dragonboat.RequestState, gone <-chan struct{}) ([]byte, error) {
	var res dragonboat.RequestResult
	select {
	case res = <-rs.ResultC():
	case <-gone:
		return nil, errLeft
	}
	rs.Release()
	switch {
	case res.Completed():
		return res.GetResult().Data, nil
	case res.Dropped():
		return nil, errDropped
	case res.Timeout():
		return nil, dragonboat.ErrTimeout
	case res.Terminated():
		return nil, ErrStopped
	case res.Rejected():
		return nil, dragonboat.ErrRejected
	default:
		return nil, dragonboat.ErrAborted
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
func (r *Replica) Leader() (leader, term uint64, ok bool) {
	leader, term, ok, err := r.nh.GetLeaderID(r.shardID)
	if err != nil {
		return 0, 0, false
	}
	return leader, term, ok
}
