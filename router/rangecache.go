package router

import (
	"bytes"
	"sync"
	"sync/atomic"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// RangeCache is the range map as this member routes by it:
// the ranges' descriptors in a placement.Table, looked up by key in
// O(log n), and by id this member's replica of each as the router uses it
// (RangeEntry). The descriptors are the replicas' own (Local.Descriptor):
// a range is put in when this member starts one or a split changes or
// makes one (PutRanges, which makes its client; Put for entries made
// elsewhere), and a range refusing keys outside it
// (shard.OutsideRangeError) with a newer generation than the cache holds
// makes the router read them again (Refresh).
//
//	put r1 [,m) g1, r2 [m,) g1     → lookup "p" → r2
//	split applies: r2 [m,t) g2, r3 [t,) g2; put r2, r3
//	lookup "u" → r3; spanning [a, z) → r1 [a,m) r2 [m,t) r3 [t,z)
//
// Between a split applying here and its new range being put, or while a
// range split off elsewhere is joined (a member back from being away),
// the descriptors may leave a gap: a key in it belongs to no range here
// (lookups check that the range holds the key), as with the replicas'
// own descriptors.
//
// A merge committed here swaps the two entries for the merged one at once
// (Merge); the cache remembers each range merged away, so that requests
// and leases naming it find the ranges holding its keys now (Successor).
//
// Single-group mode's map is static (NewStaticRangeCache): range 1 alone,
// the whole key space, for good. Its range's revision is the cluster's, so
// the router sends it reads at a revision, compactions and hashes as they
// come — no oracle revision, no waiting for a closed revision — and shows
// no range map (Server.Ranges).
//
// Concurrency: lookups read an immutable view without locking; Put and
// Refresh build a new view under mu and swap it in (ranges change
// rarely: a start, a split).
type RangeCache struct {
	mu   sync.Mutex // serializes Put and Refresh
	view atomic.Pointer[rangeView]
	// static: single-group mode's map, which never changes.
	static bool
	// fwd makes the clients of the ranges put in with PutRanges.
	fwd *Forwarder
}

// RangeEntry is one of this member's ranges as the node puts it in the
// cache.
type RangeEntry struct {
	// Local is this member's replica; its descriptor is the range's. nil:
	// the range has no replica here (PutMap), Descriptor is the map's.
	Local Local
	// Descriptor is a range without a replica here as the map has it.
	Descriptor *placementpb.RangeDescriptor
	// Shard is the range as requests use it (through its leader): a
	// RangeClient. Its dynamic type must be comparable.
	Shard RangeShard
	// Watches is the range's watch hub here.
	Watches *watch.Hub
	// Kick asks the range to raise its closed revision to rev soon; nil:
	// it rises on its own schedule only.
	Kick func(rev mvcc.Revision)
	// Counting reports whether this member's replica numbers the range's
	// revisions itself (shard.Range.Counting); nil: it does not.
	Counting func() bool
}

// descriptor is the range as the entry has it: its replica's, else the
// map's.
func (e RangeEntry) descriptor() *placementpb.RangeDescriptor {
	if e.Local != nil {
		return e.Local.Descriptor()
	}
	return e.Descriptor
}

// rangeView is one immutable state of the cache.
//
// Invariant: table holds entries[id].Local.Descriptor() as read when the
// view was built, for every id of entries.
type rangeView struct {
	table   *placement.Table
	entries map[shard.RangeID]RangeEntry
	gens    map[shard.RangeID]uint64 // the generation table holds, by range id
	ids     map[Shard]shard.RangeID  // range ids by their entry's Shard
	// first is the entry of the range starting at the empty key (range
	// 1), nil if none.
	first *RangeEntry
	// gone holds the ranges known to be merged away (Successor).
	//
	// Invariant: no id is both in gone and in entries.
	gone map[shard.RangeID]tombstone
}

// tombstone is what the cache knows of a range merged away: the range
// that absorbed it (0: unknown) and the span it had (ok false: unknown).
type tombstone struct {
	into shard.RangeID
	span mvcc.Span
	ok   bool
}

// NewRangeCache returns an empty cache.
func NewRangeCache() *RangeCache {
	c := &RangeCache{}
	c.view.Store(&rangeView{table: placement.NewTable()})
	return c
}

// NewRangeCacheVia returns an empty cache of this member's ranges, whose
// clients (RangeClient, made as PutRanges first puts each in) reach the
// ranges' leaders through fwd.
func NewRangeCacheVia(fwd *Forwarder) *RangeCache {
	c := NewRangeCache()
	c.fwd = fwd
	return c
}

// LocalRange is this member's replica r as the router reaches it.
func LocalRange(r *shard.Range) Local { return localRange{r} }

// localRange is a shard.Range as a Local (shard's Replica as the router's).
type localRange struct{ *shard.Range }

func (l localRange) Replica() Replica { return l.Range.Replica() }

// NewStaticRangeCache returns single-group mode's map: e, whose range
// spans the whole key space and never splits, alone, for good (Put and
// Refresh leave it as it is).
func NewStaticRangeCache(e RangeEntry) *RangeCache {
	c := &RangeCache{static: true}
	c.view.Store(buildView(map[shard.RangeID]RangeEntry{shard.RangeID(e.descriptor().Id): e}))
	return c
}

// Put adds ranges, or replaces those of the same id, with their
// descriptors as their replicas have them now.
func (c *RangeCache) Put(entries ...RangeEntry) {
	c.update(func(all map[shard.RangeID]RangeEntry) {
		for _, e := range entries {
			all[shard.RangeID(e.descriptor().Id)] = e
		}
	})
}

// update replaces the cache's view with one made from a copy of its
// entries after change edits them (nothing for a static map).
func (c *RangeCache) update(change func(all map[shard.RangeID]RangeEntry)) {
	c.updateGone(func(all map[shard.RangeID]RangeEntry, _ map[shard.RangeID]tombstone) { change(all) })
}

// updateGone is update with the ranges merged away too (a copy, for
// change to add to).
func (c *RangeCache) updateGone(change func(all map[shard.RangeID]RangeEntry, gone map[shard.RangeID]tombstone)) {
	if c.static {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.view.Load()
	all := make(map[shard.RangeID]RangeEntry, len(old.entries)+1)
	for id, e := range old.entries {
		all[id] = e
	}
	gone := make(map[shard.RangeID]tombstone, len(old.gone))
	for id, t := range old.gone {
		gone[id] = t
	}
	change(all, gone)
	for id := range all {
		delete(gone, id) // never both: a range id is never used again, but a map may be older than a merge
	}
	v := buildView(all)
	v.gone = gone
	c.view.Store(v)
}

// PutRanges adds this member's replicas rs, or replaces those of the same
// id, with their descriptors as they have them now. A range put in before
// keeps its entry (its client, which the router may hold on to), only its
// descriptor read again; a new one gets a client through the cache's
// Forwarder (NewRangeCacheVia), its hub and its closer's kick.
func (c *RangeCache) PutRanges(rs ...*shard.Range) {
	c.update(func(all map[shard.RangeID]RangeEntry) {
		for _, r := range rs {
			if e, ok := all[r.ID()]; ok && e.Local == LocalRange(r) {
				continue
			}
			all[r.ID()] = c.localEntry(r)
		}
	})
}

// localEntry is a new entry of this member's replica r.
func (c *RangeCache) localEntry(r *shard.Range) RangeEntry {
	l := LocalRange(r)
	return RangeEntry{Local: l, Shard: c.fwd.Range(l), Watches: r.Hub(), Kick: r.WantClosed, Counting: r.Counting}
}

// PutMap routes by the range map ds (the placement group's, as this
// member's replica of it has it): a range that the map does not name this
// member in gets an entry of its own, whose client (Forwarder.RemoteRange) reads through the
// members holding it and writes through its leader; a range of the map
// already remote here keeps its client, its descriptor and leader hint
// replaced; a remote range the map no longer has leaves. Ranges with a
// replica here are left to PutRanges and Remove: their replicas'
// descriptors stay what the cache routes them by.
//
//	local r1 [,m); map r1 [,m) r2 [m,) on members 2 3 4 → lookup "p" → r2, remote
func (c *RangeCache) PutMap(ds []*placementpb.RangeDescriptor) {
	if c.static {
		return
	}
	c.updateGone(func(all map[shard.RangeID]RangeEntry, gone map[shard.RangeID]tombstone) {
		inMap := make(map[shard.RangeID]bool, len(ds))
		for _, d := range ds {
			id := shard.RangeID(d.Id)
			inMap[id] = true
			e, ok := all[id]
			if ok && e.Local != nil {
				continue
			}
			if rc, _ := e.Shard.(*RangeClient); ok && rc != nil {
				rc.setDescriptor(d)
				e.Descriptor = d
				all[id] = e
				continue
			}
			if _, mine := placement.ReplicaOf(d, c.fwd.self); mine {
				// This member is to run it (a split applying here, a
				// replica starting): PutRanges puts it in.
				continue
			}
			rc := c.fwd.RemoteRange(d)
			all[id] = RangeEntry{Descriptor: d, Shard: rc, Counting: rc.counting}
		}
		for id, e := range all {
			if e.Local == nil && !inMap[id] {
				// Ranges leave the map only by merging away: its
				// keys are where its span is now (Successor).
				gone[id] = tombstone{into: gone[id].into, span: shard.SpanOf(e.descriptor()), ok: true}
				delete(all, id)
			}
		}
	})
}

// Remove takes ranges ids out of the cache: this member no longer holds
// their replicas (raft removed them here), so their keys belong to no range
// here (a static map is left as it is).
//
//	r1 [,m) r2 [m,); remove r2 → lookup "p" → none
func (c *RangeCache) Remove(ids ...shard.RangeID) {
	c.update(func(all map[shard.RangeID]RangeEntry) {
		for _, id := range ids {
			delete(all, id)
		}
	})
}

// Client returns the client of range id that PutRanges made, nil if the
// cache has none.
func (c *RangeCache) Client(id shard.RangeID) *RangeClient {
	rc, _ := c.view.Load().entries[id].Shard.(*RangeClient)
	return rc
}

// Refresh reads the replicas' descriptors again if d, a range's answer, is
// newer than what the cache holds of it. A d of a range without a replica
// here that grew over older ranges without one here — a merge, told by a
// member holding the merged range before the map shows it — is taken in:
// its entry's descriptor becomes d and the ranges it covers leave,
// merged into it (Successor).
//
//	remote r2 [f,m) g1, r3 [m,) g1; Refresh(r2 [f,) g2) → r2 [f,) g2; r3 gone into r2
func (c *RangeCache) Refresh(d *placementpb.RangeDescriptor) {
	if d == nil || c.static {
		return
	}
	if gen, ok := c.view.Load().gens[shard.RangeID(d.Id)]; ok && gen >= d.Generation {
		return
	}
	c.updateGone(func(all map[shard.RangeID]RangeEntry, gone map[shard.RangeID]tombstone) {
		c.takeMerged(all, gone, d)
	})
}

// takeMerged is Refresh's taking in of d, a newer descriptor of a range
// without a replica here: only if d covers its entry's span (a split
// narrows a range, and the keys it gave away would have no range here
// until the map names their new one), and every other entry d meets is
// of a range without a replica here, older than d (a key's ranges'
// generations grow with each split and merge, so the older one is
// gone), and within d.
func (c *RangeCache) takeMerged(all map[shard.RangeID]RangeEntry, gone map[shard.RangeID]tombstone, d *placementpb.RangeDescriptor) {
	id := shard.RangeID(d.Id)
	e, ok := all[id]
	span := shard.SpanOf(d)
	switch {
	case ok && e.Local != nil:
		return // the replica's descriptor is the one to route by
	case ok && !spanCovers(span, shard.SpanOf(e.descriptor())):
		return
	case !ok && (c.fwd == nil || isReplicaOf(d, c.fwd.self)):
		return // a range starting here: PutRanges puts it in
	}
	var covered []shard.RangeID
	for oid, o := range all {
		od := o.descriptor()
		if oid == id || !overlaps(span, shard.SpanOf(od)) {
			continue
		}
		if o.Local != nil || od.Generation >= d.Generation || !spanCovers(span, shard.SpanOf(od)) {
			return
		}
		covered = append(covered, oid)
	}
	for _, oid := range covered {
		gone[oid] = tombstone{into: id, span: shard.SpanOf(all[oid].descriptor()), ok: true}
		delete(all, oid)
	}
	if rc, _ := e.Shard.(*RangeClient); ok && rc != nil {
		rc.setDescriptor(d)
		e.Descriptor = d
		all[id] = e
		return
	}
	rc := c.fwd.RemoteRange(d)
	all[id] = RangeEntry{Descriptor: d, Shard: rc, Counting: rc.counting}
}

// isReplicaOf reports whether d names member m among its replicas.
func isReplicaOf(d *placementpb.RangeDescriptor, m placement.NodeID) bool {
	_, ok := placement.ReplicaOf(d, m)
	return ok
}

// spanCovers reports whether span a holds every key of b (covers, in
// mvcc's form).
func spanCovers(a, b mvcc.Span) bool { return covers(a.Start, a.End, b.Start, b.End) }

// overlaps reports whether spans a and b share a key (nil End: ∞).
func overlaps(a, b mvcc.Span) bool {
	return (a.End == nil || bytes.Compare(b.Start, a.End) < 0) && (b.End == nil || bytes.Compare(a.Start, b.End) < 0)
}

// Merge records that this member's replica left absorbed range right (a
// merge committed here, Joiner.OnMerge), in one swap of the view: left's
// entry routes by its descriptor now (the merged span, which Set.Merge
// gave it), right's leaves — never two entries over right's keys — and
// right is known as merged into left (Successor).
//
//	r1 [,f) g1, r2 [f,m) g1, r3 [m,) g1; r2 absorbs r3 → r1 [,f), r2 [f,) g2; 3 gone into 2
func (c *RangeCache) Merge(left *shard.Range, right shard.RangeID) {
	c.merge(LocalRange(left), func() RangeEntry { return c.localEntry(left) }, right)
}

// merge is Merge of this member's replica left, whose entry, if the cache
// has none of it, is entry().
func (c *RangeCache) merge(left Local, entry func() RangeEntry, right shard.RangeID) {
	id := shard.RangeID(left.Descriptor().Id)
	c.updateGone(func(all map[shard.RangeID]RangeEntry, gone map[shard.RangeID]tombstone) {
		if e, ok := all[id]; !ok || e.Local != left {
			all[id] = entry()
		}
		t := tombstone{into: id}
		if e, ok := all[right]; ok {
			t.span, t.ok = shard.SpanOf(e.descriptor()), true
			delete(all, right)
		} else if old, ok := gone[right]; ok && old.ok {
			t.span, t.ok = old.span, true
		}
		gone[right] = t
	})
}

// PutMerged takes in the range map's tombstones (placementpb.State's
// merged): each range merged away, into the range that absorbed it, so
// that a range this member never saw merge (it held neither, or
// restarted since) still has a Successor.
func (c *RangeCache) PutMerged(ts []*placementpb.Merged) {
	c.updateGone(func(all map[shard.RangeID]RangeEntry, gone map[shard.RangeID]tombstone) {
		for _, m := range ts {
			id := shard.RangeID(m.Range)
			if _, ok := all[id]; ok {
				continue // the map this member routes by is older than the merge
			}
			t := gone[id]
			t.into = shard.RangeID(m.Into)
			gone[id] = t
		}
	})
}

// Successor returns the ranges holding range id's keys now: id itself
// while the cache has it; for a range merged away, the ranges the cache
// has over the span it had (which the range it merged into may have split
// since), or, if its span is unknown here (only the map's tombstone names
// it), the successor of the range it merged into; nil if the cache knows
// nothing of id.
//
//	r2 [f,m) absorbed r3 [m,t), then split at p into r2 [f,p), r9 [p,)
//	→ Successor(3) = 2, 9; Successor(2) = 2
func (c *RangeCache) Successor(id shard.RangeID) []shard.RangeID {
	v := c.view.Load()
	for hops := 0; hops <= len(v.gone); hops++ { // a chain of tombstones ends
		if _, ok := v.entries[id]; ok {
			return []shard.RangeID{id}
		}
		t, ok := v.gone[id]
		if !ok {
			return nil
		}
		if t.ok {
			var out []shard.RangeID
			v.table.EachOverlapping(t.span.Start, t.span.End, func(d *placementpb.RangeDescriptor) bool {
				if overlaps(t.span, shard.SpanOf(d)) {
					out = append(out, shard.RangeID(d.Id))
				}
				return true
			})
			if len(out) > 0 {
				return out
			}
		}
		if t.into == 0 {
			return nil
		}
		id = t.into
	}
	return nil
}

// Remote reports whether range id is in the cache without a replica here.
func (c *RangeCache) Remote(id shard.RangeID) bool {
	e, ok := c.view.Load().entries[id]
	return ok && e.Local == nil
}

func buildView(entries map[shard.RangeID]RangeEntry) *rangeView {
	v := &rangeView{table: placement.NewTable(), entries: entries, gens: make(map[shard.RangeID]uint64, len(entries)),
		ids: make(map[Shard]shard.RangeID, len(entries))}
	st := &placementpb.State{}
	for id, e := range entries {
		d := e.descriptor()
		st.Ranges = append(st.Ranges, d)
		v.gens[id] = d.Generation
		v.ids[e.Shard] = id
		if len(d.Start) == 0 {
			v.first = &e
		}
	}
	v.table.Load(st)
	return v
}

// part is range d of v as the router uses it.
func (v *rangeView) part(d *placementpb.RangeDescriptor) RangePart {
	id := shard.RangeID(d.Id)
	e := v.entries[id]
	return RangePart{ID: id, Start: d.Start, End: d.End, Shard: e.Shard, Watches: e.Watches, Kick: e.Kick}
}

// Lookup returns the range holding key; ok is false if none here does.
func (c *RangeCache) Lookup(key []byte) (p RangePart, ok bool) {
	v := c.view.Load()
	var d *placementpb.RangeDescriptor
	v.table.EachOverlapping(key, nil, func(first *placementpb.RangeDescriptor) bool {
		d = first
		return false
	})
	if d == nil || (len(d.End) > 0 && bytes.Compare(key, d.End) >= 0) {
		return RangePart{}, false
	}
	return v.part(d), true
}

// Spanning returns the ranges that etcd's [key, end) meets, in key order
// (end empty: the key alone; "\x00": to the end), by the same clipping
// that cuts a request into the ranges' parts (clipRange).
func (c *RangeCache) Spanning(key, end []byte) []RangePart {
	v := c.view.Load()
	var hi []byte // the table's end: nil is ∞
	switch {
	case len(end) == 0:
		hi = append(append(make([]byte, 0, len(key)+1), key...), 0)
	case len(end) == 1 && end[0] == 0:
	default:
		hi = end
	}
	var out []RangePart
	// The view's table never changes once published: its descriptors are
	// read in place, not copied per request.
	v.table.EachOverlapping(key, hi, func(d *placementpb.RangeDescriptor) bool {
		var stop []byte
		if len(d.End) > 0 {
			stop = d.End
		}
		if _, _, ok := clipRange(key, end, d.Start, stop); ok {
			out = append(out, v.part(d))
		}
		return true
	})
	return out
}

// Counting reports whether the key space is one range that numbers its
// revisions itself (DESIGN.md "Keys, values, revisions"), so that the
// range's revision is the cluster's: for good over a static map
// (single-group mode); otherwise while this member's replica of the range
// at the start of the key space — range 1 — counts (RangeEntry.Counting),
// which it does while it spans the whole key space and never again once a
// split has applied here.
func (c *RangeCache) Counting() bool {
	if c.static {
		return true
	}
	e := c.view.Load().first
	return e != nil && e.Counting != nil && e.Counting()
}

// All returns every range, in key order.
func (c *RangeCache) All() []RangePart {
	v := c.view.Load()
	var out []RangePart
	v.table.EachOverlapping(nil, nil, func(d *placementpb.RangeDescriptor) bool {
		out = append(out, v.part(d))
		return true
	})
	return out
}

// id returns the id of the range whose entry's Shard is sh.
func (c *RangeCache) id(sh Shard) (shard.RangeID, bool) {
	id, ok := c.view.Load().ids[sh]
	return id, ok
}

// Local returns this member's replica of range id, nil if it has none.
func (c *RangeCache) Local(id shard.RangeID) Local {
	if e, ok := c.view.Load().entries[id]; ok {
		return e.Local
	}
	return nil
}
