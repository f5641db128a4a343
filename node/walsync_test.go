package node_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestRaftLogSyncs: with the raft log timed, each node's
// etcd_disk_wal_fsync_duration_seconds counts at least one fsync per
// sequential write it made durable and etcd_disk_wal_write_bytes_total
// rises, for a raft log under the data directory and for one in a
// separate WAL directory; another node's writes do not count in them.
func TestRaftLogSyncs(t *testing.T) {
	node.TimeRaftLogSyncs()
	walDir := filepath.Join(t.TempDir(), "wal")
	a := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) { cfg.WALDir = walDir }))
	b := nodetest.Start(t, 1)
	urlA, urlB := a.URLs()[0]+"/metrics", b.URLs()[0]+"/metrics"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const writes = 10
	const fsync, written = "etcd_disk_wal_fsync_duration_seconds", "etcd_disk_wal_write_bytes_total"
	for _, tc := range []struct {
		name          string
		c             *nodetest.Cluster
		url, otherURL string
	}{{"wal-dir", a, urlA, urlB}, {"data-dir", b, urlB, urlA}} {
		t.Run(tc.name, func(t *testing.T) {
			before, otherBefore := scrape(t, tc.url), scrape(t, tc.otherURL)
			for i := range writes {
				if _, err := tc.c.Client(0).Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
					t.Fatal(err)
				}
			}
			after, otherAfter := scrape(t, tc.url), scrape(t, tc.otherURL)
			if d := value(after, fsync, nil) - max(value(before, fsync, nil), 0); d < writes {
				t.Errorf("%s counted %v fsyncs, want at least the %d writes'", fsync, d, writes)
			}
			if d := value(after, written, nil) - max(value(before, written, nil), 0); d <= 0 {
				t.Errorf("%s moved by %v, want more than 0", written, d)
			}
			if d := value(otherAfter, fsync, nil) - max(value(otherBefore, fsync, nil), 0); d >= writes {
				t.Errorf("the other node's %s counted %v fsyncs during this node's %d writes", fsync, d, writes)
			}
		})
	}
}
