package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestRaftLogShards: a new data directory keeps its raft log in one
// partition (one fsync stream for all of the member's ranges) and records
// it; a directory with raft data but no record is one made before the
// record, with dragonboat's sixteen, and keeps them across restarts (the
// count is a hard setting: dragonboat refuses to open a directory with
// another). The record is read back as written.
func TestRaftLogShards(t *testing.T) {
	read := func(dir string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, "raft", node.RaftLogShardsFile))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cl := nodetest.Start(t, 1, nodetest.Sharded("m"))
	dir := cl.Config(0).DataDir
	if got := read(dir); got != "1" {
		t.Fatalf("a new data directory records %q raft-log partitions, want 1", got)
	}
	if got := cl.Node(0).RaftLogShards(); got != 1 {
		t.Fatalf("a new data directory runs %d raft-log partitions, want 1", got)
	}
	if _, err := cl.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	cl.Restart(0)
	if got := cl.Node(0).RaftLogShards(); got != 1 {
		t.Fatalf("after a restart: %d raft-log partitions, want 1", got)
	}

	// A directory from before the record: made with sixteen (what the
	// record says here stands for the dragonboat default it was made
	// with), then the record removed.
	legacy := nodetest.Start(t, 1, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) {
		if err := os.MkdirAll(filepath.Join(c.DataDir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.DataDir, "raft", node.RaftLogShardsFile), []byte("16\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}))
	if _, err := legacy.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := legacy.Stop(0); err != nil {
		t.Fatal(err)
	}
	ldir := legacy.Config(0).DataDir
	if err := os.Remove(filepath.Join(ldir, "raft", node.RaftLogShardsFile)); err != nil {
		t.Fatal(err)
	}
	legacy.Restart(0)
	if got := legacy.Node(0).RaftLogShards(); got != 16 {
		t.Fatalf("a directory with raft data and no record runs %d partitions, want dragonboat's 16", got)
	}
	if got := read(ldir); got != "16" {
		t.Fatalf("a directory from before the record now records %q, want 16", got)
	}
	resp, err := legacy.Client(0).Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get after the restart: %v, %v", resp, err)
	}
}
