package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/shard"
)

// rangeKinds are the kinds of pebble keys that hold a range's data:
// versions, event log records, its store's and its lessor's records, and
// this member's records of its replicas.
var rangeKinds = []byte{'k', 'e', 'm', 'l', 'r'}

// fmtKinds shows the counts of kinds of keys in a pebble.
func fmtKinds(kinds map[byte]int) string {
	var out []string
	for _, k := range rangeKinds {
		out = append(out, fmt.Sprintf("%c=%d", k, kinds[k]))
	}
	return fmt.Sprint(out)
}

// TestShardedRemovedMemberDropsData: a member of a sharded cluster of
// three records each replica it runs (a split's new range included), and
// a start that finds no records (an old data directory) writes them from
// the range map. Removed from the cluster and left running, the member
// drops its replica of every range (raft
// reports each removed): its pebble then holds no version, store or lessor
// record of any range and its raft directory no data of any range's
// replica, while the others go on serving. The drop of one range is cut
// short right after its data batch, as a crash there would: its record
// stays, sweeping, with its event log entries; the member's next start
// finishes it before anything else — that start fails, the member being
// no longer in the cluster —, leaving nothing of any range in its pebble.
func TestShardedRemovedMemberDropsData(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("h", "p"))
	nodes := cl.Nodes()
	c := nodetest.NewClient(t, cl.URLs()[:2]...) // m2 is removed below
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Data in every range: versions, deletions, a lease with keys in all.
	lease, err := c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range []string{"a", "b", "i", "j", "q", "r"} {
		opts := []clientv3.OpOption{}
		if i%2 == 0 {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		if _, err := c.Put(ctx, k, "v", opts...); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"b", "j", "r"} {
		if _, err := c.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}

	// A split: its new range is recorded on every member as it starts.
	if _, err := nodes[0].SplitRange(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "y", "v"); err != nil {
		t.Fatal(err)
	}

	// m2's records are written before its replicas start (the split's
	// included), and again at a start that finds none (a data directory
	// made before replicas were recorded).
	var replicas map[uint64]uint64
	recorded := func(stage string, m2 *node.Node) {
		t.Helper()
		nodetest.Eventually(t, stage+": m2 runs every range and has applied every write", func() bool {
			r, err := cl.Client(2).Get(ctx, "", clientv3.WithPrefix(), clientv3.WithSerializable())
			replicas = m2.LocalReplicas()
			return err == nil && len(r.Kvs) == 4 && len(replicas) == 4
		})
		recs, err := m2.ReplicaRecords()
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint64]uint64{}
		for _, rec := range recs {
			if rec.Dropping() {
				t.Fatalf("%s: m2's record %+v is dropping", stage, rec)
			}
			got[uint64(rec.Range)] = uint64(rec.Replica)
		}
		if fmt.Sprint(got) != fmt.Sprint(replicas) {
			t.Fatalf("%s: m2's records %v, want its replicas %v", stage, got, replicas)
		}
	}
	recorded("split", nodes[2])
	if err := cl.Stop(2); err != nil {
		t.Fatal(err)
	}
	if err := node.DeleteRecordsIn(cl.Config(2).DataDir); err != nil {
		t.Fatal(err)
	}
	m2 := cl.Restart(2)
	recorded("records derived at a restart", m2)

	kinds, err := m2.StoredKinds()
	if err != nil {
		t.Fatal(err)
	}
	if kinds['k'] == 0 || kinds['e'] == 0 || kinds['m'] == 0 || kinds['l'] == 0 {
		t.Fatalf("m2's pebble before its removal: %s, want data of every range", fmtKinds(kinds))
	}
	for id, rid := range replicas {
		if boot, _, err := m2.RaftData(id, rid); err != nil || !boot {
			t.Fatalf("m2's raft data of replica %d of range %d before its removal: %v, %v", rid, id, boot, err)
		}
	}

	const cut = 2 // the range whose drop a crash cuts short
	m2.CutDropShort(cut)
	if _, err := c.MemberRemove(ctx, m2.MemberID()); err != nil {
		t.Fatalf("remove m2: %v", err)
	}
	var left string
	// Bounded by the test's context, not Eventually's 20 s: the drops
	// follow the removal through the placement leader's walk of every
	// range, slower on a loaded machine; a failure says what is left.
	nodetest.WaitFor(ctx, t, func() error {
		kinds, err := m2.StoredKinds()
		if err != nil {
			return fmt.Errorf("m2 has not dropped its replicas: %v", err)
		}
		recs, err := m2.ReplicaRecords()
		if err != nil {
			return fmt.Errorf("m2 has not dropped its replicas: %v", err)
		}
		left = fmt.Sprintf("pebble %s, records %+v", fmtKinds(kinds), recs)
		if kinds['k'] != 0 || kinds['m'] != 0 || kinds['l'] != 0 || len(recs) != 1 ||
			recs[0].Range != cut || recs[0].Drop != shard.DropSweeping {
			return fmt.Errorf("m2 has not dropped its replicas: %s", left)
		}
		for id, rid := range replicas {
			boot, snaps, err := m2.RaftData(id, rid)
			if err != nil || boot || len(snaps) != 0 {
				return fmt.Errorf("m2 has not dropped its replicas: raft data of replica %d of range %d: bootstrap %v, snapshots %v, %v", rid, id, boot, snaps, err)
			}
		}
		return nil
	})
	t.Logf("m2 after the drops: %s", left)
	if got := m2.LocalReplicas(); len(got) != 0 {
		t.Errorf("m2 still runs replicas %v after dropping them", got)
	}

	// The others go on in every range.
	for _, k := range []string{"a", "i", "q", "y"} {
		if _, err := c.Put(ctx, k, "after"); err != nil {
			t.Fatalf("put %s after the removal: %v", k, err)
		}
	}
	r, err := c.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != 4 || slices.ContainsFunc(r.Kvs, func(kv *mvccpb.KeyValue) bool { return string(kv.Value) != "after" }) {
		t.Fatalf("read after the removal: %v, %v", r, err)
	}

	// m2 stops with the drop of range 2 cut short; its next start
	// finishes it first.
	if err := cl.Stop(2); err != nil {
		t.Fatal(err)
	}
	startCtx, startCancel := context.WithTimeout(ctx, 10*time.Second)
	defer startCancel()
	if n, err := node.Start(startCtx, cl.Config(2)); err == nil {
		t.Log("the removed member started again")
		_ = n.Close()
	} else {
		t.Logf("the removed member's start: %v", err)
	}
	kinds, err = node.StoredKindsIn(cl.Config(2).DataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range rangeKinds {
		if kinds[k] != 0 {
			t.Fatalf("m2's pebble after its restart: %s, want nothing of any range", fmtKinds(kinds))
		}
	}
}
