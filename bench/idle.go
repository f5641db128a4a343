package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// `bench idle` measures what an idle range costs (issue 22): for each
// range count N of -ranges it starts one sharded cairn member (built from
// -root) whose key space --initial-split-keys cuts into N ranges at the
// first start (N-1 keys r00001, r00002, …: the flag takes any number, the
// bootstrap proposal carries them all), and measures
//
//   - start-up: from exec to the first successful etcd Get (of a key in
//     the first range), and to /cairn/ranges listing N ranges none of
//     which lacks a leader;
//   - then, after -settle with no client traffic, over -window with none
//     either: the CPU the process used (utime+stime of /proc/<pid>/stat,
//     every thread's), its resident set (VmRSS of /proc/<pid>/status) and
//     Go heap in use (go_memstats_heap_inuse_bytes of /metrics: live
//     objects and not yet collected garbage in spans in use), and its
//     goroutines (go_goroutines). Memory and goroutines are the mean of
//     idleSamples readings spread over the window; their scrapes of
//     /metrics are the only requests the member serves in it.
//
// Per range is the difference to the smallest N of the run (the baseline,
// 1 by default) divided by the difference in ranges:
//
//	N=1: 2.0% of a core, 40 MB RSS    N=101: 12.0%, 120 MB
//	per range: (12.0-2.0)/100 = 0.1% of a core, (120-40)/100 = 0.8 MB
//
// set against the targets (idleCPUTarget, idleMemTarget). The
// report (idle.md) and chart (idle.png) go to -out. One run per N, N in
// ascending order, each on a fresh data directory; the member runs
// --log-level warn and the placement scheduler off (its default).

const (
	// idleCPUTarget is issue 22's ceiling on the CPU an idle range may
	// use: 0.05% of one core.
	idleCPUTarget = 0.0005
	// idleMemTarget is issue 22's ceiling on the memory an idle range may
	// take: 1 MB (10^6 bytes, the stricter reading).
	idleMemTarget = 1e6
	// idleMaxRanges bounds -ranges: the split keys travel in one argument,
	// and Linux caps one at 128 KiB (MAX_ARG_STRLEN).
	idleMaxRanges = 10_000
	// idleSamples is how many memory readings the window's mean takes.
	idleSamples = 4
)

// idleConfig is the command line of `bench idle`.
type idleConfig struct {
	ranges       []int         // ascending, distinct, each in [1, idleMaxRanges]
	window       time.Duration // the idle window measured
	settle       time.Duration // from all ranges led to the window's start
	startTimeout time.Duration // from exec to all ranges led
	out, root    string
}

// idleResult is one member's figures with ranges ranges.
type idleResult struct {
	ranges int
	// ready is from exec to the first successful Get; allLed to
	// /cairn/ranges listing every range with a leader.
	ready, allLed time.Duration
	cpu           float64 // share of one core over the window: 0.01 is 1%
	rss, heap     float64 // bytes, mean over the window's samples
	goroutines    float64 // mean over the window's samples
	// endRanges and endLeaderless are /cairn/ranges' summary after the
	// window.
	endRanges, endLeaderless int
	err                      string
}

// idleDelta is what one range adds: the difference of two results divided
// by their difference in ranges.
type idleDelta struct {
	cpu, rss, heap, goroutines float64
}

// perRange returns what each range of r beyond base's costs; ok is false
// when r has no more ranges than base or either failed.
func perRange(base, r idleResult) (d idleDelta, ok bool) {
	n := float64(r.ranges - base.ranges)
	if n <= 0 || base.err != "" || r.err != "" {
		return d, false
	}
	return idleDelta{
		cpu:        (r.cpu - base.cpu) / n,
		rss:        (r.rss - base.rss) / n,
		heap:       (r.heap - base.heap) / n,
		goroutines: (r.goroutines - base.goroutines) / n,
	}, true
}

// idleBench runs the subcommand.
func idleBench(args []string) error {
	cfg, err := parseIdleFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, closeRun, err := startSubRun(ctx, "idle", cfg.root, nil)
	if err != nil {
		return err
	}
	defer closeRun()
	rootDir, err := findRoot(cfg.root)
	if err != nil {
		return err
	}
	hz := clockTicks()
	run.progress("ranges %v; each: start, wait for every range's leader, settle %v, then %v idle", cfg.ranges, cfg.settle, cfg.window)
	var results []idleResult
	for _, n := range cfg.ranges {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := measureIdle(ctx, run, filepath.Join(run.work, fmt.Sprintf("ranges-%d", n)), n, cfg, hz)
		results = append(results, r)
		if r.err != "" {
			run.progress("%5d ranges: FAILED: %s", n, r.err)
			continue
		}
		run.progress("%5d ranges: first Get after %s s, all led after %s s; idle: %.2f%% of a core, RSS %.1f MB, heap %.1f MB, %.0f goroutines",
			n, fmtSeconds(r.ready.Seconds()), fmtSeconds(r.allLed.Seconds()), 100*r.cpu, r.rss/1e6, r.heap/1e6, r.goroutines)
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	chart, err := idleChart(cfg.out, results)
	if err != nil {
		return fmt.Errorf("bench: idle: chart: %w", err)
	}
	m := describeMachine(run.work)
	report := idleReport(cfg, results, chart, m, cairnRevision(rootDir), run.start, time.Since(run.start))
	failed := slices.ContainsFunc(results, func(r idleResult) bool { return r.err != "" })
	return saveReport(cfg.out, "idle.md", report, run.progress, failed, "idle")
}

func parseIdleFlags(args []string) (idleConfig, error) {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	var cfg idleConfig
	ranges := fs.String("ranges", "1,100,1000", fmt.Sprintf("range counts, one member each; the smallest is the per-range baseline (at most %d)", idleMaxRanges))
	fs.DurationVar(&cfg.window, "window", 30*time.Second, "the idle window CPU and memory are measured over")
	fs.DurationVar(&cfg.settle, "settle", 10*time.Second, "from every range having a leader to the window's start")
	fs.DurationVar(&cfg.startTimeout, "start-timeout", 5*time.Minute, "from exec until every range has a leader; a member slower than this fails")
	fs.StringVar(&cfg.out, "out", "results", "directory for idle.md and idle.png")
	fs.StringVar(&cfg.root, "root", "..", "the Cairn repository (holding cmd/cairn)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("bench: idle: unexpected argument %q", fs.Arg(0))
	}
	var err error
	if cfg.ranges, err = parseRangeCounts(*ranges); err != nil {
		return cfg, err
	}
	if cfg.window < time.Second || cfg.settle < 0 || cfg.startTimeout <= 0 {
		return cfg, errors.New("bench: idle: want -window ≥ 1s, -settle ≥ 0 and -start-timeout > 0")
	}
	return cfg, nil
}

// parseRangeCounts reads -ranges: "1,100,1000" → [1 100 1000], sorted and
// without repeats.
func parseRangeCounts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > idleMaxRanges {
			return nil, fmt.Errorf("bench: idle: -ranges: %q is not a range count from 1 to %d", f, idleMaxRanges)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("bench: idle: -ranges is empty")
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// idleSplitKeys returns the --initial-split-keys value that cuts the key
// space into n ranges: n-1 ascending keys r00001, r00002, … (zero-padded
// so that byte order is numeric order), "" for one range.
func idleSplitKeys(n int) string {
	width := max(5, len(strconv.Itoa(n-1)))
	keys := make([]string, 0, n-1)
	for i := 1; i < n; i++ {
		keys = append(keys, fmt.Sprintf("r%0*d", width, i))
	}
	return strings.Join(keys, ",")
}

// measureIdle starts a member with n ranges under dir and measures it.
func measureIdle(ctx context.Context, run *subRun, dir string, n int, cfg idleConfig, hz float64) idleResult {
	res := idleResult{ranges: n}
	fail := func(err error) idleResult { res.err = oneLine(err.Error()); return res }
	in, started, err := startIdleMember(run.env, dir, n)
	if err != nil {
		return fail(err)
	}
	defer in.stop()
	pid := in.procs[0].Process.Pid
	ep := in.endpoints[0]
	run.progress("%5d ranges: started (pid %d), waiting for a Get to succeed", n, pid)

	deadline := started.Add(cfg.startTimeout)
	sctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := idleWaitGet(sctx, in, func() {
		run.progress("%5d ranges: %.0f s since exec, no Get has succeeded yet", n, time.Since(started).Seconds())
	}); err != nil {
		return fail(err)
	}
	res.ready = time.Since(started)
	run.progress("%5d ranges: first Get after %.1f s, waiting for every range's leader", n, res.ready.Seconds())
	lastSay := time.Now()
	for {
		s, err := rangeSummary(sctx, ep)
		if err == nil && s.Ranges == n && s.Leaderless == 0 {
			break
		}
		if sctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("%d ranges listed, %d without a leader", s.Ranges, s.Leaderless)
			}
			return fail(fmt.Errorf("not every range led %v after exec (%w); log %s:\n%s", cfg.startTimeout, err, in.logs[0], tail(in.logs[0], 5)))
		}
		if time.Since(lastSay) >= 10*time.Second {
			lastSay = time.Now()
			run.progress("%5d ranges: %.0f s since exec, %d ranges listed, %d without a leader", n, time.Since(started).Seconds(), s.Ranges, s.Leaderless)
		}
		if !sleepCtx(sctx, 250*time.Millisecond) && ctx.Err() != nil {
			return fail(ctx.Err())
		}
	}
	res.allLed = time.Since(started)
	run.progress("%5d ranges: every range led after %.1f s; settling %v, then %v idle", n, res.allLed.Seconds(), cfg.settle, cfg.window)
	if !sleepCtx(ctx, cfg.settle) {
		return fail(ctx.Err())
	}

	t0 := time.Now()
	ticks0, err := procTicks(pid)
	if err != nil {
		return fail(err)
	}
	var rss, heap, gor []float64
	step := cfg.window / idleSamples
	for i := 1; i <= idleSamples; i++ {
		if !sleepCtx(ctx, time.Until(t0.Add(time.Duration(i)*step))) {
			return fail(ctx.Err())
		}
		select {
		case <-in.exited[0]:
			return fail(fmt.Errorf("the member exited while idle; log %s:\n%s", in.logs[0], tail(in.logs[0], 5)))
		default:
		}
		if i == idleSamples {
			break // the last memory reading comes after the CPU's
		}
		if err := sampleIdle(ctx, pid, ep, &rss, &heap, &gor); err != nil {
			return fail(err)
		}
		ticks, err := procTicks(pid)
		if err == nil {
			run.progress("%5d ranges: %3.0f s idle, %.2f%% of a core so far", n, time.Since(t0).Seconds(), 100*cpuShare(ticks-ticks0, hz, time.Since(t0)))
		}
	}
	ticks1, err := procTicks(pid)
	if err != nil {
		return fail(err)
	}
	res.cpu = cpuShare(ticks1-ticks0, hz, time.Since(t0))
	if err := sampleIdle(ctx, pid, ep, &rss, &heap, &gor); err != nil {
		return fail(err)
	}
	res.rss, res.heap, res.goroutines = mean(rss), mean(heap), mean(gor)
	if s, err := rangeSummary(ctx, ep); err == nil {
		res.endRanges, res.endLeaderless = s.Ranges, s.Leaderless
	} else {
		return fail(err)
	}
	return res
}

// startIdleMember execs one sharded member with n ranges in dir; started is
// when.
func startIdleMember(env *environment, dir string, n int) (*instance, time.Time, error) {
	client, peer := freePort(), freePort()
	if client == "" || peer == "" {
		return nil, time.Time{}, errors.New("bench: idle: no free port")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, time.Time{}, err
	}
	argv := []string{"--name", "m1", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", "http://" + client, "--listen-peer-urls", "http://" + peer,
		"--initial-cluster", "m1=http://" + peer, "--log-level", "warn", "--single-group=false"}
	if n > 1 {
		argv = append(argv, "--initial-split-keys", idleSplitKeys(n))
	}
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, time.Time{}, err
	}
	cmd := exec.Command(env.cairn, argv...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, time.Time{}, fmt.Errorf("bench: idle: start cairn: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	in := &instance{sys: system{name: fmt.Sprintf("cairn-idle-%d", n), nodes: 1}, endpoints: []string{client},
		procs: []*exec.Cmd{cmd}, exited: []chan struct{}{done}, logs: []string{logPath}, dirs: []string{filepath.Join(dir, "data")}}
	return in, started, nil
}

// idleWaitGet waits until a Get succeeds against in's member, or ctx ends,
// calling waiting every 10 s meanwhile.
func idleWaitGet(ctx context.Context, in *instance, waiting func()) error {
	cli, err := in.newClient(nil)
	if err != nil {
		return err
	}
	defer cli.Close()
	lastSay := time.Now()
	for {
		if time.Since(lastSay) >= 10*time.Second {
			lastSay = time.Now()
			waiting()
		}
		select {
		case <-in.exited[0]:
			return fmt.Errorf("bench: idle: the member exited while starting; log %s:\n%s", in.logs[0], tail(in.logs[0], 20))
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(rctx, "bench-ready-probe")
		cancel()
		if err == nil {
			return nil
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return fmt.Errorf("bench: idle: no Get succeeded: %v", err)
		}
	}
}

// idleSummary is the part of /cairn/ranges?limit=1's summary read here
// (router.RangeSummary): the ranges in the map, and those without a known
// leader.
type idleSummary struct {
	Ranges     int `json:"ranges"`
	Leaderless int `json:"leaderless"`
}

// rangeSummary returns the range map's summary as the member at ep sees it.
func rangeSummary(ctx context.Context, ep string) (idleSummary, error) {
	body, err := httpGet(ctx, "http://"+ep+"/cairn/ranges?limit=1")
	if err != nil {
		return idleSummary{}, err
	}
	return parseRangeSummary(body)
}

// parseRangeSummary reads the summary of a /cairn/ranges page
// ({"summary":{…},"ranges":[…],"more":N}).
func parseRangeSummary(body []byte) (idleSummary, error) {
	var page struct {
		Summary *idleSummary `json:"summary"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return idleSummary{}, fmt.Errorf("bench: idle: /cairn/ranges: %w", err)
	}
	if page.Summary == nil {
		return idleSummary{}, fmt.Errorf("bench: idle: /cairn/ranges without a summary: %.80q", body)
	}
	return *page.Summary, nil
}

// sampleIdle appends one reading of the member's RSS, heap in use and
// goroutines.
func sampleIdle(ctx context.Context, pid int, ep string, rss, heap, gor *[]float64) error {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err
	}
	r, err := parseVmRSS(string(status))
	if err != nil {
		return err
	}
	body, err := httpGet(ctx, "http://"+ep+"/metrics")
	if err != nil {
		return err
	}
	h, err := metricValue(string(body), "go_memstats_heap_inuse_bytes")
	if err != nil {
		return err
	}
	g, err := metricValue(string(body), "go_goroutines")
	if err != nil {
		return err
	}
	*rss, *heap, *gor = append(*rss, r), append(*heap, h), append(*gor, g)
	return nil
}

// procTicks returns the CPU time process pid has used, user and system,
// in clock ticks.
func procTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

// parseProcStat returns utime+stime (fields 14 and 15, in clock ticks) of
// a /proc/<pid>/stat line. The command (field 2) is in parentheses and may
// itself hold spaces and parentheses, so the fields are counted from the
// last ')':
//
//	1234 (cairn) S 1 1234 … utime stime …   → fields after ')': state=3, …, utime=14, stime=15
func parseProcStat(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: idle: /proc stat without a command: %.80q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: idle: /proc stat with %d fields after the command: %.80q", len(f), stat)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bench: idle: /proc stat utime %q stime %q", f[11], f[12])
	}
	return utime + stime, nil
}

// parseVmRSS returns VmRSS of a /proc/<pid>/status text in bytes.
func parseVmRSS(status string) (float64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("bench: idle: %q: %w", line, err)
			}
			return float64(kb) * 1024, nil
		}
	}
	return 0, errors.New("bench: idle: no VmRSS in /proc status")
}

// metricValue returns the value of the unlabelled sample name in
// Prometheus's text format.
func metricValue(text, name string) (float64, error) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("bench: idle: no %s in /metrics", name)
}

// cpuShare turns ticks (of hz a second) used over elapsed into a share of
// one core.
func cpuShare(ticks uint64, hz float64, elapsed time.Duration) float64 {
	if elapsed <= 0 || hz <= 0 {
		return math.NaN()
	}
	return float64(ticks) / hz / elapsed.Seconds()
}

// clockTicks returns the kernel's clock ticks per second (USER_HZ, the
// unit of /proc/<pid>/stat's times) as getconf reports it, else 100, what
// Linux uses on every common architecture.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || v <= 0 {
		return 100
	}
	return v
}

func mean(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := 0.0
	for _, v := range vs {
		s += v
	}
	return s / float64(len(vs))
}

// sleepCtx waits d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// cairnRevision names the commit of the repository at root the cairn
// binary was built from, "+dirty" if it has uncommitted changes.
func cairnRevision(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		rev += "+dirty"
	}
	return rev
}

// idleVerdict sets a per-range figure against its target.
func idleVerdict(v, target float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	if v <= target {
		return "**pass**"
	}
	return "**FAIL**"
}

// idleReport renders the figures per member and per range.
func idleReport(cfg idleConfig, results []idleResult, chart string, m machine, rev string, started time.Time, elapsed time.Duration) string {
	var b strings.Builder
	b.WriteString("# Idle cost per range\n\n")
	fmt.Fprintf(&b, "`cd bench && go run . idle -ranges %s -window %v -settle %v` (issue 22) — one sharded cairn member (commit %s, `--log-level warn`, placement scheduler off) per range count N, its key space cut into N ranges by `--initial-split-keys` (N−1 keys) at its first start. "+
		"Start-up is from exec to the first successful Get, and to `/cairn/ranges` listing N ranges each with a leader. Then, after %v without clients, over %v without clients: CPU is utime+stime of `/proc/<pid>/stat` over the window (all threads, as a share of one core); RSS (`VmRSS`), Go heap in use (`go_memstats_heap_inuse_bytes` of `/metrics`: live objects and uncollected garbage) and goroutines are the mean of %d readings spread over the window. "+
		"Per range is the difference to the %d-range member divided by the difference in ranges. MB = 10^6 bytes. One run per N.\n\n",
		joinInts(cfg.ranges), cfg.window, cfg.settle, rev, cfg.settle, cfg.window, idleSamples, results[0].ranges)
	fmt.Fprintf(&b, "Ran %s UTC, %s in all, on %d CPU (%s), %s, %s; data on %s.\n\n",
		started.UTC().Format("2006-01-02 15:04"), elapsed.Round(time.Second), m.cpus, m.cpu, m.kernel, m.goVer, m.device)

	b.WriteString("| ranges | first Get after | every range led after | idle CPU (% of a core) | RSS | Go heap in use | goroutines | ranges / leaderless after the window |\n")
	b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range results {
		if r.err != "" {
			fmt.Fprintf(&b, "| %d | failed: %s | | | | | | |\n", r.ranges, strings.ReplaceAll(r.err, "|", "\\|"))
			continue
		}
		fmt.Fprintf(&b, "| %d | %s s | %s s | %.2f%% | %.1f MB | %.1f MB | %.0f | %d / %d |\n", r.ranges, fmtSeconds(r.ready.Seconds()), fmtSeconds(r.allLed.Seconds()),
			100*r.cpu, r.rss/1e6, r.heap/1e6, r.goroutines, r.endRanges, r.endLeaderless)
	}

	base := results[0]
	var rows []string
	for _, r := range results[1:] {
		d, ok := perRange(base, r)
		if !ok {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %d | %.3f%% | %s | %.3f MB | %s | %.3f MB | %.1f |", r.ranges,
			100*d.cpu, idleVerdict(d.cpu, idleCPUTarget), d.rss/1e6, idleVerdict(d.rss, idleMemTarget), d.heap/1e6, d.goroutines))
	}
	if len(rows) > 0 {
		fmt.Fprintf(&b, "\nPer range (beyond the %d-range member), against issue 22's targets of at most %.2f%% of a core and %.0f MB per idle range:\n\n", base.ranges, 100*idleCPUTarget, idleMemTarget/1e6)
		b.WriteString("| ranges | CPU per range (% of a core) | ≤ 0.05% | RSS per range | ≤ 1 MB | Go heap per range | goroutines per range |\n")
		b.WriteString("| ---: | ---: | :---: | ---: | :---: | ---: | ---: |\n")
		b.WriteString(strings.Join(rows, "\n") + "\n")
	}
	if chart != "" {
		fmt.Fprintf(&b, "\n![idle member: memory and CPU against ranges](%s)\n", chart)
	}
	return b.String()
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// idleChart draws idle.png: RSS and heap (MB) and idle CPU (% of a core)
// against ranges (log scale), each beside the target's budget (the
// baseline plus the target per range beyond it); "" if no member ran.
func idleChart(dir string, results []idleResult) (string, error) {
	var ok []idleResult
	for _, r := range results {
		if r.err == "" {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		return "", nil
	}
	base := ok[0]
	var ticks []plot.Tick
	for _, r := range ok {
		ticks = append(ticks, plot.Tick{Value: float64(r.ranges), Label: strconv.Itoa(r.ranges)})
	}
	newPlot := func(title, ylabel string) *plot.Plot {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "ranges (log scale)"
		p.Y.Label.Text = ylabel
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.Legend.Top = true
		p.Legend.Left = true
		return p
	}
	type series struct {
		label  string
		value  func(idleResult) float64
		target float64 // per range beyond the baseline, 0: none
		dashed bool
	}
	addLines := func(p *plot.Plot, ss []series) error {
		for i, s := range ss {
			var xys plotter.XYs
			for _, r := range ok {
				v := s.value(r)
				if s.target > 0 {
					v = s.value(base) + s.target*float64(r.ranges-base.ranges)
				}
				xys = append(xys, plotter.XY{X: float64(r.ranges), Y: v})
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return err
			}
			l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
			pts.Shape = plotutil.Shape(i)
			if s.dashed {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			p.Add(l, pts)
			p.Legend.Add(s.label, l, pts)
		}
		p.Y.Min = 0
		p.Y.Max *= 1.25 // room for the legend
		return nil
	}
	mem := newPlot("Idle member: memory", "MB")
	rssMB := func(r idleResult) float64 { return r.rss / 1e6 }
	if err := addLines(mem, []series{
		{label: "RSS", value: rssMB},
		{label: "Go heap in use", value: func(r idleResult) float64 { return r.heap / 1e6 }},
		{label: "RSS budget: 1 MB per range", value: rssMB, target: idleMemTarget / 1e6, dashed: true},
	}); err != nil {
		return "", err
	}
	cpu := newPlot("Idle member: CPU", "% of a core")
	cpuPct := func(r idleResult) float64 { return 100 * r.cpu }
	if err := addLines(cpu, []series{
		{label: "CPU", value: cpuPct},
		{label: "budget: 0.05% per range", value: cpuPct, target: 100 * idleCPUTarget, dashed: true},
	}); err != nil {
		return "", err
	}
	img := vgimg.New(24*vg.Centimeter, 9*vg.Centimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadY: vg.Millimeter * 3,
		PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3}
	plots := [][]*plot.Plot{{mem, cpu}}
	canvases := plot.Align(plots, tiles, dc)
	mem.Draw(canvases[0][0])
	cpu.Draw(canvases[0][1])
	name := "idle.png"
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return "", err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return "", err
	}
	return name, f.Close()
}
