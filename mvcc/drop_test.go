package mvcc

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// commitBatch runs fn in a batch of s and commits it.
func commitBatch(t testing.TB, s *Store, fn func(b *Batch) error) {
	t.Helper()
	b := s.NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

func putAt(key string, value string, stamp Revision) func(b *Batch) error {
	return func(b *Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(value)}, stamp)
		return err
	}
}

// allEvents reads every event of s's history.
func allEvents(t testing.TB, s *Store) []*mvccpb.Event {
	t.Helper()
	var out []*mvccpb.Event
	if err := s.Events(max(s.CompactRev(), 0), s.Rev(), func(_ Revision, evs []*mvccpb.Event) bool {
		out = append(out, evs...)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRestoreSweepRace: on one pebble, a store of span B restores from a
// snapshot while the event log is swept of a dropped store that spanned
// A∪B (B owned by the restoring store). The dropped store's records hold an
// entry of A at every revision; the snapshot adds one of B at each of
// them. Both rewrite the same records concurrently; with the EventLog lock
// every B entry survives and every A entry goes, whatever the
// interleaving. (Without it, a sweep's chunk read before the restore's
// commit deletes records the restore has just added B's entries to.)
func TestRestoreSweepRace(t *testing.T) {
	const revs = 1500
	spanA, spanB := Span{Start: []byte{}, End: []byte("b")}, Span{Start: []byte("b")}
	// The snapshot of B, from another member: one key of B per revision.
	src := openTestDB(t)
	srcStore, err := Open(src, Options{ID: 2, Span: spanB})
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i < revs; i++ {
		commitBatch(t, srcStore, putAt(fmt.Sprintf("b%04d", i%97), fmt.Sprint(i), Revision(i)))
	}
	snap := srcStore.NewSnapshot()
	var image bytes.Buffer
	if _, err := snap.WriteTo(&image); err != nil {
		t.Fatal(err)
	}
	snap.Close()
	want := allEvents(t, srcStore)

	for round := 0; round < 8; round++ {
		db := openTestDB(t)
		log := NewEventLog(db)
		// The dropped store: A∪B, with one key of A per revision.
		gone, err := Open(db, Options{ID: 1, EventLog: log})
		if err != nil {
			t.Fatal(err)
		}
		for i := 2; i < revs; i++ {
			commitBatch(t, gone, putAt(fmt.Sprintf("a%04d", i%89), fmt.Sprint(i), 0))
		}
		b := db.NewBatch()
		if err := DropSpan(b, 1, spanA, spanB); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.Sync); err != nil {
			t.Fatal(err)
		}
		b.Close()

		restored, err := Open(db, Options{ID: 2, Span: spanB, EventLog: log})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		wg.Add(2)
		go func() {
			defer wg.Done()
			errs <- restored.Restore(bytes.NewReader(image.Bytes()))
		}()
		go func() {
			defer wg.Done()
			for from, more := Revision(0), true; more; {
				var err error
				if from, more, err = SweepEvents(db, log, Span{}, spanB.Contains, from, 16); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got := allEvents(t, restored)
		if len(got) != len(want) {
			t.Fatalf("round %d: %d events of B after the restore and the sweep, want %d", round, len(got), len(want))
		}
		for i := range got {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("round %d: event %d = %v, want %v", round, i, got[i], want[i])
			}
		}
		if n := countEntries(t, db, spanA); n != 0 {
			t.Fatalf("round %d: %d event entries of the dropped span A remain", round, n)
		}
	}
}

// countEntries counts the event log entries of keys in span.
func countEntries(t testing.TB, db pebble.Reader, span Span) int {
	t.Helper()
	n := 0
	if err := eachRecord(db, eventsStart, eventsEnd, func(_, v []byte) error {
		es, err := decodeEvents(v)
		for _, e := range es {
			if span.Contains(e.key) {
				n++
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// countVersions counts the version records of keys in span.
func countVersions(t testing.TB, db pebble.Reader, span Span) int {
	t.Helper()
	lo, hi := VersionBounds(span)
	n := 0
	if err := eachRecord(db, lo, hi, func(_, _ []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCompactHoldsEventLog: a batch that compacts holds the DB's EventLog
// from the compaction to its commit (or close), so a sweep waits for it;
// a batch that only writes does not.
func TestCompactHoldsEventLog(t *testing.T) {
	db := openTestDB(t)
	log := NewEventLog(db)
	s, err := Open(db, Options{ID: 1, EventLog: log})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		commitBatch(t, s, putAt("a", fmt.Sprint(i), 0))
	}
	free := func() bool {
		if !log.mu.TryLock() {
			return false
		}
		log.mu.Unlock()
		return true
	}
	b := s.NewBatch()
	if err := putAt("b", "1", 0)(b); err != nil {
		t.Fatal(err)
	}
	if !free() {
		t.Fatal("a batch that only writes holds the event log lock")
	}
	if _, err := b.Compact(3); err != nil {
		t.Fatal(err)
	}
	if free() {
		t.Fatal("a batch that compacted does not hold the event log lock")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if !free() {
		t.Fatal("a committed batch still holds the event log lock")
	}
	b.Close()
	b = s.NewBatch()
	if _, err := b.Compact(4); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if !free() {
		t.Fatal("a closed batch still holds the event log lock")
	}
	// A restore holds it from its read to Apply or Close.
	snap := s.NewSnapshot()
	var image bytes.Buffer
	if _, err := snap.WriteTo(&image); err != nil {
		t.Fatal(err)
	}
	snap.Close()
	p, err := s.ReadSnapshot(&image)
	if err != nil {
		t.Fatal(err)
	}
	if free() {
		t.Fatal("a pending restore does not hold the event log lock")
	}
	p.Close()
	if !free() {
		t.Fatal("a closed pending restore still holds the event log lock")
	}
	if _, err := Open(db, Options{ID: 2, EventLog: NewEventLog(openTestDB(t))}); err == nil {
		t.Fatal("a store opened with another DB's event log lock")
	}
}

// TestModelDrops runs seeded random sequences on three stores sharing one
// pebble (split from one that counted its revisions, so early event
// records hold keys of all three): stamped writes, compactions, drops of a
// store (its snapshot kept, as another member would hold it), sweeps in
// random chunks interleaved with the rest, and restores of dropped stores
// from their snapshots, before or after their sweep ends. Every live store
// answers reads and history as the model says; a dropped store leaves no
// version, entry or internal record once swept. Replay one with
// -model.seed=N.
func TestModelDrops(t *testing.T) {
	seeds := []uint64{*modelSeed}
	if *modelSeed == 0 {
		seeds = seeds[:0]
		for i := 1; i <= *modelSeeds; i++ {
			seeds = append(seeds, uint64(i))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runDropModel(t, seed) })
	}
}

// dropModelStore is one store of runDropModel and what the model says of it.
type dropModelStore struct {
	id      uint64
	s       *Store // nil while dropped
	m       *model
	taken   []*mvccpb.Event
	image   []byte // its snapshot, taken when it was dropped
	span    Span
	sweep   Revision // where its drop's sweep goes on
	sweepOn bool     // a sweep of its span is unfinished
}

func runDropModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	db := openTestDB(t)
	log := NewEventLog(db)
	keys := []string{"a", "ab", "b", "bc", "c", "d", "dz", "e"}
	fail := func(step int, format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d: %s", seed, step, fmt.Sprintf(format, args...))
	}
	open := func(id uint64, span Span) *Store {
		s, err := Open(db, Options{ID: id, Span: span, Leases: testLeases, EventLog: log})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := &dropModelStore{id: 1, s: open(1, Span{}), m: &model{rev: 1, compact: -1, hist: map[string][]*mvccpb.KeyValue{}}}
	// write runs 1–3 random writes on st with stamp (0: counting).
	write := func(step int, st *dropModelStore, stamp int64) {
		var mine []string
		for _, k := range keys {
			if st.s.Span().Contains([]byte(k)) {
				mine = append(mine, k)
			}
		}
		b := st.s.NewBatch()
		defer b.Close()
		for n := 1 + rng.IntN(3); n > 0; n-- {
			i := rng.IntN(len(mine))
			rev := st.m.rev + 1
			if stamp != 0 {
				rev = stamp
			}
			if rng.IntN(3) > 0 {
				v := fmt.Sprint(rng.IntN(1000))
				if _, err := b.Put(&pb.PutRequest{Key: []byte(mine[i]), Value: []byte(v)}, Revision(stamp)); err != nil {
					fail(step, "put: %v", err)
				}
				st.m.rev = rev
				st.m.write(mine[i], rev, []byte(v), 0, false)
			} else {
				var end []byte
				if j := i + rng.IntN(len(mine)-i); rng.IntN(2) == 0 {
					end = []byte(mine[j] + "\xff")
				}
				gone := st.m.live([]byte(mine[i]), end, st.m.rev)
				if _, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(mine[i]), RangeEnd: end}, Revision(stamp)); err != nil {
					fail(step, "delete: %v", err)
				}
				if len(gone) > 0 {
					st.m.rev = rev
					for _, kv := range gone {
						st.m.write(string(kv.Key), rev, nil, 0, true)
					}
				}
			}
			if stamp != 0 {
				stamp++
			}
		}
		st.taken = append(st.taken, b.TakeEvents()...)
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	compact := func(step int, st *dropModelStore) {
		if st.m.rev <= max(st.m.compact, 0) {
			return
		}
		rev := st.m.compact + 1 + int64(rng.IntN(int(st.m.rev-st.m.compact)))
		b := st.s.NewBatch()
		defer b.Close()
		if _, err := b.Compact(Revision(rev)); err != nil {
			fail(step, "compact %d of store %d: %v", rev, st.id, err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		st.m.doCompact(rev)
	}
	// Counting: store 1 owns everything.
	for step := 0; step < 12; step++ {
		write(step, first, 0)
		if rng.IntN(6) == 0 {
			compact(step, first)
		}
	}
	// Splits: 1 → 1 [,b) 2 [b,∞) → 2 [b,d) 3 [d,∞); the model's keys and
	// events go with their spans.
	split := func(parent *dropModelStore, key string, child uint64) *dropModelStore {
		commitBatch(t, parent.s, func(b *Batch) error { _, err := b.SplitOff([]byte(key), child); return err })
		c := &dropModelStore{id: child, s: open(child, Span{}),
			m: &model{rev: parent.m.rev, compact: parent.m.compact, hist: map[string][]*mvccpb.KeyValue{}}}
		for k, h := range parent.m.hist {
			if c.s.Span().Contains([]byte(k)) {
				c.m.hist[k] = h
				delete(parent.m.hist, k)
			}
		}
		var kept []*mvccpb.Event
		for _, ev := range parent.taken {
			if c.s.Span().Contains(ev.Kv.Key) {
				c.taken = append(c.taken, ev)
			} else {
				kept = append(kept, ev)
			}
		}
		parent.taken = kept
		return c
	}
	second := split(first, "b", 2)
	third := split(second, "d", 3)
	stores := []*dropModelStore{first, second, third}
	next := first.m.rev + 10 // the oracle: stamps unique across stores
	owned := func(key []byte) bool {
		for _, st := range stores {
			if st.s != nil && st.s.Span().Contains(key) {
				return true
			}
		}
		return false
	}
	sweep := func(step int, st *dropModelStore, chunk int) {
		var more bool
		var err error
		if st.sweep, more, err = SweepEvents(db, log, st.span, owned, st.sweep, chunk); err != nil {
			fail(step, "sweep of store %d: %v", st.id, err)
		}
		st.sweepOn = more
	}
	check := func(step int, st *dropModelStore, everyRev bool) {
		sp := st.s.Span()
		end := sp.End
		if end == nil {
			end = []byte{0}
		}
		if everyRev {
			for rev := max(st.m.compact, 1); rev <= st.m.rev; rev++ {
				checkRange(t, seed, step, st.s, st.m, &pb.RangeRequest{Key: sp.Start, RangeEnd: end, Revision: rev})
			}
		} else {
			checkRange(t, seed, step, st.s, st.m, &pb.RangeRequest{Key: sp.Start, RangeEnd: end,
				Revision: max(st.m.compact, 0) + int64(rng.IntN(int(st.m.rev-max(st.m.compact, 0)+1)))})
		}
		if int64(st.s.Rev()) != st.m.rev || int64(st.s.CompactRev()) != st.m.compact {
			fail(step, "store %d at rev %d compact %d, model at %d compact %d", st.id, st.s.Rev(), st.s.CompactRev(), st.m.rev, st.m.compact)
		}
		checkHistory(t, seed, st.s, st.m, st.taken)
	}
	for step := 12; step < 250; step++ {
		st := stores[rng.IntN(len(stores))]
		live := 0
		for _, o := range stores {
			if o.s != nil {
				live++
			}
		}
		switch p := rng.IntN(100); {
		case p < 45:
			if st.s != nil {
				write(step, st, next)
				next += 4
			}
		case p < 55:
			if st.s != nil {
				compact(step, st)
			}
		case p < 65: // drop it, keeping its snapshot
			if st.s == nil || live < 2 {
				continue
			}
			snap := st.s.NewSnapshot()
			var buf bytes.Buffer
			if _, err := snap.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			snap.Close()
			st.image, st.span, st.s = buf.Bytes(), st.s.Span(), nil
			b := db.NewBatch()
			if err := DropSpan(b, st.id, st.span); err != nil {
				t.Fatal(err)
			}
			if err := b.Commit(pebble.NoSync); err != nil {
				t.Fatal(err)
			}
			b.Close()
			if n := countVersions(t, db, st.span); n != 0 {
				fail(step, "%d versions of dropped store %d remain", n, st.id)
			}
			st.sweep, st.sweepOn = 0, true
		case p < 80: // a chunk of its sweep
			if st.sweepOn {
				sweep(step, st, 1+rng.IntN(8))
			}
		case p < 88: // restore it from its snapshot, swept or not
			if st.s != nil {
				continue
			}
			st.s = open(st.id, st.span)
			if err := st.s.Restore(bytes.NewReader(st.image)); err != nil {
				fail(step, "restore store %d: %v", st.id, err)
			}
			check(step, st, false)
		default:
			if st.s != nil {
				check(step, st, false)
			}
		}
	}
	for _, st := range stores {
		for st.sweepOn {
			sweep(-1, st, 64)
		}
	}
	ids, err := StoreIDs(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range stores {
		if st.s != nil {
			check(-1, st, true)
			continue
		}
		if n := countVersions(t, db, st.span) + countEntries(t, db, st.span); n != 0 {
			t.Fatalf("seed %d: %d versions and event entries of dropped store %d remain", seed, n, st.id)
		}
		if slices.Contains(ids, st.id) {
			t.Fatalf("seed %d: internal records of dropped store %d remain", seed, st.id)
		}
	}
}
