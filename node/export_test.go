package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"sync"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// AppliedIndex is the raft index range id's replica here has applied, for
// tests that check what a range writes to its log.
func (n *Node) AppliedIndex(ctx context.Context, id uint64) (uint64, error) {
	for _, rr := range n.rangeSet.All() {
		if uint64(rr.ID()) == id {
			st, err := rr.Replica().Status(ctx, false)
			if err != nil {
				return 0, err
			}
			return st.AppliedIndex, nil
		}
	}
	return 0, nil
}

// PlacementLeader is the member this node knows to lead the placement
// group (0: none known), for tests that stop it.
func (n *Node) PlacementLeader() uint64 {
	leader, _, ok, err := n.nh.GetLeaderID(placementShardID)
	if err != nil || !ok {
		return 0
	}
	return leader
}

// MemberID is this node's member id.
func (n *Node) MemberID() uint64 { return n.memberID }

// OracleRevisions asks this node's oracle client for count revisions, as
// a range's sequencer does; OracleRoundTrips counts the requests it sent
// to the placement leader's node.
func (n *Node) OracleRevisions(ctx context.Context, count int64) (int64, error) {
	first, err := n.oracle.Revisions(ctx, count)
	return int64(first), err
}

func (n *Node) OracleRoundTrips() int64 { return n.oracle.RoundTrips() }

// CutSplitsShort makes this node's SplitRange stop where a crash may stop
// it: "map" after the range map names the new range and before the range
// splits, "start" after the range split but before the new range starts
// here. The returned function puts things back.
func (n *Node) CutSplitsShort(stage string) (restore func()) {
	switch stage {
	case "map":
		n.hooks.splitCutShort.Store(true)
	case "start":
		n.hooks.splitNoStart.Store(true)
	default:
		panic("node: no such split stage: " + stage)
	}
	return func() { n.hooks.splitCutShort.Store(false); n.hooks.splitNoStart.Store(false) }
}

// SplitHere reports whether the split that made range id applied to this
// node's store (mvcc.SplitHere).
func (n *Node) SplitHere(id uint64) (bool, error) { return mvcc.SplitHere(n.db, id) }

// SideChannelReceived is what the side channel of closed revisions
// brought this node: messages, the most ranges one carried and the most
// handled at once.
func (n *Node) SideChannelReceived() (messages, maxRanges, maxInFlight int64) {
	return n.side.Received()
}

// Closed reports the closed revision this node's client of range id knows
// (0 for an unknown range): what the side channel publishes.
func (n *Node) Closed(id uint64) mvcc.Revision {
	if r := n.rangeSet.Get(shard.RangeID(id), true); r != nil {
		return r.Replica().Closed()
	}
	return 0
}

// RangeInfo is one range as /cairn/ranges (and `cairn ranges`) shows it.
type RangeInfo = router.RangeInfo

// Ranges returns this node's view of the range map (nil in single-group
// mode): router.Server.Ranges.
func (n *Node) Ranges() []RangeInfo {
	if n.rs == nil {
		return nil // not started
	}
	return n.rs.Ranges()
}

// SplitRange splits the range holding key at key, while it serves, and
// returns the two ranges the split made, as `cairn range split` has the
// node-to-node service do (router.Member.SplitRange).
func (n *Node) SplitRange(ctx context.Context, key []byte) ([]*placementpb.RangeDescriptor, error) {
	return n.member.SplitRange(ctx, key)
}

// StopRangeReplica stops this member's replica of range id in raft
// (dragonboat's StopReplica, under the replica's id), leaving the rest of
// the node running: the range loses this member's vote.
func (n *Node) StopRangeReplica(id uint64) error {
	r := n.rangeSet.Get(shard.RangeID(id), false)
	if r == nil {
		return fmt.Errorf("node: no range %d here", id)
	}
	return n.nh.StopReplica(id, uint64(r.ReplicaID()))
}

// LegacyBootstrap makes a new sharded cluster bootstrap its range map as
// before replica ids were allocated (every founder holds every range under
// its member id), for tests of data directories made then; later starts
// are unaffected.
func LegacyBootstrap(cfg *Config) { cfg.legacyBootstrap = true }

// RangeMap reads the range map through the placement group.
func (n *Node) RangeMap(ctx context.Context) ([]*placementpb.RangeDescriptor, error) {
	st, err := n.placement.State(ctx)
	if err != nil {
		return nil, err
	}
	return st.Ranges, nil
}

// RaftReplicas returns, by range id, the voting replica ids of each range
// this node runs, as its raft membership has them here.
func (n *Node) RaftReplicas() map[uint64][]uint64 {
	out := n.rangeSet.RaftMembers()
	delete(out, placementShardID)
	return out
}

// LocalReplicas returns this node's replica id in each range it runs.
func (n *Node) LocalReplicas() map[uint64]uint64 {
	out := map[uint64]uint64{}
	for _, r := range n.rangeSet.All() {
		out[uint64(r.ID())] = uint64(r.ReplicaID())
	}
	return out
}

// RefreshRangeStats computes the ranges' figures now, as the refresher
// does every 15 s, for tests that scrape them.
func (n *Node) RefreshRangeStats() { n.stats.refresh() }

// RaftSettings are the pre-vote and catch-up entries the ranges' raft
// groups start with (Config.DisablePreVote, SnapshotCatchUpEntries).
func (n *Node) RaftSettings() (preVote bool, catchUpEntries uint64) {
	return n.raftCfg.PreVote, n.raftCfg.CompactionOverhead
}

// PlacementNonVoting reports whether this node's placement replica is
// non-voting, as its raft shard info says (ok false: not known).
func (n *Node) PlacementNonVoting() (nonVoting, ok bool) {
	info := n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
	for _, s := range info.ShardInfoList {
		if s.ShardID == placementShardID && !s.Pending {
			return s.IsNonVoting, true
		}
	}
	return false, false
}

// NodeRecords reads the members' node records in the placement group,
// through its leader.
func (n *Node) NodeRecords(ctx context.Context) (map[uint64]*placementpb.Node, error) {
	return n.placementNodes(ctx, true)
}

// CutDropShort makes the drop of this node's replica of range id stop
// right after its data batch, as a crash there would (its event log sweep
// not begun, its record left); the next start finishes it. The returned
// function puts things back.
func (n *Node) CutDropShort(id uint64) (restore func()) {
	n.hooks.dropCutShort.Store(id)
	return func() { n.hooks.dropCutShort.Store(0) }
}

// HoldMovesAt holds each move this node drives right after its step
// (one of placement.MoveSteps) until release is called (which a test must
// do before the node closes); reached is closed once a move got there.
func (n *Node) HoldMovesAt(step string) (reached <-chan struct{}, release func()) {
	at, done := make(chan struct{}), make(chan struct{})
	var reachOnce, releaseOnce sync.Once
	f := func(s string) {
		if s != step {
			return
		}
		reachOnce.Do(func() { close(at) })
		<-done
	}
	n.hooks.moveStep.Store(&f)
	return at, func() {
		releaseOnce.Do(func() {
			n.hooks.moveStep.Store(nil)
			close(done)
		})
	}
}

// StoredKinds counts the keys in this node's pebble by kind (their first
// byte: 'k' versions, 'e' event log, 'm' stores' records, 'l' lessors'
// records, 'r' replica records).
func (n *Node) StoredKinds() (map[byte]int, error) { return storedKinds(n.db) }

// StoredKindsIn is StoredKinds of the pebble of a stopped node's data
// directory.
func StoredKindsIn(dataDir string) (_ map[byte]int, err error) {
	db, err := pebble.Open(filepath.Join(dataDir, "state"), mvcc.PebbleOptions(&pebble.Options{Logger: quietPebble{}}))
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	return storedKinds(db)
}

func storedKinds(db *pebble.DB) (map[byte]int, error) {
	it, err := db.NewIter(nil)
	if err != nil {
		return nil, err
	}
	out := map[byte]int{}
	for it.First(); it.Valid(); it.Next() {
		out[it.Key()[0]]++
	}
	return out, it.Close()
}

// RangeData counts what this node's pebble holds of range id, whose span
// was d's, by kind: 'k' the versions of keys in the span, 'e' the event
// log entries of keys in the span (an event record is keyed by revision
// and shared by every range, so entries count, not records), 'm' and 'l'
// the records of its store and of its lessor, 'r' its replica records.
// The data of the member's other ranges is not counted.
func (n *Node) RangeData(d *placementpb.RangeDescriptor) (map[byte]int, error) {
	id, sp := d.Id, shard.SpanOf(d)
	out := map[byte]int{}
	count := func(kind byte, lo, hi []byte) error {
		it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		for it.First(); it.Valid(); it.Next() {
			out[kind]++
		}
		return it.Close()
	}
	lo, hi := mvcc.VersionBounds(sp)
	if err := count('k', lo, hi); err != nil {
		return nil, err
	}
	for _, kind := range []byte{'m', 'l', 'r'} {
		if err := count(kind, binary.BigEndian.AppendUint64([]byte{kind}, id),
			binary.BigEndian.AppendUint64([]byte{kind}, id+1)); err != nil {
			return nil, err
		}
	}
	// A sweep of the span that finds every key owned changes nothing and
	// asks about each entry of the span once.
	from, more := mvcc.Revision(0), true
	for more {
		var err error
		from, more, err = mvcc.SweepEvents(n.db, n.events, sp, func([]byte) bool { out['e']++; return true }, from, 10000)
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ReplicaRecords returns this node's replica records (shard.Records).
func (n *Node) ReplicaRecords() ([]shard.ReplicaRecord, error) { return shard.Records(n.db) }

// RaftData reports what this node's raft directory holds of replica of
// raft shard shardID: its bootstrap record (dragonboat's HasNodeInfo) and
// the snapshots in its snapshot directory.
func (n *Node) RaftData(shardID, replica uint64) (bootstrap bool, snapshots []string, err error) {
	name := fmt.Sprintf("snapshot-%d-%d", shardID, replica)
	err = filepath.WalkDir(n.nhConfig.NodeHostDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || filepath.Base(filepath.Dir(path)) != name {
			return err
		}
		snapshots = append(snapshots, path)
		return filepath.SkipDir
	})
	return n.nh.HasNodeInfo(shardID, replica), snapshots, err
}

// DeleteRecordsIn deletes every replica record in the pebble of a stopped
// node's data directory, as a data directory made before replicas were
// recorded has none.
func DeleteRecordsIn(dataDir string) (err error) {
	db, err := pebble.Open(filepath.Join(dataDir, "state"), mvcc.PebbleOptions(&pebble.Options{Logger: quietPebble{}}))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	return db.DeleteRange([]byte{'r'}, []byte{'r' + 1}, pebble.Sync)
}

// HoldCheckedWrites makes this node's client writes wait, once their
// permissions were checked and before they are proposed, until release is
// called; held receives once for each write that reached the hold.
func (n *Node) HoldCheckedWrites() (held <-chan struct{}, release func()) {
	ch := make(chan struct{}, 16)
	gate := make(chan struct{})
	f := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
		<-gate
	}
	n.hooks.checkedWrite.Store(&f)
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			n.hooks.checkedWrite.Store(nil)
			close(gate)
		})
	}
}

// DropAuthFences makes the auth changes made through this node skip their
// fences, as if it crashed once each change applied in range 1; restore
// puts things back.
func (n *Node) DropAuthFences() (restore func()) {
	n.hooks.dropAuthFence.Store(true)
	return func() { n.hooks.dropAuthFence.Store(false) }
}

// RangeAuthFence is the auth revision this node's replica of range id has
// been fenced with (shard.Range.AuthFence; 0: no replica here).
func (n *Node) RangeAuthFence(id uint64) uint64 {
	for _, rr := range n.rangeSet.All() {
		if uint64(rr.ID()) == id {
			return rr.AuthFence()
		}
	}
	return 0
}

// AuthRemoteReads returns how many times this node's router read the
// auth state from range 1 through its cache; false if it does not cache
// it (it holds range 1).
func (n *Node) AuthRemoteReads() (uint64, bool) {
	c := n.rs.AuthCache()
	if c == nil {
		return 0, false
	}
	return c.RemoteReads(), true
}

// CompactRevisions returns, by range id, the compacted revision of each
// replica this node runs (-1: never compacted).
func (n *Node) CompactRevisions() map[uint64]int64 {
	out := map[uint64]int64{}
	for _, r := range n.rangeSet.All() {
		st, err := r.Replica().Status(context.Background(), false)
		if err != nil {
			continue
		}
		out[uint64(r.ID())] = int64(st.CompactRevision)
	}
	return out
}

// CorruptVersion changes, behind raft's back, the newest version record
// of key in this node's pebble (a byte appended to its value), as a disk
// or a bug might: the replica's hash no longer matches the others'.
func (n *Node) CorruptVersion(key string) error {
	lo := append([]byte{'k'}, key...)
	it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: append(append([]byte(nil), lo...), 0xff)})
	if err != nil {
		return err
	}
	defer it.Close()
	if !it.First() {
		return fmt.Errorf("node: no version of %q here", key)
	}
	k := append([]byte(nil), it.Key()...)
	v := append(append([]byte(nil), it.Value()...), 'x')
	return n.db.Set(k, v, pebble.Sync)
}

// FeedSources returns, by range id, the member feeding this member's
// mirror of each range held elsewhere that has an open feed (router.Mirrors).
func (n *Node) FeedSources() map[uint64]uint64 {
	out := map[uint64]uint64{}
	if n.mirrors == nil {
		return out
	}
	for id, m := range n.mirrors.Sources() {
		out[uint64(id)] = uint64(m)
	}
	return out
}

// DestinationSnapshots counts the snapshots that the move destinations
// started on this node were restored from.
func (n *Node) DestinationSnapshots() int64 { return n.destinationSnapshots.Load() }

// MirrorFeeds returns how many feeds this node's mirrors of ranges held
// elsewhere have open (router.Mirrors.Feeds).
func (n *Node) MirrorFeeds() int {
	if n.mirrors == nil {
		return 0
	}
	return n.mirrors.Feeds()
}

// RaftLogShardsFile is the name of the record of a data directory's
// raft-log partitions, in its raft directory.
const RaftLogShardsFile = raftLogShardsFile

// RaftLogShards is the raft-log partition count the node runs with.
func (n *Node) RaftLogShards() uint64 { return n.nhConfig.Expert.LogDB.Shards }

// MergeLeft merges the range right of range left into left, while both
// serve, as `cairn range merge` has the placement leader's member do
// (forwarded there), and returns left as the merge left it.
func (n *Node) MergeLeft(ctx context.Context, left uint64) (*placementpb.RangeDescriptor, error) {
	return n.MergeRange(ctx, shard.RangeID(left), true)
}

// CutMergesShort stops every merge this node drives right after step (one
// of placement.MergeSteps), as a crash of this node there would (the merge
// returns placement.ErrCrashed, its record left open for the next
// placement leader's Resume). The returned function puts things back.
func (n *Node) CutMergesShort(step string) (restore func()) {
	f := func(s string) bool { return s == step }
	n.hooks.mergeStep.Store(&f)
	return func() { n.hooks.mergeStep.Store(nil) }
}

// OpenMerges reads the merges open in the range map, through the
// placement group.
func (n *Node) OpenMerges(ctx context.Context) ([]*placementpb.Merge, error) {
	st, err := n.placement.State(ctx)
	if err != nil {
		return nil, err
	}
	return st.Merges, nil
}

// HoldMergesAt holds each merge this node drives right after its step
// (one of placement.MergeSteps) until release is called (which a test
// must do before the node closes); reached is closed once a merge got
// there.
func (n *Node) HoldMergesAt(step string) (reached <-chan struct{}, release func()) {
	return holdAt(&n.hooks.mergeStep, step)
}

// holdAt sets hook to hold whoever passes step until release is called;
// reached is closed once one got there.
func holdAt(hook *atomic.Pointer[func(step string) bool], step string) (reached <-chan struct{}, release func()) {
	at, done := make(chan struct{}), make(chan struct{})
	var reachOnce, releaseOnce sync.Once
	f := func(s string) bool {
		if s == step {
			reachOnce.Do(func() { close(at) })
			<-done
		}
		return false
	}
	hook.Store(&f)
	return at, func() {
		releaseOnce.Do(func() {
			hook.Store(nil)
			close(done)
		})
	}
}

// CutTxnsShort stops every cross-range transaction this node coordinates
// right after step (one of router.TxnSteps), as a crash of this member
// there would: no abort, no commit; the client gets etcd's timeout and
// the resolver settles what is left. The returned function puts things
// back.
func (n *Node) CutTxnsShort(step string) (restore func()) {
	f := func(s string) bool { return s == step }
	n.hooks.txnStep.Store(&f)
	return func() { n.hooks.txnStep.Store(nil) }
}

// HoldTxnsAt holds each cross-range transaction this node coordinates
// right after step (one of router.TxnSteps) until release is called
// (which a test must do before the node closes); reached is closed once a
// transaction got there. Released, the coordinator goes on.
func (n *Node) HoldTxnsAt(step string) (reached <-chan struct{}, release func()) {
	return holdAt(&n.hooks.txnStep, step)
}

// RangeLocks lists the locks of cross-range transactions that this
// node's replica of range id holds (none if it holds no replica).
func (n *Node) RangeLocks(ctx context.Context, id uint64) ([]uint64, error) {
	r := n.rangeSet.Get(shard.RangeID(id), false)
	if r == nil {
		return nil, nil
	}
	locks, err := r.Replica().Locks(ctx, false)
	var ids []uint64
	for _, l := range locks {
		ids = append(ids, l.Id)
	}
	return ids, err
}
