package node_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/router"
)

// killTimeout is the request timeout of the members here: a lock its
// coordinator left outlives it, then the resolver settles it.
const killTimeout = 2 * time.Second

// killKeys are a cross-range transaction's keys for one case: one in each
// of the ranges split at "k" and "t".
func killKeys(tag string) []string {
	return []string{"a-" + tag, "m-" + tag, "x-" + tag}
}

// putAcross writes v to every key in one txn (across ranges).
func putAcross(ctx context.Context, cli *clientv3.Client, keys []string, v string) (*clientv3.TxnResponse, error) {
	var ops []clientv3.Op
	for _, k := range keys {
		ops = append(ops, clientv3.OpPut(k, v))
	}
	return cli.Txn(ctx).Then(ops...).Commit()
}

// noLocks reports whether no range n holds a replica of holds a lock.
func noLocks(ctx context.Context, n *node.Node) error {
	for _, r := range n.Ranges() {
		ids, err := n.RangeLocks(ctx, r.ID)
		if err != nil {
			return err
		}
		if len(ids) > 0 {
			return fmt.Errorf("range %d still holds locks %x", r.ID, ids)
		}
	}
	return nil
}

// settled waits until keys show all of a txn that wrote want or none of
// it (every key still old), with no lock left on any running member, and
// returns whether it committed and at which revision.
func settled(ctx context.Context, t *testing.T, cl *nodetest.Cluster, cli *clientv3.Client, keys []string, old, want string) (bool, int64) {
	t.Helper()
	var committed bool
	var rev int64
	nodetest.WaitFor(ctx, t, func() error {
		for _, n := range cl.Nodes() {
			if n == nil {
				continue
			}
			if err := noLocks(ctx, n); err != nil {
				return err
			}
		}
		g, err := cli.Get(ctx, keys[0], clientv3.WithRange(keys[len(keys)-1]+"\x00"))
		if err != nil {
			return err
		}
		got := map[string]string{}
		revs := map[int64]bool{}
		for _, kv := range g.Kvs {
			if k := string(kv.Key); strings.HasSuffix(k, keys[0][1:]) {
				got[k] = string(kv.Value)
				revs[kv.ModRevision] = true
				rev = kv.ModRevision
			}
		}
		n := 0
		for _, k := range keys {
			if got[k] == want {
				n++
			} else if got[k] != old {
				return fmt.Errorf("%s=%q, want %q or %q", k, got[k], old, want)
			}
		}
		switch {
		case n == len(keys) && len(revs) == 1:
			committed = true
		case n == 0:
			committed = false
		default:
			t.Fatalf("half a transaction visible: %v at revisions %v", got, revs)
		}
		return nil
	})
	return committed, rev
}

// checkWatch watches keys from revision from up to (and including) until,
// and checks that the transaction at rev (0: none committed) came whole,
// in one response, and nothing else of it.
func checkWatch(ctx context.Context, t *testing.T, cli *clientv3.Client, keys []string, from, rev, until int64) {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, keys[0], clientv3.WithRange(keys[len(keys)-1]+"\x00"), clientv3.WithRev(from))
	for {
		wr, ok := <-wch
		if !ok || wr.Err() != nil {
			t.Fatalf("watch ended before revision %d: %v", until, wr.Err())
		}
		atRev, last := 0, int64(0)
		for _, ev := range wr.Events {
			if !strings.HasSuffix(string(ev.Kv.Key), keys[0][1:]) {
				continue
			}
			if ev.Kv.ModRevision == rev {
				atRev++
			}
			last = ev.Kv.ModRevision
		}
		if rev > 0 && atRev > 0 && atRev != len(keys) {
			t.Fatalf("watch saw %d of the %d writes at revision %d in one response", atRev, len(keys), rev)
		}
		if last >= until {
			return
		}
	}
}

// TestCrossRangeTxnCoordinatorKilled: a cross-range transaction whose
// coordinator's member is killed after each step of the commit
// (router.TxnSteps) ends as the primary's record says, once the resolver
// has run: aborted if it stopped before the record (no key changed),
// committed otherwise (every key at one revision); no lock is left, a
// watch sees it whole or not at all, and later writes to its keys go
// through, across ranges and in one.
func TestCrossRangeTxnCoordinatorKilled(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("k", "t"), nodetest.Edit(func(c *node.Config) { c.RequestTimeout = killTimeout }))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for _, step := range router.TxnSteps {
		t.Run(step, func(t *testing.T) {
			cli := cl.Client(0)
			keys := killKeys(step)
			before, err := putAcross(ctx, cli, keys, "old")
			if err != nil {
				t.Fatal(err)
			}
			restore := cl.Node(0).CutTxnsShort(step)
			_, err = putAcross(ctx, cli, keys, "new")
			restore()
			if err == nil {
				t.Fatalf("a transaction cut short after %s answered success", step)
			}
			// kill -9 of the coordinator's member: it comes back with
			// what its raft logs hold, nothing of the coordinator.
			cl.Restart(0)
			cli = cl.Client(0)
			committed, rev := settled(ctx, t, cl, cli, keys, "old", "new")
			if want := step != router.TxnStepPrepared; committed != want {
				t.Fatalf("cut after %s: committed %v, want %v", step, committed, want)
			}
			if !committed {
				rev = 0
			}
			after, err := putAcross(ctx, cli, keys, "later")
			if err != nil {
				t.Fatalf("a later write across the keys: %v", err)
			}
			for _, k := range keys {
				if _, err := cli.Put(ctx, k, "single"); err != nil {
					t.Fatalf("a later write of %s: %v", k, err)
				}
			}
			checkWatch(ctx, t, cli, keys, before.Header.Revision+1, rev, after.Header.Revision)
		})
	}
}

// TestCrossRangeTxnCoordinatorKilledOthersResolve: in three members, the
// coordinator's member stopped after each step stays down; the ranges'
// leaders on the other members settle the transaction as its record says.
func TestCrossRangeTxnCoordinatorKilledOthersResolve(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("k", "t"), nodetest.Edit(func(c *node.Config) { c.RequestTimeout = killTimeout }))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// The coordinator: a member that does not lead the placement group
	// (a kill of the oracle is a fault of its own).
	coord := (cl.MemberIndex(cl.Node(0).PlacementLeader()) + 1) % 3
	for _, step := range router.TxnSteps {
		t.Run(step, func(t *testing.T) {
			other := cl.Client((coord + 1) % 3)
			keys := killKeys(step)
			before, err := putAcross(ctx, other, keys, "old")
			if err != nil {
				t.Fatal(err)
			}
			restore := cl.Node(coord).CutTxnsShort(step)
			_, err = putAcross(ctx, cl.Client(coord), keys, "new")
			restore()
			if err == nil {
				t.Fatalf("a transaction cut short after %s answered success", step)
			}
			if err := cl.Stop(coord); err != nil {
				t.Fatal(err)
			}
			committed, rev := settled(ctx, t, cl, other, keys, "old", "new")
			if want := step != router.TxnStepPrepared; committed != want {
				t.Fatalf("cut after %s: committed %v, want %v", step, committed, want)
			}
			if !committed {
				rev = 0
			}
			after, err := putAcross(ctx, other, keys, "later")
			if err != nil {
				t.Fatalf("a later write across the keys: %v", err)
			}
			checkWatch(ctx, t, other, keys, before.Header.Revision+1, rev, after.Header.Revision)
			cl.Restart(coord)
			nodetest.WaitFor(ctx, t, func() error { return noLocks(ctx, cl.Node(coord)) })
		})
	}
}
