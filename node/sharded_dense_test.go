package node_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedOneRangeDense: a sharded cluster whose key space is one range
// numbers revisions exactly as etcd does (DESIGN.md "Keys, values,
// revisions"): dense from 2, and reads, compactions and hashes report the
// last write's revision, not an oracle's; a restart keeps counting. Its
// first split hands the numbering to the oracle: every later write, in
// either range, is above every revision counted before, and history from
// before the split reads as it was.
func TestShardedOneRangeDense(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded())
	n := cl.Node(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := cl.Client(0)

	put := func(key, val string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, key, val)
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		return resp.Header.Revision
	}
	for i, key := range []string{"a", "b", "a", "z"} {
		if rev := put(key, "v1"); rev != int64(i+2) {
			t.Fatalf("put %d (%s) at revision %d, want %d as etcd", i, key, rev, i+2)
		}
	}
	get, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || get.Header.Revision != 5 || len(get.Kvs) != 3 {
		t.Fatalf("get everything: %v, %v; want 3 keys at revision 5", get, err)
	}
	if kv := get.Kvs[0]; string(kv.Key) != "a" || kv.CreateRevision != 2 || kv.ModRevision != 4 || kv.Version != 2 {
		t.Fatalf("a is %v, want created at 2, modified at 4, version 2", kv)
	}
	comp, err := cli.Compact(ctx, 3)
	if err != nil || comp.Header.Revision != 5 {
		t.Fatalf("compact 3: %v, %v; want the header at revision 5", comp, err)
	}
	if _, err := cli.Compact(ctx, 6); err == nil {
		t.Fatal("compact at 6, a future revision, succeeded")
	}
	hash, err := cli.HashKV(ctx, n.ClientURLs()[0], 0)
	if err != nil || hash.Header.Revision != 5 || hash.HashRevision != 5 {
		t.Fatalf("hashkv: %v, %v; want revision 5", hash, err)
	}

	// A restart keeps counting.
	cli.Close()
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	n = cl.Restart(0)
	cli = cl.Client(0)
	if rev := put("b", "v2"); rev != 6 {
		t.Fatalf("put after a restart at revision %d, want 6", rev)
	}

	// The first split: the oracle numbers what comes after it.
	if _, err := n.SplitRange(ctx, []byte("m")); err != nil {
		t.Fatal(err)
	}
	left := put("c", "v1")
	right := put("y", "v1")
	if left <= 6 || right <= left {
		t.Fatalf("puts after the split at revisions %d then %d, want increasing above 6", left, right)
	}
	all, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || all.Header.Revision < right || len(all.Kvs) != 5 {
		t.Fatalf("get over both ranges: %v, %v; want 5 keys at a revision of at least %d", all, err, right)
	}
	old, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(5))
	if err != nil || len(old.Kvs) != 3 || string(old.Kvs[1].Value) != "v1" {
		t.Fatalf("get at revision 5 after the split: %v, %v; want the 3 keys as they were", old, err)
	}

	// Restarted, the ranges keep the oracle's numbering.
	cli.Close()
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	n = cl.Restart(0)
	cli = cl.Client(0)
	if rev := put("d", "v1"); rev <= right {
		t.Fatalf("put after a restart at revision %d, want above %d", rev, right)
	}
	if rev := put("x", "v1"); rev <= right {
		t.Fatalf("put after a restart at revision %d, want above %d", rev, right)
	}
}
