package watch

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// hubWatchers is watchersOf every range's hub.
func (rs *ranges) hubWatchers() string {
	out := make([]int, len(rs.hubs))
	for i, h := range rs.hubs {
		out[i] = h.Watchers()
	}
	return fmt.Sprint(out)
}

// collect polls m (catching its lagging watchers up) until watch id has
// been sent every event up to rev, and returns its events.
func collect(t *testing.T, rs *ranges, m *Merged, id int64, rev mvcc.Revision) []*mvccpb.Event {
	t.Helper()
	var evs []*mvccpb.Event
	sent := int64(0)
	for deadline := time.Now().Add(10 * time.Second); sent < int64(rev); {
		rs.pump()
		for _, r := range poll(t, m) {
			if r.WatchId == id && len(r.Events) > 0 {
				evs = append(evs, r.Events...)
				sent = max(sent, r.Header.Revision)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch %d sent up to %d, want %d", id, sent, rev)
		}
		if sent < int64(rev) {
			m.RequestProgress()
			rs.closeAll()
		}
	}
	return evs
}

// TestCoalesced: identical watches of several client streams share one
// watcher per range, each stream getting every event from its start; a
// different watch, or one that needs history, has its own; the last one
// to leave ends the shared watchers.
func TestCoalesced(t *testing.T) {
	rs := newRanges(t, "m")
	mg := NewMerger()
	req := func() *pb.WatchCreateRequest {
		return &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")}
	}
	var streams []*Merged
	for range 3 {
		m := mg.NewStream(100, rs.split)
		defer m.Close()
		if r := m.Create(req()); r.Canceled {
			t.Fatal(r)
		}
		streams = append(streams, m)
	}
	prev := mg.NewStream(100, rs.split)
	defer prev.Close()
	pr := req()
	pr.PrevKv = true
	prev.Create(pr)
	if got := rs.hubWatchers(); got != "[2 2]" {
		t.Fatalf("watchers per range %s, want [2 2]: the three identical watches share one", got)
	}
	rs.put("b", "1")
	rs.put("x", "2")
	late := mg.NewStream(100, rs.split)
	defer late.Close()
	late.Create(req()) // from revision 4
	past := mg.NewStream(100, rs.split)
	defer past.Close()
	hr := req()
	hr.StartRevision = 2
	past.Create(hr)
	if got := rs.hubWatchers(); got != "[3 3]" {
		t.Fatalf("watchers per range %s, want [3 3]: a late watch from now joins, one with history does not", got)
	}
	rs.put("c", "3")
	rs.put("b", "4")
	rs.closeAll()
	all := "[PUT b=1@2 PUT x=2@3 PUT c=3@4 PUT b=4@5]"
	for i, m := range append(streams, prev) {
		if got := eventStrings(collect(t, rs, m, 0, 5), false); fmt.Sprint(got) != all {
			t.Fatalf("stream %d got %v, want %v", i, got, all)
		}
	}
	if got := collect(t, rs, prev, 0, 0); len(got) != 0 {
		t.Fatalf("more for prev: %v", got)
	}
	if got := fmt.Sprint(eventStrings(collect(t, rs, late, 0, 5), false)); got != "[PUT c=3@4 PUT b=4@5]" {
		t.Fatalf("late watch got %v", got)
	}
	if got := fmt.Sprint(eventStrings(collect(t, rs, past, 0, 5), false)); got != all {
		t.Fatalf("watch from history got %v", got)
	}
	for _, m := range append(streams, late) {
		if !m.Cancel(0) {
			t.Fatal("cancel")
		}
	}
	if got := rs.hubWatchers(); got != "[2 2]" {
		t.Fatalf("watchers per range %s after the shared watch's subscribers left, want [2 2]", got)
	}
}

// TestCoalescedSlowClient: a subscriber that does not read while many
// events pass leaves the shared watch and catches up by itself, missing
// nothing; the others are not held back.
func TestCoalescedSlowClient(t *testing.T) {
	rs := newRanges(t, "m")
	mg := NewMerger()
	fast, slow := mg.NewStream(2, rs.split), mg.NewStream(2, rs.split)
	defer fast.Close()
	defer slow.Close()
	for _, m := range []*Merged{fast, slow} {
		m.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
		poll(t, m)
	}
	var fastGot []*mvccpb.Event
	for i := range 300 {
		rs.put(string(rune('a'+i%25)), fmt.Sprint(i))
		if i%5 == 0 {
			rs.closeAll()
			for _, r := range poll(t, fast) {
				fastGot = append(fastGot, r.Events...)
			}
		}
	}
	rs.closeAll()
	fastGot = append(fastGot, collect(t, rs, fast, 0, rs.rev)...)
	slowGot := collect(t, rs, slow, 0, rs.rev)
	if got := rs.hubWatchers(); got != "[2 2]" {
		t.Fatalf("watchers per range %s, want [2 2]: the slow client's watch has its own now", got)
	}
	want := fmt.Sprint(eventStrings(rs.log, false))
	for name, got := range map[string][]*mvccpb.Event{"fast": fastGot, "slow": slowGot} {
		if g := fmt.Sprint(eventStrings(got, false)); g != want {
			t.Fatalf("%s client got\n %v\nwant\n %v", name, g, want)
		}
	}
}

// TestCoalescedModel: random identical and different watches over four
// ranges on three client streams (small queues, so watchers fall behind),
// created from now, from the future or from the past, canceled, read at
// random: every watch gets exactly the model's events, and the watches
// from now or later of one key set hold one watcher per range between them.
func TestCoalescedModel(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 11))
			rs := newRanges(t, "d", "h", "p")
			mg := NewMerger()
			keys := []*pb.WatchCreateRequest{
				{Key: []byte("a"), RangeEnd: []byte("z")},
				{Key: []byte("c"), RangeEnd: []byte("j")},
				{Key: []byte("e")},
			}
			type stream struct {
				m     *Merged
				specs map[int64]*watchSpec
				got   map[int64][]*mvccpb.Event
			}
			var streams []*stream
			for range 3 {
				m := mg.NewStream(2, rs.split)
				defer m.Close()
				streams = append(streams, &stream{m: m, specs: map[int64]*watchSpec{}, got: map[int64][]*mvccpb.Event{}})
			}
			take := func(s *stream, resps []*pb.WatchResponse) {
				for _, r := range resps {
					if !r.Created && r.WatchId >= 0 {
						s.got[r.WatchId] = append(s.got[r.WatchId], r.Events...)
					}
				}
			}
			for step := 0; step < 400; step++ {
				s := streams[rnd.IntN(len(streams))]
				switch x := rnd.IntN(100); {
				case x < 45:
					rs.put(string(rune('a'+rnd.IntN(25))), fmt.Sprint(step))
				case x < 55:
					rs.close(rnd.IntN(len(rs.hubs)))
				case x < 63 && len(s.specs) < 5:
					k := keys[rnd.IntN(len(keys))]
					req := &pb.WatchCreateRequest{Key: k.Key, RangeEnd: k.RangeEnd}
					switch rnd.IntN(4) {
					case 0:
						req.StartRevision = int64(rs.rev) + 1 + int64(rnd.IntN(3))
					case 1:
						req.StartRevision = 1 + int64(rnd.IntN(int(rs.rev)))
					}
					r := s.m.Create(req)
					from := mvcc.Revision(req.StartRevision)
					if from == 0 {
						from = mvcc.Revision(r.Header.Revision) + 1
					}
					s.specs[r.WatchId] = &watchSpec{req, from}
				case x < 66 && len(s.specs) > 0:
					for id := range s.specs {
						s.m.Cancel(ID(id))
						delete(s.specs, id)
						delete(s.got, id)
						break
					}
				case x < 75:
					rs.pump()
				default:
					take(s, poll(t, s.m))
				}
			}
			for _, s := range streams {
				if len(s.specs) == 0 {
					continue // no progress for a stream without watches, as in etcd
				}
				var progress []int64
				settleModel(t, rs, s.m, func(resps []*pb.WatchResponse) {
					take(s, resps)
					for _, r := range resps {
						if r.WatchId == -1 {
							progress = append(progress, r.Header.Revision)
						}
					}
				}, &progress, s.specs, s.got)
			}
		})
	}
}

// TestCoalescedCompacted: a shared watch whose ranges fell behind past a
// compaction ends, as etcd ends a watch, for every subscriber; the next
// identical watch gets new shared watchers.
func TestCoalescedCompacted(t *testing.T) {
	rs := newRanges(t, "m")
	mg := NewMerger()
	var streams []*Merged
	for range 2 {
		m := mg.NewStream(1, rs.split)
		defer m.Close()
		m.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
		poll(t, m)
		streams = append(streams, m)
	}
	for i := range 10 {
		rs.put("x", fmt.Sprint(i)) // nobody reads: the shared watcher falls behind
	}
	b := rs.stores[1].NewBatch()
	if _, err := b.Compact(rs.rev); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	for i, m := range streams {
		var last *pb.WatchResponse
		for deadline := time.Now().Add(10 * time.Second); last == nil || !last.Canceled; {
			rs.pump()
			for _, r := range poll(t, m) {
				last = r
			}
			if time.Now().After(deadline) {
				t.Fatalf("stream %d: last response %v, want canceled at compaction %d", i, last, rs.rev)
			}
		}
		if last.WatchId != 0 || last.CompactRevision != int64(rs.rev) {
			t.Fatalf("stream %d ended with %v, want canceled at compaction %d", i, last, rs.rev)
		}
	}
	again := mg.NewStream(100, rs.split)
	defer again.Close()
	again.Create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("z")})
	rs.put("b", "after")
	rs.closeAll()
	if got := fmt.Sprint(eventStrings(collect(t, rs, again, 0, rs.rev), false)); got != fmt.Sprintf("[PUT b=after@%d]", rs.rev) {
		t.Fatalf("a new identical watch got %v", got)
	}
}
