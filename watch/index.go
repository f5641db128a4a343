package watch

import (
	"bytes"

	"github.com/google/btree"
)

// index finds the synced watchers whose range holds a key: single-key
// watchers by exact key, range watchers through a btree of their distinct
// ranges ordered by start key. Identical ranges share one entry, so a key
// is matched once per distinct range, not once per watcher.
//
// A lookup visits the ranges whose start is at or below the key; ranges
// that end before the key are skipped. Watch ranges in practice are few
// distinct prefixes with many watchers each, which this serves well.
type index struct {
	keys   map[string]map[*watcher]struct{}
	ranges *btree.BTreeG[*rangeEntry]
	all    map[*watcher]struct{}
}

type rangeEntry struct {
	start, end []byte // end empty: unbounded
	watchers   map[*watcher]struct{}
}

func lessRange(a, b *rangeEntry) bool {
	if c := bytes.Compare(a.start, b.start); c != 0 {
		return c < 0
	}
	// An unbounded end sorts last.
	switch {
	case len(a.end) == 0:
		return false
	case len(b.end) == 0:
		return true
	}
	return bytes.Compare(a.end, b.end) < 0
}

func newIndex() index {
	return index{keys: map[string]map[*watcher]struct{}{}, ranges: btree.NewG(16, lessRange), all: map[*watcher]struct{}{}}
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
	probe := &rangeEntry{start: w.key, end: w.end}
	e, ok := x.ranges.Get(probe)
	if !ok {
		e = &rangeEntry{start: w.key, end: w.end, watchers: map[*watcher]struct{}{}}
		x.ranges.ReplaceOrInsert(e)
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
	if e, ok := x.ranges.Get(&rangeEntry{start: w.key, end: w.end}); ok {
		delete(e.watchers, w)
		if len(e.watchers) == 0 {
			x.ranges.Delete(e)
		}
	}
}

// match calls fn for every watcher whose range holds key.
func (x *index) match(key []byte, fn func(*watcher)) {
	for w := range x.keys[string(key)] {
		fn(w)
	}
	x.ranges.DescendLessOrEqual(&rangeEntry{start: key}, func(e *rangeEntry) bool {
		if len(e.end) == 0 || bytes.Compare(key, e.end) < 0 {
			for w := range e.watchers {
				fn(w)
			}
		}
		return true
	})
}
