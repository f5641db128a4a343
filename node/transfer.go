package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Leader transfer (MoveLeader): hold proposals until the target has
// applied everything, then hand leadership over (see the shard package).

// TransferLeader implements router.Operator and waits until the target
// leads (or ctx ends).
func (n *Node) TransferLeader(ctx context.Context, target uint64) error {
	if _, learner, ok, err := n.findMember(ctx, target); err != nil {
		return err
	} else if !ok {
		return rpctypes.ErrBadLeaderTransferee
	} else if learner {
		return rpctypes.ErrBadLeaderTransferee
	}
	// dragonboat's target skips the campaign while it has committed
	// entries it has not applied (its conservative check for a pending
	// config change), and the leader then refuses proposals until the
	// transfer aborts an election timeout later. Under a write load that is
	// the likely outcome if the transfer starts while entries are in
	// flight. So each attempt first stops the flow: a TransferHold entry
	// makes every replica that applies it hold back new proposals until
	// the target leads (or a bound passes). Once no entry has been applied
	// here for a few milliseconds, the target has applied what it was sent
	// and the transfer can take at once. An attempt that has not taken
	// after an election timeout has aborted, and the next one begins.
	start, attempts, holds := time.Now(), 0, 0
	for {
		leader, _, ok := n.first.Replica().Leader()
		switch {
		case ok && memberOf(leader) == placement.NodeID(target):
			n.logTransfer(target, attempts, start)
			return nil
		case ok && leader == n.selfReplica():
			hold := n.transferHold()
			req := &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{
				Target: target, UntilUnixNano: time.Now().Add(hold).UnixNano(), MaxNanos: int64(hold)}}}
			held := time.Now()
			if _, err := n.first.Replica().Write(ctx, req); err != nil {
				// Leadership moved or the group is between states: look again.
				n.waitTransferee(ctx, target, 10*time.Millisecond)
				break
			}
			ready := n.waitTransferReady(ctx, target, n.appliedIndex(ctx), held.Add(hold*3/4))
			holds++
			if !ready && holds < maxUnreadyHolds {
				// Not caught up within the hold (a busy machine): a
				// transfer now would likely fail and cost an election
				// timeout; hold again instead.
				n.log.Info("leader transfer: target not caught up within the hold; holding again", "to", fmt.Sprintf("%x", target))
				break
			}
			attempts++
			// Busy or not ready (the replica is between states): the next
			// round tries again.
			err := n.nh.RequestLeaderTransfer(singleShardID, target)
			if err != nil && !errors.Is(err, dragonboat.ErrSystemBusy) && !errors.Is(err, dragonboat.ErrShardNotReady) {
				return fmt.Errorf("node: transfer leadership: %w", err)
			}
			if n.waitTransferee(ctx, target, n.cfg.ElectionTimeout+2*n.cfg.HeartbeatInterval) {
				n.logTransfer(target, attempts, start)
				return nil
			}
			n.log.Warn("leader transfer did not take; trying again", "to", fmt.Sprintf("%x", target), "target-caught-up", ready)
		default:
			// No leader, or another one (a transfer elsewhere): look again.
			n.waitTransferee(ctx, target, 10*time.Millisecond)
		}
		if ctx.Err() != nil {
			return rpctypes.ErrTimeoutDueToLeaderFail
		}
	}
}

// maxUnreadyHolds bounds the holds a transfer tries before it requests the
// transfer even though the target has not caught up (a load that never
// lets it).
const maxUnreadyHolds = 4

// logTransfer reports a finished transfer; one that took more than one
// attempt cost an election timeout of refused proposals, and warns.
func (n *Node) logTransfer(target uint64, attempts int, start time.Time) {
	log := n.log.Info
	if attempts > 1 {
		log = n.log.Warn
	}
	log("leadership transferred", "to", fmt.Sprintf("%x", target), "attempts", attempts, "took", time.Since(start))
}

// transferHold bounds how long a leader transfer holds back proposals if
// leadership does not move (it normally moves within a few round trips):
// long enough for the flow to stop and the target to catch up on a busy
// machine, short against clients' deadlines.
func (n *Node) transferHold() time.Duration {
	return min(max(n.cfg.ElectionTimeout/2, 200*time.Millisecond), 500*time.Millisecond)
}

// waitTransferReady waits until a leader transfer can take at once: every
// other member has applied the hold at index hold (so none sends new
// proposals), nothing has been applied here for a moment (what was in flight
// has landed), and the target has applied all that this replica has. It
// gives up at deadline (false).
func (n *Node) waitTransferReady(ctx context.Context, target, hold uint64, deadline time.Time) bool {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ms, err := n.membership(ctx)
	if err != nil {
		return false
	}
	var others []uint64
	for id := range ms.Nodes {
		others = append(others, id)
	}
	for id := range ms.NonVotings {
		others = append(others, id)
	}
	for _, id := range others {
		if id == n.memberID {
			continue
		}
		for {
			a, err := n.appliedOf(ctx, id)
			if (err != nil && id != target) || a >= hold || ctx.Err() != nil {
				break // a member that does not answer sends nothing either
			}
			time.Sleep(time.Millisecond) // polling the member's applied index
		}
	}
	for ctx.Err() == nil {
		n.waitQuiet(ctx, 2*time.Millisecond, time.Until(deadline))
		a := n.appliedIndex(ctx)
		if t, err := n.appliedOf(ctx, target); err == nil && t >= a && n.appliedIndex(ctx) == a {
			return true
		}
	}
	return false
}

// appliedOf asks member id for the raft index it has applied.
func (n *Node) appliedOf(ctx context.Context, id uint64) (uint64, error) {
	c, err := n.conns.Conn(placement.NodeID(id))
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	st, err := pb.NewMaintenanceClient(c).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return 0, err
	}
	return st.RaftAppliedIndex, nil
}

// appliedIndex is the raft index this replica has applied (0 if unknown).
func (n *Node) appliedIndex(ctx context.Context) uint64 {
	st, err := n.first.Replica().Status(ctx, false)
	if err != nil {
		return 0
	}
	return st.AppliedIndex
}

// waitQuiet returns once this replica has applied no entry for quiet, or
// after at most limit (or when ctx ends).
func (n *Node) waitQuiet(ctx context.Context, quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last, since := n.appliedIndex(ctx), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if time.Since(since) >= quiet {
			return
		}
		time.Sleep(time.Millisecond) // polling the local applied index
		if a := n.appliedIndex(ctx); a != last {
			last, since = a, time.Now()
		}
	}
}

// waitTransferee reports whether target leads within d.
func (n *Node) waitTransferee(ctx context.Context, target uint64, d time.Duration) bool {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(d)
	for {
		if leader, _, ok := n.first.Replica().Leader(); ok && memberOf(leader) == placement.NodeID(target) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-t.C:
		}
	}
}
