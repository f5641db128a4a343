package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestAuth: with auth enabled a clientv3 configured with a user name and
// password connects and works within its role's keys; outside them, or
// without a user, or as a non-root caller of a root-only call, it gets
// etcd's errors; a revoked role takes effect at once; the state survives a
// restart.
func TestAuth(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.BcryptCost = 4 }))
	c := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.UserAdd(ctx, "root", "rootpw"))
	must(c.UserGrantRole(ctx, "root", "root"))
	must(c.UserAdd(ctx, "alice", "alicepw"))
	must(c.RoleAdd(ctx, "r"))
	must(c.RoleGrantPermission(ctx, "r", "a", "b", clientv3.PermissionType(clientv3.PermReadWrite)))
	must(c.UserGrantRole(ctx, "alice", "r"))
	if _, err := c.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "a1", "x"); !errors.Is(err, rpctypes.ErrUserEmpty) {
		t.Fatalf("anonymous put: %v, want %v", err, rpctypes.ErrUserEmpty)
	}
	login := func(user, pw string) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: cl.URLs(), Username: user, Password: pw, DialTimeout: 10 * time.Second})
	}
	if _, err := login("alice", "wrong"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("wrong password: %v, want %v", err, rpctypes.ErrAuthFailed)
	}
	alice, err := login("alice", "alicepw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	must(alice.Put(ctx, "a1", "x"))
	if r, err := alice.Get(ctx, "a", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("alice get: %v %v", r, err)
	}
	for what, err := range map[string]error{
		"put outside":   second(alice.Put(ctx, "z", "x")),
		"get outside":   second(alice.Get(ctx, "", clientv3.WithPrefix())),
		"txn compare":   second(alice.Txn(ctx).If(clientv3.Compare(clientv3.Version("z"), "=", 0)).Then(clientv3.OpPut("a2", "y")).Commit()),
		"nested txn op": second(alice.Txn(ctx).Then(clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete("c")}, nil)).Commit()),
		"compact":       second(alice.Compact(ctx, 1)),
		"user list":     second(alice.UserList(ctx)),
		"defragment":    second(alice.Defragment(ctx, cl.URLs()[0])),
	} {
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Fatalf("alice %s: %v, want %v", what, err, rpctypes.ErrPermissionDenied)
		}
	}
	if r, err := alice.UserGet(ctx, "alice"); err != nil || len(r.Roles) != 1 {
		t.Fatalf("alice gets herself: %v %v", r, err)
	}
	root, err := login("root", "rootpw")
	if err != nil {
		t.Fatal(err)
	}
	must(root.UserRevokeRole(ctx, "alice", "r"))
	if _, err := alice.Put(ctx, "a1", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("put after revoke: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := root.UserDelete(ctx, "root"); !errors.Is(err, rpctypes.ErrInvalidAuthMgmt) {
		t.Fatalf("delete root: %v, want %v", err, rpctypes.ErrInvalidAuthMgmt)
	}
	root.Close()

	cl.Restart(0)
	root, err = login("root", "rootpw")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	st, err := root.AuthStatus(ctx)
	if err != nil || !st.Enabled {
		t.Fatalf("auth status after restart: %v %v", st, err)
	}
	if _, err := root.Put(ctx, "z", "x"); err != nil {
		t.Fatalf("root put: %v", err)
	}
	must(root.AuthDisable(ctx))
	if _, err := cl.Client(0).Put(ctx, "z", "y"); err != nil {
		t.Fatalf("anonymous put with auth disabled: %v", err)
	}
}

// TestAuthOldRevision: in single-group mode, where range 1 holds the auth
// state, a put checked before a revoke and proposed after it applied is
// refused at apply (etcd's ErrAuthOldRevision, or permission denied once
// clientv3 retried it with a fresh token) and never applied.
func TestAuthOldRevision(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.BcryptCost = 4 }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cl.Client(0)
	for _, step := range []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := c.RoleAdd(ctx, "r"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "r", "a", "b", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserGrantRole(ctx, "alice", "r"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	login := func(user, pw string) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: cl.URLs(), Username: user, Password: pw, DialTimeout: 10 * time.Second,
			Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		return cli
	}
	root, alice := login("root", "rootpw"), login("alice", "alicepw")
	if _, err := alice.Put(ctx, "a0", "x"); err != nil {
		t.Fatalf("alice writes her keys: %v", err)
	}
	held, release := cl.Node(0).HoldCheckedWrites()
	defer release()
	put := make(chan error, 1)
	go func() {
		_, err := alice.Put(ctx, "a1", "x")
		put <- err
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("alice's put never reached the hold")
	}
	// root's revoke is an auth request, not a checked client write: it
	// passes the hold.
	if _, err := root.RoleRevokePermission(ctx, "r", "a", "b"); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-put; !errors.Is(err, rpctypes.ErrAuthOldRevision) && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("put checked before the revoke, proposed after: %v, want %v or %v", err, rpctypes.ErrAuthOldRevision, rpctypes.ErrPermissionDenied)
	}
	if r, err := root.Get(ctx, "a1"); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("the put checked before the revoke: %v %v, want not applied", r, err)
	}
}
