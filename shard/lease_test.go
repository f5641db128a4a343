package shard

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

func leaseReq(t *testing.T, m proto.Message) *shardpb.Request {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	switch m.(type) {
	case *pb.LeaseGrantRequest:
		return &shardpb.Request{Op: &shardpb.Request_LeaseGrant{LeaseGrant: b}}
	case *pb.LeaseRevokeRequest:
		return &shardpb.Request{Op: &shardpb.Request_LeaseRevoke{LeaseRevoke: b}}
	case *pb.LeaseCheckpointRequest:
		return &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: b}}
	case *pb.PutRequest:
		return &shardpb.Request{Op: &shardpb.Request_Put{Put: b}}
	case *pb.DeleteRangeRequest:
		return &shardpb.Request{Op: &shardpb.Request_DeleteRange{DeleteRange: b}}
	}
	t.Fatalf("no request for %T", m)
	return nil
}

// attached lists the keys attached to id, as the primary reports them.
func attached(t *testing.T, s *StateMachine, id lease.ID) string {
	t.Helper()
	l := s.Lessor()
	if !l.IsPrimary() {
		l.Promote(time.Now(), 0)
	}
	st, err := l.TimeToLive(id, time.Now(), true)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, k := range st.Keys {
		out = append(out, string(k))
	}
	return strings.Join(out, " ")
}

// TestLeaseApply: grants and revokes through the state machine, the
// attachments it derives from writes, the DELETE events of a revoke at one
// revision, and leases carried by a snapshot into another replica.
func TestLeaseApply(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	var mu sync.Mutex
	var events []*mvccpb.Event
	s := Factory(Config{DB: db, OnApply: func(_ mvcc.Revision, evs []*mvccpb.Event) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, evs...)
	}})(1, 1).(*StateMachine)
	if _, err := s.Open(nil); err != nil {
		t.Fatal(err)
	}

	r := apply(t, s, 1,
		leaseReq(t, &pb.LeaseGrantRequest{ID: 1, TTL: 60}),
		leaseReq(t, &pb.LeaseGrantRequest{ID: 2, TTL: 1}),
		leaseReq(t, &pb.LeaseGrantRequest{ID: 1, TTL: 5}),
		leaseReq(t, &pb.LeaseGrantRequest{ID: 3, TTL: lease.MaxTTL + 1}))
	var g pb.LeaseGrantResponse
	if err := proto.Unmarshal(r[1].GetLeaseGrant(), &g); err != nil || g.ID != 2 || g.TTL != lease.DefaultMinTTL {
		t.Fatalf("grant 2: %v %v, want its ttl raised to the minimum", &g, err)
	}
	if c := r[2].GetError().GetCode(); c != shardpb.ErrorCode_ERROR_CODE_LEASE_EXISTS {
		t.Fatalf("second grant of 1: %v", r[2])
	}
	if c := r[3].GetError().GetCode(); c != shardpb.ErrorCode_ERROR_CODE_LEASE_TTL_TOO_LARGE {
		t.Fatalf("too large ttl: %v", r[3])
	}

	apply(t, s, 2,
		leaseReq(t, &pb.PutRequest{Key: []byte("a"), Lease: 1}),
		leaseReq(t, &pb.PutRequest{Key: []byte("b"), Lease: 1}),
		leaseReq(t, &pb.PutRequest{Key: []byte("c"), Lease: 1}),
		leaseReq(t, &pb.PutRequest{Key: []byte("d"), Lease: 1}),
		leaseReq(t, &pb.PutRequest{Key: []byte("c"), Lease: 2}),                  // moves c to 2
		leaseReq(t, &pb.PutRequest{Key: []byte("d"), Value: []byte("no lease")}), // detaches d
		leaseReq(t, &pb.PutRequest{Key: []byte("b"), IgnoreLease: true, Value: []byte("kept")}),
		leaseReq(t, &pb.DeleteRangeRequest{Key: []byte("a")}), // detaches a
		leaseReq(t, &pb.PutRequest{Key: []byte("a"), Lease: 1}),
	)
	if r := apply(t, s, 3, leaseReq(t, &pb.PutRequest{Key: []byte("x"), Lease: 9})); r[0].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
		t.Fatalf("put with an unknown lease: %v", r[0])
	}
	if got := attached(t, s, 1); got != "a b" {
		t.Fatalf("lease 1 keys %q, want \"a b\"", got)
	}
	if got := attached(t, s, 2); got != "c" {
		t.Fatalf("lease 2 keys %q, want \"c\"", got)
	}

	// The snapshot carries the leases and their attachments.
	snap, err := s.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.SaveSnapshot(snap, &buf, nil); err != nil {
		t.Fatal(err)
	}
	other, _ := openSM(t, openDB(t, vfs.NewMem()), 1, mvcc.Span{})
	apply(t, other, 1, leaseReq(t, &pb.LeaseGrantRequest{ID: 77, TTL: 60})) // replaced by the restore
	if err := other.RecoverFromSnapshot(bytes.NewReader(buf.Bytes()), nil); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(other.Lessor().Leases()); got != "[{1 60 0} {2 2 0}]" {
		t.Fatalf("restored leases %s", got)
	}
	if got := attached(t, other, 1); got != "a b" {
		t.Fatalf("restored lease 1 keys %q", got)
	}

	mu.Lock()
	events = nil
	mu.Unlock()
	r = apply(t, s, 4, leaseReq(t, &pb.LeaseRevokeRequest{ID: 1}), leaseReq(t, &pb.LeaseRevokeRequest{ID: 1}))
	var rv pb.LeaseRevokeResponse
	if err := proto.Unmarshal(r[0].GetLeaseRevoke(), &rv); err != nil {
		t.Fatalf("revoke: %v %v", r[0], err)
	}
	if c := r[1].GetError().GetCode(); c != shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
		t.Fatalf("second revoke: %v", r[1])
	}
	mu.Lock()
	var got []string
	for _, ev := range events {
		got = append(got, fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision))
	}
	mu.Unlock()
	want := []string{fmt.Sprintf("DELETE a@%d", rv.Header.Revision), fmt.Sprintf("DELETE b@%d", rv.Header.Revision)}
	if !slices.Equal(got, want) {
		t.Fatalf("revoke events %v, want %v", got, want)
	}
	if got := keys(t, s); !strings.HasPrefix(got, "c=@") || strings.Contains(got, "a=") || strings.Contains(got, "b=") {
		t.Fatalf("after revoke %q, want a and b gone", got)
	}
	if r := apply(t, s, 5, leaseReq(t, &pb.PutRequest{Key: []byte("late"), Lease: 1})); r[0].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
		t.Fatalf("put with a revoked lease: %v", r[0])
	}
	// A revoke with no keys attached takes no revision.
	before := s.store.Rev()
	apply(t, s, 6, leaseReq(t, &pb.LeaseGrantRequest{ID: 5, TTL: 60}), leaseReq(t, &pb.LeaseRevokeRequest{ID: 5}))
	if s.store.Rev() != before {
		t.Fatalf("grant and revoke of an empty lease moved the revision %d → %d", before, s.store.Rev())
	}

	// Reopening recovers the remaining leases from pebble.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	again, _ := openSM(t, db, 1, mvcc.Span{})
	if got := fmt.Sprint(again.Lessor().Leases()); got != "[{2 2 0}]" {
		t.Fatalf("reopened leases %s", got)
	}
	if got := attached(t, again, 2); got != "c" {
		t.Fatalf("reopened lease 2 keys %q", got)
	}
}

// manualClock is a clock tests move by hand.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestPrimary: on a real NodeHost, the primary loop promotes the lessor of
// the leader, checkpoints long leases through raft, and revokes expired
// ones (with their keys) in rounds — all driven by a manual clock.
func TestPrimary(t *testing.T) {
	clock := &manualClock{now: time.Unix(1_000_000, 0)}
	r, m := startReplicaWith(t, Config{
		Lease: lease.Options{CheckpointInterval: 10 * time.Second},
		Now:   clock.Now,
	})
	p := StartPrimary(PrimaryConfig{Replica: r, Lessor: m.Lessor, ReplicaID: 1, ElectionTimeout: time.Second,
		Interval: time.Millisecond, RevokeRound: 7, Now: clock.Now})
	defer p.Close()
	waitFor(t, "the lessor is promoted", m.Lessor().IsPrimary)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var reqs []*shardpb.Request
	for id := int64(1); id <= 20; id++ {
		reqs = append(reqs, leaseReq(t, &pb.LeaseGrantRequest{ID: id, TTL: 5}))
		reqs = append(reqs, leaseReq(t, &pb.PutRequest{Key: fmt.Appendf(nil, "k%02d", id), Lease: id}))
	}
	reqs = append(reqs, leaseReq(t, &pb.LeaseGrantRequest{ID: 100, TTL: 60}))
	if _, errs := r.WriteAll(ctx, reqs); slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
		t.Fatalf("writes: %v", errs)
	}
	// Past the checkpoint interval: lease 100 gets its remaining TTL
	// recorded through raft; the 5 s leases have expired and are revoked.
	clock.Advance(12 * time.Second)
	waitFor(t, "the expired leases are revoked", func() bool { return m.Lessor().Len() == 1 })
	waitFor(t, "lease 100 is checkpointed", func() bool {
		l, _ := m.Lessor().Lookup(100)
		return l.RemainingTTL > 0 && l.RemainingTTL < 60
	})
	if got := keys(t, m); got != "" {
		t.Fatalf("keys of revoked leases remain: %q", got)
	}
	// A new primary (after a leader change) starts lease 100 from its
	// checkpoint plus the election timeout, not from its full TTL.
	l := m.Lessor()
	l.Demote()
	waitFor(t, "the primary promotes the lessor again", l.IsPrimary)
	st, err := l.TimeToLive(100, clock.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	cp, _ := l.Lookup(100)
	if st.TTL != cp.RemainingTTL+1 {
		t.Fatalf("after re-promotion lease 100 has %ds, want its checkpoint %ds + 1s", st.TTL, cp.RemainingTTL)
	}
}

// waitFor polls cond until it holds, failing after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond) // polling a condition, with a deadline
	}
}
