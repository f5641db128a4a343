package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// The placement scheduler's loop (issue 22; placement/scheduler.go decides,
// this file gathers and executes), on when Config.PlacementScheduler says
// so (sharded mode). While this member's placement replica leads its
// group, every SchedulerWindow it:
//
//   - reads the range map (descriptors, open moves, the member being
//     added or removed);
//   - asks every member, side by side, for its figures in one call
//     (RangeStats, served in schedstats.go: one call per member a round,
//     however many ranges it holds): its disk use, and for every range it
//     holds its replica, the leader raft names, the range's generation,
//     size and keys, and writes and reads per second as its range stats
//     last computed them (over their last 15 s window); for a range above
//     RangeMaxBytes that it leads, its middle key (about half of the
//     range's bytes on disk before it: mvcc.Store.MiddleKey), and for one
//     whose writes+reads per second are above SplitLoad, its load key
//     (shard.LoadKey: about half of the window's requests, by a sample of
//     their keys, before it). A member's heartbeat age is the time since
//     it last answered (since the loop first saw it, if never);
//   - takes each range's figures from its leader's answer (raft's leader
//     as the holder says, at the map's generation if one is), else from
//     another holder's. A member that answers RangeStats Unimplemented
//     (it predates the call: mixed versions during an upgrade) is asked
//     its disk use and, for the ranges no leader's answer covers, each
//     range's figures by ChangeRange STATS, one call a range, as before;
//   - plans (placement.Scheduler.Plan) and runs the round's operations
//     side by side, waiting for them all before the next round: move and
//     recreate through the Mover, transfer-leader through
//     TransferRangeLeader, split through the node-to-node SplitRange on a
//     member holding the range, merge through the MergeDriver (mergeOp).
//
// Merges: the scheduler plans one for two adjacent ranges smaller together
// than Config.RangeMinBytes (0: placement's default; negative: no merges)
// and cold, once their voters are on the same members (it moves the right
// range's replicas over first). The map's open merges make both their
// ranges Merging in the report (busy: no rule plans for them). Before each
// round, and when the node refuses one, a merge this member cannot run is
// passed to Scheduler.Refuse, so it is not planned (nor colocated for)
// again until either range splits or merges: today that is a right range
// made by the bootstrap (--initial-split-keys) and never split (see
// refuseUnrecorded). A merge undone (a member down past the driver's
// patience) or failed is planned again next round. Each merge the
// scheduler starts is counted in cairn_range_merges_total{outcome}
// (merged, undone, refused, failed). A merged range is at a new
// generation: its load history starts again, as after a split.
//
// Splits by load: the shard's replica client counts the writes it
// proposes and the reads (Range, read-only Txn) it serves, and samples
// their keys (shard/load.go); the range stats turn counts and sample into
// rates and a load key every window. A window in which the range split or
// merged reports no load (its figures describe another span), so a
// parent just split is not hot again before a window that began after
// the split ends.
//
// Known gaps of this slice: merges ask no question of their own (the
// range sizes are those of the split rule, and a range just emptied looks
// as large as pebble's tables still are until they compact); the middle key
// counts the bytes pebble has in its tables, not writes still in the
// memtable (nor does the size that decides a split); a range's load is
// what the member whose figures are taken served (its leader's, as a rule): writes all go
// through the leader, but reads served by replicas on other members (a
// member holding a replica reads it locally) are not added, so a range
// whose reads spread over its replicas looks cooler than it is, and its
// load key is the leader's sample's. The stats window (15 s) is not the
// scheduler's: with a shorter SchedulerWindow one hot stats window counts
// for several of the scheduler's. While a member is being added or
// removed (the map's reconfiguring mark) no round runs: member remove
// drains the member itself (placement.Membership), so the scheduler's
// drain rule never fires here (no member is reported Removing), and a
// member joining gets nothing before it is in. A new placement leader
// starts the scheduler's history afresh. A member's RangeStats answer is
// one message of every range it holds (about 100 bytes a range: 1 MB for
// 10,000 ranges, inside gRPC's 4 MB default), not paged.

// defaultSchedulerWindow is Config.SchedulerWindow's default.
const defaultSchedulerWindow = 10 * time.Second

// schedulerAsk bounds each question the loop asks a member.
const schedulerAsk = 2 * time.Second

// schedulerOpTimeout bounds the operations of a round.
const schedulerOpTimeout = 2 * time.Minute

// schedulerRound is the loop's state while this member leads the
// placement group: the scheduler's history and when each member last
// answered.
type schedulerRound struct {
	n     *Node
	plan  *placement.Scheduler
	heard map[placement.NodeID]time.Time
}

// runScheduler runs a round every window while this member leads the
// placement group, until the node stops.
func (n *Node) runScheduler() {
	defer n.wg.Done()
	window := n.cfg.SchedulerWindow
	if window <= 0 {
		window = defaultSchedulerWindow
	}
	cfg := placement.SchedulerConfig{RangeMaxBytes: n.cfg.RangeMaxBytes, RangeMinBytes: n.cfg.RangeMinBytes,
		SplitLoad: n.cfg.SplitLoad, MemberDownTimeout: n.cfg.MemberDownTimeout}
	var s *schedulerRound
	t := time.NewTicker(window)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if leads, _ := n.leadsPlacement(); !leads {
			s = nil // a later term starts afresh
			continue
		}
		if s == nil {
			s = &schedulerRound{n: n, plan: placement.NewScheduler(cfg), heard: map[placement.NodeID]time.Time{}}
			n.log.Info("scheduler: this member leads the placement group; scheduling", "window", window)
		}
		ctx, cancel := context.WithTimeout(context.Background(), schedulerOpTimeout)
		go func() {
			select {
			case <-n.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := s.round(ctx); err != nil {
			n.log.Warn("scheduler: the round failed; trying again next window", "error", err)
		}
		cancel()
	}
}

// round gathers a report, plans, and runs the operations.
func (s *schedulerRound) round(ctx context.Context) error {
	n := s.n
	st, err := n.placement.State(ctx)
	if err != nil {
		return err
	}
	if st.Reconfiguring != 0 {
		// Member add and remove (placement.Membership) fill and drain
		// ranges themselves: the scheduler waits until they are done,
		// so that one drain runs, and a member joining receives nothing
		// before it is in.
		n.log.Debug("scheduler: a membership change is under way; waiting", "member", st.Reconfiguring)
		return nil
	}
	s.refuseUnmergeable(st)
	ops := s.plan.Plan(s.report(ctx, st))
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		refused []placement.Op
	)
	for _, op := range ops {
		n.log.Info("scheduler: starting", "op", op.String(), "generation", op.Generation)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.run(ctx, op)
			result := "ok"
			switch {
			case err == nil:
				n.log.Info("scheduler: done", "op", op.String())
			case errors.Is(err, errMergeRefused):
				result = "refused"
				n.log.Info("scheduler: merge refused; not planned again until a range changes", "op", op.String(), "error", err)
				mu.Lock()
				refused = append(refused, op)
				mu.Unlock()
			default:
				result = "failed"
				n.log.Warn("scheduler: operation failed", "op", op.String(), "error", err)
			}
			n.metrics.schedulerOp(op.Kind, result)
		}()
	}
	wg.Wait()
	for _, op := range refused {
		s.plan.Refuse(op) // the scheduler is not safe for concurrent use: after the round
	}
	return nil
}

// errMergeRefused: this member will not run the merge as the ranges are
// (mergeOp): the scheduler is told (Scheduler.Refuse).
var errMergeRefused = errors.New("node: merge refused")

// refuseUnmergeable tells the scheduler of every merge this member would
// refuse in the map st, before it plans: a right range made by the
// bootstrap and never split (refuseUnrecorded), so that the first round
// neither plans such a merge nor colocates replicas for it.
func (s *schedulerRound) refuseUnmergeable(st *placementpb.State) {
	for _, l := range st.Ranges {
		if len(l.End) == 0 {
			continue
		}
		for _, r := range st.Ranges {
			if bytes.Equal(r.Start, l.End) && bootstrapped(r) {
				s.plan.Refuse(placement.Op{Kind: placement.OpMerge, Range: placement.RangeID(l.Id), Generation: l.Generation,
					Right: placement.RangeID(r.Id), RightGeneration: r.Generation})
			}
		}
	}
}

// bootstrapped reports whether d was made by the bootstrap and never
// split or merged since (what refuseUnrecorded refuses as a right range).
func bootstrapped(d *placementpb.RangeDescriptor) bool { return d.Parent == 0 && d.Generation == 1 }

// mergeOp runs a merge the scheduler planned: both ranges must still be
// at the generations it planned from (else an error: it plans again next
// round), then the MergeDriver merges them as node.MergeRange would. A
// refusal that will not pass by itself is errMergeRefused. Counted in
// cairn_range_merges_total.
func (s *schedulerRound) mergeOp(ctx context.Context, op placement.Op) error {
	n := s.n
	st, err := n.placement.State(ctx)
	if err != nil {
		n.metrics.rangeMerge("failed")
		return err
	}
	var l, r *placementpb.RangeDescriptor
	for _, d := range st.Ranges {
		switch d.Id {
		case uint64(op.Range):
			l = d
		case uint64(op.Right):
			r = d
		}
	}
	if l == nil || r == nil || l.Generation != op.Generation || r.Generation != op.RightGeneration || !bytes.Equal(l.End, r.Start) {
		n.metrics.rangeMerge("failed")
		return fmt.Errorf("node: range %d or %d changed since the scheduler planned their merge", op.Range, op.Right)
	}
	if err := n.refuseUnrecorded(ctx, shard.RangeID(op.Range)); err != nil {
		if errors.Is(err, router.ErrPrecondition) {
			n.metrics.rangeMerge("refused")
			return fmt.Errorf("%w: %w", errMergeRefused, err)
		}
		n.metrics.rangeMerge("failed")
		return err
	}
	_, err = n.merges.Merge(ctx, op.Range)
	switch {
	case err == nil:
		n.metrics.rangeMerge("merged")
	case errors.Is(err, placement.ErrMergeUndone):
		n.metrics.rangeMerge("undone")
	default:
		n.metrics.rangeMerge("failed")
	}
	return err
}

// run executes one operation.
func (s *schedulerRound) run(ctx context.Context, op placement.Op) error {
	n := s.n
	switch op.Kind {
	case placement.OpMove, placement.OpRecreate:
		_, err := n.mover.Move(ctx, op.Range, op.From, op.To)
		return err
	case placement.OpTransferLeader:
		return n.TransferRangeLeader(ctx, shard.RangeID(op.Range), op.To)
	case placement.OpSplit:
		return s.split(ctx, op)
	case placement.OpMerge:
		return s.mergeOp(ctx, op)
	}
	return fmt.Errorf("node: the scheduler cannot run %s", op)
}

// split has a member holding the range split it at op.Key (the splitter
// needs a replica of the range).
func (s *schedulerRound) split(ctx context.Context, op placement.Op) error {
	n := s.n
	st, err := n.placement.State(ctx)
	if err != nil {
		return err
	}
	var d *placementpb.RangeDescriptor
	for _, rd := range st.Ranges {
		if rd.Id == uint64(op.Range) {
			d = rd
		}
	}
	if d == nil || d.Generation != op.Generation {
		return fmt.Errorf("node: range %d changed since the scheduler planned its split", op.Range)
	}
	var errs []error
	for _, m := range holders(d) {
		if uint64(m) == n.memberID {
			_, err = n.member.SplitRange(ctx, op.Key)
		} else {
			var nc internalpb.NodeClient
			if nc, err = n.fwd.Client(m); err == nil {
				_, err = nc.SplitRange(ctx, &internalpb.SplitRangeRequest{Key: op.Key})
			}
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("member %x: %w", uint64(m), err))
	}
	return errors.Join(errs...)
}

// report is the cluster as this member gathers it. A member that has
// not answered since the loop first saw it counts as heard of
// SuspectAfter before that look (MemberDownTimeout, if shorter): it
// receives nothing until it answers, and is down MemberDownTimeout after.
func (s *schedulerRound) report(ctx context.Context, st *placementpb.State) placement.ClusterReport {
	now := time.Now()
	s.n.stats.asks().reports.Add(1)
	rep := placement.ClusterReport{}
	members := make([]placement.NodeID, 0, len(st.Nodes))
	for _, nd := range st.Nodes {
		members = append(members, placement.NodeID(nd.Id))
	}
	answers := s.askMembers(ctx, members)
	seen := map[placement.NodeID]bool{}
	for _, m := range members {
		seen[m] = true
		if _, ok := s.heard[m]; !ok {
			cfg := s.plan.Config()
			s.heard[m] = now.Add(-min(cfg.SuspectAfter+time.Millisecond, cfg.MemberDownTimeout))
		}
		mr := placement.MemberReport{ID: m}
		if a := answers[m]; a.answered {
			s.heard[m] = now
			mr.DiskBytes = a.disk
		}
		mr.HeartbeatAge = now.Sub(s.heard[m])
		rep.Members = append(rep.Members, mr)
	}
	for m := range s.heard {
		if !seen[m] {
			delete(s.heard, m)
		}
	}
	moves := map[uint64]*placementpb.Move{}
	for _, mv := range st.Moves {
		moves[mv.Range] = mv
	}
	merging := map[uint64]bool{}
	for _, mg := range st.Merges {
		merging[mg.Left], merging[mg.Right] = true, true
	}
	cfg := s.plan.Config()
	for _, d := range st.Ranges {
		rr := placement.RangeReport{ID: placement.RangeID(d.Id), Generation: d.Generation, Start: d.Start, End: d.End,
			Replicas: slices.Clone(placement.Pairs(d)), Leader: placement.NodeID(d.Leader)}
		if mv := moves[d.Id]; mv != nil {
			rr.MoveFrom, rr.MoveTo = placement.NodeID(mv.GetFrom().GetMember()), placement.NodeID(mv.GetTo().GetMember())
		}
		rr.Merging = merging[d.Id]
		f := pickFigures(d, answers)
		for _, m := range holders(d) {
			// The holders that predate RangeStats, range by range, until
			// one that leads the range answers: a range led by such a
			// member has no other holder's rates or middle key worth
			// taking.
			if (f != nil && leads(f)) || ctx.Err() != nil {
				break
			}
			if !answers[m].legacy {
				continue // answered RangeStats, or not at all
			}
			resp, err := s.ask(ctx, m, &internalpb.ChangeRangeRequest{Range: d.Id, Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATS,
				SplitAbove: cfg.RangeMaxBytes, LoadAbove: cfg.SplitLoad})
			if err != nil {
				continue
			}
			s.heard[m] = now
			g := &internalpb.RangeStats{Range: d.Id, Replica: resp.Replica, Leader: resp.Leader, SizeBytes: resp.SizeBytes, Keys: resp.Keys,
				WritesPerSecond: resp.WritesPerSecond, ReadsPerSecond: resp.ReadsPerSecond, MiddleKey: resp.MiddleKey, LoadKey: resp.LoadKey}
			if f == nil || leads(g) {
				f = g
			}
		}
		if f != nil {
			rr.Bytes, rr.Keys, rr.MiddleKey = f.SizeBytes, f.Keys, f.MiddleKey
			rr.Writes, rr.Reads, rr.LoadKey = int64(f.WritesPerSecond), int64(f.ReadsPerSecond), f.LoadKey
			if leader, ok := placement.MemberOf(d, placement.ReplicaID(f.Leader)); ok {
				rr.Leader = leader
			}
		}
		s.n.log.Debug("scheduler: range report", "range", rr.ID, "bytes", rr.Bytes, "keys", rr.Keys, "writes", rr.Writes,
			"reads", rr.Reads, "leader", rr.Leader, "middle-key", string(rr.MiddleKey), "load-key", string(rr.LoadKey))
		rep.Ranges = append(rep.Ranges, rr)
	}
	return rep
}

// memberAnswer is what a member answered the round's RangeStats.
type memberAnswer struct {
	// answered: it answered (RangeStats, or for a legacy member the
	// ChangeRange STATS of its disk use).
	answered bool
	// legacy: it answered RangeStats Unimplemented (it predates it): its
	// ranges' figures are asked range by range.
	legacy bool
	disk   int64
	ranges map[uint64]*internalpb.RangeStats
}

// askMembers asks every member, side by side, for its RangeStats: one
// call a member (two for a legacy one: its disk use by ChangeRange STATS
// of range 0).
func (s *schedulerRound) askMembers(ctx context.Context, members []placement.NodeID) map[placement.NodeID]memberAnswer {
	cfg := s.plan.Config()
	req := &internalpb.RangeStatsRequest{SplitAbove: cfg.RangeMaxBytes, LoadAbove: cfg.SplitLoad}
	answers := make([]memberAnswer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &answers[i]
			resp, err := s.rangeStats(ctx, m, req)
			switch {
			case err == nil:
				a.answered, a.disk = true, resp.DiskBytes
				a.ranges = make(map[uint64]*internalpb.RangeStats, len(resp.Ranges))
				for _, f := range resp.Ranges {
					a.ranges[f.Range] = f
				}
			case status.Code(err) == codes.Unimplemented:
				a.legacy = true
				if resp, err := s.ask(ctx, m, &internalpb.ChangeRangeRequest{Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATS}); err == nil {
					a.answered, a.disk = true, resp.DiskBytes
				}
			default:
				s.n.log.Debug("scheduler: a member did not answer its range stats", "member", m, "error", err)
			}
		}()
	}
	wg.Wait()
	out := make(map[placement.NodeID]memberAnswer, len(members))
	for i, m := range members {
		out[m] = answers[i]
	}
	return out
}

// pickFigures is range d's figures from the members' answers: of the
// holders that reported it, the leader's (raft's, as it says), and of
// these one whose replica is at d's generation (one that has not applied
// a split yet reports the parent's span), the map's leader hint first;
// nil if none reported it.
func pickFigures(d *placementpb.RangeDescriptor, answers map[placement.NodeID]memberAnswer) *internalpb.RangeStats {
	var best *internalpb.RangeStats
	bestScore := -1
	for _, m := range holders(d) {
		f := answers[m].ranges[d.Id]
		if f == nil {
			continue
		}
		score := 0
		if leads(f) {
			score += 2
		}
		if f.Generation == d.Generation {
			score++
		}
		if score > bestScore {
			best, bestScore = f, score
		}
	}
	return best
}

// leads reports whether f comes from the replica that leads its range
// (as the member that answered knows).
func leads(f *internalpb.RangeStats) bool { return f.Leader != 0 && f.Leader == f.Replica }

// rangeStats asks member (this member, here) for its RangeStats within
// schedulerAsk; a member that predates the call answers Unimplemented.
func (s *schedulerRound) rangeStats(ctx context.Context, member placement.NodeID, req *internalpb.RangeStatsRequest) (*internalpb.RangeStatsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, schedulerAsk)
	defer cancel()
	if uint64(member) == s.n.memberID {
		return s.n.RangeStats(ctx, req)
	}
	nc, err := s.n.fwd.Client(member)
	if err != nil {
		return nil, err
	}
	return nc.RangeStats(ctx, req)
}

// ask puts req to member (this member, here) within schedulerAsk.
func (s *schedulerRound) ask(ctx context.Context, member placement.NodeID, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, schedulerAsk)
	defer cancel()
	return rangeRaft{s.n}.on(ctx, member, req)
}
