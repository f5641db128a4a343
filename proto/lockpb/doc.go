// Package lockpb is the generated Go for lockpb/lock.proto: the messages of
// etcd's lock service (v3lockpb.Lock), wire-compatible with etcd's v3lockpb
// under a proto package of Cairn's own. See the .proto for why, and the
// parent package for how to regenerate it.
package lockpb
