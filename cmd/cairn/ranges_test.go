package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
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
	// The summary of the map on top (here from a member from before
	// paging, which answers the whole map as an array).
	if want := "2 ranges, 4 keys, 1 without a leader; leaders: ab 1"; lines[0] != want {
		t.Errorf("summary %q, want %q", lines[0], want)
	}
	lines = lines[1:]
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

// TestRangesCommandMany: with 10,000 ranges (a member's /cairn/ranges
// answering a fake map), `cairn ranges` shows the summary and the first
// 100 ranges and says how many more there are; --limit, --start and
// --sort-by page through the map on the member's side; json is the whole
// array unless a paging flag is given; bad values are refused before
// asking the member.
func TestRangesCommandMany(t *testing.T) {
	const n = 10000
	infos := make([]router.RangeInfo, n)
	for i := range infos {
		id := uint64(i + 1)
		infos[i] = router.RangeInfo{ID: id, Generation: 1, Replicas: []uint64{1, 2, 3}, Leader: id % 4, Keys: int64(id % 7), Writes: id}
		if i > 0 {
			infos[i].Start = fmt.Sprintf("k%05d", i)
		}
		if i+1 < n {
			infos[i].End = fmt.Sprintf("k%05d", i+1)
		}
	}
	var mu sync.Mutex
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
		router.ServeRanges(w, r, func() []router.RangeInfo { return infos })
	}))
	defer srv.Close()
	lastQuery := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(queries) == 0 {
			return "none"
		}
		return queries[len(queries)-1]
	}
	run := func(args ...string) []string {
		t.Helper()
		var out bytes.Buffer
		if err := rangesCommand(append([]string{"--endpoints", srv.URL}, args...), nil, &out); err != nil {
			t.Fatalf("cairn ranges %s: %v", strings.Join(args, " "), err)
		}
		return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	}
	const summary = "10000 ranges, 29998 keys, 2500 without a leader; leaders: 1 2500, 2 2500, 3 2500"
	ids := func(rows []string) string {
		var out []string
		for _, r := range rows {
			out = append(out, strings.SplitN(r, ", ", 2)[0])
		}
		return strings.Join(out, " ")
	}

	lines := run()
	if len(lines) != 102 || lines[0] != summary || !strings.HasPrefix(lines[1], "1, ") || !strings.HasPrefix(lines[100], "100, ") ||
		lines[101] != "… 9900 more ranges (use --limit 0 or --start)" {
		t.Errorf("default: %d lines: %q … %q", len(lines), lines[:2], lines[len(lines)-2:])
	}
	if q := lastQuery(); !strings.Contains(q, "limit=100") {
		t.Errorf("default asked %q: want limit=100 on the member's side", q)
	}
	if lines := run("--start", "k05000x", "--limit", "3"); ids(lines[1:4]) != "5001 5002 5003" || lines[4] != "… 4997 more ranges (use --limit 0 or --start)" {
		t.Errorf("--start k05000x --limit 3: %q", lines)
	}
	if lines := run("--sort-by", "writes", "--limit", "2"); ids(lines[1:3]) != "10000 9999" {
		t.Errorf("--sort-by writes: %q", lines)
	}
	if lines := run("--sort-by", "id", "--start", "k09998"); len(lines) != 3 || ids(lines[1:]) != "9999 10000" {
		t.Errorf("--sort-by id --start k09998: %q", lines)
	}
	if lines := run("--limit", "0"); len(lines) != n+1 || lines[0] != summary {
		t.Errorf("--limit 0: %d lines, first %q", len(lines), lines[0])
	}
	if lines := run("-w", "table", "--limit", "2"); len(lines) != 8 || lines[0] != summary || !strings.HasPrefix(lines[2], "| RANGE") ||
		lines[7] != "… 9998 more ranges (use --limit 0 or --start)" {
		t.Errorf("table: %q", lines)
	}

	// json: the whole array as before, unless a paging flag is given.
	var all []router.RangeInfo
	if lines := run("-w", "json"); len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &all) != nil || len(all) != n || lastQuery() != "" {
		t.Errorf("json: %d lines, %d ranges, query %q", len(lines), len(all), lastQuery())
	}
	var page router.RangePage
	if lines := run("-w", "json", "--limit", "2", "--start", "k00005"); json.Unmarshal([]byte(lines[0]), &page) != nil ||
		len(page.Ranges) != 2 || page.Ranges[0].ID != 6 || page.More != n-7 || page.Summary.String() != summary {
		t.Errorf("json --limit 2 --start k00005: %s", lines[0])
	}
	page = router.RangePage{}
	if lines := run("-w", "json", "--start", "k09000"); json.Unmarshal([]byte(lines[0]), &page) != nil || len(page.Ranges) != 1000 || page.More != 0 {
		t.Errorf("json --start k09000 (no limit: all from there): %d ranges, %d more", len(page.Ranges), page.More)
	}

	asked := len(queries)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--limit", "-1"}, `invalid --limit -1`},
		{[]string{"--limit", "ten"}, `invalid value "ten" for flag -limit`},
		{[]string{"--sort-by", "size"}, `unsupported --sort-by "size": want one of id, start, keys, writes, revision`},
	} {
		var out bytes.Buffer
		if err := rangesCommand(append([]string{"--endpoints", srv.URL}, tc.args...), nil, &out); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	if len(queries) != asked {
		t.Errorf("bad flags asked the member: %q", queries[asked:])
	}
	// A member refusing a parameter: its reason in the error.
	var out bytes.Buffer
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.RawQuery = "limit=x"
		router.ServeRanges(w, r, func() []router.RangeInfo { return infos })
	}))
	defer bad.Close()
	if err := rangesCommand([]string{"--endpoints", bad.URL}, nil, &out); err == nil || !strings.Contains(err.Error(), `400 Bad Request: bad limit "x"`) {
		t.Errorf("member answering 400: %v", err)
	}
}

// TestRangesBadFlagExit: the binary refuses a bad --limit or --sort-by
// with exit status 1 and says why on stderr, as for etcdctl's flags.
func TestRangesBadFlagExit(t *testing.T) {
	for _, args := range [][]string{{"--limit", "-5"}, {"--sort-by", "size"}, {"--limit", "x"}} {
		cmd := exec.Command(binary, append([]string{"ranges", "--endpoints", "127.0.0.1:1"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(stderr.String(), strings.TrimPrefix(args[0], "--")) {
			t.Errorf("cairn ranges %s: %v, stderr %q", strings.Join(args, " "), err, stderr.String())
		}
	}
}

// TestRangesCommandReplicas: of members naming replica ids, `cairn ranges`
// shows each range's replicas as member/replica id in the map's order,
// learners marked, in the simple and the table format; here five members
// holding ranges of three replicas round robin, one range moving (a
// learner on a fourth member).
func TestRangesCommandReplicas(t *testing.T) {
	members := []uint64{0xa1, 0xb2, 0xc3, 0xd4, 0xe5}
	var infos []router.RangeInfo
	next := uint64(7)
	for i := range 5 {
		r := router.RangeInfo{ID: uint64(i + 1), Generation: 1}
		if i > 0 {
			r.Start = fmt.Sprintf("k%d", i)
		}
		if i < 4 {
			r.End = fmt.Sprintf("k%d", i+1)
		}
		for j := range 3 {
			m := members[(i+j)%len(members)]
			r.Replicas = append(r.Replicas, m)
			r.ReplicaSet = append(r.ReplicaSet, router.ReplicaInfo{Member: m, ID: next})
			next++
		}
		r.Leader = r.Replicas[0]
		infos = append(infos, r)
	}
	infos[1].ReplicaSet = append(infos[1].ReplicaSet, router.ReplicaInfo{Member: 0xa1, ID: next, Learner: true})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		router.ServeRanges(w, r, func() []router.RangeInfo { return infos })
	}))
	defer srv.Close()
	run := func(args ...string) []string {
		t.Helper()
		var out bytes.Buffer
		if err := rangesCommand(append([]string{"--endpoints", srv.URL}, args...), nil, &out); err != nil {
			t.Fatalf("cairn ranges %s: %v", strings.Join(args, " "), err)
		}
		return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	}
	want := []struct{ leader, replicas string }{
		{"a1", "a1/7,b2/8,c3/9"},
		{"b2", "b2/10,c3/11,d4/12,a1/22(learner)"},
		{"c3", "c3/13,d4/14,e5/15"},
		{"d4", "d4/16,e5/17,a1/18"},
		{"e5", "e5/19,a1/20,b2/21"},
	}
	leaderCol, replicasCol := slices.Index(rangesHeader, "LEADER"), slices.Index(rangesHeader, "REPLICAS")

	// simple: the summary, then a line per range in the header's order.
	lines := run()
	if len(lines) != 1+len(want) || lines[0] != "5 ranges, 0 keys, 0 without a leader; leaders: a1 1, b2 1, c3 1, d4 1, e5 1" {
		t.Fatalf("simple:\n%s", strings.Join(lines, "\n"))
	}
	for i, w := range want {
		f := strings.Split(lines[1+i], ", ")
		if len(f) != len(rangesHeader) || f[leaderCol] != w.leader || f[replicasCol] != w.replicas {
			t.Errorf("simple, range %d: %q, want leader %s, replicas %s", i+1, lines[1+i], w.leader, w.replicas)
		}
	}

	// table: the header names the column; a row per range.
	lines = run("-w", "table")
	cells := func(line string) []string {
		f := strings.Split(strings.Trim(line, "|"), "|")
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		return f
	}
	if len(lines) != 1+3+len(want)+1 || cells(lines[2])[replicasCol] != "REPLICAS" {
		t.Fatalf("table:\n%s", strings.Join(lines, "\n"))
	}
	for i, w := range want {
		f := cells(lines[4+i])
		if len(f) != len(rangesHeader) || f[leaderCol] != w.leader || f[replicasCol] != w.replicas {
			t.Errorf("table, range %d: %q, want leader %s, replicas %s", i+1, lines[4+i], w.leader, w.replicas)
		}
	}
}
