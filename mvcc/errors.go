package mvcc

import "errors"

// Refusals. Each is returned before anything changes; the router maps them
// to etcd's gRPC statuses (rpctypes), so their text is Cairn's own.
var (
	ErrCompacted         = errors.New("mvcc: required revision has been compacted")
	ErrFutureRev         = errors.New("mvcc: required revision is a future revision")
	ErrKeyNotFound       = errors.New("mvcc: key not found")
	ErrLeaseNotFound     = errors.New("mvcc: lease not found")
	ErrEmptyKey          = errors.New("mvcc: key is not provided")
	ErrValueProvided     = errors.New("mvcc: value is provided")
	ErrLeaseProvided     = errors.New("mvcc: lease is provided")
	ErrTooManyOps        = errors.New("mvcc: too many operations in txn request")
	ErrDuplicateKey      = errors.New("mvcc: duplicate key given in txn request")
	ErrInvalidSortOption = errors.New("mvcc: invalid sort option")
	ErrStaleStamp        = errors.New("mvcc: revision stamp is not above the current revision")
	ErrOutsideSpan       = errors.New("mvcc: key outside the store's span")
	ErrNotReadOnly       = errors.New("mvcc: txn writes and cannot be served as a read")
	ErrUnknownOp         = errors.New("mvcc: request op without an operation")
)
