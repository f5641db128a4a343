package compat

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cairn-kv/cairn/node"
)

var flagShardedSeqs = flag.Int64("sharded.seqs", seqs[int64](30, 100), "TestShardedDifferential: number of sequences (30, or 100 with -tags cairn_long)")

// shardedSplits split the sharded Cairn's key space inside the keys the
// sequences use (all under "s/" there, see newGenIn): five ranges.
var shardedSplits = []string{"s/a\x00", "s/b", "s/c", "shared/y"}

// TestShardedDifferential runs the differential sequences against etcd and
// a sharded Cairn whose range boundaries fall among the sequences' keys
// (DESIGN.md: a read over several ranges answers as etcd over the same
// data). Revisions cannot be equal — Cairn's come from the oracle, not
// dense — so they are compared by order: every etcd revision a request
// names is sent to Cairn as the revision Cairn gave the same write, and
// Cairn's revisions in answers are mapped back before the comparison;
// header revisions are left out (one range's answer carries that range's
// revision). Writes whose keys lie in several ranges are sent too: Cairn
// commits them atomically at one revision from the oracle, which maps to
// etcd's revision of the same write as any other. Only a txn across
// ranges with a put carrying a lease is not sent to either server: Cairn
// still refuses it (InvalidArgument; router tests cover that).
func TestShardedDifferential(t *testing.T) {
	forShardedSizes(t, func(t *testing.T, members int) {
		etcd := startEtcd(t, "etcd")
		runShardedDifferential(t, etcd, startShardedCairnN(t, "cairn-sharded", shardedSplits, members), *flagShardedSeqs, shardedSplits)
	})
}

// runShardedDifferential runs sequences 1..seqs against etcd and cairn,
// whose ranges are split at splits (shardedSplits among them).
func runShardedDifferential(t *testing.T, etcd, cairn *server, seqs int64, splits []string) {
	m := &revMap{fw: map[int64]int64{}, bw: map[int64]int64{}}
	// Both stores are fresh: etcd at revision 1; Cairn's equivalent is any
	// revision below its first write.
	m.etcd = currentRev(t, etcd)
	c0 := currentRev(t, cairn)
	m.record(m.etcd, c0)

	var sent, across, acrossWrote, skipped, local int
	for seed := int64(1); seed <= seqs; seed++ {
		g := newGenIn(seed, m.etcd, m.compact, "s/")
		n := 30 + g.r.IntN(31)
		for i := 0; i < n; i++ {
			o := g.next(nil)
			if crossesRanges(splits, o) {
				if leasedPut(o) {
					skipped++
					continue
				}
				across++
			}
			sent++
			if g, ok := o.req.(*pb.RangeRequest); ok && !crossesRanges(splits, op{kindTxn, &pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestRange{RequestRange: g}}}}}) {
				local++
			}
			ea := run(etcd, o)
			ca := run(cairn, op{o.kind, m.toCairn(o.req)})
			if ea.err == "" {
				g.observe(o, ea.resp)
				if h := headerOf(ea.resp); h != nil && h.Revision > m.etcd && crossesRanges(splits, o) {
					acrossWrote++
				}
				if h := headerOf(ea.resp); h != nil && h.Revision > m.etcd && ca.err == "" {
					if ch := headerOf(ca.resp); ch != nil {
						m.record(h.Revision, ch.Revision)
					}
				}
				if c, ok := o.req.(*pb.CompactionRequest); ok {
					m.compact = c.Revision
				}
			}
			for _, a := range []*answer{&ea, &ca} {
				if a.resp != nil {
					a.resp = proto.Clone(a.resp)
				}
			}
			if ca.resp != nil {
				m.fromCairn(ca.resp.ProtoReflect())
			}
			if ea.resp != nil {
				dropHeaderRevs(ea.resp.ProtoReflect())
			}
			if !ea.equal(ca) {
				// The stores may have diverged: the rest of the run would
				// only repeat it.
				t.Fatalf("seed %d, op %d: answers differ\nop: %v\netcd: %v\ncairn: %v\ndiff (-etcd +cairn):\n%s",
					seed, i, o, ea, ca, ea.diff(ca))
			}
		}
	}
	t.Logf("%d sequences: %d ops sent (%d reads within one range, %d deletes and txns across ranges, %d of them writing), %d txns across ranges with a leased put not sent; etcd at revision %d",
		seqs, sent, local, across, acrossWrote, skipped, m.etcd)
}

var flagShardedSizes = flag.String("sharded.sizes", "1,3", "the sharded differential tests: cluster sizes to run against, each a subtest")

// forShardedSizes runs f as a subtest for each cluster size of
// -sharded.sizes.
func forShardedSizes(t *testing.T, f func(t *testing.T, members int)) {
	for _, f := range strings.Split(*flagShardedSizes, ",") {
		if _, err := strconv.Atoi(f); err != nil {
			t.Fatalf("-sharded.sizes: %q is not a number", f)
		}
	}
	for _, n := range strings.Split(*flagShardedSizes, ",") {
		members, _ := strconv.Atoi(n)
		t.Run(fmt.Sprintf("members=%d", members), func(t *testing.T) { f(t, members) })
	}
}

// startShardedCairnN starts a sharded Cairn of members in-process members
// split at splits. With more than one, the client talks to all of them (so
// requests reach ranges through members that do not lead them) and reads
// are sent linearizable: a serializable read on a member that has not
// applied the last write yet may be stale, as in etcd, where the
// differential tests compare with a single etcd.
func startShardedCairnN(t *testing.T, name string, splits []string, members int) *server {
	t.Helper()
	if members == 1 {
		return startShardedCairn(t, name, splits)
	}
	s := startShardedCluster(t, name, members, splits, nil)
	s.linearize = true
	return s
}

// startShardedCluster starts a sharded Cairn of size in-process members
// split at splits, with every member's config changed by edit (nil:
// none), and returns it with a client of all members.
func startShardedCluster(t *testing.T, name string, size int, splits []string, edit func(*node.Config)) *server {
	t.Helper()
	eps := startCairnClusterWith(t, size, func(c *node.Config) {
		c.Sharded = true
		for _, k := range splits {
			c.InitialSplitKeys = append(c.InitialSplitKeys, []byte(k))
		}
		if edit != nil {
			edit(c)
		}
	})
	wire := &wireRecorder{}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: eps, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(wire.intercept)},
	})
	if err != nil {
		t.Fatalf("client for %v: %v", eps, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return &server{name: name, endpoint: eps[0], endpoints: eps, cli: cli, wire: wire}
}

// startShardedCairn starts an in-process sharded Cairn node split at splits.
func startShardedCairn(t *testing.T, name string, splits []string) *server {
	t.Helper()
	return startCairnWith(t, name, func(c *node.Config) {
		c.Sharded = true
		for _, k := range splits {
			c.InitialSplitKeys = append(c.InitialSplitKeys, []byte(k))
		}
	})
}

// rangeOf is the index of the range holding key among splits.
func rangeOf(splits []string, key string) int {
	return sort.Search(len(splits), func(i int) bool { return splits[i] > key })
}

// spanRanges adds to set the ranges etcd's [key, end) meets, as the router
// finds them (an empty interval: its key's range).
func spanRanges(splits []string, key, end []byte, set map[int]bool) {
	lo := rangeOf(splits, string(key))
	hi := lo
	switch {
	case len(end) == 0:
	case len(end) == 1 && end[0] == 0:
		hi = len(splits)
	case string(end) > string(key):
		hi = sort.Search(len(splits), func(i int) bool { return splits[i] >= string(end) })
	}
	for i := lo; i <= hi; i++ {
		set[i] = true
	}
}

// crossesRanges reports whether o is a write (or a txn) whose keys lie in
// several of the ranges splits (sorted) cut.
func crossesRanges(splits []string, o op) bool {
	set := map[int]bool{}
	switch r := o.req.(type) {
	case *pb.DeleteRangeRequest:
		spanRanges(splits, r.Key, r.RangeEnd, set)
	case *pb.TxnRequest:
		txnRanges(splits, r, set)
	}
	return len(set) > 1
}

// leasedPut reports whether o is a txn with a put that carries a lease,
// in any branch: across ranges, Cairn refuses it whichever branch runs.
func leasedPut(o op) bool {
	t, ok := o.req.(*pb.TxnRequest)
	return ok && txnLeased(t)
}

func txnLeased(r *pb.TxnRequest) bool {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestPut:
				if o.RequestPut.Lease != 0 {
					return true
				}
			case *pb.RequestOp_RequestTxn:
				if txnLeased(o.RequestTxn) {
					return true
				}
			}
		}
	}
	return false
}

func txnRanges(splits []string, r *pb.TxnRequest, set map[int]bool) {
	for _, c := range r.Compare {
		spanRanges(splits, c.Key, c.RangeEnd, set)
	}
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				spanRanges(splits, o.RequestRange.Key, o.RequestRange.RangeEnd, set)
			case *pb.RequestOp_RequestPut:
				spanRanges(splits, o.RequestPut.Key, nil, set)
			case *pb.RequestOp_RequestDeleteRange:
				spanRanges(splits, o.RequestDeleteRange.Key, o.RequestDeleteRange.RangeEnd, set)
			case *pb.RequestOp_RequestTxn:
				txnRanges(splits, o.RequestTxn, set)
			}
		}
	}
}

// revMap maps etcd's revisions to Cairn's for the same writes, both ways.
type revMap struct {
	fw, bw  map[int64]int64
	etcd    int64 // etcd's newest revision
	compact int64 // etcd's compaction revision
}

func (m *revMap) record(etcdRev, cairnRev int64) {
	m.fw[etcdRev], m.bw[cairnRev] = cairnRev, etcdRev
	m.etcd = max(m.etcd, etcdRev)
}

// futureBase lifts an etcd revision past the newest one far above
// anything Cairn's oracle has handed out, so it stays in the future there.
const futureBase = 1 << 40

// rev maps an etcd revision named in a request: none or negative as is,
// a written one to Cairn's revision of that write, a future one to a
// future one.
func (m *revMap) rev(r int64) int64 {
	if r <= 0 {
		return r
	}
	if c, ok := m.fw[r]; ok {
		return c
	}
	return futureBase + r
}

// toCairn returns req with every revision it names mapped.
func (m *revMap) toCairn(req proto.Message) proto.Message {
	req = proto.Clone(req)
	switch r := req.(type) {
	case *pb.RangeRequest:
		m.rangeReq(r)
	case *pb.CompactionRequest:
		r.Revision = m.rev(r.Revision)
	case *pb.TxnRequest:
		m.txnReq(r)
	}
	return req
}

func (m *revMap) rangeReq(r *pb.RangeRequest) {
	r.Revision = m.rev(r.Revision)
	r.MinModRevision, r.MaxModRevision = m.rev(r.MinModRevision), m.rev(r.MaxModRevision)
	r.MinCreateRevision, r.MaxCreateRevision = m.rev(r.MinCreateRevision), m.rev(r.MaxCreateRevision)
}

func (m *revMap) txnReq(r *pb.TxnRequest) {
	for _, c := range r.Compare {
		switch u := c.TargetUnion.(type) {
		case *pb.Compare_ModRevision:
			u.ModRevision = m.rev(u.ModRevision)
		case *pb.Compare_CreateRevision:
			u.CreateRevision = m.rev(u.CreateRevision)
		}
	}
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				m.rangeReq(o.RequestRange)
			case *pb.RequestOp_RequestTxn:
				m.txnReq(o.RequestTxn)
			}
		}
	}
}

// fromCairn maps the revisions of every key-value in a Cairn answer back
// to etcd's and drops header revisions; nil does nothing.
func (m *revMap) fromCairn(msg protoreflect.Message) {
	if msg == nil {
		return
	}
	if kv, ok := msg.Interface().(*mvccpb.KeyValue); ok {
		if e, ok := m.bw[kv.ModRevision]; ok {
			kv.ModRevision = e
		}
		if e, ok := m.bw[kv.CreateRevision]; ok {
			kv.CreateRevision = e
		}
		return
	}
	dropHeaderRevs(msg)
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				m.fromCairn(l.Get(i).Message())
			}
		case fd.Message() != nil:
			m.fromCairn(v.Message())
		}
		return true
	})
}

// dropHeaderRevs zeroes the revision of every response header in msg.
func dropHeaderRevs(msg protoreflect.Message) {
	if h, ok := msg.Interface().(*pb.ResponseHeader); ok {
		h.Revision = 0
		return
	}
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				dropHeaderRevs(l.Get(i).Message())
			}
		case fd.Message() != nil:
			dropHeaderRevs(v.Message())
		}
		return true
	})
}

var flagShardedWatchSeqs = flag.Int("sharded.watchseqs", seqs(8, 24), "TestShardedWatchDifferential: how many seeded scenarios (8, or 24 with -tags cairn_long)")

// TestShardedWatchDifferential runs TestWatchDifferential's scenarios
// against etcd and a sharded Cairn whose ranges split every scenario's
// keys twice (at "watchNNN/a/2" and "watchNNN/b/", so that its prefix and
// range watches reach two or three ranges and the whole-key-space ones
// every range). What differs by design is left out (see watchGen.splits
// and watchSide.loose): revisions are compared by order, leases stay out,
// header revisions of events are not compared and neither is how events
// are cut into responses — except that one revision's events must never
// be split. Writes reach several ranges: a txn or delete across ranges
// commits at one revision, and its events must come in one response.
//
// Known difference, kept out of the default run (-watch.strict puts it
// back): a txn across ranges delivers its events range by range (in key
// order of the ranges), where etcd delivers them in the order of the
// txn's ops; byKeyWithinRevision sorts one revision's events by key on
// both sides.
func TestShardedWatchDifferential(t *testing.T) {
	forShardedSizes(t, func(t *testing.T, members int) {
		runWatchPairs(t, *flagShardedWatchSeqs, func(t *testing.T, seeds []int64) (*server, *server, func(int64) []string) {
			splits := map[int64][]string{}
			var all []string
			for _, seed := range seeds {
				prefix := fmt.Sprintf("watch%03d/", seed)
				splits[seed] = []string{prefix + "a/2", prefix + "b/"}
				all = append(all, splits[seed]...)
			}
			etcd := startEtcd(t, "etcd")
			cairn := startShardedCairnN(t, "cairn-sharded", all, members)
			if members > 1 {
				// One member's: a watch created with start=now on a member
				// that has not applied a write yet would see it (as in an
				// etcd cluster); every step first waits until the member
				// applied every write (shardRevs.sync).
				cairn.cli, _ = newClient(t, cairn.endpoint)
				cairn.revs = newShardRevs(t, cairn.cli)
			}
			return etcd, cairn, func(seed int64) []string { return splits[seed] }
		})
	})
}

// oracleRev reads a sharded Cairn's revision over the whole key space: a
// read over every range answers at a fresh oracle revision, above every
// write before it.
func oracleRev(t *testing.T, s *server) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("%s: read revision: %v", s.name, err)
	}
	return resp.Header.Revision
}

// TestShardedEtcdctlPrefix: `etcdctl get --prefix` and `etcdctl watch
// --prefix` over a prefix that four ranges of a sharded Cairn share print
// what they print against etcd, for puts, overwrites and deletes landing
// in every range, a delete of a sub-prefix within one range included, and
// a watch from a past revision (--rev, mapped to Cairn's revision of the
// same write).
func TestShardedEtcdctlPrefix(t *testing.T) {
	bin := buildEtcdctl(t)
	etcd := startEtcd(t, "etcd")
	cairn := startShardedCairn(t, "cairn-sharded", []string{"pfx/c", "pfx/h", "pfx/p"})
	run := func(s *server) []string {
		e := &ctlWatchEnv{t: t, bin: bin, s: s}
		var out []string
		live := e.watch("--prefix", "pfx/")
		e.establish(live, "pfx/")
		var mark int64 // the revision of the first write below
		for i, k := range []string{"pfx/a", "pfx/d", "pfx/q", "pfx/i", "pfx/d", "pfx/z", "pfx/h1", "pfx/h2"} {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			resp, err := s.cli.Put(ctx, k, fmt.Sprint("v", i))
			cancel()
			if err != nil {
				t.Fatalf("%s: put %s: %v", s.name, k, err)
			}
			if i == 0 {
				mark = resp.Header.Revision
			}
		}
		e.del("pfx/q")
		e.del("pfx/h", clientv3.WithPrefix())
		e.put("pfx/zz", "last")
		out = append(out, e.entry("watch --prefix pfx/", ctlAfterSentinel(live.ctlUntil(ctlLineIs("last")))))
		live.stop()
		out = append(out, e.ctl("get --prefix pfx/", "", "get", "--prefix", "pfx/"))
		out = append(out, e.ctl("get --prefix pfx/ --limit 3 --sort-by=KEY --order=DESCEND", "",
			"get", "--prefix", "pfx/", "--limit", "3", "--sort-by=KEY", "--order=DESCEND"))
		out = append(out, e.ctl("get --prefix pfx/ --count-only", "", "get", "--prefix", "pfx/", "--count-only", "-w", "fields"))
		past := e.watch("--prefix", "pfx/", "--rev", fmt.Sprint(mark))
		out = append(out, e.entry("watch --prefix pfx/ --rev <the first put>", past.ctlUntil(ctlLineIs("last"))))
		past.stop()
		return out
	}
	want, got := run(etcd), run(cairn)
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		// --count-only -w fields prints the header too: keep the count.
		if strings.Contains(w, "--count-only") {
			w, g = countLine(w), countLine(g)
		}
		if w != g {
			t.Errorf("entry %d differs\n--- etcd:\n%s\n--- cairn:\n%s", i, indent(w), indent(g))
		}
	}
}

// countLine keeps the label and the "Count" line of etcdctl's fields output.
func countLine(s string) string {
	var keep []string
	for i, l := range strings.Split(s, "\n") {
		if i == 0 || strings.Contains(l, `"Count"`) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

var flagShardedLeaseSeqs = flag.Int64("sharded.leaseseqs", seqs[int64](10, 30), "TestShardedLeaseDifferential: how many seeded sequences (10, or 30 with -tags cairn_long)")

// TestShardedLeaseDifferential runs TestLeaseDifferential's sequences
// against etcd and a sharded Cairn that splits every sequence's keys
// ("leaseNNN/a" to "e") into three ranges, so that a lease's keys lie in
// several ranges, only one of them its home. Revisions are compared by
// step (leaseRevs: a revoke deletes in each range at its own revision,
// where etcd uses one); header revisions of answers that wrote nothing,
// and of revokes, are left out.
func TestShardedLeaseDifferential(t *testing.T) {
	first, last := int64(1), *flagShardedLeaseSeqs
	if *flagLeaseSeed != 0 {
		first, last = *flagLeaseSeed, *flagLeaseSeed
	}
	var splits []string
	for seed := first; seed <= last; seed++ {
		prefix := fmt.Sprintf("lease%03d/", seed)
		splits = append(splits, prefix+"b", prefix+"d")
	}
	forShardedSizes(t, func(t *testing.T, members int) {
		etcd := startEtcd(t, "etcd")
		runLeaseSequences(t, etcd, startShardedCairnN(t, "cairn-sharded", splits, members), first, last, true)
	})
}
