package router

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-kv/cairn/shard"
)

// DefaultLeaderWatchInterval is how often a LeaderWatch looks at the
// ranges by default: raft's default heartbeat.
const DefaultLeaderWatchInterval = 100 * time.Millisecond

// LeaderWatch keeps the set of this member's started ranges that know no
// leader (Leaderless), for the probes and the leader checks to read
// without asking raft per request. Each tick scans the local ranges of the
// range cache once, O(ranges here), and publishes a new immutable set;
// readers load the latest with one atomic read.
//
//	tick 1: r1 leader 1, r4 none        → {r4 since t1}
//	tick 2: r1 leader 1, r4 none, r7 none → {r4 since t1, r7 since t2}
//	tick 3: r4 leader 2, r7 none        → {r7 since t2}
//
// A range not yet started (a split's new range) is not in the set: it has
// no leader to lose yet. Concurrency: one goroutine, owned by the watch,
// writes; Close stops it and waits.
type LeaderWatch struct {
	ranges *RangeCache
	every  time.Duration
	set    atomic.Pointer[Leaderless]
	stop   chan struct{}
	done   sync.WaitGroup
	once   sync.Once
}

// Leaderless is one published state of a LeaderWatch: the ranges here
// without a leader, in key order. It is never changed once published.
type Leaderless struct {
	Ranges []LeaderlessRange
}

// LeaderlessRange is one range of this member without a leader.
type LeaderlessRange struct {
	ID         shard.RangeID
	Start, End []byte
	// Since is when the watch first saw it leaderless (a scan's time).
	Since time.Time
}

// Has reports whether range id is in the set.
func (l *Leaderless) Has(id shard.RangeID) bool {
	for _, r := range l.Ranges {
		if r.ID == id {
			return true
		}
	}
	return false
}

// StartLeaderWatch scans the ranges every interval (0:
// DefaultLeaderWatchInterval) until Close; the probes read its set from
// then on. The caller owns it and closes it.
func (s *Server) StartLeaderWatch(every time.Duration) *LeaderWatch {
	if every <= 0 {
		every = DefaultLeaderWatchInterval
	}
	w := &LeaderWatch{ranges: s.cfg.Ranges, every: every, stop: make(chan struct{})}
	w.set.Store(scanLeaderless(w.ranges, nil, time.Now()))
	s.leaders.Store(w)
	w.done.Add(1)
	go w.run()
	if s.cfg.Ranges != nil && !s.cfg.Ranges.static {
		// Locks of cross-range transactions past their deadline
		// (txnresolve.go), on the same lifetime.
		w.done.Add(1)
		go func() { defer w.done.Done(); s.runResolver(w.stop) }()
	}
	return w
}

func (w *LeaderWatch) run() {
	defer w.done.Done()
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case now := <-t.C:
			w.set.Store(scanLeaderless(w.ranges, w.set.Load(), now))
		}
	}
}

// Leaderless is the latest set; never nil.
func (w *LeaderWatch) Leaderless() *Leaderless { return w.set.Load() }

// Close stops the watch and waits for its goroutine; the last set stays
// readable.
func (w *LeaderWatch) Close() {
	if w == nil {
		return
	}
	w.once.Do(func() { close(w.stop) })
	w.done.Wait()
}

// scanLeaderless returns the set of cache's started local ranges that
// know no leader, keeping the Since of those already in prev.
func scanLeaderless(cache *RangeCache, prev *Leaderless, now time.Time) *Leaderless {
	out := &Leaderless{}
	if cache == nil {
		return out
	}
	var seen map[shard.RangeID]time.Time
	if prev != nil && len(prev.Ranges) > 0 {
		seen = make(map[shard.RangeID]time.Time, len(prev.Ranges))
		for _, r := range prev.Ranges {
			seen[r.ID] = r.Since
		}
	}
	for _, p := range cache.All() {
		l := cache.Local(p.ID)
		if l == nil {
			continue
		}
		select {
		case <-l.Ready():
		default:
			continue // not started yet
		}
		if _, _, ok := l.Replica().Leader(); ok {
			continue
		}
		since, ok := seen[p.ID]
		if !ok {
			since = now
		}
		out.Ranges = append(out.Ranges, LeaderlessRange{ID: p.ID, Start: p.Start, End: p.End, Since: since})
	}
	return out
}

// leaderless returns the ranges here without a leader: the watch's set
// once one runs, a scan now otherwise.
func (s *Server) leaderless() *Leaderless {
	if w := s.leaders.Load(); w != nil {
		return w.Leaderless()
	}
	return scanLeaderless(s.cfg.Ranges, nil, time.Now())
}
