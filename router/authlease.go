package router

import (
	"context"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/shard/auth"
)

// Auth on leases, as etcd checks it: with auth enabled every Lease call
// needs a user (LeaseGrant, LeaseRevoke, LeaseTimeToLive, LeaseLeases,
// each keep-alive); a user without the root role needs write permission
// on every key attached to a lease to revoke it, keep it alive or attach
// a key to it (Put, and Put in a Txn), and read permission on them to see
// them (LeaseTimeToLive with keys, LeaseLeases). The member a client calls
// checks; a call it forwards to range 1's leader over the peer port is not
// checked again there.

// authorize identifies the caller of a lease call, requires a user with
// auth enabled and runs check (nil: none) for a user that is not root; it
// returns ctx carrying the caller. The peer port's server checks nothing.
func (ls *leaseServer) authorize(ctx context.Context, check func(c caller) error) (context.Context, error) {
	if ls.peer {
		return ctx, nil
	}
	return ls.s.authorize(ctx, func(c caller) error {
		if !c.st.Enabled() {
			return nil
		}
		if c.user == "" {
			return auth.ErrUserEmpty
		}
		if check == nil {
			return nil
		}
		return check(c)
	})
}

// sameAuth refuses, with etcd's ErrAuthOldRevision, an answer checked
// against an auth state that has changed since (etcd's lease reads).
func (ls *leaseServer) sameAuth(ctx context.Context) error {
	c, ok := ctx.Value(callerKey{}).(caller)
	if !ok || !c.st.Enabled() || ls.s.cfg.Auth == nil {
		return nil
	}
	st, err := ls.s.cfg.Auth.Auth(ctx, false)
	if err != nil {
		return toGRPC(err)
	}
	if st.Revision() != c.st.Revision() {
		return rpctypes.ErrGRPCAuthOldRevision
	}
	return nil
}

// checkLeaseKeys is etcd's check of the keys attached to lease id: typ
// permission on each, unless the caller has the root role. A lease that
// does not exist has none.
func (c caller) checkLeaseKeys(id int64, typ authpb.Permission_Type) error {
	if id == 0 || !c.st.Enabled() || c.st.CheckAdmin(c.user) == nil || c.leaseKeys == nil {
		return nil
	}
	keys, err := c.leaseKeys(id)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := c.st.Check(c.user, k, nil, typ); err != nil {
			return err
		}
	}
	return nil
}

// leaseKeys returns the keys attached to lease id, in every range; none
// for a lease that does not exist.
func (s *Server) leaseKeys(ctx context.Context, id int64) ([][]byte, error) {
	if s.cfg.Lessor == nil {
		return nil, nil
	}
	resp, err := (&leaseServer{s: s, peer: true}).timeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id, Keys: true})
	if err != nil {
		return nil, err
	}
	if resp.TTL == -1 {
		return nil, nil
	}
	return resp.Keys, nil
}
