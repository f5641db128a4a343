package placement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// Membership changes in sharded mode (DESIGN.md "Ranges, placement,
// membership"): every member holds a replica of the placement group and
// of every range, so adding a member adds it to each raft group, and
// removing one removes it from each. The member list is range 1's
// membership, as in single-group mode.
//
// A range's store shares the member's pebble with the other ranges, keyed
// by user key: a new member must get each range as a snapshot of that
// range, never by replaying its log from the start, which would replay
// splits (and the writes before them) across what other ranges own now.
// So before a member is added to a range, every replica of the range takes
// a snapshot and drops its log up to it (compactEverywhere): whichever
// leads then sends the new member a snapshot. Splits wait while a change
// is under way (the placement group refuses them, Reconfigure), and a
// change waits for the splits under way to apply on this member first, so
// that no range is split while the new member is added to it.
//
//	Add(4)    reconfigure 4 → placement group += 4
//	          → for r1, r2, …: (4 absent) every replica compacts its log, r += 4;
//	            the map's r.replicas += 4 (not for a learner)
//	          → reconfigure 4 done
//	Remove(4) r2, r3, … -= 4 → placement group -= 4 → r1 -= 4 (the member list last)
//	Promote(4) as Add, range 1 last

// MembershipRaft is raft as a Membership changes the members of its
// groups (the placement group and every range): dragonboat's *NodeHost is
// one; a test's fake keeps each group's membership in memory. Every call
// may fail while a group is busy or electing (the dragonboat errors
// retried are those of retryRaft).
type MembershipRaft interface {
	// SyncGetShardMembership reads group shardID's membership through its
	// leader.
	SyncGetShardMembership(ctx context.Context, shardID uint64) (*dragonboat.Membership, error)
	// SyncRequestAddReplica adds replicaID to the group as a voter (or
	// promotes it, a non-voting member), reached at target.
	SyncRequestAddReplica(ctx context.Context, shardID, replicaID uint64, target string, configChangeIndex uint64) error
	// SyncRequestAddNonVoting adds replicaID as a non-voting member.
	SyncRequestAddNonVoting(ctx context.Context, shardID, replicaID uint64, target string, configChangeIndex uint64) error
	// SyncRequestDeleteReplica removes replicaID from the group.
	SyncRequestDeleteReplica(ctx context.Context, shardID, replicaID uint64, configChangeIndex uint64) error
	// SyncRequestSnapshot has this member's replica of the group take a
	// snapshot (and, with OverrideCompactionOverhead, drop its log up to
	// it).
	SyncRequestSnapshot(ctx context.Context, shardID uint64, opt dragonboat.SnapshotOption) (uint64, error)
}

// LocalRanges is this member's replicas of the ranges, as a Membership
// uses them.
type LocalRanges interface {
	// Runs reports whether this member's replica of range r is started:
	// false while a split that made r has not applied here yet.
	Runs(r RangeID) bool
	// Touch commits to range r an entry that changes nothing and returns
	// once it applied, so that every replica has something to snapshot;
	// an error if range r does not run here.
	Touch(ctx context.Context, r RangeID) error
}

// LogCompactor reaches the other members (router.Forwarder is one).
type LogCompactor interface {
	// CompactLog has member snapshot its replica of range r and drop its
	// raft log up to the snapshot.
	CompactLog(ctx context.Context, member NodeID, r RangeID) error
}

// MembershipConfig wires a Membership to its member.
type MembershipConfig struct {
	// Self is this member; ShardID the placement group's raft group.
	Self    NodeID
	ShardID uint64
	// Raft changes the groups' members; Map is the member's client of the
	// range map.
	Raft MembershipRaft
	Map  *Client
	// Ranges are this member's replicas; Peers the other members.
	Ranges LocalRanges
	Peers  LogCompactor
	// Target names a member in raft's membership (the replica's address
	// as the member's node registry resolves it).
	Target func(NodeID) string
	// Log receives what fails after the caller has its answer; nil
	// discards it.
	Log *slog.Logger
	// Retry is the wait between tries of a raft request the group drops;
	// 0 means 10ms. TryTimeout bounds one try; 0 means 3s. Poll is the
	// wait for the splits under way to apply here; 0 means 50ms.
	Retry, TryTimeout, Poll time.Duration
}

// Membership walks a membership change of the cluster through the
// placement group and every range, in sharded mode: the raft groups'
// members and the range map's replicas. A change marks itself under way
// in the range map (Client.Reconfigure) until it ends, so a change is
// tried again by calling again: each step finds what an earlier call did.
//
// It holds no state of its own and starts no goroutine: safe for
// concurrent use (the range map lets one change be under way at a time).
type Membership struct {
	cfg MembershipConfig
}

// firstRange is the range a bootstrap makes first (the table's first id):
// its membership is the member list, so a member leaves it last and is
// promoted in it last.
const firstRange RangeID = 1

// NewMembership returns a Membership over cfg.
func NewMembership(cfg MembershipConfig) *Membership {
	if cfg.Retry <= 0 {
		cfg.Retry = 10 * time.Millisecond
	}
	if cfg.TryTimeout <= 0 {
		cfg.TryTimeout = 3 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Membership{cfg: cfg}
}

// Add adds member (a non-voting member if learner) to the placement group
// and to every range, range 1 first, and records it in each range's
// replicas unless it is a learner. Its peer URLs are recorded already.
func (m *Membership) Add(ctx context.Context, member NodeID, learner bool) error {
	if err := m.cfg.Map.Reconfigure(ctx, member, false); err != nil {
		return err
	}
	defer m.endReconfigure(member)
	add := func(group uint64) error {
		ms, err := m.groupMembership(ctx, group)
		if err != nil {
			return err
		}
		if _, ok := ms.Nodes[uint64(member)]; ok {
			return nil
		}
		if _, ok := ms.NonVotings[uint64(member)]; ok && learner {
			return nil
		}
		return m.retryRaft(ctx, func(ctx context.Context) error {
			if learner {
				return m.cfg.Raft.SyncRequestAddNonVoting(ctx, group, uint64(member), m.cfg.Target(member), 0)
			}
			return m.cfg.Raft.SyncRequestAddReplica(ctx, group, uint64(member), m.cfg.Target(member), 0)
		})
	}
	if err := add(m.cfg.ShardID); err != nil {
		return fmt.Errorf("placement: add member %x to the placement group: %w", member, err)
	}
	return m.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if slices.Contains(d.Replicas, uint64(member)) {
			return nil
		}
		ms, err := m.groupMembership(ctx, d.Id)
		if err != nil {
			return err
		}
		_, voter := ms.Nodes[uint64(member)]
		_, nonVoting := ms.NonVotings[uint64(member)]
		if !voter && !nonVoting {
			if err := m.compactEverywhere(ctx, RangeID(d.Id), member); err != nil {
				return fmt.Errorf("placement: compact range %d's log before adding member %x: %w", d.Id, member, err)
			}
			if err := add(d.Id); err != nil {
				return fmt.Errorf("placement: add member %x to range %d: %w", member, d.Id, err)
			}
		}
		if learner {
			// The map's replicas found the ranges later splits make: a
			// learner is not one until promoted.
			return nil
		}
		return m.cfg.Map.ChangeReplicas(ctx, RangeID(d.Id), member, 0)
	})
}

// Remove removes member from every range, range 1 last (it leaves the
// member list last), and from the placement group, and from each range's
// replicas.
func (m *Membership) Remove(ctx context.Context, member NodeID) error {
	if err := m.cfg.Map.Reconfigure(ctx, member, false); err != nil {
		return err
	}
	defer m.endReconfigure(member)
	remove := func(group uint64) error {
		ms, err := m.groupMembership(ctx, group)
		if err != nil {
			return err
		}
		_, voter := ms.Nodes[uint64(member)]
		_, nonVoting := ms.NonVotings[uint64(member)]
		if !voter && !nonVoting {
			return nil
		}
		return m.retryRaft(ctx, func(ctx context.Context) error {
			return m.cfg.Raft.SyncRequestDeleteReplica(ctx, group, uint64(member), 0)
		})
	}
	var first *placementpb.RangeDescriptor
	err := m.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if RangeID(d.Id) == firstRange {
			first = d
			return nil
		}
		if err := remove(d.Id); err != nil {
			return fmt.Errorf("placement: remove member %x from range %d: %w", member, d.Id, err)
		}
		return m.cfg.Map.ChangeReplicas(ctx, RangeID(d.Id), 0, member)
	})
	if err != nil {
		return err
	}
	if err := remove(m.cfg.ShardID); err != nil {
		return fmt.Errorf("placement: remove member %x from the placement group: %w", member, err)
	}
	if err := remove(uint64(firstRange)); err != nil {
		return fmt.Errorf("placement: remove member %x: %w", member, err)
	}
	if first != nil {
		return m.cfg.Map.ChangeReplicas(ctx, RangeID(first.Id), 0, member)
	}
	return nil
}

// Promote makes learner member a voter in the placement group and in
// every range, range 1 last, and records it in each range's replicas; a
// range split while it was a learner, which it does not hold yet, it is
// added to as Add adds.
func (m *Membership) Promote(ctx context.Context, member NodeID) error {
	if err := m.cfg.Map.Reconfigure(ctx, member, false); err != nil {
		return err
	}
	defer m.endReconfigure(member)
	promote := func(group uint64) error {
		ms, err := m.groupMembership(ctx, group)
		if err != nil {
			return err
		}
		if _, ok := ms.Nodes[uint64(member)]; ok {
			return nil
		}
		if _, ok := ms.NonVotings[uint64(member)]; !ok && group != m.cfg.ShardID {
			if err := m.compactEverywhere(ctx, RangeID(group), member); err != nil {
				return err
			}
		}
		return m.retryRaft(ctx, func(ctx context.Context) error {
			return m.cfg.Raft.SyncRequestAddReplica(ctx, group, uint64(member), m.cfg.Target(member), 0)
		})
	}
	if err := promote(m.cfg.ShardID); err != nil {
		return fmt.Errorf("placement: promote member %x in the placement group: %w", member, err)
	}
	err := m.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if RangeID(d.Id) == firstRange {
			return nil
		}
		if err := promote(d.Id); err != nil {
			return fmt.Errorf("placement: promote member %x in range %d: %w", member, d.Id, err)
		}
		return m.cfg.Map.ChangeReplicas(ctx, RangeID(d.Id), member, 0)
	})
	if err != nil {
		return err
	}
	if err := promote(uint64(firstRange)); err != nil {
		return fmt.Errorf("placement: promote member %x: %w", member, err)
	}
	return m.cfg.Map.ChangeReplicas(ctx, firstRange, member, 0)
}

// CompactLog snapshots this member's replica of range r and drops its raft
// log up to the snapshot: what compactEverywhere asks of every replica,
// this member's directly and the others' through Peers.
func (m *Membership) CompactLog(ctx context.Context, r RangeID) error {
	return m.retryRaft(ctx, func(ctx context.Context) error {
		_, err := m.cfg.Raft.SyncRequestSnapshot(ctx, uint64(r), dragonboat.SnapshotOption{OverrideCompactionOverhead: true})
		return err
	})
}

// eachRange calls f with every range of the map, in key order, once the
// splits under way have applied here (a range the map names runs here),
// reading the map again until a pass finds all of them so.
func (m *Membership) eachRange(ctx context.Context, f func(d *placementpb.RangeDescriptor) error) error {
	for {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return err
		}
		waiting := false
		for _, d := range st.Ranges {
			if !m.cfg.Ranges.Runs(RangeID(d.Id)) {
				waiting = true
				continue
			}
			if err := f(d); err != nil {
				return err
			}
		}
		if !waiting {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("placement: a split under way did not finish: %w", ctx.Err())
		case <-time.After(m.cfg.Poll):
		}
	}
}

// endReconfigure marks member's change over, on its own deadline: the
// change's may have run out.
func (m *Membership) endReconfigure(member NodeID) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.cfg.Map.Reconfigure(ctx, member, true); err != nil {
		m.cfg.Log.Warn("mark a membership change over", "member", fmt.Sprintf("%x", uint64(member)), "error", err)
	}
}

// compactEverywhere makes every replica of range r but newcomer's take a
// snapshot and drop its log up to it, after one entry applied everywhere
// (LocalRanges.Touch), so that each has progress to snapshot.
func (m *Membership) compactEverywhere(ctx context.Context, r RangeID, newcomer NodeID) error {
	if err := m.cfg.Ranges.Touch(ctx, r); err != nil {
		return err
	}
	ms, err := m.groupMembership(ctx, uint64(r))
	if err != nil {
		return err
	}
	// In member order, voters first: one order for every run.
	for _, group := range []map[uint64]string{ms.Nodes, ms.NonVotings} {
		for _, id := range slices.Sorted(maps.Keys(group)) {
			switch NodeID(id) {
			case newcomer:
			case m.cfg.Self:
				if err := m.CompactLog(ctx, r); err != nil {
					return err
				}
			default:
				if err := m.cfg.Peers.CompactLog(ctx, NodeID(id), r); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// groupMembership reads raft group's membership through its leader.
func (m *Membership) groupMembership(ctx context.Context, group uint64) (*dragonboat.Membership, error) {
	var ms *dragonboat.Membership
	err := m.retryRaft(ctx, func(ctx context.Context) (err error) {
		ms, err = m.cfg.Raft.SyncGetShardMembership(ctx, group)
		return err
	})
	return ms, err
}

// retryRaft calls f until it succeeds, fails for good, or ctx ends: raft
// drops requests while a group is busy, not ready (a snapshot being
// taken or applied), electing, or changing its membership.
func (m *Membership) retryRaft(ctx context.Context, f func(ctx context.Context) error) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.TryTimeout)
		err := f(rctx)
		cancel()
		transient := errors.Is(err, dragonboat.ErrShardNotReady) || errors.Is(err, dragonboat.ErrSystemBusy) ||
			errors.Is(err, dragonboat.ErrRejected) || errors.Is(err, dragonboat.ErrTimeout) ||
			errors.Is(err, dragonboat.ErrAborted) || errors.Is(err, context.DeadlineExceeded)
		if err == nil || !transient || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(m.cfg.Retry):
		}
	}
}
