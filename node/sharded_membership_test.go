package node_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
)

// TestShardedMembership: a sharded cluster of three adds a fourth member
// as a learner (etcd's MemberAddAsLearner, the member started with
// --initial-cluster-state existing), which gets every range — each as a
// snapshot, data written before it and across splits included — and
// serves serializable reads; a range split meanwhile is added to it as it
// is promoted; promoted, it serves reads and writes in every range; a
// range split after has it as a founder; it restarts with all of them;
// then a founding member is removed and the rest go on.
func TestShardedMembership(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("h", "p"), nodetest.RangeReplicas(node.EveryMember))
	nodes := cl.Nodes()
	c := nodetest.NewClient(t, cl.URLs()[1:]...) // m0 is removed below
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	keys := []string{"a", "i", "q", "z"}
	for _, k := range keys {
		if _, err := c.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}
	// A split before the member joins: its history is in range 1's log,
	// which the new member must not replay.
	if _, err := nodes[1].SplitRange(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}

	peer := "http://" + testport.Addr(t)
	addResp, err := c.MemberAddAsLearner(ctx, []string{peer})
	if err != nil {
		t.Fatal(err)
	}
	m3 := cl.Join(addResp.Members, addResp.Member.ID, peer)
	n4, nc := cl.Node(m3), cl.Client(m3)

	// A learner serves serializable reads, of every range, as in etcd.
	if _, err := nc.Put(ctx, "x", "y"); err == nil || !strings.Contains(err.Error(), "rpc not supported for learner") {
		t.Fatalf("put on a learner: %v", err)
	}
	for _, k := range keys {
		nodetest.Eventually(t, "the learner has "+k, func() bool {
			r, err := nc.Get(ctx, k, clientv3.WithSerializable())
			return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "before"
		})
	}
	// A split while it is a learner: the new range is added to it as it is
	// promoted.
	if _, err := nodes[2].SplitRange(ctx, []byte("t")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MemberPromote(ctx, addResp.Member.ID); err != nil {
		t.Fatalf("promote the learner: %v", err)
	}
	nodetest.Eventually(t, "the promoted member knows it votes", func() bool {
		st, err := nc.Status(ctx, n4.ClientURLs()[0])
		return err == nil && !st.IsLearner
	})

	// Each key read through the new member, linearizably (its own replica
	// of the key's range answers once caught up), then written through it.
	check := func(stage string, keys []string) {
		t.Helper()
		for _, k := range keys {
			nodetest.Eventually(t, stage+": the new member reads "+k, func() bool {
				r, err := nc.Get(ctx, k)
				return err == nil && len(r.Kvs) == 1
			})
			if _, err := nc.Put(ctx, k, "through-m3"); err != nil {
				t.Fatalf("%s: put %s through the new member: %v", stage, k, err)
			}
			nodetest.Eventually(t, stage+": the new member's replica has "+k, func() bool {
				r, err := nc.Get(ctx, k, clientv3.WithSerializable())
				return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "through-m3"
			})
		}
	}
	keys = append(keys, "u")
	if _, err := c.Put(ctx, "u", "before"); err != nil {
		t.Fatal(err)
	}
	check("promoted", keys)

	// A split after the promotion: the new range has it as a founder.
	made, err := nodes[1].SplitRange(ctx, []byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	child := made[1].Id
	nodetest.Eventually(t, "the new member runs the range split off at c", func() bool {
		for _, r := range n4.Ranges() {
			if r.ID == child && r.Leader != 0 {
				return true
			}
		}
		return false
	})
	keys = append(keys, "d")
	if _, err := c.Put(ctx, "d", "before"); err != nil {
		t.Fatal(err)
	}
	check("split after", keys)

	// It restarts with every range.
	if err := cl.Stop(m3); err != nil {
		t.Fatal(err)
	}
	n4 = cl.Restart(m3)
	nc = cl.Client(m3)
	check("restarted", keys)
	all, err := nc.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) != len(keys) {
		t.Fatalf("read of every range through the new member: %v, %v", all, err)
	}

	// A founding member leaves; the others and the new one go on.
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m0 uint64
	for _, m := range ml.Members {
		if m.Name == "m0" {
			m0 = m.ID
		}
	}
	if _, err := c.MemberRemove(ctx, m0); err != nil {
		t.Fatalf("remove m0: %v", err)
	}
	// The range map as a member shows it (cairn ranges): every range on
	// m1, m2 and m3, not on m0.
	nodetest.Eventually(t, "every range's replicas are m1, m2 and m3", func() bool {
		for _, r := range n4.Ranges() {
			if len(r.Replicas) != 3 || slices.Contains(r.Replicas, m0) || !slices.Contains(r.Replicas, addResp.Member.ID) {
				return false
			}
		}
		return true
	})
	ml, err = nc.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list after the removal: %v, %v", ml, err)
	}
	for i, k := range keys {
		if _, err := c.Put(ctx, k, fmt.Sprint("after-remove-", i)); err != nil {
			t.Fatalf("put %s after the removal: %v", k, err)
		}
	}
	all, err = nc.Get(ctx, "", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) != len(keys) {
		t.Fatalf("read of every range through the new member after the removal: %v, %v", all, err)
	}
	for _, kv := range all.Kvs {
		if !strings.HasPrefix(string(kv.Value), "after-remove-") {
			t.Fatalf("after the removal: %s=%s", kv.Key, kv.Value)
		}
	}
}
