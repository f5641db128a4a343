package compat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/testport"
)

// join adds a member to cl (etcd's MemberAdd through its first member),
// starts it with --initial-cluster-state existing and cl's config, and
// returns its client URL and member id once it serves the member list
// with every member, none a learner, and lists every range. A member
// added holds no replica of any range until one is moved to it (issue
// 21), and TestSubsetDifferential runs no scheduler that would move one.
func (cl *subsetCluster) join(t *testing.T) (string, uint64) {
	t.Helper()
	name := fmt.Sprintf("m%d", subsetSize)
	cli, _ := newClient(t, cl.endpoints[0])
	peer := "http://" + testport.Addr(t)
	var added *clientv3.MemberAddResponse
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		var err error
		added, err = cli.MemberAdd(ctx, []string{peer})
		cancel()
		if err == nil {
			break
		}
		// As etcd's, a change is refused while some member has not been
		// connected for long enough.
		if !errors.Is(err, rpctypes.ErrUnhealthy) || time.Now().After(deadline) {
			t.Fatalf("%s: member add: %v", cl.name, err)
		}
		<-time.After(200 * time.Millisecond)
	}
	var initial []string
	for _, m := range added.Members {
		mname := m.Name
		if m.ID == added.Member.ID {
			mname = name
		}
		initial = append(initial, mname+"="+m.PeerURLs[0])
	}
	client := "http://" + testport.Addr(t)
	cfg := node.Config{
		Name: name, DataDir: t.TempDir(),
		ListenClientURLs: []string{client}, ListenPeerURLs: []string{peer},
		InitialCluster: strings.Join(initial, ","), InitialClusterState: "existing",
		InitialClusterToken: "etcdctl-cluster",
	}
	cl.edit(&cfg)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	n, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("%s: start %s: %v", cl.name, name, err)
	}
	t.Cleanup(func() { _ = n.Close() })

	ncli, _ := newClient(t, client)
	for {
		// The member joins as a learner would, until it finds itself none.
		mctx, mcancel := context.WithTimeout(ctx, opTimeout)
		ml, err := ncli.MemberList(mctx)
		mcancel()
		if err == nil && len(ml.Members) == len(added.Members) &&
			!slices.ContainsFunc(ml.Members, func(m *pb.Member) bool { return m.IsLearner }) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: %s's member list: %v, %v", cl.name, name, ml, err)
		}
		<-time.After(50 * time.Millisecond)
	}
	cl.rangesOf(t, client)
	return client, added.Member.ID
}

// holdsNothing fails the test unless the member id at ep holds no replica
// of any range: it says so of every range itself (remote), and the range
// map, as it and cl's first member have it, names it among no range's
// replicas.
func (cl *subsetCluster) holdsNothing(t *testing.T, ep string, id uint64) {
	t.Helper()
	for _, at := range []string{ep, cl.endpoints[0]} {
		for _, r := range cl.rangesOf(t, at) {
			if at == ep && !r.Remote {
				t.Fatalf("%s: %s holds a replica of range %d [%q, %q)", cl.name, ep, r.ID, r.Start, r.End)
			}
			if slices.Contains(r.Replicas, id) || slices.ContainsFunc(r.ReplicaSet, func(p subsetReplica) bool { return p.Member == id }) {
				t.Fatalf("%s: the range map at %s names member %x among range %d's replicas %v %v",
					cl.name, at, id, r.ID, r.Replicas, r.ReplicaSet)
			}
		}
	}
}

// subsetCtlSteps are the steps of shardedCtlScript that
// TestSubsetDifferential runs unless -subset.ctlscript asks for all of
// them: a third of the script, for CI's time (each step is two etcdctl
// runs and a wait until the member etcdctl talks to has seen its writes).
// They keep the writes that make the revisions the later steps name (the
// put section's), reads within one range and over several, at old,
// compacted and future revisions, serializable ones (the member has no
// replica to read from), txns (the two of shardedCtlTxns among them),
// deletes over ranges, and compactions.
var subsetCtlSteps = []ctlStep{
	ctl("put", "foo", "bar"),
	ctl("put", "foo", "bar2", "--prev-kv"),
	ctl("put", "foo1", "one"),
	ctl("put", "foo2", "two", "-w", "json"),
	ctl("put", "foo3", "three", "-w", "fields"),
	ctl("put", "a", "1"),
	ctl("put", "b", "2", "--prev-kv", "-w", "json"),
	ctl("put", "b", "22", "--prev-kv"),
	ctl("put", "zz", "last", "--prev-kv", "-w", "fields"),
	ctl("put", "foo", "--ignore-value"),
	ctl("put", "nokey", "--ignore-value"),
	ctl("put", "foo", "x", "--lease=1234"),
	ctl("put", "foo", "--ignore-lease", "bar2"),
	ctl("get", "foo"),
	ctl("get", "", "--prefix"),
	ctl("get", "", "--from-key"),
	ctl("get", "a", "foo2"),
	ctl("get", "foo", "--rev=2"),
	ctl("get", "foo", "--prefix", "--limit=2", "-w", "json"),
	ctl("get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit=3"),
	ctl("get", "", "--prefix", "--min-mod-rev=5", "--max-mod-rev=9"),
	ctl("get", "foo", "--prefix", "--count-only", "-w", "json"),
	ctl("get", "foo", "--consistency=s"),
	ctl("get", "foo", "--prefix", "--consistency=s", "-w", "json"),
	ctl("get", "foo", "--rev=100"),
	ctlTxn("value(\"foo\") = \"bar2\"\n\nput foo txn1\nget foo\n\nput foo else1\n\n"),
	ctlTxn("value(\"foo\") = \"nope\"\n\nput foo txn2\n\nput foo else2\nget foo --prefix\n\n"),
	ctlTxn(shardedCtlTxns["mod(\"foo\") > \"0\"\nversion(\"foo1\") = \"1\"\n\nget foo1\ndel foo3\n\nput x y\n\n"], "-w", "json"),
	ctlTxn(shardedCtlTxns["value(\"foo\") != \"x\"\nmod(\"zz\") < \"1000\"\n\nput a 10\nput a 11\n\n\n"]),
	ctlTxn("\n\nget a\n\n\n"),
	ctl("del", "foo1", "--prev-kv"),
	ctl("del", "foo", "--prefix", "--prev-kv", "-w", "json"),
	ctl("del", "a", "b", "--range"),
	ctl("get", "", "--prefix", "-w", "json"),
	ctl("compaction", "5"),
	ctl("compaction", "3"),
	ctl("get", "foo", "--rev=4"),
	ctl("compaction", "--physical", "8"),
	ctl("get", "", "--prefix", "--rev=9"),
}

// subsetCtlScript is subsetCtlSteps, each found in shardedCtlScript and in
// its order there.
func subsetCtlScript(t *testing.T) []ctlStep {
	t.Helper()
	full := shardedCtlScript(t)
	next := 0
	for _, s := range subsetCtlSteps {
		i := slices.IndexFunc(full[next:], func(f ctlStep) bool { return f.String() == s.String() })
		if i < 0 {
			t.Fatalf("subsetCtlSteps: %s is not in shardedCtlScript after step %d", s, next)
		}
		next += i + 1
	}
	return subsetCtlSteps
}

// subsetCtlClusterSteps are the cluster and maintenance commands of
// ctlClusterSteps that TestSubsetDifferential runs against its added
// member, compared with a six-member etcd (so that member lists and
// --cluster commands show as many members). Left out: move-leader and
// the member changes, which are about the placement group's leader and
// membership rather than about ranges, and would leave the shared cluster
// changed; snapshot save, which runSubsetCtlCluster runs itself to read
// the file after.
var subsetCtlClusterSteps = []ctlClusterStep{
	{[]string{"put", "k", "v"}, true},
	{[]string{"member", "list", "-w", "table"}, true},
	{[]string{"endpoint", "status", "--cluster", "-w", "table"}, true},
	{[]string{"endpoint", "status", "-w", "table"}, true},
	{[]string{"endpoint", "health", "--cluster"}, true},
	{[]string{"endpoint", "health"}, true},
	{[]string{"endpoint", "hashkv", "--cluster"}, true},
	{[]string{"alarm", "list"}, true},
	{[]string{"defrag"}, true},
	{[]string{"defrag", "--cluster"}, true},
}

// runSubsetCtlCluster runs subsetCtlClusterSteps with etcdctl talking to
// the member cairn talks to only, and to one etcd member that does not
// lead (neither does that member: it leads no range), then checks what
// the masks hide there: every member's `endpoint hashkv --cluster` agrees
// at one revision, and `snapshot save` through the member writes a backup
// Cairn restores, at or above the revision of the write before it.
func runSubsetCtlCluster(t *testing.T, bin string, cairn *server) {
	etcd := etcdFollower(t, startEtcdCluster(t, subsetSize+1))
	runCtlClusterSteps(t, bin, subsetCtlClusterSteps, []string{etcd}, []string{cairn.endpoint})

	rev := oracleRead(t, cairn.cli)
	code, out, errOut := runCtl(t, bin, []string{cairn.endpoint},
		[]string{"endpoint", "hashkv", "--cluster", fmt.Sprintf("--rev=%d", rev), "-w", "json"})
	var hashes []struct {
		Endpoint string
		HashKV   struct {
			Hash         uint32 `json:"hash"`
			HashRevision int64  `json:"hash_revision"`
		}
	}
	if err := json.Unmarshal([]byte(out), &hashes); code != 0 || err != nil {
		t.Fatalf("endpoint hashkv --cluster --rev=%d: exit %d, %v\n%s%s", rev, code, err, out, errOut)
	}
	if len(hashes) != subsetSize+1 {
		t.Errorf("endpoint hashkv --cluster: %d members answered, want %d:\n%s", len(hashes), subsetSize+1, out)
	}
	for _, h := range hashes {
		if h.HashKV.Hash != hashes[0].HashKV.Hash || h.HashKV.HashRevision != rev {
			t.Errorf("endpoint hashkv --cluster --rev=%d: members disagree:\n%s", rev, out)
			break
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	put, err := cairn.cli.Get(ctx, "k")
	if err != nil || len(put.Kvs) != 1 {
		t.Fatalf("get k: %v, %v", put, err)
	}
	var want string
	var file string
	for _, c := range []struct{ name, ep string }{{"etcd", etcd}, {"cairn", cairn.endpoint}} {
		file = filepath.Join(t.TempDir(), "snap.db")
		code, out, errOut := runCtl(t, bin, []string{c.ep}, []string{"snapshot", "save", file})
		got := fmt.Sprintf("exit %d\n%s", code, strings.Join(maskCluster(out), "\n"))
		if c.name == "etcd" {
			want = got
		} else if got != want {
			t.Errorf("etcdctl snapshot save:\netcd:\n%s\ncairn:\n%s\ncairn's stderr:\n%s", indent(want), indent(got), indent(errOut))
		}
	}
	restored, err := node.RestoreSnapshot(file, filepath.Join(t.TempDir(), "restored"))
	if err != nil {
		t.Fatalf("the snapshot saved through %s: %v", cairn.endpoint, err)
	}
	if restored < put.Kvs[0].ModRevision {
		t.Errorf("the snapshot saved through %s is at revision %d, before the write of k at %d", cairn.endpoint, restored, put.Kvs[0].ModRevision)
	}
}

// etcdFollower returns the client URL of a member of the etcd cluster at
// eps that does not lead it.
func etcdFollower(t *testing.T, eps []string) string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, ep := range eps {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			t.Fatalf("status of %s: %v", ep, err)
		}
		if st.Leader != 0 && st.Header.MemberId != st.Leader {
			return ep
		}
	}
	t.Fatalf("no etcd member follows a leader among %v", eps)
	return ""
}
