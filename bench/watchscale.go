package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// watchScaleConfig is the command line of `bench watch-scale`.
type watchScaleConfig struct {
	streams, watchers, conns int
	puts                     int     // puts whose events every stream receives
	rate                     int     // puts per second of the latency load
	latencyFor               float64 // seconds of latency load
	rounds                   int
	out, root                string
	systems                  []string
}

// watchScaleResult is one system's figures in one round.
type watchScaleResult struct {
	eventsPerSec   float64
	bytesPerStream float64 // heap growth per open, watcherless stream
	bytesPerWatch  float64 // heap growth per idle watcher
	p50, p99       float64 // seconds from put to event, under the rate load
	err            string
}

// watchScale measures the watch service at scale against each system in
// its own process: the heap an idle stream and an idle watcher cost, the
// events per second delivered to streams × watchers, and the latency from
// put to event under a steady put rate while those watchers stay open.
// Heap figures come from the server's /debug/vars after a forced GC
// (/debug/pprof/heap?gc=1), so they count live heap, not garbage or RSS.
func watchScale(args []string) error {
	fs := flag.NewFlagSet("watch-scale", flag.ContinueOnError)
	cfg := watchScaleConfig{}
	fs.IntVar(&cfg.streams, "streams", 1000, "watch streams")
	fs.IntVar(&cfg.watchers, "watchers", 100, "watchers per stream, one per key: every put reaches one watcher on every stream")
	fs.IntVar(&cfg.conns, "conns", 10, "gRPC connections the streams are spread over")
	fs.IntVar(&cfg.puts, "puts", 2000, "puts delivered to every stream in the throughput phase")
	fs.IntVar(&cfg.rate, "rate", 1000, "puts per second in the latency phase")
	fs.Float64Var(&cfg.latencyFor, "latency-seconds", 5, "length of the latency phase")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds; each runs every system once, in turn")
	fs.StringVar(&cfg.out, "out", "results", "directory for watch-scale.md")
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
		cfg.streams, cfg.watchers, cfg.conns, cfg.puts, cfg.rate, cfg.latencyFor, cfg.rounds = 20, 5, 2, 50, 200, 1, 1
	}
	cfg.systems = splitList(*systemsFlag)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, closeRun, err := startSubRun(ctx, "watch-scale", cfg.root, cfg.systems)
	if err != nil {
		return err
	}
	defer closeRun()
	start, progress, work, env, syss := run.start, run.progress, run.work, run.env, run.systems
	progress("%d streams × %d watchers on %d connections, %d puts, latency at %d puts/s for %.0fs; %d rounds",
		cfg.streams, cfg.watchers, cfg.conns, cfg.puts, cfg.rate, cfg.latencyFor, cfg.rounds)

	results := map[string][]watchScaleResult{}
	for round := 1; round <= cfg.rounds; round++ {
		for _, s := range syss {
			t0 := time.Now()
			r := measureWatchScale(ctx, env, s, filepath.Join(work, fmt.Sprintf("r%d-%s", round, s.name)), cfg, progress)
			results[s.name] = append(results[s.name], r)
			if r.err != "" {
				progress("round %d %-6s FAILED: %s", round, s.name, r.err)
				continue
			}
			progress("round %d %-6s %10.0f events/s  %7.0f B/stream  %5.0f B/watcher  p50 %6.2f ms  p99 %6.2f ms  (%s)",
				round, s.name, r.eventsPerSec, r.bytesPerStream, r.bytesPerWatch, r.p50*1e3, r.p99*1e3, time.Since(t0).Round(100*time.Millisecond))
		}
	}
	report := watchScaleReport(cfg, syss, results, describeMachine(work), time.Since(start))
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	failed := false
	for _, rs := range results {
		for _, r := range rs {
			failed = failed || r.err != ""
		}
	}
	return saveReport(cfg.out, "watch-scale.md", report, progress, failed, "watch-scale")
}

// measureWatchScale runs the three phases against a fresh instance of sys.
func measureWatchScale(ctx context.Context, env *environment, sys system, dir string, cfg watchScaleConfig, progress func(string, ...any)) (res watchScaleResult) {
	fail := func(err error) watchScaleResult { return watchScaleResult{err: oneLine(err.Error())} }
	in, err := startSystem(ctx, env, sys, dir)
	if err != nil {
		return fail(err)
	}
	defer in.stop()
	ep := in.endpoints[0]
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	heap0, err := liveHeap(ctx, ep)
	if err != nil {
		return fail(err)
	}
	var conns []*grpc.ClientConn
	for i := 0; i < cfg.conns; i++ {
		cc, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
		if err != nil {
			return fail(err)
		}
		defer cc.Close()
		conns = append(conns, cc)
	}

	// Phase 1: open the streams. A throwaway watcher, created and cancelled
	// on each, proves the server has set the stream up.
	streams := make([]*watchStream, cfg.streams)
	// The streams live on ctx: an errgroup's context ends with its Wait.
	var g errgroup.Group
	g.SetLimit(64)
	for i := range streams {
		g.Go(func() error {
			ws, err := openWatchStream(ctx, conns[i%len(conns)])
			if err != nil {
				return err
			}
			streams[i] = ws
			return ws.roundTrip()
		})
	}
	if err := g.Wait(); err != nil {
		return fail(fmt.Errorf("open streams: %w", err))
	}
	heap1, err := liveHeap(ctx, ep)
	if err != nil {
		return fail(err)
	}
	res.bytesPerStream = float64(int64(heap1)-int64(heap0)) / float64(cfg.streams)
	progress("  %s: %d streams open, heap %s → %s", sys.name, cfg.streams, mib(heap0), mib(heap1))

	// Phase 2: idle watchers, one per key ws/<j> on every stream.
	for _, ws := range streams {
		g.Go(func() error { return ws.createWatchers(cfg.watchers) })
	}
	if err := g.Wait(); err != nil {
		return fail(fmt.Errorf("create watchers: %w", err))
	}
	heap2, err := liveHeap(ctx, ep)
	if err != nil {
		return fail(err)
	}
	res.bytesPerWatch = float64(int64(heap2)-int64(heap1)) / float64(cfg.streams*cfg.watchers)
	progress("  %s: %d watchers idle, heap %s", sys.name, cfg.streams*cfg.watchers, mib(heap2))

	// Phase 3: throughput. Every put to ws/<j> is an event on every stream.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fail(err)
	}
	defer cli.Close()
	want := int64(cfg.puts)
	recvErr := make(chan error, len(streams))
	var done sync.WaitGroup
	t0 := time.Now()
	for _, ws := range streams {
		done.Add(1)
		go func() {
			defer done.Done()
			if err := ws.countEvents(want); err != nil {
				recvErr <- err
			}
		}()
	}
	pg, gctx := errgroup.WithContext(ctx)
	pg.SetLimit(16)
	for i := 0; i < cfg.puts; i++ {
		pg.Go(func() error {
			_, err := cli.Put(gctx, fmt.Sprintf("ws/%d", i%cfg.watchers), "v")
			return err
		})
	}
	if err := pg.Wait(); err != nil {
		return fail(fmt.Errorf("puts: %w", err))
	}
	waited := make(chan struct{})
	go func() { done.Wait(); close(waited) }()
	select {
	case <-waited:
	case err := <-recvErr:
		return fail(fmt.Errorf("stream: %w", err))
	case <-time.After(5 * time.Minute):
		return fail(errors.New("events not all delivered within 5 minutes"))
	}
	select {
	case err := <-recvErr:
		return fail(fmt.Errorf("stream: %w", err))
	default:
	}
	elapsed := time.Since(t0)
	res.eventsPerSec = float64(cfg.puts*cfg.streams) / elapsed.Seconds()

	// Phase 4: latency at a steady put rate, the idle watchers still open.
	lat, err := watchLatency(ctx, conns[0], cli, cfg.rate, cfg.latencyFor)
	if err != nil {
		return fail(fmt.Errorf("latency: %w", err))
	}
	res.p50, res.p99 = percentile(lat, 50), percentile(lat, 99)
	return res
}

// watchStream is one raw gRPC Watch stream.
type watchStream struct {
	st pb.Watch_WatchClient
}

func openWatchStream(ctx context.Context, cc *grpc.ClientConn) (*watchStream, error) {
	st, err := pb.NewWatchClient(cc).Watch(ctx)
	if err != nil {
		return nil, err
	}
	return &watchStream{st: st}, nil
}

// roundTrip creates and cancels a watcher, waiting for both answers.
func (w *watchStream) roundTrip() error {
	if err := w.st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("ws-probe"), WatchId: 1 << 40}}}); err != nil {
		return err
	}
	if err := w.st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 1 << 40}}}); err != nil {
		return err
	}
	for got := 0; got < 2; {
		r, err := w.st.Recv()
		if err != nil {
			return err
		}
		if r.Created || r.Canceled {
			got++
		}
	}
	return nil
}

// createWatchers creates n watchers, on keys ws/0 … ws/n-1, and waits for
// every created response.
func (w *watchStream) createWatchers(n int) error {
	for j := 0; j < n; j++ {
		req := &pb.WatchCreateRequest{Key: []byte(fmt.Sprintf("ws/%d", j)), WatchId: int64(j + 1)}
		if err := w.st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}); err != nil {
			return err
		}
	}
	for got := 0; got < n; {
		r, err := w.st.Recv()
		if err != nil {
			return err
		}
		if r.Canceled {
			return fmt.Errorf("watch refused: %s", r.CancelReason)
		}
		if r.Created {
			got++
		}
	}
	return nil
}

// countEvents reads until n events arrived.
func (w *watchStream) countEvents(n int64) error {
	var got int64
	for got < n {
		r, err := w.st.Recv()
		if err != nil {
			return err
		}
		got += int64(len(r.Events))
	}
	return nil
}

// watchLatency puts at rate per second for secs seconds to keys a watcher
// on a stream of its own observes, and returns each put's time from send
// to event.
func watchLatency(ctx context.Context, cc *grpc.ClientConn, cli *clientv3.Client, rate int, secs float64) ([]float64, error) {
	ws, err := openWatchStream(ctx, cc)
	if err != nil {
		return nil, err
	}
	if err := ws.st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key: []byte("lat/"), RangeEnd: []byte("lat0")}}}); err != nil {
		return nil, err
	}
	if r, err := ws.st.Recv(); err != nil || !r.Created {
		return nil, fmt.Errorf("latency watcher not created: %v", err)
	}
	n := int(float64(rate) * secs)
	sent := make([]atomic.Int64, n)
	var lat []float64
	recvDone := make(chan error, 1)
	go func() {
		for len(lat) < n {
			r, err := ws.st.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			now := time.Now().UnixNano()
			for _, e := range r.Events {
				var i int
				if _, err := fmt.Sscanf(string(e.Kv.Key), "lat/%d", &i); err == nil && i < n {
					lat = append(lat, float64(now-sent[i].Load())/1e9)
				}
			}
		}
		recvDone <- nil
	}()
	tick := time.NewTicker(time.Duration(float64(time.Second) / float64(rate)))
	defer tick.Stop()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(256)
	for i := 0; i < n; i++ {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		g.Go(func() error {
			sent[i].Store(time.Now().UnixNano())
			_, err := cli.Put(gctx, fmt.Sprintf("lat/%d", i), strings.Repeat("x", 16))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	select {
	case err := <-recvDone:
		return lat, err
	case <-time.After(time.Minute):
		return nil, errors.New("latency events not all delivered within a minute")
	}
}

// liveHeap returns the server's live heap in bytes: a forced GC through
// /debug/pprof/heap?gc=1, then HeapAlloc from /debug/vars.
func liveHeap(ctx context.Context, endpoint string) (uint64, error) {
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+endpoint+path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	best := uint64(0)
	// Twice, keeping the smaller: a GC cycle may finish sweeping late.
	for i := 0; i < 2; i++ {
		if _, err := get("/debug/pprof/heap?gc=1"); err != nil {
			return 0, fmt.Errorf("bench: the server must serve pprof (--enable-pprof): %w", err)
		}
		body, err := get("/debug/vars")
		if err != nil {
			return 0, err
		}
		var vars struct {
			Memstats struct{ HeapAlloc uint64 } `json:"memstats"`
		}
		if err := json.Unmarshal(body, &vars); err != nil {
			return 0, fmt.Errorf("bench: /debug/vars: %w", err)
		}
		if best == 0 || vars.Memstats.HeapAlloc < best {
			best = vars.Memstats.HeapAlloc
		}
	}
	return best, nil
}

// percentile returns the q-th percentile of xs (nearest rank), 0 if empty.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q/100*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// watchScaleReport renders the medians over rounds and Cairn's ratios to etcd.
func watchScaleReport(cfg watchScaleConfig, syss []system, results map[string][]watchScaleResult, m machine, elapsed time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Watch at scale\n\n")
	fmt.Fprintf(&b, "`cd bench && go run . watch-scale` — %d streams × %d watchers (one per key, so a put reaches one watcher on every stream) on %d gRPC connections; %d puts for throughput; latency at %d puts/s for %.0f s with those watchers open; median of %d rounds, systems alternating. Heap is the server's live heap after a forced GC (/debug/vars), per open stream without watchers and per idle watcher. Ran %s on %s (%s).\n\n",
		cfg.streams, cfg.watchers, cfg.conns, cfg.puts, cfg.rate, cfg.latencyFor, cfg.rounds, elapsed.Round(time.Second), m.cpu, m.device)
	b.WriteString("| system | events/s | heap per stream | heap per watcher | latency p50 | latency p99 |\n|---|---:|---:|---:|---:|---:|\n")
	med := map[string]watchScaleResult{}
	for _, s := range syss {
		var ev, bs, bw, p50, p99 []float64
		var errs []string
		for _, r := range results[s.name] {
			if r.err != "" {
				errs = append(errs, r.err)
				continue
			}
			ev, bs, bw, p50, p99 = append(ev, r.eventsPerSec), append(bs, r.bytesPerStream), append(bw, r.bytesPerWatch), append(p50, r.p50), append(p99, r.p99)
		}
		if len(ev) == 0 {
			fmt.Fprintf(&b, "| %s | failed: %s | | | | |\n", s.name, strings.Join(errs, "; "))
			continue
		}
		r := watchScaleResult{eventsPerSec: median(ev), bytesPerStream: median(bs), bytesPerWatch: median(bw), p50: median(p50), p99: median(p99)}
		med[s.name] = r
		fmt.Fprintf(&b, "| %s | %s | %.0f B | %.0f B | %.2f ms | %.2f ms |\n", s.label, fmtRate(r.eventsPerSec), r.bytesPerStream, r.bytesPerWatch, r.p50*1e3, r.p99*1e3)
	}
	e, okE := med["etcd"]
	c, okC := med["cairn"]
	if okE && okC {
		fmt.Fprintf(&b, "| **cairn / etcd** | **%.2f×** | **%.2f×** | **%.2f×** | **%.2f×** | **%.2f×** |\n",
			c.eventsPerSec/e.eventsPerSec, c.bytesPerStream/e.bytesPerStream, c.bytesPerWatch/e.bytesPerWatch, c.p50/e.p50, c.p99/e.p99)
	}
	b.WriteString("\nHigher is better for events/s; lower for heap and latency. etcd documents about 350 B per watcher and 18 KB per stream.\n")
	return b.String()
}
