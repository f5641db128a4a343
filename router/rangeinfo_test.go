package router

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cairn-kv/cairn/shard"
)

// TestRangesJSON: /cairn/ranges lists the started ranges in key order with
// etcd-style field names: replicas as raft has them where the node knows
// them (else the descriptor's), the highest of the revisions known, the
// writes and keys of the replica here.
func TestRangesJSON(t *testing.T) {
	fr := newFakeRanges([]string{"f", "m"}, 3)
	r1, r2 := fr.local[1].r, fr.local[2].r
	r1.status, r1.closed, r1.proposed, r1.keys = shard.Status{Revision: 10, Closed: 8}, 9, 4, 3
	r2.status, r2.closed, r2.proposed, r2.keys = shard.Status{Revision: 10, Closed: 8}, 12, 0, 0
	r2.leader = 0
	s := New(Config{Shard: fr.cache.Local(1).Replica(), Ranges: fr.cache,
		RangeMembers: func() map[uint64][]uint64 { return map[uint64][]uint64{1: {1, 2, 3}} }})
	h := s.HTTPHandler(false)

	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/cairn/ranges", nil))
	want := `[{"id":1,"start":"","end":"f","generation":1,"replicas":[1,2,3],"leader":1,"revision":10,"closed":9,"writes":4,"keys":3,"watchers":0},` +
		`{"id":2,"start":"f","end":"m","generation":1,"replicas":[1],"leader":0,"revision":12,"closed":12,"writes":0,"keys":0,"watchers":0}]` + "\n"
	if got := w.Body.String(); got != want || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /cairn/ranges (%s):\n%s\nwant:\n%s", w.Header().Get("Content-Type"), got, want)
	}

	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/cairn/ranges.html", nil))
	body, _ := io.ReadAll(w.Body)
	for _, part := range []string{"2 ranges", `title="range 2 [&#34;f&#34;, &#34;m&#34;)"`, `<td style="color:#999">none</td>`, `style="flex:100;background:#1f77b4"`} {
		if !strings.Contains(string(body), part) {
			t.Errorf("range map page lacks %s:\n%s", part, body)
		}
	}
}

// TestRangesSingleGroup: without ranges (single-group mode) the range
// map is null.
func TestRangesSingleGroup(t *testing.T) {
	s := New(Config{Shard: &fakeReplica{leader: 1}})
	if got := s.Ranges(); got != nil {
		t.Fatalf("ranges %+v", got)
	}
	w := httptest.NewRecorder()
	s.HTTPHandler(false).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/cairn/ranges", nil))
	if got := w.Body.String(); got != "null\n" {
		t.Fatalf("GET /cairn/ranges: %q", got)
	}
}
