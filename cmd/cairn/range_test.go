package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
)

// TestRangeSplitCommand: `cairn range split` splits a running sharded
// member's range at the key and prints the two ranges; `cairn ranges` then
// shows the new map; a key that already starts a range, a missing key and
// a single-group member are refused with a clear message.
func TestRangeSplitCommand(t *testing.T) {
	start := func(sharded bool) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg := node.Config{Name: "m", DataDir: t.TempDir(), ListenClientURLs: []string{"http://127.0.0.1:0"},
			ListenPeerURLs: []string{"http://127.0.0.1:0"}, HeartbeatInterval: 20 * time.Millisecond,
			ElectionTimeout: 200 * time.Millisecond, Sharded: sharded}
		if sharded {
			cfg.InitialSplitKeys = [][]byte{[]byte("m")}
		}
		n, err := node.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n.ClientURLs()[0]
	}
	ep := start(true)
	var out bytes.Buffer
	if err := rangeCommand([]string{"split", "--endpoint", ep, "t"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "range 2 [\"m\", \"t\") generation 2\nrange 3 [\"t\", ∞) generation 2\n" {
		t.Fatalf("split printed %q", got)
	}
	out.Reset()
	if err := rangesCommand([]string{"--endpoint", ep}, nil, &out); err != nil {
		t.Fatal(err)
	}
	// The summary, then a line per range.
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 4 || !strings.HasPrefix(lines[0], "3 ranges, ") || !strings.HasPrefix(lines[3], "3, ") {
		t.Fatalf("ranges after the split:\n%s", out.String())
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"split", "--endpoint", ep, "t"}, "already starts at"},
		{[]string{"split", "--endpoint", ep}, "usage: cairn range split"},
		{[]string{"merge", "x"}, `bad range id "x"`},
		{[]string{"split", "--endpoint", start(false), "x"}, "needs sharded mode"},
	} {
		err := rangeCommand(tc.args, nil, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
