package router

import (
	"context"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Auth on Lock and Election. etcd runs them on an in-process client that
// calls its KV, Lease and Watch servers with the Lock call's own context,
// so every step is checked as the caller. Cairn's node client (Config.Self)
// goes through the gRPC server, so each call forwards the caller's token:
// the steps are checked as the caller, with etcd's answers (a token of
// this member is valid on this member's server).

// asCaller returns ctx with the token of its caller (incoming metadata
// "token", or "authorization" as etcd's gateway sends it) as the outgoing
// "token" of the node client's calls; ctx itself without one.
func asCaller(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, k := range []string{rpctypes.TokenFieldNameGRPC, rpctypes.TokenFieldNameSwagger} {
		if v := md.Get(k); len(v) > 0 {
			return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, strings.TrimPrefix(v[0], "Bearer "))
		}
	}
	return ctx
}

// detached returns the node client's context carrying ctx's outgoing
// metadata, for a clean-up that must outlive the call but still act as
// its caller.
func detached(c *clientv3.Client, ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	return metadata.NewOutgoingContext(c.Ctx(), md)
}

// authRefusal reports whether ee is one of etcd's auth refusals.
func authRefusal(ee rpctypes.EtcdError) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty, rpctypes.ErrInvalidAuthToken,
		rpctypes.ErrAuthOldRevision, rpctypes.ErrAuthFailed, rpctypes.ErrAuthNotEnabled} {
		if ee.Error() == e.Error() {
			return true
		}
	}
	return false
}
