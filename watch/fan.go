package watch

import (
	"fmt"
	"sort"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// Coalescing (sharded mode): identical watches — the same keys, filters
// and prev_kv — of the node's client streams that start at the current
// revision or later share one fan: one watcher in each range they reach,
// merged once, whose released events and mark every subscribing watch
// takes as if they were its own single part. A watch that needs history
// (it starts at or below the current revision) has watchers of its own, as
// does one whose client reads too slowly (behind): it leaves the fan and
// catches up from the stores, as a lagging watcher does in a hub.
//
// The fan's own Merged stream is pumped by whichever subscriber's Next
// runs (Merged.collectLocked); a goroutine only relays the fan's wake-ups
// to its subscribers. Lock order: a subscriber's Merged.mu, the Merger's
// mu, fan.mu; a subscriber's Merged.mu, the fan's Merged.mu.

// fanBehind is how many events a subscriber may have waiting in a fan,
// per response its stream's hub queues may hold, before it leaves.
const fanBehind = 64

// fanKey names the watches a fan serves.
type fanKey string

func keyOf(key, end []byte, req *pb.WatchCreateRequest) fanKey {
	return fanKey(fmt.Sprintf("%q %q %v %v", key, end, req.Filters, req.PrevKv))
}

// fan is one shared watch.
type fan struct {
	mg   *Merger
	key  fanKey
	m    *Merged // its stream: one watch, id 0
	done chan struct{}
	// pumping serializes pumps, so that what one takes from m is handed
	// out before the next takes more.
	pumping sync.Mutex

	mu   sync.Mutex
	subs map[*fanSub]struct{}
	mark mvcc.Revision // every event up to it has been handed out
	dead bool          // no longer taking subscribers
	// ended: a hub of its stream closed; its subscribers' streams end
	// (Merged.Next returns ErrClosed) as if the hub were theirs.
	ended bool
}

// fanSub is a subscribing watch's share of a fan, guarded by fan.mu.
type fanSub struct {
	f    *fan
	from mvcc.Revision // its first revision
	wake chan struct{} // its stream's
	// evs are handed out, not yet taken; mark is the fan's when they were.
	evs     []*mvccpb.Event
	mark    mvcc.Revision
	compact int64 // the fan's watch was canceled for compaction at it
	behind  bool  // evs outgrew the bound: the watch must leave
	bound   int   // events it may have waiting before it is behind
}

// join subscribes a watch created with req, from start on, to the fan for
// its keys — a new one if none can take it — and returns its share, or nil
// if the watch is not for a fan (see Coalescing). now is the current
// revision.
// REQUIRES: m.mu
func (m *Merged) join(key []byte, req *pb.WatchCreateRequest, start, now mvcc.Revision) *fanSub {
	if start <= now {
		return nil
	}
	mg, k := m.mg, keyOf(key, req.RangeEnd, req)
	if m.pinned {
		// Its watchers stay on their hubs through Merger.Move; a client
		// stream's move: the two never share a fan.
		k = "pinned " + k
	}
	sub := &fanSub{from: start, wake: m.wake, mark: start - 1, bound: fanBehind * max(m.limit, 1)}
	mg.mu.Lock()
	defer mg.mu.Unlock()
	if f := mg.fans[k]; f != nil {
		f.mu.Lock()
		ok := !f.dead && f.mark < start
		if ok {
			sub.f = f
			f.subs[sub] = struct{}{}
		}
		f.mu.Unlock()
		if ok {
			return sub
		}
	}
	f := &fan{mg: mg, key: k, done: make(chan struct{}), subs: map[*fanSub]struct{}{sub: {}}, mark: start - 1}
	f.m = &Merged{mg: mg, limit: m.limit, split: m.split, wake: make(chan struct{}, 1),
		subs: map[*Hub]*subStream{}, watchers: map[ID]*merged{}, pinned: m.pinned}
	own := &merged{released: start - 1, filters: req.Filters, prevKV: req.PrevKv}
	for _, p := range m.split(key, req.RangeEnd) {
		f.m.addPart(own, p, start, nil)
	}
	f.m.watchers[0] = own
	sub.f = f
	mg.fans[k] = f
	mg.streams[f.m] = struct{}{}
	go f.relay()
	return sub
}

// relay passes the fan's wake-ups (its ranges' streams, their revision
// waiters) on to every subscriber.
func (f *fan) relay() {
	for {
		select {
		case <-f.done:
			return
		case <-f.m.wake:
		}
		f.mu.Lock()
		for s := range f.subs {
			wake(s.wake)
		}
		f.mu.Unlock()
	}
}

// pump merges what the fan's ranges have and hands it out to every
// subscriber, waking those it gives something.
func (f *fan) pump() {
	f.pumping.Lock()
	defer f.pumping.Unlock()
	m := f.m
	m.mu.Lock()
	if m.closed || !m.collectLocked() {
		ended := !m.closed
		m.mu.Unlock()
		if ended {
			f.mu.Lock()
			f.ended, f.dead = true, true
			for s := range f.subs {
				wake(s.wake)
			}
			f.mu.Unlock()
		}
		return
	}
	m.releaseLocked()
	m.armLocked()
	out := m.out
	m.out = nil
	w := m.watchers[0]
	mark := w.released
	m.mu.Unlock()
	var evs []*mvccpb.Event
	var compact int64
	for _, r := range out {
		switch {
		case r.Canceled && r.CompactRevision != 0:
			compact = r.CompactRevision
		case r.WatchId == 0:
			evs = append(evs, r.Events...)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if compact != 0 {
		f.dead = true
	}
	if mark <= f.mark && len(evs) == 0 && compact == 0 {
		return
	}
	f.mark = max(f.mark, mark)
	for s := range f.subs {
		if s.behind {
			continue
		}
		i := sort.Search(len(evs), func(i int) bool { return mvcc.Revision(evs[i].Kv.ModRevision) >= s.from })
		s.evs = append(s.evs, evs[i:]...)
		s.mark = max(s.mark, f.mark)
		if compact != 0 {
			s.compact = compact
		}
		if len(s.evs) > s.bound {
			s.behind, s.evs = true, nil
		}
		wake(s.wake)
	}
}

// take pumps the fan and moves what it handed to s into w; ended: a hub
// of the fan closed.
// REQUIRES: the subscriber's Merged.mu
func (s *fanSub) take(w *merged) (compact int64, behind, ended bool) {
	s.f.pump()
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	w.fanEvs = append(w.fanEvs, s.evs...)
	s.evs = nil
	w.fanMark = max(w.fanMark, s.mark)
	return s.compact, s.behind, s.f.ended
}

// want asks the fan to get to rev soon (a subscriber's progress request,
// or its stream's other watches, wait on it).
// REQUIRES: the subscriber's Merged.mu
func (s *fanSub) want(rev mvcc.Revision) {
	m := s.f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.progress = append(m.progress, rev)
	m.armLocked()
}

// leave ends s's subscription; the last one ends the fan.
func (s *fanSub) leave() {
	f := s.f
	f.mg.mu.Lock()
	f.mu.Lock()
	delete(f.subs, s)
	last := len(f.subs) == 0
	if last {
		f.dead = true
		if f.mg.fans[f.key] == f {
			delete(f.mg.fans, f.key)
		}
	}
	f.mu.Unlock()
	f.mg.mu.Unlock()
	if last {
		close(f.done)
		f.m.Close()
	}
}
