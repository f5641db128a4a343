//go:build tools

package compat

// The etcdctl binary TestEtcdctl builds is pinned by this module's go.mod;
// the blank import keeps `go mod tidy` from dropping it.
import _ "go.etcd.io/etcd/etcdctl/v3"
