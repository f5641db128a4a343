package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cairn-kv/cairn/router"
)

// TestRangesCommand: `cairn ranges` prints a line per range of the map a
// member serves at /cairn/ranges, and says so for single-group mode.
func TestRangesCommand(t *testing.T) {
	var ranges []router.RangeInfo
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cairn/ranges" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(ranges)
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := rangesCommand([]string{"--endpoint", srv.URL}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "single-group mode") {
		t.Fatalf("no ranges: %q", out.String())
	}
	ranges = []router.RangeInfo{
		{ID: 1, End: "m", Generation: 1, Replicas: []uint64{0xab}, Leader: 0xab, Revision: 7, Closed: 9, Writes: 3, Keys: 4, Watchers: 2},
		{ID: 2, Start: "m", Generation: 2, Replicas: []uint64{0xab, 0xcd}},
	}
	out.Reset()
	if err := rangesCommand([]string{"--endpoint", srv.URL}, nil, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// etcdctl's simple format: no header, fields separated by ", " in
	// the table's column order (rangesHeader).
	want := [][]string{
		{"1", `""`, `"m"`, "1", "ab", "ab", "4", "7", "9", "3", "2"},
		{"2", `"m"`, "∞", "2", "none", "ab,cd", "0", "0", "0", "0", "0"},
	}
	if len(lines) != len(want) {
		t.Fatalf("output:\n%s", out.String())
	}
	for i, w := range want {
		if got := strings.Split(lines[i], ", "); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want %q", i, got, w)
		}
	}
	if err := rangesCommand([]string{"--endpoint", srv.URL + "/nowhere"}, nil, &out); err == nil {
		t.Error("a member without /cairn/ranges: no error")
	}
}
