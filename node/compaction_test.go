package node

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/router"
)

// awaitTimer waits (with a deadline) until the compactor waits on clk and
// returns the duration it asked for.
func awaitTimer(t *testing.T, clk *router.ManualClock) time.Duration {
	t.Helper()
	d, ok := clk.Await(30 * time.Second)
	if !ok {
		t.Fatal("the compactor did not wait on its clock within 30s")
	}
	return d
}

// startCompactionNode starts a one-member node in dir with the given
// automatic compaction and clock.
func startCompactionNode(t *testing.T, dir, mode, retention string, clk router.CompactorClock) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Start(ctx, Config{
		Name:                    "test",
		DataDir:                 dir,
		ListenClientURLs:        []string{"http://127.0.0.1:0"},
		ListenPeerURLs:          []string{"http://127.0.0.1:0"},
		HeartbeatInterval:       20 * time.Millisecond,
		ElectionTimeout:         200 * time.Millisecond,
		AutoCompactionMode:      mode,
		AutoCompactionRetention: retention,
		compactionClock:         clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func compactionClient(t *testing.T, n *Node) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: n.ClientURLs(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func put(t *testing.T, c *clientv3.Client, k string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Put(ctx, k, "v")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// revisions reads the replica's current and compacted revisions.
func revisions(t *testing.T, n *Node) (rev, compacted int64) {
	t.Helper()
	st, err := n.first.Load().Replica().Status(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	return int64(st.Revision), int64(st.CompactRevision)
}

// checkCompactedAt checks through the etcd client that reads below rev
// are refused as compacted and a read at rev is served.
func checkCompactedAt(t *testing.T, c *clientv3.Client, rev int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Get(ctx, "k", clientv3.WithRev(rev-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("get at revision %d: %v, want %v", rev-1, err, rpctypes.ErrCompacted)
	}
	if _, err := c.Get(ctx, "k", clientv3.WithRev(rev)); err != nil {
		t.Fatalf("get at the compacted revision %d: %v", rev, err)
	}
}

// TestAutoCompactionPeriodic: with a retention of one hour the compactor
// samples the revision every 6 minutes, compacts nothing for the first
// hour, compacts at the revision it saw at the start after one hour, then
// hourly at the revision it saw 66 minutes before — etcd's schedule.
func TestAutoCompactionPeriodic(t *testing.T) {
	dir := t.TempDir()
	// Some history first, so that the first sample is a revision that can
	// be compacted.
	n := startCompactionNode(t, dir, "", "", nil)
	c := compactionClient(t, n)
	for i := range 5 {
		put(t, c, fmt.Sprintf("pre%d", i))
	}
	c.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	clk := router.NewManualClock()
	n = startCompactionNode(t, dir, "periodic", "1h", clk)
	c = compactionClient(t, n)
	if d := awaitTimer(t, clk); d != 6*time.Minute {
		t.Fatalf("periodic compactor waits %v between samples, want 6m", d)
	}
	rev0, initial := revisions(t, n)
	samples := []int64{rev0} // samples[i]: the revision at minute 6*i
	for i := 1; i <= 21; i++ {
		r := put(t, c, "k")
		clk.Advance(6 * time.Minute)
		if d := awaitTimer(t, clk); d != 6*time.Minute {
			t.Fatalf("minute %d: periodic compactor waits %v, want 6m", 6*i, d)
		}
		samples = append(samples, r)
		want := initial
		switch {
		case i >= 20:
			want = samples[9]
		case i >= 10:
			want = samples[0]
		}
		if _, got := revisions(t, n); got != want {
			t.Fatalf("minute %d: compacted at %d, want %d (initially %d; samples %v)", 6*i, got, want, initial, samples)
		}
	}
	if samples[0] <= initial || samples[9] <= samples[0] {
		t.Fatalf("the test compacted nothing new: initially %d, samples %v", initial, samples)
	}
	checkCompactedAt(t, c, samples[9])
}

// TestAutoCompactionRevision: with a retention of 3 revisions the compactor
// looks every 5 minutes and compacts at the current revision minus 3, if
// that is above 0 and new.
func TestAutoCompactionRevision(t *testing.T) {
	clk := router.NewManualClock()
	n := startCompactionNode(t, t.TempDir(), "revision", "3", clk)
	c := compactionClient(t, n)
	if d := awaitTimer(t, clk); d != 5*time.Minute {
		t.Fatalf("revision compactor waits %v, want 5m", d)
	}
	rev, initial := revisions(t, n)

	// Too little history: nothing to compact.
	clk.Advance(5 * time.Minute)
	awaitTimer(t, clk)
	if rev > 3 {
		t.Fatalf("a fresh node is at revision %d; the test needs one at most 3", rev)
	}
	if _, got := revisions(t, n); got != initial {
		t.Fatalf("compacted at %d with revision %d and retention 3, want nothing", got, rev)
	}

	var last int64
	for i := range 10 {
		last = put(t, c, fmt.Sprintf("k%d", i))
	}
	// Not yet five minutes since the last look.
	clk.Advance(5*time.Minute - time.Second)
	if _, got := revisions(t, n); got != initial {
		t.Fatalf("compacted at %d before five minutes passed", got)
	}
	clk.Advance(time.Second)
	awaitTimer(t, clk)
	if _, got := revisions(t, n); got != last-3 {
		t.Fatalf("compacted at %d, want %d (revision %d minus 3)", got, last-3, last)
	}

	// No writes: the same target, nothing new.
	clk.Advance(5 * time.Minute)
	awaitTimer(t, clk)
	if _, got := revisions(t, n); got != last-3 {
		t.Fatalf("compacted at %d after an idle round, want still %d", got, last-3)
	}

	put(t, c, "k")
	last = put(t, c, "k")
	clk.Advance(5 * time.Minute)
	awaitTimer(t, clk)
	if _, got := revisions(t, n); got != last-3 {
		t.Fatalf("compacted at %d, want %d", got, last-3)
	}
	checkCompactedAt(t, c, last-3)
}

// TestAutoCompactionConfig: the mode defaults to periodic, and Start
// refuses what etcd refuses (how the retention reads: router's
// TestCompactionRetention), and a negative scheduler threshold.
func TestAutoCompactionConfig(t *testing.T) {
	base := Config{ListenClientURLs: []string{"http://127.0.0.1:0"}, ListenPeerURLs: []string{"http://127.0.0.1:0"}}
	c, err := base.withDefaults()
	if err != nil || c.AutoCompactionMode != router.CompactionPeriodic {
		t.Fatalf("default mode %q, %v; want periodic", c.AutoCompactionMode, err)
	}
	for name, mod := range map[string]func(*Config){
		"mode":                        func(c *Config) { c.AutoCompactionMode = "weekly" },
		"retention":                   func(c *Config) { c.AutoCompactionRetention = "soon" },
		"initial-cluster-state":       func(c *Config) { c.InitialClusterState = "old" },
		"initial-advertise-peer-urls": func(c *Config) { c.InitialAdvertisePeerURLs = []string{"m1:2380"} },
		"range-max-bytes":             func(c *Config) { c.RangeMaxBytes = -1 },
		"range-split-load":            func(c *Config) { c.SplitLoad = -5 },
	} {
		c := base
		mod(&c)
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("a bad --%s is accepted", name)
		}
	}
}
