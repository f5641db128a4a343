package compat

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"

	"github.com/cairn-kv/cairn/node"
)

var (
	flagSubsetSeqs      = flag.Int64("subset.seqs", 2, "TestSubsetDifferential: sequences (KV, lease) and scenarios (watch) of each differential test")
	flagSubsetCtlScript = flag.Bool("subset.ctlscript", false, "TestSubsetDifferential: run all of etcdctl's foundation script, not a third of it (10 to 20 s more)")
)

// subsetSize and subsetReplicas are TestSubsetDifferential's cluster: each
// range on three of five members (--range-replicas 3).
const (
	subsetSize     = 5
	subsetReplicas = 3
)

// TestSubsetDifferential runs the KV, watch and lease differential tests of
// the sharded suite (TestShardedDifferential, TestShardedWatchDifferential,
// TestShardedLeaseDifferential) against etcd and one five-member Cairn
// holding each range on three members, whose range boundaries fall among
// every test's keys (the three tests' splits together). Each test talks to
// a member that holds no replica of some of the ranges its operations
// touch (for the lease test, of range 1 too, where leases live), so reads,
// writes, watches and leases there go through members that do (issue 21).
// Then a sixth member is added, which holds no replica of any range, and
// TestShardedEtcdctl's suites run against etcd and that member only: a
// third of its foundation script (all of it with -subset.ctlscript), its
// watch and lease suites (ctlShardedSplits are among the splits, so
// their keys span ranges as there), and TestEtcdctlCluster's cluster and
// maintenance commands (runSubsetCtlCluster). The tests share the
// cluster, one after the other: the KV test first, which needs a fresh
// store; the others number revisions from where they start and use keys
// of their own.
func TestSubsetDifferential(t *testing.T) {
	seqs := *flagSubsetSeqs
	splits := slices.Concat(shardedSplits, ctlShardedSplits)
	watchSplits := map[int64][]string{}
	for seed := int64(1); seed <= seqs; seed++ {
		prefix := fmt.Sprintf("watch%03d/", seed)
		watchSplits[seed] = []string{prefix + "a/2", prefix + "b/"}
		splits = append(splits, watchSplits[seed]...)
		prefix = fmt.Sprintf("lease%03d/", seed)
		splits = append(splits, prefix+"b", prefix+"d")
	}
	slices.Sort(splits)
	cl := startSubsetCluster(t, "cairn-subset", splits)

	t.Run("kv", func(t *testing.T) {
		// The sequences' keys: "s/…" and "shared/…" (newGenIn).
		cairn := cl.via(t, "s/b", "s/", "t")
		cairn.linearize = true // as startShardedCairnN's, for the same reason
		runShardedDifferential(t, startEtcd(t, "etcd"), cairn, seqs, splits)
	})
	t.Run("watch", func(t *testing.T) {
		cairn := cl.via(t, "watch001/b/", "watch", "watch\xff")
		cairn.linearize = true
		// As TestShardedWatchDifferential's with several members: every
		// step first waits until the member applied every write.
		cairn.revs = newShardRevs(t, cairn.cli)
		etcd := startEtcd(t, "etcd")
		var st watchStats
		for seed := int64(1); seed <= seqs; seed++ {
			if !runWatchScenario(t, seed, []*server{etcd, cairn}, false, &st, watchSplits[seed]) {
				break // the stores may have diverged
			}
		}
		t.Logf("%d scenarios; %v", seqs, &st)
	})
	t.Run("lease", func(t *testing.T) {
		// Leases live in range 1, which holds "lease001/a".
		cairn := cl.via(t, "lease001/a", "lease", "lease\xff")
		cairn.linearize = true
		runLeaseSequences(t, startEtcd(t, "etcd"), cairn, 1, seqs, true)
	})
	t.Run("etcdctl", func(t *testing.T) {
		// etcdctl talks to a member added now, which holds no replica of
		// any range (a member added gets none until one is moved to it):
		// every command it sends is served by other members.
		ep, id := cl.join(t)
		cl.holdsNothing(t, ep, id)
		// As TestShardedEtcdctl's suites: the cluster holds no keys (the
		// tests before leave some behind) and its revisions are numbered
		// from here on.
		cl.empty(t)
		bin := buildEtcdctl(t)
		cli, wire := newClient(t, ep)
		cairn := &server{name: cl.name, endpoint: ep, endpoints: append(slices.Clone(cl.endpoints), ep), cli: cli, wire: wire}
		cairn.revs = newShardRevs(t, cli)
		t.Run("foundation", func(t *testing.T) {
			script := subsetCtlScript(t)
			if *flagSubsetCtlScript {
				script = shardedCtlScript(t)
			}
			runCtlScript(t, bin, script, startEtcd(t, "etcd"), cairn, maskHeaderRevs)
		})
		t.Run("watch", func(t *testing.T) {
			v3rpc.SetProgressReportInterval(ctlWatchProgressInterval)
			t.Cleanup(func() { v3rpc.SetProgressReportInterval(10 * time.Minute) })
			runCtlWatch(t, bin, startEtcd(t, "etcd"), cairn, maskHeaderRevs)
		})
		t.Run("lease", func(t *testing.T) {
			etcd := startEtcd(t, "etcd")
			ctlWatchAlign(t, etcd, cairn)
			runCtlLease(t, bin, etcd, cairn, maskHeaderRevs)
		})
		t.Run("cluster", func(t *testing.T) {
			runSubsetCtlCluster(t, bin, cairn)
		})
		// Still none: nothing moved a replica to it meanwhile.
		cl.holdsNothing(t, ep, id)
	})
}

// subsetCluster is a sharded Cairn whose ranges are each on some of its
// members.
type subsetCluster struct {
	name      string
	endpoints []string           // the founders'
	ranges    int                // how many ranges it was started with
	edit      func(*node.Config) // each member's config, from startCairnClusterWith's
}

// startSubsetCluster starts subsetSize in-process members holding each
// range, split at splits, on subsetReplicas of them, and waits until every
// member's copy of the range map lists every range.
func startSubsetCluster(t *testing.T, name string, splits []string) *subsetCluster {
	t.Helper()
	edit := func(c *node.Config) {
		c.Sharded = true
		c.RangeReplicas = subsetReplicas
		c.WatchProgressNotifyInterval = ctlWatchProgressInterval // for etcdctl's watch suite
		for _, k := range splits {
			c.InitialSplitKeys = append(c.InitialSplitKeys, []byte(k))
		}
	}
	eps := startCairnClusterWith(t, subsetSize, edit)
	cl := &subsetCluster{name: name, endpoints: eps, ranges: len(splits) + 1, edit: edit}
	for _, ep := range eps {
		cl.rangesOf(t, ep)
	}
	return cl
}

// empty deletes every key, one range at a time: each a single-range
// delete, so that emptying a cluster does not go through the cross-range
// transaction path the subset tests do not look at.
func (cl *subsetCluster) empty(t *testing.T) {
	t.Helper()
	cli, _ := newClient(t, cl.endpoints[0])
	for _, r := range cl.rangesOf(t, cl.endpoints[0]) {
		start, end := r.Start, r.End
		if start == "" {
			start = "\x00"
		}
		if end == "" {
			end = "\x00"
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_, err := cli.Delete(ctx, start, clientv3.WithRange(end))
		cancel()
		if err != nil {
			t.Fatalf("%s: delete [%q, %q): %v", cl.name, start, end, err)
		}
	}
}

// subsetRange is one range as a member's /cairn/ranges lists it.
type subsetRange struct {
	ID         uint64          `json:"id"`
	Start      string          `json:"start"`
	End        string          `json:"end"` // "": the end of the key space
	Remote     bool            `json:"remote"`
	Replicas   []uint64        `json:"replicas"` // member ids
	ReplicaSet []subsetReplica `json:"replica_set"`
}

// subsetReplica is one replica of a range as /cairn/ranges lists it.
type subsetReplica struct {
	Member uint64 `json:"member"`
	ID     uint64 `json:"id"`
}

func (r subsetRange) holds(key string) bool {
	return key >= r.Start && (r.End == "" || key < r.End)
}

func (r subsetRange) meets(from, to string) bool {
	return (r.End == "" || from < r.End) && r.Start < to
}

// rangesOf returns the ranges the member at ep lists, once it lists all of
// them (a member's copy of the range map may still be catching up).
func (cl *subsetCluster) rangesOf(t *testing.T, ep string) []subsetRange {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		rs, err := fetchSubsetRanges(ep)
		if err == nil && len(rs) == cl.ranges {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s lists %d ranges, want %d (%v)", ep, len(rs), cl.ranges, err)
		}
		<-time.After(50 * time.Millisecond)
	}
}

func fetchSubsetRanges(ep string) ([]subsetRange, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep+"/cairn/ranges", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/cairn/ranges: %s", ep, resp.Status)
	}
	var rs []subsetRange
	return rs, json.NewDecoder(resp.Body).Decode(&rs)
}

// via returns the cluster as a server whose client talks to one member
// only: one without a replica of key's range and, among those, the one
// holding the fewest of the ranges [from, to) meets. It fails the test if
// every member holds key's range.
func (cl *subsetCluster) via(t *testing.T, key, from, to string) *server {
	t.Helper()
	best, bestRemote := -1, 0
	for i, ep := range cl.endpoints {
		rs := cl.rangesOf(t, ep)
		remote, outside := 0, false
		for _, r := range rs {
			if r.holds(key) {
				outside = r.Remote
			}
			if r.Remote && r.meets(from, to) {
				remote++
			}
		}
		if outside && remote > bestRemote {
			best, bestRemote = i, remote
		}
	}
	if best < 0 {
		t.Fatalf("%s: every member holds the range of %q", cl.name, key)
	}
	ep := cl.endpoints[best]
	t.Logf("%s: clients talk to member %d (%s), which holds no replica of %d of the ranges in [%q, %q), %q's among them",
		cl.name, best, ep, bestRemote, from, to, key)
	cli, wire := newClient(t, ep)
	return &server{name: cl.name, endpoint: ep, endpoints: cl.endpoints, cli: cli, wire: wire}
}
