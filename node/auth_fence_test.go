package node_test

import (
	"context"
	"errors"
	"fmt"
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, root, alice := startAuthFenceCluster(ctx, t)

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

// startAuthFenceCluster starts two members in sharded mode, split at m,
// with auth on: user root, and user alice whose role may read and write
// the keys under n (range [m, ∞)); it returns root's client on member 0
// and alice's on member 1, once alice has written n0.
func startAuthFenceCluster(ctx context.Context, t *testing.T) (cl *nodetest.Cluster, root, alice *clientv3.Client) {
	t.Helper()
	cl = nodetest.Start(t, 2, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) { c.BcryptCost = 4 }))
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
	root = login(cl.URLs()[0], "root", "rootpw")
	alice = login(cl.URLs()[1], "alice", "alicepw")
	if _, err := alice.Put(ctx, "n0", "x"); err != nil {
		t.Fatalf("alice writes her keys: %v", err)
	}
	return cl, root, alice
}

// TestShardedAuthFenceResent: when the member making an auth change
// crashes after the change applied in range 1 and before it fenced the
// other ranges (simulated: every member drops the fences of its changes),
// the member leading range 1 sends the missing fence: a write to range
// [m, ∞) checked before a revoke and proposed once that range was fenced
// is refused and never applied, as when the fence is not lost.
func TestShardedAuthFenceResent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, root, alice := startAuthFenceCluster(ctx, t)
	ranges, err := cl.Node(0).RangeMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rangeN uint64 // the range holding n1
	for _, d := range ranges {
		if string(d.Start) <= "n1" && (len(d.End) == 0 || "n1" < string(d.End)) {
			rangeN = d.Id
		}
	}
	if rangeN == 0 || rangeN == 1 {
		t.Fatalf("n1 is in range %d of %v, want a range other than range 1", rangeN, ranges)
	}
	for _, n := range cl.Nodes() {
		defer n.DropAuthFences()()
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
	st, err := root.AuthStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The revoke's own fence was dropped: the range learns of it only
	// from range 1's leader.
	nodetest.WaitFor(ctx, t, func() error {
		var fenced []uint64
		for _, n := range cl.Nodes() {
			f := n.RangeAuthFence(rangeN)
			if f >= st.AuthRevision {
				return nil
			}
			fenced = append(fenced, f)
		}
		return fmt.Errorf("range %d's replicas are fenced at auth revisions %v, the revoke is %d", rangeN, fenced, st.AuthRevision)
	})
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
