package router

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard/auth"
)

// remoteStub is range 1's auth state as seen from a member without it:
// linearizable reads get the newest state, serializable ones a replica's
// (lagging, if set). It records the reads.
type remoteStub struct {
	mu     sync.Mutex
	newest *auth.State
	lagged *auth.State // nil: the replica has the newest
	reads  []bool      // linearizable?, by read
	// hold, if set, makes reads wait until it is closed; started is
	// nudged as each read begins.
	hold    chan struct{}
	started chan struct{}
}

func (r *remoteStub) Auth(ctx context.Context, lin bool) (*auth.State, error) {
	r.mu.Lock()
	r.reads = append(r.reads, lin)
	hold, started := r.hold, r.started
	r.mu.Unlock()
	if started != nil {
		started <- struct{}{}
	}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !lin && r.lagged != nil {
		return r.lagged, nil
	}
	return r.newest, nil
}

// take returns the reads made since the last take: "L" linearizable, "S"
// serializable.
func (r *remoteStub) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := ""
	for _, lin := range r.reads {
		if lin {
			out += "L"
		} else {
			out += "S"
		}
	}
	r.reads = nil
	return out
}

func (r *remoteStub) set(newest, lagged *auth.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.newest, r.lagged = newest, lagged
}

// fencedLocal is a replica here with an auth fence the test sets.
type fencedLocal struct {
	*fakeLocal
	mu  sync.Mutex
	rev uint64
	on  bool
}

func (l *fencedLocal) AuthFenceState() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev, l.on
}

func (l *fencedLocal) setFence(rev uint64, on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rev, l.on = rev, on
}

// applyAuth applies auth requests to st in order.
func applyAuth(t *testing.T, st *auth.State, rs ...*pb.InternalRaftRequest) *auth.State {
	t.Helper()
	for _, r := range rs {
		var err error
		if st, _, err = st.Apply(r); err != nil {
			t.Fatalf("apply %v: %v", r, err)
		}
	}
	return st
}

func roleAdd(name string) *pb.InternalRaftRequest {
	return &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: name}}
}

// newTestCache returns a cache of remote on a manual clock, with one
// replica here whose fence the test sets.
func newTestCache(remote AuthStore) (*AuthCache, *ManualClock, *fencedLocal) {
	clock := NewManualClock()
	local := &fencedLocal{fakeLocal: newFakeLocal(&placementpb.RangeDescriptor{Id: 2, Start: []byte("g"), Generation: 1}, &fakeReplica{})}
	ranges := NewRangeCache()
	ranges.Put(RangeEntry{Local: local, Shard: &fakeReplica{}})
	c := CachedAuth(remote, ranges)
	c.now = clock.Now
	c.epoch = clock.Now()
	return c, clock, local
}

// TestAuthCacheRefresh walks a cache through its refreshes: it reads once
// and serves that state while fresh, reads serializably again once
// DefaultAuthCacheAge has passed (never going back to an older state a
// lagging replica gives), linearizably when a replica here applies a newer
// fence (also one that only turns auth on, at the same revision), and a
// linearizable Auth always reads and refreshes the cache.
func TestAuthCacheRefresh(t *testing.T) {
	ctx := context.Background()
	s1 := auth.New()
	s2 := applyAuth(t, s1, roleAdd("a"))
	s3 := applyAuth(t, s2, roleAdd("b"))
	remote := &remoteStub{newest: s1}
	c, clock, local := newTestCache(remote)
	for _, step := range []struct {
		name  string
		do    func()
		lin   bool
		want  *auth.State
		reads string
	}{
		{"first read", func() {}, false, s1, "S"},
		{"fresh: served", func() { clock.Advance(time.Millisecond) }, false, s1, ""},
		{"a change not yet fenced here: served", func() { remote.set(s2, nil); clock.Advance(10 * time.Millisecond) }, false, s1, ""},
		{"fenced here", func() { local.setFence(s2.Revision(), false); clock.Advance(10 * time.Millisecond) }, false, s2, "L"},
		{"fresh again", func() { clock.Advance(10 * time.Millisecond) }, false, s2, ""},
		{"aged, a lagging replica: kept", func() { remote.set(s3, s1); clock.Advance(DefaultAuthCacheAge) }, false, s2, "S"},
		{"fresh after the read", func() { clock.Advance(time.Millisecond) }, false, s2, ""},
		{"linearizable: read", func() {}, true, s3, "L"},
		{"served after it", func() { clock.Advance(10 * time.Millisecond) }, false, s3, ""},
		{"aged, the replica caught up", func() { remote.set(s3, nil); clock.Advance(DefaultAuthCacheAge) }, false, s3, "S"},
	} {
		step.do()
		got, err := c.Auth(ctx, step.lin)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got.Revision() != step.want.Revision() {
			t.Errorf("%s: revision %d, want %d", step.name, got.Revision(), step.want.Revision())
		}
		if r := remote.take(); r != step.reads {
			t.Errorf("%s: remote reads %q, want %q", step.name, r, step.reads)
		}
	}
	if n := c.RemoteReads(); n != 5 {
		t.Errorf("RemoteReads %d, want 5", n)
	}

	// AuthEnable keeps the revision: a fence that only turns auth on.
	off := applyAuth(t, auth.New(),
		&pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: "root", Options: &authpb.UserAddOptions{NoPassword: true}}},
		&pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}})
	on := applyAuth(t, off, &pb.InternalRaftRequest{AuthEnable: &pb.AuthEnableRequest{}})
	remote = &remoteStub{newest: off}
	c, clock, local = newTestCache(remote)
	if st, err := c.Auth(ctx, false); err != nil || st.Enabled() {
		t.Fatalf("before AuthEnable: %v, %v", st, err)
	}
	remote.set(on, nil)
	local.setFence(on.Revision(), true)
	clock.Advance(10 * time.Millisecond)
	if st, err := c.Auth(ctx, false); err != nil || !st.Enabled() {
		t.Fatalf("fenced with auth on: enabled %v, %v; want enabled", st.Enabled(), err)
	}
	if r := remote.take(); r != "SL" {
		t.Errorf("remote reads %q, want %q", r, "SL")
	}
}

// TestAuthCacheSharesReads: callers that find the cache stale at once wait
// for one remote read; a linearizable read does not join a serializable
// one under way.
func TestAuthCacheSharesReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	remote := &remoteStub{newest: auth.New(), hold: make(chan struct{}), started: make(chan struct{}, 16)}
	c, _, _ := newTestCache(remote)
	const callers = 8
	var wg sync.WaitGroup
	errs := make(chan error, callers+1)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Auth(ctx, false)
			errs <- err
		}()
	}
	<-remote.started // the shared read began
	// Every other caller joins it.
	for joined(c) < callers-1 {
		if ctx.Err() != nil {
			t.Fatalf("%d callers joined the read under way, want %d", joined(c), callers-1)
		}
		time.Sleep(time.Millisecond)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := c.Auth(ctx, true)
		errs <- err
	}()
	<-remote.started // the linearizable read began on its own
	close(remote.hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if r := remote.take(); r != "SL" {
		t.Fatalf("remote reads %q, want one shared serializable read then a linearizable one", r)
	}
}

// joined is how many callers wait for c's read under way.
func joined(c *AuthCache) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight == nil {
		return 0
	}
	return c.flight.joined
}

// aliceState is a state with auth on, users root and alice, alice with
// role r, which may write keys [k, l) if grant.
func aliceState(t *testing.T, grant bool) *auth.State {
	t.Helper()
	st := applyAuth(t, auth.New(),
		&pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: "root", Options: &authpb.UserAddOptions{NoPassword: true}}},
		&pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}},
		&pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: "alice", Options: &authpb.UserAddOptions{NoPassword: true}}},
		roleAdd("r"),
		&pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "alice", Role: "r"}},
		&pb.InternalRaftRequest{AuthEnable: &pb.AuthEnableRequest{}})
	if grant {
		st = applyAuth(t, st, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{
			Name: "r", Perm: &authpb.Permission{PermType: authpb.WRITE, Key: []byte("k"), RangeEnd: []byte("l")}}})
	}
	return st
}

// TestAuthCacheRecheck: the router's check refused by a stale cached
// state is made again against a state read linearizably since the request
// began (a grant acknowledged before it is honoured); a refusal the fresh
// state confirms is not checked again, and costs one read.
func TestAuthCacheRecheck(t *testing.T) {
	ctx := context.Background()
	before, granted := aliceState(t, false), aliceState(t, true)
	remote := &remoteStub{newest: before}
	c, clock, _ := newTestCache(remote)
	s := New(Config{Auth: c, AuthTokenTTL: time.Minute})
	tok, err := s.tokens.issue(before, "alice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(rpctypes.TokenFieldNameGRPC, tok))
	checks := 0
	check := func(c caller) error {
		checks++
		return c.st.Check(c.user, []byte("k"), nil, authpb.WRITE)
	}
	if _, err := s.authorize(ctx, check); !isEtcd(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("before the grant: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if r := remote.take(); r != "SL" || checks != 1 {
		t.Fatalf("a confirmed refusal: reads %q, checks %d; want %q, 1", r, checks, "SL")
	}

	remote.set(granted, before) // acknowledged; this member's cache has not seen it
	clock.Advance(time.Millisecond)
	checks = 0
	if _, err := s.authorize(ctx, check); err != nil {
		t.Fatalf("after the grant: %v", err)
	}
	if r := remote.take(); r != "L" || checks != 2 {
		t.Fatalf("after the grant: reads %q, checks %d; want %q, 2", r, checks, "L")
	}
	clock.Advance(time.Millisecond)
	checks = 0
	if _, err := s.authorize(ctx, check); err != nil || checks != 1 || remote.take() != "" {
		t.Fatalf("then served from the cache: %v, %d checks", err, checks)
	}

	// A member that holds range 1 reads its replica: nothing is checked
	// twice.
	s = New(Config{Auth: &fixedAuth{st: before}, AuthTokenTTL: time.Minute})
	if tok, err = s.tokens.issue(before, "alice", time.Now()); err != nil {
		t.Fatal(err)
	}
	ctx = metadata.NewIncomingContext(context.Background(), metadata.Pairs(rpctypes.TokenFieldNameGRPC, tok))
	checks = 0
	if _, err := s.authorize(ctx, check); !isEtcd(err, rpctypes.ErrPermissionDenied) || checks != 1 {
		t.Fatalf("without a cache: %v after %d checks, want %v after 1", err, checks, rpctypes.ErrPermissionDenied)
	}
}

func isEtcd(err, want error) bool { return err != nil && rpctypes.Error(err) == want }

// TestAuthCacheRetryRefusedWrite: a write a range refused as checked at an
// old auth revision is made once more, after a linearizable read begun
// after the refusal; a second refusal goes to the client. Without a cache
// the refusal goes to the client at once.
func TestAuthCacheRetryRefusedWrite(t *testing.T) {
	ctx := context.Background()
	remote := &remoteStub{newest: auth.New()}
	c, clock, _ := newTestCache(remote)
	s := New(Config{Auth: c})
	for _, tc := range []struct {
		name      string
		s         *Server
		refusals  int
		wantCalls int
		wantErr   bool
		wantReads string
	}{
		{"refused once", s, 1, 2, false, "L"},
		{"refused twice", s, 2, 2, true, "L"},
		{"not refused", s, 0, 1, false, ""},
		{"no cache", New(Config{Auth: &fixedAuth{st: auth.New()}}), 1, 1, true, ""},
	} {
		clock.Advance(time.Millisecond)
		calls := 0
		_, err := rerouted(ctx, tc.s, func() (int, error) {
			calls++
			if calls <= tc.refusals {
				return 0, rpctypes.ErrGRPCAuthOldRevision
			}
			return 1, nil
		})
		if (err != nil) != tc.wantErr || calls != tc.wantCalls {
			t.Errorf("%s: %d calls, error %v; want %d calls, error %v", tc.name, calls, err, tc.wantCalls, tc.wantErr)
		}
		if r := remote.take(); r != tc.wantReads {
			t.Errorf("%s: remote reads %q, want %q", tc.name, r, tc.wantReads)
		}
	}
}

// TestAuthCacheAbandonedRead: a caller waiting for a read whose own caller
// went away reads for itself rather than failing with the other's error.
func TestAuthCacheAbandonedRead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	remote := &remoteStub{newest: auth.New(), hold: make(chan struct{}), started: make(chan struct{}, 4)}
	c, _, _ := newTestCache(remote)
	ownerCtx, ownerCancel := context.WithCancel(ctx)
	owner, waiter := make(chan error, 1), make(chan error, 1)
	go func() { _, err := c.Auth(ownerCtx, false); owner <- err }()
	<-remote.started
	go func() { _, err := c.Auth(ctx, false); waiter <- err }()
	for joined(c) < 1 {
		if ctx.Err() != nil {
			t.Fatal("the second caller never joined the read")
		}
		time.Sleep(time.Millisecond)
	}
	ownerCancel()
	if err := <-owner; err == nil {
		t.Fatal("the read of a canceled caller succeeded")
	}
	<-remote.started // the waiter's own read
	close(remote.hold)
	if err := <-waiter; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	if r := remote.take(); r != "SS" {
		t.Fatalf("remote reads %q, want %q", r, "SS")
	}
}
