package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// The lease-revoke fan-out of sharded mode (DESIGN.md "Leases"): a lease
// revoked at its home (range 1) has its keys in other ranges deleted by
// those ranges (a shadow revoke), each range registered at the home, then
// the home marks that range done:
//
//	revoke 7 at home; home has 7 registered in ranges 2, 4
//	range 2: shadow-revoke 7 (generation: home's applied index) → home: unregister 7 in 2
//	range 4: shadow-revoke 7                                    → home: unregister 7 in 4
//
// A range is unregistered only once its shadows are revoked, so a revoke
// cut short (a failure, a crash, a lease that expired: the primary revokes
// it at the home only) leaves the rest pending at the home
// (lease.Lessor.PendingRevokes), which the member leading the home
// finishes (LeaseFanout.Start).

// LeaseHome is range 1, every lease's home, as only the process knows it.
type LeaseHome interface {
	// Leads reports whether this member leads the home now.
	Leads() bool
	// AppliedIndex is the raft index this member's replica of the home
	// has applied.
	AppliedIndex() uint64
	// PendingRevokes lists the leases revoked at the home whose shadows
	// are not all revoked yet, with the ranges still registered, as
	// committed here.
	PendingRevokes() (map[lease.ID][]uint64, error)
}

// ShadowReads is what the lease fan-out reads of a range's replica here
// (part of Replica).
type ShadowReads interface {
	// Registered lists the ranges registered at the home as holding keys
	// of lease id (on the home's replica).
	Registered(ctx context.Context, id int64, linearizable bool) ([]shard.RangeID, error)
	// ShadowKeys lists the range's keys attached to lease id.
	ShadowKeys(ctx context.Context, id int64, linearizable bool) ([][]byte, error)
}

// LeaseFanoutConfig wires a LeaseFanout.
type LeaseFanoutConfig struct {
	// Ranges holds this member's ranges, the home among them.
	Ranges *RangeCache
	// HomeID is the home's range id (range 1).
	HomeID shard.RangeID
	// Home is what only the process knows of the home.
	Home LeaseHome
	// Every is how often the member leading the home finishes pending
	// revokes.
	Every time.Duration
	// Try bounds each pending lease's revoke.
	Try time.Duration
	// Log receives the failures of pending revokes (they are tried again);
	// nil discards them.
	Log *slog.Logger
}

// LeaseFanout is the RemoteLeases of sharded mode, and the loop that
// finishes pending revokes (Start, Close).
//
// Concurrency: RevokeRemote and RemoteKeys may run in parallel, with each
// other and with the loop; revoking the same lease twice is harmless (a
// shadow revoke and an unregistration are idempotent).
type LeaseFanout struct {
	cfg LeaseFanoutConfig
	// ctx is cancelled by Close: it cuts short what the loop has under
	// way (which stays pending at the home).
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop has returned (or never ran)

	startOnce, closeOnce sync.Once
}

// NewLeaseFanout returns the fan-out of cfg; Start starts its loop.
func NewLeaseFanout(cfg LeaseFanoutConfig) *LeaseFanout {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	f := &LeaseFanout{cfg: cfg, done: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// Start starts the loop that, while this member leads the home, finishes
// the revokes left pending every cfg.Every.
func (f *LeaseFanout) Start() {
	f.startOnce.Do(func() { go f.run() })
}

// Close stops the loop and waits for it.
func (f *LeaseFanout) Close() {
	f.closeOnce.Do(f.cancel)
	f.startOnce.Do(func() { close(f.done) }) // never started
	<-f.done
}

// RevokeRemote implements RemoteLeases: for lease id, revoked at its home,
// each range registered as holding its keys deletes them and refuses the
// lease from then on (a shadow revoke), then the home marks that range
// done. A failure leaves the rest pending, for the loop.
func (f *LeaseFanout) RevokeRemote(ctx context.Context, id int64) error {
	ranges, err := f.registered(ctx, id)
	if err != nil {
		return err
	}
	return f.revokeIn(ctx, id, ranges)
}

// RemoteKeys implements RemoteLeases: the keys attached to lease id in the
// ranges registered at its home.
func (f *LeaseFanout) RemoteKeys(ctx context.Context, id int64) ([][]byte, error) {
	ranges, err := f.registered(ctx, id)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	seen := map[shard.RangeID]bool{}
	for _, rid := range f.resolve(ranges) {
		if seen[rid] {
			continue // two ranges registered merged into one since
		}
		seen[rid] = true
		var (
			keys [][]byte
			err  error
		)
		if e, ok := f.cfg.Ranges.started(rid); ok {
			keys, err = e.Local.Replica().ShadowKeys(ctx, id, true)
		} else if rc := f.cfg.Ranges.remote(rid); rc != nil {
			keys, err = rc.ShadowKeys(ctx, id, true)
		} else {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, keys...)
	}
	return out, nil
}

// registered reads, linearizably, the ranges registered at the home as
// holding keys of lease id.
func (f *LeaseFanout) registered(ctx context.Context, id int64) ([]shard.RangeID, error) {
	if rc := f.cfg.Ranges.remote(f.cfg.HomeID); rc != nil {
		return rc.Registered(ctx, id, true)
	}
	home, err := f.home()
	if err != nil {
		return nil, err
	}
	return home.Local.Replica().Registered(ctx, id, true)
}

// resolve is ranges with each range merged away replaced by the ranges
// holding its keys now (RangeCache.Successor): their lessors took over
// its attachments under the same lease ids. A range the cache knows
// nothing of stays as it is.
func (f *LeaseFanout) resolve(ranges []shard.RangeID) []shard.RangeID {
	var out []shard.RangeID
	for _, rid := range ranges {
		if succ := f.cfg.Ranges.Successor(rid); len(succ) > 0 {
			out = append(out, succ...)
		} else {
			out = append(out, rid)
		}
	}
	return out
}

// revokeIn revokes the shadows of lease id in ranges and marks each done
// at the home. The ranges refuse registrations of the lease made up to
// now: up to the home's index here, which is past the revoke (read
// linearizably before). A range not started here is only marked done. A
// range merged away is revoked in the ranges holding its keys now
// (shadowRevoke), and marked done itself.
func (f *LeaseFanout) revokeIn(ctx context.Context, id int64, ranges []shard.RangeID) error {
	var (
		home Shard
		gen  uint64
	)
	if rc := f.cfg.Ranges.remote(f.cfg.HomeID); rc != nil {
		// The home's index on a member holding it, read after the revoke.
		st, err := rc.Status(ctx, true)
		if err != nil {
			return err
		}
		home, gen = rc, st.AppliedIndex
	} else {
		e, err := f.home()
		if err != nil {
			return err
		}
		home, gen = e.Local.Replica(), f.cfg.Home.AppliedIndex()
	}
	for _, rid := range ranges {
		if err := f.shadowRevoke(ctx, id, gen, rid); err != nil {
			return err
		}
		_, err := home.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseUnregister{
			LeaseUnregister: &shardpb.LeaseShard{Lease: id, Shard: uint64(rid)}}})
		if err != nil {
			return fmt.Errorf("router: mark lease %d revoked in range %d: %w", id, rid, err)
		}
	}
	return nil
}

// shadowRevoke revokes the shadows of lease id in range rid, or, once rid
// is merged away, in the ranges holding its keys now. A range frozen for
// a merge (shard.ErrMerging) is tried again until ctx ends: the merge
// either commits, and the range absorbing it takes the revoke (a holder
// of it answers with that range's descriptor, OutsideRangeError, which
// the cache takes in), or is undone, and the range takes it itself.
func (f *LeaseFanout) shadowRevoke(ctx context.Context, id int64, gen uint64, rid shard.RangeID) error {
	req := &shardpb.Request{Op: &shardpb.Request_ShadowRevoke{ShadowRevoke: &shardpb.ShadowLease{Lease: id, Generation: gen}}}
	pause := time.Millisecond
	for moves := 0; ; {
		var err error
		for _, sid := range f.resolve([]shard.RangeID{rid}) {
			e, ok := f.cfg.Ranges.started(sid)
			if !ok && f.cfg.Ranges.remote(sid) == nil {
				continue // not started here: marked done only
			}
			if !ok {
				e, _ = f.cfg.Ranges.entry(sid)
			}
			if _, err = e.Shard.Write(ctx, req); err != nil {
				break
			}
		}
		var o *shard.OutsideRangeError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &o) && moves < reroutes:
			moves++
			f.cfg.Ranges.Refresh(o.Range)
		case o != nil || !errors.Is(err, shard.ErrMerging):
			return fmt.Errorf("router: revoke lease %d in range %d: %w", id, rid, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("router: revoke lease %d in range %d: %w", id, rid, err)
		case <-time.After(pause):
		}
		pause = min(2*pause, mergeRetryMax)
	}
}

// home is the home's entry; its replica here is started.
func (f *LeaseFanout) home() (RangeEntry, error) {
	e, ok := f.cfg.Ranges.started(f.cfg.HomeID)
	if !ok {
		return RangeEntry{}, fmt.Errorf("%w: range %d, the leases' home, is not started here", shard.ErrNoLeader, f.cfg.HomeID)
	}
	return e, nil
}

// run finishes, while this member leads the home, the revokes of leases
// whose keys in other ranges are not deleted yet: those that expired (the
// primary revokes them at the home only) and those whose revoke was cut
// short.
func (f *LeaseFanout) run() {
	defer close(f.done)
	t := time.NewTicker(f.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		if !f.cfg.Home.Leads() {
			continue
		}
		pending, err := f.cfg.Home.PendingRevokes()
		if err != nil {
			f.cfg.Log.Warn("read pending lease revokes", "error", err)
			continue
		}
		for id, ranges := range pending {
			ctx, cancel := context.WithTimeout(f.ctx, f.cfg.Try)
			ids := make([]shard.RangeID, len(ranges))
			for i, r := range ranges {
				ids[i] = shard.RangeID(r)
			}
			err := f.revokeIn(ctx, int64(id), ids)
			cancel()
			if err != nil {
				f.cfg.Log.Warn("revoke a lease's keys in other ranges", "lease", int64(id), "error", err)
			}
		}
	}
}

// started returns range id's entry if its replica here is started.
func (c *RangeCache) started(id shard.RangeID) (RangeEntry, bool) {
	e, ok := c.view.Load().entries[id]
	if !ok || e.Local == nil {
		return RangeEntry{}, false
	}
	select {
	case <-e.Local.Ready():
		return e, true
	default:
		return RangeEntry{}, false
	}
}

// remote returns range id's client if the range has no replica here.
func (c *RangeCache) remote(id shard.RangeID) *RangeClient {
	e, ok := c.view.Load().entries[id]
	if !ok || e.Local != nil {
		return nil
	}
	rc, _ := e.Shard.(*RangeClient)
	return rc
}

// entry returns range id's entry.
func (c *RangeCache) entry(id shard.RangeID) (RangeEntry, bool) {
	e, ok := c.view.Load().entries[id]
	return e, ok
}
