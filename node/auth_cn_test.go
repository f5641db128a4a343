package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestAuthClientCertCommonName: with --client-cert-auth and auth enabled,
// a request without a token is made by the user its certificate names
// (etcd's): alice's certificate writes alice's keys and nothing else, a
// certificate naming no user is refused, root's may manage auth.
func TestAuthClientCertCommonName(t *testing.T) {
	ca := nodetest.NewCA(t, "cluster")
	srvCert, srvKey := ca.Issue(t, "server")
	cl := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.BcryptCost = 4
		cfg.ListenClientURLs = []string{"https://127.0.0.1:0"}
		cfg.ClientTLS = node.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true}
	}))
	urls := cl.Node(0).ClientURLs()
	as := func(cn string) *clientv3.Client {
		cert, key := ca.Issue(t, cn)
		return tlsClient(t, clientTLS(t, ca.CAFile, cert, key), urls...)
	}
	root, alice, nobody := as("root"), as("alice"), as("nobody")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(root.UserAdd(ctx, "root", "rootpw"))
	must(root.UserGrantRole(ctx, "root", "root"))
	must(root.UserAdd(ctx, "alice", "alicepw"))
	must(root.RoleAdd(ctx, "r"))
	must(root.RoleGrantPermission(ctx, "r", "a", clientv3.GetPrefixRangeEnd("a"), clientv3.PermissionType(clientv3.PermReadWrite)))
	must(root.UserGrantRole(ctx, "alice", "r"))
	must(root.AuthEnable(ctx))

	if _, err := alice.Put(ctx, "a1", "x"); err != nil {
		t.Fatalf("alice's certificate writes her key: %v", err)
	}
	if _, err := alice.Put(ctx, "z", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice's certificate outside her keys: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := nobody.Put(ctx, "a1", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a certificate naming no user: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := root.UserList(ctx); err != nil {
		t.Fatalf("root's certificate lists users: %v", err)
	}
	if _, err := alice.UserList(ctx); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice's certificate lists users: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}
