package placement

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-kv/cairn/mvcc"
)

// OracleClient is one member's client of the revision oracle (the
// shard.Stamper of its ranges). While this member's placement replica
// leads, its own Allocator answers; otherwise the requests that arrive
// while a round trip to the leader's member is under way wait and go
// together in the next one, each given its own consecutive part of the
// answer:
//
//	A asks 3, B asks 2 (together) → one trip for 5, answered 101 → A 101..103, B 104..105
//
// It owns no goroutine while idle: a request that finds no trip under way
// starts one, which runs until nobody waits. Safe for concurrent use.
//
// A trip goes to the leader this member's placement replica names when it
// starts, and is abandoned — its callers ask again, at once — as soon as
// that replica names another leader or none (polled every Retry): a
// leader cut off from the others would hold the trip until it noticed its
// deposition, or until TripTimeout, while the others have already elected
// its successor (issue 27). Abandoning a trip is safe, as it only drops
// the answer: the old leader hands out revisions only once a read index
// after taking them confirmed it still led (Allocator), and its successor
// starts above every bound a predecessor persisted, so the callers, asking
// the successor, get revisions above any the old leader took, and its late
// answer, if any, reaches nobody. What it took for nobody is a gap, which
// revisions may have.
type OracleClient struct {
	cfg OracleClientConfig

	mu      sync.Mutex
	waiting []*oracleWait // REQUIRES: mu
	busy    bool          // a round trip is under way; it takes the waiting next (REQUIRES: mu)
	trips   atomic.Int64  // round trips made
}

// OracleClientConfig wires an OracleClient to its member.
type OracleClientConfig struct {
	// Self is this member's replica id in the placement group.
	Self uint64
	// Local is this member's allocator; it answers ErrNotLeader unless
	// the member's placement replica leads.
	Local interface {
		RevisionsAbove(ctx context.Context, n int64, above mvcc.Revision) (mvcc.Revision, error)
	}
	// Leader names the placement group's leader, if one is known.
	Leader func() (uint64, bool)
	// Remote asks the leader's member for n revisions above above: one
	// round trip. It answers ErrNotLeader if that member no longer leads.
	Remote func(ctx context.Context, leader uint64, n int64, above mvcc.Revision) (mvcc.Revision, error)
	// Retry is the wait between tries while leadership moves, and how
	// often a round trip checks that Leader still names the member it
	// went to; 0 means 10ms.
	Retry time.Duration
	// TripTimeout bounds one round trip; 0 means 5s.
	TripTimeout time.Duration
	// Observer, if set, hears of every round trip and of the revisions
	// handed out, for the node's metrics; nil reports nothing.
	Observer OracleObserver
}

// OracleObserver is what an OracleClient reports for the node's metrics
// (the node implements it; this package imports no metrics library). Its
// methods must not block.
type OracleObserver interface {
	// RoundTrip reports one round trip to the leader's member: how long
	// it took, how many revisions it asked for (0: a read of the current
	// value), and whether it failed.
	RoundTrip(d time.Duration, n int64, err error)
	// Allocated reports n revisions handed out to a caller of this
	// client, by this member's allocator or the leader's.
	Allocated(n int64)
}

type oracleWait struct {
	n     int64
	above mvcc.Revision
	done  chan oracleAnswer // size 1
}

type oracleAnswer struct {
	first mvcc.Revision
	err   error
}

// NewOracleClient returns a client over cfg.
func NewOracleClient(cfg OracleClientConfig) *OracleClient {
	if cfg.Retry <= 0 {
		cfg.Retry = 10 * time.Millisecond
	}
	if cfg.TripTimeout <= 0 {
		cfg.TripTimeout = 5 * time.Second
	}
	return &OracleClient{cfg: cfg}
}

// Revisions hands out n consecutive revisions, first..first+n-1, each
// unique in the cluster and above every revision handed out before the
// call began (shard.Stamper). It waits for a leader until ctx ends.
func (c *OracleClient) Revisions(ctx context.Context, n int64) (mvcc.Revision, error) {
	return c.RevisionsAbove(ctx, n, 0)
}

// RevisionsAbove is Revisions with every revision above above. With n 0
// it hands out nothing and returns the revision the next one would be
// (Current).
func (c *OracleClient) RevisionsAbove(ctx context.Context, n int64, above mvcc.Revision) (mvcc.Revision, error) {
	for {
		first, err := c.cfg.Local.RevisionsAbove(ctx, n, above)
		if !errors.Is(err, ErrNotLeader) {
			c.allocated(n, err)
			return first, err
		}
		if leader, ok := c.cfg.Leader(); ok && leader != c.cfg.Self {
			first, err := c.folded(ctx, n, above)
			if err == nil {
				c.allocated(n, nil)
				return first, nil
			}
			if !errors.Is(err, ErrNotLeader) && ctx.Err() != nil {
				return 0, err
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", ErrNotLeader, ctx.Err())
		case <-time.After(c.cfg.Retry):
		}
	}
}

// Current returns the oracle's current value: a revision at or above
// every revision handed out before the call began, and below every one
// handed out after it returns — without handing one out, so that reading
// it (closers of idle ranges, reads that need "now") never moves the
// cluster's revision (DESIGN.md "Reads"). Reads of it fold into the same
// round trips as requests for revisions.
func (c *OracleClient) Current(ctx context.Context) (mvcc.Revision, error) {
	next, err := c.RevisionsAbove(ctx, 0, 0)
	if err != nil {
		return 0, err
	}
	return next - 1, nil
}

// allocated reports n revisions handed out, if err is nil.
func (c *OracleClient) allocated(n int64, err error) {
	if err == nil && n > 0 && c.cfg.Observer != nil {
		c.cfg.Observer.Allocated(n)
	}
}

// RoundTrips counts the round trips made to other members.
func (c *OracleClient) RoundTrips() int64 { return c.trips.Load() }

// folded asks the leader's member for n revisions together with the
// other requests waiting meanwhile.
func (c *OracleClient) folded(ctx context.Context, n int64, above mvcc.Revision) (mvcc.Revision, error) {
	w := &oracleWait{n: n, above: above, done: make(chan oracleAnswer, 1)}
	c.mu.Lock()
	c.waiting = append(c.waiting, w)
	if !c.busy {
		c.busy = true
		go c.roundTrips()
	}
	c.mu.Unlock()
	select {
	case a := <-w.done:
		return a.first, a.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// roundTrips serves the waiting requests, a round trip per gathering
// (each to the leader known as it starts), until none waits.
func (c *OracleClient) roundTrips() {
	for {
		c.mu.Lock()
		batch := c.waiting
		c.waiting = nil
		if len(batch) == 0 {
			c.busy = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		var (
			total int64
			above mvcc.Revision
		)
		for _, w := range batch {
			total += w.n
			above = max(above, w.above)
		}
		first, err := c.trip(total, above)
		for _, w := range batch {
			w.done <- oracleAnswer{first: first, err: err}
			first += mvcc.Revision(w.n)
		}
	}
}

// trip asks the leader's member for n revisions above above: one round
// trip, abandoned with ErrNotLeader once this member's placement replica
// names another leader or none (see the type's comment), or after
// TripTimeout.
func (c *OracleClient) trip(n int64, above mvcc.Revision) (mvcc.Revision, error) {
	leader, ok := c.cfg.Leader()
	if !ok || leader == c.cfg.Self {
		// Moved since the callers looked: they ask again.
		return 0, fmt.Errorf("%w: the placement group's leader moved", ErrNotLeader)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.TripTimeout)
	defer cancel()
	ctx, stopWatch := whileLeading(ctx, c.cfg.Retry, func() bool {
		l, ok := c.cfg.Leader()
		return ok && l == leader
	})
	defer stopWatch()
	c.trips.Add(1)
	start := time.Now()
	first, err := c.cfg.Remote(ctx, leader, n, above)
	if err != nil {
		err = deposed(ctx, err)
	}
	if c.cfg.Observer != nil {
		c.cfg.Observer.RoundTrip(time.Since(start), n, err)
	}
	return first, err
}
