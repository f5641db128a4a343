package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// `bench profile-scale-out` starts one scale-out sharded cluster exactly as
// the scale-out scenario does (scaleout.go: --range-replicas 3,
// --placement-replicas 3, 4 ranges per member, each member capped by
// cgroup.go), drives `benchmark put` at it and, while the load runs, takes a
// CPU profile of the placement leader's member and of one other member from
// /debug/pprof/profile (the members run with --enable-pprof). It saves the
// profiles, every member's /metrics before and after the load, and the
// members' throttled periods under -out, for `go tool pprof`. It is the
// evidence behind results/scale-out-profile.md.

// profileScaleOut runs the subcommand.
func profileScaleOut(args []string) error {
	fs := flag.NewFlagSet("profile-scale-out", flag.ContinueOnError)
	members := fs.Int("members", 6, "members of the sharded cluster (cairn-sharded-<members>)")
	share := fs.Float64("cpu-share", 0.15, "the share of one CPU each member process is capped at")
	load := fs.Duration("load", 30*time.Second, "how long benchmark put runs")
	warm := fs.Duration("warm-up", 5*time.Second, "from the load's start to the profiles' start")
	prof := fs.Duration("profile", 20*time.Second, "each CPU profile's length")
	out := fs.String("out", "profile-out", "directory for the profiles, metrics and throttling")
	root := fs.String("root", "..", "the Cairn repository (holding cmd/cairn)")
	clients := fs.Int("clients", 100, "benchmark put --clients (the scale-out scenario's: 100)")
	conns := fs.Int("conns", 10, "benchmark put --conns (the scale-out scenario's: 10)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *warm+*prof > *load {
		return errors.New("bench: profile-scale-out: want -warm-up + -profile ≤ -load")
	}
	if reason := cpuCapSkipReason(cgroupCPURoot, os.Geteuid(), os.Getpid()); reason != "" {
		return fmt.Errorf("bench: profile-scale-out: %s", reason)
	}
	ctx := context.Background()
	name := scaleOutName(true, *members)
	sys, ok := profileSystem(name, *members)
	if !ok {
		return fmt.Errorf("bench: profile-scale-out: no system %s", name)
	}
	run, closeRun, err := startSubRun(ctx, "profile-scale-out", *root, nil)
	if err != nil {
		return err
	}
	defer closeRun()
	run.env.rangeReplicas = scaleOutRangeReplicas
	rootDir, err := findRoot(*root)
	if err != nil {
		return err
	}
	benchBin := filepath.Join(run.work, "bin", "benchmark")
	run.progress("building etcd's benchmark tool (bench/etcdbenchmark)")
	if err := goBuild(ctx, filepath.Join(rootDir, "bench", "etcdbenchmark"), benchBin, "go.etcd.io/etcd/v3/tools/benchmark"); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	cpu, err := newCPUCap(cgroupCPURoot, *share, os.Getpid())
	if err != nil {
		return err
	}
	defer func() {
		if err := cpu.close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	run.progress("starting %s, each member capped at %v of a CPU", name, *share)
	in, err := startSystemCapped(ctx, run.env, sys, filepath.Join(run.work, name), cpu)
	if err != nil {
		return err
	}
	defer in.stop()

	leader := -1
	for i, ep := range in.endpoints {
		body, err := httpGet(ctx, "http://"+ep+"/metrics")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(*out, fmt.Sprintf("metrics-before-m%d.txt", i+1)), body, 0o644); err != nil {
			return err
		}
		if placementLeader(string(body)) {
			leader = i
		}
	}
	if leader < 0 {
		return errors.New("bench: profile-scale-out: no member reports cairn_placement_is_leader 1")
	}
	other := (leader + 1) % len(in.endpoints)
	run.progress("placement leader m%d; profiling m%d and m%d", leader+1, leader+1, other+1)

	lctx, cancel := context.WithTimeout(ctx, *load)
	defer cancel()
	g, gctx := errgroup.WithContext(lctx)
	var putOut string
	g.Go(func() error {
		argv := []string{"put", "--total", "10000000", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000",
			"--clients", strconv.Itoa(*clients), "--conns", strconv.Itoa(*conns), "--endpoints", strings.Join(in.endpoints, ",")}
		stdout, _, _ := runBenchmark(gctx, benchBin, argv)
		putOut = stdout
		return nil // cut off by the load's deadline on purpose
	})
	for _, i := range []int{leader, other} {
		g.Go(func() error {
			select {
			case <-time.After(*warm):
			case <-gctx.Done():
				return gctx.Err()
			}
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", in.endpoints[i], int(prof.Seconds()))
			body, err := httpGet(ctx, url)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(*out, fmt.Sprintf("cpu-m%d.pprof", i+1)), body, 0o644)
		})
	}
	start := time.Now()
	if err := g.Wait(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	elapsed := time.Since(start)
	for i, ep := range in.endpoints {
		body, err := httpGet(ctx, "http://"+ep+"/metrics")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(*out, fmt.Sprintf("metrics-after-m%d.txt", i+1)), body, 0o644); err != nil {
			return err
		}
	}
	var summary strings.Builder
	fmt.Fprintf(&summary, "system %s, cpu share %v, put --clients %d --conns %d, load %v (ran %v), profiles %v from %v in\n",
		name, *share, *clients, *conns, *load, elapsed.Round(time.Millisecond), *prof, *warm)
	fmt.Fprintf(&summary, "placement leader m%d, other profiled member m%d\n", leader+1, other+1)
	for i, f := range cpu.throttled() {
		fmt.Fprintf(&summary, "m%d throttled %.0f%% of periods\n", i+1, 100*f)
	}
	fmt.Fprintf(&summary, "benchmark put (cut off at the load's end; empty if it printed nothing):\n%s\n", putOut)
	run.progress("%s", summary.String())
	return os.WriteFile(filepath.Join(*out, "summary.txt"), []byte(summary.String()), 0o644)
}

// profileSystem returns the scale-out system name with the scale-out
// command, as runScaleOut starts it.
func profileSystem(name string, members int) (system, bool) {
	for _, s := range systems() {
		if s.name != name {
			continue
		}
		if s.scaleOutCommand != nil {
			s.command = s.scaleOutCommand
		}
		return s, s.nodes == members
	}
	return system{}, false
}

// placementLeader reports whether a member's /metrics says it leads the
// placement group (cairn_placement_is_leader 1).
func placementLeader(metrics string) bool {
	for _, line := range strings.Split(metrics, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.HasPrefix(f[0], "cairn_placement_is_leader") {
			v, err := strconv.ParseFloat(f[1], 64)
			return err == nil && v == 1
		}
	}
	return false
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("bench: GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: GET %s: %s: %.200s", url, resp.Status, body)
	}
	return body, nil
}
