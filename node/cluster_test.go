package node_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	etcdserverpb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
)

// TestCluster: three members founded with --initial-cluster list each
// other with names and client URLs; a write through any member is read
// linearizably through the others and watched on every member; leases
// granted, kept alive and inspected through followers are served by the
// leader's lessor.
func TestCluster(t *testing.T) {
	cl := nodetest.Start(t, 3)
	nodes, clients := cl.Nodes(), cl.Clients()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ml, err := clients[1].MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ml.Members {
		got = append(got, fmt.Sprintf("%s %v %v learner=%v", m.Name, m.ClientURLs, len(m.PeerURLs), m.IsLearner))
	}
	slices.Sort(got)
	var want []string
	for i, n := range nodes {
		want = append(want, fmt.Sprintf("m%d %v 1 learner=false", i, n.ClientURLs()))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("members:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	watches := make([]clientv3.WatchChan, len(nodes))
	for i, c := range clients {
		watches[i] = c.Watch(ctx, "k", clientv3.WithPrefix())
	}
	for i, c := range clients {
		if _, err := c.Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatalf("put through m%d: %v", i, err)
		}
	}
	for i, c := range clients {
		r, err := c.Get(ctx, "k", clientv3.WithPrefix())
		if err != nil || len(r.Kvs) != len(nodes) {
			t.Fatalf("linearizable get through m%d: %v %v", i, r, err)
		}
	}
	for i, ch := range watches {
		evs := collect(t, ch, len(nodes))
		for j, e := range evs {
			if e.typ != mvccpb.PUT || e.key != fmt.Sprintf("k%d", j) {
				t.Fatalf("watch on m%d: %+v", i, evs)
			}
		}
	}

	for i, c := range clients {
		g, err := c.Grant(ctx, 30)
		if err != nil {
			t.Fatalf("grant through m%d: %v", i, err)
		}
		if _, err := c.Put(ctx, fmt.Sprintf("l%d", i), "v", clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		ka, err := c.KeepAliveOnce(ctx, g.ID)
		if err != nil || ka.TTL != 30 {
			t.Fatalf("keepalive through m%d: %v %v", i, ka, err)
		}
		ttl, err := c.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
		if err != nil || ttl.GrantedTTL != 30 || len(ttl.Keys) != 1 {
			t.Fatalf("time to live through m%d: %v %v", i, ttl, err)
		}
		ls, err := c.Leases(ctx)
		if err != nil || len(ls.Leases) != i+1 {
			t.Fatalf("leases through m%d: %v %v", i, ls, err)
		}
	}
}

// TestMembership: under a write load, a fourth member is added as a
// learner, joins with --initial-cluster-state existing, is promoted, and
// another member is removed; every acknowledged write is then readable
// through the new member.
func TestMembership(t *testing.T) {
	cl := nodetest.Start(t, 3)
	c := nodetest.NewClient(t, cl.URLs()[1:]...) // m0 is removed below
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The load: a write proposed while the leader is being removed may
	// time out (in etcd too); what must hold is that every acknowledged
	// write survives.
	w := startWriter(c)

	peer := "http://" + testport.Addr(t)
	addResp, err := c.MemberAddAsLearner(ctx, []string{peer})
	if err != nil {
		t.Fatal(err)
	}
	if !addResp.Member.IsLearner || len(addResp.Members) != 4 {
		t.Fatalf("member add: %v", addResp)
	}
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m3 := cl.Join(ml.Members, addResp.Member.ID, peer)
	n4 := cl.Node(m3)

	// A learner serves only serializable reads and Status, as in etcd.
	lc := cl.Client(m3)
	if _, err := lc.Put(ctx, "x", "y"); err == nil || !strings.Contains(err.Error(), "rpc not supported for learner") {
		t.Fatalf("put on a learner: %v", err)
	}
	if _, err := lc.Get(ctx, "load/", clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithCountOnly()); err != nil {
		t.Fatalf("serializable get on a learner: %v", err)
	}
	if _, err := c.MemberPromote(ctx, addResp.Member.ID); err != nil {
		t.Fatal(err)
	}
	// The new member applies its promotion a moment after the leader.
	nodetest.Eventually(t, "the promoted member knows it votes", func() bool {
		st, err := lc.Status(ctx, n4.ClientURLs()[0])
		return err == nil && !st.IsLearner
	})
	// It restarts as a voter: raft does not replay its addition as a
	// learner (a snapshot holds it), which it would refuse on a voter.
	if err := cl.Stop(m3); err != nil {
		t.Fatal(err)
	}
	n4 = cl.Restart(m3)
	lc = cl.Client(m3)
	nodetest.Eventually(t, "the restarted member serves linearizable reads", func() bool {
		_, err := lc.Get(ctx, "load/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil
	})
	if _, err := c.MemberRemove(ctx, 12345); err == nil {
		t.Fatal("removing an unknown member succeeded")
	}
	ml, err = c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m0 uint64
	for _, m := range ml.Members {
		if m.Name == "m0" {
			m0 = m.ID
		}
		if m.ID == addResp.Member.ID && (m.IsLearner || m.Name != "m3" || len(m.ClientURLs) == 0) {
			t.Fatalf("promoted member: %v", m)
		}
	}
	if _, err := c.MemberRemove(ctx, m0); err != nil {
		t.Fatal(err)
	}
	before := w.count()
	nodetest.Eventually(t, "writes go on after the membership changes", func() bool { return w.count() >= before+50 })
	acked := w.finish()
	c4 := cl.Client(m3)
	r, err := c4.Get(ctx, "load/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) < len(acked) || len(acked) == 0 {
		t.Fatalf("new member reads %d keys, %d were acknowledged", len(r.Kvs), len(acked))
	}
	ml, err = c4.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("members after the change: %v %v", ml, err)
	}
}

// TestMaintenance: HashKV agrees on every member at one revision (and
// differs from a different history), MoveLeader hands leadership to the
// member asked, Status reports it everywhere, and Defragment runs.
func TestMaintenance(t *testing.T) {
	urls := nodetest.Start(t, 3).URLs()
	c := nodetest.NewClient(t, urls...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 20 {
		if _, err := c.Put(ctx, fmt.Sprintf("k%d", i%7), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Delete(ctx, "k3"); err != nil {
		t.Fatal(err)
	}
	last, err := c.Put(ctx, "last", "v")
	if err != nil {
		t.Fatal(err)
	}
	rev := last.Header.Revision
	hashes := map[uint32]int{}
	for _, u := range urls {
		// A member answers once it has applied rev: wait for that.
		nodetest.Eventually(t, "member "+u+" applies rev", func() bool {
			st, err := c.Status(ctx, u)
			return err == nil && st.Header.Revision >= rev
		})
		h, err := c.HashKV(ctx, u, rev)
		if err != nil {
			t.Fatal(err)
		}
		if h.HashRevision != rev {
			t.Fatalf("hash revision %d, want %d", h.HashRevision, rev)
		}
		hashes[h.Hash]++
	}
	if len(hashes) != 1 {
		t.Fatalf("members disagree on HashKV at %d: %v", rev, hashes)
	}
	if h, err := c.HashKV(ctx, urls[0], rev-1); err != nil || hashes[h.Hash] != 0 {
		t.Fatalf("HashKV of an earlier revision equals the later one (or failed: %v)", err)
	}

	st, err := c.Status(ctx, urls[0])
	if err != nil {
		t.Fatal(err)
	}
	leaderURL := ""
	var target uint64
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ml.Members {
		if m.ID == st.Leader {
			leaderURL = m.ClientURLs[0]
		} else {
			target = m.ID
		}
	}
	lc := nodetest.NewClient(t, leaderURL)
	if _, err := lc.MoveLeader(ctx, target); err != nil {
		t.Fatal(err)
	}
	for _, u := range urls {
		nodetest.Eventually(t, "member "+u+" sees the new leader", func() bool {
			st, err := c.Status(ctx, u)
			return err == nil && st.Leader == target
		})
	}
	if _, err := c.Defragment(ctx, urls[1]); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Get(ctx, "last"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("after defragment: %v %v", r, err)
	}
}

// transferLog records the "leadership transferred" lines a node logs.
type transferLog struct {
	mu       sync.Mutex
	attempts []int64
}

func (l *transferLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *transferLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *transferLog) WithGroup(string) slog.Handler            { return l }
func (l *transferLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "leadership transferred" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "attempts" {
			l.mu.Lock()
			l.attempts = append(l.attempts, a.Value.Int64())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

// TestMoveLeaderUnderLoad: leadership moves to each follower in turn while
// clients keep writing; every MoveLeader answers once the target leads, and
// all but at most one take on their first attempt (writes are held back cluster-wide while it
// happens, so dragonboat's target never finds entries it has not applied and
// skips the campaign, which would refuse writes for an election timeout).
func TestMoveLeaderUnderLoad(t *testing.T) {
	transfers := &transferLog{}
	urls := nodetest.Start(t, 3, nodetest.Edit(func(c *node.Config) { c.Logger = slog.New(transfers) })).URLs()
	c := nodetest.NewClient(t, urls...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil; i++ {
				_, _ = c.Put(loadCtx, fmt.Sprintf("load/%d/%d", g, i%50), "v")
			}
		}()
	}
	defer func() { stopLoad(); wg.Wait() }()
	for i := 0; i < 6; i++ {
		// The leader as the leader itself reports it: another member may
		// still name the previous one just after a transfer, as in etcd.
		var st *clientv3.StatusResponse
		nodetest.Eventually(t, "a member that reports itself leader", func() bool {
			for _, u := range urls {
				s, err := c.Status(ctx, u)
				if err == nil && s.Leader == s.Header.MemberId {
					st = s
					return true
				}
			}
			return false
		})
		ml, err := c.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var leaderURL string
		var targets []uint64
		for _, m := range ml.Members {
			if m.ID == st.Leader {
				leaderURL = m.ClientURLs[0]
			} else {
				targets = append(targets, m.ID)
			}
		}
		target := targets[i%len(targets)]
		mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = nodetest.NewClient(t, leaderURL).MoveLeader(mctx, target)
		mcancel()
		if err != nil {
			t.Fatalf("move %d: leader %x → %x: %v", i, st.Leader, target, err)
		}
	}
	transfers.mu.Lock()
	defer transfers.mu.Unlock()
	if len(transfers.attempts) != 6 {
		t.Fatalf("%d transfers logged, want 6", len(transfers.attempts))
	}
	// Without the hold most runs see a transfer fail; with it, a CI
	// machine running other test binaries on both cores has been seen to
	// need a second attempt once in six, never more.
	retried := 0
	for _, a := range transfers.attempts {
		if a > 1 {
			retried++
		}
	}
	if retried > 1 {
		t.Errorf("%d of 6 transfers took more than one attempt: %v", retried, transfers.attempts)
	}
}

// TestMemberUpdate: a follower's peer URLs are updated, it is restarted
// listening on the new ones, and the group reaches it there: with the third
// member stopped, writes commit only through it. Updating an unknown member
// or onto another member's URLs is refused as etcd refuses it.
func TestMemberUpdate(t *testing.T) {
	cl := nodetest.Start(t, 3)
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Roles: who leads, the follower that moves, the other follower.
	var leader, moved, other int
	nodetest.Eventually(t, "a member that reports itself leader", func() bool {
		for i, n := range nodes {
			st, err := cl.Client(i).Status(ctx, n.ClientURLs()[0])
			if err == nil && st.Leader == st.Header.MemberId {
				leader = i
				return true
			}
		}
		return false
	})
	moved, other = (leader+1)%3, (leader+2)%3
	lc := cl.Client(leader)
	st, err := cl.Client(moved).Status(ctx, nodes[moved].ClientURLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	movedID := st.Header.MemberId
	ml, err := lc.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var otherPeer string
	for _, m := range ml.Members {
		if m.ID != movedID && m.ID != st.Leader {
			otherPeer = m.PeerURLs[0]
		}
	}

	// Refusals change nothing.
	if _, err := lc.MemberUpdate(ctx, 12345, []string{"http://" + testport.Addr(t)}); !errors.Is(err, rpctypes.ErrMemberNotFound) {
		t.Fatalf("update of an unknown member: %v, want %v", err, rpctypes.ErrMemberNotFound)
	}
	if _, err := lc.MemberUpdate(ctx, movedID, []string{otherPeer}); !errors.Is(err, rpctypes.ErrPeerURLExist) {
		t.Fatalf("update onto another member's peer URL: %v, want %v", err, rpctypes.ErrPeerURLExist)
	}

	newPeer := "http://" + testport.Addr(t)
	up, err := lc.MemberUpdate(ctx, movedID, []string{newPeer})
	if err != nil {
		t.Fatal(err)
	}
	listed := func(ms []*etcdserverpb.Member) []string {
		for _, m := range ms {
			if m.ID == movedID {
				return m.PeerURLs
			}
		}
		return nil
	}
	if got := listed(up.Members); !slices.Equal(got, []string{newPeer}) {
		t.Fatalf("members after the update list %v for the moved member, want %v", got, newPeer)
	}
	ml, err = cl.Client(other).MemberList(ctx)
	if err != nil || !slices.Equal(listed(ml.Members), []string{newPeer}) {
		t.Fatalf("another member lists %v (%v), want %v", listed(ml.Members), err, newPeer)
	}

	// Restart the member on its new peer URL, then stop the other
	// follower: only a group that reaches the new address has a quorum.
	if err := cl.Stop(moved); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Put(ctx, "while-down", "v"); err != nil {
		t.Fatal(err)
	}
	cl.RestartWith(moved, func(c *node.Config) {
		c.ListenPeerURLs = []string{newPeer}
		c.InitialAdvertisePeerURLs = nil
	})
	if err := cl.Stop(other); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Put(ctx, "after-move", "v"); err != nil {
		t.Fatalf("write with the moved member needed for a quorum: %v", err)
	}
	mc := cl.Client(moved)
	nodetest.Eventually(t, "the moved member serves what was written", func() bool {
		r, err := mc.Get(ctx, "after-move", clientv3.WithSerializable())
		if err != nil || len(r.Kvs) != 1 {
			return false
		}
		r, err = mc.Get(ctx, "while-down", clientv3.WithSerializable())
		return err == nil && len(r.Kvs) == 1
	})
}

// TestShardedMemberUpdatePlacementLeader: the member whose peer URLs move
// leads the placement group (the oracle) and range 1 while it still listens at the old
// URLs. The others stop reaching it once they apply the new record, yet the
// update, asked through another member or the member itself (which has
// another member record it), answers within etcdctl's default
// 5 s, and writes flow again right after: the moved member hands its
// leaderships over as soon as it sees its own record move.
func TestShardedMemberUpdatePlacementLeader(t *testing.T) {
	for _, asked := range []struct {
		name   string
		offset int // from the moved member
	}{{"asked another member", 1}, {"asked the member itself", 0}} {
		t.Run(asked.name, func(t *testing.T) { memberUpdatePlacementLeader(t, asked.offset) })
	}
}

// memberUpdatePlacementLeader is TestShardedMemberUpdatePlacementLeader
// with the update asked of the member offset after the moved one.
func memberUpdatePlacementLeader(t *testing.T, offset int) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("c", "k", "t"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var moved int
	nodetest.WaitFor(ctx, t, func() error {
		for i, n := range nodes {
			if l := n.PlacementLeader(); l != 0 && l == n.MemberID() {
				moved = i
				return nil
			}
		}
		return fmt.Errorf("no member leads the placement group yet")
	})
	// The moved member leads range 1 too (whose record is written first).
	nodetest.WaitFor(ctx, t, func() error {
		for i, n := range nodes {
			st, err := cl.Client(i).Status(ctx, n.ClientURLs()[0])
			if err != nil || st.Leader != st.Header.MemberId {
				continue
			}
			if i == moved {
				return nil
			}
			if _, err := cl.Client(i).MoveLeader(ctx, nodes[moved].MemberID()); err != nil {
				return err
			}
			return fmt.Errorf("range 1's leadership was moved; checking again")
		}
		return fmt.Errorf("no member reports itself range 1's leader")
	})
	asker := (moved + offset) % 3
	c := cl.Client(asker)
	if _, err := c.Put(ctx, "a", "before"); err != nil {
		t.Fatal(err)
	}
	uctx, ucancel := context.WithTimeout(ctx, 5*time.Second)
	defer ucancel()
	if _, err := c.MemberUpdate(uctx, nodes[moved].MemberID(), []string{"http://" + testport.Addr(t)}); err != nil {
		t.Fatalf("member update of the placement leader's member: %v", err)
	}
	// The moved member no longer hears the others: writes go through
	// another one.
	c = cl.Client((moved + 1) % 3)
	for _, k := range []string{"a", "d", "m", "x"} {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Put(pctx, k, "after")
		pcancel()
		if err != nil {
			t.Fatalf("put %s after the update: %v", k, err)
		}
	}
}
