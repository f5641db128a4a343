// Package router serves etcd's gRPC services to clients and sends each
// request to the shard that owns its keys.
//
// Today (single-group mode) one shard owns every key: Range and read-only
// Txn are reads (linearizable through ReadIndex unless the request asks to
// be serializable), Put, DeleteRange, write Txn and Compact are proposals.
// The range-map cache, scatter/gather and the watch merge arrive with the
// sharded-mode issue.
//
// Contract with clients: every answer is the one etcd would give. Requests
// are validated before anything is proposed (mvcc's Validate functions, with
// etcd's order of checks), a write whose encoding exceeds --max-request-bytes
// is refused with etcd's "request is too large", and every refusal is a gRPC
// status with etcd's code and message (rpctypes). This package is the only
// place Cairn's errors become gRPC statuses (errors.go).
//
// Response headers carry the cluster and member ids, the raft term, and the
// revision the store reported for the request.
//
// HTTP: /health answers like etcd's ({"health":"true","reason":""}, 503
// when the group has no leader or cannot serve a linearizable read), and
// /version with the etcd API version Cairn speaks.
//
// Concurrency: Server holds no mutable state; every method may run in
// parallel. The Shard implementation batches and orders.
package router
