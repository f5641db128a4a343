package main

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// measurement is what one run of the benchmark tool reported.
type measurement struct {
	rps      float64             // requests per second
	pct      map[float64]float64 // percentile (10, 25, …, 99.9) → latency in seconds
	errors   int                 // failed requests
	firstErr string              // one of the errors, for the report
}

// p returns the latency at percentile q in seconds, NaN if not reported.
func (m measurement) p(q float64) float64 {
	v, ok := m.pct[q]
	if !ok {
		return nan
	}
	return v
}

// parseBenchmark reads the output of etcd's benchmark tool (run with
// --precise). The tool prints one summary, or for watch-latency a "Put
// summary" followed by a "Watch events summary"; section picks the summary
// that starts after a line with that prefix ("" for the first one).
//
//	Summary:
//	  Total:	1.2345 secs.
//	  Requests/sec:	8100.12
//	Latency distribution:
//	  10% in 0.0010 secs.
//	  99% in 0.0040 secs.
//	Error distribution:
//	  [3]	etcdserver: request timed out
func parseBenchmark(out, section string) (measurement, error) {
	m := measurement{rps: nan, pct: map[float64]float64{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	in := section == ""
	summaries := 0
	errs := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !in {
			in = strings.HasPrefix(line, section)
			continue
		}
		switch {
		case line == "Summary:":
			summaries++
			if summaries > 1 && section == "" {
				// Only the first summary belongs to this section.
				return m, finish(m)
			}
			errs = false
		case strings.HasPrefix(line, "Requests/sec:"):
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, "Requests/sec:")), 64)
			if err != nil {
				return m, fmt.Errorf("bench: parse %q: %w", line, err)
			}
			m.rps = v
		case strings.Contains(line, "% in ") && strings.HasSuffix(line, "secs."):
			q, rest, _ := strings.Cut(line, "% in ")
			qv, err1 := strconv.ParseFloat(q, 64)
			lv, err2 := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(rest, "secs.")), 64)
			if err1 != nil || err2 != nil {
				return m, fmt.Errorf("bench: parse latency line %q", line)
			}
			m.pct[qv] = lv
		case line == "Error distribution:":
			errs = true
		case errs && strings.HasPrefix(line, "["):
			n, msg, _ := strings.Cut(strings.TrimPrefix(line, "["), "]")
			c, err := strconv.Atoi(n)
			if err != nil {
				return m, fmt.Errorf("bench: parse error line %q", line)
			}
			m.errors += c
			if m.firstErr == "" {
				m.firstErr = strings.TrimSpace(msg)
			}
		}
	}
	if !in {
		return m, fmt.Errorf("bench: no %q section in the benchmark output", section)
	}
	return m, finish(m)
}

func finish(m measurement) error {
	if m.rps != m.rps && m.errors == 0 { // NaN: no summary at all
		return fmt.Errorf("bench: no summary in the benchmark output")
	}
	return nil
}
