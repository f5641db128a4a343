package node

import (
	"bytes"
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/shard"
)

// What a member answers the placement scheduler (scheduler.go): RangeStats,
// every range it holds in one call, and ChangeRange STATS, one range (or
// range 0, its disk use) a call, which the scheduler asks only of a member
// that answers RangeStats Unimplemented (one that predates it, during an
// upgrade). Both read the range stats' last refresh (rangestats.go) and,
// per range, a few figures raft and pebble keep at hand (its size now, its
// leader); only a range above the asker's thresholds costs more: its
// middle key (a bisection by pebble's disk usage estimates) and its load
// key (cached by the refresh).

// RangeStats implements router.RangeMover: this member's disk use and the
// figures of every range it holds a started replica of, with middle keys
// for those above req.SplitAbove bytes that it leads (or whose leader it
// does not know: the asker takes the leader's figures when it has them,
// so a middle key is computed once a range, not once a replica) and load
// keys for those above req.LoadAbove writes+reads per second.
func (n *Node) RangeStats(ctx context.Context, req *internalpb.RangeStatsRequest) (*internalpb.RangeStatsResponse, error) {
	if n.stats.asks().predate.Load() {
		return nil, status.Error(codes.Unimplemented, "cairn: RangeStats: this member predates it (a test's)")
	}
	n.stats.asks().batched.Add(1)
	out := &internalpb.RangeStatsResponse{DiskBytes: n.Status().DBSize}
	figures := map[shard.RangeID]rangeFigures{}
	for _, f := range n.stats.snapshot().ranges {
		figures[f.id] = f
	}
	for _, r := range n.rangeSet.All() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if r.StateMachine() == nil || r.Replica() == nil {
			continue // not started yet: its other holders answer for it
		}
		st := n.figuresOf(r, figures, req.SplitAbove, req.LoadAbove, true)
		out.Ranges = append(out.Ranges, st)
	}
	return out, nil
}

// rangeStatsOf answers ChangeRange STATS: range id's figures here as the
// range stats last computed them, and the replica raft says leads it;
// with id 0, the node's disk use. Its middle key if it is larger than
// splitAbove bytes, its load key if its writes+reads per second are above
// loadAbove (0: neither).
func (n *Node) rangeStatsOf(id shard.RangeID, splitAbove, loadAbove int64) (*internalpb.ChangeRangeResponse, error) {
	n.stats.asks().single.Add(1)
	if id == 0 {
		return &internalpb.ChangeRangeResponse{DiskBytes: n.Status().DBSize}, nil
	}
	r := n.rangeSet.Get(id, true)
	if r == nil {
		return nil, fmt.Errorf("%w: no replica of range %d on member %x", shard.ErrNoLeader, id, n.memberID)
	}
	figures := map[shard.RangeID]rangeFigures{}
	for _, f := range n.stats.snapshot().ranges {
		if f.id == id {
			figures[id] = f
		}
	}
	st := n.figuresOf(r, figures, splitAbove, loadAbove, false)
	return &internalpb.ChangeRangeResponse{Replica: st.Replica, Leader: st.Leader, SizeBytes: st.SizeBytes, Keys: st.Keys,
		WritesPerSecond: st.WritesPerSecond, ReadsPerSecond: st.ReadsPerSecond, MiddleKey: st.MiddleKey, LoadKey: st.LoadKey}, nil
}

// figuresOf are range r's figures here: figures' (the range stats' last
// refresh) with its size now and the replica raft says leads it; its load
// key if its writes+reads per second are above loadAbove, its middle key
// if it is larger than splitAbove bytes (with leaderOnly, only if this
// member leads it or knows no leader).
func (n *Node) figuresOf(r *shard.Range, figures map[shard.RangeID]rangeFigures, splitAbove, loadAbove int64, leaderOnly bool) *internalpb.RangeStats {
	d := r.Descriptor()
	out := &internalpb.RangeStats{Range: uint64(r.ID()), Generation: d.GetGeneration(), Replica: uint64(r.ReplicaID())}
	var loadKey []byte
	if f, ok := figures[r.ID()]; ok {
		out.SizeBytes, out.Keys = int64(f.size), f.keys
		out.WritesPerSecond, out.ReadsPerSecond, loadKey = f.currentLoad(d)
	}
	if loadAbove > 0 && out.WritesPerSecond+out.ReadsPerSecond > float64(loadAbove) {
		out.LoadKey = loadKey
	}
	if sm := r.StateMachine(); sm != nil {
		if size, err := sm.DiskUsage(); err == nil {
			out.SizeBytes = int64(size) // a cheap estimate: now, not up to 15 s ago (a split shrinks it at once)
		}
	}
	if leader, _, ok, err := n.nh.GetLeaderID(uint64(r.ID())); err == nil && ok {
		out.Leader = leader
	}
	if splitAbove > 0 && out.SizeBytes > splitAbove && (!leaderOnly || out.Leader == 0 || out.Leader == out.Replica) {
		out.MiddleKey = middleKey(r)
	}
	return out
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
