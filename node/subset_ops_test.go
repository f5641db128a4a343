package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// subsetKeys are one key in each of the subset tests' ten ranges.
var subsetKeys = []string{"a", "c", "e", "g", "i", "k", "m", "o", "q", "s"}

// putEverywhere writes each of subsetKeys twice through c and returns the
// revision of the first round's last write.
func putEverywhere(ctx context.Context, t *testing.T, c *clientv3.Client) (first, last int64) {
	t.Helper()
	for round := range 2 {
		for _, k := range subsetKeys {
			resp, err := c.Put(ctx, k, fmt.Sprint(round))
			if err != nil {
				t.Fatal(err)
			}
			if round == 0 {
				first = resp.Header.Revision
			}
			last = resp.Header.Revision
		}
	}
	return first, last
}

// subsetHashKV (TestSubsets/HashKV): with ranges on subsets of the
// members, every member's HashKV at one revision is the same (etcdctl
// endpoint hashkv --cluster): each hashes every range's data at that
// revision, wherever it lives.
func subsetHashKV(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cl.Client(0)
	_, last := putEverywhere(ctx, t, c)
	nodetest.SameHashes(ctx, t, c, cl.URLs(), last, "with ranges on subsets")
	// A later revision too, with a write to one range between.
	resp, err := c.Put(ctx, "zz", "v")
	if err != nil {
		t.Fatal(err)
	}
	nodetest.SameHashes(ctx, t, c, cl.URLs(), resp.Header.Revision, "after one more write")
	// and the hash changed.
	a, err := c.HashKV(ctx, cl.URLs()[1], last)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.HashKV(ctx, cl.URLs()[1], resp.Header.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if a.Hash == b.Hash {
		t.Fatalf("HashKV at %d and at %d are both %x: the write between is not hashed", last, resp.Header.Revision, a.Hash)
	}
}

// subsetStatusAlarm (TestSubsets/StatusAlarm): every member, with range 1
// or without, reports in Status the cluster's revision, range 1's leader
// and a raft index, defragments its own store, and lists and disarms
// alarms (kept in range 1) alike.
func subsetStatusAlarm(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cl.Client(0)
	_, last := putEverywhere(ctx, t, c)
	var leader uint64
	for i, u := range cl.URLs() {
		st, err := c.Status(ctx, u)
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		if st.Header.Revision < last {
			t.Errorf("member %d: status revision %d, want ≥ %d", i, st.Header.Revision, last)
		}
		if st.Leader == 0 || (leader != 0 && st.Leader != leader) {
			t.Errorf("member %d: leader %x, others %x", i, st.Leader, leader)
		}
		leader = st.Leader
		if st.RaftIndex == 0 || st.DbSize == 0 {
			t.Errorf("member %d: raft index %d, db size %d", i, st.RaftIndex, st.DbSize)
		}
		if len(st.Errors) != 0 {
			t.Errorf("member %d: status errors %v", i, st.Errors)
		}
	}
	// Defragment is each member's own, with range 1 or without.
	for i, u := range cl.URLs() {
		if _, err := c.Defragment(ctx, u); err != nil {
			t.Errorf("member %d: defragment: %v", i, err)
		}
	}
	// An alarm raised through member 0 is listed by every member and
	// disarmed through another.
	st, err := c.Status(ctx, cl.URLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	mc := pb.NewMaintenanceClient(cl.Client(0).ActiveConnection())
	if _, err := mc.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: st.Header.MemberId, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	for i := range cl.Size() {
		list, err := cl.Client(i).AlarmList(ctx)
		if err != nil || len(list.Alarms) != 1 || list.Alarms[0].MemberID != st.Header.MemberId {
			t.Fatalf("member %d lists alarms %v, %v", i, list, err)
		}
		s, err := cl.Client(i).Status(ctx, cl.URLs()[i])
		if err != nil || len(s.Errors) != 1 {
			t.Fatalf("member %d's status under NOSPACE: %v, %v", i, s, err)
		}
	}
	if _, err := cl.Client(4).AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: st.Header.MemberId, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	for i := range cl.Size() {
		nodetest.WaitFor(ctx, t, func() error {
			list, err := cl.Client(i).AlarmList(ctx)
			if err != nil || len(list.Alarms) != 0 {
				return fmt.Errorf("member %d lists alarms %v, %v after the disarm", i, list, err)
			}
			return nil
		})
	}
	if _, err := c.Put(ctx, "a", "after"); err != nil {
		t.Fatal(err)
	}
}

// compactedEverywhere fails unless every member's every replica refuses
// reads at rev as compacted (each replica's own compacted revision).
func compactedEverywhere(cl *nodetest.Cluster, rev int64) error {
	for i, n := range cl.Nodes() {
		for id, c := range n.CompactRevisions() {
			if c < rev {
				return fmt.Errorf("member %d's replica of range %d is compacted at %d, want ≥ %d", i, id, c, rev)
			}
		}
	}
	return nil
}

// subsetCompaction (TestSubsets/Compaction): a Compact through a member
// without range 1 (nor other ranges) compacts every replica of every
// range; automatic compaction does too.
func subsetCompaction(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := outsider(t, cl, "a")
	c := cl.Client(out)
	first, last := putEverywhere(ctx, t, c)
	if _, err := c.Compact(ctx, first); err != nil {
		t.Fatal(err)
	}
	for i := range cl.Size() {
		for _, k := range subsetKeys {
			if _, err := cl.Client(i).Get(ctx, k, clientv3.WithRev(first-1)); !errors.Is(err, rpctypes.ErrCompacted) {
				t.Fatalf("member %d: read %s at %d after a compaction at %d: %v", i, k, first-1, first, err)
			}
		}
	}
	nodetest.WaitFor(ctx, t, func() error { return compactedEverywhere(cl, first) })
	_ = last
}

// subsetSnapshot (TestSubsets/Snapshot): `etcdctl snapshot save` through a
// member that holds neither range 1 nor several other ranges is every
// range at one revision, streamed from the members holding them: restored,
// it answers as the source did at that revision, leases included (a lease
// with keys in ranges held elsewhere keeps them; a revoked one is gone).
func subsetSnapshot(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := cl.Client(outsider(t, cl, "a"))
	kept, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	putEverywhere(ctx, t, cli)
	for _, k := range []string{"b", "q"} {
		if _, err := cli.Put(ctx, k+"/lease", "kept", clientv3.WithLease(kept.ID)); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, k+"/gone", "gone", clientv3.WithLease(gone.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Revoke(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("snapshot through a member without range 1: %v", err)
	}
	file := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(t.TempDir(), "restored")
	rev, err := node.RestoreSnapshot(file, restored)
	if err != nil {
		t.Fatal(err)
	}
	rcli := nodetest.Start(t, 1, nodetest.DataDir(restored)).Client(0)
	all := func(c *clientv3.Client, rev int64) string {
		t.Helper()
		resp, err := c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(resp.Kvs)
	}
	if got, want := all(rcli, rev), all(cli, rev); got != want {
		t.Fatalf("restored at %d:\n%s\nthe source at %d:\n%s", rev, got, rev, want)
	}
	ttl, err := rcli.TimeToLive(ctx, kept.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || fmt.Sprintf("%s", ttl.Keys) != "[b/lease q/lease]" {
		t.Fatalf("the kept lease restored: %+v, %v", ttl, err)
	}
	if ttl, err := rcli.TimeToLive(ctx, gone.ID); err != nil || ttl.TTL != -1 {
		t.Fatalf("the revoked lease restored: %+v, %v", ttl, err)
	}
	if _, err := rcli.Revoke(ctx, kept.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := rcli.Get(ctx, "", clientv3.WithFromKey()); err != nil || strings.Contains(fmt.Sprint(got.Kvs), "lease") {
		t.Fatalf("keys of the restored lease after its revoke: %v, %v", got, err)
	}
}

// TestSubsetAutoCompaction: automatic compaction, run by range 1's
// leader's member, compacts every replica of every range, wherever it
// lives.
func TestSubsetAutoCompaction(t *testing.T) {
	cl := nodetest.Start(t, 5, nodetest.Sharded(subsetSplits...), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3),
		nodetest.Edit(func(c *node.Config) { c.AutoCompactionMode, c.AutoCompactionRetention = "periodic", "100ms" }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, _ := putEverywhere(ctx, t, cl.Client(outsider(t, cl, "a")))
	nodetest.WaitFor(ctx, t, func() error { return compactedEverywhere(cl, first) })
}

// checkThrough runs the CheckReplicas admin call (`cairn check`) on
// member i's client port.
func checkThrough(ctx context.Context, t *testing.T, cl *nodetest.Cluster, i int) *internalpb.CheckReplicasResponse {
	t.Helper()
	resp, err := internalpb.NewNodeClient(cl.Client(i).ActiveConnection()).CheckReplicas(ctx, &internalpb.CheckReplicasRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// subsetCheckReplicas (TestSubsets/CheckReplicas): `cairn check`'s call
// hashes every replica of every range at one revision on its member: all
// agree on a sound cluster; a replica changed behind raft's back is
// reported, and only its range.
func subsetCheckReplicas(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := outsider(t, cl, "c")
	putEverywhere(ctx, t, cl.Client(out))
	resp := checkThrough(ctx, t, cl, out)
	if len(resp.Mismatched) != 0 || len(resp.Replicas) != 3*len(subsetKeys) {
		t.Fatalf("a sound cluster: %v", resp)
	}
	for _, r := range resp.Replicas {
		if r.Error != "" || r.Replica == 0 {
			t.Fatalf("a sound cluster: replica %v", r)
		}
	}
	bad := holders(t, cl, rangeOf(t, cl, "c"))[1]
	if err := cl.Node(bad).CorruptVersion("c"); err != nil {
		t.Fatal(err)
	}
	resp = checkThrough(ctx, t, cl, out)
	if want := []uint64{rangeOf(t, cl, "c")}; fmt.Sprint(resp.Mismatched) != fmt.Sprint(want) {
		t.Fatalf("one replica of range %v corrupted on member %d: mismatched %v", want, bad, resp.Mismatched)
	}
}

// subsetRanges (TestSubsets/Ranges): `cairn ranges` (the range info) on a
// member shows every range, also those it holds no replica of, with its
// replicas (member and replica id, as the map names them) and a leader
// among them.
func subsetRanges(t *testing.T, cl *nodetest.Cluster) {
	ds := rangeMapOf(t, cl)
	n := cl.Node(outsider(t, cl, "a"))
	nodetest.Eventually(t, "every range shows with a leader", func() bool {
		infos := n.Ranges()
		if len(infos) != len(ds) {
			return false
		}
		for i, ri := range infos {
			want := ""
			for _, r := range placement.Pairs(ds[i]) {
				want += fmt.Sprintf("%x/%d ", r.Member, r.Id)
			}
			got, leads := "", false
			for _, r := range ri.ReplicaSet {
				got += fmt.Sprintf("%x/%d ", r.Member, r.ID)
				leads = leads || r.Member == ri.Leader
			}
			if ri.ID != ds[i].Id || got != want || !leads {
				return false
			}
		}
		return true
	})
}
