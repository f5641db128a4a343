//go:build tools

// Package etcdbenchmark pins etcd's own load generator, the benchmark tool
// of go.etcd.io/etcd/v3, which the harness builds with `go build` from here.
//
// It is a module of its own, not part of bench/go.mod: v3.6.8 is the newest
// tag of the go.etcd.io/etcd/v3 module on the Go proxy (3.7.x of that module
// answers 403 "not available"), and its tools/benchmark calls the 3.6 API of
// go.etcd.io/etcd/pkg/v3/report, which 3.7 changed (NewReport gained two
// arguments). bench/go.mod needs etcd server 3.7.3, so the two cannot share
// one build list. The wire protocol is the same, so a 3.6.8 client loads a
// 3.7.3 server and Cairn alike.
package etcdbenchmark

import _ "go.etcd.io/etcd/v3/tools/benchmark"
