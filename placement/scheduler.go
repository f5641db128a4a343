package placement

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// The scheduler (issue 22) decides how the range map should change so that
// ranges stay small and cool and their replicas and leaders spread evenly
// over the members: it reads one report of the cluster and returns the
// operations to start, best first. It does nothing itself and holds no
// clock, no randomness and no goroutine: Plan is a function of the report,
// the configuration and the load history of the reports before (how many
// windows in a row each range was hot), so that its rules are tested as
// scripts (testdata/scheduler): a cluster in, operations out.
//
// # Input: a ClusterReport, one per round (one load window)
//
//   - per range (RangeReport): id, generation, [start, end), replicas as
//     (member, replica id, learner) pairs, leader member, size in bytes,
//     keys, writes/s and reads/s over the window, a middle key (about half
//     its bytes on each side) and a load key (about half its load on each
//     side) computed by the member that leads it, and whether a move or a
//     split of it is open (and the open move's members).
//   - per member (MemberReport): id, heartbeat age (how long since the
//     placement leader last heard of it), disk bytes, and whether it is
//     being removed (draining). A member's replica and leader counts are
//     counted from the ranges, so that they always agree with the map.
//
// A member is live while its heartbeat age is within SuspectAfter, dead
// once it passes MemberDownTimeout, suspect between: a suspect member
// neither receives replicas nor has its replicas replaced. A member a
// range names but the report does not list counts as suspect.
//
// # Configuration: SchedulerConfig (zero fields take the defaults)
//
// RangeMaxBytes (64 MiB) and RangeMinBytes (16 MiB; negative: no merges),
// SplitLoad (writes+reads/s, 2000) and SplitLoadWindows (3), MergeMaxLoad
// (500/s), SuspectAfter (10s), MemberDownTimeout (5m) and
// MaxMovesPerMember (2). There is no replica count: every rule keeps a
// range's count as it is (a move adds one replica and removes one); a
// range with fewer replicas than --range-replicas is filled when a member
// joins (Membership), not here.
//
// # Output: operations (Op), in priority order
//
//	recreate r from dead to m   replace the replica on a dead member (a move whose source is down)
//	split r at k                split by size (middle key) or by sustained load (load key)
//	move r from a to b          drain a removed member, balance replica counts, or colocate a merge
//	transfer-leader r to m      balance leader counts
//	merge l r                   merge adjacent small cold ranges with the same replicas
//
// # Rules, applied in this order to a plan of the round
//
// Each rule sees the changes the rules before it planned (replica counts,
// moves per member); a range gets at most one operation per round, and a
// range with a move or split open gets none.
//
//  1. Dead members: each range with a replica on a dead member, whose
//     voters not on dead members are still a majority, gets it re-created
//     on a target (below).
//  2. Drain: each range with a replica on a live member being removed gets
//     it moved to a target. A draining member receives nothing, from any
//     rule.
//  3. Splits: a range above RangeMaxBytes splits at its middle key; else a
//     range whose load was above SplitLoad for SplitLoadWindows reports in
//     a row (of the same generation: a split or merge starts the count
//     again) splits at its load key. A key not strictly inside the range
//     is ignored.
//  4. Replica balance, among live members not draining: while the member
//     with the most replicas has two more than one with fewer, move one of
//     its ranges (the smallest, then the lowest id, whose replicas are all
//     on live members and which is not about to merge) to that member,
//     the one with the fewest replicas first (then the least disk, then
//     the lowest id). Ranges about to merge are left alone so that balance
//     does not undo what rule 6 colocated (they would move back and forth).
//  5. Leader balance, among the same members: while a member leads two
//     more ranges than another that holds a voter of one of them, transfer
//     the leadership of that range (in key order).
//  6. Merges: two adjacent ranges whose combined size is under
//     RangeMinBytes (at most RangeMaxBytes/2) and combined load under
//     MergeMaxLoad (at most SplitLoad/2) merge if their
//     voters are on the same members (and neither has learners); else one
//     of the right range's replicas moves to a member of the left's. A
//     merge its executor refused (Scheduler.Refuse) is neither planned
//     nor colocated for again while both ranges keep their generations.
//
// A target for a replica is a live member not draining and not holding
// the range, with the fewest replicas, then the least disk, then the
// lowest id. Throttle: a move counts against both its members, and no
// member takes part in more than MaxMovesPerMember moves, open ones
// included; a dead source does not count (it does no work).
//
// Ties are broken by ids or key order everywhere, never by the order of
// the report, so the same report (and history) gives the same operations.
//
// Known limits of this first slice: balance does not weigh size or load
// (disk only breaks ties); a colocating move goes to the left range's
// members in id order, whatever their counts; leaders are not moved off
// a draining member before its moves (the Mover does it when it moves a
// leader's replica); each balance step scans the ranges (members² ×
// ranges per operation), to be indexed before thousands of ranges.
//
// # Wiring
//
// node/scheduler.go wires this in (Config.PlacementScheduler, off by
// default): members answer the placement leader's member's ChangeRange
// STATS questions rather than pushing reports, the heartbeat age is the
// time since a member last answered, middle keys halve a range's live
// keys, load keys are the sampled request keys' divide on the member that
// answers (its leader, normally: reads served elsewhere are not added),
// merges run through MergeDriver (a merge open in the map makes both its
// ranges Merging; a merge the node refuses is passed to Refuse), and no
// round runs while a member is added or removed (Membership drains).
// What follows was the plan.
//
//   - Every member reports, every window (say 10s), for each range it
//     leads: size and keys (pebble's estimate over the span), writes and
//     reads counted by the shard over the window, the middle and load keys
//     (the load key from a sample of the window's request keys), and for
//     itself its disk use. It sends the report to the placement leader's
//     member over the internal service; the heartbeat age is the time
//     since that member last received a report.
//   - The loop runs on the placement leader's member (leadsPlacement in
//     node/move.go), one round per window: read the map (State: descriptors,
//     open moves, splits), join the latest reports, Plan, then start the
//     operations without waiting for one before the next, each guarded by
//     the range's generation: recreate and move through Mover.Move(r, from,
//     to) (for recreate, Mover.add passes over a source that does not
//     snapshot, as leave passes over it), split through the Splitter (router.Splitter.SplitRange at the
//     key), transfer-leader through Node.TransferRangeLeader, merge once
//     the shard has it. A new placement leader starts with an empty
//     history (load splits wait SplitLoadWindows again).
//   - Member remove's drain (Membership.drain) and this drain rule must not
//     both run: one of them goes.

// Scheduler defaults.
const (
	DefaultRangeMaxBytes     = 64 << 20
	DefaultRangeMinBytes     = 16 << 20
	DefaultSplitLoad         = 2000
	DefaultSplitLoadWindows  = 3
	DefaultMergeMaxLoad      = 500
	DefaultSuspectAfter      = 10 * time.Second
	DefaultMemberDownTimeout = 5 * time.Minute
	DefaultMaxMovesPerMember = 2
)

// SchedulerConfig sets the scheduler's thresholds; a zero field takes its
// default.
type SchedulerConfig struct {
	// RangeMaxBytes: a range larger splits at its middle key.
	RangeMaxBytes int64
	// RangeMinBytes: two adjacent ranges smaller together merge, if cold.
	// Negative: never merge. Above RangeMaxBytes/2 it counts as that, so
	// that a merged range is never split again at once (with a tiny
	// RangeMaxBytes, as tests set it, the two would flap).
	RangeMinBytes int64
	// SplitLoad (writes+reads per second): a range above it for
	// SplitLoadWindows reports in a row splits at its load key.
	SplitLoad        int64
	SplitLoadWindows int
	// MergeMaxLoad (writes+reads per second): two ranges merge only if
	// their combined load is under it, and under SplitLoad/2 (else the
	// merged range would split by load again).
	MergeMaxLoad int64
	// SuspectAfter and MemberDownTimeout: a member whose heartbeat age is
	// above SuspectAfter receives nothing; above MemberDownTimeout its
	// replicas are re-created elsewhere.
	SuspectAfter      time.Duration
	MemberDownTimeout time.Duration
	// MaxMovesPerMember bounds the moves, open and planned, that a member
	// takes part in.
	MaxMovesPerMember int
}

func (c SchedulerConfig) withDefaults() SchedulerConfig {
	def := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.RangeMaxBytes, DefaultRangeMaxBytes)
	def(&c.RangeMinBytes, DefaultRangeMinBytes)
	def(&c.SplitLoad, DefaultSplitLoad)
	def(&c.MergeMaxLoad, DefaultMergeMaxLoad)
	if c.SplitLoadWindows == 0 {
		c.SplitLoadWindows = DefaultSplitLoadWindows
	}
	if c.SuspectAfter == 0 {
		c.SuspectAfter = DefaultSuspectAfter
	}
	if c.MemberDownTimeout == 0 {
		c.MemberDownTimeout = DefaultMemberDownTimeout
	}
	if c.MaxMovesPerMember == 0 {
		c.MaxMovesPerMember = DefaultMaxMovesPerMember
	}
	return c
}

// ClusterReport is what one round of the scheduler decides from.
// Invariant: range ids and member ids are unique.
type ClusterReport struct {
	Members []MemberReport
	Ranges  []RangeReport
}

// MemberReport is one member as the placement leader sees it.
type MemberReport struct {
	ID NodeID
	// HeartbeatAge is how long ago the placement leader last heard of the
	// member.
	HeartbeatAge time.Duration
	DiskBytes    int64
	// Removing: the member is being removed (it drains).
	Removing bool
}

// RangeReport is one range: its descriptor's facts and its leader's
// report of the last window.
type RangeReport struct {
	ID         RangeID
	Generation uint64
	Start, End []byte // End empty: the end of the key space
	Replicas   []*placementpb.Replica
	Leader     NodeID // 0: unknown
	Bytes      int64
	Keys       int64 // shown to operators; no rule reads it yet
	// Writes and Reads are per second over the window.
	Writes, Reads int64
	// MiddleKey divides the range's bytes about in half, LoadKey its load
	// (empty: unknown).
	MiddleKey, LoadKey []byte
	// MoveFrom and MoveTo are the members of the range's open move (0: no
	// move open); Splitting, a split of it is under way.
	MoveFrom, MoveTo NodeID
	Splitting        bool
	// Merging: a merge of it is open (the map refuses it every other
	// operation meanwhile).
	Merging bool
}

// OpKind names what an operation does.
type OpKind uint8

// The operations, in priority order.
const (
	OpRecreate OpKind = iota + 1
	OpSplit
	OpMove
	OpTransferLeader
	OpMerge
)

// Op is one operation the scheduler asks for. Generation is the range's
// generation in the report: its executor refuses the op if the range
// changed since.
type Op struct {
	Kind       OpKind
	Range      RangeID
	Generation uint64
	// Key is where OpSplit splits.
	Key []byte
	// From is the member a replica leaves (OpRecreate: the dead member;
	// OpTransferLeader: the leader now); To, the member that receives the
	// replica or (OpTransferLeader) the leadership.
	From, To NodeID
	// Right is OpMerge's right range (Range is its left).
	Right           RangeID
	RightGeneration uint64
	// Reason says which rule asked: size or load (OpSplit), drain,
	// replicas or merge (OpMove).
	Reason string
}

func (o Op) String() string {
	switch o.Kind {
	case OpRecreate:
		return fmt.Sprintf("recreate r%d from %d to %d", o.Range, o.From, o.To)
	case OpSplit:
		return fmt.Sprintf("split r%d at %q (%s)", o.Range, o.Key, o.Reason)
	case OpMove:
		return fmt.Sprintf("move r%d from %d to %d (%s)", o.Range, o.From, o.To, o.Reason)
	case OpTransferLeader:
		return fmt.Sprintf("transfer-leader r%d to %d", o.Range, o.To)
	case OpMerge:
		return fmt.Sprintf("merge r%d r%d", o.Range, o.Right)
	}
	return fmt.Sprintf("op %d on r%d", o.Kind, o.Range)
}

// Scheduler plans rounds. It keeps, between rounds, only the load history
// (how many reports in a row each range was hot; a split or merge, a new
// generation, starts it again) and the merges refused (Refuse). It is not
// safe for concurrent use.
type Scheduler struct {
	cfg     SchedulerConfig
	hot     map[RangeID]hotRun
	refused map[mergePair]bool
}

// mergePair is a merge of two ranges at their generations: a refusal
// (Refuse) holds until either range splits or merges, or goes.
type mergePair struct {
	left, right       RangeID
	leftGen, rightGen uint64
}

// hotRun is a range's run of hot reports: windows in a row above
// SplitLoad at generation gen.
type hotRun struct {
	gen     uint64
	windows int
}

// NewScheduler returns a scheduler with no history.
func NewScheduler(cfg SchedulerConfig) *Scheduler {
	return &Scheduler{cfg: cfg.withDefaults(), hot: map[RangeID]hotRun{}, refused: map[mergePair]bool{}}
}

// Refuse records that op, a merge, was refused for a reason that will not
// pass by itself (its executor cannot merge these two ranges as they
// are): later rounds neither plan it nor colocate the two ranges for it,
// until either range's generation changes (a split or a merge) or it
// goes. A merge that failed for a passing reason (a member down, a
// timeout) is not refused: the next round plans it again.
func (s *Scheduler) Refuse(op Op) {
	if op.Kind != OpMerge {
		return
	}
	s.refused[mergePair{op.Range, op.Right, op.Generation, op.RightGeneration}] = true
}

// Config returns the scheduler's configuration, defaults filled in.
func (s *Scheduler) Config() SchedulerConfig { return s.cfg }

// Plan takes one report (one window) into the load history and returns
// the operations to start, best first. It does not change rep.
func (s *Scheduler) Plan(rep ClusterReport) []Op {
	s.observe(rep.Ranges)
	p := newPlan(s.cfg, rep, s.hot, s.refused)
	p.markMerging()
	p.recreate()
	p.drain()
	p.split()
	p.balanceReplicas()
	p.balanceLeaders()
	p.merge()
	return p.ops
}

// observe counts each range's hot windows in a row; a range not hot, gone,
// or at a new generation (a split or merge of it) starts again. Refusals
// of merges whose ranges are gone or at a new generation are forgotten.
func (s *Scheduler) observe(ranges []RangeReport) {
	next := make(map[RangeID]hotRun, len(s.hot))
	gens := make(map[RangeID]uint64, len(ranges))
	for i := range ranges {
		gens[ranges[i].ID] = ranges[i].Generation
	}
	for k := range s.refused {
		if lg, ok := gens[k.left]; !ok || lg != k.leftGen {
			delete(s.refused, k)
		} else if rg, ok := gens[k.right]; !ok || rg != k.rightGen {
			delete(s.refused, k)
		}
	}
	for i := range ranges {
		r := &ranges[i]
		if r.Writes+r.Reads <= s.cfg.SplitLoad {
			continue
		}
		run := hotRun{gen: r.Generation, windows: 1}
		if prev, ok := s.hot[r.ID]; ok && prev.gen == r.Generation {
			run.windows = prev.windows + 1
		}
		next[r.ID] = run
	}
	s.hot = next
}

type liveness uint8

const (
	live liveness = iota
	suspect
	dead
)

// plan is one round in the making: the report as the operations planned
// so far change it.
type plan struct {
	cfg     SchedulerConfig
	hot     map[RangeID]hotRun
	refused map[mergePair]bool
	members map[NodeID]*memberPlan
	ids     []NodeID     // the reported members, by id
	ranges  []*rangePlan // by start key, then id
	ops     []Op
}

type memberPlan struct {
	id       NodeID
	state    liveness
	disk     int64
	removing bool
	replicas int // replicas it holds, planned moves included
	leaders  int // ranges it leads, planned transfers included
	moves    int // open and planned moves it takes part in
}

type rangePlan struct {
	r       *RangeReport
	members []NodeID // the members holding a replica, planned moves included
	touched bool     // an operation is planned for it
	merging bool     // it should merge with a neighbour (markMerging)
}

func newPlan(cfg SchedulerConfig, rep ClusterReport, hot map[RangeID]hotRun, refused map[mergePair]bool) *plan {
	p := &plan{cfg: cfg, hot: hot, refused: refused, members: map[NodeID]*memberPlan{}}
	for _, m := range rep.Members {
		st := live
		switch {
		case m.HeartbeatAge > cfg.MemberDownTimeout:
			st = dead
		case m.HeartbeatAge > cfg.SuspectAfter:
			st = suspect
		}
		p.members[m.ID] = &memberPlan{id: m.ID, state: st, disk: m.DiskBytes, removing: m.Removing}
		p.ids = append(p.ids, m.ID)
	}
	slices.Sort(p.ids)
	for i := range rep.Ranges {
		r := &rep.Ranges[i]
		rp := &rangePlan{r: r}
		for _, rr := range r.Replicas {
			m := NodeID(rr.Member)
			rp.members = append(rp.members, m)
			p.member(m).replicas++
		}
		if r.Leader != 0 && rp.votes(r.Leader) {
			p.member(r.Leader).leaders++
		}
		for _, m := range []NodeID{r.MoveFrom, r.MoveTo} {
			if m != 0 {
				p.member(m).moves++
			}
		}
		p.ranges = append(p.ranges, rp)
	}
	slices.SortFunc(p.ranges, func(a, b *rangePlan) int {
		if c := bytes.Compare(a.r.Start, b.r.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.r.ID, b.r.ID)
	})
	return p
}

// member returns m's plan; a member the report does not list is suspect.
func (p *plan) member(m NodeID) *memberPlan {
	mp := p.members[m]
	if mp == nil {
		mp = &memberPlan{id: m, state: suspect}
		p.members[m] = mp
	}
	return mp
}

// votes reports whether m holds a voter of the range in the report.
func (rp *rangePlan) votes(m NodeID) bool {
	for _, rr := range rp.r.Replicas {
		if NodeID(rr.Member) == m && !rr.Learner {
			return true
		}
	}
	return false
}

func (rp *rangePlan) holds(m NodeID) bool { return slices.Contains(rp.members, m) }

func (rp *rangePlan) busy() bool {
	return rp.r.MoveFrom != 0 || rp.r.MoveTo != 0 || rp.r.Splitting || rp.r.Merging
}

// free reports whether an operation may be planned for the range.
func (rp *rangePlan) free() bool { return !rp.busy() && !rp.touched }

// healthy reports whether every replica of the range is on a live member.
func (p *plan) healthy(rp *rangePlan) bool {
	for _, m := range rp.members {
		if p.member(m).state != live {
			return false
		}
	}
	return true
}

// receives reports whether m may receive replicas or leadership.
func (mp *memberPlan) receives() bool { return mp.state == live && !mp.removing }

// canMove reports whether a move from one member to another fits the
// throttle.
func (p *plan) canMove(from, to NodeID) bool {
	f, t := p.member(from), p.member(to)
	return (f.state == dead || f.moves < p.cfg.MaxMovesPerMember) && t.moves < p.cfg.MaxMovesPerMember
}

// target returns the member that should receive rp's replica on from (0:
// none may).
func (p *plan) target(rp *rangePlan, from NodeID) NodeID {
	var best *memberPlan
	for _, id := range p.ids {
		m := p.members[id]
		if !m.receives() || rp.holds(id) || !p.canMove(from, id) {
			continue
		}
		if best == nil || fewerReplicas(m, best) {
			best = m
		}
	}
	if best == nil {
		return 0
	}
	return best.id
}

// fewerReplicas orders members by replicas, then disk, then id.
func fewerReplicas(a, b *memberPlan) bool {
	if a.replicas != b.replicas {
		return a.replicas < b.replicas
	}
	if a.disk != b.disk {
		return a.disk < b.disk
	}
	return a.id < b.id
}

// move plans a move of rp's replica on from to to.
func (p *plan) move(kind OpKind, rp *rangePlan, from, to NodeID, reason string) {
	p.ops = append(p.ops, Op{Kind: kind, Range: rp.r.ID, Generation: rp.r.Generation, From: from, To: to, Reason: reason})
	rp.members[slices.Index(rp.members, from)] = to
	rp.touched = true
	f, t := p.member(from), p.member(to)
	f.replicas--
	t.replicas++
	f.moves++
	t.moves++
}

// recreate: rule 1.
func (p *plan) recreate() {
	for _, rp := range p.ranges {
		if !rp.free() {
			continue
		}
		var down []NodeID
		voters, up := 0, 0
		for _, rr := range rp.r.Replicas {
			m := NodeID(rr.Member)
			isDead := p.member(m).state == dead
			if isDead {
				down = append(down, m)
			}
			if !rr.Learner {
				voters++
				if !isDead {
					up++
				}
			}
		}
		if len(down) == 0 || 2*up <= voters {
			continue // nothing to do, or the group lost its quorum: no move can succeed
		}
		slices.Sort(down)
		if to := p.target(rp, down[0]); to != 0 {
			p.move(OpRecreate, rp, down[0], to, "dead")
		}
	}
}

// drain: rule 2.
func (p *plan) drain() {
	for _, rp := range p.ranges {
		if !rp.free() || !p.healthy(rp) {
			continue
		}
		for _, m := range slices.Sorted(slices.Values(rp.members)) {
			if !p.member(m).removing {
				continue
			}
			if to := p.target(rp, m); to != 0 {
				p.move(OpMove, rp, m, to, "drain")
				break
			}
		}
	}
}

// inside reports whether key splits r: strictly inside its span.
func inside(r *RangeReport, key []byte) bool {
	return len(key) > 0 && bytes.Compare(key, r.Start) > 0 && (len(r.End) == 0 || bytes.Compare(key, r.End) < 0)
}

// split: rule 3.
func (p *plan) split() {
	for _, rp := range p.ranges {
		if !rp.free() {
			continue
		}
		r := rp.r
		var key []byte
		var reason string
		switch {
		case r.Bytes > p.cfg.RangeMaxBytes && inside(r, r.MiddleKey):
			key, reason = r.MiddleKey, "size"
		case p.hot[r.ID].windows >= p.cfg.SplitLoadWindows && inside(r, r.LoadKey):
			key, reason = r.LoadKey, "load"
		default:
			continue
		}
		p.ops = append(p.ops, Op{Kind: OpSplit, Range: r.ID, Generation: r.Generation, Key: key, Reason: reason})
		rp.touched = true
	}
}

// balanced returns the members that take part in balance (live, not
// draining), by id.
func (p *plan) balanced() []*memberPlan {
	var out []*memberPlan
	for _, id := range p.ids {
		if m := p.members[id]; m.receives() {
			out = append(out, m)
		}
	}
	return out
}

// balanceReplicas: rule 4.
func (p *plan) balanceReplicas() {
	ms := p.balanced()
	for p.moveOne(ms) {
	}
}

// moveOne plans one move from a member with more replicas to one with at
// least two fewer, and reports whether it found one.
func (p *plan) moveOne(ms []*memberPlan) bool {
	srcs := slices.Clone(ms)
	slices.SortStableFunc(srcs, func(a, b *memberPlan) int { return cmp.Compare(b.replicas, a.replicas) })
	dsts := slices.Clone(ms)
	slices.SortStableFunc(dsts, func(a, b *memberPlan) int {
		if fewerReplicas(a, b) {
			return -1
		}
		if fewerReplicas(b, a) {
			return 1
		}
		return 0
	})
	for _, src := range srcs {
		for _, dst := range dsts {
			if src.replicas-dst.replicas <= 1 {
				break
			}
			if !p.canMove(src.id, dst.id) {
				continue
			}
			var pick *rangePlan
			for _, rp := range p.ranges {
				if !rp.free() || rp.merging || !rp.votes(src.id) || rp.holds(dst.id) || !p.healthy(rp) {
					continue
				}
				if pick == nil || rp.r.Bytes < pick.r.Bytes || rp.r.Bytes == pick.r.Bytes && rp.r.ID < pick.r.ID {
					pick = rp
				}
			}
			if pick != nil {
				p.move(OpMove, pick, src.id, dst.id, "replicas")
				return true
			}
		}
	}
	return false
}

// balanceLeaders: rule 5.
func (p *plan) balanceLeaders() {
	ms := p.balanced()
	for p.transferOne(ms) {
	}
}

// transferOne plans one leadership transfer from a member to one leading
// at least two fewer ranges, and reports whether it found one.
func (p *plan) transferOne(ms []*memberPlan) bool {
	srcs := slices.Clone(ms)
	slices.SortStableFunc(srcs, func(a, b *memberPlan) int { return cmp.Compare(b.leaders, a.leaders) })
	dsts := slices.Clone(ms)
	slices.SortStableFunc(dsts, func(a, b *memberPlan) int { return cmp.Compare(a.leaders, b.leaders) })
	for _, src := range srcs {
		for _, dst := range dsts {
			if src.leaders-dst.leaders <= 1 {
				break
			}
			for _, rp := range p.ranges {
				if rp.free() && rp.r.Leader == src.id && rp.votes(dst.id) {
					p.ops = append(p.ops, Op{Kind: OpTransferLeader, Range: rp.r.ID, Generation: rp.r.Generation, From: src.id, To: dst.id})
					rp.touched = true
					src.leaders--
					dst.leaders++
					return true
				}
			}
		}
	}
	return false
}

// merge: rule 6.
func (p *plan) merge() {
	for i := 0; i+1 < len(p.ranges); i++ {
		l, r := p.ranges[i], p.ranges[i+1]
		if !l.free() || !r.free() || !p.mergeable(l, r) {
			continue
		}
		lv, _ := voterSet(l.r)
		rv, _ := voterSet(r.r)
		if slices.Equal(lv, rv) {
			p.ops = append(p.ops, Op{Kind: OpMerge, Range: l.r.ID, Generation: l.r.Generation,
				Right: r.r.ID, RightGeneration: r.r.Generation})
			l.touched, r.touched = true, true
			i++
			continue
		}
		if p.colocate(l, r, lv, rv) {
			i++
		}
	}
}

// mergeable reports whether l and r (l just before r) should merge:
// adjacent, small and cold together, their replicas all on live members
// and none a learner, and their merge not refused (Scheduler.Refuse).
func (p *plan) mergeable(l, r *rangePlan) bool {
	if p.cfg.RangeMinBytes < 0 || len(l.r.End) == 0 || !bytes.Equal(l.r.End, r.r.Start) ||
		p.refused[mergePair{l.r.ID, r.r.ID, l.r.Generation, r.r.Generation}] ||
		l.r.Bytes+r.r.Bytes >= min(p.cfg.RangeMinBytes, p.cfg.RangeMaxBytes/2) ||
		l.r.Writes+l.r.Reads+r.r.Writes+r.r.Reads >= min(p.cfg.MergeMaxLoad, p.cfg.SplitLoad/2) ||
		!p.healthy(l) || !p.healthy(r) {
		return false
	}
	_, lok := voterSet(l.r)
	_, rok := voterSet(r.r)
	return lok && rok
}

// markMerging marks the ranges that should merge with a neighbour, before
// any rule plans: replica balance leaves them alone, so that it does not
// undo what colocating them did.
func (p *plan) markMerging() {
	for i := 0; i+1 < len(p.ranges); i++ {
		if l, r := p.ranges[i], p.ranges[i+1]; p.mergeable(l, r) {
			l.merging, r.merging = true, true
		}
	}
}

// colocate plans a move of one of r's replicas to a member of l's, so
// that the two can merge later.
func (p *plan) colocate(l, r *rangePlan, lv, rv []NodeID) bool {
	for _, from := range rv {
		if slices.Contains(lv, from) {
			continue
		}
		for _, to := range lv {
			if slices.Contains(rv, to) || !p.member(to).receives() || !p.canMove(from, to) {
				continue
			}
			p.move(OpMove, r, from, to, fmt.Sprintf("merge r%d", l.r.ID))
			l.touched = true
			return true
		}
	}
	return false
}

// voterSet returns the members of r's voters, sorted, and false if r has
// a learner.
func voterSet(r *RangeReport) ([]NodeID, bool) {
	var out []NodeID
	for _, rr := range r.Replicas {
		if rr.Learner {
			return nil, false
		}
		out = append(out, NodeID(rr.Member))
	}
	slices.Sort(out)
	return out, true
}
