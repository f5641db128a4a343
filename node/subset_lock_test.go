package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/electionpb"
)

// subsetRecipePlace picks, on a startSubsets cluster, where the lock and
// election tests run: out, a member holding neither range 1 (the leases'
// home) nor the range of the returned split key, in, a member holding
// that range, and the split key, whose range holds every key under
// key+"lock/" and key+"elect/".
func subsetRecipePlace(t *testing.T, cl *nodetest.Cluster) (out, in int, key string) {
	t.Helper()
	leases := holders(t, cl, 1)
	for o := range cl.Size() {
		if slices.Contains(leases, o) {
			continue
		}
		for _, k := range subsetSplits {
			id := rangeOf(t, cl, k)
			hs := holders(t, cl, id)
			if slices.Contains(hs, o) {
				continue
			}
			for _, name := range []string{k + "lock/", k + "elect/"} {
				if got := rangeOf(t, cl, name); got != id {
					t.Fatalf("%q is in range %d, not %q's %d", name, got, k, id)
				}
			}
			t.Logf("member %d holds neither range 1 (on %v) nor range %d of %q (on %v); member %d does", o, leases, id, k, hs, hs[0])
			return o, hs[0], k
		}
	}
	t.Fatal("every member outside range 1 holds every range")
	return -1, -1, ""
}

// recipeSession opens a session of ttl seconds through c, closed (its
// lease revoked) when the test ends if it has not been before.
func recipeSession(t *testing.T, c *clientv3.Client, ttl int) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitDone waits, up to the test's deadline, for the result of a call
// that waits (a lock or a campaign) once what lets it through has happened.
func waitDone[R any](ctx context.Context, t *testing.T, what string, ch <-chan R) R {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		t.Fatalf("timed out waiting until %s", what)
		var zero R
		return zero
	}
}

// notYet fails if a call that must still wait has answered.
func notYet[R any](t *testing.T, what string, ch <-chan R) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s answered while it must wait: %v", what, r)
	default:
	}
}

// TestSubsetLock (issue 21): five members, three replicas per range; locks
// taken through a member that holds neither the lock keys' range nor range
// 1 (where leases live), contended by one through a member holding the
// range. With clientv3's concurrency.Mutex (the recipe over KV, Lease and
// Watch) and with etcd's Lock service (the node's recipe, through its
// wire protocol): the second waits until the first unlocks, a third waits
// until the holder's session is closed (its lease revoked), and with the
// Mutex a fourth until the holder's lease expires unrenewed.
func TestSubsetLock(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, in, k := subsetRecipePlace(t, cl)
	co, ci := cl.Client(out), cl.Client(in)

	t.Run("Mutex", func(t *testing.T) {
		name := k + "lock/mutex"
		waiters := func(n int) func() bool {
			return func() bool { return len(keysUnder(t, co, name+"/")) == n }
		}
		lockAsync := func(m *concurrency.Mutex) <-chan error {
			ch := make(chan error, 1)
			go func() { ch <- m.Lock(ctx) }()
			return ch
		}
		s1, s2 := recipeSession(t, co, 60), recipeSession(t, ci, 60)
		m1, m2 := concurrency.NewMutex(s1, name), concurrency.NewMutex(s2, name)
		if err := m1.Lock(ctx); err != nil {
			t.Fatalf("lock through member %d: %v", out, err)
		}
		// Held: a try from the other member is refused at once.
		if err := concurrency.NewMutex(recipeSession(t, ci, 60), name).TryLock(ctx); err != concurrency.ErrLocked {
			t.Fatalf("trylock through member %d while held: %v, want %v", in, err, concurrency.ErrLocked)
		}
		got2 := lockAsync(m2)
		nodetest.Eventually(t, "the second waits", waiters(2))
		notYet(t, "the second lock", got2)
		if err := m1.Unlock(ctx); err != nil {
			t.Fatalf("unlock through member %d: %v", out, err)
		}
		if err := waitDone(ctx, t, "the second locks after the unlock", got2); err != nil {
			t.Fatalf("lock through member %d: %v", in, err)
		}
		if r, err := co.Get(ctx, name+"/", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Key) != m2.Key() {
			t.Fatalf("after the hand-over: %v %v, want only %q", r, err, m2.Key())
		}

		// The holder's session closes (its lease revoked): the next, through
		// the member without the range, takes the lock.
		s3 := recipeSession(t, co, 60)
		m3 := concurrency.NewMutex(s3, name)
		got3 := lockAsync(m3)
		nodetest.Eventually(t, "the third waits", waiters(2))
		notYet(t, "the third lock", got3)
		if err := s2.Close(); err != nil {
			t.Fatalf("close the holder's session: %v", err)
		}
		if err := waitDone(ctx, t, "the third locks after the holder's session closed", got3); err != nil {
			t.Fatalf("lock through member %d: %v", out, err)
		}
		if err := m3.Unlock(ctx); err != nil {
			t.Fatalf("unlock through member %d: %v", out, err)
		}

		// The holder's lease expires, no longer kept alive: the next takes
		// the lock once the lessor on range 1's members revokes it.
		short := recipeSession(t, co, 2)
		ms := concurrency.NewMutex(short, name)
		if err := ms.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		m4 := concurrency.NewMutex(recipeSession(t, ci, 60), name)
		got4 := lockAsync(m4)
		nodetest.Eventually(t, "the fourth waits", waiters(2))
		notYet(t, "the fourth lock", got4)
		short.Orphan() // stops its keepalives
		if err := waitDone(ctx, t, "the fourth locks after the holder's lease expired", got4); err != nil {
			t.Fatalf("lock through member %d: %v", in, err)
		}
		if r, err := ci.TimeToLive(ctx, short.Lease()); err != nil || r.TTL != -1 {
			t.Fatalf("the expired holder's lease: %v %v, want it gone", r, err)
		}
		if err := m4.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		nodetest.Eventually(t, "no lock key is left", waiters(0))
	})

	t.Run("Service", func(t *testing.T) {
		name := k + "lock/service"
		connO, connI := wireConn(t, cl.Node(out)), wireConn(t, cl.Node(in))
		async := func(conn *grpc.ClientConn, lease clientv3.LeaseID) <-chan lockResult {
			ch := make(chan lockResult, 1)
			go func() {
				r, err := lock(ctx, conn, name, lease)
				ch <- lockResult{r, err}
			}()
			return ch
		}
		waiters := func(n int) func() bool {
			return func() bool { return len(keysUnder(t, co, name+"/")) == n }
		}
		lease1, lease2, lease3 := grant(t, co, 60), grant(t, ci, 60), grant(t, co, 60)
		l1, err := lock(ctx, connO, name, lease1)
		if err != nil {
			t.Fatalf("lock through member %d: %v", out, err)
		}
		if want := fmt.Sprintf("%s/%x", name, lease1); string(l1.Key) != want {
			t.Fatalf("lock key %q, want %q", l1.Key, want)
		}
		got2 := async(connI, lease2)
		nodetest.Eventually(t, "the second waits", waiters(2))
		notYet(t, "the second lock", got2)
		u, err := unlock(ctx, connO, l1.Key)
		if err != nil {
			t.Fatalf("unlock through member %d: %v", out, err)
		}
		r2 := waitDone(ctx, t, "the second locks after the unlock", got2)
		if r2.err != nil {
			t.Fatalf("lock through member %d: %v", in, r2.err)
		}
		if want := fmt.Sprintf("%s/%x", name, lease2); string(r2.resp.Key) != want || r2.resp.Header.Revision < u.Header.Revision {
			t.Fatalf("second lock: key %q at %d, want %q at or after the unlock's %d", r2.resp.Key, r2.resp.Header.Revision, want, u.Header.Revision)
		}

		// The holder's lease revoked (its client's session closed): the
		// next, through the member without the range, takes the lock.
		got3 := async(connO, lease3)
		nodetest.Eventually(t, "the third waits", waiters(2))
		notYet(t, "the third lock", got3)
		if _, err := ci.Revoke(ctx, lease2); err != nil {
			t.Fatal(err)
		}
		r3 := waitDone(ctx, t, "the third locks after the holder's lease was revoked", got3)
		if r3.err != nil {
			t.Fatalf("lock through member %d: %v", out, r3.err)
		}
		if want := fmt.Sprintf("%s/%x", name, lease3); string(r3.resp.Key) != want {
			t.Fatalf("third lock: key %q, want %q", r3.resp.Key, want)
		}
		if _, err := unlock(ctx, connI, r3.resp.Key); err != nil {
			t.Fatalf("unlock through member %d: %v", in, err)
		}
		nodetest.Eventually(t, "no lock key is left", waiters(0))
	})
}

// TestSubsetElection (issue 21): the cluster of TestSubsetLock; elections
// run through a member that holds neither the election keys' range nor
// range 1, and through a member holding the range. With clientv3's
// concurrency.Election and with etcd's Election service: a campaign wins,
// a second candidate waits, observers on both members see the leader's
// value, its proclamation, and the second candidate after a resign; a
// third wins once the leader's session is closed.
func TestSubsetElection(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, in, k := subsetRecipePlace(t, cl)
	co, ci := cl.Client(out), cl.Client(in)

	t.Run("Recipe", func(t *testing.T) {
		name := k + "elect/recipe"
		waiters := func(n int) func() bool {
			return func() bool { return len(keysUnder(t, co, name+"/")) == n }
		}
		octx, ocancel := context.WithCancel(ctx)
		defer ocancel()
		observers := map[string]<-chan *clientv3.GetResponse{
			"out": concurrency.NewElection(recipeSession(t, co, 60), name).Observe(octx),
			"in":  concurrency.NewElection(recipeSession(t, ci, 60), name).Observe(octx),
		}
		// observed takes each observer's next value; every step below waits
		// for it before the next change, so none can be skipped.
		observed := func(want string) {
			t.Helper()
			for on, ch := range observers {
				select {
				case r, ok := <-ch:
					if !ok || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != want {
						t.Fatalf("observer through %q observed %v (open %v), want %q", on, r, ok, want)
					}
				case <-ctx.Done():
					t.Fatalf("observer through %q observed nothing, want %q", on, want)
				}
			}
		}
		lookers := []*concurrency.Election{
			concurrency.NewElection(recipeSession(t, co, 60), name),
			concurrency.NewElection(recipeSession(t, ci, 60), name),
		}
		leads := func(want string) {
			t.Helper()
			for _, e := range lookers {
				r, err := e.Leader(ctx)
				if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != want {
					t.Fatalf("leader: %v %v, want %q", r, err, want)
				}
			}
		}
		campaignAsync := func(e *concurrency.Election, val string) <-chan error {
			ch := make(chan error, 1)
			go func() { ch <- e.Campaign(ctx, val) }()
			return ch
		}

		e1 := concurrency.NewElection(recipeSession(t, co, 60), name)
		if err := e1.Campaign(ctx, "one"); err != nil {
			t.Fatalf("campaign through member %d: %v", out, err)
		}
		observed("one")
		leads("one")
		s2 := recipeSession(t, ci, 60)
		e2 := concurrency.NewElection(s2, name)
		won2 := campaignAsync(e2, "two")
		nodetest.Eventually(t, "the second candidate waits", waiters(2))
		notYet(t, "the second campaign", won2)
		if err := e1.Proclaim(ctx, "one again"); err != nil {
			t.Fatalf("proclaim through member %d: %v", out, err)
		}
		observed("one again")
		leads("one again")
		notYet(t, "the second campaign", won2)
		if err := e1.Resign(ctx); err != nil {
			t.Fatalf("resign through member %d: %v", out, err)
		}
		if err := waitDone(ctx, t, "the second candidate wins after the resign", won2); err != nil {
			t.Fatalf("campaign through member %d: %v", in, err)
		}
		observed("two")
		leads("two")

		// The leader's session closes: a third, through the member
		// without the range, wins.
		e3 := concurrency.NewElection(recipeSession(t, co, 60), name)
		won3 := campaignAsync(e3, "three")
		nodetest.Eventually(t, "the third candidate waits", waiters(2))
		notYet(t, "the third campaign", won3)
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
		if err := waitDone(ctx, t, "the third candidate wins after the leader's session closed", won3); err != nil {
			t.Fatalf("campaign through member %d: %v", out, err)
		}
		observed("three")
		leads("three")
		if err := e2.Proclaim(ctx, "not any more"); err != concurrency.ErrElectionNotLeader {
			t.Fatalf("proclaim by a deposed leader: %v, want %v", err, concurrency.ErrElectionNotLeader)
		}
		if err := e3.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		nodetest.Eventually(t, "no candidate's key is left", waiters(0))
	})

	t.Run("Service", func(t *testing.T) {
		name := k + "elect/service"
		connO, connI := wireConn(t, cl.Node(out)), wireConn(t, cl.Node(in))
		waiters := func(n int) func() bool {
			return func() bool { return len(keysUnder(t, co, name+"/")) == n }
		}
		octx, ocancel := context.WithCancel(ctx)
		defer ocancel()
		nextO, err := observe(octx, connO, name)
		if err != nil {
			t.Fatal(err)
		}
		nextI, err := observe(octx, connI, name)
		if err != nil {
			t.Fatal(err)
		}
		// observed takes each observer's next answer: the leader's key,
		// created at rev, with value.
		observed := func(l *electionpb.LeaderKey, value string) {
			t.Helper()
			for on, next := range map[int]func() (*electionpb.LeaderResponse, error){out: nextO, in: nextI} {
				r, err := next()
				if err != nil || r.Kv == nil || string(r.Kv.Key) != string(l.Key) || r.Kv.CreateRevision != l.Rev || string(r.Kv.Value) != value {
					t.Fatalf("observe through member %d: %v %v, want key %q created at %d with %q", on, r, err, l.Key, l.Rev, value)
				}
			}
		}
		leads := func(l *electionpb.LeaderKey, value string) {
			t.Helper()
			for on, conn := range map[int]*grpc.ClientConn{out: connO, in: connI} {
				r, err := leader(ctx, conn, name)
				if err != nil || r.Kv == nil || string(r.Kv.Key) != string(l.Key) || string(r.Kv.Value) != value {
					t.Fatalf("leader through member %d: %v %v, want %q with %q", on, r, err, l.Key, value)
				}
			}
		}
		type campaigned struct {
			resp *electionpb.CampaignResponse
			err  error
		}
		campaignAsync := func(conn *grpc.ClientConn, lease clientv3.LeaseID, val string) <-chan campaigned {
			ch := make(chan campaigned, 1)
			go func() {
				r, err := campaign(ctx, conn, name, lease, val)
				ch <- campaigned{r, err}
			}()
			return ch
		}

		lease1, lease2, lease3 := grant(t, co, 60), grant(t, ci, 60), grant(t, co, 60)
		c1, err := campaign(ctx, connO, name, lease1, "a")
		if err != nil {
			t.Fatalf("campaign through member %d: %v", out, err)
		}
		l1 := c1.Leader
		if want := fmt.Sprintf("%s/%x", name, lease1); l1 == nil || string(l1.Key) != want || l1.Rev != c1.Header.Revision {
			t.Fatalf("campaign: %v, want key %q", c1, want)
		}
		observed(l1, "a")
		leads(l1, "a")
		won2 := campaignAsync(connI, lease2, "b")
		nodetest.Eventually(t, "the second candidate waits", waiters(2))
		notYet(t, "the second campaign", won2)
		if err := proclaim(ctx, connO, l1, "a2"); err != nil {
			t.Fatalf("proclaim through member %d: %v", out, err)
		}
		observed(l1, "a2")
		leads(l1, "a2")
		notYet(t, "the second campaign", won2)
		if _, err := resign(ctx, connI, l1); err != nil { // the key, not the member, resigns
			t.Fatalf("resign through member %d: %v", in, err)
		}
		c2 := waitDone(ctx, t, "the second candidate wins after the resign", won2)
		if c2.err != nil {
			t.Fatalf("campaign through member %d: %v", in, c2.err)
		}
		l2 := c2.resp.Leader
		if want := fmt.Sprintf("%s/%x", name, lease2); string(l2.Key) != want || l2.Rev <= l1.Rev {
			t.Fatalf("second campaign: %v, want key %q created after %d", c2.resp, want, l1.Rev)
		}
		observed(l2, "b")
		leads(l2, "b")

		// The leader's lease revoked: a third, through the member without
		// the range, wins.
		won3 := campaignAsync(connO, lease3, "c")
		nodetest.Eventually(t, "the third candidate waits", waiters(2))
		notYet(t, "the third campaign", won3)
		if _, err := ci.Revoke(ctx, lease2); err != nil {
			t.Fatal(err)
		}
		c3 := waitDone(ctx, t, "the third candidate wins after the leader's lease was revoked", won3)
		if c3.err != nil {
			t.Fatalf("campaign through member %d: %v", out, c3.err)
		}
		observed(c3.resp.Leader, "c")
		leads(c3.resp.Leader, "c")
		if _, err := resign(ctx, connO, c3.resp.Leader); err != nil {
			t.Fatal(err)
		}
		nodetest.Eventually(t, "no candidate's key is left", waiters(0))
	})
}
