package router

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
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

// TestAutoCompactionFailuresReported: each failed compaction is reported
// (CompactorConfig.OnFailure, cairn_auto_compaction_failures_total) and
// retried at the next round; a successful one is not reported.
func TestAutoCompactionFailuresReported(t *testing.T) {
	clk := NewManualClock()
	tg := &fakeTarget{lead: true, fail: fmt.Errorf("range 2: %w", shard.ErrNoLeader)}
	var mu sync.Mutex
	failures := 0
	c := &compactor{log: slog.New(slog.DiscardHandler), clock: clk, target: tg, mode: CompactionRevision, retention: 1,
		onFailure: func() { mu.Lock(); failures++; mu.Unlock() }}
	reported := func() int { mu.Lock(); defer mu.Unlock(); return failures }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx) }()
	defer func() { cancel(); <-done }()

	// The first round reads revision 1, below which there is nothing to
	// compact; each later one reads the next and compacts one below.
	awaitTimer(t, clk)
	clk.Advance(revisionCompactionInterval)
	awaitTimer(t, clk) // a round is over once the compactor waits again
	for round := 1; round <= 3; round++ {
		clk.Advance(revisionCompactionInterval)
		awaitTimer(t, clk)
		if got := reported(); got != round {
			t.Fatalf("after %d failed rounds: %d failures reported", round, got)
		}
	}
	tg.setFail(nil)
	clk.Advance(revisionCompactionInterval)
	awaitTimer(t, clk)
	if got := tg.compacted(); len(got) != 1 {
		t.Fatalf("compacted %v after the failures, want one compaction", got)
	}
	if got := reported(); got != 3 {
		t.Fatalf("%d failures reported after a success, want still 3", got)
	}
}

// fakeTarget counts revisions up by one per read and records compactions.
type fakeTarget struct {
	mu   sync.Mutex // guards the fields below
	rev  mvcc.Revision
	lead bool
	done []mvcc.Revision // compactions, in order
	fail error           // compact's answer while set (nothing is compacted)
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

func (f *fakeTarget) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeTarget) compact(_ context.Context, rev mvcc.Revision) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
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

// compactingReplica records the compactions proposed through it.
type compactingReplica struct {
	*fakeReplica
	mu      sync.Mutex // guards writes
	writes  int
	compErr error // what Write answers a compaction
}

func (r *compactingReplica) Write(_ context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.GetCompaction() != nil {
		r.writes++
	}
	return &shardpb.Response{}, r.compErr
}

func (r *compactingReplica) compactions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

// TestCompactAllPastFailingRange: the automatic compactor's compaction
// (again) goes on past a range that fails, so the ranges after it are
// still compacted, and returns the first failure, naming its range; a
// client's Compact stops at the first range that fails. A range compacted
// already is passed over in both.
func TestCompactAllPastFailingRange(t *testing.T) {
	for _, again := range []bool{true, false} {
		t.Run(fmt.Sprintf("again=%v", again), func(t *testing.T) {
			r1 := &compactingReplica{fakeReplica: &fakeReplica{leader: 1}}
			r2 := &compactingReplica{fakeReplica: &fakeReplica{err: shard.ErrNoLeader}} // WaitClosed fails
			r3 := &compactingReplica{fakeReplica: &fakeReplica{leader: 1}, compErr: &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_COMPACTED}}
			r4 := &compactingReplica{fakeReplica: &fakeReplica{leader: 1}}
			c := NewRangeCache()
			c.Put(RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 1, End: []byte("c"), Generation: 1}, r1.fakeReplica), Shard: r1},
				RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 2, Start: []byte("c"), End: []byte("m"), Generation: 1}, r2.fakeReplica), Shard: r2},
				RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 3, Start: []byte("m"), End: []byte("t"), Generation: 1}, r3.fakeReplica), Shard: r3},
				RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 4, Start: []byte("t"), Generation: 1}, r4.fakeReplica), Shard: r4})
			s := New(Config{Shard: r1, Ranges: c, Oracle: fixedOracle(100)})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := s.compactAll(ctx, &pb.CompactionRequest{Revision: 50}, again)
			if err == nil || !strings.Contains(err.Error(), "no leader") {
				t.Fatalf("compactAll: %v, want range 2's no leader", err)
			}
			if again && !strings.Contains(err.Error(), "range 2") {
				t.Errorf("compactAll: %v, want it to name range 2", err)
			}
			want := []int{1, 0, 0, 0}
			if again {
				want = []int{1, 0, 1, 1}
			}
			for i, r := range []*compactingReplica{r1, r2, r3, r4} {
				if got := r.compactions(); got != want[i] {
					t.Errorf("range %d compacted %d times, want %d", i+1, got, want[i])
				}
			}
		})
	}
}
