// Package lease will hold the deterministic lessor of one shard (see
// DESIGN.md "Leases"). Until the lease issue lands no lease can be granted,
// so a put with a lease is refused with etcd's "requested lease not found".
package lease
