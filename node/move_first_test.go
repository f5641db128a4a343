package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// leaseLoad keeps a lease alive through one client and puts keys with it
// in range 1 ("a-…") and range 2 ("z-…") through another, until stop.
type leaseLoad struct {
	id   clientv3.LeaseID
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	errs   []error
	puts   int
	acks   int       // keepalive answers
	last   time.Time // of the last keepalive answer
	closed bool      // the keepalive channel closed: the lease was lost
}

// startLeaseLoad grants a lease of ttl seconds through keep, keeps it
// alive through keep and puts with it through put.
func startLeaseLoad(ctx context.Context, t *testing.T, keep, put *clientv3.Client, ttl int64) *leaseLoad {
	t.Helper()
	g, err := keep.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	l := &leaseLoad{id: g.ID, stop: make(chan struct{})}
	kctx, kcancel := context.WithCancel(ctx)
	ch, err := keep.KeepAlive(kctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				kcancel()
				return
			case _, ok := <-ch:
				l.mu.Lock()
				if !ok {
					l.closed = true
					l.mu.Unlock()
					kcancel()
					return
				}
				l.acks++
				l.last = time.Now()
				l.mu.Unlock()
			}
		}
	}()
	go func() {
		defer l.wg.Done()
		for seq := 0; ; seq++ {
			select {
			case <-l.stop:
				return
			default:
			}
			key := fmt.Sprintf("a-lease-%05d", seq)
			if seq%2 == 1 {
				key = fmt.Sprintf("z-lease-%05d", seq)
			}
			octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := put.Put(octx, key, "v", clientv3.WithLease(g.ID))
			ocancel()
			l.mu.Lock()
			if err != nil {
				l.errs = append(l.errs, fmt.Errorf("put %s: %w", key, err))
			} else {
				l.puts++
			}
			l.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return l
}

// alive fails t unless the keepalive answered after since and no put
// failed.
func (l *leaseLoad) alive(t *testing.T, since time.Time) {
	t.Helper()
	nodetest.Eventually(t, "the lease is kept alive after the move", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.closed || len(l.errs) > 0 || l.last.After(since)
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		t.Fatalf("the keepalive of lease %x ended (the lease was lost) after %d answers", l.id, l.acks)
	}
	if len(l.errs) > 0 {
		t.Fatalf("%d puts with the lease failed (%d went through); first: %v", len(l.errs), l.puts, l.errs[0])
	}
}

func (l *leaseLoad) close() {
	close(l.stop)
	l.wg.Wait()
}

// transferFirst makes member i's replica of range 1 lead it.
func transferFirst(ctx context.Context, t *testing.T, cl *nodetest.Cluster, i int) {
	t.Helper()
	nc := operatorClient(t, cl, i)
	if _, err := nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: 1, Member: cl.Node(i).MemberID()}); err != nil {
		t.Fatalf("range 1's leadership to member %d: %v", i, err)
	}
}

// TestMoveFirstRange: five members, three replicas per range, two ranges;
// range 1 — the leases' home, the cluster's records and auth state —
// moves from the member leading it to a member that holds none of it,
// while a lease is kept alive through a member that never holds range 1
// and keys are put with it in both ranges through the member losing it.
// No put fails and the lease lives on; afterwards, with range 1 led by the
// member it moved to: keepalive and TimeToLive answer through a member
// that never held it and through the one that left, a lease granted then
// expires and its keys in both ranges go, auth (a user with a role) works
// through a member without range 1 and through the new holder, and the
// member left holds nothing of range 1.
func TestMoveFirstRange(t *testing.T) {
	cl := nodetest.Start(t, 5, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	first, second := holders(t, cl, 1), holders(t, cl, 2)
	// The source: a holder of range 1 holding nothing else if there is
	// one (its data must go whole); the destination and the member that
	// never holds range 1: the others.
	from := first[0]
	for _, i := range first {
		if !slices.Contains(second, i) {
			from = i
			break
		}
	}
	var outside []int
	for i := range cl.Size() {
		if !slices.Contains(first, i) {
			outside = append(outside, i)
		}
	}
	to, never := outside[0], outside[1]
	fromID, toID := cl.Node(from).MemberID(), cl.Node(to).MemberID()
	oldReplica, ok := placement.ReplicaOf(rangeIn(t, cl, 1), placement.NodeID(fromID))
	if !ok {
		t.Fatalf("member %d holds no replica of range 1", from)
	}
	t.Logf("range 1 on %v, range 2 on %v: moving range 1 from member %d to %d; member %d never holds it", first, second, from, to, never)

	// The source leads: the move hands leadership on before it leaves,
	// and the next leader's primary takes the leases over.
	transferFirst(ctx, t, cl, from)
	idle, err := cl.Client(never).Grant(ctx, 30) // not kept alive
	if err != nil {
		t.Fatal(err)
	}
	load := startLeaseLoad(ctx, t, cl.Client(never), cl.Client(from), 4)
	nodetest.Eventually(t, "puts with the lease go through", func() bool {
		load.mu.Lock()
		defer load.mu.Unlock()
		return load.puts >= 10 || len(load.errs) > 0
	})

	resp, err := operatorClient(t, cl, never).MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 1, FromMember: fromID, ToMember: toID})
	if err != nil {
		load.close()
		t.Fatalf("move range 1 from member %d to %d: %v", from, to, err)
	}
	d := resp.Range
	if _, ok := placement.ReplicaOf(d, placement.NodeID(toID)); !ok || len(placement.Voters(d)) != 3 {
		t.Fatalf("after the move range 1 is %v", placement.Pairs(d))
	}
	if _, ok := placement.ReplicaOf(d, placement.NodeID(fromID)); ok {
		t.Fatalf("after the move range 1 is still on member %d: %v", from, placement.Pairs(d))
	}
	moved := time.Now()
	load.alive(t, moved)

	// The member it moved to leads range 1: its primary, wired as the
	// replica started there, keeps the leases.
	transferFirst(ctx, t, cl, to)
	load.alive(t, time.Now())
	load.close()
	for _, i := range []int{never, from, to} {
		c := cl.Client(i)
		ttl, err := c.TimeToLive(ctx, load.id, clientv3.WithAttachedKeys())
		if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL != 4 || len(ttl.Keys) == 0 {
			t.Fatalf("member %d: time-to-live of the lease kept alive: %+v, %v", i, ttl, err)
		}
		if ka, err := c.KeepAliveOnce(ctx, load.id); err != nil || ka.TTL != 4 {
			t.Fatalf("member %d: keepalive after the move: %+v, %v", i, ka, err)
		}
		// The lease granted for 30 s and never renewed kept its TTL
		// (at most an election timeout more, as a leader change gives).
		ttl, err = c.TimeToLive(ctx, idle.ID)
		if err != nil || ttl.TTL <= 0 || ttl.TTL > 31 {
			t.Fatalf("member %d: time-to-live of the idle lease: %+v, %v", i, ttl, err)
		}
	}

	// A lease granted after the move expires: its keys go in both ranges.
	short, err := cl.Client(never).Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"a-short", "z-short"} {
		if _, err := cl.Client(never).Put(ctx, key, "v", clientv3.WithLease(short.ID)); err != nil {
			t.Fatalf("put %s with the short lease: %v", key, err)
		}
	}
	nodetest.Eventually(t, "the lease granted after the move expires and its keys go", func() bool {
		ttl, err := cl.Client(never).TimeToLive(ctx, short.ID)
		if err != nil || ttl.TTL != -1 {
			return false
		}
		for _, key := range []string{"a-short", "z-short"} {
			if r, err := cl.Client(from).Get(ctx, key); err != nil || len(r.Kvs) != 0 {
				return false
			}
		}
		return true
	})

	// The member left holds nothing of range 1.
	nodetest.Eventually(t, "the member left dropped range 1", func() bool {
		left := cl.Node(from)
		if _, runs := left.LocalReplicas()[1]; runs {
			return false
		}
		recs, err := left.ReplicaRecords()
		if err != nil {
			return false
		}
		for _, rec := range recs {
			if rec.Range == 1 {
				return false
			}
		}
		boot, snaps, err := left.RaftData(1, uint64(oldReplica))
		if err != nil || boot || len(snaps) != 0 {
			return false
		}
		if len(left.LocalReplicas()) > 0 {
			return true // it holds range 2 too: its keys stay
		}
		kinds, err := left.StoredKinds()
		return err == nil && kinds['k'] == 0
	})

	// Auth: enabled through a member without range 1; a user with a role
	// works through it and through the member range 1 moved to.
	admin := cl.Client(never)
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "rw-a"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "rw-a", "a", clientv3.GetPrefixRangeEnd("a"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "alice", "rw-a"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{never, to, from} {
		alice, err := clientv3.New(clientv3.Config{Endpoints: cl.Node(i).ClientURLs(), Username: "alice", Password: "alicepw", DialTimeout: 5 * time.Second,
			Logger: zap.NewNop()})
		if err != nil {
			t.Fatalf("member %d: alice logs in: %v", i, err)
		}
		key := fmt.Sprintf("a-alice-%d", i)
		if _, err := alice.Put(ctx, key, "v"); err != nil {
			t.Fatalf("member %d: alice puts %s: %v", i, key, err)
		}
		if r, err := alice.Get(ctx, key); err != nil || len(r.Kvs) != 1 {
			t.Fatalf("member %d: alice reads %s: %v, %v", i, key, r, err)
		}
		if _, err := alice.Put(ctx, "z-alice", "v"); !errors.Is(rpctypes.Error(err), rpctypes.ErrPermissionDenied) {
			t.Fatalf("member %d: alice puts outside her role: %v, want %v", i, err, rpctypes.ErrPermissionDenied)
		}
		_ = alice.Close()
	}
	if _, err := cl.Client(never).Get(ctx, "a"); !errors.Is(rpctypes.Error(err), rpctypes.ErrUserEmpty) {
		t.Fatalf("a get without a user once auth is on: %v, want %v", err, rpctypes.ErrUserEmpty)
	}
}

// TestMemberRemoveDrainsFirstRange: five members, three replicas per
// range; removing a member that holds range 1 moves range 1 (and its
// other replicas) to other members: range 1 keeps three voters, none on
// the member removed, raft agrees with the map, a lease granted before
// the removal lives on and one granted after expires, and every key reads
// back through the members left.
func TestMemberRemoveDrainsFirstRange(t *testing.T) {
	cl := nodetest.Start(t, 5, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	victim := -1
	// Not member 0: the helpers read the range map through it.
	for _, i := range holders(t, cl, 1) {
		if i != 0 {
			victim = i
			break
		}
	}
	gone := cl.Node(victim)
	goneID := gone.MemberID()
	held := heldBy(t, cl, victim)
	var others []string
	for i, u := range cl.URLs() {
		if i != victim {
			others = append(others, u)
		}
	}
	c := nodetest.NewClient(t, others...)
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"a", "z"} {
		if _, err := c.Put(ctx, key, "before", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
	}

	if _, err := c.MemberRemove(ctx, goneID); err != nil {
		t.Fatalf("remove member %d: %v", victim, err)
	}
	leftEverything(t, gone, held)
	if err := cl.Stop(victim); err != nil {
		t.Fatal(err)
	}
	raftIsMap(t, cl, goneID)
	if d := rangeIn(t, cl, 1); len(placement.Voters(d)) != 3 {
		t.Fatalf("range 1 after the removal: %v", placement.Pairs(d))
	}

	if ttl, err := c.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys()); err != nil || ttl.TTL <= 0 || len(ttl.Keys) != 2 {
		t.Fatalf("the lease granted before the removal: %+v, %v", ttl, err)
	}
	short, err := c.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "a-short", "v", clientv3.WithLease(short.ID)); err != nil {
		t.Fatal(err)
	}
	nodetest.Eventually(t, "a lease granted after the removal expires", func() bool {
		r, err := c.Get(ctx, "a-short")
		return err == nil && len(r.Kvs) == 0
	})
	for _, key := range []string{"a", "z"} {
		if _, err := c.Put(ctx, key, "after", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatalf("put %s after the removal: %v", key, err)
		}
	}
	r, err := c.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != 2 {
		t.Fatalf("read of every range after the removal: %v, %v", r, err)
	}
}
