package compat

import (
	"context"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/cairn-kv/cairn/node"
)

// nospaceQuota is the backend quota both servers get: small enough to fill
// in a few dozen puts.
const nospaceQuota = 8 << 20

// TestEtcdctlNospaceRecovers: once a store past its quota has raised
// NOSPACE, etcd's documented recovery (compact to the current revision,
// defrag, alarm disarm) lets writes in again. Both servers are filled until
// a put fails with "database space exceeded"; then etcdctl runs the
// recovery on each, and every step prints the same on both: the puts after
// the disarm, one of them of 1.25 MiB, succeed and the alarm list is
// empty.
func TestEtcdctlNospaceRecovers(t *testing.T) {
	bin := buildEtcdctl(t)
	etcd := startEtcdWith(t, "etcd", func(c *embed.Config) { c.QuotaBackendBytes = nospaceQuota })
	cairn := startCairnWith(t, "cairn", func(c *node.Config) { c.QuotaBackendBytes = nospaceQuota })

	type outcome struct {
		step string
		res  ctlResult
	}
	// After the recovery the store has room again: a put of 1.25 MiB (a
	// request etcd's default limit still takes) succeeds on etcd, whose
	// defragmented file is a few hundred KiB.
	big := ctlStep{args: []string{"put", "big"}, stdin: strings.Repeat("y", 5<<18)}
	recover := func(s *server) []outcome {
		rev := fillToNospace(t, s)
		var out []outcome
		for _, step := range []ctlStep{
			ctl("put", "k", "v"),
			ctl("alarm", "list"),
			ctl("compaction", strconv.FormatInt(rev, 10)),
			ctl("defrag"),
			ctl("alarm", "disarm"),
			ctl("put", "k", "v"),
			big,
			ctl("alarm", "list"),
			ctl("get", "k", "--print-value-only"),
		} {
			name := step.String()
			if step.stdin == big.stdin {
				name = "put big <<< (1.25 MiB)"
			}
			out = append(out, outcome{name, runEtcdctl(t, bin, s, step).masked(maskNospace)})
		}
		return out
	}
	want, got := recover(etcd), recover(cairn)
	for i := range want {
		if testing.Verbose() {
			t.Logf("etcdctl %s\n%v", want[i].step, want[i].res)
		}
		if want[i].res != got[i].res {
			t.Errorf("etcdctl %s: outputs differ\n--- etcd:\n%v\n--- cairn:\n%v", want[i].step, want[i].res, got[i].res)
		}
	}
	// The recovery is what made the puts succeed: the first failed.
	if want[0].res.code == 0 || want[5].res.code != 0 || want[6].res.code != 0 {
		t.Errorf("etcd: put before the recovery exited %d, after %d and %d; want a failure, then success", want[0].res.code, want[5].res.code, want[6].res.code)
	}
}

// fillToNospace puts large random values to one key on s until a put is refused
// with "database space exceeded", and returns s's revision then.
func fillToNospace(t *testing.T, s *server) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Random bytes: pebble compresses its tables, and a value that
	// compresses would take Cairn far more puts than etcd, whose backend
	// stores values as they are.
	rnd := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(rnd.Uint32())
	}
	value := string(buf)
	// Every put keeps its revision until a compaction, but both servers
	// check a size they refresh only now and then (etcd's at its batch
	// commit, every 100ms), so a fast run overshoots the quota: allow 8
	// quotas' worth.
	const puts = 8 * nospaceQuota / (256 << 10)
	for i := 0; i < puts; i++ {
		_, err := s.cli.Put(ctx, "k", value)
		if err == nil {
			continue
		}
		if !strings.Contains(err.Error(), "database space exceeded") {
			t.Fatalf("%s: put %d: %v, want it to succeed or to fail with database space exceeded", s.name, i, err)
		}
		resp, err := s.cli.Get(ctx, "k")
		if err != nil {
			t.Fatalf("%s: get under NOSPACE: %v", s.name, err)
		}
		return resp.Header.Revision
	}
	t.Fatalf("%s: %d puts of %d bytes did not exceed a %d-byte quota", s.name, puts, len(value), nospaceQuota)
	return 0
}

// maskNospace hides what names the member or the moment in the recovery's
// outputs: member ids, the revision compacted and the time a defrag took.
func maskNospace(s string) string {
	for _, m := range []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`memberID:\s*\d+`), "memberID:ID"},
		{regexp.MustCompile(`compacted revision \d+`), "compacted revision REV"},
		{regexp.MustCompile(`\. took \S+`), ". took TIME"},
	} {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}
