package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Sharded mode (DESIGN.md): besides the ranges, the NodeHost runs a replica
// of the placement group, which holds the range map and the revision
// oracle. Range r is raft shard r: range 1 always starts at the empty key,
// so it is the shard single-group mode runs as shard 1, and it keeps the
// cluster's own records (members, peer URLs, alarms) in either mode.

// placementShardID names the placement group's raft shard, far above any
// range id.
const placementShardID = 1 << 48

// oracleWindow is how many revisions one persisted oracle bound covers.
const oracleWindow = 10000

// rangeReplica is this node's replica of one range.
type rangeReplica struct {
	// d is the range's descriptor; a split replaces it.
	d       atomic.Pointer[placementpb.RangeDescriptor]
	replica *shard.Replica
	// client is the range as the router uses it (through its leader).
	client *router.RangeClient
	sm     atomic.Pointer[shard.StateMachine]
	// smRef is the state machine the replica has: &sm, or the node's for
	// range 1.
	smRef *atomic.Pointer[shard.StateMachine]
	hub   *watch.Hub
	// pub is the closed revision the range's leader last published, to
	// pass to the hub once this replica has applied as far as the leader
	// had (guarded by pubMu; zero: none waiting).
	pubMu sync.Mutex
	pub   struct {
		closed mvcc.Revision
		index  uint64
	}
	// ready is closed once the replica is started (replica set).
	ready chan struct{}
	// want is the closed revision watches wait for; kick (size 1) wakes
	// the range's closer for it.
	want atomic.Int64
	kick chan struct{}
}

// desc returns the range's descriptor.
func (rr *rangeReplica) desc() *placementpb.RangeDescriptor { return rr.d.Load() }

// published takes a closed revision the range's leader published with
// the index it had applied: the hub gets it once this replica has applied
// that far (every write at or below it is then applied here).
func (rr *rangeReplica) published(closed mvcc.Revision, index uint64) {
	rr.pubMu.Lock()
	if closed > rr.pub.closed {
		rr.pub.closed, rr.pub.index = closed, index
	}
	rr.pubMu.Unlock()
	rr.settlePublished()
}

// settlePublished passes a published closed revision to the hub if this
// replica has applied far enough.
func (rr *rangeReplica) settlePublished() {
	rr.pubMu.Lock()
	defer rr.pubMu.Unlock()
	if rr.pub.closed == 0 {
		return
	}
	sm := rr.smRef.Load()
	if sm == nil || sm.AppliedIndex() < rr.pub.index {
		return
	}
	rr.hub.Advance(rr.pub.closed)
	rr.pub.closed, rr.pub.index = 0, 0
}

// appliedIndex is the raft index this replica has applied (0: not open).
func (rr *rangeReplica) appliedIndex() uint64 {
	if sm := rr.smRef.Load(); sm != nil {
		return sm.AppliedIndex()
	}
	return 0
}

// wantClosed asks the range's closer to raise the closed revision to rev
// soon (router.RangePart.Kick).
func (rr *rangeReplica) wantClosed(rev mvcc.Revision) {
	for {
		old := rr.want.Load()
		if int64(rev) <= old || rr.want.CompareAndSwap(old, int64(rev)) {
			break
		}
	}
	select {
	case rr.kick <- struct{}{}:
	default:
	}
}

// rangeSet is the node's replicas of the ranges, in key order; the router
// routes by its range cache (Node.routes), which the node keeps up to date
// with them (router.RangeCache.Put).
type rangeSet struct {
	mu     sync.RWMutex
	ranges []*rangeReplica // by start key
	// first is range 1, set before its replica applies anything.
	first atomic.Pointer[rangeReplica]
}

// all returns every range whose replica is started, in key order.
func (s *rangeSet) all() []*rangeReplica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*rangeReplica, 0, len(s.ranges))
	for _, rr := range s.ranges {
		if rr.started() {
			out = append(out, rr)
		}
	}
	return out
}

// routing returns every range in key order, those still starting (a
// split's new range) included: requests for them wait until it is.
func (s *rangeSet) routing() []*rangeReplica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.ranges)
}

// started reports whether the range's replica is started.
func (rr *rangeReplica) started() bool {
	select {
	case <-rr.ready:
		return true
	default:
		return false
	}
}

// spanOf is a descriptor's span in mvcc's form (nil end: ∞).
func spanOf(d *placementpb.RangeDescriptor) mvcc.Span {
	sp := mvcc.Span{Start: d.Start, End: d.End}
	if sp.Start == nil {
		sp.Start = []byte{}
	}
	if len(sp.End) == 0 {
		sp.End = nil
	}
	return sp
}

// startPlacement starts this node's replica of the placement group (a
// founder's, or a restart's), bootstraps the range map with the initial
// split keys if no member has yet, and returns the range map.
func (n *Node) startPlacement(ctx context.Context, founders map[uint64]dragonboat.Target, election, heartbeat uint64) ([]*placementpb.RangeDescriptor, error) {
	if err := n.startPlacementReplica(founders, false, n.memberID, election, heartbeat); err != nil {
		return nil, err
	}
	for {
		st, err := n.placementState(ctx)
		if err != nil {
			return nil, err
		}
		if len(st.Ranges) > 0 {
			return st.Ranges, nil
		}
		var replicas []uint64
		for id := range founders {
			replicas = append(replicas, id)
		}
		sort.Slice(replicas, func(i, j int) bool { return replicas[i] < replicas[j] })
		if len(replicas) == 0 {
			return nil, errors.New("node: the range map is not bootstrapped and this member is not a founder")
		}
		// A founder's store is empty but for a restored backup (range
		// 1's store): the oracle starts above its revision.
		first, err := mvcc.Open(n.db, mvcc.Options{ID: singleShardID})
		if err != nil {
			return nil, err
		}
		if first.Rev() > 1 && len(n.cfg.InitialSplitKeys) > 0 {
			return nil, errors.New("node: a restored backup starts as one range: leave out --initial-split-keys and split it online (cairn range split)")
		}
		cmd, _ := proto.Marshal(&placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
			SplitKeys: n.cfg.InitialSplitKeys, Replicas: replicas, Bound: int64(first.Rev())}}})
		if _, err := n.proposePlacement(ctx, cmd); err != nil {
			return nil, fmt.Errorf("node: bootstrap the range map: %w", err)
		}
	}
}

// startPlacementReplica starts this node's replica id of the placement
// group: founding it, joining it (a member added), or restarting it.
func (n *Node) startPlacementReplica(founders map[uint64]dragonboat.Target, join bool, id, election, heartbeat uint64) error {
	err := n.nh.StartReplica(founders, join, placement.NewStateMachine, dbconfig.Config{
		ReplicaID: id, ShardID: placementShardID,
		HeartbeatRTT: heartbeat, ElectionRTT: election, CheckQuorum: true, PreVote: true,
		IsNonVoting:     isLearner(n.cfg.DataDir),
		SnapshotEntries: n.cfg.SnapshotCount, CompactionOverhead: n.cfg.SnapshotCount / 2,
	})
	if err != nil {
		return fmt.Errorf("node: start the placement group: %w", err)
	}
	n.alloc = placement.NewAllocator(n.nh, placementShardID, id, oracleWindow)
	n.oracle = placement.NewOracleClient(placement.OracleClientConfig{
		Self:  id,
		Local: n.alloc,
		Leader: func() (uint64, bool) {
			leader, _, ok, _ := n.nh.GetLeaderID(placementShardID)
			return leader, ok
		},
		Remote: func(ctx context.Context, leader uint64, count int64, above mvcc.Revision) (mvcc.Revision, error) {
			return n.fwd.Revisions(ctx, leader, count, above)
		},
		Retry: forwardRetry,
	})
	return nil
}

// placementState reads the placement group's state linearizably, waiting
// for a leader.
func (n *Node) placementState(ctx context.Context) (*placementpb.State, error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		v, err := n.nh.SyncRead(rctx, placementShardID, placement.StateQuery{})
		cancel()
		if err == nil {
			return v.(*placementpb.State), nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("node: read the range map: %w", ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(rttMillisecond * time.Millisecond):
		}
	}
}

// proposePlacement proposes a placement command until raft takes it and
// returns its result (a refusal in it is not an error here, except that a
// bootstrap already done is fine).
func (n *Node) proposePlacement(ctx context.Context, cmd []byte) (*placementpb.Result, error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := n.nh.SyncPropose(rctx, n.nh.GetNoOPSession(placementShardID), cmd)
		cancel()
		if err == nil {
			var out placementpb.Result
			if err := proto.Unmarshal(res.Data, &out); err != nil {
				return nil, err
			}
			if out.Error != "" && out.Error != placement.ErrBootstrapped.Error() {
				return &out, errors.New(out.Error)
			}
			return &out, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		select {
		case <-ctx.Done():
		case <-time.After(rttMillisecond * time.Millisecond):
		}
	}
}

// startRange starts this node's replica of a range other than range 1 and
// its client, watch hub and catch-up pump (see startRangeInto for founders).
func (n *Node) startRange(d *placementpb.RangeDescriptor, shardCfg shard.Config, raftCfg dbconfig.Config, founders bool) (*rangeReplica, error) {
	rr := newRangeReplica(n, d, 0)
	return rr, n.startRangeInto(rr, shardCfg, raftCfg, founders, false)
}

// foundersOf are the nodes that started range d's raft group (maps written
// before descriptors named them: its replicas, which no membership change
// had changed then).
func foundersOf(d *placementpb.RangeDescriptor) []uint64 {
	if len(d.Founders) > 0 {
		return d.Founders
	}
	return d.Replicas
}

// newRangeReplica returns the node's replica of range d, not started, its
// watch hub at rev.
func newRangeReplica(n *Node, d *placementpb.RangeDescriptor, rev mvcc.Revision) *rangeReplica {
	rr := &rangeReplica{hub: watch.NewHub(rev), kick: make(chan struct{}, 1), ready: make(chan struct{})}
	rr.d.Store(d)
	rr.smRef = &rr.sm
	rr.client = n.fwd.Range(rr)
	return rr
}

// startRangeInto starts the raft replica of rr, its replica client and
// its catch-up pump, and marks it ready. With founders, a node among the
// range's founders starts it with them (raft takes them again on a
// restart); any other node joins it (or restarts what it joined), to be
// added by a membership change and sent a snapshot. With join, this node
// joins it whatever it is (joinLateSplit).
func (n *Node) startRangeInto(rr *rangeReplica, shardCfg shard.Config, raftCfg dbconfig.Config, founders, join bool) error {
	d := rr.desc()
	shardCfg.Span = spanOf(d)
	notify := notifier(rr.hub)
	shardCfg.OnApply = func(closed mvcc.Revision, evs []*mvccpb.Event) {
		notify(closed, evs)
		rr.settlePublished()
	}
	shardCfg.OnSplit = func(child uint64, span mvcc.Span, rev mvcc.Revision, founders []uint64) {
		n.onSplit(rr, child, span, rev, founders)
	}
	shardCfg.OnPeers, shardCfg.OnHold = nil, nil
	factory := shard.Factory(shardCfg)
	var members map[uint64]dragonboat.Target
	if founders && !join {
		if slices.Contains(foundersOf(d), n.memberID) {
			members = map[uint64]dragonboat.Target{}
			for _, id := range foundersOf(d) {
				members[id] = memberTarget(id)
			}
		} else {
			join = true
		}
	}
	raftCfg.ShardID = d.Id
	// A founder votes; a member joining is a learner until promoted, as
	// it is in range 1 (a member added as a voter is promoted at once).
	raftCfg.IsNonVoting = members == nil && n.learner.Load()
	err := n.nh.StartOnDiskReplica(members, join, func(shardID, replicaID uint64) sm.IOnDiskStateMachine {
		m := factory(shardID, replicaID).(*shard.StateMachine)
		rr.sm.Store(m)
		return m
	}, raftCfg)
	if err != nil {
		return fmt.Errorf("node: start range %d: %w", d.Id, err)
	}
	rr.replica = shard.NewStampingReplica(n.nh, d.Id, n.memberID, n.oracle, rr.sm.Load)
	close(rr.ready)
	n.wg.Add(1)
	go n.pump(rr.hub, &rr.sm)
	return nil
}

// entry is rr as the router's range cache holds it.
func (rr *rangeReplica) entry() router.RangeEntry {
	return router.RangeEntry{Local: rr, Shard: rr.client, Watches: rr.hub, Kick: rr.wantClosed}
}

// Now implements router.Oracle: a revision at or above every write
// completed before the call. While the cluster is one range that counts its
// revisions, it is that range's revision, read linearizably — no oracle
// revision, so that headers show etcd's dense revisions; once it has split,
// a fresh oracle revision.
func (n *Node) Now(ctx context.Context) (mvcc.Revision, error) {
	if rs := n.rangeSet.routing(); len(rs) == 1 {
		if sm := rs[0].smRef.Load(); sm != nil && sm.Counting() {
			st, err := rs[0].client.Status(ctx, true)
			if err != nil {
				return 0, err
			}
			// Counting still, as of the read index: no split has
			// committed before it, so no write has an oracle revision.
			if st.Counting {
				return st.Revision, nil
			}
		}
	}
	return n.oracle.Revisions(ctx, 1)
}

// closedEvery is how often the node raises the closed revision of the idle
// ranges it leads (DESIGN.md "Closed revision": at least every 100 ms).
const closedEvery = 50 * time.Millisecond

// closer raises, on every tick, the closed revision of a range this node
// leads that has no write in flight (Replica.AdvanceIdle: an oracle
// revision confirmed by a read index, no log write after the first in a
// term), so that readers and watchers of idle ranges need not ask, and
// passes it to the range's watch hub; a watch waiting on the range kicks
// it sooner (wantClosed). A range busy with writes closes through them.
func (n *Node) closer(rr *rangeReplica) {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case <-n.closedClock.next():
		case <-rr.kick:
			// A watch here waits for the range: its leader elsewhere is
			// asked to close sooner.
			if leader, _, ok := rr.replica.Leader(); ok && leader != n.memberID {
				n.forwardKick(rr, leader)
			}
		}
		// A kick is retried briefly while writes in flight hold the closed
		// revision back, as they settle within milliseconds.
		for wait := time.Millisecond; ; wait *= 2 {
			if leader, _, ok := rr.replica.Leader(); !ok || leader != n.memberID {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), closedEvery*4)
			closed, err := rr.replica.AdvanceIdle(ctx) // a failure leaves it for the next tick
			cancel()
			rr.hub.Advance(closed)
			n.publishClosed(rr, closed)
			if err != nil || closed >= mvcc.Revision(rr.want.Load()) || wait > closedEvery/4 {
				break
			}
			select {
			case <-n.stop:
				return
			case <-time.After(wait):
			}
		}
	}
}

// publishClosed sends the other replicas of a range this node leads its
// closed revision, with the index applied here (the side channel of
// DESIGN.md "Closed revision", one per node pair: sidechannel.go).
func (n *Node) publishClosed(rr *rangeReplica, closed mvcc.Revision) {
	if closed == 0 {
		return
	}
	rc := &internalpb.RangeClosed{Range: rr.desc().Id, Closed: int64(closed), Index: rr.appliedIndex()}
	for _, id := range rr.desc().Replicas {
		if id != n.memberID {
			n.side.publish(id, rc)
		}
	}
}

// forwardKick asks the leader of a range to close what watches here wait
// for.
func (n *Node) forwardKick(rr *rangeReplica, leader uint64) {
	nc, err := n.nodeClient(leader)
	if err != nil {
		return
	}
	req := &internalpb.KickRequest{Range: rr.desc().Id, Revision: rr.want.Load()}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), closedEvery*4)
		defer cancel()
		_, _ = nc.Kick(ctx, req)
	}()
}

// mergedProgress sends the progress notifications of watches over the
// ranges (sharded mode) on etcd's interval.
func (n *Node) mergedProgress() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.WatchProgressNotifyInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			n.merger.ProgressTick()
		}
	}
}

// Closed reports the closed revision this node's client of range id knows
// (0 for an unknown range): what the side channel publishes.
func (n *Node) Closed(id uint64) mvcc.Revision {
	for _, rr := range n.rangeSet.all() {
		if rr.desc().Id == id {
			return rr.replica.Closed()
		}
	}
	return 0
}

// RangeInfo is one range as /cairn/ranges (and `cairn ranges`) shows it.
type RangeInfo struct {
	ID         uint64   `json:"id"`
	Start      string   `json:"start"`
	End        string   `json:"end"` // "" is the end of the key space
	Generation uint64   `json:"generation"`
	Replicas   []uint64 `json:"replicas"`
	Leader     uint64   `json:"leader"` // 0: none known
	Revision   int64    `json:"revision"`
	Closed     int64    `json:"closed"`
	Writes     uint64   `json:"writes"` // writes proposed through this node since it started
	Keys       int64    `json:"keys"`   // live keys, as this node's replica has them
	// Watchers are the watchers this node's clients have on the range
	// (identical watches share one: watch.Merger coalesces them).
	Watchers int `json:"watchers"`
}

// Ranges returns this node's view of the range map (nil in single-group
// mode): leaders as this node knows them, revisions from its replicas.
func (n *Node) Ranges() []RangeInfo {
	var out []RangeInfo
	// Replicas as raft has them here: membership changes since the range
	// started show.
	members := map[uint64][]uint64{}
	for _, si := range n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}).ShardInfoList {
		for id := range si.Replicas {
			members[si.ShardID] = append(members[si.ShardID], id)
		}
		slices.Sort(members[si.ShardID])
	}
	for _, rr := range n.rangeSet.all() {
		replicas := members[rr.desc().Id]
		if len(replicas) == 0 {
			replicas = rr.desc().Replicas
		}
		ri := RangeInfo{ID: rr.desc().Id, Start: string(rr.desc().Start), End: string(rr.desc().End),
			Generation: rr.desc().Generation, Replicas: replicas, Closed: int64(rr.replica.Closed()),
			Writes: rr.replica.Proposed(), Watchers: rr.hub.Watchers()}
		if leader, _, ok := rr.replica.Leader(); ok {
			ri.Leader = leader
		}
		if st, err := rr.replica.Status(context.Background(), false); err == nil {
			ri.Revision = int64(max(st.Revision, st.Closed, rr.replica.Closed()))
		}
		d := rr.desc()
		end := d.End
		if len(end) == 0 {
			end = []byte{0}
		}
		start := d.Start
		if len(start) == 0 {
			start = []byte{0}
		}
		q := &pb.RangeRequest{Key: start, RangeEnd: end, CountOnly: true, Serializable: true}
		if v, err := rr.replica.Range(context.Background(), q, false); err == nil {
			ri.Keys = v.Count
		}
		out = append(out, ri)
	}
	return out
}

// serveRanges answers GET /cairn/ranges with the range map as JSON.
func (n *Node) serveRanges(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(n.Ranges())
}

// RevokeRemote implements router.RemoteLeases: for lease id, revoked in
// range 1 (every lease's home), each range registered as holding its keys
// deletes them and refuses the lease from then on (a shadow revoke), then
// the home marks that range done. A failure leaves the rest to
// revokeRemotes, which retries pending ones.
func (n *Node) RevokeRemote(ctx context.Context, id int64) error {
	shards, err := n.registered(ctx, id)
	if err != nil {
		return err
	}
	return n.revokeIn(ctx, id, shards)
}

// registered reads, linearizably, the ranges registered at range 1 as
// holding keys of lease id.
func (n *Node) registered(ctx context.Context, id int64) ([]uint64, error) {
	return n.replica.Registered(ctx, id, true)
}

// revokeIn revokes the shadows of lease id in shards and marks each done
// at the home. The shards refuse registrations of the lease made up to
// now: up to range 1's index here, which is past the revoke (read
// linearizably before).
func (n *Node) revokeIn(ctx context.Context, id int64, shards []uint64) error {
	gen := n.rangeSet.first.Load().appliedIndex()
	for _, sid := range shards {
		for _, rr := range n.rangeSet.all() {
			if rr.desc().Id != sid {
				continue
			}
			if _, err := rr.client.Write(ctx, &shardpb.Request{Op: &shardpb.Request_ShadowRevoke{ShadowRevoke: &shardpb.ShadowLease{Lease: id, Generation: gen}}}); err != nil {
				return fmt.Errorf("node: revoke lease %d in range %d: %w", id, sid, err)
			}
		}
		_, err := n.replica.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseUnregister{
			LeaseUnregister: &shardpb.LeaseShard{Lease: id, Shard: sid}}})
		if err != nil {
			return fmt.Errorf("node: mark lease %d revoked in range %d: %w", id, sid, err)
		}
	}
	return nil
}

// RemoteKeys implements router.RemoteLeases: the keys attached to lease id
// in the ranges registered at its home.
func (n *Node) RemoteKeys(ctx context.Context, id int64) ([][]byte, error) {
	shards, err := n.registered(ctx, id)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, sid := range shards {
		for _, rr := range n.rangeSet.all() {
			if rr.desc().Id != sid {
				continue
			}
			keys, err := rr.replica.ShadowKeys(ctx, id, true)
			if err != nil {
				return nil, err
			}
			out = append(out, keys...)
		}
	}
	return out, nil
}

// revokeRemotes finishes, while this node leads range 1, the revokes of
// leases whose keys in other ranges are not deleted yet: those that
// expired (the primary revokes them at the home only) and those whose
// revoke was cut short.
func (n *Node) revokeRemotes() {
	defer n.wg.Done()
	t := time.NewTicker(closedEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if leader, _, ok := n.replica.Leader(); !ok || leader != n.memberID {
			continue
		}
		pending, err := n.sm.Load().Lessor().PendingRevokes()
		if err != nil {
			n.log.Warn("read pending lease revokes", "error", err)
			continue
		}
		for id, shards := range pending {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := n.revokeIn(ctx, int64(id), shards)
			cancel()
			if err != nil {
				n.log.Warn("revoke a lease's keys in other ranges", "lease", int64(id), "error", err)
			}
		}
	}
}
