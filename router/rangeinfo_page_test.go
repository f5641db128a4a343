package router

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// TestRangesManyPaged: with 10,000 ranges, /cairn/ranges answers a page
// (limit, start, sort) with the summary of the whole map and how many
// ranges are left out; without parameters it answers every range as an
// array as before; the page draws the first 1,000 and says how many it
// left out; bad parameters are answered 400 with what is wrong.
func TestRangesManyPaged(t *testing.T) {
	const n = 10000
	splits := make([]string, n-1)
	for i := range splits {
		splits[i] = fmt.Sprintf("k%05d", i+1)
	}
	// As newFakeRanges, but the cache filled at once (a Put a range
	// rebuilds the cache's view: 10,000 of them take minutes).
	cache, f, log := NewRangeCache(), NewForwarder(1, nil), newOpLog()
	var entries []RangeEntry
	bounds := append(append([]string{""}, splits...), "")
	for i := 0; i+1 < len(bounds); i++ {
		id := uint64(i + 1)
		d := &placementpb.RangeDescriptor{Id: id, Start: []byte(bounds[i]), End: []byte(bounds[i+1]), Generation: 1, Replicas: []uint64{1}}
		r := &rangeReplica{fakeReplica: fakeReplica{leader: shard.ReplicaID(id % 4)}, id: id, log: log} // leader 0: none
		r.keys, r.proposed = int64(id%7), id
		l := &rangeLocal{d: d, r: r, ready: make(chan struct{})}
		close(l.ready)
		entries = append(entries, RangeEntry{Local: l, Shard: f.Range(l)})
	}
	cache.Put(entries...)
	s := New(Config{Shard: cache.Local(1).Replica(), Ranges: cache})
	h := s.HTTPHandler(false)
	get := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w
	}

	var all []RangeInfo
	if w := get("/cairn/ranges"); w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &all) != nil || len(all) != n {
		t.Fatalf("GET /cairn/ranges: %d, %d ranges", w.Code, len(all))
	}
	var wantKeys int64
	for _, r := range all {
		wantKeys += r.Keys
	}
	wantSummary := RangeSummary{Ranges: n, Keys: wantKeys, Leaderless: n / 4,
		Leaders: []MemberLeads{{Member: 1, Ranges: n / 4}, {Member: 2, Ranges: n / 4}, {Member: 3, Ranges: n / 4}}}

	page := func(query string) RangePage {
		t.Helper()
		w := get("/cairn/ranges?" + query)
		var p RangePage
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &p) != nil {
			t.Fatalf("GET /cairn/ranges?%s: %d %s", query, w.Code, w.Body)
		}
		if fmt.Sprint(p.Summary) != fmt.Sprint(wantSummary) {
			t.Errorf("?%s: summary %+v, want %+v", query, p.Summary, wantSummary)
		}
		return p
	}
	// From the range holding k05000½: range 5001 ["k05000", "k05001").
	p := page("limit=100&start=" + url.QueryEscape("k05000x"))
	if len(p.Ranges) != 100 || p.Ranges[0].ID != 5001 || p.Ranges[99].ID != 5100 || p.More != n-5100 {
		t.Errorf("limit=100&start=k05000x: %d ranges from %d, %d more", len(p.Ranges), p.Ranges[0].ID, p.More)
	}
	// A start key that is a range's start: that range first.
	if p := page("limit=1&start=k00010"); p.Ranges[0].ID != 11 || p.More != n-11 {
		t.Errorf("start=k00010: range %d, %d more", p.Ranges[0].ID, p.More)
	}
	// Sorted by writes, the most first; limit 0 is all.
	p = page("sort=writes&limit=0")
	if len(p.Ranges) != n || p.Ranges[0].ID != n || p.Ranges[n-1].ID != 1 || p.More != 0 {
		t.Errorf("sort=writes: %d ranges, first %d, last %d, %d more", len(p.Ranges), p.Ranges[0].ID, p.Ranges[n-1].ID, p.More)
	}
	// Sorted by keys: ties in key order.
	p = page("sort=keys&limit=3")
	if got := fmt.Sprint(p.Ranges[0].ID, p.Ranges[1].ID, p.Ranges[2].ID); got != "6 13 20" {
		t.Errorf("sort=keys: ranges %s, want 6 13 20", got)
	}
	// Past the last range's start: the last range alone.
	if p := page("start=z"); len(p.Ranges) != 1 || p.Ranges[0].ID != n {
		t.Errorf("start=z: %+v", p.Ranges)
	}

	for query, want := range map[string]string{
		"limit=-1":   `bad limit "-1"`,
		"limit=ten":  `bad limit "ten"`,
		"sort=bogus": `bad sort "bogus": want one of id, start, keys, writes, revision`,
	} {
		for _, path := range []string{"/cairn/ranges?", "/cairn/ranges.html?"} {
			if w := get(path + query); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), want) {
				t.Errorf("GET %s%s: %d %q, want 400 %q", path, query, w.Code, w.Body, want)
			}
		}
	}

	w := get("/cairn/ranges.html")
	body, _ := io.ReadAll(w.Body)
	if got := strings.Count(string(body), `<div class="r"`); got != rangeMapDrawn {
		t.Errorf("range map page draws %d ranges, want %d", got, rangeMapDrawn)
	}
	for _, part := range []string{wantSummary.String(), "… 9000 more ranges not drawn", "1000 ranges drawn"} {
		if !strings.Contains(string(body), part) {
			t.Errorf("range map page lacks %q", part)
		}
	}
	body, _ = io.ReadAll(get("/cairn/ranges.html?limit=10&start=k09995").Body)
	if got := strings.Count(string(body), `<div class="r"`); got != 5 || strings.Contains(string(body), "more ranges not drawn") {
		t.Errorf("range map page from k09995 draws %d ranges:\n%s", got, body)
	}
}

// TestRangeSummaryString: the summary line names at most ten members,
// the most leading first, then "…".
func TestRangeSummaryString(t *testing.T) {
	var infos []RangeInfo
	for m := uint64(1); m <= 12; m++ {
		for range m {
			infos = append(infos, RangeInfo{Leader: m, Keys: 2})
		}
	}
	infos = append(infos, RangeInfo{Keys: 1})
	want := "79 ranges, 157 keys, 1 without a leader; leaders: c 12, b 11, a 10, 9 9, 8 8, 7 7, 6 6, 5 5, 4 4, 3 3 …"
	if got := SummarizeRanges(infos).String(); got != want {
		t.Errorf("summary\n%s\nwant\n%s", got, want)
	}
	if got, want := SummarizeRanges(nil).String(), "0 ranges, 0 keys, 0 without a leader; leaders: none"; got != want {
		t.Errorf("empty summary %q, want %q", got, want)
	}
}

// TestRangeMapPageReplicas: the range map page names each range's
// replicas as member/replica id in the map's order, the leader's in bold
// and its colour, learners marked; a range whose replicas are named by
// their members alone shows the member ids; a range without a known
// leader highlights none. Here five members (a..e) hold ranges of three
// replicas round robin, as a new cluster places them.
func TestRangeMapPageReplicas(t *testing.T) {
	members := []uint64{0xa, 0xb, 0xc, 0xd, 0xe}
	var infos []RangeInfo
	next := uint64(100) // replica ids, allocated as the map does
	for i := range 5 {
		r := RangeInfo{ID: uint64(i + 1), Start: string(rune('a' + i)), End: string(rune('b' + i)), Generation: 1, Keys: 1}
		for j := range 3 {
			m := members[(i+j)%len(members)]
			r.Replicas = append(r.Replicas, m)
			r.ReplicaSet = append(r.ReplicaSet, ReplicaInfo{Member: m, ID: next})
			next++
		}
		r.Leader = r.ReplicaSet[i%3].Member
		infos = append(infos, r)
	}
	infos[0].Start = ""
	// Range 3 moving: a learner on member a; range 4 without a leader.
	infos[2].ReplicaSet = append(infos[2].ReplicaSet, ReplicaInfo{Member: 0xa, ID: next, Learner: true})
	infos[3].Leader = 0
	// A range from before replica ids: its replicas are its members.
	infos = append(infos, RangeInfo{ID: 6, Start: "f", Generation: 3, Replicas: []uint64{0xb, 0xd, 0xe}, Leader: 0xd})

	var b strings.Builder
	if err := drawRangeMap(&b, PageRanges(infos, RangeQuery{})); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	// The leaders' colours, in the order the page hands them out.
	colour := map[uint64]string{0xa: "#1f77b4", 0xc: "#d62728", 0xe: "#2ca02c", 0xd: "#9467bd"}
	lead := func(name string, m uint64) string {
		return `<span class="leader" style="color:` + colour[m] + `">` + name + `</span>`
	}
	want := []string{
		lead("a/100", 0xa) + ", b/101, c/102",
		"b/103, " + lead("c/104", 0xc) + ", d/105",
		"c/106, d/107, " + lead("e/108", 0xe) + `, a/115 <span class="learner">(learner)</span>`,
		"d/109, e/110, a/111",
		"e/112, " + lead("a/113", 0xa) + ", b/114",
		"b, " + lead("d", 0xd) + ", e",
	}
	if !strings.Contains(page, "<th>replicas (member/id)</th>") {
		t.Errorf("the page has no replicas column:\n%s", page)
	}
	var got []string
	for rest := page; ; {
		_, after, ok := strings.Cut(rest, `<td class="replicas">`)
		if !ok {
			break
		}
		cell, after, _ := strings.Cut(after, "</td>")
		got = append(got, cell)
		rest = after
	}
	if len(got) != len(want) {
		t.Fatalf("%d replicas cells, want %d:\n%s", len(got), len(want), page)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("range %d's replicas:\n%s\nwant\n%s", infos[i].ID, got[i], want[i])
		}
	}
	// The leader column still names the leader, and a leaderless range none.
	for _, row := range []string{`<td style="color:#9467bd">d</td>`, `<td style="color:#999">none</td>`} {
		if !strings.Contains(page, row) {
			t.Errorf("the page lacks %q", row)
		}
	}
}
