package lease

import "errors"

// Refusals. Each is returned before anything changes; the router maps them
// to etcd's gRPC statuses (rpctypes).
var (
	// ErrLeaseNotFound: no lease has the id (etcd's "requested lease not
	// found"). Grant returns it for id 0, as etcd's lessor does.
	ErrLeaseNotFound = errors.New("lease: lease not found")
	// ErrLeaseExists: Grant of an id that is already granted.
	ErrLeaseExists = errors.New("lease: lease already exists")
	// ErrLeaseTTLTooLarge: Grant of a TTL above MaxTTL.
	ErrLeaseTTLTooLarge = errors.New("lease: too large lease TTL")
	// ErrLeaseExpired: Renew of a lease whose TTL ran out and whose revoke
	// is pending. etcd waits for the revoke and then answers "not found";
	// a keepalive answers TTL 0 either way.
	ErrLeaseExpired = errors.New("lease: lease expired")
	// ErrNotPrimary: a question only the primary (the shard leader's
	// lessor) can answer, asked of a replica that is not.
	ErrNotPrimary = errors.New("lease: not the primary lessor")
	// ErrBatchNotIndexed: Revoke needs an indexed batch to see the
	// attachments written earlier in the same batch.
	ErrBatchNotIndexed = errors.New("lease: revoke needs an indexed pebble batch")
)
