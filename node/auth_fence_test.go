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

// TestShardedAuthFence: in sharded mode a write to a range other than
// range 1, checked on one member before a revoke made through another and
// proposed after the revoke was acknowledged, is refused (etcd's
// ErrAuthOldRevision, or permission denied once clientv3 retried it with a
// fresh token) and never applied: the revoke fenced every range first.
func TestShardedAuthFence(t *testing.T) {
	cl := nodetest.Start(t, 2, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) { c.BcryptCost = 4 }))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := cl.Client(0)
	for _, step := range []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := c.RoleAdd(ctx, "r"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "r", "n", clientv3.GetPrefixRangeEnd("n"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserGrantRole(ctx, "alice", "r"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	login := func(url, user, pw string) *clientv3.Client {
		t.Helper()
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, Username: user, Password: pw, DialTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	root := login(cl.URLs()[0], "root", "rootpw")
	alice := login(cl.URLs()[1], "alice", "alicepw")
	if _, err := alice.Put(ctx, "n0", "x"); err != nil {
		t.Fatalf("alice writes her keys: %v", err)
	}

	held, release := cl.Node(1).HoldCheckedWrites()
	defer release()
	put := make(chan error, 1)
	go func() {
		_, err := alice.Put(ctx, "n1", "x")
		put <- err
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("alice's put never reached the hold")
	}
	if _, err := root.RoleRevokePermission(ctx, "r", "n", clientv3.GetPrefixRangeEnd("n")); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-put; !errors.Is(err, rpctypes.ErrAuthOldRevision) && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("put checked before the revoke, proposed after: %v, want %v or %v", err, rpctypes.ErrAuthOldRevision, rpctypes.ErrPermissionDenied)
	}
	r, err := root.Get(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 0 {
		t.Fatalf("the put checked before the revoke was applied: %v", r.Kvs)
	}
}
