package mvcc

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

var (
	modelSeed  = flag.Uint64("model.seed", 0, "run only this seed of TestModel")
	modelSeeds = flag.Int("model.seeds", 40, "number of seeds TestModel runs")
)

// model is the naive store: every version of every key in a map, scanned
// in full for every question.
type model struct {
	rev, compact int64
	hist         map[string][]*mvccpb.KeyValue // versions in revision order; Version 0 = tombstone
}

func (m *model) at(key string, rev int64) *mvccpb.KeyValue {
	var found *mvccpb.KeyValue
	for _, v := range m.hist[key] {
		if v.ModRevision <= rev {
			found = v
		}
	}
	if found == nil || found.Version == 0 {
		return nil
	}
	return found
}

// live returns the live keys of [key, end) at rev, in key order.
func (m *model) live(key, end []byte, rev int64) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for k := range m.hist {
		kb := []byte(k)
		in := bytes.Equal(kb, key)
		if end != nil {
			in = bytes.Compare(kb, key) >= 0 && (len(end) == 0 || bytes.Compare(kb, end) < 0)
		}
		if kv := m.at(k, rev); in && kv != nil {
			c := proto.Clone(kv).(*mvccpb.KeyValue)
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

func (m *model) write(key string, rev int64, value []byte, lease int64, tomb bool) {
	kv := &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}
	if !tomb {
		prev := m.at(key, rev)
		kv.CreateRevision, kv.Version, kv.Value, kv.Lease = rev, 1, value, lease
		if prev != nil {
			kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
		}
	}
	m.hist[key] = append(m.hist[key], kv)
}

func (m *model) doCompact(rev int64) {
	m.compact = rev
	for k, vs := range m.hist {
		var keep []*mvccpb.KeyValue
		for i, v := range vs {
			newestAtOrBelow := v.ModRevision <= rev && (i+1 == len(vs) || vs[i+1].ModRevision > rev)
			if v.ModRevision > rev || (newestAtOrBelow && v.Version != 0) {
				keep = append(keep, v)
			}
		}
		m.hist[k] = keep
	}
}

// TestModel runs seeded random sequences of writes, reads, compactions,
// reopens and a final snapshot/restore against the store and the model.
// Replay one with -model.seed=N.
func TestModel(t *testing.T) {
	seeds := make([]uint64, 0, *modelSeeds)
	if *modelSeed != 0 {
		seeds = append(seeds, *modelSeed)
	} else {
		for i := 1; i <= *modelSeeds; i++ {
			seeds = append(seeds, uint64(i))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed) })
	}
}

func runModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0))
	db := openTestDB(t)
	s := openTestStore(t, db, Span{})
	m := &model{rev: 1, compact: -1, hist: map[string][]*mvccpb.KeyValue{}}
	keys := []string{"a", "ab", "b", "b\x00", "c", "d", "e\xff"}
	key := func() []byte { return []byte(keys[rng.IntN(len(keys))]) }
	end := func(k []byte) []byte {
		switch rng.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{0}
		default:
			e := key()
			if rng.IntN(3) == 0 {
				return append(append([]byte(nil), k...), 0xff)
			}
			return e
		}
	}
	fail := func(step int, format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d: %s", seed, step, fmt.Sprintf(format, args...))
	}
	var taken []*mvccpb.Event // every event, as the batches reported them
	for step := 0; step < 300; step++ {
		switch p := rng.IntN(100); {
		case p < 55: // a batch of 1–4 writes
			b := s.NewBatch()
			for n := 1 + rng.IntN(4); n > 0; n-- {
				k := key()
				switch rng.IntN(3) {
				case 0, 1:
					v := []byte(fmt.Sprint(rng.IntN(1000)))
					lease := []int64{0, 0, 5, 7}[rng.IntN(4)]
					resp, err := b.Put(&pb.PutRequest{Key: k, Value: v, Lease: lease, PrevKv: true}, 0)
					if err != nil {
						fail(step, "put: %v", err)
					}
					want := m.at(string(k), m.rev)
					if !proto.Equal(resp.PrevKv, want) {
						fail(step, "put %q prev = %v, want %v", k, resp.PrevKv, want)
					}
					m.rev++
					m.write(string(k), m.rev, v, lease, false)
					if resp.Header.Revision != m.rev {
						fail(step, "put rev %d, want %d", resp.Header.Revision, m.rev)
					}
				case 2:
					e := mkGteRange(end(k))
					resp, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: k, RangeEnd: e, PrevKv: true}, 0)
					if err != nil {
						fail(step, "delete: %v", err)
					}
					gone := m.live(k, e, m.rev)
					if len(gone) > 0 {
						m.rev++
						for _, kv := range gone {
							m.write(string(kv.Key), m.rev, nil, 0, true)
						}
					}
					if resp.Deleted != int64(len(gone)) || resp.Header.Revision != m.rev || !kvsEqual(resp.PrevKvs, gone) {
						fail(step, "delete [%q,%q) = %d at %d %v, want %d at %d %v", k, e, resp.Deleted, resp.Header.Revision, resp.PrevKvs, len(gone), m.rev, gone)
					}
				}
			}
			taken = append(taken, b.TakeEvents()...)
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			b.Close()
		case p < 90: // a read at a random revision with random options
			k := key()
			r := &pb.RangeRequest{Key: k, RangeEnd: end(k), Limit: int64(rng.IntN(4)),
				SortTarget: pb.RangeRequest_SortTarget(rng.IntN(5)), SortOrder: pb.RangeRequest_SortOrder(rng.IntN(3))}
			if rng.IntN(2) == 0 {
				r.Revision = int64(rng.IntN(int(m.rev) + 2))
			}
			if rng.IntN(4) == 0 {
				r.MinModRevision = int64(rng.IntN(int(m.rev) + 1))
			}
			if rng.IntN(4) == 0 {
				r.MaxCreateRevision = int64(rng.IntN(int(m.rev) + 1))
			}
			checkRange(t, seed, step, s, m, r)
		case p < 95:
			rev := int64(rng.IntN(int(m.rev)+2)) - 1
			b := s.NewBatch()
			_, err := b.Compact(Revision(rev))
			switch {
			case rev <= m.compact:
				if err != ErrCompacted {
					fail(step, "compact %d (compacted %d): %v", rev, m.compact, err)
				}
			case rev > m.rev:
				if err != ErrFutureRev {
					fail(step, "compact %d (current %d): %v", rev, m.rev, err)
				}
			default:
				if err != nil {
					fail(step, "compact %d: %v", rev, err)
				}
				m.doCompact(rev)
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			b.Close()
		default:
			s = openTestStore(t, db, Span{})
		}
		if int64(s.Rev()) != m.rev || int64(s.CompactRev()) != m.compact {
			fail(step, "store at rev %d compact %d, model at %d compact %d", s.Rev(), s.CompactRev(), m.rev, m.compact)
		}
		if n, err := s.Keys(); err != nil || n != int64(len(m.live([]byte{}, []byte{}, m.rev))) {
			fail(step, "store counts %d live keys (%v), model %d", n, err, len(m.live([]byte{}, []byte{}, m.rev)))
		}
	}
	checkHistory(t, seed, s, m, taken)
	// Every revision still readable must read the same after a snapshot is
	// restored into another pebble.
	snap := s.NewSnapshot()
	var buf bytes.Buffer
	if _, err := snap.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Close()
	restored := openTestStore(t, openTestDB(t), Span{})
	if err := restored.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	for rev := max(m.compact, 1); rev <= m.rev; rev++ {
		checkRange(t, seed, -1, restored, m, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
	}
}

func kvsEqual(a, b []*mvccpb.KeyValue) bool {
	return slices.EqualFunc(a, b, func(x, y *mvccpb.KeyValue) bool { return proto.Equal(x, y) })
}

// checkRange checks a Range answer against the model without re-deriving
// etcd's tie order: the right count, the right set, ordered by the target,
// cut at the limit with More set.
func checkRange(t *testing.T, seed uint64, step int, s *Store, m *model, r *pb.RangeRequest) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d: range %v: %s", seed, step, r, fmt.Sprintf(format, args...))
	}
	resp, err := s.Range(r)
	rev := r.Revision
	switch {
	case rev > m.rev:
		if err != ErrFutureRev {
			fail("want ErrFutureRev, got %v", err)
		}
		return
	case rev > 0 && rev < m.compact:
		if err != ErrCompacted {
			fail("want ErrCompacted, got %v", err)
		}
		return
	case err != nil:
		fail("%v", err)
	}
	if rev <= 0 {
		rev = m.rev
	}
	all := m.live(r.Key, mkGteRange(r.RangeEnd), rev)
	var want []*mvccpb.KeyValue
	for _, kv := range all {
		if (r.MinModRevision == 0 || kv.ModRevision >= r.MinModRevision) && (r.MaxCreateRevision == 0 || kv.CreateRevision <= r.MaxCreateRevision) {
			want = append(want, kv)
		}
	}
	if resp.Header.Revision != m.rev || resp.Count != int64(len(all)) {
		fail("rev %d count %d, want %d %d", resp.Header.Revision, resp.Count, m.rev, len(all))
	}
	// etcd's quirk, kept: with order NONE no re-sort is planned, so only
	// the first limit+1 keys (in key order) are fetched, then sorted by the
	// target.
	if r.SortOrder == pb.RangeRequest_NONE && r.MinModRevision == 0 && r.MaxCreateRevision == 0 && r.Limit > 0 && int64(len(want)) > r.Limit+1 {
		want = want[:r.Limit+1]
	}
	n := len(want)
	if r.Limit > 0 && int64(n) > r.Limit {
		n = int(r.Limit)
	}
	if len(resp.Kvs) != n || resp.More != (n < len(want)) {
		fail("%d kvs more=%t, want %d of %d", len(resp.Kvs), resp.More, n, len(want))
	}
	field := func(kv *mvccpb.KeyValue) []byte {
		switch r.SortTarget {
		case pb.RangeRequest_VERSION:
			return fmt.Appendf(nil, "%020d", kv.Version)
		case pb.RangeRequest_CREATE:
			return fmt.Appendf(nil, "%020d", kv.CreateRevision)
		case pb.RangeRequest_MOD:
			return fmt.Appendf(nil, "%020d", kv.ModRevision)
		case pb.RangeRequest_VALUE:
			return kv.Value
		}
		return kv.Key
	}
	desc := r.SortOrder == pb.RangeRequest_DESCEND
	sorted := slices.Clone(want)
	slices.SortStableFunc(sorted, func(a, b *mvccpb.KeyValue) int {
		c := bytes.Compare(field(a), field(b))
		if desc {
			c = -c
		}
		return c
	})
	for i, kv := range resp.Kvs {
		// Same sort field as the model's i-th, and a version the model has.
		if !bytes.Equal(field(kv), field(sorted[i])) {
			fail("kv %d = %v, want sort field %q", i, kv, field(sorted[i]))
		}
		if !slices.ContainsFunc(want, func(w *mvccpb.KeyValue) bool { return proto.Equal(w, kv) }) {
			fail("kv %v is not in the model's answer %v", kv, want)
		}
	}
}

// checkHistory: the event log read back gives the events the batches
// reported, from the compacted revision on (a PrevKv may be missing where
// compaction removed it).
func checkHistory(t *testing.T, seed uint64, s *Store, m *model, taken []*mvccpb.Event) {
	t.Helper()
	var want []*mvccpb.Event
	for _, ev := range taken {
		if ev.Kv.ModRevision >= max(m.compact, 0) {
			want = append(want, ev)
		}
	}
	var got []*mvccpb.Event
	if err := s.Events(Revision(max(m.compact, 0)), Revision(m.rev), func(rev Revision, evs []*mvccpb.Event) bool {
		got = append(got, evs...)
		return true
	}); err != nil {
		t.Fatalf("seed %d: events: %v", seed, err)
	}
	if len(got) != len(want) {
		t.Fatalf("seed %d: %d events from the log, want %d", seed, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		prevOK := proto.Equal(g.PrevKv, w.PrevKv) || (g.PrevKv == nil && w.PrevKv != nil && w.PrevKv.ModRevision < m.compact)
		if g.Type != w.Type || !proto.Equal(g.Kv, w.Kv) || !prevOK {
			t.Fatalf("seed %d: event %d = %v, want %v", seed, i, g, w)
		}
	}
	if m.compact > 0 {
		if err := s.Events(Revision(m.compact-1), Revision(m.rev), func(Revision, []*mvccpb.Event) bool { return true }); err != ErrCompacted {
			t.Fatalf("seed %d: events below the compacted revision: %v", seed, err)
		}
	}
}
