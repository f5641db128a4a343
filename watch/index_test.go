package watch

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestIndexModel adds and removes random watchers (single keys, bounded
// ranges, from-key ranges, many sharing ranges) and checks every lookup
// against a scan of all watchers, and the segment invariant after each
// step. The seed is printed on failure for replay.
func TestIndexModel(t *testing.T) {
	for seed := uint64(1); seed <= 50; seed++ {
		r := rand.New(rand.NewPCG(seed, 0))
		x := newIndex()
		var live []*watcher
		keys := []string{"", "a", "a1", "b", "b1", "b2", "c", "d", "d9", "e", "f"}
		key := func() []byte { return []byte(keys[1+r.IntN(len(keys)-1)]) }
		for step := 0; step < 400; step++ {
			if len(live) > 0 && r.IntN(100) < 40 {
				i := r.IntN(len(live))
				x.remove(live[i])
				live = slices.Delete(live, i, i+1)
			} else {
				w := &watcher{id: ID(step), key: key()}
				switch r.IntN(3) {
				case 0: // one key
				case 1:
					w.end = []byte{} // from key on
				case 2:
					w.end = key()
					if bytes.Compare(w.key, w.end) >= 0 {
						w.end = append(slices.Clone(w.key), 0)
					}
				}
				x.add(w)
				live = append(live, w)
			}
			if err := checkIndex(&x, live); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			for _, k := range keys {
				for _, probe := range [][]byte{[]byte(k), append([]byte(k), 0), append([]byte(k), 'z')} {
					var got, want []ID
					x.match(probe, func(w *watcher) { got = append(got, w.id) })
					for _, w := range live {
						if w.contains(probe) {
							want = append(want, w.id)
						}
					}
					slices.Sort(got)
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Fatalf("seed %d step %d: match(%q) = %v, want %v", seed, step, probe, got, want)
					}
				}
			}
		}
		for _, w := range live {
			x.remove(w)
		}
		if x.segs.Len() != 0 || len(x.bounds) != 0 || len(x.ranges) != 0 || len(x.keys) != 0 || len(x.all) != 0 {
			t.Fatalf("seed %d: index not empty after removing every watcher: %d segments, %d bounds", seed, x.segs.Len(), len(x.bounds))
		}
	}
}

// checkIndex verifies the invariant: segment starts are the bounds, and
// each segment lists exactly the ranges containing its start.
func checkIndex(x *index, live []*watcher) error {
	var starts []string
	var err error
	x.segs.Ascend(func(s *segment) bool {
		starts = append(starts, string(s.start))
		for k, e := range x.ranges {
			in := bytes.Compare(s.start, e.start) >= 0 && (len(e.end) == 0 || bytes.Compare(s.start, e.end) < 0)
			if _, listed := s.entries[e]; in != listed {
				err = fmt.Errorf("segment %q: range %v listed=%v, contains=%v", s.start, k, listed, in)
				return false
			}
		}
		if len(s.entries) > len(x.ranges) {
			err = fmt.Errorf("segment %q lists a removed range", s.start)
			return false
		}
		return true
	})
	if err != nil {
		return err
	}
	var bounds []string
	for b := range x.bounds {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	if !slices.Equal(starts, bounds) {
		return fmt.Errorf("segment starts %q, bounds %q", starts, bounds)
	}
	return nil
}

// BenchmarkIndexMatch matches keys against 10,000 distinct range watchers
// (prefixes of 10,000 services): a lookup costs a btree descent, not a
// scan of the ranges that start before the key.
func BenchmarkIndexMatch(b *testing.B) {
	x := newIndex()
	const n = 10000
	for i := 0; i < n; i++ {
		p := []byte(fmt.Sprintf("/svc/%05d/", i))
		end := slices.Clone(p)
		end[len(end)-1]++
		x.add(&watcher{id: ID(i), key: p, end: end})
	}
	probes := make([][]byte, 1024)
	for i := range probes {
		probes[i] = []byte(fmt.Sprintf("/svc/%05d/instance", (i*7919)%n))
	}
	b.ResetTimer()
	matched := 0
	for i := 0; i < b.N; i++ {
		x.match(probes[i%len(probes)], func(*watcher) { matched++ })
	}
	if matched != b.N {
		b.Fatalf("matched %d watchers for %d lookups", matched, b.N)
	}
}
