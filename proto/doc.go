// Package proto holds Cairn's own protobuf messages — shard commands and their
// results (shardpb), range descriptors and placement state (placementpb), and
// the node-to-node service of sharded mode (internalpb) — with the generated
// Go committed beside each .proto.
//
// etcd's wire types (go.etcd.io/etcd/api/v3) are used as they are and travel
// inside Cairn's messages as their own encoded bytes, so no .proto here imports
// etcd's (whose import chain drags in gateway annotations).
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
