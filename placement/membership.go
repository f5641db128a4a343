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
// removing one removes it from each. The member list is the placement
// group's membership (each member's replica there has the member's id),
// voters and non-voting members alike: at most PlacementVoters members
// vote there, the others keep a non-voting replica (their local copy of
// the map and the member list), and whether a member is an etcd learner
// is its node record's (placementpb.Node.learner), not its placement role.
// Removing a voter promotes a non-voting member first; the leader's
// FillPlacement adds the registered members the group lacks.
// In a range, a member's replica has the id the range map allocates
// (AddReplica; a range founded before ids were allocated names each
// founder's replica by its member id): the map names it before raft adds
// it, so that the member, once in the placement group, finds there which
// replica of each range it runs.
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
//	Add(4)     Begin: reconfigure 4 → the map names 4's replica of r1, r2, … (learners, ids allocated: 5, 6, …)
//	           → 4's node record (learner or not, peer URLs) → reconfigure 4 adding (the placement
//	           leader resumes from the mark) → placement group += 4 (non-voting past
//	           PlacementVoters; MemberAdd answers here)
//	           Continue: placement group += 4 (if Begin was cut short); for r1, r2, …: (5 absent) every replica compacts its log, r += 5;
//	             the map promotes 5 (not for a learner)
//	           → reconfigure 4 done adding
//	Remove(4)  r1, r2, … -= 4's replica (raft, then the map) → a non-voting member votes if 4 did
//	           → placement group -= 4 (the member list last)
//	Promote(4) r1, r2, …: 4's replica votes (raft, then the map) → placement group (votes if there is room)
//	           → 4's node record: no learner (the member list last)

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
	// PlacementVoters is how many members at most vote in the placement
	// group; every other member has a non-voting replica of it (its local
	// copy of the map and the member list). 0: every member but the etcd
	// learners votes.
	PlacementVoters int
	// Log receives what fails after the caller has its answer; nil
	// discards it.
	Log *slog.Logger
	// RangeReplicas is how many members hold each range: 0, every member
	// holds every range (Add adds the member to each, Remove removes it
	// from each); more, a member holds a subset (membership_subsets.go):
	// Add gives the member only the ranges that have fewer voters than
	// min(RangeReplicas, voting members), Remove moves the member's
	// replicas to others (Move) while more than RangeReplicas members
	// are left. RangeRaft and Move are needed then.
	RangeReplicas int
	// RangeRaft reaches a range's raft group through the members holding
	// it (a range this member does not hold).
	RangeRaft RangeRaft
	// Move moves range r's replica on member from to member to and
	// returns once the move is over (the placement leader's Mover).
	Move func(ctx context.Context, r RangeID, from, to NodeID) error
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

// ErrAddSuperseded is Continue's answer when member's add is no longer the
// change under way: the member was removed or promoted meanwhile (their
// walk goes on from where the add stopped), or its mark ended.
var ErrAddSuperseded = errors.New("placement: the member's add is no longer the change under way")

// Add adds member (a non-voting member if learner) to the placement group
// and to every range, and records its replica of each range in the map (a
// voter unless it is a learner): Begin then Continue. A Begin or Continue
// that fails ends the mark, so that a caller tries the whole Add again.
// Its peer URLs are recorded already.
func (m *Membership) Add(ctx context.Context, member NodeID, learner bool) error {
	if marked, err := m.begin(ctx, member, learner, nil); err != nil {
		if marked {
			m.endReconfigure(member, true)
		}
		return err
	}
	if err := m.Continue(ctx, member, learner); err != nil {
		if !errors.Is(err, ErrAddSuperseded) {
			m.endReconfigure(member, true)
		}
		return err
	}
	return nil
}

// Begin does the part of adding member that the member list shows, and
// that a starting member needs, without a snapshot: it marks the change
// under way, has the map name member's replica of every range, records
// member's node record (with peerURLs, if any), marks the rest of the add
// under way (the mark's adding, which the placement leader resumes,
// Continue) and adds member to the placement group (a non-voting member
// past PlacementVoters, or if learner). A change of another member under
// way is waited for.
//
// The adding mark is written before the placement group grows: a group of
// one voter that gains a second (one that has not started yet, as when a
// cluster restored from one member grows again) has lost its quorum until
// the new member runs, as etcd's has, so nothing more can be written to
// the map then. The placement group's conf change itself commits under
// the old configuration, so Begin answers; Continue, resumed by the
// placement leader once the group has its quorum again, (re)does the
// placement step first.
//
// On an error before the adding mark, the change is marked over; after it
// the mark is left, and the placement leader finishes the add.
func (m *Membership) Begin(ctx context.Context, member NodeID, learner bool, peerURLs []string) error {
	_, err := m.begin(ctx, member, learner, peerURLs)
	return err
}

// begin is Begin, reporting whether it left the adding mark (marked).
func (m *Membership) begin(ctx context.Context, member NodeID, learner bool, peerURLs []string) (marked bool, err error) {
	if err := m.mark(ctx, member, markPlain); err != nil {
		return false, err
	}
	err = func() error {
		if err := m.nameReplicas(ctx, member, learner); err != nil {
			return fmt.Errorf("placement: add member %x to the range map: %w", member, err)
		}
		// The member list shows the member once it is in the placement
		// group, a learner as its node record says: recorded first (a
		// member in the group already keeps its record's learner flag).
		ms, err := m.groupMembership(ctx, m.cfg.ShardID)
		if err != nil {
			return fmt.Errorf("placement: add member %x: %w", member, err)
		}
		_, voter := ms.Nodes[uint64(member)]
		_, nonVoting := ms.NonVotings[uint64(member)]
		if err := m.recordNode(ctx, member, learner, !voter && !nonVoting, peerURLs); err != nil {
			return fmt.Errorf("placement: add member %x: %w", member, err)
		}
		return m.mark(ctx, member, markKind{adding: true, learner: learner})
	}()
	if err != nil {
		m.endReconfigure(member, false)
		return false, err
	}
	if err := m.addPlacement(ctx, member, learner); err != nil {
		return true, fmt.Errorf("placement: add member %x to the placement group: %w", member, err)
	}
	return true, nil
}

// PendingChange is a membership change whose walk over the ranges is left
// to the placement leader: member's add (a learner's if Learner, marked by
// Begin, ended by Continue) or, if Removing, member's removal (marked by
// BeginRemove, ended by ContinueRemove).
type PendingChange struct {
	Member            NodeID
	Learner, Removing bool
}

// Pending returns the change whose walk is under way; ok false if there
// is none.
func (m *Membership) Pending(ctx context.Context) (c PendingChange, ok bool, err error) {
	st, err := m.cfg.Map.State(ctx)
	if err != nil || st.Reconfiguring == 0 || !(st.ReconfigureAdding || st.ReconfigureRemoving) {
		return PendingChange{}, false, err
	}
	return PendingChange{Member: NodeID(st.Reconfiguring), Learner: st.ReconfigureLearner, Removing: st.ReconfigureRemoving}, true, nil
}

// Continue finishes adding member after Begin: for every range, in key
// order, every replica compacts its log and raft adds member's replica
// (the map names it), which the map then promotes (not for a learner);
// then it marks the change over. It is idempotent: called again, after a
// failure or on another member (the placement leader resumes a marked
// add), it goes on from where the last call stopped; a failure leaves the
// mark. Before it adds a replica it checks that member's add is still the
// change under way, else ErrAddSuperseded (the mark is left to the change
// that replaced it).
func (m *Membership) Continue(ctx context.Context, member NodeID, learner bool) error {
	// Begin's last step, which a Begin cut short may not have taken.
	if err := m.stillAdding(ctx, member); err != nil {
		return err
	}
	if err := m.addPlacement(ctx, member, learner); err != nil {
		return fmt.Errorf("placement: add member %x to the placement group: %w", member, err)
	}
	err := m.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if pair := pairOf(Pairs(d), uint64(member)); pair != nil && !pair.Learner {
			return nil // a voter already, in raft and in the map
		}
		if err := m.stillAdding(ctx, member); err != nil {
			return err
		}
		if m.subsets() {
			if skip, err := m.skipUnfilled(ctx, d, member); skip || err != nil {
				return err
			}
		}
		ms, err := m.groupMembership(ctx, d.Id)
		if err != nil {
			return err
		}
		id, pair, err := m.replicaIn(ctx, d, ms, member)
		if err != nil {
			return err
		}
		if pair != nil && !pair.Learner {
			return nil
		}
		_, voter := ms.Nodes[uint64(id)]
		_, nonVoting := ms.NonVotings[uint64(id)]
		if !voter && !nonVoting {
			if err := m.compactEverywhere(ctx, d, id); err != nil {
				return fmt.Errorf("placement: compact range %d's log before adding member %x: %w", d.Id, member, err)
			}
			if err := m.stillAdding(ctx, member); err != nil {
				return err
			}
			if err := m.add(ctx, d.Id, uint64(id), member, learner); err != nil {
				return fmt.Errorf("placement: add member %x to range %d: %w", member, d.Id, err)
			}
		}
		if learner {
			// The map's voters found the ranges later splits make: a
			// learner is not one until promoted.
			return nil
		}
		return m.recordVoter(ctx, d, id, pair, member)
	})
	if err != nil {
		return err
	}
	m.endReconfigure(member, true)
	return nil
}

// stillAdding returns ErrAddSuperseded unless the map's mark is member's
// add (Begin's).
func (m *Membership) stillAdding(ctx context.Context, member NodeID) error {
	return m.stillMarked(ctx, member, false)
}

// stillMarked returns ErrAddSuperseded (ErrRemoveSuperseded if removing)
// unless the map's mark is member's add (its removal).
func (m *Membership) stillMarked(ctx context.Context, member NodeID, removing bool) error {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return err
	}
	if st.Reconfiguring == uint64(member) && (removing && st.ReconfigureRemoving || !removing && st.ReconfigureAdding) {
		return nil
	}
	if removing {
		return fmt.Errorf("%w (member %x)", ErrRemoveSuperseded, member)
	}
	return fmt.Errorf("%w (member %x)", ErrAddSuperseded, member)
}

// markKind is what a mark leaves to the placement leader: an add's walk
// over the ranges (adding, of a learner if learner), a removal's
// (removing), or nothing (the caller does the whole change).
type markKind struct{ adding, learner, removing bool }

// markPlain marks a change its caller does whole; markRemoving a removal
// whose walk is left (BeginRemove).
var (
	markPlain    = markKind{}
	markRemoving = markKind{removing: true}
)

// mark marks member's change under way, of kind k. A change whose walk is
// left to the placement leader (an add's or a removal's) is waited for,
// polling, until ctx ends — another member's, or member's own removal
// unless k is one too; another mark is replaced, as before walks were
// resumed: its change's caller may be gone, and a change is tried again
// by calling again. A mark the map refuses while a merge is open
// (ErrMerging: a merge's window is seconds) is tried again likewise.
func (m *Membership) mark(ctx context.Context, member NodeID, k markKind) error {
	for {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return err
		}
		left := st.ReconfigureAdding || st.ReconfigureRemoving
		mine := st.Reconfiguring == uint64(member)
		waitFor := error(nil)
		if st.Reconfiguring == 0 || !left || (mine && (!st.ReconfigureRemoving || k.removing)) {
			err := m.cfg.Map.reconfigure(ctx, member, false, k)
			if !errors.Is(err, ErrMerging) {
				return err
			}
			waitFor = err
		} else {
			waitFor = fmt.Errorf("%w (member %x)", ErrReconfiguring, st.Reconfiguring)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", waitFor, ctx.Err())
		case <-time.After(m.cfg.Poll):
		}
	}
}

// nameReplicas has the range map name member's replica of every range it
// names none of, as a learner, allocating its id: the member reads them
// in the map once it is in the placement group, and starts each range
// under its own id. A range whose raft group has a replica under the
// member's id (a change begun before ids were allocated, cut short) keeps
// it (replicaIn); a range that does not run here yet (a split under way)
// is named all the same.
func (m *Membership) nameReplicas(ctx context.Context, member NodeID, learner bool) error {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return err
	}
	fill, err := m.fills(ctx, st, member, learner)
	if err != nil {
		return err
	}
	for _, d := range st.Ranges {
		if _, ok := ReplicaOf(d, member); ok {
			continue
		}
		if fill != nil && !fill[d.Id] {
			continue // with subsets: a range the member's add leaves alone
		}
		ms, err := m.groupMembership(ctx, d.Id)
		switch {
		case errors.Is(err, dragonboat.ErrShardNotFound):
		case err != nil:
			return fmt.Errorf("range %d: %w", d.Id, err)
		default:
			if legacyReplica(d, ms, member) {
				continue
			}
		}
		if _, _, err := m.cfg.Map.AddReplica(ctx, RangeID(d.Id), member, true); err != nil {
			return fmt.Errorf("range %d: %w", d.Id, err)
		}
	}
	return nil
}

// recordNode records member's node record: whether it is an etcd learner
// if setLearner (registering it if it is not; a non-voting member without
// a record is one of a cluster founded before the records: a learner), and
// its peerURLs if any; unless the record says so already.
func (m *Membership) recordNode(ctx context.Context, member NodeID, learner, setLearner bool, peerURLs []string) error {
	if !setLearner && len(peerURLs) == 0 {
		return nil
	}
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return err
	}
	for _, n := range st.Nodes {
		if n.Id == uint64(member) && (!setLearner || n.Learner == learner) &&
			(len(peerURLs) == 0 || slices.Equal(n.PeerUrls, peerURLs)) {
			return nil
		}
	}
	return m.cfg.Map.RecordNode(ctx, &placementpb.AddNode{Node: &placementpb.Node{Id: uint64(member), Learner: learner, PeerUrls: peerURLs},
		Merge: true, SetLearner: setLearner})
}

// recordLearner records in member's node record whether it is an etcd
// learner, registering it if it is not, unless the record says so
// already.
func (m *Membership) recordLearner(ctx context.Context, member NodeID, learner bool) error {
	return m.recordNode(ctx, member, learner, true, nil)
}

// addPlacement adds member to the placement group: as a voter unless it is
// a learner or PlacementVoters members vote already, else as a non-voting
// member; nothing if it is there so already (a voter stays one).
func (m *Membership) addPlacement(ctx context.Context, member NodeID, learner bool) error {
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return err
	}
	if _, ok := ms.Nodes[uint64(member)]; ok {
		return nil
	}
	if !learner && m.cfg.PlacementVoters > 0 && len(ms.Nodes) >= m.cfg.PlacementVoters {
		learner = true
	}
	return m.add(ctx, m.cfg.ShardID, uint64(member), member, learner)
}

// add adds replica id of group, on member, as a voter (promoting it, a
// non-voting member), or as a non-voting member if learner; nothing if
// the group has it so already. Each try reads the membership first: two
// walks may add the same replica at once (Begin and the placement
// leader's Continue), and raft refuses the second of two conf changes.
// A replica the group removed is never added again (raft refuses it).
func (m *Membership) add(ctx context.Context, group, id uint64, member NodeID, learner bool) error {
	return m.retryRaft(ctx, func(ctx context.Context) error {
		ms, err := m.cfg.Raft.SyncGetShardMembership(ctx, group)
		if err != nil {
			return err
		}
		if _, ok := ms.Nodes[id]; ok {
			return nil
		}
		if _, ok := ms.NonVotings[id]; ok && learner {
			return nil
		}
		if _, ok := ms.Removed[id]; ok {
			return fmt.Errorf("%w: replica %d of group %d was removed", ErrAddSuperseded, id, group)
		}
		if learner {
			return m.cfg.Raft.SyncRequestAddNonVoting(ctx, group, id, m.cfg.Target(member), 0)
		}
		return m.cfg.Raft.SyncRequestAddReplica(ctx, group, id, m.cfg.Target(member), 0)
	})
}

// replicaIn returns member's replica of range d, whose raft membership is
// ms: the one the map names (pair); else one raft has under the member's
// id (pair nil: a learner added before the map named learners); else one
// the map names now, allocated.
func (m *Membership) replicaIn(ctx context.Context, d *placementpb.RangeDescriptor, ms *dragonboat.Membership, member NodeID) (ReplicaID, *placementpb.Replica, error) {
	if p := pairOf(Pairs(d), uint64(member)); p != nil {
		return ReplicaID(p.Id), p, nil
	}
	if legacyReplica(d, ms, member) {
		return ReplicaID(member), nil, nil
	}
	nd, id, err := m.cfg.Map.AddReplica(ctx, RangeID(d.Id), member, true)
	if err != nil {
		return 0, nil, fmt.Errorf("placement: name member %x's replica of range %d: %w", member, d.Id, err)
	}
	return id, pairOf(Pairs(nd), uint64(member)), nil
}

// legacyReplica reports whether range d's raft membership ms has a
// replica under member's id that d does not name: one added before the map
// named every replica (a learner's, or a change cut short then). An id d
// names is another member's replica (an allocated id may equal the id of
// a member that joined later).
func legacyReplica(d *placementpb.RangeDescriptor, ms *dragonboat.Membership, member NodeID) bool {
	_, voter := ms.Nodes[uint64(member)]
	_, nonVoting := ms.NonVotings[uint64(member)]
	_, named := MemberOf(d, ReplicaID(member))
	return (voter || nonVoting) && !named
}

// recordVoter records in the map that member's replica id of range d
// votes: pair, the map's, promoted; or (pair nil: a replica under the
// member's id the map did not name) added as it was before ids were
// allocated.
func (m *Membership) recordVoter(ctx context.Context, d *placementpb.RangeDescriptor, id ReplicaID, pair *placementpb.Replica, member NodeID) error {
	if pair == nil {
		return m.cfg.Map.ChangeReplicas(ctx, RangeID(d.Id), member, 0)
	}
	if !pair.Learner {
		return nil
	}
	_, err := m.cfg.Map.PromoteReplica(ctx, RangeID(d.Id), id)
	return err
}

// ErrRemoveSuperseded is ContinueRemove's answer when member's removal is
// no longer the change under way (its mark ended, or another replaced it).
var ErrRemoveSuperseded = errors.New("placement: the member's removal is no longer the change under way")

// Remove removes member: BeginRemove then ContinueRemove, here.
func (m *Membership) Remove(ctx context.Context, member NodeID) error {
	if _, err := m.BeginRemove(ctx, member); err != nil {
		return err
	}
	return m.ContinueRemove(ctx, member)
}

// BeginRemove does the part of removing member that an etcd member
// removal answers after, and marks the rest under way (the mark's
// removing), which the placement leader finishes (ContinueRemove): a
// removal cut short, or whose caller went away, is finished all the same.
//
// Without a drain (drains) member leaves the placement group — the member
// list — here (a non-voting member promoted first if the group would be
// short of voters, replaceVoter), as etcd's member leaves raft at once;
// its replicas of the ranges are removed after. With a drain member stays
// in the member list until its replicas have moved to the others (issue
// 21: "first moves them, then removes it"), and drain is true: the caller
// waits for the mark to end (Removed) to answer.
//
// A change of another member whose walk is left is waited for. On an
// error after the mark, the mark is left for the placement leader.
func (m *Membership) BeginRemove(ctx context.Context, member NodeID) (drain bool, err error) {
	if err := m.mark(ctx, member, markRemoving); err != nil {
		return false, err
	}
	drain, err = m.drainsRemoval(ctx, member)
	if err != nil || drain {
		return drain, err
	}
	return false, m.leavePlacement(ctx, member)
}

// Removed reports whether member's removal is over: no longer marked
// under way in the map, and member out of the placement group.
func (m *Membership) Removed(ctx context.Context, member NodeID) (bool, error) {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return false, err
	}
	if st.Reconfiguring == uint64(member) && st.ReconfigureRemoving {
		return false, nil
	}
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return false, err
	}
	_, voter := ms.Nodes[uint64(member)]
	_, nonVoting := ms.NonVotings[uint64(member)]
	return !voter && !nonVoting, nil
}

// ContinueRemove finishes removing member after BeginRemove: with subsets
// it drains member (drain), else it removes member's replica of every
// range, in raft and then in the map, and makes sure member left the
// placement group; then it marks the change over. It is idempotent: called
// again, after a failure or on another member (the placement leader
// resumes a marked removal), it goes on from where the last call stopped;
// a failure leaves the mark. ErrRemoveSuperseded if the map's mark is not
// member's removal.
func (m *Membership) ContinueRemove(ctx context.Context, member NodeID) error {
	err := m.stillMarked(ctx, member, true)
	if err != nil {
		return err
	}
	if m.subsets() {
		err = m.drain(ctx, member)
	} else {
		err = m.removeEverywhere(ctx, member)
	}
	if err != nil {
		return err
	}
	m.endReconfigure(member, false)
	return nil
}

// removeEverywhere removes member (every member holding every range): out
// of the placement group first (again: BeginRemove did it, unless cut
// short), then its replica of every range, in raft and then in the map.
func (m *Membership) removeEverywhere(ctx context.Context, member NodeID) error {
	if err := m.leavePlacement(ctx, member); err != nil {
		return err
	}
	remove := func(group, id uint64) error {
		ms, err := m.groupMembership(ctx, group)
		if err != nil {
			return err
		}
		_, voter := ms.Nodes[id]
		_, nonVoting := ms.NonVotings[id]
		if !voter && !nonVoting {
			return nil
		}
		return m.retryRaft(ctx, func(ctx context.Context) error {
			return m.cfg.Raft.SyncRequestDeleteReplica(ctx, group, id, 0)
		})
	}
	return m.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		ms, err := m.groupMembership(ctx, d.Id)
		if err != nil {
			return fmt.Errorf("placement: remove member %x from range %d: %w", member, d.Id, err)
		}
		pair := pairOf(Pairs(d), uint64(member))
		switch {
		case pair != nil:
			if err := remove(d.Id, pair.Id); err != nil {
				return fmt.Errorf("placement: remove member %x from range %d: %w", member, d.Id, err)
			}
			_, err := m.cfg.Map.RemoveReplica(ctx, RangeID(d.Id), ReplicaID(pair.Id))
			return err
		case legacyReplica(d, ms, member):
			if err := remove(d.Id, uint64(member)); err != nil {
				return fmt.Errorf("placement: remove member %x from range %d: %w", member, d.Id, err)
			}
		}
		return nil
	})
}

// leavePlacement takes member out of the placement group (the member
// list), a non-voting member promoted first if the group would be short
// of voters (replaceVoter); nothing if member is not in it.
func (m *Membership) leavePlacement(ctx context.Context, member NodeID) error {
	if err := m.replaceVoter(ctx, member); err != nil {
		return fmt.Errorf("placement: remove member %x: %w", member, err)
	}
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return fmt.Errorf("placement: remove member %x: %w", member, err)
	}
	_, voter := ms.Nodes[uint64(member)]
	_, nonVoting := ms.NonVotings[uint64(member)]
	if !voter && !nonVoting {
		return nil
	}
	err = m.retryRaft(ctx, func(ctx context.Context) error {
		return m.cfg.Raft.SyncRequestDeleteReplica(ctx, m.cfg.ShardID, uint64(member), 0)
	})
	if err != nil {
		return fmt.Errorf("placement: remove member %x: %w", member, err)
	}
	return nil
}

// replaceVoter promotes, when member votes in the placement group and its
// leaving would leave fewer than PlacementVoters voters, a non-voting
// member first (the one with the lowest id that is no etcd learner), so
// that the group keeps its voters.
func (m *Membership) replaceVoter(ctx context.Context, member NodeID) error {
	if m.cfg.PlacementVoters <= 0 {
		return nil
	}
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return err
	}
	if _, ok := ms.Nodes[uint64(member)]; !ok || len(ms.Nodes)-1 >= m.cfg.PlacementVoters {
		return nil
	}
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return err
	}
	for _, id := range promotable(st, ms, member) {
		return m.add(ctx, m.cfg.ShardID, uint64(id), id, false)
	}
	return nil
}

// promotable returns, by id, the non-voting members of the placement group
// (membership ms) that may vote: those registered as no etcd learner,
// except member.
func promotable(st *placementpb.State, ms *dragonboat.Membership, except NodeID) []NodeID {
	var out []NodeID
	for _, n := range st.Nodes {
		if _, ok := ms.NonVotings[n.Id]; ok && !n.Learner && NodeID(n.Id) != except {
			out = append(out, NodeID(n.Id))
		}
	}
	return out
}

// FillPlacement, run by the placement group's leader, adds to the group
// every registered member it lacks (a founder past the first
// PlacementVoters, which starts its replica as a joiner) as a non-voting
// member, and promotes non-voting members that are no etcd learners while
// fewer than PlacementVoters vote. It does nothing while a membership
// change is under way (the change places the member itself); members the
// group removed are never added again.
func (m *Membership) FillPlacement(ctx context.Context) error {
	st, err := m.cfg.Map.State(ctx)
	if err != nil || st.Reconfiguring != 0 {
		return err
	}
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return err
	}
	for _, n := range st.Nodes {
		_, voter := ms.Nodes[n.Id]
		_, nonVoting := ms.NonVotings[n.Id]
		_, removed := ms.Removed[n.Id]
		if voter || nonVoting || removed {
			continue
		}
		if err := m.add(ctx, m.cfg.ShardID, n.Id, NodeID(n.Id), true); err != nil {
			return fmt.Errorf("placement: add member %x to the placement group: %w", n.Id, err)
		}
		ms.NonVotings[n.Id] = m.cfg.Target(NodeID(n.Id))
	}
	voters := len(ms.Nodes)
	for _, id := range promotable(st, ms, 0) {
		if m.cfg.PlacementVoters > 0 && voters >= m.cfg.PlacementVoters {
			break
		}
		if err := m.add(ctx, m.cfg.ShardID, uint64(id), id, false); err != nil {
			return fmt.Errorf("placement: promote member %x in the placement group: %w", id, err)
		}
		voters++
	}
	return nil
}

// Promote makes learner member's replica of every range a voter, in raft
// and then in the map, and then member a voter of the placement group: it
// shows promoted in the member list last, so that a promotion cut short is
// found and tried again. A range split while it was a learner, whose raft
// group has no replica of it yet, it is added to as Add adds.
func (m *Membership) Promote(ctx context.Context, member NodeID) error {
	if err := m.mark(ctx, member, markPlain); err != nil {
		return err
	}
	defer m.endReconfigure(member, false)
	var fill map[uint64]bool
	if m.subsets() {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return err
		}
		if fill, err = m.fills(ctx, st, member, false); err != nil {
			return err
		}
	}
	err := m.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if fill != nil && !fill[d.Id] && pairOf(Pairs(d), uint64(member)) == nil {
			return nil // with subsets: neither the member's nor one to fill
		}
		if fill != nil && !m.cfg.Ranges.Runs(RangeID(d.Id)) {
			return nil // with subsets, held elsewhere: left to a move
		}
		ms, err := m.groupMembership(ctx, d.Id)
		if err != nil {
			return err
		}
		id, pair, err := m.replicaIn(ctx, d, ms, member)
		if err != nil {
			return err
		}
		if _, ok := ms.Nodes[uint64(id)]; !ok {
			if _, ok := ms.NonVotings[uint64(id)]; !ok {
				if err := m.compactEverywhere(ctx, d, id); err != nil {
					return err
				}
			}
			if err := m.add(ctx, d.Id, uint64(id), member, false); err != nil {
				return fmt.Errorf("placement: promote member %x in range %d: %w", member, d.Id, err)
			}
		}
		return m.recordVoter(ctx, d, id, pair, member)
	})
	if err != nil {
		return err
	}
	if err := m.addPlacement(ctx, member, false); err != nil {
		return fmt.Errorf("placement: promote member %x: %w", member, err)
	}
	if err := m.recordLearner(ctx, member, false); err != nil {
		return fmt.Errorf("placement: promote member %x: %w", member, err)
	}
	return nil
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
// reading the map again until a pass finds all of them so. With subsets,
// f is called at once with a range the map names no replica of here.
func (m *Membership) eachRange(ctx context.Context, f func(d *placementpb.RangeDescriptor) error) error {
	for {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return err
		}
		waiting := false
		for _, d := range st.Ranges {
			if !m.cfg.Ranges.Runs(RangeID(d.Id)) {
				if _, mine := ReplicaOf(d, m.cfg.Self); !m.subsets() || mine {
					waiting = true
					continue
				}
				// With subsets, a range held elsewhere: f is told so
				// by LocalRanges.Runs.
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

// endReconfigure marks member's change over (adding: only Begin's mark of
// it, not a removal's that replaced it), on its own deadline: the change's
// may have run out.
func (m *Membership) endReconfigure(member NodeID, adding bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.cfg.Map.reconfigure(ctx, member, true, markKind{adding: adding}); err != nil {
		m.cfg.Log.Warn("mark a membership change over", "member", fmt.Sprintf("%x", uint64(member)), "error", err)
	}
}

// compactEverywhere makes every replica of range d but newcomer take a
// snapshot and drop its log up to it, after one entry applied everywhere
// (LocalRanges.Touch), so that each has progress to snapshot. A replica's
// member is the one d names (a replica d does not name has its member's
// id).
func (m *Membership) compactEverywhere(ctx context.Context, d *placementpb.RangeDescriptor, newcomer ReplicaID) error {
	r := RangeID(d.Id)
	tctx, cancel := context.WithTimeout(ctx, compactLogTimeout)
	err := m.cfg.Ranges.Touch(tctx, r)
	cancel()
	if err != nil {
		return err
	}
	ms, err := m.groupMembership(ctx, uint64(r))
	if err != nil {
		return err
	}
	// In replica order, voters first: one order for every run.
	for _, group := range []map[uint64]string{ms.Nodes, ms.NonVotings} {
		for _, id := range slices.Sorted(maps.Keys(group)) {
			if ReplicaID(id) == newcomer {
				continue
			}
			member, ok := MemberOf(d, ReplicaID(id))
			if !ok {
				member = NodeID(id)
			}
			// Each replica's compaction is bounded: a walk runs on a
			// context that lasts as long as the node (the placement
			// leader's resumer), and a call to a member that stopped or
			// restarted meanwhile must fail, for the walk to be tried
			// again, rather than hold it up.
			cctx, cancel := context.WithTimeout(ctx, compactLogTimeout)
			if member == m.cfg.Self {
				err = m.CompactLog(cctx, r)
			} else {
				err = m.cfg.Peers.CompactLog(cctx, member, r)
			}
			cancel()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// compactLogTimeout bounds one replica's snapshot and log compaction in
// compactEverywhere.
const compactLogTimeout = 30 * time.Second

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
