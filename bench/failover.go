package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// The failover scenario (issue 27): a 3-member cluster under a steady load
// of puts and linearizable gets through all its endpoints loses the member
// that leads (etcd's leader; Cairn's range 1 leader, the one Status names)
// to kill -9, and the load goes on through the survivors. Per system it
// reports the time from the kill until reads and writes flow again, the
// client errors, and the throughput over time across the kill.

// failoverSystems are the systems `bench failover` runs by default.
const failoverSystems = "etcd-3,cairn-3,cairn-sharded-3"

const (
	// failoverBucket is the resolution of the recovery times.
	failoverBucket = 100 * time.Millisecond
	// failoverChartBucket is the resolution of the chart.
	failoverChartBucket = 250 * time.Millisecond
	// failoverSteady is how long throughput must hold, on average, at
	// least failoverShare of its rate before the kill for reads or writes
	// to count as flowing again (flowingAgain).
	failoverSteady = time.Second
	failoverShare  = 0.5
	// failoverWarmUp is left out of the rate before the kill.
	failoverWarmUp = time.Second
	// failoverKeys is how many keys the load spreads over.
	failoverKeys = 1000
)

// failoverConfig is the command line of `bench failover`.
type failoverConfig struct {
	clients   int           // goroutines, each a put then a get, over and over
	killAfter time.Duration // from the load's start to the kill
	runFor    time.Duration // the load's length
	timeout   time.Duration // each request's deadline (etcdctl's --command-timeout)
	out, root string
	systems   []string
}

// failoverOp is one request of the load: whether a put or a get, when it
// finished (since the kill; negative before), and its error.
type failoverOp struct {
	put bool
	at  time.Duration
	err error
}

// failoverResult is one system's figures.
type failoverResult struct {
	victim string // the member killed
	// rate is puts and gets per second before the kill.
	rate float64
	// readsBack and writesBack are the seconds from the kill until gets and
	// puts held failoverShare of their rate before it, on average over
	// failoverSteady (flowingAgain; NaN: not within the run).
	readsBack, writesBack float64
	// readErrs and writeErrs count the requests that failed after the kill
	// (errsBefore, before it); firstErr is the first such error.
	readErrs, writeErrs, errsBefore int
	firstErr                        string
	series                          plotter.XYs // requests answered per second over seconds since the kill
	err                             string
}

// failoverBench runs the failover scenario against each system in turn.
func failoverBench(args []string) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	cfg := failoverConfig{}
	fs.IntVar(&cfg.clients, "clients", 16, "goroutines of the load, each a put then a linearizable get, over and over")
	fs.DurationVar(&cfg.killAfter, "kill-after", 5*time.Second, "from the load's start to the leader's kill")
	fs.DurationVar(&cfg.runFor, "run-for", 20*time.Second, "the load's length")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "each request's deadline (etcdctl's --command-timeout)")
	fs.StringVar(&cfg.out, "out", "results", "directory for failover.md and failover.png")
	fs.StringVar(&cfg.root, "root", "..", "the Cairn repository (holding cmd/cairn)")
	systemsFlag := fs.String("systems", failoverSystems, "systems to measure (3-member ones)")
	smoke := fs.Bool("smoke", false, "a short load: checks that the harness works")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *smoke {
		cfg.clients, cfg.killAfter, cfg.runFor = 8, 3*time.Second, 9*time.Second
	}
	if cfg.clients < 1 || cfg.killAfter < 2*failoverWarmUp || cfg.runFor < cfg.killAfter+2*failoverSteady {
		return errors.New("bench: failover: want -clients ≥ 1, -kill-after ≥ 2s and -run-for ≥ -kill-after + 2s")
	}
	cfg.systems = splitList(*systemsFlag)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, closeRun, err := startSubRun(ctx, "failover", cfg.root, cfg.systems)
	if err != nil {
		return err
	}
	defer closeRun()
	for _, s := range run.systems {
		if s.nodes < 3 {
			return fmt.Errorf("bench: failover: %s has %d member(s); a failover needs 3", s.name, s.nodes)
		}
	}
	run.progress("%d clients, each a put then a linearizable get; the leader killed after %v; %v in all", cfg.clients, cfg.killAfter, cfg.runFor)

	results := map[string]failoverResult{}
	for _, s := range run.systems {
		r := measureFailover(ctx, run.env, s, filepath.Join(run.work, s.name), cfg)
		results[s.name] = r
		if r.err != "" {
			run.progress("%-16s FAILED: %s", s.name, r.err)
			continue
		}
		run.progress("%-16s killed %s: reads back after %s s, writes after %s s; %d read and %d write errors",
			s.name, r.victim, fmtSeconds(r.readsBack), fmtSeconds(r.writesBack), r.readErrs, r.writeErrs)
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	chart, err := failoverChart(cfg.out, run.systems, results)
	if err != nil {
		return err
	}
	report := failoverReport(cfg, run.systems, results, chart, describeMachine(run.work), time.Since(run.start))
	failed := false
	for _, r := range results {
		failed = failed || r.err != ""
	}
	return saveReport(cfg.out, "failover.md", report, run.progress, failed, "failover")
}

// measureFailover starts sys, runs the load, kills its leader at
// cfg.killAfter and sums up what the load saw.
func measureFailover(ctx context.Context, env *environment, sys system, dir string, cfg failoverConfig) failoverResult {
	fail := func(err error) failoverResult { return failoverResult{err: oneLine(err.Error())} }
	in, err := startSystem(ctx, env, sys, dir)
	if err != nil {
		return fail(err)
	}
	defer in.stop()
	cli, err := in.newClient(nil)
	if err != nil {
		return fail(err)
	}
	defer cli.Close()
	victim, err := failoverLeader(ctx, cli, in.endpoints)
	if err != nil {
		return fail(err)
	}

	start := time.Now()
	killAt := start.Add(cfg.killAfter)
	ops := make([][]failoverOp, cfg.clients)
	g, lctx := errgroup.WithContext(ctx)
	for c := range cfg.clients {
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(c), 27))
			end := start.Add(cfg.runFor)
			for time.Now().Before(end) && lctx.Err() == nil {
				key := fmt.Sprintf("failover/%04d", rng.IntN(failoverKeys))
				rctx, cancel := context.WithTimeout(lctx, cfg.timeout)
				_, err := cli.Put(rctx, key, "v")
				cancel()
				ops[c] = append(ops[c], failoverOp{put: true, at: time.Since(killAt), err: err})
				rctx, cancel = context.WithTimeout(lctx, cfg.timeout)
				_, err = cli.Get(rctx, key)
				cancel()
				ops[c] = append(ops[c], failoverOp{at: time.Since(killAt), err: err})
			}
			return nil
		})
	}
	select {
	case <-time.After(time.Until(killAt)):
	case <-ctx.Done():
	}
	_ = in.procs[victim].Process.Kill() // SIGKILL
	<-in.exited[victim]
	_ = g.Wait()
	if ctx.Err() != nil {
		return fail(ctx.Err())
	}
	var all []failoverOp
	for _, o := range ops {
		all = append(all, o...)
	}
	r := summarizeFailover(all, cfg.killAfter, cfg.runFor-cfg.killAfter)
	r.victim = fmt.Sprintf("m%d (%s)", victim+1, in.endpoints[victim])
	return r
}

// failoverLeader returns the index in endpoints of the member that leads,
// as Status names it (etcd's leader; Cairn's range 1 leader).
func failoverLeader(ctx context.Context, cli *clientv3.Client, endpoints []string) (int, error) {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(rctx, endpoints[0])
		var ml *clientv3.MemberListResponse
		if err == nil && st.Leader != 0 {
			ml, err = cli.MemberList(rctx)
		}
		cancel()
		if ml != nil && err == nil {
			for _, m := range ml.Members {
				if m.ID != st.Leader {
					continue
				}
				for _, u := range m.ClientURLs {
					for i, ep := range endpoints {
						if strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://") == ep {
							return i, nil
						}
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, errors.New("bench: failover: no leader found among the members")
}

// summarizeFailover sums up the load's requests (their times relative to
// the kill): the rate before the kill (after failoverWarmUp), when gets
// and puts flowed again, the errors, and the chart's series.
func summarizeFailover(ops []failoverOp, before, after time.Duration) failoverResult {
	var r failoverResult
	pre := before - failoverWarmUp
	nb := int(after / failoverBucket)
	puts, gets := make([]float64, nb), make([]float64, nb)
	var prePuts, preGets float64
	nc := int((before + after) / failoverChartBucket)
	chart := make([]float64, nc)
	for _, o := range ops {
		if o.err != nil {
			if o.at < 0 {
				r.errsBefore++
				continue
			}
			if r.firstErr == "" {
				r.firstErr = oneLine(o.err.Error())
			}
			if o.put {
				r.writeErrs++
			} else {
				r.readErrs++
			}
			continue
		}
		if c := int((o.at + before) / failoverChartBucket); c >= 0 && c < nc {
			chart[c]++
		}
		switch {
		case o.at < 0 && o.at >= -pre:
			if o.put {
				prePuts++
			} else {
				preGets++
			}
		case o.at >= 0 && int(o.at/failoverBucket) < nb:
			if o.put {
				puts[o.at/failoverBucket]++
			} else {
				gets[o.at/failoverBucket]++
			}
		}
	}
	r.rate = (prePuts + preGets) / pre.Seconds()
	perBucket := failoverBucket.Seconds() / pre.Seconds()
	r.writesBack = flowingAgain(puts, failoverShare*prePuts*perBucket)
	r.readsBack = flowingAgain(gets, failoverShare*preGets*perBucket)
	for i, n := range chart {
		x := (time.Duration(i)*failoverChartBucket - before + failoverChartBucket/2).Seconds()
		r.series = append(r.series, plotter.XY{X: x, Y: n / failoverChartBucket.Seconds()})
	}
	return r
}

// flowingAgain returns the seconds from the kill to the start of the first
// bucket (of failoverBucket, from the kill on) that counts at least min
// and begins a failoverSteady of buckets whose mean is at least min (a
// dip of the loaded machine later on does not undo it); NaN if none does.
func flowingAgain(buckets []float64, min float64) float64 {
	steady := int(failoverSteady / failoverBucket)
	for i := 0; i+steady <= len(buckets); i++ {
		if buckets[i] == 0 || buckets[i] < min {
			continue
		}
		sum := 0.0
		for _, n := range buckets[i : i+steady] {
			sum += n
		}
		if sum >= min*float64(steady) {
			return (time.Duration(i) * failoverBucket).Seconds()
		}
	}
	return math.NaN()
}

// failoverChart draws failover.png: requests answered per second over the
// seconds since the kill, one line per system, the kill marked.
func failoverChart(dir string, syss []system, results map[string]failoverResult) (string, error) {
	p := plot.New()
	p.Title.Text = "Failover: throughput across the leader's kill -9"
	p.X.Label.Text = "seconds since the leader was killed"
	p.Y.Label.Text = "puts + linearizable gets answered per second"
	lines, top := 0, 0.0
	for i, s := range syss {
		r := results[s.name]
		if r.err != "" || len(r.series) == 0 {
			continue
		}
		l, err := plotter.NewLine(r.series)
		if err != nil {
			return "", err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(s.name, l)
		for _, xy := range r.series {
			top = max(top, xy.Y)
		}
		lines++
	}
	if lines == 0 {
		return "", nil
	}
	kill, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: 0, Y: top}})
	if err != nil {
		return "", err
	}
	kill.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	kill.Color = plotutil.Color(7)
	p.Add(kill)
	p.Legend.Add("kill -9", kill)
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.YOffs = -vg.Points(4)
	name := "failover.png"
	if err := p.Save(8*vg.Inch, 4*vg.Inch, filepath.Join(dir, name)); err != nil {
		return "", err
	}
	return name, nil
}

// failoverReport renders each system's figures.
func failoverReport(cfg failoverConfig, syss []system, results map[string]failoverResult, chart string, m machine, elapsed time.Duration) string {
	var b strings.Builder
	b.WriteString("# Failover\n\n")
	fmt.Fprintf(&b, "`cd bench && go run . failover` — a 3-member cluster under %d clients, each a put then a linearizable get on one of %d keys, over and over, through a client of every endpoint (each request with a %v deadline, as etcdctl's --command-timeout); after %v the member that leads (etcd's leader; Cairn's range 1 leader, as Status names it) is killed with SIGKILL and the load goes on to %v. "+
		"Reads (writes) flow again from the first %v step after the kill in which gets (puts) are answered at %.0f%% or more of their rate before the kill, and at that share on average over the %v from it. Errors are the requests that failed after the kill. One run per system. Ran %s on %s (%s).\n\n",
		cfg.clients, failoverKeys, cfg.timeout, cfg.killAfter, cfg.runFor, failoverBucket, failoverShare*100, failoverSteady, elapsed.Round(time.Second), m.cpu, m.device)
	b.WriteString("| system | member killed | req/s before | reads flow again after | writes flow again after | read errors | write errors | first error |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, s := range syss {
		r := results[s.name]
		if r.err != "" {
			fmt.Fprintf(&b, "| %s | failed: %s | | | | | | |\n", s.name, r.err)
			continue
		}
		first := r.firstErr
		if first == "" {
			first = "—"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s s | %s s | %d | %d | %s |\n", s.name, r.victim, fmtRate(r.rate),
			fmtSeconds(r.readsBack), fmtSeconds(r.writesBack), r.readErrs, r.writeErrs, strings.ReplaceAll(first, "|", "\\|"))
		if r.errsBefore > 0 {
			fmt.Fprintf(&b, "\n(%s: %d requests failed before the kill.)\n\n", s.name, r.errsBefore)
		}
	}
	if chart != "" {
		fmt.Fprintf(&b, "\n![throughput across the kill](%s)\n", chart)
	}
	return b.String()
}

// fmtSeconds spells a time in seconds to the tenth, "—" for NaN (not
// within the run).
func fmtSeconds(s float64) string {
	if math.IsNaN(s) {
		return "—"
	}
	return fmt.Sprintf("%.1f", s)
}
