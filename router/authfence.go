package router

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// The auth fence (docs/plan-auth.md). In sharded mode the auth state lives
// in range 1; the other ranges learn of a change through a fence: after a
// change applies, the router that made it sends every range the state's
// revision (and whether auth is on) and answers only once each applied it.
// A range refuses a client write checked at an older revision. So once a
// revoke is acknowledged no range applies a write checked before it, and a
// write a range applied before the fence was ordered before the
// acknowledgement.
//
// A member that crashes after the change applied and before every range
// has the fence leaves those ranges behind (the change was never
// acknowledged, but it holds). The member leading range 1 repairs that
// (AuthFencer): it compares range 1's auth state with the fence it knows
// each range has and sends the missing ones.

// fenceRetry is the pause between attempts to fence a range that refused
// or could not be reached (a leader change, a split under way).
const fenceRetry = 50 * time.Millisecond

// mutates reports whether r changes the auth state (the others only read).
func mutates(r *pb.InternalRaftRequest) bool {
	return r.AuthStatus == nil && r.AuthUserGet == nil && r.AuthUserList == nil && r.AuthRoleGet == nil && r.AuthRoleList == nil
}

// fenceAll sends the auth state as it is now (read linearizably, so at or
// after the change just applied) as a fence to every range but range 1,
// trying a range again until it applied it or ctx ends. Ranges split off
// meanwhile are fenced too: it passes over the ranges until a pass finds
// none it has not fenced (a range split off a fenced one inherits the
// fence). Before the first split (one counting range) there is nothing to
// fence.
func (s *Server) fenceAll(ctx context.Context) error {
	if s.counting() || s.cfg.Auth == nil {
		return nil
	}
	if s.cfg.DropAuthFence != nil && s.cfg.DropAuthFence() {
		return nil
	}
	st, err := s.cfg.Auth.Auth(ctx, true)
	if err != nil {
		return err
	}
	req := &shardpb.Request{Op: &shardpb.Request_AuthFence{AuthFence: &shardpb.AuthFence{Revision: st.Revision(), Enabled: st.Enabled()}}}
	done := map[shard.RangeID]bool{shardRange: true}
	for {
		fenced := 0
		for _, p := range s.cfg.Ranges.All() {
			if done[p.ID] {
				continue
			}
			if err := s.fenceRange(ctx, p, req); err != nil {
				return err
			}
			done[p.ID] = true
			fenced++
		}
		if fenced == 0 {
			return nil
		}
	}
}

// fenceRange writes the fence req to range p until it applied or ctx ends.
func (s *Server) fenceRange(ctx context.Context, p RangePart, req *shardpb.Request) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if _, err := p.Shard.Write(ctx, req); err == nil {
			return nil
		}
		t.Reset(fenceRetry)
	}
}

// DefaultAuthFenceInterval is how often an AuthFencer looks for ranges
// behind range 1's auth state by default.
const DefaultAuthFenceInterval = 500 * time.Millisecond

// AuthFencer re-sends the auth fences a crash lost. While this member
// leads range 1 it compares, every interval, range 1's auth state (as
// this replica applied it) with the fence it knows each other range to
// have applied, and sends the fence to each range behind, once per range
// until it applied it; a range it could not fence is tried again at the
// next pass. What it knows is what it sent since it took range 1's
// leadership: on taking it (or after a restart) it fences every range
// once, and after each auth change once more, besides the fence the
// changing member sends. Fences are idempotent (a range keeps the highest
// it applied), so the duplicates cost a proposal per range and change
// nothing. Before any auth change (revision 1, auth off) there is nothing
// to fence.
//
// So a change whose fences a crash cut short reaches every range within
// about an interval of range 1 having a leader: until then a range may
// apply a write checked against the rights before the change, as it may
// while the change itself is not yet acknowledged.
//
// Concurrency: one goroutine, owned by the fencer; Close stops it and
// waits.
type AuthFencer struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine returns
}

// StartAuthFencer starts the fencer, passing over the ranges every
// interval (0: DefaultAuthFenceInterval) until Close. It does nothing in
// a Server without an auth state (Config.Auth nil) or while the key space
// is one range. The caller owns it and closes it.
func (s *Server) StartAuthFencer(every time.Duration) *AuthFencer {
	if every <= 0 {
		every = DefaultAuthFenceInterval
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &AuthFencer{cancel: cancel, done: make(chan struct{})}
	r := &refencer{s: s, sent: map[shard.RangeID]*shardpb.AuthFence{}}
	go func() {
		defer close(f.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			r.pass(ctx)
		}
	}()
	return f
}

// Close stops the fencer, cancelling a fence in flight, and waits until it
// has stopped. A nil AuthFencer is a no-op.
func (f *AuthFencer) Close() {
	if f == nil {
		return
	}
	f.cancel()
	<-f.done
}

// refencer is an AuthFencer's state, owned by its goroutine.
type refencer struct {
	s *Server
	// sent is the fence each range (range 1 aside) applied from this
	// member since it last took range 1's leadership; emptied when it
	// does not lead range 1.
	sent map[shard.RangeID]*shardpb.AuthFence
}

// pass sends the fence of range 1's auth state to every range not known
// to have it, if this member leads range 1.
func (r *refencer) pass(ctx context.Context) {
	s := r.s
	if s.cfg.Auth == nil || s.counting() || !s.leadsRangeOne() {
		clear(r.sent)
		return
	}
	st, err := s.cfg.Auth.Auth(ctx, false)
	if err != nil {
		return
	}
	want := &shardpb.AuthFence{Revision: st.Revision(), Enabled: st.Enabled()}
	if !fenceBefore(&shardpb.AuthFence{Revision: 1}, want) {
		return // no change yet: a range refuses nothing more for such a fence
	}
	req := &shardpb.Request{Op: &shardpb.Request_AuthFence{AuthFence: want}}
	sent := make(map[shard.RangeID]*shardpb.AuthFence, len(r.sent))
	for _, p := range s.cfg.Ranges.All() {
		if p.ID == shardRange {
			continue
		}
		if f := r.sent[p.ID]; f != nil && !fenceBefore(f, want) {
			sent[p.ID] = f
			continue
		}
		if ctx.Err() != nil {
			return
		}
		wctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
		_, err := p.Shard.Write(wctx, req)
		cancel()
		if err == nil {
			sent[p.ID] = want
		}
	}
	r.sent = sent // the ranges merged away are forgotten
}

// leadsRangeOne reports whether this member leads range 1.
func (s *Server) leadsRangeOne() bool {
	leader, _, ok := s.cfg.Shard.Leader()
	return ok && s.shardMember(leader) == s.cfg.MemberID
}

// fenceBefore reports whether fence f orders before g, as a range orders
// the fences it applies: by revision, then disabled before enabled
// (AuthEnable keeps the revision).
func fenceBefore(f, g *shardpb.AuthFence) bool {
	if f.Revision != g.Revision {
		return f.Revision < g.Revision
	}
	return !f.Enabled && g.Enabled
}

// authFence is the newest auth revision any range's replica here has been
// fenced with (or range 1's replica has applied): every watch event of a
// replica here was applied after the auth changes up to it.
func (c *RangeCache) authFence() uint64 {
	var rev uint64
	for _, e := range c.view.Load().entries {
		if f, ok := e.Local.(interface{ AuthFence() uint64 }); ok {
			rev = max(rev, f.AuthFence())
		}
	}
	return rev
}
