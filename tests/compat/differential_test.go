package compat

import (
	"context"
	"flag"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	flagSeed = flag.Int64("seed", 0, "TestDifferential: replay sequences 1..seed and log every op of sequence seed (with -v)")
	flagSeqs = flag.Int64("seqs", 200, "TestDifferential: number of sequences (seeds 1..seqs)")
	flagSelf = flag.Bool("self", false, "TestDifferential: compare etcd with a second etcd instead of Cairn, to check the harness")
	flagFail = flag.Int("maxfail", 10, "TestDifferential: stop after this many failed sequences")
)

// TestDifferential runs seeded random sequences of KV operations against
// etcd and Cairn in lockstep and compares every answer. See doc.go.
func TestDifferential(t *testing.T) {
	etcd := startEtcd(t, "etcd")
	var other *server
	if *flagSelf {
		other = startEtcd(t, "etcd2")
	} else {
		other = startCairn(t, "cairn")
	}

	// The fresh stores must agree before anything is written: same revision.
	probe := op{kindGet, rangeReqFor("\x00", "\x00")}
	if ea, oa := run(etcd, probe), run(other, probe); !ea.equal(oa) {
		t.Errorf("fresh stores differ on %v\n%s: %v\n%s: %v\ndiff (-%s +%s):\n%s",
			probe, etcd.name, ea, other.name, oa, etcd.name, other.name, ea.diff(oa))
		resync(t, etcd, other)
	}

	last := *flagSeqs
	if *flagSeed > 0 {
		last = *flagSeed
	}
	rev, compactRev := currentRev(t, etcd), int64(0)
	failed := 0
	for seed := int64(1); seed <= last; seed++ {
		g := newGen(seed, rev, compactRev)
		if !runSequence(t, seed, g, etcd, other, seed == *flagSeed) {
			failed++
			if failed >= *flagFail {
				t.Fatalf("stopping after %d failed sequences (raise -maxfail to see more)", failed)
			}
			rev, compactRev = resync(t, etcd, other)
			continue
		}
		rev, compactRev = g.rev, g.compactRev
	}
	if failed > 0 {
		t.Logf("%d of %d sequences failed", failed, last)
	}
}

// runSequence runs one sequence on both servers and reports its first
// mismatch. It tells whether the servers agreed on every op.
func runSequence(t *testing.T, seed int64, g *gen, a, b *server, verbose bool) bool {
	t.Helper()
	n := 30 + g.r.IntN(31)
	for i := 0; i < n; i++ {
		o := g.next()
		aa, ba := run(a, o), run(b, o)
		if verbose {
			t.Logf("seed %d op %d: %v\n%s: %v\n%s: %v", seed, i, o, a.name, aa, b.name, ba)
		}
		if !aa.equal(ba) {
			t.Errorf("seed %d, op %d of %d: answers differ (replay: go test -run TestDifferential -seed=%d -v)\n"+
				"op: %v\n%s: %v\n%s: %v\ndiff (-%s +%s):\n%s",
				seed, i, n, seed, o, a.name, aa, b.name, ba, a.name, b.name, aa.diff(ba))
			return false
		}
		if aa.err == "" {
			g.observe(o, aa.resp)
		}
	}
	return true
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
