package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/router"
)

// TestSubsetAuthCache: five members, each range on three of them; a member
// without a replica of range 1 (where the auth state lives) serves its
// clients from its cached auth state: in steady state its requests read
// the state remotely only as the cache ages (router.DefaultAuthCacheAge),
// not once per request. A revoke made through another member is honoured
// through it at once for writes (the range's auth fence refuses the write
// checked against the cached state; it is checked again and denied) and
// within the cache's age for reads; a grant made through another member
// is honoured at once by writes and watches (the refusal is checked again
// against a fresh state).
func TestSubsetAuthCache(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cl := nodetest.Start(t, 5, nodetest.Sharded(subsetSplits...), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3),
		nodetest.Edit(func(c *node.Config) { c.BcryptCost = 4 }))
	ones := holders(t, cl, 1)
	m := -1
	for i := range cl.Size() {
		if !slices.Contains(ones, i) {
			m = i
			break
		}
	}
	if m < 0 {
		t.Fatalf("every member holds range 1: %v", ones)
	}
	if _, cached := cl.Node(m).AuthRemoteReads(); !cached {
		t.Fatalf("member %d holds no replica of range 1 (holders %v) but does not cache the auth state", m, ones)
	}
	if _, cached := cl.Node(ones[0]).AuthRemoteReads(); cached {
		t.Fatalf("member %d holds range 1 but caches the auth state", ones[0])
	}

	c := cl.Client(ones[0])
	for _, step := range []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := c.RoleAdd(ctx, "r"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "r", "\x00", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserGrantRole(ctx, "alice", "r"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	login := func(i int, user, pw string) *clientv3.Client {
		t.Helper()
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cl.URLs()[i]}, Username: user, Password: pw, DialTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	root := login(ones[0], "root", "rootpw")
	alice := login(m, "alice", "alicepw")
	// Keys in every range, written and read through member m.
	keys := append([]string{"a1"}, subsetSplits...)
	for _, k := range keys {
		if _, err := alice.Put(ctx, k, "x"); err != nil {
			t.Fatalf("alice writes %s through member %d: %v", k, m, err)
		}
	}

	// Steady state: the cache reads the state again only as it ages.
	before, _ := cl.Node(m).AuthRemoteReads()
	start := time.Now()
	const rounds = 20
	for i := range rounds {
		for _, k := range keys {
			if _, err := alice.Put(ctx, k, fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
			if _, err := alice.Get(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	after, _ := cl.Node(m).AuthRemoteReads()
	elapsed := time.Since(start)
	requests := 2 * rounds * len(keys)
	if limit := uint64(elapsed/router.DefaultAuthCacheAge) + 1; after-before > limit {
		t.Fatalf("%d requests through member %d in %v read the auth state remotely %d times, want at most %d (once per %v)",
			requests, m, elapsed, after-before, limit, router.DefaultAuthCacheAge)
	}
	t.Logf("%d requests through member %d in %v: %d remote auth reads", requests, m, elapsed.Round(time.Millisecond), after-before)

	// A revoke through another member: the next write through m is
	// denied, whatever its cache held.
	if _, err := root.RoleRevokePermission(ctx, "r", "\x00", "\x00"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.RoleGrantPermission(ctx, "r", "a", "b", clientv3.PermissionType(clientv3.PermRead)); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := alice.Put(ctx, k, "after"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Fatalf("alice writes %s through member %d after the revoke: %v, want %v", k, m, err, rpctypes.ErrPermissionDenied)
		}
	}
	// Reads within the cache's age (here at once: the write's refusal
	// refreshed it).
	rctx, rcancel := context.WithTimeout(ctx, router.DefaultAuthCacheAge+10*time.Second)
	defer rcancel()
	nodetest.WaitFor(rctx, t, func() error {
		if _, err := alice.Get(rctx, "n"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			return fmt.Errorf("alice reads n through member %d after the revoke: %v, want %v", m, err, rpctypes.ErrPermissionDenied)
		}
		return nil
	})
	// The grant made with the revoke holds at once.
	if _, err := alice.Get(ctx, "a1"); err != nil {
		t.Fatalf("alice reads a1 through member %d after the grant: %v", m, err)
	}

	// A grant through another member: the next watch and write through m
	// pass.
	if _, err := root.RoleGrantPermission(ctx, "r", "n", "o", clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := alice.Watch(wctx, "n", clientv3.WithCreatedNotify())
	if w := <-wch; w.Err() != nil || !w.Created || w.Canceled {
		t.Fatalf("alice watches n through member %d after the grant: %+v, %v", m, w, w.Err())
	}
	if _, err := alice.Put(ctx, "n", "granted"); err != nil {
		t.Fatalf("alice writes n through member %d after the grant: %v", m, err)
	}
	if w := <-wch; w.Err() != nil || len(w.Events) != 1 || string(w.Events[0].Kv.Value) != "granted" {
		t.Fatalf("alice's watch of n: %+v, %v", w, w.Err())
	}
	r, err := root.Get(ctx, "n")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "granted" {
		t.Fatalf("n after alice's write: %v, %v", r, err)
	}
}
