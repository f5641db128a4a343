package router

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestWatchersReach: a stream's watchers reach a leaderless range when the
// keys of one of them overlap its span, with etcd's key, prefix and
// from-key forms; a cancelled watcher no longer counts.
func TestWatchersReach(t *testing.T) {
	// Range 2 is [m, t), range 3 is [t, ∞).
	l := &Leaderless{Ranges: []LeaderlessRange{{ID: 2, Start: []byte("m"), End: []byte("t")}}}
	last := &Leaderless{Ranges: []LeaderlessRange{{ID: 3, Start: []byte("t")}}}
	for _, tc := range []struct {
		name      string
		key, end  string
		reach     bool
		reachLast bool
	}{
		{name: "one key before", key: "a"},
		{name: "one key inside", key: "m", reach: true},
		{name: "one key at the end", key: "t", reachLast: true},
		{name: "span ending at the start", key: "a", end: "m"},
		{name: "span crossing the start", key: "a", end: "m\x00", reach: true},
		{name: "from key", key: "b", end: "\x00", reach: true, reachLast: true},
		{name: "span after", key: "u", end: "z", reachLast: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ww := &streamWatchers{}
			ww.created(7, &pb.WatchCreateRequest{Key: []byte(tc.key), RangeEnd: []byte(tc.end)})
			if got := ww.reach(l); got != tc.reach {
				t.Errorf("reach [m, t): %v, want %v", got, tc.reach)
			}
			if got := ww.reach(last); got != tc.reachLast {
				t.Errorf("reach [t, ∞): %v, want %v", got, tc.reachLast)
			}
			ww.canceled(7)
			if ww.reach(l) || ww.reach(last) {
				t.Error("a cancelled watcher still reaches a range")
			}
		})
	}
	ww := &streamWatchers{}
	ww.created(1, &pb.WatchCreateRequest{Key: []byte("a")})
	if ww.reach(&Leaderless{}) {
		t.Error("reach of an empty set")
	}
}

// TestMonitorLeaderRange: a require-leader stream whose watcher reaches a
// range without a leader is cancelled with etcd's "no leader" once the
// monitor has counted noLeaderChecks checks, while range 1 keeps its
// leader.
func TestMonitorLeaderRange(t *testing.T) {
	r1, r2 := &fakeReplica{leader: 1}, &fakeReplica{}
	cache := NewRangeCache()
	cache.Put(RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 1, End: []byte("m"), Generation: 1}, r1), Shard: r1},
		RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 2, Start: []byte("m"), Generation: 1}, r2), Shard: r2})
	s := New(Config{Shard: r1, Ranges: cache, LeaderCheckInterval: time.Millisecond})
	w := s.StartLeaderWatch(time.Millisecond)
	defer w.Close()
	ws := &watchServer{s: s}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	ww := &streamWatchers{}
	ww.created(1, &pb.WatchCreateRequest{Key: []byte("n")})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ws.monitorLeader(ctx, cancel, ww)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the monitor did not cancel a stream watching a leaderless range within 30s")
	}
	if err := context.Cause(ctx); !errors.Is(err, rpctypes.ErrGRPCNoLeader) {
		t.Fatalf("stream cancelled with %v, want %v", err, rpctypes.ErrGRPCNoLeader)
	}
}
