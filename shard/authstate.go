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

// authState is the range's auth state, replicated through the log. The
// apply goroutine swaps it; anyone loads it (a State is never modified).
type authState struct{ p atomic.Pointer[auth.State] }

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
	return nil
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
func (a *applier) checkAuthInfo(info *shardpb.AuthInfo) error {
	st := a.auth.get()
	if info == nil || !st.Enabled() {
		return nil
	}
	if info.Revision < st.Revision() {
		return auth.ErrAuthOldRevision
	}
	if info.User == "" {
		return auth.ErrUserEmpty
	}
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
