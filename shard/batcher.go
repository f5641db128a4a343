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
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// The batcher (see the package doc, "Batching"): one goroutine gathers
// what is queued into proposals, senders await them, retry what was
// dropped and restamp what the state machine refused as stale.

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
	rs, err := r.nh.Propose(r.session, data, r.timeout)
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

// Restamped counts writes refused as stale and stamped again.
func (r *Replica) Restamped() uint64 { return r.restamped.Load() }

// restamp queues p again for a new stamp (its old one reached the log
// behind a newer one).
func (r *Replica) restamp(p *pending) {
	r.restamped.Add(1)
	if r.obs != nil {
		r.obs.Restamped()
	}
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
	deadline := time.Now().Add(r.timeout)
	leader, term, _ := r.Leader()
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
			failAll(batch, r.lost(classify(err), leader, term))
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

// lost is err, a write's failure, as ErrLeaderLost if it timed out
// (ErrTimeout: its outcome is unknown) after the leader it was proposed
// under, leader in term, was lost: as etcd, whose "request timed out,
// possibly due to previous leader failure" tells a client the leader
// changed while it waited.
func (r *Replica) lost(err error, leader ReplicaID, term uint64) error {
	if !errors.Is(err, ErrTimeout) || errors.Is(err, ErrLeaderLost) {
		return err
	}
	if l, t, ok := r.Leader(); leader == 0 || !ok || l != leader || t != term {
		return ErrLeaderLost
	}
	return err
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
