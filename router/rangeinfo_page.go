package router

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// RangeSummary sums up a whole range map, whatever page of it is shown.
type RangeSummary struct {
	Ranges     int   `json:"ranges"`
	Keys       int64 `json:"keys"`
	Leaderless int   `json:"leaderless"` // ranges without a known leader
	// Leaders counts the ranges each member leads, most first (ties in
	// member order).
	Leaders []MemberLeads `json:"leaders"`
}

// MemberLeads is how many ranges a member leads.
type MemberLeads struct {
	Member uint64 `json:"member"`
	Ranges int    `json:"ranges"`
}

// SummarizeRanges sums up infos.
func SummarizeRanges(infos []RangeInfo) RangeSummary {
	s := RangeSummary{Ranges: len(infos), Leaders: []MemberLeads{}}
	leads := map[uint64]int{}
	for _, r := range infos {
		s.Keys += r.Keys
		if r.Leader == 0 {
			s.Leaderless++
		} else {
			leads[r.Leader]++
		}
	}
	for m, n := range leads {
		s.Leaders = append(s.Leaders, MemberLeads{Member: m, Ranges: n})
	}
	slices.SortFunc(s.Leaders, func(a, b MemberLeads) int {
		return cmp.Or(cmp.Compare(b.Ranges, a.Ranges), cmp.Compare(a.Member, b.Member))
	})
	return s
}

// String is the summary as one line, naming at most the ten members
// leading the most ranges.
func (s RangeSummary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d ranges, %d keys, %d without a leader; leaders:", s.Ranges, s.Keys, s.Leaderless)
	if len(s.Leaders) == 0 {
		b.WriteString(" none")
	}
	for i, l := range s.Leaders {
		if i == 10 {
			b.WriteString(" …")
			break
		}
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %x %d", l.Member, l.Ranges)
	}
	return b.String()
}

// RangeSorts are the orders a page of the range map can be sorted in:
// by range id or start key ascending, by keys, writes or revision
// descending (the busiest first). Ties keep key order.
var RangeSorts = []string{"id", "start", "keys", "writes", "revision"}

// RangeQuery selects a page of the range map.
type RangeQuery struct {
	Start string // from the range holding Start, in key order ("": all)
	Sort  string // one of RangeSorts ("": start)
	Limit int    // at most this many ranges (0: all)
}

// RangePage is /cairn/ranges' answer to a query for a page: the summary
// of the whole map, the page, and how many selected ranges the limit left
// out.
type RangePage struct {
	Summary RangeSummary `json:"summary"`
	Ranges  []RangeInfo  `json:"ranges"`
	More    int          `json:"more"`
}

// ParseRangeQuery reads the query parameters limit, start and sort; paged
// says whether any was given (without them /cairn/ranges answers the whole
// map as it always did).
func ParseRangeQuery(v url.Values) (q RangeQuery, paged bool, err error) {
	paged = v.Has("limit") || v.Has("start") || v.Has("sort")
	q.Start, q.Sort = v.Get("start"), v.Get("sort")
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, paged, fmt.Errorf("bad limit %q: want a number of ranges, 0 for all", s)
		}
		q.Limit = n
	}
	if q.Sort != "" && !slices.Contains(RangeSorts, q.Sort) {
		return q, paged, fmt.Errorf("bad sort %q: want one of %s", q.Sort, strings.Join(RangeSorts, ", "))
	}
	return q, paged, nil
}

// PageRanges selects q's page of infos (the range map in key order).
func PageRanges(infos []RangeInfo, q RangeQuery) RangePage {
	p := RangePage{Summary: SummarizeRanges(infos)}
	i := 0
	if q.Start != "" {
		// The first range holding Start or after it.
		i, _ = slices.BinarySearchFunc(infos, q.Start, func(r RangeInfo, k string) int {
			if r.End != "" && r.End <= k {
				return -1
			}
			return 1
		})
	}
	sel := slices.Clone(infos[i:])
	desc := func(f func(RangeInfo) int64) func(a, b RangeInfo) int {
		return func(a, b RangeInfo) int { return cmp.Compare(f(b), f(a)) }
	}
	switch q.Sort {
	case "id":
		slices.SortStableFunc(sel, func(a, b RangeInfo) int { return cmp.Compare(a.ID, b.ID) })
	case "keys":
		slices.SortStableFunc(sel, desc(func(r RangeInfo) int64 { return r.Keys }))
	case "writes":
		slices.SortStableFunc(sel, func(a, b RangeInfo) int { return cmp.Compare(b.Writes, a.Writes) })
	case "revision":
		slices.SortStableFunc(sel, desc(func(r RangeInfo) int64 { return r.Revision }))
	}
	if q.Limit > 0 && len(sel) > q.Limit {
		p.More = len(sel) - q.Limit
		sel = sel[:q.Limit]
	}
	p.Ranges = sel
	if p.Ranges == nil {
		p.Ranges = []RangeInfo{}
	}
	return p
}

// ServeRanges answers a GET of /cairn/ranges with the range map infos
// returns (in key order): all of it as an array without query parameters,
// else the RangePage they ask for (a bad one is answered 400 before infos
// is called).
func ServeRanges(w http.ResponseWriter, r *http.Request, infos func() []RangeInfo) {
	q, paged, err := ParseRangeQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if !paged {
		_ = json.NewEncoder(w).Encode(infos())
		return
	}
	_ = json.NewEncoder(w).Encode(PageRanges(infos(), q))
}
