package watch

import (
	"bytes"

	"github.com/google/btree"
)

// index finds the synced watchers whose range holds a key in O(log n +
// matches): single-key watchers by exact key, range watchers through a
// segment map of their distinct ranges.
//
// The endpoints of every distinct range cut the key space into segments;
// each segment lists the ranges that cover all of it, so a lookup finds
// the one segment holding the key (a btree descent) and reads its list:
//
//	ranges  A=[b,f)  B=[d,∞)  C=[d,e)
//	bounds  b d e f
//	segments  [b,d):{A}  [d,e):{A B C}  [e,f):{A B}  [f,∞):{B}
//	match "e1" → segment [e,f) → A, B
//
// Identical ranges share one entry, so a key is matched once per distinct
// range, not once per watcher. Adding or removing a range touches the
// segments it spans; nested ranges cost one list slot per segment they
// span, which stays small for the few, shallowly nested prefixes that
// watches use in practice.
//
// Invariant: the segment starts are exactly the keys with bounds > 0 (a
// start or end of some distinct range), and a segment's entries are the
// ranges that contain its start.
type index struct {
	keys   map[string]map[*watcher]struct{}
	ranges map[rangeKey]*rangeEntry
	segs   *btree.BTreeG[*segment]
	bounds map[string]int
	all    map[*watcher]struct{}
}

// rangeKey names a distinct range; end "" is unbounded (a bounded range
// has a non-empty end).
type rangeKey struct{ start, end string }

type rangeEntry struct {
	start, end []byte // end empty: unbounded
	watchers   map[*watcher]struct{}
}

// segment covers [start, the next segment's start).
type segment struct {
	start   []byte
	entries map[*rangeEntry]struct{}
}

func lessSegment(a, b *segment) bool { return bytes.Compare(a.start, b.start) < 0 }

func newIndex() index {
	return index{
		keys:   map[string]map[*watcher]struct{}{},
		ranges: map[rangeKey]*rangeEntry{},
		segs:   btree.NewG(16, lessSegment),
		bounds: map[string]int{},
		all:    map[*watcher]struct{}{},
	}
}

func (x *index) has(w *watcher) bool { _, ok := x.all[w]; return ok }

func (x *index) add(w *watcher) {
	x.all[w] = struct{}{}
	if w.end == nil {
		set := x.keys[string(w.key)]
		if set == nil {
			set = map[*watcher]struct{}{}
			x.keys[string(w.key)] = set
		}
		set[w] = struct{}{}
		return
	}
	k := rangeKey{string(w.key), string(w.end)}
	e := x.ranges[k]
	if e == nil {
		e = &rangeEntry{start: w.key, end: w.end, watchers: map[*watcher]struct{}{}}
		x.ranges[k] = e
		x.addRange(e)
	}
	e.watchers[w] = struct{}{}
}

func (x *index) remove(w *watcher) {
	if !x.has(w) {
		return
	}
	delete(x.all, w)
	if w.end == nil {
		set := x.keys[string(w.key)]
		delete(set, w)
		if len(set) == 0 {
			delete(x.keys, string(w.key))
		}
		return
	}
	k := rangeKey{string(w.key), string(w.end)}
	if e := x.ranges[k]; e != nil {
		delete(e.watchers, w)
		if len(e.watchers) == 0 {
			delete(x.ranges, k)
			x.removeRange(e)
		}
	}
}

// match calls fn for every watcher whose range holds key.
func (x *index) match(key []byte, fn func(*watcher)) {
	for w := range x.keys[string(key)] {
		fn(w)
	}
	if seg := x.segmentAt(key); seg != nil {
		for e := range seg.entries {
			for w := range e.watchers {
				fn(w)
			}
		}
	}
}

// segmentAt returns the segment holding key, or nil before the first.
func (x *index) segmentAt(key []byte) *segment {
	var found *segment
	x.segs.DescendLessOrEqual(&segment{start: key}, func(s *segment) bool {
		found = s
		return false
	})
	return found
}

// cut makes at a segment start: the segment holding it is split in two,
// both covered by the same ranges.
func (x *index) cut(at []byte) {
	x.bounds[string(at)]++
	prev := x.segmentAt(at)
	if prev != nil && bytes.Equal(prev.start, at) {
		return
	}
	seg := &segment{start: at, entries: map[*rangeEntry]struct{}{}}
	if prev != nil {
		for e := range prev.entries {
			seg.entries[e] = struct{}{}
		}
	}
	x.segs.ReplaceOrInsert(seg)
}

// uncut drops one use of at as a boundary; when none is left, its segment
// joins the one before (both are covered by the same ranges then, since
// no range starts or ends at at).
func (x *index) uncut(at []byte) {
	n := x.bounds[string(at)] - 1
	if n > 0 {
		x.bounds[string(at)] = n
		return
	}
	delete(x.bounds, string(at))
	x.segs.Delete(&segment{start: at})
}

// span calls fn for every segment inside e.
func (x *index) span(e *rangeEntry, fn func(*segment)) {
	visit := func(s *segment) bool { fn(s); return true }
	if len(e.end) == 0 {
		x.segs.AscendGreaterOrEqual(&segment{start: e.start}, visit)
		return
	}
	x.segs.AscendRange(&segment{start: e.start}, &segment{start: e.end}, visit)
}

func (x *index) addRange(e *rangeEntry) {
	x.cut(e.start)
	if len(e.end) != 0 {
		x.cut(e.end)
	}
	x.span(e, func(s *segment) { s.entries[e] = struct{}{} })
}

func (x *index) removeRange(e *rangeEntry) {
	x.span(e, func(s *segment) { delete(s.entries, e) })
	x.uncut(e.start)
	if len(e.end) != 0 {
		x.uncut(e.end)
	}
}
