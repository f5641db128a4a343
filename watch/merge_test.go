package watch

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
)

// ranges is a sharded key space in miniature: a real store and hub per
// range, revisions stamped from one counter (the oracle), each range's
// hub told of its closed revision as the node's closer tells it.
type ranges struct {
	t      *testing.T
	splits []string // range i is [splits[i-1], splits[i])
	stores []*mvcc.Store
	dbs    []*pebble.DB // by range, as stores
	hubs   []*Hub
	ids    []uint64 // the stores' ids, by range
	nextID uint64   // the id of the next range a split makes
	rev    mvcc.Revision
	kicks  []mvcc.Revision // the last kick each range got
	// log is every write's event, in revision order (the model).
	log []*mvccpb.Event
}

func newRanges(t *testing.T, splits ...string) *ranges {
	rs := &ranges{t: t, splits: splits, rev: 1, nextID: 100} // a new store is at revision 1
	for i := 0; i <= len(splits); i++ {
		db, err := pebble.Open("", mvcc.PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quiet{}}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		sp := mvcc.Span{Start: []byte{}}
		if i > 0 {
			sp.Start = []byte(splits[i-1])
		}
		if i < len(splits) {
			sp.End = []byte(splits[i])
		}
		s, err := mvcc.Open(db, mvcc.Options{ID: uint64(i + 1), Span: sp})
		if err != nil {
			t.Fatal(err)
		}
		rs.stores = append(rs.stores, s)
		rs.dbs = append(rs.dbs, db)
		rs.hubs = append(rs.hubs, NewHub(1))
		rs.ids = append(rs.ids, uint64(i+1))
		rs.kicks = append(rs.kicks, 0)
	}
	return rs
}

func (rs *ranges) of(key string) int {
	i := 0
	for i < len(rs.splits) && key >= rs.splits[i] {
		i++
	}
	return i
}

// split is the Splitter over the ranges, cutting as the router does.
func (rs *ranges) split(key, end []byte) []Part {
	var out []Part
	for i, h := range rs.hubs {
		lo, hi := []byte{}, []byte(nil)
		if i > 0 {
			lo = []byte(rs.splits[i-1])
		}
		if i < len(rs.splits) {
			hi = []byte(rs.splits[i])
		}
		k, e, ok := clip(key, end, lo, hi)
		if ok {
			out = append(out, Part{Hub: h, Key: k, RangeEnd: e, Kick: func(rev mvcc.Revision) { rs.kicks[i] = rev }})
		}
	}
	return out
}

// clip cuts etcd's [key, end) to [lo, hi) (hi nil: no end).
func clip(key, end, lo, hi []byte) ([]byte, []byte, bool) {
	in := func(k []byte) bool { return bytes.Compare(k, lo) >= 0 && (hi == nil || bytes.Compare(k, hi) < 0) }
	if len(end) == 0 {
		return key, nil, in(key)
	}
	k := key
	if bytes.Compare(lo, k) > 0 {
		k = lo
	}
	toEnd := len(end) == 1 && end[0] == 0
	e := end
	switch {
	case hi == nil:
	case toEnd || bytes.Compare(hi, end) < 0:
		e = hi
	}
	if !(len(e) == 1 && e[0] == 0) && bytes.Compare(k, e) >= 0 {
		return nil, nil, false
	}
	return k, e, true
}

// put writes key in its range at the next oracle revision and notifies
// its hub, as the shard's apply path does.
func (rs *ranges) put(key, val string) mvcc.Revision {
	i := rs.of(key)
	rs.rev++
	b := rs.stores[i].NewBatch()
	defer b.Close()
	if _, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(val)}, rs.rev); err != nil {
		rs.t.Fatal(err)
	}
	evs := b.TakeEvents()
	if err := b.Commit(); err != nil {
		rs.t.Fatal(err)
	}
	rs.hubs[i].Notify(rs.rev, evs)
	rs.log = append(rs.log, evs...)
	return rs.rev
}

// del deletes key (which exists) at the next oracle revision.
func (rs *ranges) del(key string) {
	i := rs.of(key)
	rs.rev++
	b := rs.stores[i].NewBatch()
	defer b.Close()
	if _, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(key)}, rs.rev); err != nil {
		rs.t.Fatal(err)
	}
	evs := b.TakeEvents()
	if len(evs) != 1 {
		rs.t.Fatalf("delete %q: %d events", key, len(evs))
	}
	if err := b.Commit(); err != nil {
		rs.t.Fatal(err)
	}
	rs.hubs[i].Notify(rs.rev, evs)
	rs.log = append(rs.log, evs...)
}

// close tells range i's hub that nothing at or below the oracle's current
// revision is still to come there.
func (rs *ranges) close(i int) { rs.hubs[i].Advance(rs.rev) }

func (rs *ranges) closeAll() {
	for i := range rs.hubs {
		rs.close(i)
	}
}

// pump catches every hub's lagging watchers up, as the node's pumps do.
func (rs *ranges) pump() {
	for i, h := range rs.hubs {
		for {
			more, err := h.Catchup(rs.stores[i], 3)
			if err != nil {
				rs.t.Fatal(err)
			}
			if !more {
				break
			}
		}
	}
}

// poll runs one round of Next without waiting: what is ready now.
func poll(t *testing.T, m *Merged) []*pb.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rs, err := m.Next(ctx)
	if err != nil && err != context.Canceled {
		t.Fatal(err)
	}
	return rs
}

// next waits for responses.
func next(t *testing.T, m *Merged) []*pb.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := m.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func revsOf(rs []*pb.WatchResponse) []int64 {
	var out []int64
	for _, r := range rs {
		for _, e := range r.Events {
			out = append(out, e.Kv.ModRevision)
		}
	}
	return out
}

// TestMergedReleasesUpToLowestMark: events of a watch over two ranges are
// released in revision order, only up to the revision both ranges have
// passed; a range that lags is kicked, and its closed revision releases
// the rest. Header revisions say how far the watch has been sent.
func TestMergedReleasesUpToLowestMark(t *testing.T) {
	rs := newRanges(t, "m")
	m := NewMerger().NewStream(100, rs.split)
	defer m.Close()
	c := m.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
	if !c.Created || c.Canceled || c.WatchId != 0 {
		t.Fatalf("create: %v", c)
	}
	if got := next(t, m); len(got) != 1 || !got[0].Created {
		t.Fatalf("first responses: %v", got)
	}
	rs.put("b", "1") // rev 2, range 0
	rs.put("x", "2") // rev 3, range 1
	rs.put("c", "3") // rev 4, range 0
	got := poll(t, m)
	if revs := revsOf(got); fmt.Sprint(revs) != "[2 3]" || got[0].Header.Revision != 3 {
		t.Fatalf("released %v (header %v), want revisions [2 3] at 3", revs, got)
	}
	if rs.kicks[1] != 4 || rs.kicks[0] != 0 {
		t.Fatalf("kicks %v: the lagging range 1 should be asked to close 4", rs.kicks)
	}
	rs.close(1)
	got = next(t, m)
	if revs := revsOf(got); fmt.Sprint(revs) != "[4]" || got[0].Header.Revision != 4 {
		t.Fatalf("after range 1 closed 4: %v", got)
	}
	if got := poll(t, m); len(got) != 0 {
		t.Fatalf("nothing more expected, got %v", got)
	}
}

// TestMergedStartsAboveEveryRange: a watch from "now" starts above the
// highest revision of its ranges, so writes before it are not sent even
// from a range whose hub is behind, and every later write is.
func TestMergedStartsAboveEveryRange(t *testing.T) {
	rs := newRanges(t, "m")
	rs.put("b", "1")
	rs.put("x", "2")
	rs.put("c", "3") // range 1's hub is at 3, range 0's at 4
	m := NewMerger().NewStream(100, rs.split)
	defer m.Close()
	c := m.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
	if c.Header.Revision != 4 {
		t.Fatalf("created at %d, want 4", c.Header.Revision)
	}
	rs.put("y", "4")
	rs.close(0)
	got := next(t, m)
	for len(revsOf(got)) == 0 {
		got = next(t, m)
	}
	if revs := revsOf(got); fmt.Sprint(revs) != "[5]" {
		t.Fatalf("got %v, want [5]", revs)
	}
}

// TestMergedHistory: a watch from a past revision over three ranges gets
// the history from the stores, merged in revision order, then live events.
func TestMergedHistory(t *testing.T) {
	rs := newRanges(t, "g", "p")
	keys := []string{"a", "h", "q", "b", "z", "i", "c"}
	for i, k := range keys {
		rs.put(k, fmt.Sprint(i))
	}
	rs.closeAll()
	m := NewMerger().NewStream(100, rs.split)
	defer m.Close()
	m.Create(&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("\x00"), StartRevision: 3, PrevKv: true})
	var revs []int64
	for deadline := time.Now().Add(10 * time.Second); len(revs) < 6 && time.Now().Before(deadline); {
		rs.pump()
		revs = append(revs, revsOf(poll(t, m))...)
	}
	if fmt.Sprint(revs) != "[3 4 5 6 7 8]" {
		t.Fatalf("history %v, want [3 4 5 6 7 8]", revs)
	}
	rs.put("j", "live")
	rs.closeAll()
	if got := revsOf(next(t, m)); fmt.Sprint(got) != "[9]" {
		t.Fatalf("live %v", got)
	}
}

// TestMergedProgress: a progress request is answered at the highest
// revision of the stream's ranges, only once every watch has been sent
// everything up to it, after those events.
func TestMergedProgress(t *testing.T) {
	rs := newRanges(t, "m")
	m := NewMerger().NewStream(100, rs.split)
	defer m.Close()
	m.RequestProgress() // no watch: no answer, as in etcd
	m.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
	next(t, m)
	rs.put("b", "1")
	rs.put("c", "2")
	m.RequestProgress()
	if got := poll(t, m); len(got) != 0 {
		t.Fatalf("answered before range 1 passed 2: %v", got)
	}
	rs.close(1)
	got := next(t, m)
	if len(got) != 2 || fmt.Sprint(revsOf(got[:1])) != "[2 3]" || got[1].WatchId != -1 || got[1].Header.Revision != 3 {
		t.Fatalf("got %v, want events 2 and 3, then progress at 3", got)
	}
}

// TestMergedCompacted: a watch from a revision one of its ranges has
// compacted away is cancelled with the compaction revision, and sends
// nothing else.
func TestMergedCompacted(t *testing.T) {
	rs := newRanges(t, "m")
	rs.put("b", "1")
	rs.put("x", "2")
	rs.put("x", "3")
	rs.closeAll()
	b := rs.stores[1].NewBatch()
	if _, err := b.Compact(4); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	m := NewMerger().NewStream(100, rs.split)
	defer m.Close()
	m.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z"), StartRevision: 1})
	var got []*pb.WatchResponse
	for deadline := time.Now().Add(10 * time.Second); len(got) < 2 && time.Now().Before(deadline); {
		rs.pump()
		got = append(got, poll(t, m)...)
	}
	if len(got) != 2 || !got[1].Canceled || got[1].CompactRevision != 4 || len(revsOf(got)) != 0 {
		t.Fatalf("got %v, want created then canceled at compaction 4", got)
	}
}

// TestMergedRefusalsAndCancel: etcd's refusals, ids and cancel.
func TestMergedRefusalsAndCancel(t *testing.T) {
	rs := newRanges(t, "m")
	m := NewMerger().NewStream(100, rs.split)
	defer m.Close()
	for _, tc := range []struct {
		req    *pb.WatchCreateRequest
		reason string
	}{
		{&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")}, "mvcc: watcher range is empty"},
		{&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: -1}, "etcdserver: mvcc: required revision has been compacted"},
		{&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z"), WatchId: 7}, ""},
		{&pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7}, "mvcc: duplicate watch ID provided on the WatchStream"},
	} {
		r := m.Create(tc.req)
		if r.CancelReason != tc.reason || r.Canceled != (tc.reason != "") || !r.Created {
			t.Fatalf("%v: %v", tc.req, r)
		}
	}
	if r := m.Create(&pb.WatchCreateRequest{Key: []byte("a")}); r.WatchId != 0 {
		t.Fatalf("first automatic id %d, want 0", r.WatchId)
	}
	if len(next(t, m)) != 5 {
		t.Fatal("want five create answers")
	}
	if !m.Cancel(7) || m.Cancel(7) {
		t.Fatal("cancel 7 once")
	}
	rs.put("x", "after cancel")
	rs.closeAll()
	got := next(t, m)
	if len(got) != 1 || !got[0].Canceled || got[0].WatchId != 7 {
		t.Fatalf("got %v, want the canceled answer only", got)
	}
	if got := poll(t, m); len(got) != 0 {
		t.Fatalf("events after cancel: %v", got)
	}
}

// TestMergedModel: random writes over four ranges, ranges closing at
// random, watches with random spans, filters and start revisions on a
// stream with a small queue (so watchers fall behind and catch up): every
// watch gets exactly the model's events in revision order, no gap, no
// duplicate, and every header and progress revision is truthful.
func TestMergedModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 7))
			rs := newRanges(t, "d", "h", "p")
			key := func() string { return string(rune('a' + rnd.IntN(20))) }
			m := NewMerger().NewStream(2, rs.split)
			defer m.Close()
			specs := map[int64]*watchSpec{}
			got := map[int64][]*mvccpb.Event{}
			released := map[int64]int64{}
			var progress []int64
			check := func(resps []*pb.WatchResponse) {
				for _, r := range resps {
					switch {
					case r.Created:
					case r.WatchId == -1:
						progress = append(progress, r.Header.Revision)
						for id, rel := range released {
							if rel < r.Header.Revision && lastWanted(rs.log, specs[id].req, specs[id].from, rel, r.Header.Revision) {
								t.Fatalf("progress at %d before watch %d was sent events after %d", r.Header.Revision, id, rel)
							}
						}
					default:
						for _, e := range r.Events {
							if e.Kv.ModRevision > r.Header.Revision {
								t.Fatalf("event %d above header %d", e.Kv.ModRevision, r.Header.Revision)
							}
						}
						got[r.WatchId] = append(got[r.WatchId], r.Events...)
						released[r.WatchId] = max(released[r.WatchId], r.Header.Revision)
					}
				}
			}
			live := map[string]bool{}
			for step := 0; step < 300; step++ {
				switch x := rnd.IntN(100); {
				case x < 45:
					k := key()
					rs.put(k, fmt.Sprint(step))
					live[k] = true
				case x < 55:
					if k := key(); live[k] {
						rs.del(k)
						delete(live, k)
					}
				case x < 70:
					rs.close(rnd.IntN(len(rs.hubs)))
				case x < 75 && len(specs) < 6:
					k := key()
					req := &pb.WatchCreateRequest{Key: []byte(k), PrevKv: rnd.IntN(2) == 0}
					switch rnd.IntN(3) {
					case 0:
						req.RangeEnd = []byte(string(rune(k[0] + byte(1+rnd.IntN(12)))))
					case 1:
						req.RangeEnd = []byte{0}
					}
					if rnd.IntN(4) == 0 {
						req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}
					}
					from := mvcc.Revision(0)
					if rnd.IntN(2) == 0 && rs.rev > 0 {
						from = 1 + mvcc.Revision(rnd.IntN(int(rs.rev)))
						req.StartRevision = int64(from)
					}
					r := m.Create(req)
					if from == 0 {
						from = mvcc.Revision(r.Header.Revision) + 1
					}
					specs[r.WatchId] = &watchSpec{req, from}
				case x < 80:
					m.RequestProgress()
				case x < 90:
					rs.pump()
				default:
					check(poll(t, m))
				}
			}
			settleModel(t, rs, m, check, &progress, specs, got)
		})
	}
}

// watchSpec is a watch a model test created: its request and the first
// revision it must see.
type watchSpec struct {
	req  *pb.WatchCreateRequest
	from mvcc.Revision
}

// settleModel closes every range, has the stream answer a progress request
// at the last revision (taking responses with take, which records progress
// revisions), and checks that every watch got exactly the model's events.
func settleModel(t *testing.T, rs *ranges, m *Merged, take func([]*pb.WatchResponse), progress *[]int64,
	specs map[int64]*watchSpec, got map[int64][]*mvccpb.Event) {
	t.Helper()
	rs.closeAll()
	m.RequestProgress()
	for deadline := time.Now().Add(10 * time.Second); len(*progress) == 0 || (*progress)[len(*progress)-1] < int64(rs.rev); {
		rs.pump()
		take(poll(t, m))
		if time.Now().After(deadline) {
			t.Fatalf("no progress at %d: %v", rs.rev, *progress)
		}
	}
	for id, sp := range specs {
		want := wanted(rs.log, sp.req, sp.from, 0, int64(rs.rev))
		if fmt.Sprint(eventStrings(got[id], sp.req.PrevKv)) != fmt.Sprint(eventStrings(want, sp.req.PrevKv)) {
			t.Fatalf("watch %d %v from %d:\n got  %v\n want %v", id, sp.req, sp.from,
				eventStrings(got[id], sp.req.PrevKv), eventStrings(want, sp.req.PrevKv))
		}
	}
}

// wanted is the model's events for a watch in (after, upto].
func wanted(log []*mvccpb.Event, req *pb.WatchCreateRequest, from mvcc.Revision, after, upto int64) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, e := range log {
		r := e.Kv.ModRevision
		if r < int64(from) || r <= after || r > upto {
			continue
		}
		k := e.Kv.Key
		in := bytes.Equal(k, req.Key)
		if len(req.RangeEnd) > 0 {
			in = bytes.Compare(k, req.Key) >= 0 && (bytes.Equal(req.RangeEnd, []byte{0}) || bytes.Compare(k, req.RangeEnd) < 0)
		}
		if in && !(e.Type == mvccpb.DELETE && len(req.Filters) > 0) {
			out = append(out, e)
		}
	}
	return out
}

func lastWanted(log []*mvccpb.Event, req *pb.WatchCreateRequest, from mvcc.Revision, after, upto int64) bool {
	return len(wanted(log, req, from, after, upto)) > 0
}

func eventStrings(evs []*mvccpb.Event, prev bool) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprintf("%s %s=%s@%d", e.Type, e.Kv.Key, e.Kv.Value, e.Kv.ModRevision)
		if prev && e.PrevKv != nil {
			out[i] += fmt.Sprintf("(prev %s)", e.PrevKv.Value)
		}
	}
	return out
}

// splitRange splits range i at key into a new range (the store splits
// off its keys, the new hub starts at the split's revision) and tells mg,
// as the node does while the split applies.
func (rs *ranges) splitRange(mg *Merger, i int, key string) {
	rs.nextID++
	child := rs.nextID
	b := rs.stores[i].NewBatch()
	if _, err := b.SplitOff([]byte(key), child); err != nil {
		rs.t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		rs.t.Fatal(err)
	}
	b.Close()
	s, err := mvcc.Open(rs.dbs[i], mvcc.Options{ID: child})
	if err != nil {
		rs.t.Fatal(err)
	}
	hub := NewHub(s.Rev())
	rs.splits = append(rs.splits[:i], append([]string{key}, rs.splits[i:]...)...)
	rs.stores = append(rs.stores[:i+1], append([]*mvcc.Store{s}, rs.stores[i+1:]...)...)
	rs.hubs = append(rs.hubs[:i+1], append([]*Hub{hub}, rs.hubs[i+1:]...)...)
	rs.dbs = append(rs.dbs[:i+1], append([]*pebble.DB{rs.dbs[i]}, rs.dbs[i+1:]...)...)
	rs.ids = append(rs.ids[:i+1], append([]uint64{child}, rs.ids[i+1:]...)...)
	rs.kicks = append(rs.kicks, 0)
	mg.Split(rs.hubs[i], []byte(key), Part{Hub: hub})
}

// TestMergedSplit: ranges split while watches run — live ones, lagging
// ones (a small queue) and ones reading history — and every watch still
// gets exactly the model's events, in order, across the splits; from one
// range too, whose streams are direct until its first split.
func TestMergedSplit(t *testing.T) {
	for _, first := range [][]string{{"m"}, nil} {
		t.Run(fmt.Sprintf("from %d ranges", len(first)+1), func(t *testing.T) { testMergedSplit(t, first) })
	}
}

func testMergedSplit(t *testing.T, first []string) {
	for seed := uint64(1); seed <= 10; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 11))
			rs := newRanges(t, first...)
			mg := NewMerger()
			m := mg.NewStream(3, rs.split)
			defer m.Close()
			key := func() string { return string(rune('a' + rnd.IntN(26))) }
			specs := map[int64]*watchSpec{}
			got := map[int64][]*mvccpb.Event{}
			var progress []int64
			take := func(resps []*pb.WatchResponse) {
				for _, r := range resps {
					switch {
					case r.Created:
					case r.WatchId == -1:
						progress = append(progress, r.Header.Revision)
					default:
						got[r.WatchId] = append(got[r.WatchId], r.Events...)
					}
				}
			}
			splits := []string{"d", "h", "p", "t", "w", "b"}
			for step := 0; step < 200; step++ {
				switch x := rnd.IntN(100); {
				case x < 50:
					rs.put(key(), fmt.Sprint(step))
				case x < 60:
					rs.close(rnd.IntN(len(rs.hubs)))
				case x < 66 && len(specs) < 5:
					k := key()
					req := &pb.WatchCreateRequest{Key: []byte(k), RangeEnd: []byte{0}}
					if rnd.IntN(2) == 0 {
						req.RangeEnd = []byte(string(rune(k[0] + byte(1+rnd.IntN(15)))))
					}
					from := mvcc.Revision(0)
					if rnd.IntN(2) == 0 {
						from = 1 + mvcc.Revision(rnd.IntN(int(rs.rev)))
						req.StartRevision = int64(from)
					}
					r := m.Create(req)
					if from == 0 {
						from = mvcc.Revision(r.Header.Revision) + 1
					}
					specs[r.WatchId] = &watchSpec{req, from}
				case x < 72 && len(splits) > 0:
					k := splits[0]
					splits = splits[1:]
					rs.splitRange(mg, rs.of(k), k)
				case x < 85:
					rs.pump()
				default:
					take(poll(t, m))
				}
			}
			settleModel(t, rs, m, take, &progress, specs, got)
		})
	}
}

// TestMergedDirect: over one range, a merged stream is direct — it answers
// exactly as a hub stream on that range's hub does, response by response
// (etcd's cuts, header revisions and progress), under the same random
// creates (live, from history, refused), cancels, progress requests,
// writes and catch-ups; ProgressTick adds nothing. (Queues do not fill
// here: which lagging watcher a full queue takes first is the hub's map
// order, in either stream.)
func TestMergedDirect(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 19))
			// Twin ranges with the same writes: a hub's catch-up rounds
			// depend on all of its streams.
			rs, twin := newRanges(t), newRanges(t)
			mg := NewMerger()
			m := mg.NewStream(1000, rs.split)
			defer m.Close()
			if m.direct == nil {
				t.Fatal("a stream over one range is not direct")
			}
			h := twin.hubs[0].NewStream(1000)
			defer h.Close()
			key := func() string { return string(rune('a' + rnd.IntN(8))) }
			var ids []ID
			var gotM, gotH []*pb.WatchResponse
			for step := 0; step < 300; step++ {
				switch x := rnd.IntN(100); {
				case x < 45:
					k := key()
					rs.put(k, fmt.Sprint(step))
					twin.put(k, fmt.Sprint(step))
				case x < 55:
					k := key()
					req := &pb.WatchCreateRequest{Key: []byte(k), ProgressNotify: rnd.IntN(2) == 0, PrevKv: rnd.IntN(2) == 0}
					switch rnd.IntN(4) {
					case 0:
						req.RangeEnd = []byte{0}
					case 1:
						req.RangeEnd = []byte(string(rune(k[0] + byte(rnd.IntN(3)))))
					}
					if rnd.IntN(2) == 0 {
						req.StartRevision = 1 + rnd.Int64N(int64(rs.rev)+2)
					}
					if rnd.IntN(3) == 0 {
						req.WatchId = 1 + rnd.Int64N(5)
					}
					rm, rh := m.Create(req), h.Create(req)
					if !proto.Equal(rm, rh) {
						t.Fatalf("create %v: merged %v, hub %v", req, rm, rh)
					}
					if !rm.Canceled {
						ids = append(ids, ID(rm.WatchId))
					}
				case x < 60 && len(ids) > 0:
					id := ids[rnd.IntN(len(ids))]
					if m.Cancel(id) != h.Cancel(id) {
						t.Fatalf("cancel %d answered differently", id)
					}
				case x < 65:
					m.RequestProgress()
					h.RequestProgress()
				case x < 70:
					mg.ProgressTick()
					rs.hubs[0].ProgressTick()
					twin.hubs[0].ProgressTick()
				case x < 85:
					rs.pump()
					twin.pump()
				default:
					gotM = append(gotM, poll(t, m)...)
					ctx, cancel := context.WithCancel(context.Background())
					cancel()
					r, _ := h.Next(ctx)
					gotH = append(gotH, r...)
				}
			}
			// Catch-up serves a hub's lagging watchers in map order: the
			// order is compared per watch id, as etcd's is.
			byID := func(rs []*pb.WatchResponse) map[int64][]*pb.WatchResponse {
				out := map[int64][]*pb.WatchResponse{}
				for _, r := range rs {
					out[r.WatchId] = append(out[r.WatchId], r)
				}
				return out
			}
			bm, bh := byID(gotM), byID(gotH)
			if len(bm) != len(bh) || len(gotM) != len(gotH) {
				t.Fatalf("merged sent %d responses to %d ids, hub %d to %d", len(gotM), len(bm), len(gotH), len(bh))
			}
			for id, rm := range bm {
				rh := bh[id]
				if len(rm) != len(rh) {
					t.Fatalf("watch %d: merged sent %d responses, hub %d", id, len(rm), len(rh))
				}
				for i := range rm {
					if !proto.Equal(rm[i], rh[i]) {
						t.Fatalf("watch %d, response %d: merged %v, hub %v", id, i, rm[i], rh[i])
					}
				}
			}
		})
	}
}

// moveRange moves range i's watches to a new hub over the same store, as
// a member does when its replica leaves and a mirror fed from another
// holder takes over: the mirror starts where its feed starts (base, at or
// below what the old hub has) and is fed every event above base, then the
// old hub closes.
func (rs *ranges) moveRange(mg *Merger, i int, rnd *rand.Rand) {
	old := rs.hubs[i]
	to := NewHub(0)
	rs.hubs[i] = to
	mg.Move(old, Part{Hub: to, Kick: func(rev mvcc.Revision) { rs.kicks[i] = rev }})
	top := old.Rev()
	base := 1 + mvcc.Revision(rnd.IntN(int(top)))
	to.Skip(base)
	var evs []*mvccpb.Event
	for _, e := range rs.log {
		if r := mvcc.Revision(e.Kv.ModRevision); r > base && r <= top && rs.of(string(e.Kv.Key)) == i {
			if len(evs) > 0 && evs[0].Kv.ModRevision != e.Kv.ModRevision {
				to.Notify(mvcc.Revision(evs[0].Kv.ModRevision), evs)
				evs = nil
			}
			evs = append(evs, e)
		}
	}
	if len(evs) > 0 {
		to.Notify(mvcc.Revision(evs[0].Kv.ModRevision), evs)
	}
	to.Advance(top)
	old.Close()
}

// TestMergedMove: ranges' watches move to other hubs of the same ranges
// (Merger.Move, a replica leaving for a mirror) while watches run — live
// ones, lagging ones (a small queue), coalesced ones and ones reading
// history — and every watch still gets exactly the model's events, in
// order, with no gap or repeat across the moves, none of them canceled;
// from one range too, whose streams are direct until the first move.
func TestMergedMove(t *testing.T) {
	for _, first := range [][]string{{"h", "p"}, nil} {
		t.Run(fmt.Sprintf("%d ranges", len(first)+1), func(t *testing.T) {
			for seed := uint64(1); seed <= 10; seed++ {
				t.Run(fmt.Sprint(seed), func(t *testing.T) {
					rnd := rand.New(rand.NewPCG(seed, 13))
					rs := newRanges(t, first...)
					mg := NewMerger()
					m := mg.NewStream(3, rs.split)
					defer m.Close()
					other := mg.NewStream(1000, rs.split) // coalesces with m
					defer other.Close()
					key := func() string { return string(rune('a' + rnd.IntN(26))) }
					specs := map[int64]*watchSpec{}
					got := map[int64][]*mvccpb.Event{}
					var progress []int64
					take := func(resps []*pb.WatchResponse) {
						for _, r := range resps {
							switch {
							case r.Canceled:
								t.Fatalf("watch %d canceled: %v", r.WatchId, r)
							case r.Created:
							case r.WatchId == -1:
								progress = append(progress, r.Header.Revision)
							default:
								got[r.WatchId] = append(got[r.WatchId], r.Events...)
							}
						}
					}
					moves := 0
					for step := 0; step < 300; step++ {
						switch x := rnd.IntN(100); {
						case x < 50:
							rs.put(key(), fmt.Sprint(step))
						case x < 60:
							rs.close(rnd.IntN(len(rs.hubs)))
						case x < 66 && len(specs) < 6:
							k := key()
							req := &pb.WatchCreateRequest{Key: []byte(k), RangeEnd: []byte{0}, PrevKv: rnd.IntN(2) == 0}
							if rnd.IntN(2) == 0 {
								req.RangeEnd = []byte(string(rune(k[0] + byte(1+rnd.IntN(15)))))
							}
							from := mvcc.Revision(0)
							if rnd.IntN(2) == 0 {
								from = 1 + mvcc.Revision(rnd.IntN(int(rs.rev)))
								req.StartRevision = int64(from)
							}
							if from == 0 {
								other.Create(req)
							}
							r := m.Create(req)
							if from == 0 {
								from = mvcc.Revision(r.Header.Revision) + 1
							}
							specs[r.WatchId] = &watchSpec{req, from}
						case x < 72:
							rs.moveRange(mg, rnd.IntN(len(rs.hubs)), rnd)
							moves++
						case x < 85:
							rs.pump()
						default:
							take(poll(t, m))
							poll(t, other)
						}
					}
					if moves == 0 {
						t.Fatal("no move")
					}
					settleModel(t, rs, m, take, &progress, specs, got)
				})
			}
		})
	}
}

// TestMoveLeavesMergedStreams: a never-direct stream (a feed's, which
// serves only from its member's replicas) keeps its watchers on the hub a
// move leaves, and ends when that hub closes; a client stream goes on.
func TestMoveLeavesMergedStreams(t *testing.T) {
	rs := newRanges(t, "m")
	mg := NewMerger()
	feed := mg.NewMergedStream(10, rs.split)
	defer feed.Close()
	client := mg.NewStream(10, rs.split)
	defer client.Close()
	req := &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte{0}}
	feed.Create(req)
	client.Create(req)
	rs.put("n", "1")
	rs.closeAll()
	rs.moveRange(mg, 1, rand.New(rand.NewPCG(1, 1)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, err := feed.Next(ctx) // its created response first
		if err == ErrClosed {
			break
		}
		if err != nil {
			t.Fatalf("feed stream after its hub closed: %v, want ErrClosed", err)
		}
	}
	rs.put("z", "2")
	rs.closeAll()
	var revs []int64
	for len(revs) < 2 {
		revs = append(revs, revsOf(next(t, client))...)
	}
	if fmt.Sprint(revs) != "[2 3]" {
		t.Fatalf("client stream got revisions %v, want [2 3]", revs)
	}
}
