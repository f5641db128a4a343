package main

import (
	"context"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// The scale-out scenario (issue 21) shows what sharding buys on one machine:
// every member process is capped at the same CPU share (cgroup.go), so that
// adding members adds CPU, and the same client runs against clusters of 3, 6
// and 9 members in sharded mode (3 replicas per range, 4 ranges per member)
// and in single-group mode. Per system it
//
//  1. starts the cluster, each member moved into its capped group right
//     after exec;
//  2. runs the put scenario's `benchmark put` (endpoints: every member);
//  3. records each member's bytes on disk (du of its data directory) and
//     peak RSS: the same puts over the same key space on every system;
//  4. writes scaleOutReaders keys spread evenly over the benchmark's key
//     space and runs one `benchmark range <key> --consistency l` process
//     per key, all at once, sharing the scenario's clients: etcd's tool
//     reads a single key per process, and one key would load one range.

// scaleOutSystems are the systems the scale-out scenario runs on.
var scaleOutSystems = []string{"cairn-3", "cairn-6", "cairn-9", "cairn-sharded-3", "cairn-sharded-6", "cairn-sharded-9"}

const (
	// scaleOutRangesPerMember: a sharded cluster of n members starts with
	// 4n ranges.
	scaleOutRangesPerMember = 4
	// scaleOutReaders is how many range processes run at once, each reading
	// its own key: one key per range at 9 members (36 ranges).
	scaleOutReaders = 36
	// scaleOutRangeReplicas is --range-replicas of the sharded systems.
	scaleOutRangeReplicas = 3
)

// scaleOutTargets are issue 21's goals for put: sharded 6 members ≥ 1.8×
// 3 members, single-group ≤ 1.0×.
var scaleOutTargets = map[bool]target{
	true:  {scenario: "scale-out", sys: "cairn-sharded-6", baseline: "cairn-sharded-3", min: 1.8},
	false: {scenario: "scale-out", sys: "cairn-6", baseline: "cairn-3", max: 1.0},
}

// scaleOutSystem reads a scale-out system's name: cairn-sharded-6 is
// sharded with 6 members, cairn-9 single-group with 9.
func scaleOutSystem(name string) (sharded bool, members int, ok bool) {
	rest, found := strings.CutPrefix(name, "cairn-")
	if !found {
		return false, 0, false
	}
	rest, sharded = strings.CutPrefix(rest, "sharded-")
	n, err := strconv.Atoi(rest)
	if err != nil || n <= 0 {
		return false, 0, false
	}
	return sharded, n, true
}

// benchKeyAt returns the two-byte key below which a fraction p of the keys
// of etcd's benchmark tool falls. The tool's keys hold the varint of a random
// number i below --key-space-size: zigzag makes the first byte
// 0x80|(2i&0x7f), an even value from 0x80 to 0xfe (64 values, evenly used,
// for all but i < 64), and for i ≥ 8192 the second byte is 0x80|((i>>6)&0x7f),
// about even too. So the key space is 64 first-byte buckets of equal mass,
// each spread over second bytes 0x80–0xff (the few i < 8192 sit below 0x80,
// at the bucket's start):
//
//	p = 0     → 0x80 0x80
//	p = 1/128 → 0x80 0xc0   (half of the first bucket)
//	p = 1/2   → 0xc0 0x80
func benchKeyAt(p float64) []byte {
	pos := p * 64
	b0 := int(math.Floor(pos))
	b1 := int(math.Floor((pos - float64(b0)) * 128))
	return []byte{byte(0x80 + 2*b0), byte(0x80 + b1)}
}

// scaleOutSplits returns --initial-split-keys cutting the benchmark's keys
// into ranges parts of about equal load.
func scaleOutSplits(ranges int) string {
	var keys []string
	for i := 1; i < ranges; i++ {
		keys = append(keys, string(benchKeyAt(float64(i)/float64(ranges))))
	}
	return strings.Join(keys, ",")
}

// scaleOutReadKeys returns n keys, the middles of n equal parts of the
// benchmark's key space (no NUL bytes: they go on a command line).
func scaleOutReadKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = string(benchKeyAt((float64(i)+0.5)/float64(n))) + fmt.Sprintf("/bench-read-%02d", i)
	}
	return keys
}

// scaleOutRun is what the scale-out scenario measures beyond its put step
// (run.m): the range step and the members' footprint after the puts.
type scaleOutRun struct {
	rng      measurement
	disk     []int64   // each member's bytes on disk (du of its data directory)
	apparent []int64   // each member's files' sizes (du --apparent-size)
	rss      []int64   // each member's peak RSS (VmHWM), in bytes
	throttle []float64 // each member's fraction of CPU periods throttled, over the run
}

// runScaleOut runs the scale-out scenario sc against sys on members capped
// at share of a CPU under cgroupRoot; the tool's output goes to raw.
func runScaleOut(ctx context.Context, env *environment, sys system, sc scenario, dir, benchBin, raw, cgroupRoot string, share float64) run {
	fail := func(err error) run { return run{m: measurement{rps: nan}, err: oneLine(err.Error())} }
	cpu, err := newCPUCap(cgroupRoot, share, os.Getpid())
	if err != nil {
		return fail(err)
	}
	// Deferred first, so it runs after in.stop: a group with tasks cannot
	// be removed.
	defer func() {
		if err := cpu.close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	if sys.scaleOutCommand != nil {
		sys.command = sys.scaleOutCommand
	}
	in, err := startSystemCapped(ctx, env, sys, dir, cpu)
	if err != nil {
		return fail(err)
	}
	defer in.stop()
	var rawOut strings.Builder
	defer func() { _ = os.WriteFile(raw, []byte(rawOut.String()), 0o644) }()

	// Put.
	argv := append(slices.Clone(sc.args), "--endpoints", strings.Join(in.endpoints, ","),
		"--clients", strconv.Itoa(sc.clients), "--conns", strconv.Itoa(sc.conns), "--precise")
	stdout, stderr, err := runBenchmark(ctx, benchBin, argv)
	fmt.Fprintf(&rawOut, "$ benchmark %s\n%s\n--- stderr (last lines)\n%s\n\n", strings.Join(argv, " "), stdout, lastLines(stderr, 20))
	if err != nil {
		return fail(fmt.Errorf("benchmark put: %v: %s", err, lastLines(stderr, 3)))
	}
	put, err := parseBenchmark(stdout, "")
	if err != nil {
		return fail(err)
	}
	if put.rps != put.rps {
		return fail(fmt.Errorf("every put failed, e.g. %q", put.firstErr))
	}
	x := &scaleOutRun{rss: in.memberRSS()}
	for _, d := range in.dirs {
		n, a, err := diskUsage(d)
		if err != nil {
			return fail(err)
		}
		x.disk, x.apparent = append(x.disk, n), append(x.apparent, a)
	}

	// Range.
	keys := scaleOutReadKeys(scaleOutReaders)
	if err := putKeys(ctx, in.endpoints, keys, strings.Repeat("v", 256)); err != nil {
		return fail(fmt.Errorf("preload: %w", err))
	}
	x.rng, err = runReaders(ctx, benchBin, in.endpoints, keys, sc, &rawOut)
	if err != nil {
		return fail(err)
	}
	x.throttle = cpu.throttled()
	return run{m: put, rss: slices.Max(x.rss), scale: x}
}

// runReaders runs one `benchmark range <key>` process per key, all at once,
// each with an equal part of sc's requests and clients and one connection.
// The throughput is all their successful requests over the wall time from
// the first start to the last exit; a latency percentile is the mean of the
// processes' (they read equal shares).
func runReaders(ctx context.Context, benchBin string, endpoints, keys []string, sc scenario, rawOut *strings.Builder) (measurement, error) {
	per := max(1, sc.rangeTotal/len(keys))
	clients := (sc.clients + len(keys) - 1) / len(keys)
	outs := make([]string, len(keys))
	var mu sync.Mutex // guards rawOut
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for i, k := range keys {
		g.Go(func() error {
			argv := []string{"range", k, "--consistency", "l", "--total", strconv.Itoa(per),
				"--endpoints", strings.Join(endpoints, ","), "--clients", strconv.Itoa(clients), "--conns", "1", "--precise"}
			stdout, stderr, err := runBenchmark(gctx, benchBin, argv)
			mu.Lock()
			fmt.Fprintf(rawOut, "$ benchmark %q\n%s\n--- stderr (last lines)\n%s\n\n", argv, stdout, lastLines(stderr, 5))
			mu.Unlock()
			if err != nil {
				return fmt.Errorf("benchmark range %q: %v: %s", k, err, lastLines(stderr, 3))
			}
			outs[i] = stdout
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return measurement{rps: nan}, err
	}
	wall := time.Since(start)
	ms := make([]measurement, len(outs))
	for i, out := range outs {
		m, err := parseBenchmark(out, "")
		if err != nil {
			return measurement{rps: nan}, err
		}
		ms[i] = m
	}
	return mergeReaders(ms, per, wall), nil
}

// mergeReaders combines the measurements of readers that ran at once, each
// sending per requests, over wall: see runReaders.
func mergeReaders(ms []measurement, per int, wall time.Duration) measurement {
	out := measurement{pct: map[float64]float64{}}
	ok := 0
	sums := map[float64]float64{}
	counts := map[float64]int{}
	for _, m := range ms {
		out.errors += m.errors
		if out.firstErr == "" {
			out.firstErr = m.firstErr
		}
		ok += per - m.errors
		for q, v := range m.pct {
			sums[q] += v
			counts[q]++
		}
	}
	for q, s := range sums {
		if counts[q] == len(ms) {
			out.pct[q] = s / float64(counts[q])
		}
	}
	out.rps = nan
	if ok > 0 && wall > 0 {
		out.rps = float64(ok) / wall.Seconds()
	}
	return out
}

// runBenchmark runs etcd's benchmark tool with argv (at most 10 minutes).
func runBenchmark(ctx context.Context, benchBin string, argv []string) (stdout, stderr string, err error) {
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, benchBin, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// putKeys writes v under every key.
func putKeys(ctx context.Context, endpoints, keys []string, v string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, v); err != nil {
			return err
		}
	}
	return nil
}

// diskUsage returns the bytes the files under dir take on disk (allocated
// blocks, as du counts them) and their apparent size (du --apparent-size:
// preallocated log space counts in the first only).
func diskUsage(dir string) (onDisk, apparent int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		apparent += info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			onDisk += st.Blocks * 512
		} else {
			onDisk += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("bench: du %s: %w", dir, err)
	}
	return onDisk, apparent, nil
}

// scaleOutFigure returns the per-round throughput (q = 0) or latency at
// percentile q, in seconds, of sys's put step, or of its range step if rng.
func (r *results) scaleOutFigure(sc, sys string, rng bool, q float64) []float64 {
	var v []float64
	for _, x := range r.runs[sc][sys] {
		m := x.m
		if rng {
			if x.scale == nil {
				v = append(v, nan)
				continue
			}
			m = x.scale.rng
		}
		switch {
		case x.err != "":
			v = append(v, nan)
		case q == 0:
			v = append(v, m.rps)
		default:
			v = append(v, m.p(q))
		}
	}
	return v
}

// scaleOutRows returns the scale-out systems that ran sc, sharded first, each
// mode by size.
func scaleOutRows(r *results, sc string) []string {
	var out []string
	for _, s := range r.systems {
		if _, _, ok := scaleOutSystem(s.name); ok && has(r, sc, s.name) {
			out = append(out, s.name)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int {
		sa, na, _ := scaleOutSystem(a)
		sb, nb, _ := scaleOutSystem(b)
		if sa != sb {
			if sa {
				return -1
			}
			return 1
		}
		return na - nb
	})
	return out
}

// scaleOutName is the system of a mode and size.
func scaleOutName(sharded bool, members int) string {
	if sharded {
		return fmt.Sprintf("cairn-sharded-%d", members)
	}
	return fmt.Sprintf("cairn-%d", members)
}

// medianMember returns, for each member, the median over sys's rounds of
// the figure pick returns, in MiB.
func medianMember(r *results, sc, sys string, pick func(*scaleOutRun) []int64) []float64 {
	var per [][]float64
	for _, x := range r.runs[sc][sys] {
		if x.err != "" || x.scale == nil {
			continue
		}
		for i, v := range pick(x.scale) {
			if i == len(per) {
				per = append(per, nil)
			}
			per[i] = append(per[i], float64(v)/(1<<20))
		}
	}
	out := make([]float64, len(per))
	for i, vs := range per {
		out[i] = median(vs)
	}
	return out
}

// writeScaleOut writes the scale-out section: the setup, throughput per
// system, the ratios 6/3 and 9/3 per mode against issue 21's targets, and
// the members' footprint.
func writeScaleOut(p func(format string, a ...any), r *results) {
	var sc scenario
	for _, s := range r.scenarios {
		if s.scaleOut {
			sc = s
		}
	}
	p("## Scale-out (issue 21)\n\n")
	p("- CPU cap: %s.\n", r.cpuCap)
	rr := "`--range-replicas` left out (`-range-replicas 0`): every member holds every range"
	if r.rangeReplicas > 0 {
		rr = fmt.Sprintf("`--range-replicas %d`", r.rangeReplicas)
	}
	p("- `cairn-N`: single-group (`--single-group`), N members; `cairn-sharded-N`: sharded, %s, `--placement-replicas 3`, %d ranges per member split where the benchmark's keys fall (`--initial-split-keys`). The client's endpoints are all members.\n", rr, scaleOutRangesPerMember)
	p("- Put: `benchmark %s --clients %d --conns %d`, as the put scenario. Disk and RSS are taken right after it: the same puts over the same key space on every system.\n", strings.Join(sc.args, " "), sc.clients, sc.conns)
	p("- Range: %d `benchmark range <key> --consistency l` processes at once, each reading its own key (the middles of %d equal parts of the put's key space), %d requests, %d clients and 1 connection each; the throughput is all their requests over the wall time from the first start to the last exit, a latency the mean of the processes' percentiles.\n\n",
		scaleOutReaders, scaleOutReaders, max(1, sc.rangeTotal/scaleOutReaders), (sc.clients+scaleOutReaders-1)/scaleOutReaders)
	rows := scaleOutRows(r, sc.name)
	if len(rows) == 0 {
		p("No scale-out system ran (see Skipped and failed).\n\n")
		return
	}
	p("| system | members | put req/s | put p99 ms | range req/s | range p99 ms |\n|---|---:|---:|---:|---:|---:|\n")
	for _, s := range rows {
		_, n, _ := scaleOutSystem(s)
		p("| %s | %d | %s | %s | %s | %s |\n", s, n,
			fmtRate(median(r.scaleOutFigure(sc.name, s, false, 0))), fmtMs(median(r.scaleOutFigure(sc.name, s, false, 99))),
			fmtRate(median(r.scaleOutFigure(sc.name, s, true, 0))), fmtMs(median(r.scaleOutFigure(sc.name, s, true, 99))))
	}
	var ratios []string
	for _, sharded := range []bool{true, false} {
		base := scaleOutName(sharded, 3)
		if !has(r, sc.name, base) {
			continue
		}
		ratio := func(n int, rng bool) float64 {
			s := scaleOutName(sharded, n)
			if !has(r, sc.name, s) {
				return nan
			}
			return medianRatio(r.scaleOutFigure(sc.name, s, rng, 0), r.scaleOutFigure(sc.name, base, rng, 0))
		}
		mode := map[bool]string{true: "sharded", false: "single-group"}[sharded]
		t := scaleOutTargets[sharded]
		cell := "n/a"
		if v := ratio(6, false); !math.IsNaN(v) {
			cell = "**FAIL**"
			if t.met(v) {
				cell = "**pass**"
			}
		}
		bound := fmt.Sprintf("≥ %.1f×", t.min)
		if t.max > 0 {
			bound = fmt.Sprintf("≤ %.1f×", t.max)
		}
		ratios = append(ratios, fmt.Sprintf("| %s | %s | %s | %s | %s | %s: %s |\n", mode, fmtRatio(ratio(6, false)), fmtRatio(ratio(9, false)),
			fmtRatio(ratio(6, true)), fmtRatio(ratio(9, true)), bound, cell))
	}
	if len(ratios) > 0 {
		p("\n| mode | put 6/3 | put 9/3 | range 6/3 | range 9/3 | target (put 6/3) |\n|---|---:|---:|---:|---:|---|\n%s", strings.Join(ratios, ""))
	}
	p("\nPer member after the put step, MiB, medians over rounds: bytes on disk (du of its data directory; preallocated log space included), the files' apparent size (du --apparent-size), and peak RSS (VmHWM); then the share of CPU periods in which the cap held the member back (cpu.stat nr_throttled/nr_periods, over the whole run).\n\n")
	p("| system | disk per member | disk total | apparent per member | apparent total | peak RSS per member | throttled periods |\n|---|---|---:|---|---:|---|---|\n")
	for _, s := range rows {
		disk := medianMember(r, sc.name, s, func(x *scaleOutRun) []int64 { return x.disk })
		apparent := medianMember(r, sc.name, s, func(x *scaleOutRun) []int64 { return x.apparent })
		rss := medianMember(r, sc.name, s, func(x *scaleOutRun) []int64 { return x.rss })
		if len(disk) == 0 {
			continue // every round failed
		}
		var throttle []string
		for _, v := range medianThrottle(r, sc.name, s) {
			throttle = append(throttle, fmtPct(v))
		}
		p("| %s | %s | %s | %s | %s | %s | %s |\n", s, joinNums(disk, 1), fmtNum(sum(disk), 1),
			joinNums(apparent, 1), fmtNum(sum(apparent), 1), joinNums(rss, 0), strings.Join(throttle, ", "))
	}
	p("\n")
}

// medianThrottle returns, for each member, the median over sys's rounds of
// the fraction of CPU periods it was throttled.
func medianThrottle(r *results, sc, sys string) []float64 {
	var per [][]float64
	for _, x := range r.runs[sc][sys] {
		if x.err != "" || x.scale == nil {
			continue
		}
		for i, v := range x.scale.throttle {
			if i == len(per) {
				per = append(per, nil)
			}
			per[i] = append(per[i], v)
		}
	}
	out := make([]float64, len(per))
	for i, vs := range per {
		out[i] = median(vs)
	}
	return out
}

func sum(vs []float64) float64 {
	t := 0.0
	for _, v := range vs {
		t += v
	}
	return t
}

func joinNums(vs []float64, decimals int) string {
	if len(vs) == 0 {
		return "n/a"
	}
	var out []string
	for _, v := range vs {
		out = append(out, fmtNum(v, decimals))
	}
	return strings.Join(out, ", ")
}
