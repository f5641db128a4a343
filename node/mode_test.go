package node_test

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestModeSwitchRefused: a data directory keeps the mode it was created in
// — a single-group one started sharded, or the reverse, is refused with an
// error naming the way to start it (it used to crash the process), and
// starts in its own mode. A restored backup starts in either mode, its
// data kept and new writes above its revision, and then keeps that mode.
func TestModeSwitchRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	try := func(dir string, sharded bool) error {
		n, err := node.Start(ctx, node.Config{
			Name: "test", DataDir: dir, Sharded: sharded,
			ListenClientURLs:  []string{"http://127.0.0.1:0"},
			ListenPeerURLs:    []string{"http://127.0.0.1:0"},
			HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		})
		if err == nil {
			err = n.Close()
		}
		return err
	}
	for _, sharded := range []bool{false, true} {
		cl := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.Sharded = sharded }))
		dir := cl.Config(0).DataDir
		if _, err := cl.Client(0).Put(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		if err := cl.Stop(0); err != nil {
			t.Fatal(err)
		}
		want := "--single-group"
		if sharded {
			want = "--single-group=false"
		}
		if err := try(dir, !sharded); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("a data directory created with sharded=%v started with sharded=%v: %v, want an error naming %s", sharded, !sharded, err, want)
		}
		if err := try(dir, sharded); err != nil {
			t.Fatalf("restart in its own mode after the refusal: %v", err)
		}
	}

	// A restored backup has no mode yet: it starts in either, and then
	// keeps the one it started in.
	for _, sharded := range []bool{false, true} {
		restored := restoredBackup(t, ctx)
		cl := nodetest.Start(t, 1, nodetest.DataDir(restored), nodetest.Edit(func(c *node.Config) { c.Sharded = sharded }))
		cli := cl.Client(0)
		got, err := cli.Get(ctx, "k")
		if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
			t.Fatalf("sharded=%v: the restored key: %v, %v", sharded, got, err)
		}
		restoredRev := got.Kvs[0].ModRevision
		put, err := cli.Put(ctx, "k2", "v2")
		if err != nil || put.Header.Revision <= restoredRev {
			t.Fatalf("sharded=%v: a put after the restore (of revision %d): %v, %v", sharded, restoredRev, put, err)
		}
		if err := cl.Stop(0); err != nil {
			t.Fatal(err)
		}
		if err := try(restored, !sharded); err == nil {
			t.Fatalf("the restored backup started with sharded=%v, then with sharded=%v: not refused", sharded, !sharded)
		}
	}
}

// restoredBackup returns a data directory restored from a backup of a
// single-group node that holds k=v.
func restoredBackup(t *testing.T, ctx context.Context) string {
	t.Helper()
	cl := nodetest.Start(t, 1)
	if _, err := cl.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	for range 5 { // some history, so the restored revision is not 2
		if _, err := cl.Client(0).Put(ctx, "other", "x"); err != nil {
			t.Fatal(err)
		}
	}
	rd, err := cl.Client(0).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rd)
	if err != nil || len(data)%512 != sha256.Size {
		t.Fatalf("snapshot: %d bytes, %v", len(data), err)
	}
	file := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(t.TempDir(), "restored")
	if _, err := node.RestoreSnapshot(file, restored); err != nil {
		t.Fatal(err)
	}
	return restored
}

// TestAdoptRecordedMode: with AdoptRecordedMode, Sharded chooses the mode
// of a new data directory only. One created in either mode starts in its
// own whatever Sharded says, its data kept; one that has started but
// records no mode (created before modes were recorded) starts in
// single-group mode, the default then; a restored backup not started yet
// takes Sharded.
func TestAdoptRecordedMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adopting := func(sharded bool) func(*node.Config) {
		return func(c *node.Config) { c.Sharded, c.AdoptRecordedMode = sharded, true }
	}
	// isSharded tells the mode a node runs: only sharded mode has ranges.
	isSharded := func(n *node.Node) bool { return len(n.Ranges()) > 0 }

	for _, created := range []bool{false, true} {
		cl := nodetest.Start(t, 1, nodetest.Edit(adopting(created)))
		n := cl.Node(0)
		if isSharded(n) != created {
			t.Fatalf("a new data directory with Sharded=%v started sharded=%v", created, isSharded(n))
		}
		if _, err := cl.Client(0).Put(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		if err := cl.Stop(0); err != nil {
			t.Fatal(err)
		}
		n = cl.RestartWith(0, adopting(!created))
		if isSharded(n) != created {
			t.Fatalf("a data directory created with sharded=%v, started again adopting with Sharded=%v: sharded=%v", created, !created, isSharded(n))
		}
		got, err := cl.Client(0).Get(ctx, "k")
		if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
			t.Fatalf("sharded=%v: k after the restart: %v, %v", created, got, err)
		}
		if err := cl.Stop(0); err != nil {
			t.Fatal(err)
		}
	}

	// A single-group data directory from before the mode file.
	cl := nodetest.Start(t, 1)
	if _, err := cl.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(cl.Config(0).DataDir, "mode")); err != nil {
		t.Fatal(err)
	}
	n := cl.RestartWith(0, adopting(true))
	if isSharded(n) {
		t.Fatal("a data directory from before modes were recorded, adopting with Sharded=true: started sharded")
	}
	if got, err := cl.Client(0).Get(ctx, "k"); err != nil || len(got.Kvs) != 1 {
		t.Fatalf("k in the data directory from before modes were recorded: %v, %v", got, err)
	}
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}

	// A restored backup has never started: Sharded chooses.
	n = nodetest.Start(t, 1, nodetest.DataDir(restoredBackup(t, ctx)), nodetest.Edit(adopting(true))).Node(0)
	if !isSharded(n) {
		t.Fatal("a restored backup adopting with Sharded=true: started single-group")
	}
}
