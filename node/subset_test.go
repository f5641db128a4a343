package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// subsetSplits are the split keys of the subset tests: ten ranges.
var subsetSplits = []string{"b", "d", "f", "h", "j", "l", "n", "p", "r"}

// startSubsets starts five sharded members holding each of ten ranges on
// three of them (--range-replicas 3, --placement-replicas 3).
func startSubsets(t *testing.T) *nodetest.Cluster {
	t.Helper()
	return nodetest.Start(t, 5, nodetest.Sharded(subsetSplits...), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
}

// rangeMapOf reads the range map through member 0.
func rangeMapOf(t *testing.T, cl *nodetest.Cluster) []*placementpb.RangeDescriptor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := cl.Node(0).RangeMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// holders returns the indexes of the members the range map names as
// holding range id.
func holders(t *testing.T, cl *nodetest.Cluster, id uint64) []int {
	t.Helper()
	for _, d := range rangeMapOf(t, cl) {
		if d.Id != id {
			continue
		}
		var out []int
		for _, r := range placement.Pairs(d) {
			out = append(out, cl.MemberIndex(r.Member))
		}
		slices.Sort(out)
		return out
	}
	t.Fatalf("no range %d in the map", id)
	return nil
}

// rangeOf returns the id of the range holding key.
func rangeOf(t *testing.T, cl *nodetest.Cluster, key string) uint64 {
	t.Helper()
	for _, d := range rangeMapOf(t, cl) {
		if bytes.Compare([]byte(key), d.Start) >= 0 && (len(d.End) == 0 || bytes.Compare([]byte(key), d.End) < 0) {
			return d.Id
		}
	}
	t.Fatalf("no range holds %q", key)
	return 0
}

// outsider returns the index of a member without a replica of key's range.
func outsider(t *testing.T, cl *nodetest.Cluster, key string) int {
	t.Helper()
	hs := holders(t, cl, rangeOf(t, cl, key))
	for i := range cl.Size() {
		if !slices.Contains(hs, i) {
			return i
		}
	}
	t.Fatalf("every member holds %q's range", key)
	return -1
}

// TestSubsets runs the subset tests that change neither the membership
// nor the placement, nor stop a member, as subtests on one cluster of
// startSubsets (-run 'TestSubsets/KV' runs one): a cluster's start and
// close cost more than most of them. Before each, resetSubsets takes
// away what the ones before left (keys, leases, alarms), so that each
// sees the cluster as a fresh one would look to it; the revision and
// the compacted revision go on from where the last one left them. The
// order matters where a subtest leaves more than that: Compaction waits
// for every replica to have compacted, KV's compaction included, before
// CheckReplicas hashes them, and CheckReplicas, which corrupts a
// replica, comes last.
func TestSubsets(t *testing.T) {
	cl := startSubsets(t)
	for _, sub := range []struct {
		name string
		run  func(*testing.T, *nodetest.Cluster)
	}{
		{"Placement", subsetPlacement},
		{"Ranges", subsetRanges},
		{"HashKV", subsetHashKV},
		{"StatusAlarm", subsetStatusAlarm},
		{"Leases", subsetLeases},
		{"Snapshot", subsetSnapshot},
		{"KV", subsetKV},
		{"WatchCoalesced", subsetWatchCoalesced},
		{"Compaction", subsetCompaction},
		{"CheckReplicas", subsetCheckReplicas}, // last: a replica stays corrupted
	} {
		t.Run(sub.name, func(t *testing.T) {
			c := cl.For(t)
			resetSubsets(t, c)
			sub.run(t, c)
		})
	}
}

// resetSubsets revokes every lease, deletes every key and disarms every
// alarm, each on its own (a delete across ranges is refused), and fails
// unless none is left.
func resetSubsets(t *testing.T, cl *nodetest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cl.Client(0)
	ls, err := c.Leases(ctx)
	if err != nil {
		t.Fatalf("reset the shared cluster: list leases: %v", err)
	}
	for _, l := range ls.Leases {
		if _, err := c.Revoke(ctx, l.ID); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Fatalf("reset the shared cluster: revoke lease %x: %v", l.ID, err)
		}
	}
	all, err := c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatalf("reset the shared cluster: list keys: %v", err)
	}
	for _, kv := range all.Kvs {
		if _, err := c.Delete(ctx, string(kv.Key)); err != nil {
			t.Fatalf("reset the shared cluster: delete %q: %v", kv.Key, err)
		}
	}
	alarms, err := c.AlarmList(ctx)
	if err != nil {
		t.Fatalf("reset the shared cluster: list alarms: %v", err)
	}
	for _, a := range alarms.Alarms {
		if _, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: a.MemberID, Alarm: a.Alarm}); err != nil {
			t.Fatalf("reset the shared cluster: disarm %v: %v", a, err)
		}
	}
	ls, err = c.Leases(ctx)
	if err != nil || len(ls.Leases) != 0 {
		t.Fatalf("the shared cluster after its reset: leases %v, %v", ls, err)
	}
	left, err := c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil || left.Count != 0 {
		t.Fatalf("the shared cluster after its reset: keys %v, %v", left, err)
	}
	clis := cl.Clients()
	nodetest.WaitFor(ctx, t, func() error {
		for i, c := range clis {
			alarms, err := c.AlarmList(ctx)
			if err != nil || len(alarms.Alarms) != 0 {
				return fmt.Errorf("the shared cluster after its reset: member %d lists alarms %v, %v", i, alarms, err)
			}
		}
		return nil
	})
}

// subsetPlacement (TestSubsets/Placement): five members, three replicas
// per range, ten initial ranges: each member holds 6±1 of them, every
// range's raft membership on each member holding it is the map's pairs for
// it, and the leaders are spread as the replicas are (subsetLeadersSpread).
func subsetPlacement(t *testing.T, cl *nodetest.Cluster) {
	ds := rangeMapOf(t, cl)
	if len(ds) != 10 {
		t.Fatalf("%d ranges, want 10", len(ds))
	}
	want := map[int]map[uint64]uint64{} // member index → range → replica id
	for _, d := range ds {
		if n := len(placement.Voters(d)); n != 3 {
			t.Errorf("range %d has %d voters, want 3: %v", d.Id, n, placement.Pairs(d))
		}
		for _, r := range placement.Pairs(d) {
			i := cl.MemberIndex(r.Member)
			if want[i] == nil {
				want[i] = map[uint64]uint64{}
			}
			want[i][d.Id] = r.Id
		}
	}
	for i, n := range cl.Nodes() {
		got := n.LocalReplicas()
		if c := len(got); c < 5 || c > 7 {
			t.Errorf("member %d holds %d ranges, want 6±1", i, c)
		}
		if !maps.Equal(got, want[i]) {
			t.Errorf("member %d runs %v, the map names %v", i, got, want[i])
		}
	}
	nodetest.Eventually(t, "every range's raft membership is its pairs in the map", func() bool {
		for _, n := range cl.Nodes() {
			raft := n.RaftReplicas()
			for _, d := range ds {
				ids, ok := raft[d.Id]
				if _, here := n.LocalReplicas()[d.Id]; here != ok {
					return false
				}
				if !ok {
					continue
				}
				var want []uint64
				for _, r := range placement.Voters(d) {
					want = append(want, r.Id)
				}
				slices.Sort(want)
				if !slices.Equal(slices.Sorted(slices.Values(ids)), want) {
					return false
				}
			}
		}
		return true
	})
	subsetLeadersSpread(t, cl)
}

// subsetLeadersSpread: a new cluster's initial ranges end up led as the
// bootstrap's round robin hints them (node/initialleaders.go), not where
// raft's first elections put them: within a deadline, no member leads
// more than ceil(ranges/members)+1 ranges, and (ranges ≥ members) every
// member holding replicas leads at least one. Each range's leader is read
// from the members holding it, who must agree.
func subsetLeadersSpread(t *testing.T, cl *nodetest.Cluster) {
	t.Helper()
	ds := rangeMapOf(t, cl)
	holding := map[uint64]bool{} // members holding replicas
	for _, d := range ds {
		for _, r := range placement.Pairs(d) {
			holding[r.Member] = true
		}
	}
	most := (len(ds)+len(holding)-1)/len(holding) + 1
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nodetest.WaitFor(ctx, t, func() error {
		leaders := map[uint64]uint64{} // range → leader member
		for i, n := range cl.Nodes() {
			for _, ri := range n.Ranges() {
				if ri.Remote {
					continue
				}
				if ri.Leader == 0 {
					return fmt.Errorf("member %d knows no leader of range %d", i, ri.ID)
				}
				if l, ok := leaders[ri.ID]; ok && l != ri.Leader {
					return fmt.Errorf("range %d: members disagree on its leader (%x, %x)", ri.ID, l, ri.Leader)
				}
				leaders[ri.ID] = ri.Leader
			}
		}
		if len(leaders) != len(ds) {
			return fmt.Errorf("leaders known of %d ranges, want %d", len(leaders), len(ds))
		}
		leads := map[uint64]int{}
		for _, m := range leaders {
			leads[m]++
		}
		hinted := 0 // led where the bootstrap hinted: by chance about a third
		for _, d := range ds {
			if leaders[d.Id] == d.Leader {
				hinted++
			}
		}
		for m := range holding {
			if leads[m] > most {
				return fmt.Errorf("member %x leads %d ranges, want at most %d: %v", m, leads[m], most, leads)
			}
			if len(ds) >= len(holding) && leads[m] == 0 {
				return fmt.Errorf("member %x holds replicas but leads none: %v", m, leads)
			}
		}
		t.Logf("leaders %v; %d of %d ranges led by their hint", leads, hinted, len(ds))
		return nil
	})
}

// subsetKV (TestSubsets/KV): every KV operation from a member without the
// key's range, a Range over every range at one revision, a linearizable
// read of a write made on another member, a serializable read, and a txn
// across ranges (its compare failing: it changes nothing) answered by the
// cross-range coordinator.
func subsetKV(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := outsider(t, cl, "c")
	cli := cl.Client(o)
	put, err := cli.Put(ctx, "c1", "v1")
	if err != nil {
		t.Fatalf("put from an outsider: %v", err)
	}
	get, err := cli.Get(ctx, "c1")
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "v1" || get.Kvs[0].ModRevision != put.Header.Revision {
		t.Fatalf("get from an outsider: %v %v", get, err)
	}
	// Serializable: from some holder, eventually current.
	nodetest.Eventually(t, "a serializable read from an outsider sees the put", func() bool {
		r, err := cli.Get(ctx, "c1", clientv3.WithSerializable())
		return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "v1"
	})
	// A write on a holder, read linearizably at once from the outsider.
	h := holders(t, cl, rangeOf(t, cl, "c"))[0]
	if _, err := cl.Client(h).Put(ctx, "c2", "v2"); err != nil {
		t.Fatal(err)
	}
	if r, err := cli.Get(ctx, "c2"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v2" {
		t.Fatalf("linearizable read after a write on member %d: %v %v", h, r, err)
	}
	// One key in every range, each written from a member without it.
	keys := append([]string{"a"}, subsetSplits...)
	for _, k := range keys {
		if _, err := cl.Client(outsider(t, cl, k)).Put(ctx, k+"x", "v-"+k); err != nil {
			t.Fatalf("put %q from an outsider: %v", k, err)
		}
	}
	all, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Kvs) != len(keys)+2 {
		t.Fatalf("range over every range: %d keys, want %d", len(all.Kvs), len(keys)+2)
	}
	// At one revision: the same answer again at the first one's revision.
	again, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(all.Header.Revision))
	if err != nil || len(again.Kvs) != len(all.Kvs) {
		t.Fatalf("range at revision %d: %v %v", all.Header.Revision, again, err)
	}
	for i, kv := range all.Kvs {
		if kv.ModRevision > all.Header.Revision || !bytes.Equal(kv.Key, again.Kvs[i].Key) {
			t.Fatalf("key %s at mod revision %d past the answer's %d", kv.Key, kv.ModRevision, all.Header.Revision)
		}
	}
	// Txn within one range, delete, and a txn across ranges.
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("c1"), "=", "v1")).Then(clientv3.OpPut("c1", "v3")).Commit()
	if err != nil || !tr.Succeeded {
		t.Fatalf("txn from an outsider: %v %v", tr, err)
	}
	if d, err := cli.Delete(ctx, "c2"); err != nil || d.Deleted != 1 {
		t.Fatalf("delete from an outsider: %v %v", d, err)
	}
	if tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("c1"), "=", "none")).
		Then(clientv3.OpPut("c1", "x"), clientv3.OpPut("z9", "x")).Commit(); err != nil || tr.Succeeded {
		t.Fatalf("txn across ranges from an outsider: %v %v", tr, err)
	}
	if r, err := cli.Get(ctx, "c", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v3" {
		t.Fatalf("after txn and delete: %v %v", r, err)
	}
	// A watch over a range held elsewhere, from history (a mirror hub fed
	// by a holder; TestSubsetWatch has more).
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	var got []string
	for wr := range cli.Watch(wctx, "c1", clientv3.WithRev(put.Header.Revision)) {
		if wr.Err() != nil {
			t.Fatalf("watch over a range held elsewhere: %v", wr.Err())
		}
		for _, ev := range wr.Events {
			got = append(got, fmt.Sprintf("%s@%d", ev.Kv.Value, ev.Kv.ModRevision))
		}
		if len(got) >= 2 {
			break
		}
	}
	if want := []string{fmt.Sprintf("v1@%d", put.Header.Revision), fmt.Sprintf("v3@%d", tr.Header.Revision)}; !slices.Equal(got, want) {
		t.Fatalf("watch over a range held elsewhere: %v, want %v", got, want)
	}
	// Compaction from the outsider.
	if _, err := cli.Compact(ctx, all.Header.Revision); err != nil {
		t.Fatalf("compact from an outsider: %v", err)
	}
}

// subsetLeases (TestSubsets/Leases): from a member without range 1 (the
// leases' home), a lease is granted, kept alive, its keys in ranges held
// elsewhere listed by TimeToLive, and its revoke deletes them; an expiring
// lease deletes its keys too.
func subsetLeases(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := outsider(t, cl, "a")
	cli := cl.Client(o)
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("grant from an outsider: %v", err)
	}
	keys := []string{"ax", "cx", "kx", "sx"} // ranges on several member sets
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(g.ID)); err != nil {
			t.Fatalf("put %s with the lease: %v", k, err)
		}
	}
	if ka, err := cli.KeepAliveOnce(ctx, g.ID); err != nil || ka.TTL <= 0 {
		t.Fatalf("keepalive from an outsider: %v %v", ka, err)
	}
	ttl, err := cli.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatalf("ttl from an outsider: %v", err)
	}
	var got []string
	for _, k := range ttl.Keys {
		got = append(got, string(k))
	}
	slices.Sort(got)
	if !slices.Equal(got, keys) || ttl.TTL <= 0 {
		t.Fatalf("ttl keys %v (ttl %d), want %v", got, ttl.TTL, keys)
	}
	if ls, err := cli.Leases(ctx); err != nil || len(ls.Leases) != 1 {
		t.Fatalf("leases from an outsider: %v %v", ls, err)
	}
	if _, err := cli.Revoke(ctx, g.ID); err != nil {
		t.Fatalf("revoke from an outsider: %v", err)
	}
	for _, k := range keys {
		if r, err := cli.Get(ctx, k); err != nil || len(r.Kvs) != 0 {
			t.Fatalf("%s after the revoke: %v %v", k, r, err)
		}
	}
	// Expiry.
	short, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, "w", clientv3.WithLease(short.ID)); err != nil {
			t.Fatal(err)
		}
	}
	nodetest.Eventually(t, "an expired lease's keys are gone from every range", func() bool {
		r, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly())
		return err == nil && r.Count == 0
	})
}

// TestSubsetRestart: outsiders and holders restarted run exactly the
// replicas the map names for them, and serve every range again.
func TestSubsetRestart(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	before := make([]map[uint64]uint64, cl.Size())
	for i, n := range cl.Nodes() {
		before[i] = n.LocalReplicas()
	}
	o := outsider(t, cl, "a") // no range 1
	h := holders(t, cl, 1)[0]
	for _, i := range []int{o, h} {
		if err := cl.Stop(i); err != nil {
			t.Fatal(err)
		}
		cl.Restart(i)
	}
	for i, n := range cl.Nodes() {
		if got := n.LocalReplicas(); !maps.Equal(got, before[i]) {
			t.Errorf("member %d runs %v after restarts, ran %v", i, got, before[i])
		}
	}
	for _, i := range []int{o, h} {
		for _, k := range append([]string{"a"}, subsetSplits...) {
			key := fmt.Sprintf("%s-%d", k, i)
			if _, err := cl.Client(i).Put(ctx, key, "v"); err != nil {
				t.Fatalf("put %s on restarted member %d: %v", key, i, err)
			}
			if r, err := cl.Client(i).Get(ctx, key); err != nil || len(r.Kvs) != 1 {
				t.Fatalf("get %s on restarted member %d: %v %v", key, i, r, err)
			}
		}
	}
}
