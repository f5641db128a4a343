package compat

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"

	"github.com/cairn-kv/cairn/node"
)

// ctlShardedSplits cut a three-member sharded Cairn into eight ranges with
// boundaries inside the keys of every etcdctl suite: the foundation
// script's ("a" and "b" apart, "foo…" apart from what is before and after
// it), the watch scenarios' (prefix and range watches over "h/", "pv/",
// "wp/" and "wr/a"–"wr/c" reach two ranges each) and the lease suite's
// (its key lies outside range 1, where its lease lives). Two txns of the
// foundation script cross a boundary, which Cairn commits at one
// revision.
var ctlShardedSplits = []string{"b", "foo", "fop", "h/b", "pv/b", "wp/c", "wr/b"}

// TestShardedEtcdctl runs the etcdctl suites of the foundation
// (TestEtcdctl's script), watch (TestEtcdctlWatch) and lease
// (TestEtcdctlLease) issues against etcd and a three-member sharded Cairn
// with eight ranges (ctlShardedSplits), etcdctl talking to one member
// while the test's own writes go through all three. Everything etcdctl
// prints is compared, with two differences by design (DESIGN.md "Keys,
// values, revisions"): Cairn's revisions come from the oracle, not dense,
// so they are numbered as etcd numbers its writes (shardRevs) before the
// comparison and revisions the suites name are sent as Cairn's; and a
// response header carries the revision of the range that answered, so
// header revisions are masked on both sides.
func TestShardedEtcdctl(t *testing.T) {
	bin := buildEtcdctl(t)
	cairn := startShardedCtlCluster(t, "cairn-sharded-3", ctlShardedSplits)
	t.Run("foundation", func(t *testing.T) {
		etcd := startEtcd(t, "etcd")
		runCtlScript(t, bin, ctlScript, etcd, cairn, maskHeaderRevs)
	})
	t.Run("watch", func(t *testing.T) {
		v3rpc.SetProgressReportInterval(ctlWatchProgressInterval)
		t.Cleanup(func() { v3rpc.SetProgressReportInterval(10 * time.Minute) })
		etcd := startEtcd(t, "etcd")
		runCtlWatch(t, bin, etcd, cairn, maskHeaderRevs)
	})
	t.Run("lease", func(t *testing.T) {
		etcd := startEtcd(t, "etcd")
		ctlWatchAlign(t, etcd, cairn)
		runCtlLease(t, bin, etcd, cairn, maskHeaderRevs)
	})
}

// shardedCtlTxns replace the txns of ctlScript whose keys lie in several of
// ctlShardedSplits' ranges by ones that do what they do within one range,
// for the subset tests (TestShardedEtcdctl runs ctlScript as it is):
// the first's failure branch (not taken) put "x", the second's duplicate
// key and compare were spread over "a", "foo" and "zz".
var shardedCtlTxns = map[string]string{
	"mod(\"foo\") > \"0\"\nversion(\"foo1\") = \"1\"\n\nget foo1\ndel foo3\n\nput x y\n\n": "mod(\"foo\") > \"0\"\nversion(\"foo1\") = \"1\"\n\nget foo1\ndel foo3\n\nput foo4 y\n\n",
	"value(\"foo\") != \"x\"\nmod(\"zz\") < \"1000\"\n\nput a 10\nput a 11\n\n\n":          "value(\"foo\") != \"x\"\nmod(\"foo2\") < \"1000\"\n\nput foo1 10\nput foo1 11\n\n\n",
}

// shardedCtlScript is ctlScript with shardedCtlTxns in place.
func shardedCtlScript(t *testing.T) []ctlStep {
	t.Helper()
	script := slices.Clone(ctlScript)
	replaced := 0
	for i, step := range script {
		if with, ok := shardedCtlTxns[step.stdin]; ok {
			script[i].stdin = with
			replaced++
		}
	}
	if replaced != len(shardedCtlTxns) {
		t.Fatalf("ctlScript changed: %d of the %d txns to move found", replaced, len(shardedCtlTxns))
	}
	return script
}

var headerRevMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`"revision":\d+`), `"revision":REV`},
	{regexp.MustCompile(`"Revision" : \d+`), `"Revision" : REV`},
}

// maskHeaderRevs hides the revisions of response headers in etcdctl's json
// and fields output (key-values' revisions are named differently).
func maskHeaderRevs(s string) string {
	for _, m := range headerRevMasks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}

// startShardedCtlCluster starts a three-member sharded Cairn split at
// splits, sending progress notifications every ctlWatchProgressInterval.
// etcdctl talks to the second member; the test's client to all three.
func startShardedCtlCluster(t *testing.T, name string, splits []string) *server {
	t.Helper()
	s := startShardedCluster(t, name, 3, splits, func(c *node.Config) { c.WatchProgressNotifyInterval = ctlWatchProgressInterval })
	s.endpoint = s.endpoints[1]
	member, _ := newClient(t, s.endpoint)
	s.revs = newShardRevs(t, member)
	return s
}

// serverRev is s's current revision, as etcd would number it.
func serverRev(t *testing.T, s *server) int64 {
	t.Helper()
	if s.revs != nil {
		return s.revs.current(t)
	}
	return currentRev(t, s)
}

// shardRevs numbers a sharded Cairn's revisions as etcd numbers its own:
// each write revision Cairn hands out, in order, is the next etcd
// revision, counting from 1 for a fresh cluster. It learns them from a
// watch over the whole key space on the member etcdctl talks to (sync),
// which also shows that member applied them, so its serializable reads
// see them as etcd's do. A lease revoke deletes in each range at its own
// revision and would count as several; no suite revokes a lease with keys
// in several ranges.
type shardRevs struct {
	cli    *clientv3.Client
	ctx    context.Context // the watch's
	events clientv3.WatchChan
	// cairn[i] is the Cairn revision numbered first+i, in increasing order.
	first int64
	cairn []int64
}

func newShardRevs(t *testing.T, cli *clientv3.Client) *shardRevs {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	start := oracleRead(t, cli)
	return &shardRevs{
		cli: cli, ctx: ctx, first: 1, cairn: []int64{start},
		events: cli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(start+1)),
	}
}

// oracleRead reads over every range, which answers at a fresh oracle
// revision: above every write acknowledged before.
func oracleRead(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("read revision: %v", err)
	}
	return resp.Header.Revision
}

// sync numbers every write acknowledged so far: it reads a fresh oracle
// revision and takes the watch's events until a progress notification at
// or above it shows none before it is still to come.
func (r *shardRevs) sync(t *testing.T) {
	t.Helper()
	target := oracleRead(t, r.cli)
	deadline := time.After(opTimeout)
	ask := time.NewTicker(50 * time.Millisecond)
	defer ask.Stop()
	request := func() {
		ctx, cancel := context.WithTimeout(r.ctx, opTimeout)
		defer cancel()
		if err := r.cli.RequestProgress(ctx); err != nil {
			t.Fatalf("request progress: %v", err)
		}
	}
	request()
	for {
		select {
		case wr, ok := <-r.events:
			if !ok {
				t.Fatal("the revision watch ended")
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("the revision watch: %v", err)
			}
			for _, ev := range wr.Events {
				if rev := ev.Kv.ModRevision; rev > r.cairn[len(r.cairn)-1] {
					r.cairn = append(r.cairn, rev)
				}
			}
			if wr.IsProgressNotify() && wr.Header.Revision >= target {
				return
			}
		case <-ask.C:
			request()
		case <-deadline:
			t.Fatalf("the revision watch did not reach revision %d within %v", target, opTimeout)
		}
	}
}

// current syncs and returns the etcd number of the newest write.
func (r *shardRevs) current(t *testing.T) int64 {
	t.Helper()
	r.sync(t)
	return r.first + int64(len(r.cairn)) - 1
}

// toServer maps a revision as etcd numbers it to Cairn's: a written one to
// Cairn's revision of that write, the next one to just above the newest
// write (a watch from there sees the next write), a later one far above
// anything the oracle handed out (a future revision), none as is.
func (r *shardRevs) toServer(rev int64) int64 {
	switch i := rev - r.first; {
	case rev <= 0:
		return rev
	case i < 0:
		return 0 // older than the cluster: nothing names it
	case i < int64(len(r.cairn)):
		return r.cairn[i]
	case i == int64(len(r.cairn)):
		return r.cairn[len(r.cairn)-1] + 1
	default:
		return futureBase + rev
	}
}

// fromServer maps a Cairn revision back to etcd's number: that of the
// newest write at or below it (a header or progress revision lies between
// two writes), a future one back to what it was.
func (r *shardRevs) fromServer(rev int64) int64 {
	if rev >= futureBase {
		return rev - futureBase
	}
	if rev <= 0 {
		return rev
	}
	i := sort.Search(len(r.cairn), func(i int) bool { return r.cairn[i] > rev })
	if i == 0 {
		return rev // before the cluster's first write: left for the diff to show
	}
	return r.first + int64(i) - 1
}

// Revisions in etcdctl's arguments, in a watch -i command line and in
// txn's compares.
var (
	revFlagRe    = regexp.MustCompile(`(--(?:rev|min-mod-rev|max-mod-rev|min-create-rev|max-create-rev)=)(\d+)`)
	revCompareRe = regexp.MustCompile(`((?:mod|create)\("[^"]*"\) *[<>=!]+ *")(\d+)(")`)
	numberRe     = regexp.MustCompile(`^\d+$`)
)

// step returns s with every revision it names mapped to Cairn's: revision
// flags, compaction's argument, txn's revision compares.
func (r *shardRevs) step(s ctlStep) ctlStep {
	args := slices.Clone(s.args)
	for i, a := range args {
		switch {
		case len(args) > 0 && args[0] == "compaction" && numberRe.MatchString(a):
			n, _ := strconv.ParseInt(a, 10, 64)
			args[i] = strconv.FormatInt(r.toServer(n), 10)
		default:
			args[i] = r.line(a)
		}
	}
	s.args = args
	s.stdin = r.mapNumbers(s.stdin, revCompareRe, r.toServer)
	return s
}

// line maps the revision flags in one watch -i command line (nil: as is).
func (r *shardRevs) line(l string) string {
	if r == nil {
		return l
	}
	return r.mapNumbers(l, revFlagRe, r.toServer)
}

// Revisions in etcdctl's output: key-values' and compaction's in json and
// fields output, progress notifications, compaction's report.
var revOutRes = []*regexp.Regexp{
	regexp.MustCompile(`("(?:create_revision|mod_revision|compact_revision|CompactRevision)":)(\d+)()`),
	regexp.MustCompile(`("(?:Prev)?(?:CreateRevision|ModRevision)" : )(\d+)()`),
	regexp.MustCompile(`("CompactRevision" : )(\d+)()`),
	regexp.MustCompile(`(progress notify: )(\d+)()`),
	regexp.MustCompile(`(compacted revision )(\d+)()`),
}

// out maps the revisions etcdctl printed back to etcd's numbers (nil: as
// is).
func (r *shardRevs) out(s string) string {
	if r == nil {
		return s
	}
	for _, re := range revOutRes {
		s = r.mapNumbers(s, re, r.fromServer)
	}
	return s
}

// mapNumbers replaces the number each match of re holds in its second
// group, keeping the first and third.
func (r *shardRevs) mapNumbers(s string, re *regexp.Regexp, f func(int64) int64) string {
	return re.ReplaceAllStringFunc(s, func(m string) string {
		g := re.FindStringSubmatch(m)
		n, err := strconv.ParseInt(g[2], 10, 64)
		if err != nil {
			return m
		}
		suffix := ""
		if len(g) > 3 {
			suffix = g[3]
		}
		return g[1] + fmt.Sprint(f(n)) + suffix
	})
}
