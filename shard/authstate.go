package shard

import (
	"fmt"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard/auth"
)

// authKey names the internal record of the auth state (auth.State.Marshal).
// The router sends auth requests to range 1 only (docs/plan-auth.md), so
// that range's is the cluster's. A backup keeps it (etcd's snapshot keeps
// its auth buckets).
const authKey = "auth"

// authFenceKey names the internal record of the highest auth fence the
// range applied (shardpb.AuthFence, sharded mode).
const authFenceKey = "auth-fence"

// authState is the range's auth state and auth fence, replicated through
// the log. The apply goroutine swaps them; anyone loads them (neither is
// ever modified).
type authState struct {
	p     atomic.Pointer[auth.State]
	fence atomic.Pointer[shardpb.AuthFence]
}

func (a *authState) load(store *mvcc.Store) error {
	st := auth.New()
	data, err := store.GetMeta(authKey)
	if err != nil {
		return fmt.Errorf("shard: load auth state: %w", err)
	}
	if data != nil {
		if st, err = auth.Unmarshal(data); err != nil {
			return fmt.Errorf("shard: load auth state: %w", err)
		}
	}
	a.p.Store(st)
	f := &shardpb.AuthFence{}
	data, err = store.GetMeta(authFenceKey)
	if err != nil {
		return fmt.Errorf("shard: load auth fence: %w", err)
	}
	if data != nil {
		if err := proto.Unmarshal(data, f); err != nil {
			return fmt.Errorf("shard: load auth fence: %w", err)
		}
	}
	a.fence.Store(f)
	return nil
}

// getFence returns the highest auth fence applied here (zero: none).
func (a *authState) getFence() *shardpb.AuthFence {
	if f := a.fence.Load(); f != nil {
		return f
	}
	return &shardpb.AuthFence{}
}

// fenceBelow reports whether fence f orders before g: by revision, then
// disabled before enabled (AuthEnable keeps the revision).
func fenceBelow(f, g *shardpb.AuthFence) bool {
	if f.Revision != g.Revision {
		return f.Revision < g.Revision
	}
	return !f.Enabled && g.Enabled
}

// highest is the newest auth state this range knows of as a fence: its
// applied fence or, where the auth state lives (range 1), the state's own.
func (a *authState) highest() *shardpb.AuthFence {
	f := a.getFence()
	st := a.get()
	if own := (&shardpb.AuthFence{Revision: st.Revision(), Enabled: st.Enabled()}); fenceBelow(f, own) {
		return own
	}
	return f
}

// AuthFence returns the newest auth revision this range knows the cluster
// reached: the highest auth fence it applied, or range 1's own auth
// state's revision. A watch event of this range's replica was applied
// after every change up to it.
// Zero before the range started here.
func (r *Range) AuthFence() uint64 {
	sm := r.sm.Load()
	if sm == nil {
		return 0
	}
	return sm.auth.highest().Revision
}

// AuthFenceState is AuthFence with whether auth is on at it: AuthEnable
// keeps the revision, so the revision alone does not show it.
func (r *Range) AuthFenceState() (revision uint64, enabled bool) {
	sm := r.sm.Load()
	if sm == nil {
		return 0, false
	}
	f := sm.auth.highest()
	return f.Revision, f.Enabled
}

func (a *authState) get() *auth.State {
	if st := a.p.Load(); st != nil {
		return st
	}
	return auth.New()
}

// checkAuthInfo refuses, with auth enabled here, a client request whose
// permissions were checked at an auth revision older than the current one
// (auth.ErrAuthOldRevision) or without a user (auth.ErrUserEmpty), as
// etcd's apply does. A request with no AuthInfo is the node's own.
//
// In sharded mode a range that does not hold the auth state checks against
// its auth fence instead (applyAuthFence): the state as of the last auth
// change the router fenced it with.
func (a *applier) checkAuthInfo(info *shardpb.AuthInfo) error {
	f := a.auth.highest()
	if info == nil || !f.Enabled {
		return nil
	}
	if info.Revision < f.Revision {
		return auth.ErrAuthOldRevision
	}
	if info.User == "" {
		return auth.ErrUserEmpty
	}
	return nil
}

// applyAuthFence records f as the range's auth fence if it is higher than
// the one it has; a lower or equal one changes nothing (fences arrive out
// of order and again).
func (a *applier) applyAuthFence(f *shardpb.AuthFence) (*shardpb.Response, error) {
	if f == nil {
		return nil, badRequest("shard: auth fence without its fields")
	}
	if fenceBelow(a.auth.getFence(), f) {
		data, err := proto.Marshal(f)
		if err != nil {
			return nil, err
		}
		a.b.SetMeta(authFenceKey, data)
		f = proto.Clone(f).(*shardpb.AuthFence)
		a.auth.fence.Store(f)
	}
	return &shardpb.Response{Result: &shardpb.Response_AuthFence{AuthFence: true}}, nil
}

// inheritAuthFence gives a range split off this one the newest auth state
// this one knows as its fence, so that a write checked before an auth
// change this range was fenced with is refused there too.
func (a *applier) inheritAuthFence(child uint64) error {
	data, err := proto.Marshal(a.auth.highest())
	if err != nil {
		return err
	}
	a.b.SetMetaFor(child, authFenceKey, data)
	return nil
}

// applyAuth applies an auth request (an encoded InternalRaftRequest) to the
// auth state, writing the new state in the batch, and answers with etcd's
// response, its header at the store's revision.
func (a *applier) applyAuth(wire []byte) (*shardpb.Response, error) {
	var r pb.InternalRaftRequest
	if err := proto.Unmarshal(wire, &r); err != nil {
		return nil, badRequest("shard: undecodable auth request: %v", err)
	}
	st := a.auth.get()
	next, resp, err := st.Apply(&r)
	if err != nil {
		if auth.Sentinel(err) == nil {
			return nil, badRequest("shard: %v", err)
		}
		return nil, err
	}
	if next != st {
		data, err := next.Marshal()
		if err != nil {
			return nil, err
		}
		a.b.SetMeta(authKey, data)
		a.auth.p.Store(next)
	}
	h := &pb.ResponseHeader{Revision: int64(a.b.Rev())}
	setHeader(resp, h)
	data, err := proto.Marshal(resp)
	if err != nil {
		return nil, err
	}
	return &shardpb.Response{Result: &shardpb.Response_Auth{Auth: data}}, nil
}

// setHeader sets the header of an etcd auth response.
func setHeader(resp proto.Message, h *pb.ResponseHeader) {
	switch m := resp.(type) {
	case *pb.AuthEnableResponse:
		m.Header = h
	case *pb.AuthDisableResponse:
		m.Header = h
	case *pb.AuthStatusResponse:
		m.Header = h
	case *pb.AuthUserAddResponse:
		m.Header = h
	case *pb.AuthUserDeleteResponse:
		m.Header = h
	case *pb.AuthUserChangePasswordResponse:
		m.Header = h
	case *pb.AuthUserGrantRoleResponse:
		m.Header = h
	case *pb.AuthUserRevokeRoleResponse:
		m.Header = h
	case *pb.AuthUserGetResponse:
		m.Header = h
	case *pb.AuthUserListResponse:
		m.Header = h
	case *pb.AuthRoleAddResponse:
		m.Header = h
	case *pb.AuthRoleDeleteResponse:
		m.Header = h
	case *pb.AuthRoleGetResponse:
		m.Header = h
	case *pb.AuthRoleListResponse:
		m.Header = h
	case *pb.AuthRoleGrantPermissionResponse:
		m.Header = h
	case *pb.AuthRoleRevokePermissionResponse:
		m.Header = h
	}
}

// AuthQuery asks Lookup for the range's auth state, an *auth.State.
type AuthQuery struct{}
