package shard

import (
	"errors"
	"fmt"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard/auth"
)

// Error is a refusal decided by the state machine (or by a read against it),
// named by a code the router maps to etcd's gRPC status.
type Error struct {
	Code    shardpb.ErrorCode
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is matches the mvcc and lease sentinels of e's code, so a refusal that
// came back from the state machine (or from another node) still answers
// errors.Is(err, mvcc.ErrOutsideSpan) and the like.
func (e *Error) Is(target error) bool {
	if e.Code == shardpb.ErrorCode_ERROR_CODE_AUTH {
		return target != nil && auth.FromMessage(e.Message) == target
	}
	for _, c := range codes {
		if c.code == e.Code && c.err == target {
			return true
		}
	}
	return false
}

// codes maps mvcc's and lease's sentinels to wire codes. Order does not matter: each
// mvcc error matches at most one sentinel.
var codes = []struct {
	err  error
	code shardpb.ErrorCode
}{
	{mvcc.ErrCompacted, shardpb.ErrorCode_ERROR_CODE_COMPACTED},
	{mvcc.ErrFutureRev, shardpb.ErrorCode_ERROR_CODE_FUTURE_REV},
	{mvcc.ErrKeyNotFound, shardpb.ErrorCode_ERROR_CODE_KEY_NOT_FOUND},
	{mvcc.ErrLeaseNotFound, shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND},
	{mvcc.ErrEmptyKey, shardpb.ErrorCode_ERROR_CODE_EMPTY_KEY},
	{mvcc.ErrValueProvided, shardpb.ErrorCode_ERROR_CODE_VALUE_PROVIDED},
	{mvcc.ErrLeaseProvided, shardpb.ErrorCode_ERROR_CODE_LEASE_PROVIDED},
	{mvcc.ErrTooManyOps, shardpb.ErrorCode_ERROR_CODE_TOO_MANY_OPS},
	{mvcc.ErrDuplicateKey, shardpb.ErrorCode_ERROR_CODE_DUPLICATE_KEY},
	{mvcc.ErrInvalidSortOption, shardpb.ErrorCode_ERROR_CODE_INVALID_SORT_OPTION},
	{mvcc.ErrStaleStamp, shardpb.ErrorCode_ERROR_CODE_STALE_STAMP},
	{mvcc.ErrOutsideSpan, shardpb.ErrorCode_ERROR_CODE_OUTSIDE_RANGE},
	{mvcc.ErrNotReadOnly, shardpb.ErrorCode_ERROR_CODE_BAD_REQUEST},
	{lease.ErrLeaseNotFound, shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND},
	{lease.ErrLeaseExists, shardpb.ErrorCode_ERROR_CODE_LEASE_EXISTS},
	{lease.ErrLeaseTTLTooLarge, shardpb.ErrorCode_ERROR_CODE_LEASE_TTL_TOO_LARGE},
	{ErrLocked, shardpb.ErrorCode_ERROR_CODE_LOCKED},
	{ErrTxnConflict, shardpb.ErrorCode_ERROR_CODE_TXN_CONFLICT},
	{ErrMerging, shardpb.ErrorCode_ERROR_CODE_MERGING},
	{ErrStaleMerge, shardpb.ErrorCode_ERROR_CODE_STALE_MERGE},
}

// toError classifies a store error. ok is false for errors that are not a
// refusal of the request (I/O failures and the like), which must not be
// turned into a deterministic result.
func toError(err error) (e *Error, ok bool) {
	if errors.As(err, &e) {
		return e, true
	}
	if a := auth.Sentinel(err); a != nil {
		return &Error{Code: shardpb.ErrorCode_ERROR_CODE_AUTH, Message: a.Error()}, true
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return &Error{Code: c.code, Message: err.Error()}, true
		}
	}
	return nil, false
}

// errNoSpace refuses a write that adds data while NOSPACE is raised.
var errNoSpace = &Error{Code: shardpb.ErrorCode_ERROR_CODE_NO_SPACE, Message: "shard: database space exceeded"}

// badRequest is the refusal of a command the state machine cannot decode.
func badRequest(format string, args ...any) *Error {
	return &Error{Code: shardpb.ErrorCode_ERROR_CODE_BAD_REQUEST, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) toProto() *shardpb.Error { return &shardpb.Error{Code: e.Code, Message: e.Message} }

func fromProto(p *shardpb.Error) *Error { return &Error{Code: p.Code, Message: p.Message} }

// OutsideRangeError is a range's refusal of keys it does not hold (a split
// gave them to another range since the request was routed), with the range
// as it is now on the replica that refused: the router refreshes its range
// cache by it and routes the request again. It unwraps to the refusal
// (*Error, code OUTSIDE_RANGE), so errors.Is(err, mvcc.ErrOutsideSpan)
// holds.
type OutsideRangeError struct {
	// Range is the refusing range's descriptor: its id, span and
	// generation now.
	Range *placementpb.RangeDescriptor
	Err   *Error
}

func (e *OutsideRangeError) Error() string { return e.Err.Message }

func (e *OutsideRangeError) Unwrap() error { return e.Err }

// WithRange returns err with range d's descriptor attached if err is a
// refusal of keys outside the range (OutsideRangeError), and err as it is
// otherwise. The replica knows its span, not the range map's generation,
// so whoever holds the descriptor attaches it.
func WithRange(err error, d *placementpb.RangeDescriptor) error {
	var e *Error
	if err == nil || d == nil || !errors.As(err, &e) || e.Code != shardpb.ErrorCode_ERROR_CODE_OUTSIDE_RANGE {
		return err
	}
	var o *OutsideRangeError
	if errors.As(err, &o) {
		return err
	}
	return &OutsideRangeError{Range: d, Err: e}
}
