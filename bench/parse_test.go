package main

import (
	"strings"
	"testing"
)

// Abridged outputs of etcd's benchmark tool run with --precise.
const putOutput = `
Summary:
  Total:	2.000000 secs.
  Slowest:	0.010000 secs.
  Fastest:	0.000100 secs.
  Average:	0.001000 secs.
  Stddev:	0.000500 secs.
  Requests/sec:	5000.500000

Response time histogram:
  0.0001 [1]	|
  0.0100 [2]	|∎

Latency distribution:
  10% in 0.000500 secs.
  50% in 0.001000 secs.
  99% in 0.004000 secs.
  99.9% in 0.008000 secs.

Error distribution:
  [3]	etcdserver: request timed out
  [2]	context deadline exceeded
`

const watchOutput = `
Put summary:

Summary:
  Total:	5.000000 secs.
  Requests/sec:	200.000000

Latency distribution:
  99% in 0.002000 secs.

Watch events summary:

Summary:
  Total:	5.000000 secs.
  Requests/sec:	20000.000000

Latency distribution:
  50% in 0.000300 secs.
  99% in 0.005000 secs.
`

func TestParseBenchmark(t *testing.T) {
	m, err := parseBenchmark(putOutput, "")
	if err != nil {
		t.Fatal(err)
	}
	if m.rps != 5000.5 || m.p(10) != 0.0005 || m.p(99) != 0.004 || m.p(99.9) != 0.008 {
		t.Errorf("put: got rps %v p10 %v p99 %v p99.9 %v", m.rps, m.p(10), m.p(99), m.p(99.9))
	}
	if m.errors != 5 || m.firstErr != "etcdserver: request timed out" {
		t.Errorf("put: got %d errors, first %q", m.errors, m.firstErr)
	}
	if v := m.p(75); v == v {
		t.Errorf("put: p75 = %v, want NaN (not reported)", v)
	}
}

func TestParseBenchmarkSections(t *testing.T) {
	m, err := parseBenchmark(watchOutput, "Watch events summary:")
	if err != nil {
		t.Fatal(err)
	}
	if m.rps != 20000 || m.p(99) != 0.005 || m.p(50) != 0.0003 {
		t.Errorf("watch events: got rps %v p50 %v p99 %v", m.rps, m.p(50), m.p(99))
	}
	if _, err := parseBenchmark(putOutput, "Watch events summary:"); err == nil {
		t.Error("missing section: no error")
	}
}

func TestParseBenchmarkNoSummary(t *testing.T) {
	if _, err := parseBenchmark("bench with linearizable range\n", ""); err == nil {
		t.Error("no summary: no error")
	}
	// Every request failed: no summary, only errors; not a parse error.
	m, err := parseBenchmark("\nError distribution:\n  [10]\tUnimplemented\n", "")
	if err != nil || m.errors != 10 || !strings.Contains(m.firstErr, "Unimplemented") {
		t.Errorf("all failed: got %+v, %v", m, err)
	}
}
