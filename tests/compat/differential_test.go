package compat

import (
	"context"
	"flag"
	"fmt"
	"iter"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

var (
	flagSeed  = flag.Int64("seed", 0, "TestDifferential: replay sequences 1..seed and log every op of sequence seed (with -v)")
	flagSeqs  = flag.Int64("seqs", seqs[int64](50, 200), "TestDifferential: number of sequences (seeds 1..seqs; 50, or 200 with -tags cairn_long)")
	flagSelf  = flag.Bool("self", false, "TestDifferential: compare etcd with a second etcd instead of Cairn, to check the harness")
	flagFail  = flag.Int("maxfail", 10, "TestDifferential: stop after this many failed sequences")
	flagTrace = flag.Bool("trace", false, "TestDifferential: print each op to stderr before sending it, for when a server crashes the test process")
	flagSkip  = flag.String("skipops", "", "TestDifferential: comma-separated op kinds not to send (e.g. GetStream,Compact), to look past a known mismatch; replay with the same -skipops")
)

// skipKinds parses -skipops.
func skipKinds(t *testing.T) map[opKind]bool {
	skip := map[opKind]bool{}
	if *flagSkip == "" {
		return skip
	}
	for _, name := range strings.Split(*flagSkip, ",") {
		found := false
		for k, n := range kindNames {
			if strings.EqualFold(n, strings.TrimSpace(name)) {
				skip[k], found = true, true
			}
		}
		if !found {
			t.Fatalf("-skipops: unknown op kind %q (kinds: Get GetStream Put Delete Txn Compact RawRange RawTxn)", name)
		}
	}
	if len(skip) == len(kindNames) {
		t.Fatalf("-skipops skips every op kind")
	}
	return skip
}

// TestDifferential runs seeded random sequences of KV operations against
// etcd and Cairn in lockstep and compares every answer. See doc.go.
//
// Cairn runs in single-group mode, and again in its default mode, sharded
// with one range, whose revisions must be etcd's exactly (DESIGN.md "Keys,
// values, revisions": a cluster of one range counts them as etcd does).
func TestDifferential(t *testing.T) {
	t.Run("single-group", func(t *testing.T) {
		etcd, other := startPair(t)
		differential(t, etcd, other, *flagSeqs)
	})
	if *flagSelf {
		return
	}
	t.Run("sharded-one-range", func(t *testing.T) {
		etcd := startEtcd(t, "etcd")
		other := startCairnWith(t, "cairn", func(c *node.Config) { c.Sharded = true })
		differential(t, etcd, other, *flagSeqs)
	})
}

// differential runs sequences 1..seqs (or to -seed) against etcd and other.
func differential(t *testing.T, etcd, other *server, seqs int64) {

	// The prologue probes the fresh stores: the revision before any write
	// and compactions of a store that was never compacted.
	var compactRev int64
	observeCompact := func(o op, a answer) {
		if c, ok := o.req.(*pb.CompactionRequest); ok && a.err == "" {
			compactRev = c.Revision
		}
	}
	if !runOps(t, 0, prologue(), etcd, other, false, observeCompact) {
		_, compactRev = resync(t, etcd, other)
	}
	rev := currentRev(t, etcd)

	last := seqs
	if *flagSeed > 0 {
		last = *flagSeed
	}
	failed := 0
	st := newStats()
	skip := skipKinds(t)
	for seed := int64(1); seed <= last; seed++ {
		g := newGen(seed, rev, compactRev)
		if !runSequence(t, seed, g, etcd, other, seed == *flagSeed, st, skip) {
			failed++
			if failed >= *flagFail && *flagSeed == 0 { // a replay runs to its seed
				t.Fatalf("stopping after %d failed sequences (raise -maxfail to see more)", failed)
			}
			rev, compactRev = resync(t, etcd, other)
			continue
		}
		rev, compactRev = g.rev, g.compactRev
	}
	t.Logf("%d of %d sequences failed; %v", failed, last, st)
}

// stats counts the ops sent and etcd's error answers, by kind and by
// error, so that a change to the generator that makes most ops fail
// validation, or never reach an error path, shows up in the log.
type stats struct {
	ops    map[opKind]*[2]int
	errors map[string]int
}

func newStats() *stats { return &stats{ops: map[opKind]*[2]int{}, errors: map[string]int{}} }

func (s *stats) add(k opKind, err string) {
	if s.ops[k] == nil {
		s.ops[k] = new([2]int)
	}
	s.ops[k][0]++
	if err != "" {
		s.ops[k][1]++
		s.errors[err]++
	}
}

func (s *stats) String() string {
	out := "ops sent by kind (etcd errors in brackets):"
	for k := kindGet; k <= kindRawTxn; k++ {
		if c := s.ops[k]; c != nil {
			out += fmt.Sprintf(" %s=%d(%d)", kindNames[k], c[0], c[1])
		}
	}
	out += "\netcd errors:"
	for _, e := range slices.Sorted(maps.Keys(s.errors)) {
		out += fmt.Sprintf("\n  %5d %s", s.errors[e], e)
	}
	return out
}

// runSequence runs one sequence on both servers and reports its first
// mismatch. It tells whether the servers agreed on every op.
func runSequence(t *testing.T, seed int64, g *gen, a, b *server, verbose bool, st *stats, skip map[opKind]bool) bool {
	t.Helper()
	n := 30 + g.r.IntN(31)
	return runOps(t, seed, func(yield func(op) bool) {
		for i := 0; i < n; i++ {
			if !yield(g.next(skip)) {
				return
			}
		}
	}, a, b, verbose, func(o op, aa answer) {
		st.add(o.kind, aa.err)
		if aa.err == "" {
			g.observe(o, aa.resp)
		}
	})
}

// runOps sends each op to both servers, in order, and reports the first
// mismatch; seed 0 is the prologue. observe, if set, sees a's answers.
func runOps(t *testing.T, seed int64, seq iter.Seq[op], a, b *server, verbose bool, observe func(op, answer)) bool {
	t.Helper()
	i := 0
	for o := range seq {
		if *flagTrace {
			fmt.Fprintf(os.Stderr, "TRACE seed %d op %d: %v\n", seed, i, o)
		}
		aa, ba := run(a, o), run(b, o)
		if observe != nil {
			observe(o, aa)
		}
		if verbose {
			t.Logf("seed %d op %d: %v\n%s: %v\n%s: %v", seed, i, o, a.name, aa, b.name, ba)
		}
		if !aa.equal(ba) {
			t.Errorf("seed %d, op %d: answers differ (replay: go test -run TestDifferential -seed=%d -v)\n"+
				"op: %v\n%s: %v\n%s: %v\ndiff (-%s +%s):\n%s",
				seed, i, max(seed, 1), o, a.name, aa, b.name, ba, a.name, b.name, aa.diff(ba))
			return false
		}
		i++
	}
	return true
}

// prologue is the fixed start of every run, on fresh stores: etcd starts
// at revision 1, and its first compaction may be at revision 0.
func prologue() iter.Seq[op] {
	get := func(key string, rev int64) op {
		return op{kindGet, &pb.RangeRequest{Key: []byte(key), Revision: rev}}
	}
	compact := func(rev int64) op { return op{kindCompact, &pb.CompactionRequest{Revision: rev}} }
	return slices.Values([]op{
		{kindGet, rangeReqFor("\x00", "\x00")},
		get("k", 1),
		get("k", 2), // future
		compact(2),  // future
		compact(0),
		compact(0), // compacted
		get("k", 0),
		compact(1),
		compact(1),
		get("k", 1),
		{kindPut, &pb.PutRequest{Key: []byte("k"), Value: []byte("v"), PrevKv: true}},
		get("k", 1),
		get("k", 2),
		compact(2),
		get("k", 1), // compacted
		get("k", 2),
		{kindDelete, &pb.DeleteRangeRequest{Key: []byte("k"), PrevKv: true}},
	})
}

// currentRev is s's current revision.
func currentRev(t *testing.T, s *server) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, "\x00", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("%s: read revision: %v", s.name, err)
	}
	return resp.Header.Revision
}

// resync brings two servers that disagreed back to the same state so that
// the next sequences are meaningful: both empty, at the same revision, and
// compacted at it. It pads the one behind with writes, which only ever
// raises a revision. It returns the revision and the compaction revision.
func resync(t *testing.T, a, b *server) (rev, compactRev int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	const pad = "\x01resync"
	for _, s := range []*server{a, b} {
		if _, err := s.cli.Delete(ctx, "\x00", clientv3.WithRange("\x00")); err != nil {
			t.Fatalf("resync: %s: delete everything: %v", s.name, err)
		}
	}
	for {
		ra, rb := currentRev(t, a), currentRev(t, b)
		if ra == rb {
			break
		}
		behind := a
		if rb < ra {
			behind = b
		}
		if _, err := behind.cli.Put(ctx, pad, ""); err != nil {
			t.Fatalf("resync: %s: pad: %v", behind.name, err)
		}
	}
	for _, s := range []*server{a, b} {
		if _, err := s.cli.Put(ctx, pad, ""); err != nil {
			t.Fatalf("resync: %s: %v", s.name, err)
		}
		if _, err := s.cli.Delete(ctx, pad); err != nil {
			t.Fatalf("resync: %s: %v", s.name, err)
		}
	}
	ra, rb := currentRev(t, a), currentRev(t, b)
	if ra != rb {
		t.Fatalf("resync: revisions still differ after the same writes: %s at %d, %s at %d", a.name, ra, b.name, rb)
	}
	for _, s := range []*server{a, b} {
		if _, err := s.cli.Compact(ctx, ra); err != nil {
			t.Logf("resync: %s: compact at %d: %v", s.name, ra, err)
		}
	}
	return ra, ra
}

func rangeReqFor(key, end string) *pb.RangeRequest {
	r := &pb.RangeRequest{Key: []byte(key)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return r
}
