package placement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// A Mover moves one replica of a range from one member to another while
// the range serves, driving the range's raft group through the members
// holding it (RangeRaft) and recording each step in the range map's move
// record (moves.go) once raft took it, so that whoever leads the placement
// group next finishes or undoes the move from the record (Resume):
//
//	begin_move r2 1→4            the map allocates 4's replica id (9); 4 starts it, non-voting, empty
//	(begun)   every replica of r2 snapshots and drops its log; r2 += 9 non-voting
//	advance → added              9 is a learner in the map
//	(added)   9 applied ≥ what the leader had applied; 9 votes; 9 snapshots
//	advance → promoted           9 votes in the map
//	(promoted) the source leads? leadership to another voter first (not 9 if it can); the source stops serving r2;
//	          r2 −= its replica
//	advance → left               the source's replica is gone from the map
//	end_move done                the move is over; the source drops the replica's data
//
// The group never has fewer voters than before the move: the destination
// votes before the source leaves. The destination gets the range as a
// snapshot, never by replaying the log from the range's start (which would
// replay writes over keys other ranges own now in the member's pebble):
// every replica drops its log up to a fresh snapshot before it is added.
//
// A move that cannot add or catch up its destination (the member is down,
// or never starts the replica) within Patience looks is undone: advance →
// undoing, the destination out of raft's group, end_move not done. Once the
// destination votes, the move only goes forward.
//
// Each step first reads raft's view, so that a step raft took before a
// crash is recorded, not taken again: a replica id raft removed is never
// added again (dragonboat refuses it), so a destination removed before its
// move was recorded as added makes the move undo.
//
// The Mover starts no goroutine; the range map lets one move per range be
// open, and a Mover drives each move once at a time (Resume passes over
// the moves its Move calls drive). Two Movers (a placement leader and the
// one before it) may still drive the same move: each step is idempotent,
// and the map's compare-and-set refuses the slower one's records
// (ErrMoveStep).
type Mover struct {
	cfg MoverConfig

	mu      sync.Mutex
	driving map[RangeID]bool // REQUIRES: mu; the ranges whose move this Mover drives now
}

// MoverMap is the range map as a Mover records moves in it (Client is
// one).
type MoverMap interface {
	State(ctx context.Context) (*placementpb.State, error)
	BeginMove(ctx context.Context, r RangeID, gen uint64, from, to NodeID) (*placementpb.Move, error)
	AdvanceMove(ctx context.Context, r RangeID, to ReplicaID, from, step placementpb.MoveStep) (*placementpb.Move, error)
	EndMove(ctx context.Context, r RangeID, to ReplicaID, done bool) error
}

// RangeMembership is a range's raft group as its leader has it.
type RangeMembership struct {
	Voters, Learners, Removed []ReplicaID
	// Leader is the replica that leads the group (0: none known).
	Leader ReplicaID
}

// Has reports whether id is in the group, and whether it votes.
func (m RangeMembership) Has(id ReplicaID) (in, votes bool) {
	if slices.Contains(m.Voters, id) {
		return true, true
	}
	return slices.Contains(m.Learners, id), false
}

// ReplicaStatus is one member's replica of a range: its id and the raft
// index it applied.
type ReplicaStatus struct {
	Replica ReplicaID
	Applied uint64
}

// RangeRaft is ranges' raft groups as a Mover reads and changes them,
// through members holding the range (d, the range as the map has it, names
// them); the node implements it over the internal ChangeRange call. Any
// call may fail while a group elects or a member is down: the Mover tries
// again. Each change must succeed again for a change raft has made.
type RangeRaft interface {
	// Membership reads range d's raft membership through its leader.
	Membership(ctx context.Context, d *placementpb.RangeDescriptor) (RangeMembership, error)
	// AddLearner adds replica r (r.Id on r.Member) to d's group, non-voting.
	AddLearner(ctx context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica) error
	// Promote makes replica r of d's group vote.
	Promote(ctx context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica) error
	// Remove takes replica id out of d's group.
	Remove(ctx context.Context, d *placementpb.RangeDescriptor, id ReplicaID) error
	// TransferLeader makes replica to lead d's group and returns once it
	// does.
	TransferLeader(ctx context.Context, d *placementpb.RangeDescriptor, to ReplicaID) error
	// Touch commits to d an entry that changes nothing, so that every
	// replica has something new to snapshot.
	Touch(ctx context.Context, d *placementpb.RangeDescriptor) error
	// CompactLog has member's replica of d snapshot and drop its log up to
	// the snapshot.
	CompactLog(ctx context.Context, member NodeID, d *placementpb.RangeDescriptor) error
	// Status answers member's replica of d (an error if member runs none).
	Status(ctx context.Context, member NodeID, d *placementpb.RangeDescriptor) (ReplicaStatus, error)
	// StopServing has member serve d through the other members holding it
	// from now on, not from its replica, which is about to leave the group
	// (a removed replica answers no read).
	StopServing(ctx context.Context, member NodeID, d *placementpb.RangeDescriptor) error
}

// MoverConfig wires a Mover.
type MoverConfig struct {
	Map  MoverMap
	Raft RangeRaft
	// Poll is the wait between looks at a destination starting or catching
	// up, and between tries of a failed call; 0 means 50ms.
	Poll time.Duration
	// Patience is how many looks a destination gets to start its replica,
	// and then to catch up, before the move is undone; 0 means 600 (30 s
	// at the default Poll).
	Patience int
	// Log receives each step taken; nil discards it.
	Log *slog.Logger
	// Crash, for tests, stops a move right after the step it names (a
	// step name of MoveSteps) when it returns true, as a crash of the
	// member driving it would: the move returns ErrCrashed. nil: never.
	Crash func(step string) bool
}

// MoveSteps name the points a move can stop at, in order (MoverConfig.Crash).
var MoveSteps = []string{"begun", "compacted", "learner", "added", "voter", "promoted", "transferred", "removed", "left", "ended"}

var (
	// ErrCrashed: MoverConfig.Crash stopped the move.
	ErrCrashed = errors.New("placement: the move stopped (test crash)")
	// ErrMoveUndone: the move could not finish and was undone; the range
	// is as it was.
	ErrMoveUndone = errors.New("placement: the move was undone")
	// errGiveUp: the destination did not start or catch up in time.
	errGiveUp = errors.New("placement: the destination did not start or catch up")
)

// NewMover returns a mover over cfg.
func NewMover(cfg MoverConfig) *Mover {
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Patience <= 0 {
		cfg.Patience = 600
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Mover{cfg: cfg, driving: map[RangeID]bool{}}
}

// claim marks range r's move as driven here; false if it is already.
func (m *Mover) claim(r RangeID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.driving[r] {
		return false
	}
	m.driving[r] = true
	return true
}

func (m *Mover) release(r RangeID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.driving, r)
}

// Move moves range r's replica on member from to member to and returns the
// range as the move left it. A move of r open already is refused
// (ErrMoving), unless it is this one, which is finished. ErrMoveUndone if
// the destination could not be added.
func (m *Mover) Move(ctx context.Context, r RangeID, from, to NodeID) (*placementpb.RangeDescriptor, error) {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return nil, err
	}
	d := rangeIn(st, r)
	if d == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownRange, r)
	}
	if !m.claim(r) {
		return nil, fmt.Errorf("%w: range %d (driven here now)", ErrMoving, r)
	}
	defer m.release(r)
	mv, err := m.cfg.Map.BeginMove(ctx, r, d.Generation, from, to)
	if err != nil {
		return nil, err
	}
	m.cfg.Log.Info("move begun", "range", r, "from", from, "to", to, "replica", mv.To.GetId())
	if m.crash("begun") {
		return nil, ErrCrashed
	}
	return m.drive(ctx, mv)
}

// Resume finishes, or undoes, every move open in the range map (after the
// member that drove it stopped), and returns their errors joined.
func (m *Mover) Resume(ctx context.Context) error {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, mv := range st.Moves {
		if !m.claim(RangeID(mv.Range)) {
			continue // a Move drives it
		}
		m.cfg.Log.Info("resuming a move", "range", mv.Range, "step", stepName(mv.Step), "replica", mv.To.GetId())
		_, err := m.drive(ctx, mv)
		m.release(RangeID(mv.Range))
		if err != nil && !errors.Is(err, ErrMoveUndone) {
			errs = append(errs, fmt.Errorf("range %d: %w", mv.Range, err))
		}
	}
	return errors.Join(errs...)
}

// drive takes mv from its recorded step to its end.
func (m *Mover) drive(ctx context.Context, mv *placementpb.Move) (*placementpb.RangeDescriptor, error) {
	r, to := RangeID(mv.Range), ReplicaID(mv.To.GetId())
	for {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return nil, err
		}
		d := rangeIn(st, r)
		if cur := moveIn(st, r); cur == nil || cur.To.GetId() != mv.To.GetId() {
			return d, nil // ended meanwhile (another driver)
		} else {
			mv = cur
		}
		next, stop := placementpb.MoveStep(0), ""
		switch mv.Step {
		case placementpb.MoveStep_MOVE_STEP_UNSPECIFIED:
			err = m.add(ctx, d, mv)
			next, stop = placementpb.MoveStep_ADDED, "added"
		case placementpb.MoveStep_ADDED:
			err = m.promote(ctx, d, mv)
			next, stop = placementpb.MoveStep_PROMOTED, "promoted"
		case placementpb.MoveStep_PROMOTED:
			err = m.leave(ctx, d, mv)
			next, stop = placementpb.MoveStep_LEFT, "left"
		case placementpb.MoveStep_LEFT:
			if err := m.cfg.Map.EndMove(ctx, r, to, true); err != nil {
				return nil, err
			}
			m.cfg.Log.Info("move done", "range", r, "replica", to)
			if m.crash("ended") {
				return nil, ErrCrashed
			}
			continue // reads the range as it is now
		case placementpb.MoveStep_UNDOING:
			if err := m.undo(ctx, d, mv); err != nil {
				return nil, err
			}
			st, err := m.cfg.Map.State(ctx)
			if err != nil {
				return nil, err
			}
			return rangeIn(st, r), fmt.Errorf("%w: range %d, replica %d on member %x", ErrMoveUndone, r, to, mv.To.GetMember())
		default:
			return nil, fmt.Errorf("placement: range %d's move is at an unknown step %v", r, mv.Step)
		}
		if errors.Is(err, errGiveUp) {
			m.cfg.Log.Warn("undoing a move", "range", r, "replica", to, "step", stepName(mv.Step), "error", err)
			next, stop, err = placementpb.MoveStep_UNDOING, "", nil
		}
		if err != nil {
			return nil, err
		}
		if _, err := m.cfg.Map.AdvanceMove(ctx, r, to, mv.Step, next); err != nil {
			return nil, err
		}
		if stop != "" && m.crash(stop) {
			return nil, ErrCrashed
		}
	}
}

// add has the destination start its replica (empty, non-voting), every
// replica of d drop its log up to a snapshot, and raft add the destination
// non-voting. errGiveUp if the destination does not start in time or raft
// removed its replica already.
func (m *Mover) add(ctx context.Context, d *placementpb.RangeDescriptor, mv *placementpb.Move) error {
	to := ReplicaID(mv.To.Id)
	ms, err := m.membership(ctx, d)
	if err != nil {
		return err
	}
	if slices.Contains(ms.Removed, to) {
		return fmt.Errorf("%w: raft removed replica %d", errGiveUp, to)
	}
	if in, _ := ms.Has(to); in {
		return nil // raft took the step before a stop
	}
	if err := m.waitStatus(ctx, d, mv.To, func(st ReplicaStatus) bool { return st.Replica == to }); err != nil {
		return err
	}
	// A snapshot on every replica, each after an entry it has not
	// snapshotted yet: whichever leads sends the newcomer a snapshot.
	if err := m.retry(ctx, func() error { return m.cfg.Raft.Touch(ctx, d) }); err != nil {
		return err
	}
	for _, id := range append(slices.Clone(ms.Voters), ms.Learners...) {
		member, ok := MemberOf(d, id)
		if !ok {
			continue
		}
		if member == NodeID(mv.From.Member) && id != ms.Leader {
			// The source may be down (a re-creation): it leads nothing,
			// so it sends the newcomer nothing, and is passed over if it
			// does not answer, as leave passes over it.
			if err := m.tries(ctx, sourceTries, func() error { return m.cfg.Raft.CompactLog(ctx, member, d) }); err != nil {
				m.cfg.Log.Warn("move: the source did not snapshot; going on without it", "range", d.Id, "member", member, "error", err)
			}
			continue
		}
		if err := m.retry(ctx, func() error { return m.cfg.Raft.CompactLog(ctx, member, d) }); err != nil {
			return err
		}
	}
	if m.crash("compacted") {
		return ErrCrashed
	}
	if err := m.retry(ctx, func() error { return m.cfg.Raft.AddLearner(ctx, d, mv.To) }); err != nil {
		return err
	}
	m.cfg.Log.Info("move: destination added non-voting", "range", d.Id, "replica", to)
	if m.crash("learner") {
		return ErrCrashed
	}
	return nil
}

// promote waits until the destination applied what the leader had applied
// when it began to wait, makes it vote, and has it snapshot so that it can
// restart as a voter (dragonboat #373). errGiveUp if it does not catch up in
// time (a destination voting already is promoted).
func (m *Mover) promote(ctx context.Context, d *placementpb.RangeDescriptor, mv *placementpb.Move) error {
	to := ReplicaID(mv.To.Id)
	ms, err := m.membership(ctx, d)
	if err != nil {
		return err
	}
	if in, votes := ms.Has(to); !in {
		return fmt.Errorf("%w: replica %d is not in the group", errGiveUp, to)
	} else if !votes {
		if err := m.caughtUp(ctx, d, mv); err != nil {
			return err
		}
		if err := m.retry(ctx, func() error { return m.cfg.Raft.Promote(ctx, d, mv.To) }); err != nil {
			return err
		}
		m.cfg.Log.Info("move: destination votes", "range", d.Id, "replica", to)
		if m.crash("voter") {
			return ErrCrashed
		}
	}
	// Best effort: the snapshot only spares a restart the entry that added
	// the replica non-voting.
	if err := m.caughtUp(ctx, d, mv); err == nil {
		if err := m.retry(ctx, func() error { return m.cfg.Raft.CompactLog(ctx, NodeID(mv.To.Member), d) }); err != nil {
			m.cfg.Log.Warn("move: the destination did not snapshot after its promotion", "range", d.Id, "error", err)
		}
	}
	return nil
}

// caughtUp waits until the destination's replica applied what the group's
// leader had applied when it began to wait.
func (m *Mover) caughtUp(ctx context.Context, d *placementpb.RangeDescriptor, mv *placementpb.Move) error {
	var target uint64
	err := m.retry(ctx, func() error {
		ms, err := m.cfg.Raft.Membership(ctx, d)
		if err != nil {
			return err
		}
		leader, ok := MemberOf(d, ms.Leader)
		if !ok && ms.Leader == ReplicaID(mv.To.Id) {
			leader, ok = NodeID(mv.To.Member), true
		}
		if !ok {
			return fmt.Errorf("placement: range %d has no leader the map names", d.Id)
		}
		st, err := m.cfg.Raft.Status(ctx, leader, d)
		target = st.Applied
		return err
	})
	if err != nil {
		return err
	}
	return m.waitStatus(ctx, d, mv.To, func(st ReplicaStatus) bool {
		return st.Replica == ReplicaID(mv.To.Id) && st.Applied >= target
	})
}

// leave takes the source out of the group, having leadership moved off it
// first.
func (m *Mover) leave(ctx context.Context, d *placementpb.RangeDescriptor, mv *placementpb.Move) error {
	from, to := ReplicaID(mv.From.Id), ReplicaID(mv.To.Id)
	for {
		ms, err := m.membership(ctx, d)
		if err != nil {
			return err
		}
		if in, _ := ms.Has(from); !in {
			return nil
		}
		if ms.Leader != from {
			// Best effort: a source that is down serves nothing anyway.
			if err := m.cfg.Raft.StopServing(ctx, NodeID(mv.From.Member), d); err != nil {
				m.cfg.Log.Warn("move: the source did not stop serving the range", "range", d.Id, "error", err)
			}
			if err := m.retry(ctx, func() error { return m.cfg.Raft.Remove(ctx, d, from) }); err != nil {
				return err
			}
			m.cfg.Log.Info("move: source removed", "range", d.Id, "replica", from)
			if m.crash("removed") {
				return ErrCrashed
			}
			return nil
		}
		// Another voter than the destination if there is one: it serves
		// the range already.
		target := to
		for _, v := range ms.Voters {
			if v != from && v != to {
				target = v
				break
			}
		}
		if err := m.cfg.Raft.TransferLeader(ctx, d, target); err != nil {
			if err := m.pause(ctx, err); err != nil {
				return err
			}
			continue
		}
		m.cfg.Log.Info("move: leadership left the source", "range", d.Id, "leader", target)
		if m.crash("transferred") {
			return ErrCrashed
		}
	}
}

// undo takes the destination out of the group and ends the move not done.
func (m *Mover) undo(ctx context.Context, d *placementpb.RangeDescriptor, mv *placementpb.Move) error {
	to := ReplicaID(mv.To.Id)
	ms, err := m.membership(ctx, d)
	if err != nil {
		return err
	}
	if in, _ := ms.Has(to); in {
		if err := m.retry(ctx, func() error { return m.cfg.Raft.Remove(ctx, d, to) }); err != nil {
			return err
		}
	}
	return m.cfg.Map.EndMove(ctx, RangeID(d.Id), to, false)
}

// waitStatus looks at r's replica of d until ok holds: errGiveUp after
// Patience looks.
func (m *Mover) waitStatus(ctx context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica, ok func(ReplicaStatus) bool) error {
	var last error
	for range m.cfg.Patience {
		st, err := m.cfg.Raft.Status(ctx, NodeID(r.Member), d)
		if err == nil && ok(st) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("replica %d at index %d", st.Replica, st.Applied)
		}
		last = err
		if err := m.pause(ctx, nil); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: range %d, member %x (%d looks; last: %v)", errGiveUp, d.Id, r.Member, m.cfg.Patience, last)
}

func (m *Mover) membership(ctx context.Context, d *placementpb.RangeDescriptor) (RangeMembership, error) {
	var ms RangeMembership
	err := m.retry(ctx, func() (err error) {
		ms, err = m.cfg.Raft.Membership(ctx, d)
		return err
	})
	return ms, err
}

// retry calls f until it succeeds or ctx ends.
func (m *Mover) retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		if err := m.pause(ctx, err); err != nil {
			return err
		}
	}
}

// sourceTries is how many times a move asks its source to snapshot before
// it goes on without it.
const sourceTries = 3

func (m *Mover) tries(ctx context.Context, n int, f func() error) error {
	return triesEvery(ctx, m.cfg.Poll, n, f)
}

func (m *Mover) pause(ctx context.Context, cause error) error {
	return pauseFor(ctx, m.cfg.Poll, cause)
}

// triesEvery calls f until it succeeds, at most n times, poll apart; the
// last failure if none did (the move and merge drivers' retries).
func triesEvery(ctx context.Context, poll time.Duration, n int, f func() error) error {
	var err error
	for i := range n {
		if err = f(); err == nil {
			return nil
		}
		if i < n-1 {
			if perr := pauseFor(ctx, poll, err); perr != nil {
				return perr
			}
		}
	}
	return err
}

// pauseFor waits poll, or returns ctx's end (with cause, the last
// failure).
func pauseFor(ctx context.Context, poll time.Duration, cause error) error {
	select {
	case <-ctx.Done():
		if cause != nil {
			return fmt.Errorf("%w (last: %w)", ctx.Err(), cause)
		}
		return ctx.Err()
	case <-time.After(poll):
		return nil
	}
}

func (m *Mover) crash(step string) bool { return m.cfg.Crash != nil && m.cfg.Crash(step) }

// rangeIn returns range r of st, nil if st has none.
func rangeIn(st *placementpb.State, r RangeID) *placementpb.RangeDescriptor {
	for _, d := range st.Ranges {
		if d.Id == uint64(r) {
			return d
		}
	}
	return nil
}

// moveIn returns the open move of range r in st, nil if none.
func moveIn(st *placementpb.State, r RangeID) *placementpb.Move {
	for _, mv := range st.Moves {
		if mv.Range == uint64(r) {
			return mv
		}
	}
	return nil
}
