// Package proto holds Cairn's own protobuf messages — shard commands and their
// results (shardpb), range descriptors and placement state (placementpb), and
// the node-to-node service of sharded mode (internalpb) — and the messages of
// etcd's lock and election services (lockpb, electionpb, etcdwirepb), with the
// generated Go committed beside each .proto.
//
// etcd's wire types (go.etcd.io/etcd/api/v3) are used as they are and travel
// inside Cairn's messages as their own encoded bytes, so no .proto here imports
// etcd's (whose import chain drags in gateway annotations).
//
// etcd's lock and election messages are generated in etcd's server module,
// which Cairn does not depend on, so lockpb and electionpb declare them again
// from the field numbers and types of etcd's v3lock.proto and
// v3election.proto, and etcdwirepb declares the ResponseHeader and KeyValue
// they embed the same way; router converts etcd's header and key-value into
// these at the boundary. All three live under proto packages of Cairn's own
// (cairn.*), never etcd's (v3lockpb, v3electionpb, etcdserverpb, mvccpb):
// tests/compat links etcd's generated packages into the same binary, and the
// protobuf registry panics on a full name registered twice. The services
// themselves are not generated, since a generated service would carry the
// cairn.* name on the wire: router registers them by hand under etcd's names
// (v3lockpb.Lock, v3electionpb.Election), which etcd's clients call.
//
// Regenerate after editing a .proto (needs protoc, e.g. Debian's
// protobuf-compiler, and protoc-gen-go at the version go.mod pins, and
// protoc-gen-go-grpc for the service):
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
//	go generate ./proto/
package proto

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative shardpb/shard.proto placementpb/placement.proto
//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative internalpb/internal.proto
//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative etcdwirepb/etcdwire.proto lockpb/lock.proto electionpb/election.proto
