package node_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedSnapshot: `etcdctl snapshot save` of a sharded cluster of
// three ranges, taken while writes go on in every range, is the whole key
// space at one revision R: restored, in sharded mode (one range) and in
// single-group mode, it answers at R — and at an older revision — exactly
// as the source does, leases included (a lease with keys in two ranges
// keeps both, a revoked one is gone), and new writes land above R.
func TestShardedSnapshot(t *testing.T) {
	cli := nodetest.Start(t, 1, nodetest.Sharded("c", "m")).Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	kept, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	var old int64
	for i, k := range []string{"a", "d", "p", "a", "x", "d"} {
		resp, err := cli.Put(ctx, k, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		old = resp.Header.Revision
	}
	for _, k := range []string{"b", "q"} { // two ranges each
		if _, err := cli.Put(ctx, "lease/"+k, "kept", clientv3.WithLease(kept.ID)); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, k+"/gone", "gone", clientv3.WithLease(gone.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Revoke(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}

	// Writes in every range while the snapshot is taken.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := cli.Put(ctx, fmt.Sprintf("%c/busy", "bfs"[i%3]), fmt.Sprint(i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("snapshot of a three-range member: %v", err)
	}
	file := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}

	all := func(c *clientv3.Client, rev int64) []*mvccpb.KeyValue {
		t.Helper()
		resp, err := c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Kvs
	}
	for _, sharded := range []bool{true, false} {
		restored := filepath.Join(t.TempDir(), "restored")
		rev, err := node.RestoreSnapshot(file, restored)
		if err != nil {
			t.Fatal(err)
		}
		rc := nodetest.Start(t, 1, nodetest.DataDir(restored), nodetest.Edit(func(c *node.Config) { c.Sharded = sharded }))
		rcli := rc.Client(0)
		for _, at := range []int64{rev, old} {
			want, got := all(cli, at), all(rcli, at)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("sharded=%v: restored at %d:\n%v\nthe source at %d:\n%v", sharded, at, got, at, want)
			}
		}
		if now := all(rcli, 0); fmt.Sprint(now) != fmt.Sprint(all(cli, rev)) {
			t.Fatalf("sharded=%v: the restored cluster now: %v, want the source at %d", sharded, now, rev)
		}
		put, err := rcli.Put(ctx, "new", "v")
		if err != nil || put.Header.Revision <= rev {
			t.Fatalf("sharded=%v: a put on the restored cluster (backup at %d): %v, %v", sharded, rev, put, err)
		}
		// Nothing the source wrote after R is there to surface above it.
		after := all(rcli, put.Header.Revision)
		after = slices.DeleteFunc(after, func(kv *mvccpb.KeyValue) bool { return string(kv.Key) == "new" })
		if fmt.Sprint(after) != fmt.Sprint(all(cli, rev)) {
			t.Fatalf("sharded=%v: after a put at %d: %v, want the source at %d and the put", sharded, put.Header.Revision, after, rev)
		}
		ttl, err := rcli.TimeToLive(ctx, kept.ID, clientv3.WithAttachedKeys())
		if err != nil || ttl.TTL <= 0 || fmt.Sprintf("%s", ttl.Keys) != "[lease/b lease/q]" {
			t.Fatalf("sharded=%v: the kept lease restored: %+v, %v", sharded, ttl, err)
		}
		if ttl, err := rcli.TimeToLive(ctx, gone.ID); err != nil || ttl.TTL != -1 {
			t.Fatalf("sharded=%v: the revoked lease restored: %+v, %v", sharded, ttl, err)
		}
		if _, err := rcli.Revoke(ctx, kept.ID); err != nil {
			t.Fatal(err)
		}
		if got, err := rcli.Get(ctx, "lease/", clientv3.WithPrefix()); err != nil || len(got.Kvs) != 0 {
			t.Fatalf("sharded=%v: keys of the restored lease after its revoke: %v, %v", sharded, got, err)
		}
		if err := rc.Stop(0); err != nil {
			t.Fatal(err)
		}
	}
}
