package main

import (
	"strings"
	"testing"
	"time"
)

func fakeResults() *results {
	r := newResults()
	r.command = "cd bench && go run ."
	r.started = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	r.rounds = 3
	r.machine = machine{cpus: 2, cpu: "test cpu", goVer: "go1.26", kernel: "Linux", dataDir: "/tmp/x", device: "/dev/vda (ext4) mounted at /"}
	r.client = "etcd benchmark"
	r.systems = systems()[:3] // etcd, cairn, ceiling
	r.scenarios = scenarios(smokeSizes)
	ms := func(rps, p99 float64) run {
		return run{m: measurement{rps: rps, pct: map[float64]float64{50: p99 / 4, 99: p99}}, rss: 64 << 20}
	}
	for i := 0; i < 3; i++ {
		// put: cairn/etcd per round 2.0, 1.0, 1.6 → median 1.6, pass.
		r.add("put", "etcd", ms(1000, 0.004))
		r.add("put", "cairn", ms([]float64{2000, 1000, 1600}[i], 0.003))
		r.add("put", "ceiling", ms(4000, 0.001))
		// range-linearizable: 1.1× → fail.
		r.add("range-linearizable", "etcd", ms(1000, 0.002))
		r.add("range-linearizable", "cairn", ms(1100, 0.002))
		r.add("range-linearizable", "ceiling", ms(5000, 0.001))
		// watch-latency: judged by p99, cairn 0.5× etcd's → pass.
		r.add("watch-latency", "etcd", ms(100, 0.004))
		r.add("watch-latency", "cairn", ms(100, 0.002))
	}
	r.add("txn-put", "etcd", ms(1000, 0.004))
	r.add("txn-put", "cairn", run{m: measurement{rps: nan}, err: "cairn exited while starting"})
	r.skip("lease-keepalive", "cairn", "cairn does not offer the Lease service")
	r.skip("watch-latency", "ceiling", "ceiling does not offer the Watch service")
	return r
}

func TestWriteReport(t *testing.T) {
	var b strings.Builder
	if err := writeReport(&b, fakeResults(), []string{"throughput.png"}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| put | 1,000 | 4.00 | 1,600 | 3.00 | 4,000 | 1.00 | 1.60× | ≥ 1.5× etcd: **pass** |",
		"| range-linearizable | 1,000 | 2.00 | 1,100 | 2.00 | 5,000 | 1.00 | 1.10× | ≥ 1.2× etcd: **FAIL** |",
		"| txn-put | 1,000 | 4.00 | n/a | n/a | n/a | n/a | n/a | ≥ 1.5× etcd: n/a |",
		"| watch-latency | 100 | 4.00 | 100 | 2.00 | skipped | – | 0.50× (p99) | p99 ≤ 1.0× etcd: **pass** |",
		"put: etcd 25%, cairn 40%;",
		"/dev/vda (ext4) mounted at /",
		"2 CPU (test cpu)",
		"- lease-keepalive on cairn: skipped, cairn does not offer the Lease service.",
		"- txn-put on cairn, round 1: failed: cairn exited while starting",
		"| put | cairn | 0.75 | n/a | 3.00 | n/a | 64 |",
		"![throughput](throughput.png)",
		"- **range-linearizable, cairn vs etcd**: Each read waits for a read index",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q; report:\n%s", want, out)
		}
	}
}

func TestCharts(t *testing.T) {
	dir := t.TempDir()
	names, err := writeCharts(dir, fakeResults())
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 || names[0] != "throughput.png" {
		t.Errorf("charts = %v, want throughput.png first", names)
	}
}

func TestDeviceOf(t *testing.T) {
	if d := deviceOf("/"); d == "unknown" || !strings.Contains(d, "mounted at /") {
		t.Errorf("deviceOf(/) = %q", d)
	}
}
