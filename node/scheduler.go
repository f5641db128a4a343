package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// The placement scheduler's loop (issue 22; placement/scheduler.go decides,
// this file gathers and executes), on when Config.PlacementScheduler says
// so (sharded mode). While this member's placement replica leads its
// group, every SchedulerWindow it:
//
//   - reads the range map (descriptors, open moves, the member being
//     added or removed);
//   - asks every member for its disk use (ChangeRange STATS of range 0):
//     a member's heartbeat age is the time since it last answered (since
//     the loop first saw it, if never);
//   - asks each range's holders, leader hint first, for the range's
//     figures (ChangeRange STATS: size, keys, and writes and reads per
//     second as the answering member's range stats last computed them,
//     over their last 15 s window), its leader, if it is above
//     RangeMaxBytes its middle key (by live keys: about half of them
//     before it), and if its writes+reads per second are above SplitLoad
//     its load key (shard.LoadKey: about half of the window's requests,
//     by a sample of their keys, before it);
//   - plans (placement.Scheduler.Plan) and runs the round's operations
//     side by side, waiting for them all before the next round: move and
//     recreate through the Mover, transfer-leader through
//     TransferRangeLeader, split through the node-to-node SplitRange on a
//     member holding the range. Merges are not supported yet: logged and
//     skipped.
//
// Splits by load: the shard's replica client counts the writes it
// proposes and the reads (Range, read-only Txn) it serves, and samples
// their keys (shard/load.go); the range stats turn counts and sample into
// rates and a load key every window. A window in which the range split or
// merged reports no load (its figures describe another span), so a
// parent just split is not hot again before a window that began after
// the split ends.
//
// Known gaps of this slice: merges are off (the scheduler runs with
// RangeMinBytes -1 whatever Config.RangeMinBytes says); the middle key
// halves the live keys, not the bytes; a range's load is what the member
// that answers STATS served (its leader's, as a rule): writes all go
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
// starts the scheduler's history afresh.

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
	// No merges until the shard has them: the scheduler leaves the ranges
	// it would merge out of balance, so they are not asked for at all
	// (Config.RangeMinBytes waits for them).
	cfg := placement.SchedulerConfig{RangeMaxBytes: n.cfg.RangeMaxBytes, RangeMinBytes: -1,
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
	ops := s.plan.Plan(s.report(ctx, st))
	var wg sync.WaitGroup
	for _, op := range ops {
		if op.Kind == placement.OpMerge {
			n.log.Info("scheduler: merges are not supported yet; skipped", "op", op.String())
			n.metrics.schedulerOp(op.Kind, "skipped")
			continue
		}
		n.log.Info("scheduler: starting", "op", op.String(), "generation", op.Generation)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.run(ctx, op)
			result := "ok"
			if err != nil {
				result = "failed"
				n.log.Warn("scheduler: operation failed", "op", op.String(), "error", err)
			} else {
				n.log.Info("scheduler: done", "op", op.String())
			}
			n.metrics.schedulerOp(op.Kind, result)
		}()
	}
	wg.Wait()
	return nil
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
	rep := placement.ClusterReport{}
	seen := map[placement.NodeID]bool{}
	for _, nd := range st.Nodes {
		m := placement.NodeID(nd.Id)
		seen[m] = true
		if _, ok := s.heard[m]; !ok {
			cfg := s.plan.Config()
			s.heard[m] = now.Add(-min(cfg.SuspectAfter+time.Millisecond, cfg.MemberDownTimeout))
		}
		mr := placement.MemberReport{ID: m}
		if resp, err := s.ask(ctx, m, &internalpb.ChangeRangeRequest{Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATS}); err == nil {
			s.heard[m] = now
			mr.DiskBytes = resp.DiskBytes
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
	for _, d := range st.Ranges {
		rr := placement.RangeReport{ID: placement.RangeID(d.Id), Generation: d.Generation, Start: d.Start, End: d.End,
			Replicas: slices.Clone(placement.Pairs(d)), Leader: placement.NodeID(d.Leader)}
		if mv := moves[d.Id]; mv != nil {
			rr.MoveFrom, rr.MoveTo = placement.NodeID(mv.GetFrom().GetMember()), placement.NodeID(mv.GetTo().GetMember())
		}
		for _, m := range holders(d) {
			resp, err := s.ask(ctx, m, &internalpb.ChangeRangeRequest{Range: d.Id, Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATS,
				SplitAbove: s.plan.Config().RangeMaxBytes, LoadAbove: s.plan.Config().SplitLoad})
			if err != nil {
				continue
			}
			s.heard[m] = now
			rr.Bytes, rr.Keys, rr.MiddleKey = resp.SizeBytes, resp.Keys, resp.MiddleKey
			rr.Writes, rr.Reads, rr.LoadKey = int64(resp.WritesPerSecond), int64(resp.ReadsPerSecond), resp.LoadKey
			if leader, ok := placement.MemberOf(d, placement.ReplicaID(resp.Leader)); ok {
				rr.Leader = leader
			}
			break
		}
		s.n.log.Debug("scheduler: range report", "range", rr.ID, "bytes", rr.Bytes, "keys", rr.Keys, "writes", rr.Writes,
			"reads", rr.Reads, "leader", rr.Leader, "middle-key", string(rr.MiddleKey), "load-key", string(rr.LoadKey))
		rep.Ranges = append(rep.Ranges, rr)
	}
	return rep
}

// ask puts req to member (this member, here) within schedulerAsk.
func (s *schedulerRound) ask(ctx context.Context, member placement.NodeID, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, schedulerAsk)
	defer cancel()
	return rangeRaft{s.n}.on(ctx, member, req)
}

// rangeStatsOf answers ChangeRange STATS: range id's figures here as the
// range stats last computed them, and the replica raft says leads it;
// with id 0, the node's disk use. Its middle key if it is larger than
// splitAbove bytes, its load key if its writes+reads per second are above
// loadAbove (0: neither).
func (n *Node) rangeStatsOf(ctx context.Context, id shard.RangeID, splitAbove, loadAbove int64) (*internalpb.ChangeRangeResponse, error) {
	if id == 0 {
		return &internalpb.ChangeRangeResponse{DiskBytes: n.Status().DBSize}, nil
	}
	r := n.rangeSet.Get(id, true)
	if r == nil {
		return nil, fmt.Errorf("%w: no replica of range %d on member %x", shard.ErrNoLeader, id, n.memberID)
	}
	out := &internalpb.ChangeRangeResponse{Replica: uint64(r.ReplicaID())}
	var loadKey []byte
	for _, f := range n.stats.snapshot().ranges {
		if f.id == id {
			out.SizeBytes, out.Keys = int64(f.size), f.keys
			out.WritesPerSecond, out.ReadsPerSecond, loadKey = f.currentLoad(r.Descriptor())
		}
	}
	if loadAbove > 0 && out.WritesPerSecond+out.ReadsPerSecond > float64(loadAbove) {
		out.LoadKey = loadKey
	}
	if sm := r.StateMachine(); sm != nil {
		if size, err := sm.DiskUsage(); err == nil {
			out.SizeBytes = int64(size) // a cheap estimate: now, not up to 15 s ago (a split shrinks it at once)
		}
	}
	if leader, _, ok, err := n.nh.GetLeaderID(uint64(id)); err == nil && ok {
		out.Leader = leader
	}
	if splitAbove > 0 && out.SizeBytes > splitAbove {
		out.MiddleKey = middleKey(r)
	}
	return out, nil
}

// middleKey is a key strictly inside range r with about half of its
// bytes on disk before it, from the replica here (shard.StateMachine's
// MiddleKey: a bisection by pebble's disk usage estimates, a few block
// reads however large the range); nil if it cannot tell. It is asked of
// ranges above RangeMaxBytes only, once a window, until they split.
func middleKey(r *shard.Range) []byte {
	sm := r.StateMachine()
	if sm == nil {
		return nil
	}
	key, err := sm.MiddleKey()
	if err != nil || key == nil {
		return nil
	}
	d := r.Descriptor()
	if bytes.Compare(key, d.GetStart()) <= 0 || (len(d.GetEnd()) > 0 && bytes.Compare(key, d.GetEnd()) >= 0) {
		return nil // the store's span is not the descriptor's (a split applying): next window
	}
	return key
}
