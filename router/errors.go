package router

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/shard/auth"
)

// byCode maps the state machine's refusals to etcd's statuses, code and
// message exactly as etcd sends them.
var byCode = map[shardpb.ErrorCode]error{
	shardpb.ErrorCode_ERROR_CODE_COMPACTED:           rpctypes.ErrGRPCCompacted,
	shardpb.ErrorCode_ERROR_CODE_FUTURE_REV:          rpctypes.ErrGRPCFutureRev,
	shardpb.ErrorCode_ERROR_CODE_KEY_NOT_FOUND:       rpctypes.ErrGRPCKeyNotFound,
	shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND:     rpctypes.ErrGRPCLeaseNotFound,
	shardpb.ErrorCode_ERROR_CODE_EMPTY_KEY:           rpctypes.ErrGRPCEmptyKey,
	shardpb.ErrorCode_ERROR_CODE_VALUE_PROVIDED:      rpctypes.ErrGRPCValueProvided,
	shardpb.ErrorCode_ERROR_CODE_LEASE_PROVIDED:      rpctypes.ErrGRPCLeaseProvided,
	shardpb.ErrorCode_ERROR_CODE_TOO_MANY_OPS:        rpctypes.ErrGRPCTooManyOps,
	shardpb.ErrorCode_ERROR_CODE_DUPLICATE_KEY:       rpctypes.ErrGRPCDuplicateKey,
	shardpb.ErrorCode_ERROR_CODE_INVALID_SORT_OPTION: rpctypes.ErrGRPCInvalidSortOption,
	shardpb.ErrorCode_ERROR_CODE_LEASE_EXISTS:        rpctypes.ErrGRPCLeaseExist,
	shardpb.ErrorCode_ERROR_CODE_LEASE_TTL_TOO_LARGE: rpctypes.ErrGRPCLeaseTTLTooLarge,
	shardpb.ErrorCode_ERROR_CODE_NO_SPACE:            rpctypes.ErrGRPCNoSpace,
	// A cross-range transaction's lock that outlived the request's
	// deadline (the router waits locks out until then): etcd's timeout.
	shardpb.ErrorCode_ERROR_CODE_LOCKED:       rpctypes.ErrGRPCTimeout,
	shardpb.ErrorCode_ERROR_CODE_TXN_CONFLICT: rpctypes.ErrGRPCTimeout,
}

// byStoreError maps mvcc's validation sentinels (checked here before a
// request is proposed) to etcd's statuses.
var byStoreError = []struct {
	err    error
	status error
}{
	{mvcc.ErrEmptyKey, rpctypes.ErrGRPCEmptyKey},
	{mvcc.ErrValueProvided, rpctypes.ErrGRPCValueProvided},
	{mvcc.ErrLeaseProvided, rpctypes.ErrGRPCLeaseProvided},
	{mvcc.ErrTooManyOps, rpctypes.ErrGRPCTooManyOps},
	{mvcc.ErrDuplicateKey, rpctypes.ErrGRPCDuplicateKey},
	{mvcc.ErrInvalidSortOption, rpctypes.ErrGRPCInvalidSortOption},
	{mvcc.ErrCompacted, rpctypes.ErrGRPCCompacted},
	{mvcc.ErrFutureRev, rpctypes.ErrGRPCFutureRev},
	{mvcc.ErrKeyNotFound, rpctypes.ErrGRPCKeyNotFound},
	{mvcc.ErrLeaseNotFound, rpctypes.ErrGRPCLeaseNotFound},
	{lease.ErrLeaseNotFound, rpctypes.ErrGRPCLeaseNotFound},
	{lease.ErrLeaseExists, rpctypes.ErrGRPCLeaseExist},
	{lease.ErrLeaseTTLTooLarge, rpctypes.ErrGRPCLeaseTTLTooLarge},
	{lease.ErrNotPrimary, rpctypes.ErrGRPCNotLeader},
}

// toGRPC turns any error from below into the status an etcd client expects.
// This is the only place Cairn's errors become gRPC statuses.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	if a := auth.Sentinel(err); a != nil {
		return authStatus[a]
	}
	var rf *refusal
	if errors.As(err, &rf) {
		return rf.status().Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	// etcd's own errors, as the node returns them (rpctypes.ErrMemberNotFound
	// …), become the status etcd answers with.
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return status.Error(ee.Code(), ee.Error())
	}
	var e *shard.Error
	if errors.As(err, &e) {
		if s, ok := byCode[e.Code]; ok {
			return s
		}
		switch e.Code {
		case shardpb.ErrorCode_ERROR_CODE_BAD_REQUEST:
			return status.Error(codes.InvalidArgument, "etcdserver: "+e.Message)
		case shardpb.ErrorCode_ERROR_CODE_MERGING, shardpb.ErrorCode_ERROR_CODE_STALE_MERGE:
			// A range frozen for a merge: the router retries to the
			// request's deadline (rerouted), so a client sees one only
			// once its time ran out, as etcd's timeout; the status keeps
			// err for that retry.
			return &causedStatus{st: status.Convert(rpctypes.ErrGRPCTimeout), cause: err}
		default:
			// Stale stamps and out-of-range keys are the router's to retry;
			// one that gets here is a transient condition for the client.
			// The status keeps err, for the router's retry (rerouted).
			return &causedStatus{st: status.New(codes.Unavailable, "etcdserver: "+e.Message), cause: err}
		}
	}
	for _, m := range byStoreError {
		if errors.Is(err, m.err) {
			return m.status
		}
	}
	switch {
	case errors.Is(err, shard.ErrLeaderLost):
		return rpctypes.ErrGRPCTimeoutDueToLeaderFail
	case errors.Is(err, shard.ErrTimeout):
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, shard.ErrNoLeader):
		return rpctypes.ErrGRPCNoLeader
	case errors.Is(err, shard.ErrStopped), errors.Is(err, shard.ErrClosed):
		return rpctypes.ErrGRPCStopped
	case errors.Is(err, shard.ErrBusy):
		return rpctypes.ErrGRPCRequestTooManyRequests
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unknown, err.Error())
}

// causedStatus is a status that keeps the error it was made from, so that
// the router's own retries still see the cause (errors.As) once toGRPC has
// made the client's answer of it.
type causedStatus struct {
	st    *status.Status
	cause error
}

func (e *causedStatus) Error() string              { return e.st.Err().Error() }
func (e *causedStatus) GRPCStatus() *status.Status { return e.st }
func (e *causedStatus) Unwrap() error              { return e.cause }

// authStatus is etcd's status of each auth refusal.
var authStatus = map[error]error{
	auth.ErrRootUserNotExist:   rpctypes.ErrGRPCRootUserNotExist,
	auth.ErrRootRoleNotExist:   rpctypes.ErrGRPCRootRoleNotExist,
	auth.ErrUserAlreadyExist:   rpctypes.ErrGRPCUserAlreadyExist,
	auth.ErrUserEmpty:          rpctypes.ErrGRPCUserEmpty,
	auth.ErrUserNotFound:       rpctypes.ErrGRPCUserNotFound,
	auth.ErrRoleAlreadyExist:   rpctypes.ErrGRPCRoleAlreadyExist,
	auth.ErrRoleNotFound:       rpctypes.ErrGRPCRoleNotFound,
	auth.ErrRoleEmpty:          rpctypes.ErrGRPCRoleEmpty,
	auth.ErrPermissionNotGiven: rpctypes.ErrGRPCPermissionNotGiven,
	auth.ErrAuthFailed:         rpctypes.ErrGRPCAuthFailed,
	// etcd maps no status to it: its message comes as Unknown.
	auth.ErrNoPasswordUser:       status.Error(codes.Unknown, auth.ErrNoPasswordUser.Error()),
	auth.ErrPermissionDenied:     rpctypes.ErrGRPCPermissionDenied,
	auth.ErrRoleNotGranted:       rpctypes.ErrGRPCRoleNotGranted,
	auth.ErrPermissionNotGranted: rpctypes.ErrGRPCPermissionNotGranted,
	auth.ErrAuthNotEnabled:       rpctypes.ErrGRPCAuthNotEnabled,
	auth.ErrAuthOldRevision:      rpctypes.ErrGRPCAuthOldRevision,
	auth.ErrInvalidAuthToken:     rpctypes.ErrGRPCInvalidAuthToken,
	auth.ErrInvalidAuthMgmt:      rpctypes.ErrGRPCInvalidAuthMgmt,
}
