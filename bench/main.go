package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "serve-etcd":
			err = serveEtcd(os.Args[2:])
		case "serve-ceiling":
			err = serveCeiling(os.Args[2:])
		case "watch-scale":
			err = watchScale(os.Args[2:])
		case "leases":
			err = leaseBench(os.Args[2:])
		case "failover":
			err = failoverBench(os.Args[2:])
		case "idle":
			err = idleBench(os.Args[2:])
		case "profile-scale-out":
			err = profileScaleOut(os.Args[2:])
		default:
			err = harness(os.Args[1:])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if err := harness(nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// config is the parsed command line of the harness.
type config struct {
	rounds    int
	smoke     bool
	memory    []int // key counts of the memory scenarios, nil: the sizes'
	tmpfs     bool
	out       string
	root      string
	systems   []string
	scenarios []string
	keep      bool
	// cpuShare caps each member of the scale-out scenario at this share of
	// one CPU.
	cpuShare float64
	// rangeReplicas is --range-replicas of the scale-out sharded systems, 0
	// to leave the flag out (the server's default), -1 every member.
	rangeReplicas int
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each runs every scenario against every system in turn")
	fs.BoolVar(&c.smoke, "smoke", false, "tiny totals and one round: checks that the harness works (CI)")
	memory := fs.String("memory", "", "key counts of the memory scenarios, e.g. 1M,10M (default 1M; smoke 20k)")
	fs.BoolVar(&c.tmpfs, "tmpfs", false, "put the servers' data directories on /dev/shm instead of $TMPDIR")
	fs.StringVar(&c.out, "out", "results", "directory for report.md, the charts and the raw benchmark output")
	fs.StringVar(&c.root, "root", "", "the Cairn repository (default: found from the working directory)")
	sys := fs.String("systems", "etcd,cairn,ceiling,etcd-3,cairn-3,cairn-sharded,cairn-sharded-3", "systems to run, in this order")
	scs := fs.String("scenarios", "", "scenarios to run (default: all)")
	fs.BoolVar(&c.keep, "keep", false, "keep the servers' data directories and logs")
	fs.Float64Var(&c.cpuShare, "cpu-share", 0.15, "scale-out: the share of one CPU each member process is capped at (cgroup v1 cpu controller)")
	fs.IntVar(&c.rangeReplicas, "range-replicas", scaleOutRangeReplicas, "scale-out: --range-replicas of the sharded systems; -1 puts every range on every member, 0 leaves the flag out (the server's default, 3)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	if c.smoke {
		c.rounds = 1
	}
	if c.rounds < 1 {
		return c, errors.New("bench: -rounds must be at least 1")
	}
	if !(c.cpuShare > 0 && c.cpuShare <= 1) {
		return c, errors.New("bench: -cpu-share must be in (0, 1]")
	}
	if c.rangeReplicas < -1 {
		return c, errors.New("bench: -range-replicas must be -1 (every member) or more")
	}
	for _, f := range splitList(*memory) {
		n, err := parseCount(f)
		if err != nil {
			return c, err
		}
		c.memory = append(c.memory, n)
	}
	c.systems = splitList(*sys)
	c.scenarios = splitList(*scs)
	return c, nil
}

// parseCount reads 20000, 20k, 1M.
func parseCount(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1000, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "M"):
		mult, s = 1_000_000, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bench: -memory: %q is not a key count", s)
	}
	return n * mult, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func harness(args []string) error {
	cfg, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	progress := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
	}

	root, err := findRoot(cfg.root)
	if err != nil {
		return err
	}
	sz := defaultSizes
	if cfg.smoke {
		sz = smokeSizes
	}
	if cfg.memory != nil {
		sz.memoryKeys = cfg.memory
	}
	syss, scs, err := selectRun(cfg, sz)
	if err != nil {
		return err
	}

	base := ""
	if cfg.tmpfs {
		base = "/dev/shm"
	}
	work, err := os.MkdirTemp(base, "cairn-bench-")
	if err != nil {
		return err
	}
	if !cfg.keep {
		defer os.RemoveAll(work)
	}
	out, err := filepath.Abs(cfg.out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(out, "raw"), 0o755); err != nil {
		return err
	}

	// Build the client and Cairn with `go build`, pinned by their go.mod files.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	env := &environment{self: self, cairn: filepath.Join(work, "bin", "cairn"), rangeReplicas: cfg.rangeReplicas}
	benchBin := filepath.Join(work, "bin", "benchmark")
	progress("building etcd's benchmark tool (bench/etcdbenchmark) and cairn (cmd/cairn)")
	if err := goBuild(ctx, filepath.Join(root, "bench", "etcdbenchmark"), benchBin, "go.etcd.io/etcd/v3/tools/benchmark"); err != nil {
		return err
	}
	if err := goBuild(ctx, root, env.cairn, "./cmd/cairn"); err != nil {
		return err
	}

	res := newResults()
	res.command = "cd bench && go run ."
	if len(args) > 0 {
		res.command += " " + strings.Join(args, " ")
	}
	res.started = start
	res.rounds = cfg.rounds
	res.smoke = cfg.smoke
	res.machine = describeMachine(work)
	res.client = "etcd's `benchmark` tool, go.etcd.io/etcd/v3 " + moduleVersion(filepath.Join(root, "bench", "etcdbenchmark", "go.mod"), "go.etcd.io/etcd/v3") + " (newest tag of that module on the Go proxy), built by the harness from bench/etcdbenchmark"
	res.systems, res.scenarios = syss, scs
	res.rangeReplicas = cfg.rangeReplicas
	capSkip := "" // why the scale-out scenario cannot cap its members
	if slices.ContainsFunc(scs, func(sc scenario) bool { return sc.scaleOut }) {
		capSkip = cpuCapSkipReason(cgroupCPURoot, os.Geteuid(), os.Getpid())
		if capSkip == "" {
			for _, g := range removeStaleCPUCaps(cgroupCPURoot) {
				progress("removed the cgroup %s left by a harness that is gone", g)
			}
		}
		res.cpuCap = describeCPUCap(cgroupCPURoot, cfg.cpuShare)
		if capSkip != "" {
			res.cpuCap = "not set: " + capSkip
			progress("scale-out: skipped, %s", capSkip)
		}
	}
	progress("data directories under %s on %s", work, res.machine.device)

	// Find out which services each system offers.
	var needs []capability
	for _, sc := range scs {
		if sc.needs != capKV && !slices.Contains(needs, sc.needs) {
			needs = append(needs, sc.needs)
		}
	}
	unsupported := map[string]map[capability]bool{}
	for _, s := range syss {
		unsupported[s.name] = map[capability]bool{}
		if len(needs) == 0 {
			continue
		}
		in, err := startSystem(ctx, env, s, filepath.Join(work, "probe-"+s.name))
		if err != nil {
			return err
		}
		for _, c := range needs {
			ok := probe(ctx, in.endpoints[0], c)
			unsupported[s.name][c] = !ok
			progress("probe %s: %s %s", s.name, c, map[bool]string{true: "supported", false: "not supported: its scenarios are skipped"}[ok])
		}
		in.stop()
	}
	for _, sc := range scs {
		for _, s := range syss {
			if sc.scaleOut && capSkip != "" {
				res.skip(sc.name, s.name, capSkip)
			} else if unsupported[s.name][sc.needs] {
				res.skip(sc.name, s.name, fmt.Sprintf("%s does not offer the %s service (probed at start)", s.name, sc.needs))
			} else if sc.only != nil && !slices.Contains(sc.only, s.name) {
				res.skip(sc.name, s.name, fmt.Sprintf("this scenario runs on %s only", strings.Join(sc.only, " and ")))
			} else if s.scenarios != nil && !slices.Contains(s.scenarios, sc.name) {
				res.skip(sc.name, s.name, fmt.Sprintf("%s runs %s only (to keep the run short)", s.name, strings.Join(s.scenarios, ", ")))
			}
		}
	}
	skipped := func(sc scenario, s system, round int) bool {
		if (sc.scaleOut && capSkip != "") || unsupported[s.name][sc.needs] || (sc.only != nil && !slices.Contains(sc.only, s.name)) ||
			(s.scenarios != nil && !slices.Contains(s.scenarios, sc.name)) {
			return true
		}
		return sc.memoryKeys > 0 && round > 1 // memory: one round
	}

	// Rounds: every scenario against every system in turn.
	total, done := 0, 0
	for round := 1; round <= cfg.rounds; round++ {
		for _, sc := range scs {
			for _, s := range syss {
				if !skipped(sc, s, round) {
					total++
				}
			}
		}
	}
	for round := 1; round <= cfg.rounds; round++ {
		for _, sc := range scs {
			for _, s := range syss {
				if skipped(sc, s, round) {
					continue
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				done++
				dir := filepath.Join(work, fmt.Sprintf("r%d-%s-%s", round, sc.name, s.name))
				raw := filepath.Join(out, "raw", fmt.Sprintf("r%d-%s-%s.txt", round, sc.name, s.name))
				t0 := time.Now()
				var x run
				if sc.scaleOut {
					x = runScaleOut(ctx, env, s, sc, dir, benchBin, raw, cgroupCPURoot, cfg.cpuShare)
				} else if sc.memoryKeys > 0 {
					x = runMemory(ctx, env, s, sc, dir, func(done int) {
						progress("    %s: %s of %s keys loaded", s.name, fmtRate(float64(done)), fmtRate(float64(sc.memoryKeys)))
					})
				} else {
					x = runOne(ctx, env, s, sc, dir, benchBin, raw)
				}
				res.add(sc.name, s.name, x)
				if !cfg.keep {
					os.RemoveAll(dir)
				}
				if x.err != "" {
					progress("[%d/%d] round %d %-20s %-8s FAILED (%s): %s", done, total, round, sc.name, s.name, time.Since(t0).Round(100*time.Millisecond), x.err)
					continue
				}
				progress("[%d/%d] round %d %-20s %-8s %10s req/s  p50 %7s ms  p99 %7s ms  (%s)", done, total, round, sc.name, s.name,
					fmtRate(x.m.rps), fmtMs(x.m.p(50)), fmtMs(x.m.p(99)), time.Since(t0).Round(100*time.Millisecond))
				if x.scale != nil {
					progress("      %s range: %10s req/s  p99 %7s ms", s.name, fmtRate(x.scale.rng.rps), fmtMs(x.scale.rng.p(99)))
				}
			}
		}
	}
	res.elapsed = time.Since(start)

	charts, err := writeCharts(out, res)
	if err != nil {
		return fmt.Errorf("bench: charts: %w", err)
	}
	var buf bytes.Buffer
	if err := writeReport(&buf, res, charts); err != nil {
		return err
	}
	reportPath := filepath.Join(out, "report.md")
	if err := os.WriteFile(reportPath, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Println(buf.String())
	progress("report: %s (charts and raw output beside it)", reportPath)
	for _, sc := range scs {
		for _, s := range syss {
			for _, x := range res.runs[sc.name][s.name] {
				if x.err != "" {
					return errors.New("bench: some runs failed; see the report")
				}
			}
		}
	}
	return nil
}

// selectRun picks the systems and scenarios the flags name, in flag order.
func selectRun(cfg config, sz sizes) ([]system, []scenario, error) {
	var syss []system
	for _, name := range cfg.systems {
		i := slices.IndexFunc(systems(), func(s system) bool { return s.name == name })
		if i < 0 {
			return nil, nil, fmt.Errorf("bench: unknown system %q", name)
		}
		syss = append(syss, systems()[i])
	}
	all := scenarios(sz)
	if len(cfg.scenarios) == 0 {
		var scs []scenario
		for _, sc := range all {
			if !sc.optIn {
				scs = append(scs, sc)
			}
		}
		return syss, scs, nil
	}
	var scs []scenario
	for _, name := range cfg.scenarios {
		i := slices.IndexFunc(all, func(s scenario) bool { return s.name == name })
		if i < 0 {
			return nil, nil, fmt.Errorf("bench: unknown scenario %q", name)
		}
		scs = append(scs, all[i])
	}
	return syss, scs, nil
}

// runMemory starts a fresh sys, loads sc.memoryKeys keys into it and
// reports its peak RSS; the throughput is the load rate in keys/s.
func runMemory(ctx context.Context, env *environment, sys system, sc scenario, dir string, progress func(int)) run {
	fail := func(err error) run { return run{m: measurement{rps: nan}, err: oneLine(err.Error())} }
	in, err := startSystem(ctx, env, sys, dir)
	if err != nil {
		return fail(err)
	}
	defer in.stop()
	cli, err := in.newClient(func(c *clientv3.Config) { c.MaxCallSendMsgSize = 4 << 20 })
	if err != nil {
		return fail(err)
	}
	defer cli.Close()
	lctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	rate, err := loadKeys(lctx, cli, sc.memoryKeys, progress)
	if err != nil {
		return fail(fmt.Errorf("load: %w", err))
	}
	return run{m: measurement{rps: rate, pct: map[float64]float64{}}, rss: in.peakRSS()}
}

// runOne starts a fresh sys, preloads sc, runs the benchmark tool against it,
// and stops it. The tool's output goes to raw.
func runOne(ctx context.Context, env *environment, sys system, sc scenario, dir, benchBin, raw string) run {
	fail := func(err error) run { return run{m: measurement{rps: nan}, err: oneLine(err.Error())} }
	in, err := startSystem(ctx, env, sys, dir)
	if err != nil {
		return fail(err)
	}
	defer in.stop()
	if sc.preload != nil {
		cli, err := in.newClient(nil)
		if err != nil {
			return fail(err)
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err = sc.preload(pctx, cli)
		cancel()
		cli.Close()
		if err != nil {
			return fail(fmt.Errorf("preload: %w", err))
		}
	}
	argv := append(slices.Clone(sc.args),
		"--endpoints", strings.Join(in.endpoints, ","),
		"--clients", strconv.Itoa(sc.clients), "--conns", strconv.Itoa(sc.conns), "--precise")
	argv = append(argv, in.benchFlags()...)
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, benchBin, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runErr := cmd.Run()
	rss := in.peakRSS()
	_ = os.WriteFile(raw, []byte("$ benchmark "+strings.Join(argv, " ")+"\n"+stdout.String()+"\n--- stderr (last lines)\n"+lastLines(stderr.String(), 20)), 0o644)
	if runErr != nil {
		return fail(fmt.Errorf("benchmark %s: %v: %s", sc.args[0], runErr, lastLines(stderr.String(), 3)))
	}
	m, err := parseBenchmark(stdout.String(), sc.section)
	if err != nil {
		return fail(err)
	}
	if m.rps != m.rps { // every request failed
		return run{m: m, err: fmt.Sprintf("every request failed, e.g. %q", m.firstErr), rss: rss}
	}
	return run{m: m, rss: rss}
}

func goBuild(ctx context.Context, dir, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = os.Stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("bench: go build %s in %s: %v\n%s", pkg, dir, err, stderr.String())
	}
	return nil
}

// findRoot returns the Cairn repository: dir if given, else the nearest
// directory at or above the working directory that has cmd/cairn and
// bench/etcdbenchmark.
func findRoot(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isDir(filepath.Join(d, "cmd", "cairn")) && isDir(filepath.Join(d, "bench", "etcdbenchmark")) {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("bench: cannot find the Cairn repository above the working directory; use -root")
		}
		d = parent
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// moduleVersion returns the version go.mod requires of module, "?" if none.
func moduleVersion(gomod, module string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return "?"
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
