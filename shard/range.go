package shard

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/watch"
)

// Range is this member's replica of one range (DESIGN.md "Parts": shard
// owns a range): its raft replica and state machine, its proposer
// (Replica), its watch hub — fed by what applies, caught up from the store
// for watchers that lag — and, in sharded mode, its closed revision: raised
// by a closer while this member leads, or taken from what the leader
// published once this replica has applied as far.
//
//	NewRange → Start (raft replica, proposer, catch-up, closer) → … → Close
//
// Range 1 is a range like any other; what only it carries (the cluster's
// records, the lease home) comes in through the Config given to Start.
// Methods may be called from any goroutine; Start once, before anything
// else but the accessors.
type Range struct {
	cfg RangeConfig
	d   atomic.Pointer[placementpb.RangeDescriptor]
	sm  atomic.Pointer[StateMachine]
	hub *watch.Hub
	// replica is set by Start before ready is closed.
	replica *Replica
	ready   chan struct{}

	// pub is the closed revision the range's leader last published, to
	// pass to the hub once this replica has applied as far as the leader
	// had (zero: none waiting).
	pubMu sync.Mutex
	pub   struct {
		closed mvcc.Revision
		index  uint64
	} // REQUIRES: pubMu

	// want is the closed revision watches wait for; kick (size 1) wakes
	// the closer for it.
	want atomic.Int64
	kick chan struct{}

	stop      chan struct{}
	wg        sync.WaitGroup
	stopOnce  sync.Once
	closeOnce sync.Once
}

// RangeConfig is what every range of a member shares, but for its replica id.
type RangeConfig struct {
	// NodeHost runs the range's raft replica.
	NodeHost *dragonboat.NodeHost
	// ReplicaID is this member's replica of the range: its id in the
	// range's raft group (a member's replicas of different ranges have
	// different ids, allocated by placement; its member id in ranges
	// founded before that, and in single-group mode).
	ReplicaID ReplicaID
	// Stamper stamps writes with the oracle's revisions (sharded mode);
	// nil: single-group mode, which also has no closed revision.
	Stamper Stamper
	// ProgressEvery is how often watchers that asked for progress
	// notifications get one.
	ProgressEvery time.Duration
	// CloseEvery is the closer's period (the member's closers share one
	// clock, Tick); an attempt to close gives up after four of them.
	CloseEvery time.Duration
	// Tick, in sharded mode, is the member's closer clock: a channel that
	// is closed at the next tick.
	Tick func() <-chan struct{}
	// Publish, in sharded mode, sends the range's closed revision, as this
	// member leads it, to its other replicas (with the index applied here:
	// Published on the other side).
	Publish func(r *Range, closed mvcc.Revision)
	// ForwardKick, in sharded mode, asks the leader's member to close rev
	// soon, for watches here.
	ForwardKick func(r *Range, leader ReplicaID, rev mvcc.Revision)
	// Log receives what goes wrong in the background.
	Log *slog.Logger
}

// NewRange returns this member's replica of range d, not started, its watch
// hub at rev (the revision the range's data reaches: 0 for one that opens
// its store, the split's for one a split makes).
func NewRange(cfg RangeConfig, d *placementpb.RangeDescriptor, rev mvcc.Revision) *Range {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	r := &Range{cfg: cfg, hub: watch.NewHub(rev), ready: make(chan struct{}), kick: make(chan struct{}, 1), stop: make(chan struct{})}
	r.d.Store(d)
	return r
}

// Descriptor is the range's descriptor; a split replaces it.
func (r *Range) Descriptor() *placementpb.RangeDescriptor { return r.d.Load() }

// SetDescriptor replaces the range's descriptor (a split changed it).
func (r *Range) SetDescriptor(d *placementpb.RangeDescriptor) { r.d.Store(d) }

// SetReplicas replaces the range's descriptor with the map's d when d is
// the same range at the same generation (same span) naming other replicas:
// a move changed them, which no split records here. A descriptor of
// another generation (a split not applied on one side yet) is left alone;
// the swap is atomic against a split's SetDescriptor. d is not modified
// afterwards by the caller. It reports whether it replaced the descriptor.
func (r *Range) SetReplicas(d *placementpb.RangeDescriptor) bool {
	old := r.d.Load()
	if old.Id != d.Id || old.Generation != d.Generation || !bytes.Equal(old.Start, d.Start) || !bytes.Equal(old.End, d.End) {
		return false
	}
	if proto.Equal(old, d) {
		return false
	}
	return r.d.CompareAndSwap(old, d)
}

// ID is the range's id, its raft shard id.
func (r *Range) ID() RangeID { return RangeID(r.d.Load().Id) }

// ReplicaID is this member's replica id in the range's raft group.
func (r *Range) ReplicaID() ReplicaID { return r.cfg.ReplicaID }

// Hub is the range's watch hub.
func (r *Range) Hub() *watch.Hub { return r.hub }

// Replica is the range's proposer and reader; nil before Start.
func (r *Range) Replica() *Replica {
	if !r.Started() {
		return nil
	}
	return r.replica
}

// StateMachine is this member's state machine of the range, nil until
// dragonboat has created it.
func (r *Range) StateMachine() *StateMachine { return r.sm.Load() }

// Counting reports whether this member's replica numbers the range's
// revisions itself (StateMachine.Counting): false before dragonboat has
// created its state machine, and once a split has applied here.
func (r *Range) Counting() bool {
	sm := r.sm.Load()
	return sm != nil && sm.Counting()
}

// Ready is closed once the range is started.
func (r *Range) Ready() <-chan struct{} { return r.ready }

// Started reports whether Start has started the range.
func (r *Range) Started() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// AppliedIndex is the raft index this replica has applied (0: not open).
func (r *Range) AppliedIndex() uint64 {
	if m := r.sm.Load(); m != nil {
		return m.AppliedIndex()
	}
	return 0
}

// Leads reports whether this member's replica leads the range now.
func (r *Range) Leads() bool {
	if !r.Started() {
		return false
	}
	leader, _, ok := r.replica.Leader()
	return ok && leader == r.cfg.ReplicaID
}

// PendingRevokes lists the leases revoked at this range, their home, whose
// shadows in other ranges are not all revoked yet, with the ranges still
// registered, as committed here (lease.Lessor.PendingRevokes).
func (r *Range) PendingRevokes() (map[lease.ID][]uint64, error) {
	m := r.sm.Load()
	if m == nil || m.Lessor() == nil {
		return nil, ErrClosed
	}
	return m.Lessor().PendingRevokes()
}

// Start starts the range's raft replica with cfg as its state machine's
// config (its OnApply, if any, is called before the hub is fed), its
// proposer, its watch catch-up and, in sharded mode, its closer. members
// and join are dragonboat's StartOnDiskReplica's; raftCfg's ShardID is the
// range's id, its ReplicaID this replica's (RangeConfig.ReplicaID).
func (r *Range) Start(cfg Config, members map[uint64]dragonboat.Target, join bool, raftCfg dbconfig.Config) error {
	onApply := cfg.OnApply
	cfg.OnApply = func(closed mvcc.Revision, evs []*mvccpb.Event) {
		if onApply != nil {
			onApply(closed, evs)
		}
		rev := closed
		for _, ev := range evs {
			rev = max(rev, mvcc.Revision(ev.Kv.ModRevision))
		}
		// The hub holds what applied above the locks' lowest cap until
		// they are resolved (docs/plan-txn.md, invariant 2): the commit at
		// R reaches watchers whole and before the range's later writes.
		r.hub.Apply(rev, evs, r.lockLimit())
		r.settlePublished()
	}
	// A snapshot restore replaces the store: watchers that lack its
	// revisions read them from it (as far as its locks allow).
	cfg.onRestored = func(rev, limit mvcc.Revision) { r.hub.Sync(rev, limit) }
	factory := Factory(cfg)
	raftCfg.ShardID, raftCfg.ReplicaID = uint64(r.ID()), uint64(r.cfg.ReplicaID)
	err := r.cfg.NodeHost.StartOnDiskReplica(members, join, func(shardID, replicaID uint64) sm.IOnDiskStateMachine {
		m := factory(shardID, replicaID).(*StateMachine)
		r.sm.Store(m)
		return m
	}, raftCfg)
	if err != nil {
		return fmt.Errorf("shard: start range %d: %w", r.ID(), err)
	}
	r.replica = NewStampingReplica(r.cfg.NodeHost, r.ID(), r.cfg.ReplicaID, r.cfg.Stamper, r.sm.Load)
	r.replica.obs = cfg.Observer
	rtt := time.Duration(r.cfg.NodeHost.NodeHostConfig().RTTMillisecond) * time.Millisecond
	r.replica.SetElectionTimeout(time.Duration(raftCfg.ElectionRTT) * rtt)
	close(r.ready)
	r.wg.Add(1)
	go r.catchUp()
	if r.cfg.Stamper != nil && r.cfg.Tick != nil {
		r.wg.Add(1)
		go r.closer()
	}
	return nil
}

// lockLimit is the state machine's LockLimit (watch.NoHold before it is
// created).
func (r *Range) lockLimit() mvcc.Revision {
	if m := r.sm.Load(); m != nil {
		return m.LockLimit()
	}
	return watch.NoHold
}

// SyncHub moves the watch hub to the revision this replica has applied,
// once its state machine is open (a restart's, before watchers come), as
// far as the locks it holds allow: the rest is read from the store once
// they are resolved.
func (r *Range) SyncHub(ctx context.Context) error {
	for {
		st, err := r.replica.Status(ctx, false)
		if err == nil {
			hold := watch.NoHold
			if st.Locks > 0 {
				hold = st.LockCap
			}
			r.hub.Sync(st.Revision, hold)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("shard: read range %d's revision: %w", r.ID(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop ends the range's catch-up and closer and waits for them; the
// proposer still serves.
func (r *Range) Stop() {
	r.stopOnce.Do(func() { close(r.stop) })
	r.wg.Wait()
}

// Close stops the range's goroutines and its proposer (not its raft
// replica: that is the NodeHost's), and waits for them.
func (r *Range) Close() {
	r.Stop()
	r.closeOnce.Do(func() {
		if r.Started() {
			r.replica.Close()
		}
	})
}

// watchCatchupRevs bounds the revisions one catch-up round reads.
const watchCatchupRevs = 1000

// catchUp feeds watchers that lag behind the hub from the store, and sends
// progress notifications on ProgressEvery.
func (r *Range) catchUp() {
	defer r.wg.Done()
	tick := time.NewTicker(r.cfg.ProgressEvery)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
			r.hub.ProgressTick()
			continue
		case <-r.hub.Pending():
		}
		for m := r.sm.Load(); m != nil; {
			more, err := r.hub.Catchup(m, watchCatchupRevs)
			if err != nil {
				r.cfg.Log.Warn("watch catch-up failed", "range", r.ID(), "error", err)
				break
			}
			if !more {
				break
			}
		}
	}
}

// Published takes a closed revision the range's leader published with the
// index it had applied: the hub gets it once this replica has applied that
// far (every write at or below it is then applied here).
func (r *Range) Published(closed mvcc.Revision, index uint64) {
	r.pubMu.Lock()
	if closed > r.pub.closed {
		r.pub.closed, r.pub.index = closed, index
	}
	r.pubMu.Unlock()
	r.settlePublished()
}

// settlePublished passes a published closed revision to the hub if this
// replica has applied far enough.
func (r *Range) settlePublished() {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	if r.pub.closed == 0 || r.AppliedIndex() < r.pub.index {
		return
	}
	r.hub.Advance(r.pub.closed)
	r.pub.closed, r.pub.index = 0, 0
}

// WantClosed asks the range's closer to raise the closed revision to rev
// soon (a watch here waits for it).
func (r *Range) WantClosed(rev mvcc.Revision) {
	for {
		old := r.want.Load()
		if int64(rev) <= old || r.want.CompareAndSwap(old, int64(rev)) {
			break
		}
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Wanted is the highest closed revision watches here asked for.
func (r *Range) Wanted() mvcc.Revision { return mvcc.Revision(r.want.Load()) }

// closer raises, on every tick, the closed revision of the range while this
// member leads it and it has no write in flight (Replica.AdvanceIdle: an
// oracle revision confirmed by a read index, no log write after the first
// in a term; a range that counts is closed at its revision), so that
// readers and watchers of idle ranges need not ask, and passes it to the
// hub and to the other replicas (Publish); a watch waiting on the range
// kicks it sooner (WantClosed), here or at the leader's member
// (ForwardKick). A range busy with writes closes through them.
func (r *Range) closer() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.cfg.Tick():
		case <-r.kick:
			if leader, _, ok := r.replica.Leader(); ok && leader != r.cfg.ReplicaID && r.cfg.ForwardKick != nil {
				r.cfg.ForwardKick(r, leader, r.Wanted())
			}
		}
		// A kick is retried briefly while writes in flight hold the closed
		// revision back, as they settle within milliseconds.
		for wait := time.Millisecond; ; wait *= 2 {
			if leader, _, ok := r.replica.Leader(); !ok || leader != r.cfg.ReplicaID {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.CloseEvery*4)
			closed, err := r.replica.AdvanceIdle(ctx) // a failure leaves it for the next tick
			cancel()
			r.hub.Advance(closed)
			// A range that counts is closed at its revision on every
			// replica as it applies: nothing to tell the others.
			if closed > 0 && r.cfg.Publish != nil && !r.replica.counting() {
				r.cfg.Publish(r, closed)
			}
			if err != nil || closed >= r.Wanted() || wait > r.cfg.CloseEvery/4 {
				break
			}
			select {
			case <-r.stop:
				return
			case <-time.After(wait):
			}
		}
	}
}
