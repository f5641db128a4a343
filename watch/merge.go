package watch

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// Part is one range's share of a watch in sharded mode: the range's hub
// and the watched keys inside the range, in etcd's form (RangeEnd empty:
// Key alone; "\x00": to the end of the key space).
type Part struct {
	Hub           *Hub
	Key, RangeEnd []byte
	// Kick, if set, asks the range to raise its closed revision to rev
	// soon (a merged watch waits on it); it must not block.
	Kick func(rev mvcc.Revision)
}

// Splitter cuts the keys of a watch, in etcd's form, into the parts of the
// ranges they lie in, in key order.
type Splitter func(key, rangeEnd []byte) []Part

// Merger holds the merged streams of a node in sharded mode, for the
// progress notifications it sends on etcd's interval.
type Merger struct {
	mu      sync.Mutex
	streams map[*Merged]struct{}
	fans    map[fanKey]*fan // see fan.go
}

// NewMerger returns a Merger without streams.
func NewMerger() *Merger {
	return &Merger{streams: map[*Merged]struct{}{}, fans: map[fanKey]*fan{}}
}

// NewStream opens a client stream whose watches split by split; each
// range's share of it is a stream of that range's hub whose queue holds at
// most limit responses. While split cuts the whole key space into one
// part (one range), the stream is direct (see Merged).
func (mg *Merger) NewStream(limit int, split Splitter) *Merged {
	return mg.newStream(limit, split, true)
}

// NewMergedStream is NewStream for a stream that is never direct, even
// over one range: progress requests are answered at the revision asked
// for (RequestProgressAt), once every watch has passed it, and a
// progress response is the only news of a watch's mark rising without
// events (a feed to another member, router/feed.go, relays both). Its
// watchers stay on their hubs through Merger.Move (a feed serves only
// from the replicas of its member): it ends when such a hub closes.
func (mg *Merger) NewMergedStream(limit int, split Splitter) *Merged {
	return mg.newStream(limit, split, false)
}

func (mg *Merger) newStream(limit int, split Splitter, direct bool) *Merged {
	m := &Merged{mg: mg, limit: limit, split: split, wake: make(chan struct{}, 1),
		subs: map[*Hub]*subStream{}, watchers: map[ID]*merged{}, pinned: !direct}
	// Registered before split is asked, so that a split applying now
	// either shows in split's answer or reaches this stream (Split).
	m.mu.Lock()
	defer m.mu.Unlock()
	mg.mu.Lock()
	mg.streams[m] = struct{}{}
	mg.mu.Unlock()
	if ps := split([]byte{0}, []byte{0}); direct && len(ps) == 1 {
		m.direct = m.sub(ps[0])
	}
	return m
}

// ProgressTick sends, to every merged watcher that asked for progress
// notifications and was sent no event since the last tick, a notification
// at the revision up to which it has been sent everything.
func (mg *Merger) ProgressTick() {
	for _, m := range mg.all() {
		m.progressTick()
	}
}

// Merged is one client's watch stream in sharded mode. Each watch has a
// watcher in every range it reaches (through one hub stream per range);
// their events are merged in revision order and released up to the lowest
// of the parts' marks — the revision below which a part has delivered
// everything, which rises with its range's writes and closed revision —
// so a watch over several ranges sees exactly etcd's sequence of events.
//
// Direct: while the node has one range (the splitter cuts the whole key
// space into one part when the stream opens), the stream is that range's
// hub stream as it is — its watches are the hub's watchers, with the
// client's ids, and Next hands out the hub's responses as queued, so a
// client sees exactly what a hub stream (and etcd) sends: a response per
// revision with its revision in the header, catch-ups in one, progress
// at the hub's revision. A split of the range first turns the watches into
// merged ones of one part each (undirectLocked), then moves them as any.
//
// The client's goroutines call Create, Cancel and RequestProgress; its
// sender calls Next, which does the merging. mu guards every field; the
// lock order is Merged.mu, then a hub's mu.
type Merged struct {
	mg    *Merger
	limit int
	split Splitter
	// wake (size 1) is signalled by every hub stream of this stream and by
	// the hubs' revision waiters: Next has work.
	wake chan struct{}

	mu       sync.Mutex
	subs     map[*Hub]*subStream
	watchers map[ID]*merged
	nextID   ID
	out      []*pb.WatchResponse
	// progress holds the revisions of progress requests not yet answered,
	// in the order they came.
	progress []mvcc.Revision
	closed   bool
	// direct is the one range's hub stream while the stream is direct
	// (see Direct), nil otherwise; it is in subs too, without parts.
	direct *subStream
	// pinned: Merger.Move leaves the stream's watchers where they are
	// (NewMergedStream).
	pinned bool
}

// subStream is the Merged stream's stream on one range's hub.
type subStream struct {
	s    *Stream
	kick func(mvcc.Revision)
	// rev is the hub's revision at the last drain.
	rev mvcc.Revision
	// waitFor is the revision a WaitRev is registered for (0: none).
	waitFor mvcc.Revision
	parts   map[ID]*part // by the hub stream's watcher id
}

// merged is one client watch.
type merged struct {
	id        ID
	parts     []*part
	released  mvcc.Revision // every event at or below it has been queued
	progress  bool
	sentEvent bool // events sent since the last progress tick
	// compacted: canceled for compaction; as in etcd, the id stays taken,
	// with nothing more sent, until the client cancels it.
	compacted bool
	// filters and prevKV are the create request's, for the watchers a
	// split adds; key and end its keys.
	filters  []pb.WatchCreateRequest_FilterType
	prevKV   bool
	key, end []byte
	// A watch coalesced with identical ones has no parts of its own but
	// its share of a fan (fan.go): fanEvs taken from it, not released;
	// fanMark, below which the fan has handed it everything; fanWant, the
	// revision it last asked the fan to get to.
	fan              *fanSub
	fanEvs           []*mvccpb.Event
	fanMark, fanWant mvcc.Revision
}

// part is a merged watch's watcher on one range.
type part struct {
	w   *merged
	sub *subStream
	id  ID
	// key and end are the part's keys, in etcd's form.
	key, end []byte
	mark     mvcc.Revision   // everything at or below it has been drained
	evs      []*mvccpb.Event // drained, not yet released, in revision order
}

// rev returns the highest revision of the hubs of parts.
func hubsRev(parts []Part) mvcc.Revision {
	var rev mvcc.Revision
	for _, p := range parts {
		rev = max(rev, p.Hub.Rev())
	}
	return rev
}

// REQUIRES: m.mu
func (m *Merged) push(r *pb.WatchResponse) {
	m.out = append(m.out, r)
	wake(m.wake)
}

// REQUIRES: m.mu
func (m *Merged) sub(p Part) *subStream {
	s := m.subs[p.Hub]
	if s == nil {
		s = &subStream{s: p.Hub.newStream(m.limit, m.wake), kick: p.Kick, parts: map[ID]*part{}}
		m.subs[p.Hub] = s
	}
	return s
}

// Create starts a watch as etcd's WatchCreateRequest asks, with a watcher
// in every range its keys reach, and queues its created response (or
// etcd's refusal), which it also returns. A watch from the current
// revision starts, in every range, above the highest revision any range
// has reached, so that it misses no write that starts after it.
func (m *Merged) Create(req *pb.WatchCreateRequest) *pb.WatchResponse { return m.create(req, 0) }

// CreateAt is Create with now as the current revision: a watch from now
// (StartRevision 0) starts at now+1 in every range, and the created
// response carries now. The caller passes the cluster's current revision
// once every range the watch reaches has closed it (every write at or below
// it has applied there, none is still to come), so that the watch replays
// no write that completed before it and misses none that completes after.
// A stream still direct (one range) creates as Create does.
func (m *Merged) CreateAt(req *pb.WatchCreateRequest, now mvcc.Revision) *pb.WatchResponse {
	return m.create(req, now)
}

func (m *Merged) create(req *pb.WatchCreateRequest, at mvcc.Revision) *pb.WatchResponse {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct != nil {
		return m.direct.s.Create(req)
	}
	key, _, reason := checkCreate(req)
	var parts []Part
	if reason == "" {
		if parts = m.split(key, req.RangeEnd); len(parts) == 0 {
			reason = ErrEmptyRange.Error()
		}
	}
	id := ID(req.WatchId)
	if reason == "" && id != 0 && m.watchers[id] != nil {
		reason = ErrDuplicateID.Error()
	}
	if reason != "" {
		return m.refuseLocked(reason)
	}
	if id == 0 { // etcd's AutoWatchID
		for m.watchers[m.nextID] != nil {
			m.nextID++
		}
		id = m.nextID
		m.nextID++
	}
	now := m.current()
	if at > 0 {
		now = at
	}
	start := mvcc.Revision(req.StartRevision)
	if start == 0 {
		start = now + 1
	}
	w := &merged{id: id, released: start - 1, progress: req.ProgressNotify, filters: req.Filters, prevKV: req.PrevKv,
		key: key, end: req.RangeEnd}
	if w.fan = m.join(key, req, start, now); w.fan != nil {
		w.fanMark = start - 1
	} else {
		for _, p := range parts {
			m.addPart(w, p, start, nil)
		}
	}
	m.watchers[id] = w
	r := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(now)}, WatchId: int64(id), Created: true}
	m.push(r)
	return r
}

// addPart gives watch w a watcher on part p's range from start on, holding
// evs (drained already, not sent) as its own.
// REQUIRES: m.mu
func (m *Merged) addPart(w *merged, p Part, start mvcc.Revision, evs []*mvccpb.Event) {
	sub := m.sub(p)
	r := sub.s.Create(&pb.WatchCreateRequest{Key: p.Key, RangeEnd: p.RangeEnd, StartRevision: int64(start),
		Filters: w.filters, PrevKv: w.prevKV})
	if r.Canceled { // not for a span inside the watch's
		return
	}
	pt := &part{w: w, sub: sub, id: ID(r.WatchId), key: p.Key, end: p.RangeEnd, mark: start - 1, evs: evs}
	sub.parts[pt.id] = pt
	w.parts = append(w.parts, pt)
}

// all returns the merged streams open now.
func (mg *Merger) all() []*Merged {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	streams := make([]*Merged, 0, len(mg.streams))
	for m := range mg.streams {
		streams = append(streams, m)
	}
	return streams
}

// Split moves every stream's watchers on hub's keys from key on (a range
// splitting at key) to child, the new range's part (its Key and RangeEnd
// unused): each such watcher is replaced, from the revision after
// everything it has been sent, by one on hub for the keys below key, if
// any, and one on child for the rest, which reads what it lacks from the
// store — the split range's history is the child's too. Called as the
// split applies, before hub hears of anything after it, so nothing falls
// between the two.
func (mg *Merger) Split(hub *Hub, key []byte, child Part) {
	for _, m := range mg.all() {
		m.splitAt(hub, key, child)
	}
}

func (m *Merged) splitAt(hub *Hub, key []byte, child Part) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct != nil && m.direct.s.h == hub && !m.closed {
		m.undirectLocked()
	}
	sub := m.subs[hub]
	if sub == nil || m.closed {
		return
	}
	// Take what the range's stream holds, so each watcher's mark is all it
	// has been given.
	m.collectLocked()
	var moved []*part
	for _, p := range sub.parts {
		if _, _, right := splitSpan(p.key, p.end, key); right {
			moved = append(moved, p)
		}
	}
	for _, p := range moved {
		w := p.w
		delete(sub.parts, p.id)
		sub.s.Cancel(p.id)
		w.parts = slices.DeleteFunc(w.parts, func(q *part) bool { return q == p })
		left, right, _ := splitSpan(p.key, p.end, key)
		var levs, revs []*mvccpb.Event
		for _, e := range p.evs {
			if bytes.Compare(e.Kv.Key, key) < 0 {
				levs = append(levs, e)
			} else {
				revs = append(revs, e)
			}
		}
		if left != nil {
			m.addPart(w, Part{Hub: hub, Key: left[0], RangeEnd: left[1], Kick: sub.kick}, p.mark+1, levs)
		}
		m.addPart(w, Part{Hub: child.Hub, Key: right[0], RangeEnd: right[1], Kick: child.Kick}, p.mark+1, revs)
	}
}

// Move moves every stream's watchers on hub from (a range's replica here
// that is leaving) to the hub of to (its Key and RangeEnd unused: the
// range's mirror, which has the same history): each is replaced, from the
// revision after everything it has been sent, by one with the same keys on
// to, which reads what it lacks from to's history; what it had drained and
// not sent stays its own. Streams made by NewMergedStream are left alone;
// they end when from closes. Called before from closes, after which from
// may go on hearing of revisions or not: nothing of it is read again by
// the moved watches, so nothing is lost or repeated.
//
//	part on from, mark 41, evs [40] → Move → part on to from 42, evs [40]
func (mg *Merger) Move(from *Hub, to Part) {
	for _, m := range mg.all() {
		m.move(from, to, false)
	}
}

// Merge moves every stream's watchers on hub from (the right range of a
// merge, frozen, whose keys the left range has absorbed) to into, the left
// range's part (its Key and RangeEnd unused), as Move does: each is
// replaced, from the revision after everything it has been sent, by one
// with the same keys on into, which reads what it lacks from the left
// range's store — it holds the right range's keys and their history since
// the merge committed. Unlike Move, it moves the streams made by
// NewMergedStream too: the left range is a replica of this member as the
// right one was, so a feed's watchers stay on the member's replicas.
// A watch that reached both ranges ends with two watchers on into, one
// for each range's share of its keys.
//
// The left hub may be behind the right one: the right range's events
// above the left hub's revision were never notified to it. So Merge first
// raises into's hub to from's revision as a feed's start does (Hub.Skip):
// a moved watcher that needs them, and any of the left range's own synced
// watchers the raise passes, catch up from the left store instead of
// being taken as sent. (A plain raise, Advance, would count a moved
// watcher created above the left hub's revision as having been sent the
// right range's events below from's revision.)
//
// Called as the merge commits in the left range — after its store covers
// the right range's keys and holds every write of either range at or
// below from's revision (the commit raised the left range's closed
// revision to the right one's), before its hub hears of anything after the
// commit — and before from closes. The right range's hub heard of nothing
// after its freeze, and the left range takes writes to the right range's
// keys only above every revision the right one closed, so nothing falls
// between the two hubs or reaches a watch twice:
//
//	L's hub at 30, R's hub at 45
//	part on R's hub, mark 41, evs [40] → Merge → L's hub at 45;
//	                                     part on L's hub from 42 (unsynced), evs [40]
func (mg *Merger) Merge(from *Hub, into Part) {
	into.Hub.Skip(from.Rev())
	for _, m := range mg.all() {
		m.move(from, into, true)
	}
}

// move is Move (pinned false: pinned streams stay) and Merge (pinned true:
// every stream moves) for one stream.
func (m *Merged) move(from *Hub, to Part, pinned bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || (m.pinned && !pinned) {
		return
	}
	if m.direct != nil && m.direct.s.h == from {
		m.undirectLocked()
	}
	sub := m.subs[from]
	if sub == nil {
		return
	}
	// Take what the range's stream holds, so each watcher's mark is all it
	// has been given.
	m.collectLocked()
	delete(m.subs, from)
	sub.s.Close()
	ps := make([]*part, 0, len(sub.parts))
	for _, p := range sub.parts {
		ps = append(ps, p)
	}
	// In watch order, so that the new hub's ids follow the old ones'.
	sort.Slice(ps, func(i, j int) bool { return ps[i].id < ps[j].id })
	for _, p := range ps {
		w := p.w
		w.parts = slices.DeleteFunc(w.parts, func(q *part) bool { return q == p })
		m.addPart(w, Part{Hub: to.Hub, Key: p.key, RangeEnd: p.end, Kick: to.Kick}, p.mark+1, p.evs)
	}
	wake(m.wake)
}

// splitSpan cuts etcd's [k, e) at key: the part below key (nil if none),
// the part from key on, and whether there is one.
func splitSpan(k, e, key []byte) (left *[2][]byte, right [2][]byte, ok bool) {
	toEnd := len(e) == 1 && e[0] == 0
	if len(e) == 0 { // one key
		if bytes.Compare(k, key) < 0 {
			return &[2][]byte{k, nil}, right, false
		}
		return nil, [2][]byte{k, nil}, true
	}
	if !toEnd && bytes.Compare(e, key) <= 0 {
		return &[2][]byte{k, e}, right, false
	}
	if bytes.Compare(k, key) >= 0 {
		return nil, [2][]byte{k, e}, true
	}
	return &[2][]byte{k, key}, [2][]byte{key, e}, true
}

// undirectLocked turns a direct stream's watches into merged ones of one
// part each, their watchers on the hub as they are: what the hub queued
// goes out first, unchanged, and each watch has been released up to its
// watcher's mark; a progress request the hub defers is the merged
// stream's to answer.
// REQUIRES: m.mu
func (m *Merged) undirectLocked() {
	d := m.direct
	m.direct = nil
	h := d.s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	m.out = append(m.out, d.s.takeLocked()...)
	for id, hw := range d.s.watchers {
		w := &merged{id: id, progress: hw.progress, prevKV: hw.prevKV, key: hw.key}
		switch {
		case hw.end == nil: // one key
		case len(hw.end) == 0:
			w.end = []byte{0}
		default:
			w.end = hw.end
		}
		if hw.noPut {
			w.filters = append(w.filters, pb.WatchCreateRequest_NOPUT)
		}
		if hw.noDelete {
			w.filters = append(w.filters, pb.WatchCreateRequest_NODELETE)
		}
		m.watchers[id] = w
		mark := hw.next - 1
		_, unsynced := h.unsynced[hw]
		switch {
		case h.synced.has(hw):
			mark = max(mark, h.rev)
		case !unsynced: // canceled for compaction: nothing more
			w.compacted = true
			continue
		}
		w.released = mark
		p := &part{w: w, sub: d, id: id, key: w.key, end: w.end, mark: mark}
		d.parts[id] = p
		w.parts = []*part{p}
	}
	d.rev = h.rev
	m.nextID = d.s.nextID
	if d.s.progressPending {
		d.s.progressPending = false
		m.progress = append(m.progress, h.rev)
	}
	wake(m.wake)
}

// Refuse queues a refusal of a create request the router will not serve.
func (m *Merged) Refuse(reason string) *pb.WatchResponse {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct != nil {
		return m.direct.s.Refuse(reason)
	}
	return m.refuseLocked(reason)
}

// current is the highest revision of all ranges: the revision etcd's
// answers that are about no event carry.
func (m *Merged) current() mvcc.Revision { return hubsRev(m.split([]byte{0}, []byte{0})) }

// REQUIRES: m.mu
func (m *Merged) refuseLocked(reason string) *pb.WatchResponse {
	r := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(m.current())}, WatchId: int64(InvalidID),
		Created: true, Canceled: true, CancelReason: reason}
	m.push(r)
	return r
}

// Cancel ends a watch and queues etcd's canceled response; unknown ids are
// ignored, as etcd ignores them.
func (m *Merged) Cancel(id ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct != nil {
		return m.direct.s.Cancel(id)
	}
	w := m.watchers[id]
	if w == nil {
		return false
	}
	m.dropLocked(w)
	m.push(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(m.current())}, WatchId: int64(id), Canceled: true})
	return true
}

// dropLocked removes a watch and its watchers in the ranges.
// REQUIRES: m.mu
func (m *Merged) dropLocked(w *merged) {
	m.dropParts(w)
	delete(m.watchers, w.id)
}

// dropParts removes a watch's watchers in the ranges, or its share of a
// fan.
// REQUIRES: m.mu
func (m *Merged) dropParts(w *merged) {
	if w.fan != nil {
		w.fan.leave()
		w.fan, w.fanEvs = nil, nil
	}
	for _, p := range w.parts {
		delete(p.sub.parts, p.id)
		p.sub.s.Cancel(p.id) // its canceled response is dropped unread
	}
	w.parts = nil
}

// RequestProgress queues a progress notification (watch id -1) at the
// highest revision the ranges have reached, once every watch has
// been sent everything up to it. A stream without watches gets none, as in
// etcd.
func (m *Merged) RequestProgress() { m.RequestProgressAt(0) }

// RequestProgressAt is RequestProgress at revision now (0: the highest the
// ranges here have reached): the caller's current revision of the cluster,
// which may be above what the ranges here have applied yet; the
// notification waits until every watch has been sent everything up to it.
func (m *Merged) RequestProgressAt(now mvcc.Revision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct != nil {
		m.direct.s.RequestProgress()
		return
	}
	if len(m.watchers) == 0 {
		return
	}
	if now <= 0 {
		now = m.current()
	}
	m.progress = append(m.progress, now)
	wake(m.wake)
}

// progressTick is Merger.ProgressTick for one stream.
func (m *Merged) progressTick() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.watchers {
		if !w.progress || w.compacted {
			continue
		}
		if !w.sentEvent {
			m.push(&pb.WatchResponse{WatchId: int64(w.id), Header: &pb.ResponseHeader{Revision: int64(w.released)}})
		}
		w.sentEvent = false
	}
}

// Next waits for responses and returns them all, in order: it drains the
// ranges' streams, releases what every part of a watch has passed, and
// otherwise asks the lagging ranges to wake it when they move on.
func (m *Merged) Next(ctx context.Context) ([]*pb.WatchResponse, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		if d := m.direct; d != nil {
			out, closed := d.s.take()
			m.mu.Unlock()
			if closed {
				return nil, ErrClosed
			}
			if len(out) > 0 {
				return out, nil
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-m.wake:
			}
			continue
		}
		if !m.collectLocked() {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		m.releaseLocked()
		m.armLocked()
		if len(m.out) > 0 {
			out := m.out
			m.out = nil
			m.mu.Unlock()
			return out, nil
		}
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-m.wake:
		}
	}
}

// collectLocked drains every range's stream into the parts; false if a hub
// was closed (the node is shutting down, or a replica left and the stream
// is pinned to it), its own or its fans'.
// REQUIRES: m.mu
func (m *Merged) collectLocked() bool {
	for _, sub := range m.subs {
		rs, rev, closed := sub.s.drain(func(id ID, mark mvcc.Revision) {
			if p := sub.parts[id]; p != nil && mark > p.mark {
				p.mark = mark
			}
		})
		if closed {
			return false
		}
		sub.rev = rev
		if sub.waitFor != 0 && rev >= sub.waitFor {
			sub.waitFor = 0
		}
		for _, r := range rs {
			p := sub.parts[ID(r.WatchId)]
			switch {
			case p == nil:
				// The create, cancel and progress answers of the ranges'
				// watchers, and what was queued for a watch since dropped.
			case r.Canceled && r.CompactRevision != 0:
				// History the watch needs is compacted away in this range.
				m.compactedLocked(p.w, r.CompactRevision)
			default:
				p.evs = append(p.evs, r.Events...)
			}
		}
	}
	for _, w := range m.watchers {
		if w.fan == nil {
			continue
		}
		switch compact, behind, ended := w.fan.take(w); {
		case ended:
			return false
		case compact != 0:
			m.compactedLocked(w, compact)
		case behind:
			// Its client reads too slowly to keep up with the fan: it
			// goes on with watchers of its own from after what it was
			// sent, which catch up from the stores.
			m.dropParts(w)
			for _, p := range m.split(w.key, w.end) {
				m.addPart(w, p, w.released+1, nil)
			}
		}
	}
	return true
}

// compactedLocked ends watch w, whose history is compacted away at rev,
// as etcd ends it: canceled, with nothing more.
// REQUIRES: m.mu
func (m *Merged) compactedLocked(w *merged, rev int64) {
	w.compacted = true
	m.dropParts(w)
	m.push(&pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: int64(w.id), Canceled: true, CompactRevision: rev})
}

// releaseLocked queues, for every watch, the events at or below the lowest
// mark of its parts, in revision order, then the progress notifications
// every watch has passed. As etcd sends a stream's live events revision by
// revision for all its watchers, no watch is sent an event above the
// lowest mark of the stream's watches that are not catching up: when the
// client sees an event at R on one watch, the others have been sent theirs
// up to R.
// REQUIRES: m.mu
func (m *Merged) releaseLocked() {
	ids := make([]ID, 0, len(m.watchers))
	bound := mvcc.Revision(-1)
	for id, w := range m.watchers {
		ids = append(ids, id)
		if !w.compacted && w.caughtUp() {
			if low := w.low(); bound < 0 || low < bound {
				bound = low
			}
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		w := m.watchers[id]
		if w.compacted {
			continue
		}
		low := w.low()
		if bound >= 0 && bound < low {
			low = bound
		}
		if low <= w.released {
			continue
		}
		n := sort.Search(len(w.fanEvs), func(i int) bool { return mvcc.Revision(w.fanEvs[i].Kv.ModRevision) > low })
		evs := w.fanEvs[:n:n]
		w.fanEvs = w.fanEvs[n:]
		for _, p := range w.parts {
			n := sort.Search(len(p.evs), func(i int) bool { return mvcc.Revision(p.evs[i].Kv.ModRevision) > low })
			evs = append(evs, p.evs[:n]...)
			p.evs = p.evs[n:]
		}
		// A revision's events are all in one range: a stable sort by
		// revision keeps each revision's in their order.
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Kv.ModRevision < evs[j].Kv.ModRevision })
		if len(evs) > 0 {
			m.push(&pb.WatchResponse{WatchId: int64(id), Header: &pb.ResponseHeader{Revision: int64(low)}, Events: evs})
			w.sentEvent = true
		}
		w.released = low
	}
	for len(m.progress) > 0 {
		rev := m.progress[0]
		for _, w := range m.watchers {
			if w.released < rev && !w.compacted {
				return
			}
		}
		m.progress = m.progress[1:]
		if len(m.watchers) > 0 {
			m.push(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(rev)}, WatchId: int64(InvalidID)})
		}
	}
}

// caughtUp reports whether every part of the watch has been sent all its
// range's hub has (none is catching up from the store).
func (w *merged) caughtUp() bool {
	for _, p := range w.parts {
		if p.mark < p.sub.rev {
			return false
		}
	}
	return true
}

// low is the lowest mark of the watch's parts (or its fan's).
func (w *merged) low() mvcc.Revision {
	low := mvcc.Revision(-1)
	if w.fan != nil {
		low = w.fanMark
	}
	for _, p := range w.parts {
		if low < 0 || p.mark < low {
			low = p.mark
		}
	}
	if low < 0 {
		return w.released
	}
	return low
}

// armLocked asks to be woken when what holds a watch back moves: for each
// part behind a revision the watch waits for (its oldest unreleased event,
// or a progress request), the range's hub is asked to signal when it gets
// there, and the range to close it soon. A part behind its own hub is
// being caught up, which wakes the stream as it goes.
// REQUIRES: m.mu
func (m *Merged) armLocked() {
	// need: the oldest event drained and not sent, or a progress
	// request's revision; every watch's parts short of it hold it back
	// (releaseLocked's bound), so all of them are asked to move.
	need := mvcc.Revision(-1)
	if len(m.progress) > 0 {
		need = m.progress[0]
	}
	for _, w := range m.watchers {
		if len(w.fanEvs) > 0 && (need < 0 || mvcc.Revision(w.fanEvs[0].Kv.ModRevision) < need) {
			need = mvcc.Revision(w.fanEvs[0].Kv.ModRevision)
		}
		for _, p := range w.parts {
			if len(p.evs) > 0 && (need < 0 || mvcc.Revision(p.evs[0].Kv.ModRevision) < need) {
				need = mvcc.Revision(p.evs[0].Kv.ModRevision)
			}
		}
	}
	if need < 0 {
		return
	}
	for _, w := range m.watchers {
		if w.fan != nil && w.fanMark < need && (w.fanWant <= w.fanMark || need < w.fanWant) {
			w.fanWant = need
			w.fan.want(need)
		}
		for _, p := range w.parts {
			sub := p.sub
			if p.mark >= need || sub.rev >= need {
				continue
			}
			if sub.waitFor == 0 || need < sub.waitFor {
				sub.waitFor = need
				sub.s.h.WaitRev(need, m.wake)
				if sub.kick != nil {
					sub.kick(need)
				}
			}
		}
	}
}

// Close ends the stream and its watchers in every range.
func (m *Merged) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sub := range m.subs {
		sub.s.Close()
	}
	for _, w := range m.watchers {
		if w.fan != nil {
			w.fan.leave()
			w.fan = nil
		}
	}
	m.closed = true
	m.out = nil
	wake(m.wake)
	m.mg.mu.Lock()
	delete(m.mg.streams, m)
	m.mg.mu.Unlock()
}
