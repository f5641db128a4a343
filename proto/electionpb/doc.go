// Package electionpb is the generated Go for electionpb/election.proto: the
// messages of etcd's election service (v3electionpb.Election),
// wire-compatible with etcd's v3electionpb under a proto package of Cairn's
// own. See the .proto for why, and the parent package for how to regenerate
// it.
package electionpb
