package node_test

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestSnapshotRestore: a backup taken with etcd's client (what `etcdctl
// snapshot save` runs) restores into a new data directory that starts as a
// new cluster with the same keys, history revision and leases; writes go
// on from the restored revision.
func TestSnapshotRestore(t *testing.T) {
	c := nodetest.Start(t, 1).Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g, err := c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if _, err := c.Put(ctx, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Put(ctx, "leased", "v", clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	want, err := c.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}

	// What `etcdctl snapshot save` does: copy the stream to a file and
	// check that its size has the shape of a page-aligned image plus a
	// SHA-256 (size % 512 == 32).
	file := filepath.Join(t.TempDir(), "backup.db")
	rd, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	if len(data)%512 != sha256.Size {
		t.Fatalf("snapshot of %d bytes: etcdctl would refuse it (no checksum)", len(data))
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	rev, err := node.RestoreSnapshot(file, dir)
	if err != nil {
		t.Fatal(err)
	}
	if rev != want.Header.Revision {
		t.Fatalf("restored revision %d, want %d", rev, want.Header.Revision)
	}
	if _, err := node.RestoreSnapshot(file, dir); err == nil {
		t.Fatal("restoring over an existing data directory succeeded")
	}

	rc := nodetest.Start(t, 1, nodetest.DataDir(dir)).Client(0)
	got, err := rc.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want.Kvs) || got.Header.Revision != want.Header.Revision {
		t.Fatalf("restored %v at %d, want %v at %d", got.Kvs, got.Header.Revision, want.Kvs, want.Header.Revision)
	}
	for i := range got.Kvs {
		if got.Kvs[i].String() != want.Kvs[i].String() {
			t.Fatalf("restored %v, want %v", got.Kvs[i], want.Kvs[i])
		}
	}
	ttl, err := rc.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.GrantedTTL != 600 || len(ttl.Keys) != 1 {
		t.Fatalf("restored lease: %v %v", ttl, err)
	}
	p, err := rc.Put(ctx, "new", "v")
	if err != nil || p.Header.Revision != want.Header.Revision+1 {
		t.Fatalf("first write after restore: %v %v, want revision %d", p, err, want.Header.Revision+1)
	}
}
