package watch

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// mergeRange merges range i+1 into range i, as a member does when the
// left range's log applies a merge (docs/plan-merge.md M5, M7): the left
// store absorbs the right one (same DB: the right range split off it
// earlier), routing forgets the right range, mg moves its watchers to the
// left range's hub, the left hub learns the raised closed revision (the
// right one's closed carries over), and the right hub closes.
func (rs *ranges) mergeRange(mg *Merger, i int) {
	b := rs.stores[i].NewBatch()
	if _, err := b.Absorb(rs.ids[i+1]); err != nil {
		rs.t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		rs.t.Fatal(err)
	}
	b.Close()
	right := rs.hubs[i+1]
	rs.splits = slices.Delete(rs.splits, i, i+1)
	rs.stores = slices.Delete(rs.stores, i+1, i+2)
	rs.hubs = slices.Delete(rs.hubs, i+1, i+2)
	rs.dbs = slices.Delete(rs.dbs, i+1, i+2)
	rs.ids = slices.Delete(rs.ids, i+1, i+2)
	mg.Merge(right, Part{Hub: rs.hubs[i], Kick: func(rev mvcc.Revision) { rs.kicks[i] = rev }})
	rs.hubs[i].Advance(right.Rev())
	right.Close()
}

// TestMergedMerge: ranges split and merge back while watches run — live
// ones, lagging ones (a small queue), coalesced ones, ones reading history,
// on client streams (direct until the first split) and on streams made by
// NewMergedStream (a feed's, pinned: a merge moves them too) — with
// ranges closing at random, so the merged ranges' marks differ: every
// watch gets exactly the model's events, in order, with no gap or repeat
// across the merges, none canceled.
func TestMergedMerge(t *testing.T) {
	for seed := uint64(1); seed <= 12; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 23))
			rs := newRanges(t)
			mg := NewMerger()
			type stream struct {
				m        *Merged
				specs    map[int64]*watchSpec
				got      map[int64][]*mvccpb.Event
				progress []int64
			}
			var streams []*stream
			open := func(pinned bool, limit int) {
				s := &stream{specs: map[int64]*watchSpec{}, got: map[int64][]*mvccpb.Event{}}
				if pinned {
					s.m = mg.NewMergedStream(limit, rs.split)
				} else {
					s.m = mg.NewStream(limit, rs.split)
				}
				t.Cleanup(s.m.Close)
				streams = append(streams, s)
			}
			take := func(s *stream) func([]*pb.WatchResponse) {
				return func(resps []*pb.WatchResponse) {
					for _, r := range resps {
						switch {
						case r.Canceled:
							t.Fatalf("watch %d canceled: %v", r.WatchId, r)
						case r.Created:
						case r.WatchId == -1:
							s.progress = append(s.progress, r.Header.Revision)
						default:
							s.got[r.WatchId] = append(s.got[r.WatchId], r.Events...)
						}
					}
				}
			}
			// Two of each kind, so identical watches from now coalesce.
			open(false, 3)
			open(false, 1000)
			open(true, 3)
			open(true, 1000)
			if streams[0].m.direct == nil {
				t.Fatal("a stream over one range is not direct")
			}
			key := func() string { return string(rune('a' + rnd.IntN(26))) }
			merges := 0
			for step := 0; step < 400; step++ {
				switch x := rnd.IntN(100); {
				case x < 40:
					rs.put(key(), fmt.Sprint(step))
				case x < 50:
					rs.close(rnd.IntN(len(rs.hubs)))
				case x < 58:
					k := key()
					req := &pb.WatchCreateRequest{Key: []byte(k), RangeEnd: []byte{0}, PrevKv: rnd.IntN(2) == 0}
					if rnd.IntN(2) == 0 {
						req.RangeEnd = []byte(string(rune(k[0] + byte(1+rnd.IntN(15)))))
					}
					from := mvcc.Revision(0)
					if rnd.IntN(3) == 0 {
						from = 1 + mvcc.Revision(rnd.IntN(int(rs.rev)))
						req.StartRevision = int64(from)
					}
					// From now: on both streams of a kind (a fan); from
					// the past: on one.
					i := 2 * rnd.IntN(2)
					pair := streams[i : i+2]
					if from != 0 {
						pair = pair[rnd.IntN(2):][:1]
					}
					for _, s := range pair {
						if len(s.specs) >= 6 {
							continue
						}
						r := s.m.Create(req)
						f := from
						if f == 0 {
							f = mvcc.Revision(r.Header.Revision) + 1
						}
						s.specs[r.WatchId] = &watchSpec{req, f}
					}
				case x < 66 && len(rs.hubs) < 5:
					if k := key(); k != "a" && !slices.Contains(rs.splits, k) {
						rs.splitRange(mg, rs.of(k), k)
					}
				case x < 74 && len(rs.hubs) > 1:
					rs.mergeRange(mg, rnd.IntN(len(rs.hubs)-1))
					merges++
				case x < 86:
					rs.pump()
				default:
					s := streams[rnd.IntN(len(streams))]
					take(s)(poll(t, s.m))
				}
			}
			if merges == 0 {
				t.Fatal("no merge")
			}
			for _, s := range streams {
				settleModel(t, rs, s.m, take(s), &s.progress, s.specs, s.got)
			}
		})
	}
}

// runRangesScript runs a script over several ranges of one DB (the ranges
// of TestMergedMerge), whose streams are merged ones. Commands:
//
//	stream name=S [limit=N] [pinned]   NewStream (pinned: NewMergedStream)
//	create stream=S key=K [end=E|from] [start=R] [prev-kv]
//	put K=V                            one revision in K's range
//	close [range=I]                    range I (all: none named) closes
//	                                   the oracle's revision
//	split key=K                        the range holding K splits at K
//	merge key=K                        the range starting at K merges into
//	                                   its left neighbour (mergeRange)
//	pump                               catch every hub up
//	recv stream=S                      print and take what is ready
//	ranges                             every range: span and hub revision
//	parts stream=S                     every watch's watchers: range, keys
//	                                   and mark (a coalesced watch: fan)
func runRangesScript(t *testing.T, path string) {
	rs := newRanges(t)
	mg := NewMerger()
	streams := map[string]*Merged{}
	stream := func(td *datadriven.TestData) *Merged {
		var name string
		td.ScanArgs(t, "stream", &name)
		m := streams[name]
		if m == nil {
			t.Fatalf("%s: no stream %q", td.Pos, name)
		}
		return m
	}
	datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
		switch td.Cmd {
		case "stream":
			var name string
			limit := 100
			td.ScanArgs(t, "name", &name)
			td.MaybeScanArgs(t, "limit", &limit)
			if td.HasArg("pinned") {
				streams[name] = mg.NewMergedStream(limit, rs.split)
			} else {
				streams[name] = mg.NewStream(limit, rs.split)
			}
			t.Cleanup(streams[name].Close)
			return ""
		case "create":
			var key string
			td.ScanArgs(t, "key", &key)
			req := &pb.WatchCreateRequest{Key: []byte(key)}
			for _, a := range td.CmdArgs {
				switch a.Key {
				case "end":
					req.RangeEnd = []byte(a.Vals[0])
				case "from":
					req.RangeEnd = []byte{0}
				case "start":
					req.StartRevision, _ = strconv.ParseInt(a.Vals[0], 10, 64)
				case "prev-kv":
					req.PrevKv = true
				}
			}
			stream(td).Create(req)
			return ""
		case "put":
			var out []string
			for _, a := range td.CmdArgs {
				out = append(out, fmt.Sprintf("rev=%d", rs.put(a.Key, a.Vals[0])))
			}
			return strings.Join(out, " ")
		case "close":
			if td.HasArg("range") {
				var i int
				td.ScanArgs(t, "range", &i)
				rs.close(i)
			} else {
				rs.closeAll()
			}
			return ""
		case "split", "merge":
			var key string
			td.ScanArgs(t, "key", &key)
			if td.Cmd == "split" {
				rs.splitRange(mg, rs.of(key), key)
			} else {
				i := slices.Index(rs.splits, key)
				if i < 0 {
					t.Fatalf("%s: no range starts at %q", td.Pos, key)
				}
				rs.mergeRange(mg, i)
			}
			return rangesText(rs)
		case "pump":
			rs.pump()
			return ""
		case "recv":
			return formatResponses(poll(t, stream(td)))
		case "ranges":
			return rangesText(rs)
		case "parts":
			return partsText(rs, stream(td))
		}
		t.Fatalf("%s: unknown command %q", td.Pos, td.Cmd)
		return ""
	})
}

func rangesText(rs *ranges) string {
	var b strings.Builder
	for i, h := range rs.hubs {
		lo, hi := "", "∞"
		if i > 0 {
			lo = rs.splits[i-1]
		}
		if i < len(rs.splits) {
			hi = rs.splits[i]
		}
		fmt.Fprintf(&b, "range=%d [%s, %s) store=%d hub rev=%d\n", i, lo, hi, rs.ids[i], h.Rev())
	}
	return b.String()
}

// partsText lists a stream's watches and their watchers, by watch id.
func partsText(rs *ranges, m *Merged) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct != nil {
		return "direct"
	}
	ids := make([]ID, 0, len(m.watchers))
	for id := range m.watchers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var b strings.Builder
	for _, id := range ids {
		w := m.watchers[id]
		fmt.Fprintf(&b, "id=%d released=%d\n", id, w.released)
		partsOf(&b, rs, w, "  ")
		if f := w.fan; f != nil {
			// Lock order: a subscriber's Merged.mu, then the fan's.
			f.f.m.mu.Lock()
			fmt.Fprintf(&b, "  fan mark=%d\n", w.fanMark)
			partsOf(&b, rs, f.f.m.watchers[0], "    ")
			f.f.m.mu.Unlock()
		}
	}
	return b.String()
}

// partsOf lists w's watchers, by key.
func partsOf(b *strings.Builder, rs *ranges, w *merged, indent string) {
	ps := slices.Clone(w.parts)
	sort.Slice(ps, func(i, j int) bool { return string(ps[i].key) < string(ps[j].key) })
	for _, p := range ps {
		hub := slices.Index(rs.hubs, p.sub.s.h)
		end := string(p.end)
		if len(p.end) == 1 && p.end[0] == 0 {
			end = "∞"
		}
		fmt.Fprintf(b, "%srange=%d [%s, %s) mark=%d held=%d\n", indent, hub, p.key, end, p.mark, len(p.evs))
	}
}
