// Package etcdwirepb is the generated Go for etcdwirepb/etcdwire.proto:
// ResponseHeader and KeyValue, wire-compatible with etcd's
// etcdserverpb.ResponseHeader and mvccpb.KeyValue, for the lock and election
// messages (lockpb, electionpb) to embed. See the .proto for why, and the
// parent package for how to regenerate it.
package etcdwirepb
