// Package shardpb is the generated Go for shardpb/shard.proto: the commands a
// shard's raft log carries and the results its state machine returns. See the
// parent package for how to regenerate it.
package shardpb
