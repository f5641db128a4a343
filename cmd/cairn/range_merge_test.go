package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
)

// TestRangeMergeCommand: after `cairn range split m`, `cairn range merge
// 1` merges range 2 into range 1 and prints the merged range; an unknown
// range, a range with nothing right of it and a bad id are refused.
//
// (Range 2 is split off online, not made by --initial-split-keys: a
// range bootstrapped so has no span record, and the left range's commit
// reads the right range's span from its records — see the S6 report.)
func TestRangeMergeCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{Name: "m", DataDir: t.TempDir(), ListenClientURLs: []string{"http://127.0.0.1:0"},
		ListenPeerURLs: []string{"http://127.0.0.1:0"}, HeartbeatInterval: 20 * time.Millisecond,
		ElectionTimeout: 200 * time.Millisecond, Sharded: true, InitialSplitKeys: [][]byte{[]byte("g")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	ep := n.ClientURLs()[0]
	var out bytes.Buffer
	// Range 2 [g, ∞), made by the bootstrap and never split, is refused
	// for now (its store records no span for the commit to take).
	if err := rangeCommand([]string{"merge", "--endpoints", ep, "1"}, nil, &out); err == nil || !strings.Contains(err.Error(), "made by the bootstrap") {
		t.Fatalf("merge of a bootstrapped range: %v", err)
	}
	// Split at m, range 2 [g, m) merges into range 1.
	if err := rangeCommand([]string{"split", "--endpoints", ep, "m"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := rangeCommand([]string{"merge", "--endpoints", ep, "1"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.HasPrefix(got, "Merged the range right of range 1 into it\nrange 1 [\"\", \"m\") generation 3 on ") {
		t.Fatalf("merge printed %q", got)
	}
	// And range 3 [m, ∞), which the split made, into the merged range 1.
	out.Reset()
	if err := rangeCommand([]string{"merge", "--endpoints", ep, "1"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.HasPrefix(got, "Merged the range right of range 1 into it\nrange 1 [\"\", ∞) generation 4 on ") {
		t.Fatalf("merge printed %q", got)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"merge", "--endpoints", ep, "1"}, "no range is right of it"},
		{[]string{"merge", "--endpoints", ep, "9"}, "no such range: 9"},
		{[]string{"merge", "--endpoints", ep, "x"}, `bad range id "x"`},
		{[]string{"merge", "--endpoints", ep}, "usage: cairn range split"},
	} {
		err := rangeCommand(tc.args, nil, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
