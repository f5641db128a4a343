package watch

import (
	"bytes"
	"container/heap"
	"errors"
	"math"
	"slices"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// ID names a watcher within its stream, as etcd's watch_id.
type ID int64

// InvalidID is etcd's watch id for responses not about one watcher.
const InvalidID ID = -1

// Refusals of a create request, with etcd's texts (they travel as
// cancel_reason).
var (
	ErrEmptyRange  = errors.New("mvcc: watcher range is empty")
	ErrDuplicateID = errors.New("mvcc: duplicate watch ID provided on the WatchStream")
	errCompacted   = "etcdserver: mvcc: required revision has been compacted"
)

// History is the store the hub catches watchers up from (mvcc.Store).
type History interface {
	Events(from, to mvcc.Revision, fn func(rev mvcc.Revision, evs []*mvccpb.Event) bool) error
	CompactRev() mvcc.Revision
}

// Hub holds every watcher of one shard. Writes reach it through Notify;
// a caller-owned pump calls Catchup when Pending says there is work.
//
// mu guards everything in the hub and in its streams and watchers.
type Hub struct {
	mu sync.Mutex
	// rev is the last revision notified: every event up to it has been
	// offered to synced watchers.
	rev      mvcc.Revision
	synced   index
	unsynced map[*watcher]struct{}
	streams  map[*Stream]struct{}
	// pending is signalled (size 1, never blocks) when catch-up work or
	// a deferred progress request appears.
	pending chan struct{}
	// waiters are signalled once rev reaches theirs (WaitRev).
	waiters revWaiters

	// The hold (Apply): limit is the highest revision the hub may release
	// (NoHold: any); held are the events notified above it, in revision
	// order, and heldRev the highest revision the hub was told of above
	// it. gap: the hub was raised above limit without the events (Sync),
	// so held may lack some; the store has them.
	// Invariant: rev <= limit unless it was already past limit when the
	// hold came; every event in held is above rev.
	limit   mvcc.Revision
	held    []*mvccpb.Event
	heldRev mvcc.Revision
	gap     bool
}

// NoHold is Apply's hold for a hub that may release every revision.
const NoHold = mvcc.Revision(math.MaxInt64)

// NewHub returns a hub whose store is at rev.
func NewHub(rev mvcc.Revision) *Hub {
	return &Hub{rev: rev, unsynced: map[*watcher]struct{}{}, streams: map[*Stream]struct{}{},
		pending: make(chan struct{}, 1), synced: newIndex(), limit: NoHold}
}

// Watchers returns how many watchers the hub holds.
func (h *Hub) Watchers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for s := range h.streams {
		n += len(s.watchers)
	}
	return n
}

// Pending is signalled when Catchup has work.
func (h *Hub) Pending() <-chan struct{} { return h.pending }

func (h *Hub) signal() { wake(h.pending) }

// Rev returns the last revision notified.
func (h *Hub) Rev() mvcc.Revision {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

// watcher is one watch. next is the first revision it has not been sent.
//
// Invariant: a watcher is in exactly one of hub.synced and hub.unsynced
// while registered, except one cancelled for compaction, which is in
// neither and stays in its stream until the client cancels it. A synced
// watcher has been sent every matching event
// below max(next, hub.rev+1).
type watcher struct {
	id        ID
	key, end  []byte // end nil: one key; empty: from key on
	next      mvcc.Revision
	prevKV    bool
	noPut     bool
	noDelete  bool
	progress  bool
	sentEvent bool // events sent since the last progress tick
	stream    *Stream
}

func (w *watcher) contains(key []byte) bool {
	if w.end == nil {
		return bytes.Equal(key, w.key)
	}
	return bytes.Compare(key, w.key) >= 0 && (len(w.end) == 0 || bytes.Compare(key, w.end) < 0)
}

// filter returns the events of evs this watcher wants, PrevKv stripped
// unless asked for. The events are shared: they are copied, not changed.
func (w *watcher) filter(evs []*mvccpb.Event) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, ev := range evs {
		if ev.Kv.ModRevision < int64(w.next) || !w.contains(ev.Kv.Key) {
			continue
		}
		if (ev.Type == mvccpb.PUT && w.noPut) || (ev.Type == mvccpb.DELETE && w.noDelete) {
			continue
		}
		if !w.prevKV && ev.PrevKv != nil {
			ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
		out = append(out, ev)
	}
	return out
}

// Notify offers the events of newly committed revisions, in revision
// order, to the synced watchers; rev is the store's revision after them.
// It never blocks: a watcher whose stream is full becomes unsynced and is
// caught up from the store later. A hold (Apply) stands: events above it
// wait.
func (h *Hub) Notify(rev mvcc.Revision, events []*mvccpb.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.applyLocked(rev, events, h.limit)
}

// Apply is Notify with the hold that stands after these events: the hub
// releases no event above hold, and raises its revision no higher, until a
// later Apply lifts it (NoHold) or raises it. A range holding locks of
// cross-range transactions holds at the lowest lock's cap (docs/plan-txn.md,
// invariant 2): its writes to other keys, above the cap, apply before the
// transaction's commit at R, and wait here so that watchers get R's events
// together and before any later revision of the range. Released events go
// out in revision order, whatever the order they came in (a batch may apply
// writes above R before the commit at R).
func (h *Hub) Apply(rev mvcc.Revision, events []*mvccpb.Event, hold mvcc.Revision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.applyLocked(rev, events, hold)
}

// REQUIRES: h.mu
func (h *Hub) applyLocked(rev mvcc.Revision, events []*mvccpb.Event, hold mvcc.Revision) {
	if hold == NoHold && h.limit == NoHold && len(h.held) == 0 && !h.gap && inRevOrder(events) {
		h.notifyLocked(rev, events)
		return
	}
	if len(events) > 0 {
		h.held = append(h.held, events...)
		slices.SortStableFunc(h.held, func(a, b *mvccpb.Event) int { return cmpInt64(a.Kv.ModRevision, b.Kv.ModRevision) })
		rev = max(rev, mvcc.Revision(h.held[len(h.held)-1].Kv.ModRevision))
	}
	h.heldRev = max(h.heldRev, rev)
	h.limit = hold
	h.releaseLocked()
}

// releaseLocked notifies the held events at or below the hold, and raises
// the hub's revision as far as the hold allows.
// REQUIRES: h.mu
func (h *Hub) releaseLocked() {
	to := min(h.heldRev, h.limit)
	if h.gap {
		// The store has what held lacks: the watchers that are behind
		// to read it from there.
		n := 0
		for n < len(h.held) && mvcc.Revision(h.held[n].Kv.ModRevision) <= to {
			n++
		}
		h.held = h.held[n:]
		h.skipLocked(to)
		if h.heldRev <= h.limit {
			h.gap = false
		}
	} else {
		n := 0
		for n < len(h.held) && mvcc.Revision(h.held[n].Kv.ModRevision) <= to {
			n++
		}
		h.notifyLocked(to, h.held[:n])
		h.held = h.held[n:]
	}
	if len(h.held) == 0 {
		h.held = nil
	}
	if h.heldRev <= h.limit {
		h.heldRev = 0
	}
}

// Sync raises the hub's revision to rev, the store's, without its events,
// as far as hold allows (Apply's): the hub of a range whose store was
// opened or restored from a snapshot. Synced watchers behind rev read what
// they lack from the store (as Skip), what is above the hold once it
// lifts.
func (h *Hub) Sync(rev, hold mvcc.Revision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.limit = hold
	if rev > h.rev {
		h.gap = true
	}
	h.heldRev = max(h.heldRev, rev)
	h.releaseLocked()
}

// inRevOrder reports whether evs are in revision order.
func inRevOrder(evs []*mvccpb.Event) bool {
	for i := 1; i < len(evs); i++ {
		if evs[i].Kv.ModRevision < evs[i-1].Kv.ModRevision {
			return false
		}
	}
	return true
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// REQUIRES: h.mu
func (h *Hub) notifyLocked(rev mvcc.Revision, events []*mvccpb.Event) {
	for start := 0; start < len(events); {
		r := events[start].Kv.ModRevision
		end := start
		for end < len(events) && events[end].Kv.ModRevision == r {
			end++
		}
		h.notifyRev(mvcc.Revision(r), events[start:end])
		start = end
	}
	if rev > h.rev {
		h.rev = rev
	}
	h.waiters.release(h.rev)
}

// Advance raises the hub's revision to rev without events: the shard's
// closed revision, below which no write is still to come (DESIGN.md
// "Closed revision"), so synced watchers have been sent everything up to it.
func (h *Hub) Advance(rev mvcc.Revision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev > h.limit {
		// Held: raised with the events when the hold lifts.
		h.heldRev = max(h.heldRev, rev)
		rev = h.limit
	}
	if rev > h.rev {
		h.rev = rev
		h.waiters.release(rev)
	}
}

// Skip raises the hub's revision to rev without events, as a hub fed from
// elsewhere does when its feed starts at rev (router's mirror hubs, whose
// first feed starts where the member feeding them is), or a merge's
// absorbing hub whose store now holds the absorbed range's history
// (Merger.Merge): a synced watcher not yet sent the revisions up to rev
// becomes unsynced, and Catchup reads them from the History.
func (h *Hub) Skip(rev mvcc.Revision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev > h.limit {
		h.heldRev, h.gap = max(h.heldRev, rev), true
		rev = h.limit
	}
	h.skipLocked(rev)
}

// REQUIRES: h.mu
func (h *Hub) skipLocked(rev mvcc.Revision) {
	if rev <= h.rev {
		return
	}
	for s := range h.streams {
		for _, w := range s.watchers {
			if h.synced.has(w) && w.next <= rev {
				h.synced.remove(w)
				h.unsynced[w] = struct{}{}
			}
		}
	}
	h.rev = rev
	h.waiters.release(rev)
	h.signal()
}

// WaitRev signals ch (without blocking) once the hub's revision reaches
// rev: at once if it has.
func (h *Hub) WaitRev(rev mvcc.Revision, ch chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rev >= rev {
		wake(ch)
		return
	}
	heap.Push(&h.waiters, revWaiter{rev, ch})
}

// revWaiter is a WaitRev caller.
type revWaiter struct {
	rev mvcc.Revision
	ch  chan struct{}
}

// revWaiters is a min-heap of waiters by revision.
type revWaiters []revWaiter

func (w revWaiters) Len() int           { return len(w) }
func (w revWaiters) Less(i, j int) bool { return w[i].rev < w[j].rev }
func (w revWaiters) Swap(i, j int)      { w[i], w[j] = w[j], w[i] }
func (w *revWaiters) Push(x any)        { *w = append(*w, x.(revWaiter)) }
func (w *revWaiters) Pop() any {
	old := *w
	x := old[len(old)-1]
	*w = old[:len(old)-1]
	return x
}

// release signals and drops the waiters at or below rev.
func (w *revWaiters) release(rev mvcc.Revision) {
	for w.Len() > 0 && (*w)[0].rev <= rev {
		wake(heap.Pop(w).(revWaiter).ch)
	}
}

// wake signals a channel of size 1 without blocking.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// REQUIRES: h.mu
func (h *Hub) notifyRev(rev mvcc.Revision, evs []*mvccpb.Event) {
	matched := map[*watcher][]*mvccpb.Event{}
	for _, ev := range evs {
		h.synced.match(ev.Kv.Key, func(w *watcher) {
			if w.next <= rev {
				matched[w] = append(matched[w], ev)
			}
		})
	}
	for w, wevs := range matched {
		out := w.filter(wevs)
		if len(out) > 0 && !w.stream.offer(&pb.WatchResponse{WatchId: int64(w.id), Header: &pb.ResponseHeader{Revision: int64(rev)}, Events: out}) {
			// The stream is full: the watcher falls behind and will be
			// caught up from the store, starting at this revision.
			h.synced.remove(w)
			h.unsynced[w] = struct{}{}
			h.signal()
			continue
		}
		if len(out) > 0 {
			w.sentEvent = true
		}
		w.next = rev + 1
	}
	h.rev = max(h.rev, rev)
}

// Catchup moves unsynced watchers forward from the store, at most maxRevs
// revisions per call, sharing one read of the store among all of them. It
// reports whether more work remains (the caller calls again).
func (h *Hub) Catchup(hist History, maxRevs int) (more bool, err error) {
	// Read before the hub's lock, never under it: the history's own lock
	// (a state machine's) is held while a snapshot restore syncs the hub
	// (Sync), so the two taken the other way round deadlock. A compaction
	// just after the read shows as ErrCompacted below, and the next round
	// cancels who needs it.
	compact := hist.CompactRev()
	h.mu.Lock()
	var ws []*watcher
	from := mvcc.Revision(-1)
	for w := range h.unsynced {
		if w.stream.full() {
			continue
		}
		if w.next < compact {
			// History from w.next is gone: cancel the watcher, as etcd
			// does — whose response carries no header revision. As in
			// etcd, the stream keeps its id (not reused, refused as a
			// duplicate, answered when the client cancels it) until the
			// client cancels it; it gets nothing more.
			w.stream.offer(&pb.WatchResponse{WatchId: int64(w.id), Header: &pb.ResponseHeader{},
				Canceled: true, CompactRevision: int64(compact)})
			h.synced.remove(w)
			delete(h.unsynced, w)
			continue
		}
		ws = append(ws, w)
		if from < 0 || w.next < from {
			from = w.next
		}
	}
	to := h.rev
	h.mu.Unlock()
	if len(ws) == 0 {
		h.settleProgress()
		return false, nil
	}
	if maxRevs > 0 && to > from+mvcc.Revision(maxRevs)-1 {
		to = from + mvcc.Revision(maxRevs) - 1
	}
	type revEvents struct {
		rev mvcc.Revision
		evs []*mvccpb.Event
	}
	var read []revEvents
	if from <= to {
		err = hist.Events(from, to, func(rev mvcc.Revision, evs []*mvccpb.Event) bool {
			read = append(read, revEvents{rev, evs})
			return true
		})
	}
	if errors.Is(err, mvcc.ErrCompacted) {
		h.signal() // compacted meanwhile: the next round cancels who needs it
		return true, nil
	}
	if err != nil {
		return true, err
	}

	h.mu.Lock()
	for _, w := range ws {
		if _, ok := h.unsynced[w]; !ok || w.next > to {
			continue // cancelled meanwhile, or nothing new for it
		}
		var out []*mvccpb.Event
		for _, re := range read {
			if re.rev >= w.next {
				out = append(out, w.filter(re.evs)...)
			}
		}
		if len(out) > 0 {
			if !w.stream.offer(&pb.WatchResponse{WatchId: int64(w.id), Header: &pb.ResponseHeader{Revision: int64(h.rev)}, Events: out}) {
				continue
			}
			w.sentEvent = true
		}
		w.next = to + 1
		w.stream.wakeup() // a merged stream reads the watcher's new mark
		if w.next > h.rev {
			delete(h.unsynced, w)
			h.synced.add(w)
		}
	}
	for w := range h.unsynced {
		if !w.stream.full() {
			more = true
			break
		}
	}
	h.mu.Unlock()
	h.settleProgress()
	return more, nil
}

// removeLocked drops a watcher from the hub and its stream.
// REQUIRES: h.mu
func (h *Hub) removeLocked(w *watcher) {
	h.synced.remove(w)
	delete(h.unsynced, w)
	delete(w.stream.watchers, w.id)
}

// settleProgress answers deferred progress requests of streams whose
// watchers are all synced now.
func (h *Hub) settleProgress() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.streams {
		if s.progressPending {
			s.progressLocked()
		}
	}
}

// ProgressTick sends, to every synced watcher that asked for progress
// notifications and was sent no event since the last tick, a notification
// at the hub's revision (etcd's --watch-progress-notify-interval).
func (h *Hub) ProgressTick() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.streams {
		for _, w := range s.watchers {
			if !w.progress {
				continue
			}
			if !w.sentEvent && h.synced.has(w) && w.next <= h.rev+1 {
				s.offer(&pb.WatchResponse{WatchId: int64(w.id), Header: &pb.ResponseHeader{Revision: int64(h.rev)}})
			}
			w.sentEvent = false
		}
	}
}
