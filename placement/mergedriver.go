package placement

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// A MergeDriver merges a range R into its left neighbour L while both
// serve (docs/plan-merge.md §2), driving the ranges' logs through their
// range clients (MergeRanges) and reading their raft groups (RangeRaft),
// and recording each step in the map's merge record (merges.go) once the
// ranges took it, so that whoever leads the placement group next finishes
// or undoes the merge from the record (Resume):
//
//	begin_merge L R              the record opens; the map refuses changes of L and R
//	(begun)    raft's voters of L and R are the map's, no learners; every R replica
//	           applied what R's leader had; R's log freezes R at index F
//	advance → frozen             once every R replica applied F
//	(frozen)   L's log commits the merge (absorbs R in place)
//	commit_merge                 L takes R's span in the map, R leaves it, a tombstone
//	(committed) every L replica applied the commit, and snapshots past it
//	end_merge done
//
// Before L's log commits it, a merge whose ranges are not aligned, whose R
// does not freeze, or whose R replicas do not apply the freeze within
// Patience looks (a member down) is undone: advance → aborting, L's log
// records the abort, R's log thaws R, end_merge not done. L's log decides
// between commit and abort: whichever applied first is the answer to both,
// and the driver follows the answer, not its guess.
//
// Each step is idempotent (a second freeze answers the first's index, a
// second commit or abort the recorded outcome) and the map's
// compare-and-set refuses a slower driver's records, so two drivers (a
// placement leader and the one before it) may drive one merge.
type MergeDriver struct {
	cfg MergeDriverConfig

	mu      sync.Mutex
	driving map[uint64]bool // REQUIRES: mu; the merges driven here now
}

// MergeMap is the range map as a MergeDriver records merges in it (Client
// is one).
type MergeMap interface {
	State(ctx context.Context) (*placementpb.State, error)
	BeginMerge(ctx context.Context, left RangeID, lgen uint64, right RangeID, rgen uint64) (*placementpb.Merge, error)
	AdvanceMerge(ctx context.Context, id uint64, from, step placementpb.MergeStep, freezeIndex uint64) (*placementpb.Merge, error)
	CommitMerge(ctx context.Context, id uint64) (*placementpb.Merge, *placementpb.RangeDescriptor, error)
	EndMerge(ctx context.Context, id uint64, done bool) error
}

// MergeOutcome is a range log's answer to a merge request: committed (L
// absorbed R), aborted (the merge is undone), or neither (a freeze that
// applied at FreezeIndex).
type MergeOutcome struct {
	Committed, Aborted bool
	FreezeIndex        uint64
}

// MergeRanges is the ranges' logs as a MergeDriver writes to them, each
// through the range's leader (the node implements them over its range
// clients). Any call may fail while a range elects: the driver tries
// again; each answers the same again once applied.
type MergeRanges interface {
	// Freeze has right's log freeze it for merge into left.
	Freeze(ctx context.Context, right *placementpb.RangeDescriptor, merge uint64, left RangeID) (MergeOutcome, error)
	// Thaw has right's log end its freeze for merge (after left's log
	// recorded the abort).
	Thaw(ctx context.Context, right *placementpb.RangeDescriptor, merge uint64) (MergeOutcome, error)
	// Commit has left's log absorb right, frozen on every member, as
	// range generation; the implementation reads the closed revision the
	// commit carries (the oracle's current value) when it is called.
	Commit(ctx context.Context, left, right *placementpb.RangeDescriptor, merge, generation uint64) (MergeOutcome, error)
	// Abort has left's log record that merge is undone, unless a commit
	// of it applied first (then the answer is committed).
	Abort(ctx context.Context, left *placementpb.RangeDescriptor, merge uint64) (MergeOutcome, error)
}

// MergeDriverConfig wires a MergeDriver.
type MergeDriverConfig struct {
	Map    MergeMap
	Ranges MergeRanges
	// Raft reads the ranges' membership and replicas' applied indexes,
	// and snapshots L's replicas once they applied the commit.
	Raft RangeRaft
	// Poll is the wait between looks at replicas and between tries of a
	// failed call; 0 means 50ms.
	Poll time.Duration
	// Patience is how many looks (or tries) a step before the commit
	// gets before the merge is undone: R serves nothing while frozen, so
	// it is short. 0 means 100 (5 s at the default Poll).
	Patience int
	// Log receives each step taken; nil discards it.
	Log *slog.Logger
	// Crash, for tests, stops a merge right after the step it names (one
	// of MergeSteps) when it returns true, as a crash of the member
	// driving it would: the merge returns ErrCrashed. nil: never.
	Crash func(step string) bool
}

// MergeSteps name the points a merge can stop at, in order
// (MergeDriverConfig.Crash): begun (the record open), frozen (R's log
// froze R), frozen-recorded (the map says so), committed (L's log
// absorbed R, the map not yet), recorded (the map did), ended; on the
// way back, aborting (the map says so), aborted (L's log recorded it),
// thawed (R's log thawed R).
var MergeSteps = []string{"begun", "frozen", "frozen-recorded", "committed", "recorded", "ended", "aborting", "aborted", "thawed"}

// ErrMergeUndone: the merge could not finish and was undone; both ranges
// are as they were.
var ErrMergeUndone = errors.New("placement: the merge was undone")

// NewMergeDriver returns a merge driver over cfg.
func NewMergeDriver(cfg MergeDriverConfig) *MergeDriver {
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Patience <= 0 {
		cfg.Patience = 100
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &MergeDriver{cfg: cfg, driving: map[uint64]bool{}}
}

func (m *MergeDriver) claim(id uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.driving[id] {
		return false
	}
	m.driving[id] = true
	return true
}

func (m *MergeDriver) release(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.driving, id)
}

// Merge merges the range right of range left (the one starting where left
// ends) into left and returns left as the merge left it. ErrMergeUndone if
// the merge was undone; the map's refusals (ErrMerging, ErrMoving,
// ErrNotAligned, ErrReconfiguring, ...) as they are. A merge of the two
// open already is finished.
func (m *MergeDriver) Merge(ctx context.Context, left RangeID) (*placementpb.RangeDescriptor, error) {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return nil, err
	}
	l := rangeIn(st, left)
	if l == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownRange, left)
	}
	if len(l.End) == 0 {
		return nil, fmt.Errorf("%w: r%d ends the key space; no range is right of it", ErrNotAdjacent, left)
	}
	var r *placementpb.RangeDescriptor
	for _, d := range st.Ranges {
		if bytes.Equal(d.Start, l.End) {
			r = d
		}
	}
	if r == nil {
		return nil, fmt.Errorf("%w: no range starts at %q, where r%d ends", ErrNotAdjacent, l.End, left)
	}
	mg, err := m.cfg.Map.BeginMerge(ctx, left, l.Generation, RangeID(r.Id), r.Generation)
	if err != nil {
		return nil, err
	}
	if !m.claim(mg.Id) {
		return nil, fmt.Errorf("%w: merge %d of r%d into r%d (driven here now)", ErrMerging, mg.Id, mg.Right, mg.Left)
	}
	defer m.release(mg.Id)
	m.cfg.Log.Info("merge begun", "merge", mg.Id, "left", mg.Left, "right", mg.Right)
	if m.crash("begun") {
		return nil, ErrCrashed
	}
	return m.drive(ctx, mg)
}

// Resume finishes, or undoes, every merge open in the range map (after the
// member that drove it stopped), and returns their errors joined.
func (m *MergeDriver) Resume(ctx context.Context) error {
	st, err := m.cfg.Map.State(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, mg := range st.Merges {
		if !m.claim(mg.Id) {
			continue // a Merge drives it
		}
		m.cfg.Log.Info("resuming a merge", "merge", mg.Id, "left", mg.Left, "right", mg.Right, "step", mergeStepName(mg.Step))
		_, err := m.drive(ctx, mg)
		m.release(mg.Id)
		if err != nil && !errors.Is(err, ErrMergeUndone) {
			errs = append(errs, fmt.Errorf("merge %d: %w", mg.Id, err))
		}
	}
	return errors.Join(errs...)
}

// drive takes mg from its recorded step to its end.
func (m *MergeDriver) drive(ctx context.Context, mg *placementpb.Merge) (*placementpb.RangeDescriptor, error) {
	id := mg.Id
	for {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return nil, err
		}
		l, r := rangeIn(st, RangeID(mg.Left)), rangeIn(st, RangeID(mg.Right))
		cur := mergeIn(st, id)
		if cur == nil { // ended (here, or by another driver)
			if _, merged := mergedIn(st, RangeID(mg.Right)); merged {
				return l, nil
			}
			return l, fmt.Errorf("%w: merge %d of r%d into r%d", ErrMergeUndone, id, mg.Right, mg.Left)
		}
		mg = cur
		switch mg.Step {
		case placementpb.MergeStep_BEGUN:
			f, err := m.freeze(ctx, l, r, mg)
			if err != nil {
				if !errors.Is(err, errGiveUp) {
					return nil, err
				}
				m.cfg.Log.Warn("undoing a merge", "merge", id, "step", "begun", "error", err)
				if err := m.advance(ctx, mg, placementpb.MergeStep_ABORTING, 0, "aborting"); err != nil {
					return nil, err
				}
				continue
			}
			if err := m.advance(ctx, mg, placementpb.MergeStep_FROZEN, f, "frozen-recorded"); err != nil {
				return nil, err
			}
		case placementpb.MergeStep_FROZEN:
			out, err := m.commit(ctx, l, r, mg)
			if errors.Is(err, errGiveUp) {
				m.cfg.Log.Warn("undoing a merge", "merge", id, "step", "frozen", "error", err)
				if err := m.advance(ctx, mg, placementpb.MergeStep_ABORTING, 0, "aborting"); err != nil {
					return nil, err
				}
				continue
			}
			if err != nil {
				return nil, err
			}
			if out.Aborted {
				// An abort applied in L first (a driver before this one).
				if err := m.advance(ctx, mg, placementpb.MergeStep_ABORTING, 0, "aborting"); err != nil {
					return nil, err
				}
				continue
			}
			m.cfg.Log.Info("merge committed in the left range", "merge", id, "left", mg.Left, "right", mg.Right)
			if m.crash("committed") {
				return nil, ErrCrashed
			}
			if err := m.record(ctx, mg); err != nil {
				return nil, err
			}
		case placementpb.MergeStep_COMMITTED:
			m.settle(ctx, l, mg)
			if err := m.end(ctx, mg, true); err != nil {
				return nil, err
			}
			m.cfg.Log.Info("merge done", "merge", id, "left", mg.Left, "right", mg.Right)
			if m.crash("ended") {
				return nil, ErrCrashed
			}
		case placementpb.MergeStep_ABORTING:
			out, err := m.abort(ctx, l, r, mg)
			if err != nil {
				return nil, err
			}
			if out.Committed {
				// The commit applied in L first: the map follows L's log.
				m.cfg.Log.Info("an aborting merge had committed in the left range", "merge", id)
				if err := m.record(ctx, mg); err != nil {
					return nil, err
				}
				continue
			}
			if err := m.end(ctx, mg, false); err != nil {
				return nil, err
			}
			m.cfg.Log.Info("merge undone", "merge", id, "left", mg.Left, "right", mg.Right)
		default:
			return nil, fmt.Errorf("placement: merge %d is at an unknown step %v", id, mg.Step)
		}
	}
}

// freeze checks that L's and R's raft groups are the map's, waits until
// every R replica applied what R's leader had (so that the wait after the
// freeze, while R serves nothing, is short), freezes R and waits until
// every R replica applied the freeze; it returns the freeze's index.
// errGiveUp if the ranges are not aligned, R does not freeze, or a
// replica does not catch up in time.
func (m *MergeDriver) freeze(ctx context.Context, l, r *placementpb.RangeDescriptor, mg *placementpb.Merge) (uint64, error) {
	for _, d := range []*placementpb.RangeDescriptor{l, r} {
		if err := m.aligned(ctx, d); err != nil {
			return 0, err
		}
	}
	target, err := m.leaderApplied(ctx, r)
	if err != nil {
		return 0, err
	}
	if err := m.allApplied(ctx, r, target); err != nil {
		return 0, err
	}
	var out MergeOutcome
	if err := m.patient(ctx, "freeze r"+fmt.Sprint(r.Id), func() (err error) {
		out, err = m.cfg.Ranges.Freeze(ctx, r, mg.Id, RangeID(l.Id))
		return err
	}); err != nil {
		return 0, err
	}
	if out.Aborted {
		return 0, fmt.Errorf("%w: r%d thawed merge %d already", errGiveUp, r.Id, mg.Id)
	}
	m.cfg.Log.Info("merge: right range frozen", "merge", mg.Id, "right", r.Id, "index", out.FreezeIndex)
	if m.crash("frozen") {
		return 0, ErrCrashed
	}
	if err := m.allApplied(ctx, r, out.FreezeIndex); err != nil {
		return 0, err
	}
	return out.FreezeIndex, nil
}

// aligned checks that raft's group of d is the map's: the replicas d
// names vote, and nothing else is in it. errGiveUp if not, or if the
// group does not answer in time.
func (m *MergeDriver) aligned(ctx context.Context, d *placementpb.RangeDescriptor) error {
	var ms RangeMembership
	if err := m.patient(ctx, fmt.Sprintf("r%d's membership", d.Id), func() (err error) {
		ms, err = m.cfg.Raft.Membership(ctx, d)
		return err
	}); err != nil {
		return err
	}
	var want []ReplicaID
	for _, p := range Pairs(d) {
		want = append(want, ReplicaID(p.Id))
	}
	slices.Sort(want)
	voters := slices.Sorted(slices.Values(ms.Voters))
	if len(ms.Learners) > 0 || !slices.Equal(want, voters) {
		return fmt.Errorf("%w: %w: raft's r%d has voters %v and learners %v, the map %v", errGiveUp, ErrNotAligned, d.Id, voters, ms.Learners, want)
	}
	return nil
}

// leaderApplied is what d's leader applied.
func (m *MergeDriver) leaderApplied(ctx context.Context, d *placementpb.RangeDescriptor) (uint64, error) {
	var applied uint64
	err := m.patient(ctx, fmt.Sprintf("r%d's leader's index", d.Id), func() error {
		ms, err := m.cfg.Raft.Membership(ctx, d)
		if err != nil {
			return err
		}
		leader, ok := MemberOf(d, ms.Leader)
		if !ok {
			return fmt.Errorf("placement: range %d has no leader the map names", d.Id)
		}
		st, err := m.cfg.Raft.Status(ctx, leader, d)
		applied = st.Applied
		return err
	})
	return applied, err
}

// allApplied waits until every replica d names applied index. errGiveUp
// after Patience looks.
func (m *MergeDriver) allApplied(ctx context.Context, d *placementpb.RangeDescriptor, index uint64) error {
	for _, p := range Pairs(d) {
		err := m.patient(ctx, fmt.Sprintf("r%d's replica on member %x at index %d", d.Id, p.Member, index), func() error {
			st, err := m.cfg.Raft.Status(ctx, NodeID(p.Member), d)
			if err != nil {
				return err
			}
			if st.Replica != ReplicaID(p.Id) || st.Applied < index {
				return fmt.Errorf("replica %d at index %d", st.Replica, st.Applied)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// commit has L's log absorb R (the map's FROZEN says every R replica
// applied the freeze). errGiveUp if L refuses it as stale or does not
// answer in time: the abort that follows asks L's log what it decided.
func (m *MergeDriver) commit(ctx context.Context, l, r *placementpb.RangeDescriptor, mg *placementpb.Merge) (MergeOutcome, error) {
	gen := max(mg.LeftGeneration, mg.RightGeneration) + 1
	var out MergeOutcome
	err := m.patient(ctx, fmt.Sprintf("commit in r%d", l.Id), func() (err error) {
		out, err = m.cfg.Ranges.Commit(ctx, l, r, mg.Id, gen)
		return err
	})
	return out, err
}

// record has the map follow L's log: L takes R's span.
func (m *MergeDriver) record(ctx context.Context, mg *placementpb.Merge) error {
	if _, _, err := m.cfg.Map.CommitMerge(ctx, mg.Id); err != nil {
		return err
	}
	m.cfg.Log.Info("merge recorded in the map", "merge", mg.Id)
	if m.crash("recorded") {
		return ErrCrashed
	}
	return nil
}

// settle waits (Patience looks at most: the merge is done either way)
// until every L replica applied what L's leader has, and has each snapshot
// and drop its log past it, so that a replica of L added later starts from
// a snapshot that holds the merge, never replaying the commit on a member
// without R's records (plan §11). Best effort: a replica that lags
// replays the commit over its own R, which the freeze left on it.
func (m *MergeDriver) settle(ctx context.Context, l *placementpb.RangeDescriptor, mg *placementpb.Merge) {
	target, err := m.leaderApplied(ctx, l)
	if err == nil {
		err = m.allApplied(ctx, l, target)
	}
	if err != nil {
		m.cfg.Log.Warn("merge: not every left replica applied the commit; ending it anyway", "merge", mg.Id, "error", err)
	}
	for _, p := range Pairs(l) {
		if err := m.tries(ctx, 3, func() error { return m.cfg.Raft.CompactLog(ctx, NodeID(p.Member), l) }); err != nil {
			m.cfg.Log.Warn("merge: a left replica did not snapshot past the commit", "merge", mg.Id, "member", p.Member, "error", err)
		}
	}
}

// abort has L's log record the abort (the answer may be committed: then
// nothing more is done here) and R's log thaw R.
func (m *MergeDriver) abort(ctx context.Context, l, r *placementpb.RangeDescriptor, mg *placementpb.Merge) (MergeOutcome, error) {
	var out MergeOutcome
	if err := m.retry(ctx, func() (err error) {
		out, err = m.cfg.Ranges.Abort(ctx, l, mg.Id)
		return err
	}); err != nil {
		return out, err
	}
	if out.Committed {
		return out, nil
	}
	m.cfg.Log.Info("merge: abort recorded in the left range", "merge", mg.Id)
	if m.crash("aborted") {
		return out, ErrCrashed
	}
	if r != nil {
		if err := m.retry(ctx, func() error {
			_, err := m.cfg.Ranges.Thaw(ctx, r, mg.Id)
			return err
		}); err != nil {
			return out, err
		}
		m.cfg.Log.Info("merge: right range thawed", "merge", mg.Id, "right", r.Id)
		if m.crash("thawed") {
			return out, ErrCrashed
		}
	}
	return out, nil
}

// advance records mg at step, then stops if the test crash says so.
func (m *MergeDriver) advance(ctx context.Context, mg *placementpb.Merge, step placementpb.MergeStep, freezeIndex uint64, stop string) error {
	if _, err := m.cfg.Map.AdvanceMerge(ctx, mg.Id, mg.Step, step, freezeIndex); err != nil {
		return err
	}
	if m.crash(stop) {
		return ErrCrashed
	}
	return nil
}

// end closes mg in the map; a try whose answer was lost finds it closed
// (ErrNoMerge), which drive's next look tells apart.
func (m *MergeDriver) end(ctx context.Context, mg *placementpb.Merge, done bool) error {
	if err := m.cfg.Map.EndMerge(ctx, mg.Id, done); err != nil && !errors.Is(err, ErrNoMerge) {
		return err
	}
	return nil
}

// patient calls f until it succeeds, at most Patience times: errGiveUp
// with what was waited for and f's last failure after that.
func (m *MergeDriver) patient(ctx context.Context, what string, f func() error) error {
	var last error
	for i := range m.cfg.Patience {
		if last = f(); last == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		if i < m.cfg.Patience-1 {
			if err := m.pause(ctx, last); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w (last: %w)", err, last)
	}
	return fmt.Errorf("%w: %s (%d tries; last: %w)", errGiveUp, what, m.cfg.Patience, last)
}

// retry calls f until it succeeds or ctx ends.
func (m *MergeDriver) retry(ctx context.Context, f func() error) error {
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

func (m *MergeDriver) tries(ctx context.Context, n int, f func() error) error {
	return triesEvery(ctx, m.cfg.Poll, n, f)
}

func (m *MergeDriver) pause(ctx context.Context, cause error) error {
	return pauseFor(ctx, m.cfg.Poll, cause)
}

func (m *MergeDriver) crash(step string) bool { return m.cfg.Crash != nil && m.cfg.Crash(step) }

// mergeIn returns the open merge id of st, nil if none.
func mergeIn(st *placementpb.State, id uint64) *placementpb.Merge {
	for _, mg := range st.Merges {
		if mg.Id == id {
			return mg
		}
	}
	return nil
}

// mergedIn returns range r's tombstone in st: the range it was merged
// into.
func mergedIn(st *placementpb.State, r RangeID) (RangeID, bool) {
	for _, t := range st.Merged {
		if t.Range == uint64(r) {
			return RangeID(t.Into), true
		}
	}
	return 0, false
}
