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
)

// TestModeSwitchRefused: a data directory keeps the mode it was created in
// — a single-group one started sharded, or the reverse, and a restored
// backup started sharded, are refused with an error naming the way to
// start it (it used to crash the process), and start in their own mode.
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
		dir := t.TempDir()
		n := startNodeWith(t, dir, func(c *node.Config) { c.Sharded = sharded })
		if _, err := newClient(t, n).Put(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		if err := n.Close(); err != nil {
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

	// A restored backup holds one store: sharded mode refuses it, and
	// refusing leaves it to start in single-group mode.
	n := startNodeWith(t, t.TempDir(), nil)
	if _, err := newClient(t, n).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	rd, err := newClient(t, n).Snapshot(ctx)
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
	if err := try(restored, true); err == nil || !strings.Contains(err.Error(), "--single-group") {
		t.Fatalf("a restored backup started sharded: %v, want an error naming --single-group", err)
	}
	if err := try(restored, false); err != nil {
		t.Fatalf("the restored backup in single-group mode after the refusal: %v", err)
	}
}
