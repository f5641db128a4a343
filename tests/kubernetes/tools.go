//go:build tools

package kubernetes

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/apiserver/pkg/storage/etcd3/testserver"
)
