package placement

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/mvcc"
)

// fakeOracle is the placement group as a client sees it: a local
// allocator that leads or not, and the leader's member reached through
// Remote, handing out revisions from next.
type fakeOracle struct {
	mu      sync.Mutex
	leads   bool
	next    mvcc.Revision
	trips   []trip        // what each round trip asked for
	gate    chan struct{} // if set, a round trip waits on it
	refuses int           // the next round trips answering ErrNotLeader
}

type trip struct {
	n     int64
	above mvcc.Revision
}

func (f *fakeOracle) take(n int64, above mvcc.Revision) mvcc.Revision {
	f.next = max(f.next, above+1)
	first := f.next
	f.next += mvcc.Revision(n)
	return first
}

func (f *fakeOracle) RevisionsAbove(_ context.Context, n int64, above mvcc.Revision) (mvcc.Revision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.leads {
		return 0, ErrNotLeader
	}
	return f.take(n, above), nil
}

func (f *fakeOracle) client() *OracleClient {
	return NewOracleClient(OracleClientConfig{
		Self:   1,
		Local:  f,
		Leader: func() (uint64, bool) { return 2, true },
		Remote: func(ctx context.Context, leader uint64, n int64, above mvcc.Revision) (mvcc.Revision, error) {
			if leader != 2 {
				return 0, errors.New("asked a member that does not lead")
			}
			if f.gate != nil {
				select {
				case <-f.gate:
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			f.trips = append(f.trips, trip{n, above})
			if f.refuses > 0 {
				f.refuses--
				return 0, ErrNotLeader
			}
			return f.take(n, above), nil
		},
		Retry: time.Millisecond,
	})
}

// TestOracleClientFolds: requests arriving while a round trip is under way
// go together in the next one; each gets its own consecutive block, above
// its own floor, and no block overlaps another.
func TestOracleClientFolds(t *testing.T) {
	f := &fakeOracle{next: 100, gate: make(chan struct{})}
	c := f.client()
	const callers = 20
	type block struct{ first, last, above mvcc.Revision }
	blocks := make([]block, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	start := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, above := int64(i%3+1), mvcc.Revision(0)
			if i == 7 {
				above = 5000 // one caller needs the oracle past 5000
			}
			first, err := c.RevisionsAbove(context.Background(), n, above)
			blocks[i], errs[i] = block{first, first + mvcc.Revision(n) - 1, above}, err
		}()
	}
	start(0)
	// The first trip is under way (held at the gate) once it is busy with
	// nobody waiting; the others then queue behind it.
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.busy && len(c.waiting) == 0 })
	for i := 1; i < callers; i++ {
		start(i)
	}
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.waiting) == callers-1 })
	close(f.gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if len(f.trips) != 2 || c.RoundTrips() != 2 {
		t.Fatalf("%d callers made round trips %v (counted %d), want 2: one, then the rest folded", callers, f.trips, c.RoundTrips())
	}
	if f.trips[1].above != 5000 {
		t.Fatalf("the folded trip asked above %d, want the highest floor, 5000", f.trips[1].above)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].first < blocks[j].first })
	for i, b := range blocks {
		if b.first <= b.above {
			t.Fatalf("block %v is not above its floor", b)
		}
		if i > 0 && b.first <= blocks[i-1].last {
			t.Fatalf("blocks %v and %v overlap", blocks[i-1], b)
		}
	}
}

// TestOracleClientLocal: a member whose placement replica leads answers
// from its own allocator, with no round trip.
func TestOracleClientLocal(t *testing.T) {
	f := &fakeOracle{leads: true, next: 10}
	c := f.client()
	first, err := c.RevisionsAbove(context.Background(), 2, 50)
	if err != nil || first != 51 {
		t.Fatalf("RevisionsAbove(2, 50) = %d, %v; want 51", first, err)
	}
	if c.RoundTrips() != 0 {
		t.Fatalf("%d round trips, want none", c.RoundTrips())
	}
}

// TestOracleClientLeaderMoved: a member that no longer leads answers
// ErrNotLeader; the client tries again until one answers, and gives up
// when its context ends.
func TestOracleClientLeaderMoved(t *testing.T) {
	f := &fakeOracle{next: 10, refuses: 2}
	c := f.client()
	first, err := c.Revisions(context.Background(), 1)
	if err != nil || first != 10 || len(f.trips) != 3 {
		t.Fatalf("Revisions(1) = %d, %v after %d trips; want 10 after 3", first, err, len(f.trips))
	}
	f.refuses = 1 << 30
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	// It gives up when ctx ends: not-leader, or ctx's own error if it ended
	// while a round trip was under way.
	if _, err := c.Revisions(ctx, 1); !errors.Is(err, ErrNotLeader) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with no leader answering: %v, want ErrNotLeader or the deadline", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(time.Millisecond) // polling a condition, with a deadline
	}
}

// TestOracleClientCurrent: reading the oracle's current value hands out
// nothing — reads with no request between them agree, and the next
// revision handed out is the one after — and a read folded into a trip
// with requests for revisions is at or above every revision handed out
// before it.
func TestOracleClientCurrent(t *testing.T) {
	f := &fakeOracle{next: 100, gate: make(chan struct{})}
	close(f.gate)
	c := f.client()
	first, err := c.Revisions(context.Background(), 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		cur, err := c.Current(context.Background())
		if err != nil || cur != first+2 {
			t.Fatalf("Current after %d..%d handed out = %d, %v; want %d", first, first+2, cur, err, first+2)
		}
	}
	if next, err := c.Revisions(context.Background(), 1); err != nil || next != first+3 {
		t.Fatalf("Revisions(1) after reading the current value = %d, %v; want %d (nothing consumed)", next, err, first+3)
	}
	// Folded: one held trip, then a request for revisions and two reads
	// together in the next; each read is at or above what was handed out
	// before its trip.
	f.gate = make(chan struct{})
	done := make(chan mvcc.Revision, 1)
	go func() {
		r, _ := c.Revisions(context.Background(), 1)
		done <- r
	}()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.busy && len(c.waiting) == 0 })
	curs := make(chan mvcc.Revision, 2)
	for i := 0; i < 2; i++ {
		go func() {
			r, err := c.Current(context.Background())
			if err != nil {
				t.Error(err)
			}
			curs <- r
		}()
	}
	go func() { _, _ = c.Revisions(context.Background(), 2) }()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.waiting) == 3 })
	close(f.gate)
	held := <-done
	for i := 0; i < 2; i++ {
		if cur := <-curs; cur < held {
			t.Fatalf("a folded Current answered %d, below %d handed out before its trip", cur, held)
		}
	}
}

// TestOracleClientLeaderCutOff (issue 27): a round trip to a leader that
// never answers (cut off from the others, it has not yet noticed it was
// deposed) is abandoned as soon as this member's placement replica names
// a new leader, and the requests waiting on it — the one in the trip and
// those folded behind it — are asked of the new leader at once, not after
// the trip timeout (here far beyond the callers' deadline).
func TestOracleClientLeaderCutOff(t *testing.T) {
	var (
		mu      sync.Mutex
		leader  uint64 = 2
		next           = mvcc.Revision(100)
		stalled        = make(chan struct{}, 1) // a trip reached the cut-off leader
	)
	c := NewOracleClient(OracleClientConfig{
		Self:  1,
		Local: &fakeOracle{},
		Leader: func() (uint64, bool) {
			mu.Lock()
			defer mu.Unlock()
			return leader, true
		},
		Remote: func(ctx context.Context, to uint64, n int64, above mvcc.Revision) (mvcc.Revision, error) {
			if to == 2 {
				select {
				case stalled <- struct{}{}:
				default:
				}
				<-ctx.Done() // cut off: no answer, ever
				return 0, ctx.Err()
			}
			mu.Lock()
			defer mu.Unlock()
			next = max(next, above+1)
			first := next
			next += mvcc.Revision(n)
			return first, nil
		},
		Retry:       time.Millisecond,
		TripTimeout: time.Hour,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type answer struct {
		first mvcc.Revision
		err   error
	}
	answers := make(chan answer, 3)
	ask := func(n int64) {
		go func() {
			first, err := c.Revisions(ctx, n)
			answers <- answer{first, err}
		}()
	}
	ask(1)
	<-stalled
	ask(2)
	ask(3)
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.waiting) == 2 })
	mu.Lock()
	leader = 3 // this member's replica learns of the election
	mu.Unlock()
	for range 3 {
		a := <-answers
		if a.err != nil {
			t.Fatalf("a request caught by the cut-off leader: %v, want revisions from the new one", a.err)
		}
		if a.first < 100 {
			t.Fatalf("answered %d, not from the new leader", a.first)
		}
	}
}
