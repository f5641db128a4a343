package mvcc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestModelMerges runs seeded random sequences on stores sharing one
// pebble, starting from one that counted its revisions: stamped writes,
// compactions, splits at random keys and merges of random adjacent pairs
// (Absorb, whichever side's compaction lags), reopens, and restores of a
// merged store's image into a replica that still has the left store's
// span from before the merge. Every store answers reads at every revision
// and its history as the model says, the absorbed store is marked merged
// into the absorbing one, and a store is resized once split or merged.
// Replay one with -model.seed=N.
func TestModelMerges(t *testing.T) {
	seeds := []uint64{*modelSeed}
	if *modelSeed == 0 {
		seeds = seeds[:0]
		for i := 1; i <= *modelSeeds; i++ {
			seeds = append(seeds, uint64(i))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runMergeModel(t, seed) })
	}
}

// mergeModelStore is one store of runMergeModel and what the model says of
// it: m.hist holds exactly the keys of its span.
type mergeModelStore struct {
	id    uint64
	s     *Store
	m     *model
	taken []*mvccpb.Event
}

func runMergeModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	db := openTestDB(t)
	log := NewEventLog(db)
	keys := []string{"a", "ab", "b", "bc", "c", "d", "dz", "e"}
	fail := func(step int, format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d: %s", seed, step, fmt.Sprintf(format, args...))
	}
	open := func(id uint64) *Store {
		s, err := Open(db, Options{ID: id, Leases: testLeases, EventLog: log})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	stores := []*mergeModelStore{{id: 1, s: open(1), m: &model{rev: 1, compact: -1, hist: map[string][]*mvccpb.KeyValue{}}}}
	// write runs 1–3 random writes on st with stamp (0: counting).
	write := func(step int, st *mergeModelStore, stamp int64) {
		var mine []string
		for _, k := range keys {
			if st.s.Span().Contains([]byte(k)) {
				mine = append(mine, k)
			}
		}
		if len(mine) == 0 {
			return // split at its first key
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
					if sp := st.s.Span(); sp.End != nil && bytes.Compare(end, sp.End) > 0 {
						end = sp.End
					}
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
	compact := func(step int, st *mergeModelStore) {
		if st.m.rev <= max(st.m.compact, 0) {
			return
		}
		rev := st.m.compact + 1 + int64(rng.IntN(int(st.m.rev-st.m.compact)))
		commitBatch(t, st.s, func(b *Batch) error { _, err := b.Compact(Revision(rev)); return err })
		st.m.doCompact(rev)
	}
	check := func(step int, st *mergeModelStore, s *Store, everyRev bool) {
		t.Helper()
		sp := s.Span()
		end := sp.End
		if end == nil {
			end = []byte{0}
		}
		start := sp.Start
		if len(start) == 0 {
			start = []byte{0}
		}
		lo := max(st.m.compact, 1)
		if !everyRev {
			lo = st.m.rev
		}
		for rev := lo; rev <= st.m.rev; rev++ {
			checkRange(t, seed, step, s, st.m, &pb.RangeRequest{Key: start, RangeEnd: end, Revision: rev})
		}
		if int64(s.Rev()) != st.m.rev || int64(s.CompactRev()) != st.m.compact {
			fail(step, "store %d at rev %d compact %d, model at %d compact %d", st.id, s.Rev(), s.CompactRev(), st.m.rev, st.m.compact)
		}
		checkHistory(t, seed, s, st.m, st.taken)
	}
	// Counting: store 1 owns everything.
	for step := 0; step < 10; step++ {
		write(step, stores[0], 0)
		if rng.IntN(5) == 0 {
			compact(step, stores[0])
		}
	}
	if stores[0].s.Resized() {
		t.Fatalf("seed %d: a store that never split is resized", seed)
	}
	next := stores[0].m.rev + 10 // the oracle: stamps unique across stores
	nextID := uint64(2)
	split := func(step int, parent *mergeModelStore) {
		sp := parent.s.Span()
		var inside []string
		for _, k := range keys {
			if bytes.Compare([]byte(k), sp.Start) > 0 && (sp.End == nil || bytes.Compare([]byte(k), sp.End) < 0) {
				inside = append(inside, k)
			}
		}
		if len(inside) == 0 {
			return
		}
		key := inside[rng.IntN(len(inside))]
		commitBatch(t, parent.s, func(b *Batch) error { _, err := b.SplitOff([]byte(key), nextID); return err })
		c := &mergeModelStore{id: nextID, s: open(nextID),
			m: &model{rev: parent.m.rev, compact: parent.m.compact, hist: map[string][]*mvccpb.KeyValue{}}}
		nextID++
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
		stores = append(stores, c)
	}
	absorb := func(step int, left *mergeModelStore) {
		i := slices.IndexFunc(stores, func(o *mergeModelStore) bool {
			return left.s.Span().End != nil && bytes.Equal(o.s.Span().Start, left.s.Span().End)
		})
		if i < 0 {
			return
		}
		right := stores[i]
		before := left.s.Span()
		// A replica that has not applied the merge yet: left's span and
		// records as they are now, in a pebble of its own.
		lagging := rng.IntN(3) == 0
		var old bytes.Buffer
		if lagging {
			snap := left.s.NewSnapshot()
			if _, err := snap.WriteTo(&old); err != nil {
				t.Fatal(err)
			}
			snap.Close()
		}
		commitBatch(t, left.s, func(b *Batch) error { _, err := b.Absorb(right.id); return err })
		compact := max(left.m.compact, right.m.compact)
		for _, side := range []*mergeModelStore{left, right} {
			if side.m.compact < compact {
				side.m.doCompact(compact)
			}
		}
		for k, h := range right.m.hist {
			left.m.hist[k] = h
		}
		left.m.rev, left.m.compact = max(left.m.rev, right.m.rev), compact
		left.taken = append(left.taken, right.taken...)
		slices.SortStableFunc(left.taken, func(a, b *mvccpb.Event) int { return int(a.Kv.ModRevision - b.Kv.ModRevision) })
		stores = slices.Delete(stores, i, i+1)
		if into, ok, err := MergedInto(db, right.id); err != nil || !ok || into != left.id {
			fail(step, "store %d merged into %d, %t, %v; want %d", right.id, into, ok, err, left.id)
		}
		if !left.s.Resized() {
			fail(step, "store %d is not resized after a merge", left.id)
		}
		check(step, left, left.s, false)
		if lagging {
			other := openTestDB(t)
			s, err := Open(other, Options{ID: left.id, Span: before, Leases: testLeases})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Restore(bytes.NewReader(old.Bytes())); err != nil {
				fail(step, "restore the image before the merge: %v", err)
			}
			snap := left.s.NewSnapshot()
			var buf bytes.Buffer
			if _, err := snap.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			snap.Close()
			if err := s.Restore(&buf); err != nil {
				fail(step, "restore the merged image into a replica of %s: %v", fmtSpan(before), err)
			}
			if fmtSpan(s.Span()) != fmtSpan(left.s.Span()) || !s.Resized() {
				fail(step, "restored replica spans %s (resized %t), want %s", fmtSpan(s.Span()), s.Resized(), fmtSpan(left.s.Span()))
			}
			check(step, left, s, true)
		}
	}
	for step := 10; step < 250; step++ {
		st := stores[rng.IntN(len(stores))]
		switch p := rng.IntN(100); {
		case p < 45:
			write(step, st, next)
			next += 4
		case p < 58:
			compact(step, st)
		case p < 70:
			split(step, st)
		case p < 82:
			absorb(step, st)
		case p < 87:
			for _, o := range stores {
				o.s = open(o.id)
				if !o.s.Resized() && o.id != 1 {
					fail(step, "store %d is not resized after a reopen", o.id)
				}
			}
		default:
			check(step, st, st.s, false)
		}
	}
	for _, st := range stores {
		check(-1, st, st.s, true)
	}
}

// TestRestoreWiderImage: a replica that applied the split of a range but
// not the merge that followed (its left store still has the span from
// before the merge, its right store still has the frozen right range) is
// sent an image of the merged store: the restore replaces the union of the
// two spans, so it then answers at every revision — the right range's
// history and the writes to its keys after the merge included — as the
// merged store does, with the merged span, resized, and the same hash. An
// image without the span frame (an older writer's) is taken to hold the
// local span: one of the same span restores as before; the merged one is
// refused, its versions lying outside the local span. A stray
// "image-span" record an older version stored is never streamed.
func TestRestoreWiderImage(t *testing.T) {
	history := func(lagging bool) (*Store, *Store) {
		d := openTestDB(t)
		left, err := Open(d, Options{ID: 1, Leases: testLeases})
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range []string{"a", "m", "b", "n", "m"} {
			commitBatch(t, left, putAt(k, fmt.Sprint(k, i), 0))
		}
		commitBatch(t, left, func(b *Batch) error { _, err := b.SplitOff([]byte("k"), 2); return err })
		right, err := Open(d, Options{ID: 2, Leases: testLeases})
		if err != nil {
			t.Fatal(err)
		}
		commitBatch(t, right, putAt("n", "n10", 10))
		commitBatch(t, left, putAt("b", "b11", 11))
		commitBatch(t, right, func(b *Batch) error {
			_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("m")}, 12)
			return err
		})
		commitBatch(t, right, func(b *Batch) error { _, err := b.Compact(10); return err })
		if lagging {
			return left, right
		}
		commitBatch(t, left, func(b *Batch) error { _, err := b.Absorb(2); return err })
		commitBatch(t, left, putAt("m", "m14", 14))
		commitBatch(t, left, putAt("z", "z15", 15))
		return left, right
	}
	merged, _ := history(false)
	image := func(s *Store) []byte {
		snap := s.NewSnapshot()
		defer snap.Close()
		var buf bytes.Buffer
		if _, err := snap.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	read := func(s *Store, rev int64) string {
		resp, err := s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
		if err != nil {
			return err.Error()
		}
		return fmtRange(resp)
	}
	events := func(s *Store) string {
		var out []string
		if err := s.Events(s.CompactRev(), s.Rev(), func(rev Revision, evs []*mvccpb.Event) bool {
			for _, ev := range evs {
				out = append(out, fmt.Sprintf("%d %s %s", rev, ev.Type, ev.Kv.Key))
			}
			return true
		}); err != nil {
			return err.Error()
		}
		return fmt.Sprint(out)
	}

	left, _ := history(true)
	if err := left.Restore(bytes.NewReader(image(merged))); err != nil {
		t.Fatalf("restore the merged image into the lagging left store: %v", err)
	}
	if fmtSpan(left.Span()) != "[,∞)" || !left.Resized() || left.Rev() != merged.Rev() || left.CompactRev() != merged.CompactRev() {
		t.Fatalf("restored store %s resized=%t rev=%d compact=%d, want [,∞) resized rev=%d compact=%d",
			fmtSpan(left.Span()), left.Resized(), left.Rev(), left.CompactRev(), merged.Rev(), merged.CompactRev())
	}
	for rev := int64(0); rev <= int64(merged.Rev())+1; rev++ {
		if got, want := read(left, rev), read(merged, rev); got != want {
			t.Fatalf("at %d the restored store reads\n%s\nthe merged one\n%s", rev, got, want)
		}
	}
	if got, want := events(left), events(merged); got != want || want == "[]" {
		t.Fatalf("restored history %s, merged %s", got, want)
	}
	h1, _, _, err := left.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	h2, _, _, err := merged.HashKV(0)
	if err != nil || h1 != h2 {
		t.Fatalf("hash of the restored store %d, of the merged one %d (%v)", h1, h2, err)
	}

	// Older images: no span frame.
	_, lright := history(true)
	plain := withoutSpanFrame(t, image(lright))
	fresh, err := Open(openTestDB(t), Options{ID: 2, Span: Span{Start: []byte("k")}, Leases: testLeases})
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Restore(bytes.NewReader(plain)); err != nil {
		t.Fatalf("restore an image without a span frame: %v", err)
	}
	for rev := int64(0); rev <= int64(lright.Rev()); rev++ {
		if got, want := read(fresh, rev), read(lright, rev); got != want {
			t.Fatalf("at %d the old-format restore reads\n%s\nthe store\n%s", rev, got, want)
		}
	}
	lleft, _ := history(true)
	if err := lleft.Restore(bytes.NewReader(withoutSpanFrame(t, image(merged)))); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("an old-format image wider than the local span: %v", err)
	}

	// A stray record of the span frame's name is not streamed.
	commitBatch(t, lright, func(b *Batch) error { b.SetMeta(metaImageSpan, encodeSpan(Span{})); return nil })
	again, err := Open(openTestDB(t), Options{ID: 2, Span: Span{Start: []byte("k")}, Leases: testLeases})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Restore(bytes.NewReader(image(lright))); err != nil {
		t.Fatal(err)
	}
	if v, err := again.GetMeta(metaImageSpan); err != nil || v != nil || fmtSpan(again.Span()) != "[k,∞)" {
		t.Fatalf("after restoring an image of a store with a stray span record: record %x (%v), span %s", v, err, fmtSpan(again.Span()))
	}
}

// withoutSpanFrame rewrites a snapshot stream as a writer that predates
// the span frame wrote it.
func withoutSpanFrame(t *testing.T, data []byte) []byte {
	t.Helper()
	sr := &snapReader{r: bufio.NewReader(bytes.NewReader(data)), crc: crc32.NewIEEE()}
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(sr.r, magic); err != nil || string(magic) != snapshotMagic {
		t.Fatalf("no header: %v", err)
	}
	var out bytes.Buffer
	sw := &snapWriter{w: bufio.NewWriter(&out), crc: crc32.NewIEEE()}
	sw.write(magic)
	for first := true; ; first = false {
		kind, err := sr.ReadByte()
		if err != nil {
			t.Fatal(err)
		}
		if kind == 0 {
			break
		}
		k, err := sr.bytes()
		if err != nil {
			t.Fatal(err)
		}
		v, err := sr.bytes()
		if err != nil {
			t.Fatal(err)
		}
		if first {
			if kind != kindMeta || string(k) != metaImageSpan {
				t.Fatalf("the first frame is %c %q, not the span", kind, k)
			}
			continue
		}
		sw.frame(kind, k, v)
	}
	if err := sw.finish(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
