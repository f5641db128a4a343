package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/sync/errgroup"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// leasesConfig is the command line of `bench leases`.
type leasesConfig struct {
	sizes           []int // lease counts at which grant and keepalive are measured
	conns, conc     int   // gRPC connections; requests in flight for grants and puts
	streams, window int   // keepalive streams and requests in flight on each
	keepAliveFor    time.Duration
	storm           int           // leases expiring together
	stormTTL        time.Duration // their TTL
	putRate         int           // puts per second beside the storm
	rounds          int
	out, root       string
	systems         []string
}

// leasesResult is one system's figures in one round.
type leasesResult struct {
	grantRate     []float64 // per size: grants/s to reach it from the size before
	keepAliveRate []float64 // per size: keepalive responses/s with that many leases
	// The storm: seconds from the last lease's expiry (and from the first's)
	// until every attached key was gone; put latency quiet and meanwhile.
	afterLast, afterFirst float64
	quietP50, quietP99    float64
	stormP50, stormP99    float64
	remaining             plotter.XYs // keys left over seconds since the first expiry
	err                   string
}

// leaseBench measures the lease service against each system in its own
// process: grant and keepalive throughput as the number of leases grows,
// and an expiry storm — many leases running out together, each with a key
// — timed until the last key is gone, with the latency of a steady put
// load before and during it.
func leaseBench(args []string) error {
	fs := flag.NewFlagSet("leases", flag.ContinueOnError)
	cfg := leasesConfig{}
	sizes := fs.String("leases", "100000,1000000", "lease counts at which grant and keepalive throughput are measured")
	fs.IntVar(&cfg.conns, "conns", 8, "gRPC connections")
	fs.IntVar(&cfg.conc, "concurrency", 256, "grants or puts in flight")
	fs.IntVar(&cfg.streams, "streams", 32, "keepalive streams")
	fs.IntVar(&cfg.window, "window", 64, "keepalive requests in flight per stream")
	fs.DurationVar(&cfg.keepAliveFor, "keepalive-for", 10*time.Second, "length of each keepalive measurement")
	fs.IntVar(&cfg.storm, "storm", 100000, "leases (each with one key) expiring together")
	fs.DurationVar(&cfg.stormTTL, "storm-ttl", 30*time.Second, "their TTL (long enough to grant and attach them all)")
	fs.IntVar(&cfg.putRate, "put-rate", 500, "puts per second beside the storm")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds; each runs every system once, in turn")
	fs.StringVar(&cfg.out, "out", "results", "directory for leases.md and leases-storm.png")
	fs.StringVar(&cfg.root, "root", "..", "the Cairn repository (holding cmd/cairn)")
	systemsFlag := fs.String("systems", "etcd,cairn", "systems to measure")
	smoke := fs.Bool("smoke", false, "tiny sizes, one round: checks that the harness works")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *smoke {
		*sizes = "1000,3000"
		cfg.keepAliveFor, cfg.storm, cfg.stormTTL, cfg.putRate, cfg.rounds = time.Second, 1000, 5*time.Second, 100, 1
	}
	for _, s := range splitList(*sizes) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || (len(cfg.sizes) > 0 && n <= cfg.sizes[len(cfg.sizes)-1]) {
			return fmt.Errorf("bench: leases: -leases wants increasing positive counts, got %q", *sizes)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	cfg.systems = splitList(*systemsFlag)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, closeRun, err := startSubRun(ctx, "leases", cfg.root, cfg.systems)
	if err != nil {
		return err
	}
	defer closeRun()
	start, progress, work, env, syss := run.start, run.progress, run.work, run.env, run.systems
	progress("grant and keepalive at %v leases; a storm of %d leases with TTL %v beside %d puts/s; %d rounds",
		cfg.sizes, cfg.storm, cfg.stormTTL, cfg.putRate, cfg.rounds)

	results := map[string][]leasesResult{}
	for round := 1; round <= cfg.rounds; round++ {
		for _, s := range syss {
			t0 := time.Now()
			r := measureLeases(ctx, env, s, filepath.Join(work, fmt.Sprintf("r%d-%s", round, s.name)), cfg, progress)
			results[s.name] = append(results[s.name], r)
			if r.err != "" {
				progress("round %d %-6s FAILED: %s", round, s.name, r.err)
				continue
			}
			progress("round %d %-6s storm: all revoked %.1fs after the last expiry; put p99 %.1f ms quiet, %.1f ms in the storm (%s)",
				round, s.name, r.afterLast, r.quietP99*1e3, r.stormP99*1e3, time.Since(t0).Round(time.Second))
		}
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	chart, err := stormChart(cfg.out, syss, results)
	if err != nil {
		return err
	}
	report := leasesReport(cfg, syss, results, chart, describeMachine(work), time.Since(start))
	failed := false
	for _, rs := range results {
		for _, r := range rs {
			failed = failed || r.err != ""
		}
	}
	return saveReport(cfg.out, "leases.md", report, progress, failed, "leases")
}

// leaseClients dials conns connections to endpoint.
func leaseClients(endpoint string, conns int) ([]*grpc.ClientConn, func(), error) {
	var cs []*grpc.ClientConn
	closeAll := func() {
		for _, c := range cs {
			c.Close()
		}
	}
	for i := 0; i < conns; i++ {
		c, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cs = append(cs, c)
	}
	return cs, closeAll, nil
}

// measureLeases runs the throughput phases on one fresh instance of sys and
// the storm on another.
func measureLeases(ctx context.Context, env *environment, sys system, dir string, cfg leasesConfig, progress func(string, ...any)) leasesResult {
	var res leasesResult
	fail := func(err error) leasesResult { return leasesResult{err: oneLine(err.Error())} }

	in, err := startSystem(ctx, env, sys, filepath.Join(dir, "throughput"))
	if err != nil {
		return fail(err)
	}
	conns, closeConns, err := leaseClients(in.endpoints[0], cfg.conns)
	if err != nil {
		in.stop()
		return fail(err)
	}
	var ids []int64
	for _, size := range cfg.sizes {
		t0 := time.Now()
		more, err := grantLeases(ctx, conns, size-len(ids), 3600, cfg.conc)
		if err != nil {
			closeConns()
			in.stop()
			return fail(fmt.Errorf("grant to %d leases: %w", size, err))
		}
		ids = append(ids, more...)
		res.grantRate = append(res.grantRate, float64(len(more))/time.Since(t0).Seconds())
		ka, err := keepAliveLoad(ctx, conns, ids, cfg.streams, cfg.window, cfg.keepAliveFor)
		if err != nil {
			closeConns()
			in.stop()
			return fail(fmt.Errorf("keepalive at %d leases: %w", size, err))
		}
		res.keepAliveRate = append(res.keepAliveRate, ka)
		progress("  %s: %d leases: %s grants/s, %s keepalives/s", sys.name, size, fmtRate(res.grantRate[len(res.grantRate)-1]), fmtRate(ka))
	}
	closeConns()
	in.stop()

	if err := expiryStorm(ctx, env, sys, filepath.Join(dir, "storm"), cfg, &res, progress); err != nil {
		return fail(fmt.Errorf("storm: %w", err))
	}
	return res
}

// grantLeases grants n leases of ttl seconds, conc at a time, and returns
// their ids.
func grantLeases(ctx context.Context, conns []*grpc.ClientConn, n int, ttl int64, conc int) ([]int64, error) {
	ids := make([]int64, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	for i := 0; i < n; i++ {
		g.Go(func() error {
			r, err := pb.NewLeaseClient(conns[i%len(conns)]).LeaseGrant(gctx, &pb.LeaseGrantRequest{TTL: ttl})
			if err != nil {
				return err
			}
			ids[i] = r.ID
			return nil
		})
	}
	return ids, g.Wait()
}

// keepAliveLoad keeps streams LeaseKeepAlive streams busy for d, each with
// up to window requests in flight over its share of ids, and returns the
// responses per second. Every response must carry a positive TTL.
func keepAliveLoad(ctx context.Context, conns []*grpc.ClientConn, ids []int64, streams, window int, d time.Duration) (float64, error) {
	sctx, cancelStreams := context.WithCancel(ctx)
	defer cancelStreams()
	timed, cancelTimed := context.WithTimeout(ctx, d)
	defer cancelTimed()
	var total atomic.Int64
	errc := make(chan error, streams)
	var wg sync.WaitGroup
	t0 := time.Now()
	for k := 0; k < streams; k++ {
		st, err := pb.NewLeaseClient(conns[k%len(conns)]).LeaseKeepAlive(sctx)
		if err != nil {
			return 0, err
		}
		sem := make(chan struct{}, window)
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			for i := k; ; i += streams {
				select {
				case sem <- struct{}{}:
				case <-timed.Done():
					_ = st.CloseSend()
					return
				}
				if err := st.Send(&pb.LeaseKeepAliveRequest{ID: ids[i%len(ids)]}); err != nil {
					errc <- err
					return
				}
			}
		}()
		go func() { // receiver
			defer wg.Done()
			for {
				r, err := st.Recv()
				if err != nil {
					if err != io.EOF && timed.Err() == nil {
						errc <- err
					}
					return
				}
				if r.TTL <= 0 {
					errc <- fmt.Errorf("keepalive of lease %x answered TTL %d", r.ID, r.TTL)
					return
				}
				total.Add(1)
				<-sem
			}
		}()
	}
	select {
	case <-timed.Done():
	case err := <-errc:
		return 0, err
	}
	n, elapsed := total.Load(), time.Since(t0)
	// The streams end when the server has answered what was sent; those
	// that do not within a few seconds are cut.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cancelStreams()
		<-done
	}
	return float64(n) / elapsed.Seconds(), nil
}

// expiryStorm grants cfg.storm leases of cfg.stormTTL, puts one key under
// each, renews them all in one burst so that they run out together, and
// times their revocation while a steady put load runs.
func expiryStorm(ctx context.Context, env *environment, sys system, dir string, cfg leasesConfig, res *leasesResult, progress func(string, ...any)) error {
	in, err := startSystem(ctx, env, sys, dir)
	if err != nil {
		return err
	}
	defer in.stop()
	conns, closeConns, err := leaseClients(in.endpoints[0], cfg.conns)
	if err != nil {
		return err
	}
	defer closeConns()
	ttl := int64(cfg.stormTTL / time.Second)
	ids, err := grantLeases(ctx, conns, cfg.storm, ttl, cfg.conc)
	if err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.conc)
	for i, id := range ids {
		g.Go(func() error {
			_, err := pb.NewKVClient(conns[i%len(conns)]).Put(gctx, &pb.PutRequest{Key: []byte(fmt.Sprintf("storm/%07d", i)), Value: []byte("v"), Lease: id})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("attach keys: %w", err)
	}
	// One keepalive each, as fast as the server takes them: afterwards every
	// lease has its full TTL from within the burst.
	first := time.Now()
	if err := renewAll(ctx, conns, ids, cfg.streams, cfg.window); err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	last := time.Now()
	firstDue, lastDue := first.Add(cfg.stormTTL), last.Add(cfg.stormTTL)
	progress("  %s: %d leases with a key each, renewed in %v; due from %v on", sys.name, cfg.storm, last.Sub(first).Round(time.Millisecond), time.Until(firstDue).Round(time.Second))

	load := startPutLoad(ctx, conns, cfg.putRate, cfg.conc)
	kv := pb.NewKVClient(conns[0])
	deadline := lastDue.Add(10 * time.Minute)
	var gone time.Time
	for gone.IsZero() {
		if time.Now().After(deadline) {
			load.stop()
			return errors.New("keys still there 10 minutes after their leases' expiry")
		}
		select {
		case <-ctx.Done():
			load.stop()
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // the sampling period of the remaining-keys curve
		}
		r, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("storm/"), RangeEnd: []byte("storm0"), CountOnly: true})
		if err != nil {
			load.stop()
			return fmt.Errorf("count: %w", err)
		}
		now := time.Now()
		if now.After(firstDue.Add(-time.Second)) {
			res.remaining = append(res.remaining, plotter.XY{X: now.Sub(firstDue).Seconds(), Y: float64(r.Count)})
		}
		if r.Count == 0 {
			gone = now
		}
	}
	puts, err := load.stop()
	if err != nil {
		return fmt.Errorf("put load: %w", err)
	}
	res.afterLast, res.afterFirst = gone.Sub(lastDue).Seconds(), gone.Sub(firstDue).Seconds()
	var quiet, storm []float64
	for _, p := range puts {
		switch {
		case p.at.After(last) && p.at.Before(firstDue):
			quiet = append(quiet, p.latency)
		case !p.at.Before(firstDue) && p.at.Before(gone):
			storm = append(storm, p.latency)
		}
	}
	res.quietP50, res.quietP99 = percentile(quiet, 50), percentile(quiet, 99)
	res.stormP50, res.stormP99 = percentile(storm, 50), percentile(storm, 99)
	return nil
}

// renewAll sends one keepalive for every id over streams streams and waits
// for every answer.
func renewAll(ctx context.Context, conns []*grpc.ClientConn, ids []int64, streams, window int) error {
	g, gctx := errgroup.WithContext(ctx)
	for k := 0; k < streams; k++ {
		g.Go(func() error {
			st, err := pb.NewLeaseClient(conns[k%len(conns)]).LeaseKeepAlive(gctx)
			if err != nil {
				return err
			}
			var mine []int64
			for i := k; i < len(ids); i += streams {
				mine = append(mine, ids[i])
			}
			sem := make(chan struct{}, window)
			sendErr := make(chan error, 1)
			go func() {
				for _, id := range mine {
					select {
					case sem <- struct{}{}:
					case <-gctx.Done():
						return
					}
					if err := st.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
						sendErr <- err
						return
					}
				}
			}()
			for range mine {
				r, err := st.Recv()
				if err != nil {
					return err
				}
				if r.TTL <= 0 {
					return fmt.Errorf("lease %x expired before the storm began (grant and attach took longer than -storm-ttl)", r.ID)
				}
				<-sem
			}
			_ = st.CloseSend()
			select {
			case err := <-sendErr:
				return err
			default:
				return nil
			}
		})
	}
	return g.Wait()
}

// putLoad is a steady stream of puts at a fixed rate.
type putLoad struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	puts   []timedPut
	err    error
}

type timedPut struct {
	at      time.Time
	latency float64 // seconds
}

func startPutLoad(ctx context.Context, conns []*grpc.ClientConn, rate, conc int) *putLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &putLoad{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var wg sync.WaitGroup
		defer wg.Wait()
		sem := make(chan struct{}, conc)
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				t0 := time.Now()
				_, err := pb.NewKVClient(conns[i%len(conns)]).Put(ctx, &pb.PutRequest{Key: []byte(fmt.Sprintf("load/%d", i%10000)), Value: []byte("v")})
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					if ctx.Err() == nil && l.err == nil {
						l.err = err
					}
					return
				}
				l.puts = append(l.puts, timedPut{at: t0, latency: time.Since(t0).Seconds()})
			}()
		}
	}()
	return l
}

func (l *putLoad) stop() ([]timedPut, error) {
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.puts, l.err
}

// stormChart draws the remaining keys over time since the first lease's
// expiry, one line per system (its first successful round).
func stormChart(dir string, syss []system, results map[string][]leasesResult) (string, error) {
	p := plot.New()
	p.Title.Text = "Expiry storm: keys left after their leases ran out"
	p.X.Label.Text = "seconds since the first lease's TTL ran out"
	p.Y.Label.Text = "keys left"
	lines := 0
	for i, s := range syss {
		for _, r := range results[s.name] {
			if r.err != "" || len(r.remaining) == 0 {
				continue
			}
			l, err := plotter.NewLine(r.remaining)
			if err != nil {
				return "", err
			}
			l.Color = plotutil.Color(i)
			l.Width = vg.Points(1.5)
			p.Add(l)
			p.Legend.Add(s.name, l)
			lines++
			break
		}
	}
	if lines == 0 {
		return "", nil
	}
	p.Legend.Top = true
	name := "leases-storm.png"
	if err := p.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(dir, name)); err != nil {
		return "", err
	}
	return name, nil
}

// leasesReport renders the medians over rounds and Cairn's ratios to etcd.
func leasesReport(cfg leasesConfig, syss []system, results map[string][]leasesResult, chart string, m machine, elapsed time.Duration) string {
	var b strings.Builder
	b.WriteString("# Leases\n\n")
	fmt.Fprintf(&b, "`cd bench && go run . leases` — grant and keepalive throughput as the number of leases grows (to %s; grants %d in flight on %d connections, keepalives on %d streams with %d in flight each for %v), then a fresh server for the expiry storm: %d leases of TTL %v, one key each, renewed in one burst so they run out together, timed until the last key is gone, with %d puts/s running throughout. Median of %d round(s), systems alternating. Ran %s on %s (%s).\n\n",
		sizesText(cfg.sizes), cfg.conc, cfg.conns, cfg.streams, cfg.window, cfg.keepAliveFor, cfg.storm, cfg.stormTTL, cfg.putRate, cfg.rounds, elapsed.Round(time.Second), m.cpu, m.device)

	type med struct {
		grant, ka              []float64
		afterLast, afterFirst  float64
		qp50, qp99, sp50, sp99 float64
		ok                     bool
	}
	meds := map[string]med{}
	for _, s := range syss {
		var rs []leasesResult
		var errs []string
		for _, r := range results[s.name] {
			if r.err != "" {
				errs = append(errs, r.err)
				continue
			}
			rs = append(rs, r)
		}
		if len(rs) == 0 {
			fmt.Fprintf(&b, "%s failed: %s\n\n", s.name, strings.Join(errs, "; "))
			continue
		}
		pick := func(f func(leasesResult) float64) float64 {
			var xs []float64
			for _, r := range rs {
				xs = append(xs, f(r))
			}
			return median(xs)
		}
		x := med{ok: true}
		for i := range cfg.sizes {
			x.grant = append(x.grant, pick(func(r leasesResult) float64 { return r.grantRate[i] }))
			x.ka = append(x.ka, pick(func(r leasesResult) float64 { return r.keepAliveRate[i] }))
		}
		x.afterLast = pick(func(r leasesResult) float64 { return r.afterLast })
		x.afterFirst = pick(func(r leasesResult) float64 { return r.afterFirst })
		x.qp50, x.qp99 = pick(func(r leasesResult) float64 { return r.quietP50 }), pick(func(r leasesResult) float64 { return r.quietP99 })
		x.sp50, x.sp99 = pick(func(r leasesResult) float64 { return r.stormP50 }), pick(func(r leasesResult) float64 { return r.stormP99 })
		meds[s.name] = x
	}

	b.WriteString("## Grant and keepalive throughput\n\n| system |")
	for _, n := range cfg.sizes {
		fmt.Fprintf(&b, " grants/s to %s | keepalives/s at %s |", countName(n), countName(n))
	}
	b.WriteString("\n|---|")
	for range cfg.sizes {
		b.WriteString("---:|---:|")
	}
	b.WriteString("\n")
	for _, s := range syss {
		x, ok := meds[s.name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "| %s |", s.label)
		for i := range cfg.sizes {
			fmt.Fprintf(&b, " %s | %s |", fmtRate(x.grant[i]), fmtRate(x.ka[i]))
		}
		b.WriteString("\n")
	}
	e, c := meds["etcd"], meds["cairn"]
	if e.ok && c.ok {
		b.WriteString("| **cairn / etcd** |")
		for i := range cfg.sizes {
			fmt.Fprintf(&b, " **%.2f×** | **%.2f×** |", c.grant[i]/e.grant[i], c.ka[i]/e.ka[i])
		}
		b.WriteString("\n")
	}

	fmt.Fprintf(&b, "\n## Expiry storm: %s leases running out together\n\n", countName(cfg.storm))
	b.WriteString("| system | all keys gone, after the last expiry | after the first | put p50 / p99 before | put p50 / p99 during the storm |\n|---|---:|---:|---:|---:|\n")
	for _, s := range syss {
		x, ok := meds[s.name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "| %s | %.1f s | %.1f s | %.1f / %.1f ms | %.1f / %.1f ms |\n", s.label, x.afterLast, x.afterFirst, x.qp50*1e3, x.qp99*1e3, x.sp50*1e3, x.sp99*1e3)
	}
	if e.ok && c.ok {
		fmt.Fprintf(&b, "| **cairn / etcd** | **%.2f×** | **%.2f×** | | **%.2f×** (p99) |\n", c.afterLast/e.afterLast, c.afterFirst/e.afterFirst, c.sp99/e.sp99)
	}
	b.WriteString("\nHigher is better for throughput; lower for the storm's duration and latency. etcd revokes at most 1,000 expired leases a second (etcd#12105); Cairn batches expirations into few proposals without a fixed cap.\n")
	if chart != "" {
		fmt.Fprintf(&b, "\n![keys left during the storm](%s)\n", chart)
	}
	return b.String()
}

// sizesText spells lease counts as "100k, 1M".
func sizesText(sizes []int) string {
	var out []string
	for _, n := range sizes {
		out = append(out, countName(n))
	}
	return strings.Join(out, ", ")
}
