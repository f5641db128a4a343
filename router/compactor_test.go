package router

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/mvcc"
)

// awaitTimer waits (with a deadline) until the compactor waits on clk and
// returns the duration it asked for.
func awaitTimer(t *testing.T, clk *ManualClock) time.Duration {
	t.Helper()
	d, ok := clk.Await(30 * time.Second)
	if !ok {
		t.Fatal("the compactor did not wait on its clock within 30s")
	}
	return d
}

// TestAutoCompactionOnlyLeaderCompacts: a compactor on a member that does
// not lead the shard keeps sampling but proposes nothing; once it leads, it
// compacts at once at the revision of one period before, as etcd's paused
// and resumed compactor does.
func TestAutoCompactionOnlyLeaderCompacts(t *testing.T) {
	clk := NewManualClock()
	tg := &fakeTarget{}
	c := &compactor{log: slog.New(slog.DiscardHandler), clock: clk, target: tg, mode: CompactionPeriodic, retention: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx) }()
	defer func() { cancel(); <-done }()

	// Two hours as a follower: 20 samples (revisions 1..20), no compaction.
	for range 20 {
		awaitTimer(t, clk)
		clk.Advance(6 * time.Minute)
	}
	awaitTimer(t, clk)
	if got := tg.compacted(); len(got) != 0 {
		t.Fatalf("a follower compacted at %v", got)
	}
	// Leading now: the next round compacts at the oldest sample kept, the
	// revision of 66 minutes before (samples at minutes 0, 6, ... are
	// revisions 1, 2, ...; at minute 126 the window starts at minute 60).
	tg.setLeading(true)
	clk.Advance(6 * time.Minute)
	awaitTimer(t, clk)
	if got, want := tg.compacted(), []mvcc.Revision{11}; !slices.Equal(got, want) {
		t.Fatalf("new leader compacted at %v, want %v", got, want)
	}
}

// fakeTarget counts revisions up by one per read and records compactions.
type fakeTarget struct {
	mu   sync.Mutex // guards the fields below
	rev  mvcc.Revision
	lead bool
	done []mvcc.Revision // compactions, in order
}

func (f *fakeTarget) revision(context.Context) (mvcc.Revision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	return f.rev, nil
}

func (f *fakeTarget) leading() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lead
}

func (f *fakeTarget) setLeading(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lead = v
}

func (f *fakeTarget) compacted() []mvcc.Revision {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.done)
}

func (f *fakeTarget) compact(_ context.Context, rev mvcc.Revision) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = append(f.done, rev)
	return nil
}

// TestCompactionRetention: --auto-compaction-retention reads as etcd reads
// it, and what etcd refuses is refused (plus negative durations).
func TestCompactionRetention(t *testing.T) {
	for _, tc := range []struct {
		mode, retention string
		want            time.Duration
		bad             bool
	}{
		{mode: "revision", retention: "1", want: 1},
		{mode: "revision", retention: "1000", want: 1000},
		{mode: "revision", retention: "1h", want: time.Hour}, // etcd's reading: 3.6e12 revisions
		{mode: "revision", retention: "a", bad: true},
		{mode: "revision", retention: "-1", bad: true},
		{mode: "periodic", retention: "1", want: time.Hour},
		{mode: "periodic", retention: "0", want: 0},
		{mode: "periodic", retention: "", want: 0},
		{mode: "periodic", retention: "30m", want: 30 * time.Minute},
		{mode: "periodic", retention: "a", bad: true},
		{mode: "periodic", retention: "-5m", bad: true},
		{mode: "weekly", retention: "1", bad: true},
		{mode: "weekly", retention: "0", bad: true},
	} {
		got, err := CompactionRetention(tc.mode, tc.retention)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("mode %q retention %q: %v, %v; want %v (error %v)", tc.mode, tc.retention, got, err, tc.want, tc.bad)
		}
	}

}
