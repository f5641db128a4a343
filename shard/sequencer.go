package shard

import (
	"context"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// The sequencer (see the package doc, "Stamping" and "Counting"): stamps
// of the batches in flight, the closed revision they let the leader
// publish, and reads at a closed revision.

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
	r.beginStamp()
	first, err := r.stamper.Revisions(ctx, n)
	if err != nil {
		r.seqMu.Lock()
		r.takingStamps = false
		r.seqMu.Unlock()
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
	r.takingStamps = false
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

// beginStamp announces, before the batcher asks the oracle, that a batch
// is being stamped: a close under way sees a new batch (its generation
// moves) and one starting waits until the batch is tracked.
func (r *Replica) beginStamp() {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	r.takingStamps = true
	r.batches++
}

// generation returns the sequencer's batch count and whether a batch is in
// flight or being stamped: what a close checks again after its read index.
func (r *Replica) generation() (gen uint64, busy bool) {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	return r.batches, r.busyLocked()
}

// closeIfQuiet raises the closed revision to t if no batch was stamped or
// tracked since generation gen and none is in flight (see closeAt for why
// that makes t closed), and reports whether it did.
func (r *Replica) closeIfQuiet(gen uint64, t mvcc.Revision) bool {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	if r.batches != gen || r.busyLocked() {
		return false
	}
	r.closed = max(r.closed, t)
	return true
}

// busy reports whether a batch is in flight or being stamped.
// REQUIRES: seqMu
func (r *Replica) busyLocked() bool { return r.takingStamps || len(r.inflight) > 0 }

// untrack drops batch id from the batches in flight.
func (r *Replica) untrack(id uint64) {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	delete(r.inflight, id)
}

// AdvanceIdle raises the closed revision of a shard with no writes in
// flight to the oracle's current value T, without a log write in the
// steady state and without consuming a revision (closeAt). A range that
// counts is closed at its revision. It returns the closed revision, raised
// or not (writes in flight keep it where the log has it).
func (r *Replica) AdvanceIdle(ctx context.Context) (mvcc.Revision, error) {
	if r.stamper == nil {
		return 0, fmt.Errorf("shard: AdvanceIdle needs a stamping client")
	}
	if err := r.refuseFrozen(nil); err != nil {
		// A frozen range publishes no closed revision (docs/plan-merge.md).
		return r.Closed(), err
	}
	if r.counting() {
		// A range that counts is closed at its revision, on every replica
		// (Config.Sharded): nothing to ask the oracle.
		if sm := r.local(); sm != nil {
			return max(r.Closed(), sm.Rev()), nil
		}
	}
	closed, err := r.closeAt(ctx, 0)
	return r.lockCapped(closed), err
}

// lockCapped is closed, but no higher than the lowest cap of the locks of
// cross-range transactions the local state machine holds (txn.go): what
// AdvanceIdle returns is published to watchers and routers, and a
// transaction may still commit at any revision above a lock's cap. A lock
// that applied after closed was published cannot be undercut by it: the
// transaction takes its revision after its prepares applied. Reads at a
// revision above a lock's cap of the spans it holds are refused by the
// state machine itself.
func (r *Replica) lockCapped(closed mvcc.Revision) mvcc.Revision {
	if r.local == nil {
		return closed
	}
	if sm := r.local(); sm != nil {
		if c, ok := sm.LockCap(); ok && closed > c {
			return c
		}
	}
	return closed
}

// closeAt raises the closed revision to t — or, with t 0, to the oracle's
// current value read here — while this replica leads and has no write in
// flight. t must be at or below a value the oracle reported as current (or
// handed out) before the call: every revision the oracle hands out later
// exceeds it. Then, once a read index confirms that this replica still
// leads, in the term its fence holds, every write still to come is stamped
// above t (by this leader, whose later stamps come from the oracle after t,
// or by a successor, which only stamps after it was elected, after that
// check), and a stamp at or below t taken earlier that is not yet in the
// log reaches it behind the raised closed revision, which the state
// machine then refuses as stale (the batch is stamped again). So t is
// closed. The first call in a term writes one empty command carrying the
// term, so that the state machine fences off the previous leader's
// proposals; later ones in the term cost one read index.
func (r *Replica) closeAt(ctx context.Context, t mvcc.Revision) (mvcc.Revision, error) {
	term, err := r.leading()
	if err != nil {
		return r.Closed(), err
	}
	if r.fenced.Load() != term {
		st, err := r.Status(ctx, true)
		if err != nil {
			return r.Closed(), err
		}
		if err := mergingStatus(st); err != nil {
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
	}
	gen, busy := r.generation()
	if busy {
		return r.Closed(), nil
	}
	if t == 0 {
		if t, err = r.stamper.Current(ctx); err != nil {
			return r.Closed(), fmt.Errorf("%w: revision oracle: %v", ErrNoLeader, err)
		}
	}
	st, err := r.Status(ctx, true)
	if err != nil {
		return r.Closed(), err
	}
	if err := mergingStatus(st); err != nil {
		// Frozen since t was read, or before: t may be above what the
		// frozen range's records hold, which the merge's closed revision
		// covers (docs/plan-merge.md §3.3); nothing is closed here.
		return r.Closed(), err
	}
	if now, err := r.leading(); err != nil || now != term || st.Fence != term {
		return r.Closed(), err
	}
	r.fenced.Store(term)
	r.closeIfQuiet(gen, t)
	return r.Closed(), nil
}

// Closed is the closed revision this client last proposed or published.
func (r *Replica) Closed() mvcc.Revision {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	return r.closed
}

// WaitClosed returns once this shard's closed revision, as this client
// (its leader's) knows it, has reached rev: no write at or below rev is
// still to come, and every such write has applied on this replica. rev
// must be at or below a revision the oracle handed out or reported as
// current before the call (one a response reported, say). It closes rev
// itself (closeAt) once the shard has no write in flight, and fails with
// ErrNoLeader if this replica does not lead. A range that counts is closed
// at its own revision only. A range frozen for a merge closes nothing: it
// fails with ErrMerging (an *Error), as AdvanceIdle and closeAt do.
func (r *Replica) WaitClosed(ctx context.Context, rev mvcc.Revision) error {
	backoff := time.Millisecond
	for {
		if r.Closed() >= rev {
			return nil
		}
		if err := r.refuseFrozen(nil); err != nil {
			return err
		}
		var (
			closed mvcc.Revision
			err    error
		)
		if r.stamper == nil || r.counting() {
			closed, err = r.AdvanceIdle(ctx)
		} else {
			closed, err = r.closeAt(ctx, rev)
		}
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
// revision has reached it, through a read index on this replica, which
// leads: one shard's part of a snapshot read over several shards at one
// revision, or a linearizable read at the cluster's current revision
// (DESIGN.md "Reads"). rev must be one WaitClosed may close. In the steady
// state — the term fenced, no write in flight — one read index both
// serves the read and closes rev (as closeAt would: the same checks, made
// around the read); otherwise it waits for rev to close, then reads.
func (r *Replica) ReadAt(ctx context.Context, req *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error) {
	q := proto.Clone(req).(*pb.RangeRequest)
	q.Revision = int64(rev)
	query := RangeQuery{Req: q, Floor: rev}
	if r.Closed() < rev && r.stamper != nil && !r.counting() {
		if term, err := r.leading(); err == nil && r.fenced.Load() == term {
			if gen, busy := r.generation(); !busy {
				resp, err := read[*pb.RangeResponse](ctx, r, query, true)
				if err != nil {
					return nil, err
				}
				if now, err := r.leading(); err == nil && now == term && r.closeIfQuiet(gen, rev) {
					return resp, nil
				}
			}
		}
	}
	if err := r.WaitClosed(ctx, rev); err != nil {
		return nil, err
	}
	return read[*pb.RangeResponse](ctx, r, query, true)
}
