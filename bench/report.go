package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

var nan = math.NaN()

// run is one measurement of one scenario against one system in one round.
type run struct {
	m   measurement
	err string // why the run failed; the measurement is then NaN
	rss int64  // the server's peak RSS (VmHWM) in bytes, 0 if unknown
	// scale is the rest of a scale-out run (nil for the other scenarios):
	// m is its put step.
	scale *scaleOutRun
}

// results holds every run of a harness invocation, and what the report needs
// to say where and how it happened.
type results struct {
	command   string
	started   time.Time
	elapsed   time.Duration
	rounds    int
	smoke     bool
	machine   machine
	client    string   // how the client was built
	systems   []system // in the order they ran
	scenarios []scenario
	// runs[scenario][system] has one entry per round; missing if skipped.
	runs map[string]map[string][]run
	// skipped[scenario][system] is why the pair was not run.
	skipped map[string]map[string]string
	// cpuCap says how the scale-out scenario capped its members, or why it
	// could not; rangeReplicas is the --range-replicas its sharded systems
	// got (0: left out).
	cpuCap        string
	rangeReplicas int
}

func newResults() *results {
	return &results{runs: map[string]map[string][]run{}, skipped: map[string]map[string]string{}}
}

func (r *results) add(sc, sys string, x run) {
	if r.runs[sc] == nil {
		r.runs[sc] = map[string][]run{}
	}
	r.runs[sc][sys] = append(r.runs[sc][sys], x)
}

func (r *results) skip(sc, sys, why string) {
	if r.skipped[sc] == nil {
		r.skipped[sc] = map[string]string{}
	}
	r.skipped[sc][sys] = why
}

// rps returns the per-round throughputs of a pair (NaN for failed rounds).
func (r *results) rps(sc, sys string) []float64 {
	var v []float64
	for _, x := range r.runs[sc][sys] {
		v = append(v, x.m.rps)
	}
	return v
}

// pct returns the per-round latencies at percentile q, in seconds.
func (r *results) pct(sc, sys string, q float64) []float64 {
	var v []float64
	for _, x := range r.runs[sc][sys] {
		if x.err != "" {
			v = append(v, nan)
			continue
		}
		v = append(v, x.m.p(q))
	}
	return v
}

// figure returns the per-round figure of merit of a pair: throughput, or
// the p99 latency for a latency-bound scenario.
func (r *results) figure(sc scenario, sys string) []float64 {
	if sc.latencyBound {
		return r.pct(sc.name, sys, 99)
	}
	return r.rps(sc.name, sys)
}

// ratio is the median per-round ratio of sys over the baseline.
func (r *results) ratio(sc scenario, sys, baseline string) float64 {
	return medianRatio(r.figure(sc, sys), r.figure(sc, baseline))
}

// writeReport writes the Markdown report: the setup, one table row per
// scenario, the targets, then failures and skips.
func writeReport(w io.Writer, r *results, charts []string) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }

	p("# Cairn benchmark\n\n")
	p("Command: `%s` (%s, %d round(s), systems alternated within each round, a fresh server and data directory per run).\n\n", r.command, r.started.UTC().Format("2006-01-02 15:04 UTC"), r.rounds)
	if r.smoke {
		p("**Smoke run**: tiny totals, one round; the numbers only show that the harness works.\n\n")
	}
	p("- Machine: %d CPU (%s), %s, %s; everything on 127.0.0.1.\n", r.machine.cpus, r.machine.cpu, r.machine.kernel, r.machine.goVer)
	p("- Data directories (all systems): `%s` on %s.\n", r.machine.dataDir, r.machine.device)
	p("- Client: %s.\n", r.client)
	for _, s := range r.systems {
		p("- `%s`: %s, %d node.\n", s.name, s.label, s.nodes)
	}
	p("- Figures are medians over rounds; a ratio is the median of the per-round ratios. Throughput in requests/s, latency in ms. Took %s.\n\n", r.elapsed.Round(time.Second))

	// The main table, the targets of issue 7 and what bounds the missed
	// ones, unless only scale-out and memory scenarios ran.
	if slices.ContainsFunc(r.scenarios, func(sc scenario) bool { return !sc.scaleOut && sc.memoryKeys == 0 }) {
		writeMainTable(p, r)
	}

	// Scale-out.
	if slices.ContainsFunc(r.scenarios, func(sc scenario) bool { return sc.scaleOut }) {
		writeScaleOut(p, r)
	}

	// Memory.
	var mem []scenario
	for _, sc := range r.scenarios {
		if sc.memoryKeys > 0 {
			mem = append(mem, sc)
		}
	}
	if len(mem) > 0 {
		p("## Memory\n\nEach system loads N distinct keys (%d-byte values, %d puts per txn, 32 clients), once; the figure is the server's peak RSS (VmHWM), the load rate is in keys/s.\n\n", memoryValSize, memoryTxnOps)
		p("| keys | system | peak RSS MiB | load keys/s |\n|---:|---|---:|---:|\n")
		for _, sc := range mem {
			for _, s := range r.systems {
				if !has(r, sc.name, s.name) {
					continue
				}
				p("| %s | %s | %s | %s |\n", fmtRate(float64(sc.memoryKeys)), s.name, fmtNum(medianRSS(r, sc.name, s.name), 0), fmtRate(median(r.rps(sc.name, s.name))))
			}
			e, c := medianRSS(r, sc.name, "etcd"), medianRSS(r, sc.name, "cairn")
			if e > 0 && c > 0 {
				cell := "–"
				if sc.memoryKeys == 10_000_000 {
					cell = "≤ 0.25× etcd: **FAIL**"
					if c/e <= 0.25 {
						cell = "≤ 0.25× etcd: **pass**"
					}
				}
				p("| %s | **cairn/etcd** | **%.2f×** | target %s |\n", fmtRate(float64(sc.memoryKeys)), c/e, cell)
			}
		}
		if !slices.ContainsFunc(mem, func(sc scenario) bool { return sc.memoryKeys == 10_000_000 }) {
			p("\nThe 10M-key target (cairn ≤ 0.25× etcd) needs `go run . -memory 1M,10M` (about 10 more minutes).\n")
		}
		p("\n")
	}

	// Latency percentiles and memory, of the scenarios in the main table.
	if slices.ContainsFunc(r.scenarios, func(sc scenario) bool { return !sc.scaleOut && sc.memoryKeys == 0 }) {
		p("## Latency percentiles (ms, median over rounds)\n\n| scenario | system |")
		qs := []float64{50, 90, 99, 99.9}
		for _, q := range qs {
			p(" p%g |", q)
		}
		p(" server peak RSS MiB |\n|---|---|")
		for range qs {
			p("---:|")
		}
		p("---:|\n")
		for _, sc := range r.scenarios {
			if sc.memoryKeys > 0 || sc.scaleOut {
				continue
			}
			for _, s := range r.systems {
				if !has(r, sc.name, s.name) {
					continue
				}
				p("| %s | %s |", sc.name, s.name)
				for _, q := range qs {
					p(" %s |", fmtMs(median(r.pct(sc.name, s.name, q))))
				}
				var rss []float64
				for _, x := range r.runs[sc.name][s.name] {
					if x.rss > 0 {
						rss = append(rss, float64(x.rss)/(1<<20))
					}
				}
				p(" %s |\n", fmtNum(median(rss), 0))
			}
		}
		p("\n")
	}

	if len(charts) > 0 {
		p("## Charts\n\n")
		for _, c := range charts {
			p("![%s](%s)\n\n", strings.TrimSuffix(c, ".png"), c)
		}
	}

	// Failures and skips, so that no number hides a problem.
	var notes []string
	for _, sc := range r.scenarios {
		for _, s := range r.systems {
			if why, ok := r.skipped[sc.name][s.name]; ok {
				notes = append(notes, fmt.Sprintf("- %s on %s: skipped, %s.", sc.name, s.name, why))
			}
			for i, x := range r.runs[sc.name][s.name] {
				if x.err != "" {
					notes = append(notes, fmt.Sprintf("- %s on %s, round %d: failed: %s", sc.name, s.name, i+1, x.err))
				} else if x.m.errors > 0 {
					notes = append(notes, fmt.Sprintf("- %s on %s, round %d: %d request(s) failed, e.g. %q", sc.name, s.name, i+1, x.m.errors, x.m.firstErr))
				}
			}
		}
	}
	if len(notes) > 0 {
		p("## Skipped and failed\n\n%s\n", strings.Join(notes, "\n"))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeMainTable writes the table of the point scenarios (a row each), the
// targets of issue 7 and what bounds the missed ones.
func writeMainTable(p func(format string, a ...any), r *results) {
	p("| scenario |")
	for _, s := range r.systems {
		p(" %s req/s | %s p99 ms |", s.name, s.name)
	}
	pairs := r.pairs()
	for _, pr := range pairs {
		p(" %s/%s | target |", pr[0], pr[1])
	}
	p("\n|---|")
	for range r.systems {
		p("---:|---:|")
	}
	for range pairs {
		p("---:|---|")
	}
	p("\n")
	for _, sc := range r.scenarios {
		if sc.memoryKeys > 0 || sc.scaleOut {
			continue // their own tables
		}
		p("| %s |", sc.name)
		for _, s := range r.systems {
			if why, ok := r.skipped[sc.name][s.name]; ok {
				_ = why
				p(" skipped | – |")
				continue
			}
			p(" %s | %s |", fmtRate(median(r.rps(sc.name, s.name))), fmtMs(median(r.pct(sc.name, s.name, 99))))
		}
		for _, pr := range pairs {
			ratio := nan
			if has(r, sc.name, pr[0]) && has(r, sc.name, pr[1]) {
				ratio = r.ratio(sc, pr[0], pr[1])
			}
			rs := fmtRatio(ratio)
			if sc.latencyBound && !math.IsNaN(ratio) {
				rs += " (p99)"
			}
			p(" %s | %s |", rs, targetCell(sc.name, pr[0], pr[1], ratio))
		}
		p("\n")
	}
	p("\n")

	p("Targets (issue 7): ")
	var ts []string
	for _, t := range targets {
		ts = append(ts, fmt.Sprintf("%s %s %s", t.sys, t.scenario, t))
	}
	ts = append(ts, "cairn peak RSS at 10M keys ≤ 0.25× etcd")
	p("%s. Fraction of the ceiling:", strings.Join(ts, "; "))
	for _, sc := range r.scenarios {
		if !has(r, sc.name, "ceiling") || sc.latencyBound {
			continue
		}
		var fs []string
		for _, s := range r.systems {
			if s.name == "ceiling" || !has(r, sc.name, s.name) {
				continue
			}
			fs = append(fs, fmt.Sprintf("%s %s", s.name, fmtPct(r.ratio(sc, s.name, "ceiling"))))
		}
		if len(fs) > 0 {
			p(" %s: %s;", sc.name, strings.Join(fs, ", "))
		}
	}
	p("\n\n")

	// What bounds every target missed.
	var why []string
	for _, sc := range r.scenarios {
		for _, pr := range pairs {
			if !has(r, sc.name, pr[0]) || !has(r, sc.name, pr[1]) {
				continue
			}
			if !strings.HasSuffix(targetCell(sc.name, pr[0], pr[1], r.ratio(sc, pr[0], pr[1])), "**FAIL**") {
				continue
			}
			key := sc.name
			switch pr[0] {
			case "cairn":
			case "cairn-3":
				key += "@3"
			default:
				key += "@" + pr[0]
			}
			if b, ok := bounds[key]; ok {
				why = append(why, fmt.Sprintf("- **%s, %s vs %s**: %s", sc.name, pr[0], pr[1], b))
			}
		}
	}
	if len(why) > 0 {
		p("## What bounds the missed targets\n\nFrom CPU profiles of Cairn during the scenarios (`--enable-pprof`), where one was taken (see each entry):\n\n%s\n\n", strings.Join(why, "\n"))
	}

}

// medianRSS is the median peak RSS of sys's runs of sc in MiB, 0 if none.
func medianRSS(r *results, sc, sys string) float64 {
	var rss []float64
	for _, x := range r.runs[sc][sys] {
		if x.rss > 0 && x.err == "" {
			rss = append(rss, float64(x.rss)/(1<<20))
		}
	}
	if len(rss) == 0 {
		return 0
	}
	return median(rss)
}

func has(r *results, sc, sys string) bool {
	_, skipped := r.skipped[sc][sys]
	return !skipped && len(r.runs[sc][sys]) > 0
}

// pairs are the (system, baseline) ratios the main table shows: each
// single-group Cairn against the etcd of the same size, each sharded Cairn
// against the single-group Cairn of the same size, where both ran.
func (r *results) pairs() [][2]string {
	var out [][2]string
	ran := map[string]bool{}
	for _, s := range r.systems {
		ran[s.name] = true
	}
	for _, pr := range [][2]string{{"cairn", "etcd"}, {"cairn-3", "etcd-3"}, {"cairn-sharded", "cairn"}, {"cairn-sharded-3", "cairn-3"}} {
		if ran[pr[0]] && ran[pr[1]] {
			out = append(out, pr)
		}
	}
	return out
}

func targetCell(sc, sys, baseline string, ratio float64) string {
	for _, t := range targets {
		if t.scenario != sc || t.sys != sys || t.baseline != baseline {
			continue
		}
		if math.IsNaN(ratio) {
			return fmt.Sprintf("%s: n/a", t)
		}
		if t.met(ratio) {
			return fmt.Sprintf("%s: **pass**", t)
		}
		return fmt.Sprintf("%s: **FAIL**", t)
	}
	return "–"
}

func fmtRate(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmtNum(v, 0)
}

func fmtMs(sec float64) string {
	if math.IsNaN(sec) {
		return "n/a"
	}
	ms := sec * 1000
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f", ms)
	default:
		return fmt.Sprintf("%.2f", ms)
	}
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", v)
}

func fmtPct(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.0f%%", v*100)
}

// fmtNum formats v with the given decimals and thousands separators.
func fmtNum(v float64, decimals int) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	s := fmt.Sprintf("%.*f", decimals, v)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var out []byte
	for i := range len(intPart) {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, intPart[i])
	}
	s = string(out)
	if neg {
		s = "-" + s
	}
	if frac != "" {
		s += "." + frac
	}
	return s
}
