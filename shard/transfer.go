package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Leader transfer (see the package doc, "Leader transfer"): hold proposals
// until the target has applied everything, then hand leadership over.

// TransferConfig is what a leader transfer needs from the member beyond
// the range itself: what only the member can find out (the range's raft
// membership, other members' applied indexes) and its raft timings.
type TransferConfig struct {
	// Replicas lists the range's replicas, voters and non-voters, as its
	// raft membership has them (this one may be among them).
	Replicas func(ctx context.Context) ([]ReplicaID, error)
	// AppliedOf asks the member holding replica id for the raft index it
	// has applied of the range. It is called often while the transfer
	// waits, and should give up quickly on a member that does not answer.
	AppliedOf func(ctx context.Context, id ReplicaID) (uint64, error)
	// ElectionTimeout and HeartbeatInterval are the range's raft timings:
	// an attempt that has not taken within ElectionTimeout plus two
	// heartbeats has aborted, and the next one begins.
	ElectionTimeout   time.Duration
	HeartbeatInterval time.Duration
	// Log receives the transfer's progress; nil: the range's log.
	Log *slog.Logger
}

// TransferLeader moves the range's leadership to replica target and waits
// until target leads: nil at once if it does already. While this replica
// leads, each attempt first stops the flow and then asks raft for the
// transfer; while another replica leads, or none does, it waits (another
// transfer or an election may be under way). It returns an error wrapping
// ErrTimeout (and ctx's error) if ctx ends first, and one wrapping
// dragonboat's if raft refuses the transfer for other than being busy or
// not ready. The range must be started.
//
// dragonboat's target skips the campaign while it has committed entries it
// has not applied (its conservative check for a pending config change), and
// the leader then refuses proposals until the transfer aborts an election
// timeout later. Under a write load that is the likely outcome if the
// transfer starts while entries are in flight. So each attempt first stops
// the flow: a TransferHold entry makes every replica that applies it hold
// back new proposals until the target leads (or a bound passes). Once no
// entry has been applied here for a few milliseconds, the target has
// applied what it was sent and the transfer can take at once. An attempt
// that has not taken after an election timeout has aborted, and the next
// one begins.
func (r *Range) TransferLeader(ctx context.Context, target ReplicaID, cfg TransferConfig) error {
	if !r.Started() {
		return fmt.Errorf("shard: transfer leadership of range %d: %w", r.ID(), ErrStopped)
	}
	t := &transfer{r: r, cfg: cfg, target: target}
	if t.cfg.Log == nil {
		t.cfg.Log = r.cfg.Log
	}
	return t.run(ctx)
}

// transfer is one TransferLeader call.
type transfer struct {
	r      *Range
	cfg    TransferConfig
	target ReplicaID
}

func (t *transfer) run(ctx context.Context) error {
	r, target := t.r, t.target
	start, attempts, holds := time.Now(), 0, 0
	for {
		leader, _, ok := r.replica.Leader()
		switch {
		case ok && leader == target:
			t.logDone(attempts, start)
			return nil
		case ok && leader == r.cfg.ReplicaID:
			hold := t.hold()
			req := &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{
				Target: uint64(target), UntilUnixNano: time.Now().Add(hold).UnixNano(), MaxNanos: int64(hold)}}}
			held := time.Now()
			if _, err := r.replica.Write(ctx, req); err != nil {
				// Leadership moved or the group is between states: look again.
				t.waitTarget(ctx, 10*time.Millisecond)
				break
			}
			ready := t.waitReady(ctx, t.appliedIndex(ctx), held.Add(hold*3/4))
			holds++
			if !ready && holds < maxUnreadyHolds {
				// Not caught up within the hold (a busy machine): a
				// transfer now would likely fail and cost an election
				// timeout; hold again instead.
				t.cfg.Log.Info("leader transfer: target not caught up within the hold; holding again", "to", fmt.Sprintf("%x", target))
				break
			}
			attempts++
			// Busy or not ready (the replica is between states): the next
			// round tries again.
			err := r.cfg.NodeHost.RequestLeaderTransfer(uint64(r.ID()), uint64(target))
			if err != nil && !errors.Is(err, dragonboat.ErrSystemBusy) && !errors.Is(err, dragonboat.ErrShardNotReady) {
				return fmt.Errorf("shard: transfer leadership of range %d: %w", r.ID(), err)
			}
			if t.waitTarget(ctx, t.cfg.ElectionTimeout+2*t.cfg.HeartbeatInterval) {
				t.logDone(attempts, start)
				return nil
			}
			t.cfg.Log.Warn("leader transfer did not take; trying again", "to", fmt.Sprintf("%x", target), "target-caught-up", ready)
		default:
			// No leader, or another one (a transfer elsewhere): look again.
			t.waitTarget(ctx, 10*time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: leadership of range %d did not reach replica %d: %w", ErrTimeout, r.ID(), target, err)
		}
	}
}

// maxUnreadyHolds bounds the holds a transfer tries before it requests the
// transfer even though the target has not caught up (a load that never
// lets it).
const maxUnreadyHolds = 4

// logDone reports a finished transfer; one that took more than one attempt
// cost an election timeout of refused proposals, and warns. One that made
// an attempt is counted (Observer.LeaderTransferred).
func (t *transfer) logDone(attempts int, start time.Time) {
	if obs := t.r.replica.obs; obs != nil && attempts > 0 {
		obs.LeaderTransferred()
	}
	log := t.cfg.Log.Info
	if attempts > 1 {
		log = t.cfg.Log.Warn
	}
	log("leadership transferred", "to", fmt.Sprintf("%x", t.target), "attempts", attempts, "took", time.Since(start))
}

// hold bounds how long a leader transfer holds back proposals if
// leadership does not move (it normally moves within a few round trips):
// long enough for the flow to stop and the target to catch up on a busy
// machine, short against clients' deadlines.
func (t *transfer) hold() time.Duration {
	return min(max(t.cfg.ElectionTimeout/2, 200*time.Millisecond), 500*time.Millisecond)
}

// waitReady waits until a leader transfer can take at once: every other
// replica has applied the hold at index hold (so none sends new proposals),
// nothing has been applied here for a moment (what was in flight has
// landed), and the target has applied all that this replica has. It gives
// up at deadline (false).
func (t *transfer) waitReady(ctx context.Context, hold uint64, deadline time.Time) bool {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ids, err := t.cfg.Replicas(ctx)
	if err != nil {
		return false
	}
	for _, id := range ids {
		if id == t.r.cfg.ReplicaID {
			continue
		}
		for {
			a, err := t.cfg.AppliedOf(ctx, id)
			if (err != nil && id != t.target) || a >= hold || ctx.Err() != nil {
				break // a replica that does not answer sends nothing either
			}
			time.Sleep(time.Millisecond) // polling the replica's applied index
		}
	}
	for ctx.Err() == nil {
		t.waitQuiet(ctx, 2*time.Millisecond, time.Until(deadline))
		a := t.appliedIndex(ctx)
		if ta, err := t.cfg.AppliedOf(ctx, t.target); err == nil && ta >= a && t.appliedIndex(ctx) == a {
			return true
		}
	}
	return false
}

// appliedIndex is the raft index this replica has applied (0 if unknown).
func (t *transfer) appliedIndex(ctx context.Context) uint64 {
	st, err := t.r.replica.Status(ctx, false)
	if err != nil {
		return 0
	}
	return st.AppliedIndex
}

// waitQuiet returns once this replica has applied no entry for quiet, or
// after at most limit (or when ctx ends).
func (t *transfer) waitQuiet(ctx context.Context, quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last, since := t.appliedIndex(ctx), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if time.Since(since) >= quiet {
			return
		}
		time.Sleep(time.Millisecond) // polling the local applied index
		if a := t.appliedIndex(ctx); a != last {
			last, since = a, time.Now()
		}
	}
}

// waitTarget reports whether the target leads within d.
func (t *transfer) waitTarget(ctx context.Context, d time.Duration) bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for {
		if leader, _, ok := t.r.replica.Leader(); ok && leader == t.target {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
}
