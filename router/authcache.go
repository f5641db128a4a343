package router

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/shard/auth"
)

// The auth cache of a member without a replica of range 1 (AuthCache).
//
// Such a member used to read range 1's auth state remotely, serializably,
// for every client request (RemoteAuth: a round trip to a member holding
// range 1, any of its replicas, which may lag). The cache keeps the last
// state read and serves it while it is fresh:
//
//   - by age: a state is read again once the last remote read that it is
//     at least as new as began maxAge ago (DefaultAuthCacheAge, 1 s),
//     serializably, as before (a member that holds no range at all still
//     converges);
//   - by fence: when a replica here has applied an auth fence (or range 1's
//     own state) newer than the cached state, the state is read again
//     linearizably from range 1's leader, which has applied every change
//     fenced (fenceAll sends a fence only after its change applied);
//   - on a refusal a newer state could lift (a permission denied, an empty
//     user, a void token) by the router's own check (Server.authorize, and
//     a watch's creation, permitted), or a write a range refused as checked
//     at an old auth revision (rerouted, authRetry):
//     the state is read linearizably by a read that began after the
//     request did (or, for the range's refusal, after the refusal), and the
//     request is checked, and sent, once more if that state is newer than
//     the one it was checked against;
//   - Auth(ctx, true) (Authenticate, fenceAll, the watch guard) always reads
//     linearizably, and what it reads refreshes the cache.
//
// A refusal by the router's check costs one linearizable read (shared by
// the requests refused meanwhile): a client sending requests it may not
// make through such a member reads range 1 as every request did before.
// The cached state never goes backwards (a read older than it is dropped),
// which the per-request remote read did not promise either.
//
// Why it is safe. Writes: a client write carries the auth revision it was
// checked at (caller.info), and a range with auth on refuses at apply a
// write checked below its fence (shard checkAuthInfo). An auth change is
// acknowledged only once every range's leader applied its fence (fenceAll;
// the range 1 leader's AuthFencer re-sends one a crash lost), so after a
// revoke is acknowledged no range applies a write checked against an older
// state, however old the cache was; a write applied before the fence
// reached its range was ordered before the acknowledgement. That is what
// made the lagging serializable read safe before, and the cache relies on
// nothing more. The refused write is checked again against the fresh state
// and sent once more (it was refused at apply, so nothing of it applied),
// and the client sees what a fresh check says. Grants: a refusal is checked
// again against a state read after the request began, so a grant
// acknowledged before a request began is honoured at once.
//
// What changes for clients (etcd-visible).
//   - Reads (Range, read-only Txn, lease reads) are checked against the
//     cached state, as they were against a possibly lagging replica of
//     range 1. After a revoke (or AuthEnable, or a password change) is
//     acknowledged, a read through a member without range 1 may still pass
//     with the old rights until a replica here applies the change's fence
//     (milliseconds, as a follower of range 1 applied it before) when the
//     member holds replicas, and for up to DefaultAuthCacheAge plus a round
//     trip when it holds none. etcd checks a serializable read against its
//     member's possibly lagging auth store too, but a linearizable one only
//     once its read index caught up, so etcd's linearizable reads see a
//     revoke at once; Cairn's did not promise that before either (the
//     serializable read of range 1), and the window is now the cache's age
//     on a member without replicas.
//   - Watches: Cairn cancels a watcher at a revoke (etcd never does); the
//     guard reads linearizably when a replica here is fenced past the
//     state (authwatch.go), so on a member holding no replica a watcher
//     may get events for up to the cache's age after a revoke.
//   - A write checked against a stale state used to reach the client as
//     ErrAuthOldRevision (clientv3 then authenticates again and retries);
//     it is now checked again here first, so clients see that error less.
//   - Writes are otherwise unchanged (fenced), and so is every request to
//     a member holding range 1 (it reads its replica, uncached).

// DefaultAuthCacheAge is how long an AuthCache serves a state before it
// reads it again.
const DefaultAuthCacheAge = time.Second

// authFenceCheckEvery bounds how often a cache compares its state with the
// fences of the replicas here (a pass over the range cache's entries).
const authFenceCheckEvery = 2 * time.Millisecond

// AuthCache is range 1's auth state as a member without a replica of it
// serves it: a remote AuthStore (RemoteAuth) read once per DefaultAuthCacheAge,
// or sooner when a replica here is fenced past it (see the top of this file).
//
// Concurrency: safe for concurrent use. The current state is an atomic
// pointer to an immutable entry; remote reads are shared through one
// flight at a time, guarded by mu.
type AuthCache struct {
	remote AuthStore
	// fence is the newest auth fence any replica here applied (zero: none).
	fence  func() authMark
	now    func() time.Time
	maxAge time.Duration
	// epoch is the origin of fenceChecked.
	epoch time.Time

	cur atomic.Pointer[authEntry]
	// fenceChecked is when (since epoch) the fences here were last found
	// no newer than the cached state.
	fenceChecked atomic.Int64
	reads        atomic.Uint64

	mu sync.Mutex
	// flight is the remote read under way, nil if none (guarded by mu).
	flight *authFlight
	// seenFence is the newest fence seen ahead of the cached state and
	// seenAt when it was first seen: a linearizable read begun at or
	// after seenAt has it (guarded by mu).
	seenFence authMark
	seenAt    time.Time
}

// authEntry is an AuthCache's state. Immutable.
//
// Invariant: st is at least as new as what the remote read begun at read
// returned, and, if lin is not zero, as new as any state acknowledged
// before lin.
type authEntry struct {
	st   *auth.State
	read time.Time
	lin  time.Time
}

// authFlight is one remote read, shared by the callers that wait for it.
type authFlight struct {
	lin   bool
	start time.Time
	done  chan struct{} // closed once st, err are set
	st    *auth.State
	err   error
	// abandoned: it failed because its caller's context ended (set with
	// err).
	abandoned bool
	// joined counts the callers waiting for it besides its own (guarded
	// by the cache's mu).
	joined int
}

// authMark orders auth states as ranges order fences (fenceBefore): by
// revision, then disabled before enabled.
type authMark struct {
	rev uint64
	on  bool
}

func (m authMark) before(n authMark) bool {
	if m.rev != n.rev {
		return m.rev < n.rev
	}
	return !m.on && n.on
}

func markOf(st *auth.State) authMark { return authMark{st.Revision(), st.Enabled()} }

// CachedAuth returns remote cached, refreshed by age and whenever a
// replica in ranges (nil: none) applies a newer auth fence.
func CachedAuth(remote AuthStore, ranges *RangeCache) *AuthCache {
	c := &AuthCache{remote: remote, now: time.Now, maxAge: DefaultAuthCacheAge, fence: func() authMark { return authMark{} }}
	if ranges != nil {
		c.fence = ranges.localAuthFence
	}
	c.epoch = c.now()
	return c
}

// RemoteReads returns how many times the cache read the state remotely.
func (c *AuthCache) RemoteReads() uint64 { return c.reads.Load() }

// Auth returns the cached state if it is fresh, else reads it; a
// linearizable read always reads it from range 1's leader (joining a read
// begun since the call).
func (c *AuthCache) Auth(ctx context.Context, linearizable bool) (*auth.State, error) {
	now := c.now()
	if linearizable {
		return c.load(ctx, true, now)
	}
	e := c.cur.Load()
	if e == nil || now.Sub(e.read) >= c.maxAge {
		if e != nil && now.Sub(e.read) < 2*c.maxAge && c.busy() {
			return e.st, nil // being read: a little older meanwhile
		}
		if _, err := c.load(ctx, false, now.Add(-c.maxAge)); err != nil {
			return nil, err
		}
		e = c.cur.Load()
	}
	if since, ahead := c.fenced(e.st, now); ahead {
		st, err := c.load(ctx, true, since)
		if err != nil && ctx.Err() == nil {
			// Range 1 has no leader: what a replica of it has, as
			// before the cache.
			return c.load(ctx, false, now)
		}
		return st, err
	}
	return e.st, nil
}

// fenced reports whether a replica here applied a fence newer than st, and
// since when this cache knows it. It looks at most every
// authFenceCheckEvery while the fences were not ahead.
func (c *AuthCache) fenced(st *auth.State, now time.Time) (time.Time, bool) {
	at := int64(now.Sub(c.epoch))
	if at-c.fenceChecked.Load() < int64(authFenceCheckEvery) {
		return time.Time{}, false
	}
	f := c.fence()
	if !markOf(st).before(f) {
		c.fenceChecked.Store(at)
		return time.Time{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seenAt.IsZero() || c.seenFence.before(f) {
		c.seenFence, c.seenAt = f, now
	}
	return c.seenAt, true
}

// busy reports whether a remote read is under way.
func (c *AuthCache) busy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flight != nil
}

// load returns the cached state if a remote read (a linearizable one, if
// lin) begun at or after since made it, else the state after such a read:
// one under way, or one it makes.
func (c *AuthCache) load(ctx context.Context, lin bool, since time.Time) (*auth.State, error) {
	c.mu.Lock()
	if e := c.cur.Load(); e != nil && !e.stamp(lin).IsZero() && !e.stamp(lin).Before(since) {
		c.mu.Unlock()
		return e.st, nil
	}
	f := c.flight
	if f != nil && !f.start.Before(since) && (f.lin || !lin) {
		f.joined++
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		switch {
		case f.err == nil:
			return c.cur.Load().st, nil
		case f.abandoned:
			// The caller that made the read went away: a read of its
			// own.
			return c.read(ctx, &authFlight{lin: lin, start: c.now(), done: make(chan struct{})})
		}
		return nil, f.err
	}
	f = &authFlight{lin: lin, start: c.now(), done: make(chan struct{})}
	c.flight = f
	c.mu.Unlock()
	return c.read(ctx, f)
}

// read makes the remote read f, installs what it read and returns the
// cached state after it.
func (c *AuthCache) read(ctx context.Context, f *authFlight) (*auth.State, error) {
	c.reads.Add(1)
	f.st, f.err = c.remote.Auth(ctx, f.lin)
	f.abandoned = f.err != nil && ctx.Err() != nil
	c.mu.Lock()
	if c.flight == f {
		c.flight = nil
	}
	if f.err == nil {
		c.install(f)
	}
	c.mu.Unlock()
	close(f.done)
	if f.err != nil {
		return nil, f.err
	}
	return c.cur.Load().st, nil
}

// install makes f's state the cache's unless the cache's is newer, and
// moves the entry's stamps forward to f's start.
//
// REQUIRES: c.mu
func (c *AuthCache) install(f *authFlight) {
	ne := &authEntry{st: f.st, read: f.start}
	if f.lin {
		ne.lin = f.start
	}
	if e := c.cur.Load(); e != nil {
		if markOf(f.st).before(markOf(e.st)) {
			ne.st = e.st
		}
		if e.read.After(ne.read) {
			ne.read = e.read
		}
		if e.lin.After(ne.lin) {
			ne.lin = e.lin
		}
	}
	c.cur.Store(ne)
}

// stamp is when the newest read (a linearizable one, if lin) the entry is
// at least as new as began.
func (e *authEntry) stamp(lin bool) time.Time {
	if lin {
		return e.lin
	}
	return e.read
}

// localAuthFence is the newest auth fence (or range 1's own state) any
// replica here applied.
func (c *RangeCache) localAuthFence() authMark {
	var m authMark
	for _, e := range c.view.Load().entries {
		var n authMark
		switch l := e.Local.(type) {
		case interface{ AuthFenceState() (uint64, bool) }:
			n.rev, n.on = l.AuthFenceState()
		case interface{ AuthFence() uint64 }:
			n.rev = l.AuthFence()
		default:
			continue
		}
		if m.before(n) {
			m = n
		}
	}
	return m
}

// authCache is s's AuthCache, nil if its auth state is not cached (a
// member holding range 1, or none at all).
func (s *Server) authCache() *AuthCache {
	switch a := s.cfg.Auth.(type) {
	case *AuthCache:
		return a
	case interface{ AuthCache() *AuthCache }:
		// A store whose reads go through a cache at times (a member
		// range 1 may move to or away from).
		return a.AuthCache()
	}
	return nil
}

// AuthCache returns the cache s reads the auth state through, nil if it
// reads it otherwise.
func (s *Server) AuthCache() *AuthCache { return s.authCache() }

// authStart is the time a request's auth check begins, on the cache's
// clock (zero without a cache).
func (s *Server) authStart() time.Time {
	if c := s.authCache(); c != nil {
		return c.now()
	}
	return time.Time{}
}

// liftable reports whether a newer auth state could lift refusal err of
// the router's check (not a JWT token's ErrAuthOldRevision: the token is
// older than the state already).
func liftable(err error) bool {
	switch rpctypes.Error(err) {
	case rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty, rpctypes.ErrInvalidAuthToken:
		return true
	}
	return false
}

// checkAgain reports whether a request the router's check refused with
// err, checked against seen (nil: not known) from a cache at start, should
// be checked again: a newer state could lift the refusal, and one read
// linearizably since start is newer than seen.
func (s *Server) checkAgain(ctx context.Context, err error, seen *auth.State, start time.Time) bool {
	c := s.authCache()
	if c == nil || !liftable(err) {
		return false
	}
	st, lerr := c.load(ctx, true, start)
	return lerr == nil && (seen == nil || markOf(seen).before(markOf(st)))
}

// authRetry is a client request's one retry after a range refused its
// write as checked against an old auth state (rerouted).
type authRetry struct {
	c     *AuthCache
	start time.Time
	seen  authMark // the cache's state when the attempt began
	done  bool
}

// authRetry begins a request's attempts.
func (s *Server) authRetry() *authRetry {
	c := s.authCache()
	if c == nil {
		return &authRetry{done: true}
	}
	r := &authRetry{c: c, start: c.now()}
	if e := c.cur.Load(); e != nil {
		r.seen = markOf(e.st)
	}
	return r
}

// again reports, once, whether to make the request once more after it
// failed with err: a range refused it as checked at an old auth revision
// (then the state was read linearizably after the refusal), or without a
// user while the state read since the attempt began has auth on and the
// cached one had not.
func (r *authRetry) again(ctx context.Context, err error) bool {
	if r.done || err == nil {
		return false
	}
	switch rpctypes.Error(err) {
	case rpctypes.ErrAuthOldRevision:
		r.done = true
		_, lerr := r.c.load(ctx, true, r.c.now())
		return lerr == nil
	case rpctypes.ErrUserEmpty:
		r.done = true
		st, lerr := r.c.load(ctx, true, r.start)
		return lerr == nil && r.seen.before(markOf(st))
	}
	return false
}
