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
