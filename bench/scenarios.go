package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// sizes are the totals of one run; defaultSizes is the documented run, and
// smokeSizes is what CI runs to keep the harness from rotting.
type sizes struct {
	clients, conns int   // concurrency of the point scenarios
	putTotal       int   // put and txn-put requests
	rangeTotal     int   // single-key range requests
	bigRangeKeys   int   // keys under the prefix of the big range
	bigRangeTotal  int   // big range requests
	leaseTotal     int   // lease keepalive requests
	watchPuts      int   // puts observed by the watch-latency watchers
	watchRate      int   // puts per second in watch-latency
	valSize        int   // value size of writes
	memoryKeys     []int // key counts of the memory scenarios
	scaleOutPuts   int   // put requests of the scale-out scenario
	scaleOutRanges int   // range requests of the scale-out scenario, over all its readers
}

var defaultSizes = sizes{
	clients: 100, conns: 10,
	putTotal: 40000, rangeTotal: 60000,
	bigRangeKeys: 10000, bigRangeTotal: 300,
	leaseTotal: 40000,
	watchPuts:  5000, watchRate: 1000, // the watch issue: latency under 1,000 puts/s
	valSize: 256,
	// 10M more with -memory 1M,10M: loading them takes etcd about 2 and
	// Cairn about 7 minutes on the reference machine, past the default
	// run's 15-minute budget.
	memoryKeys: []int{1_000_000},
	// Members capped at 0.15 of a core do a few hundred puts/s each.
	scaleOutPuts: 20000, scaleOutRanges: 36000,
}

var smokeSizes = sizes{
	clients: 10, conns: 2,
	putTotal: 300, rangeTotal: 300,
	bigRangeKeys: 10000, bigRangeTotal: 10,
	leaseTotal: 300,
	watchPuts:  50, watchRate: 100,
	valSize:      256,
	memoryKeys:   []int{20_000},
	scaleOutPuts: 300, scaleOutRanges: 360,
}

// capability is a service a scenario needs beyond KV.
type capability int

const (
	capKV capability = iota
	capLease
	capWatch
)

func (c capability) String() string {
	return [...]string{"KV", "Lease", "Watch"}[c]
}

// scenario is one workload of etcd's benchmark tool.
type scenario struct {
	name    string
	needs   capability
	clients int
	conns   int
	args    []string // benchmark subcommand and its flags
	section string   // which summary of the output is the result ("" = the only one)
	// latencyBound marks a scenario whose rate the client fixes: its figure
	// of merit is the p99 latency, not the throughput.
	latencyBound bool
	// preload writes what the scenario reads, before the clock starts.
	preload func(ctx context.Context, cli *clientv3.Client) error
	// memoryKeys, if set, makes this a memory scenario: the harness's own
	// loader writes that many distinct keys (memoryValSize-byte values, in
	// txns of memoryTxnOps puts), the figure is the server's peak RSS, and
	// the throughput reported is the load rate in keys/s. It runs once (in
	// round 1) and on the systems in only.
	memoryKeys int
	only       []string
	// scaleOut makes this the scale-out scenario (scaleout.go): members
	// capped at a CPU share, args is the put step, then scaleOutReaders
	// range processes run rangeTotal requests between them; it reports
	// its own section.
	scaleOut   bool
	rangeTotal int
	// optIn leaves the scenario out of the default run: it runs only when
	// -scenarios names it.
	optIn bool
}

const (
	memoryValSize = 100
	memoryTxnOps  = 128
)

const bigRangePrefix = "bench/range/"

func scenarios(sz sizes) []scenario {
	val := strconv.Itoa(sz.valSize)
	n := strconv.Itoa
	var memory []scenario
	for _, k := range sz.memoryKeys {
		memory = append(memory, scenario{name: fmt.Sprintf("memory-%s-keys", countName(k)), needs: capKV,
			memoryKeys: k, only: []string{"etcd", "cairn"}})
	}
	return append([]scenario{
		{
			name: "put", needs: capKV, clients: sz.clients, conns: sz.conns,
			args: []string{"put", "--total", n(sz.putTotal), "--key-size", "8", "--val-size", val, "--key-space-size", "100000"},
		},
		{
			name: "range-linearizable", needs: capKV, clients: sz.clients, conns: sz.conns,
			args:    []string{"range", "foo", "--consistency", "l", "--total", n(sz.rangeTotal)},
			preload: putOne("foo", strings.Repeat("v", sz.valSize)),
		},
		{
			name: "range-serializable", needs: capKV, clients: sz.clients, conns: sz.conns,
			args:    []string{"range", "foo", "--consistency", "s", "--total", n(sz.rangeTotal)},
			preload: putOne("foo", strings.Repeat("v", sz.valSize)),
		},
		{
			name: "txn-put", needs: capKV, clients: sz.clients, conns: sz.conns,
			args: []string{"txn-put", "--total", n(sz.putTotal), "--key-size", "8", "--val-size", val, "--key-space-size", "100000", "--txn-ops", "1"},
		},
		{
			// Each response carries every key under the prefix, so fewer
			// clients: the point is the cost of a long scan, not queueing.
			name: fmt.Sprintf("range-%dk-keys", sz.bigRangeKeys/1000), needs: capKV, clients: 10, conns: 2,
			args: []string{"range", bigRangePrefix, prefixEnd(bigRangePrefix), "--consistency", "l", "--total", n(sz.bigRangeTotal)},
			// 64-byte values: 10k keys make a response of about 1 MB.
			preload: putMany(bigRangePrefix, sz.bigRangeKeys, 64),
		},
		{
			name: "lease-keepalive", needs: capLease, clients: sz.clients, conns: sz.conns,
			args: []string{"lease-keepalive", "--total", n(sz.leaseTotal)},
		},
		{
			name: "watch-latency", needs: capWatch, clients: 1, conns: 1, latencyBound: true,
			args:    []string{"watch-latency", "--put-total", n(sz.watchPuts), "--put-rate", n(sz.watchRate), "--streams", "10", "--watchers-per-stream", "10"},
			section: "Watch events summary:",
		},
		{
			// The same put as the put scenario, on members capped at a CPU
			// share; then reads spread over the key space.
			name: "scale-out", needs: capKV, clients: sz.clients, conns: sz.conns, scaleOut: true, optIn: true,
			args:       []string{"put", "--total", n(sz.scaleOutPuts), "--key-size", "8", "--val-size", val, "--key-space-size", "100000"},
			rangeTotal: sz.scaleOutRanges,
			only:       scaleOutSystems,
		},
	}, memory...)
}

// countName spells 10000000 as 10M and 20000 as 20k.
func countName(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

// loadKeys writes n distinct keys (mem/<i>) with memoryValSize-byte
// values, memoryTxnOps puts per txn from 32 concurrent clients, calling
// progress now and then; it returns the keys per second it achieved.
func loadKeys(ctx context.Context, cli *clientv3.Client, n int, progress func(done int)) (float64, error) {
	v := strings.Repeat("v", memoryValSize)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	start := time.Now()
	var done atomic.Int64
	for first := 0; first < n; first += memoryTxnOps {
		last := min(first+memoryTxnOps, n)
		g.Go(func() error {
			ops := make([]clientv3.Op, 0, last-first)
			for i := first; i < last; i++ {
				ops = append(ops, clientv3.OpPut(fmt.Sprintf("mem/%09d", i), v))
			}
			if _, err := cli.Txn(gctx).Then(ops...).Commit(); err != nil {
				return err
			}
			if d := done.Add(int64(last - first)); progress != nil && d%(memoryTxnOps*2000) < memoryTxnOps {
				progress(int(d))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// target is a goal of issue 7 that the report checks: sys's figure over
// baseline's in scenario, at least min (throughput) or at most max (p99 of a
// latency-bound scenario).
type target struct {
	scenario string
	sys      string
	baseline string
	min, max float64 // one of them is set
}

// targets are the goals: single-group on 1 and 3 nodes against
// etcd, sharded (8 ranges, 3 nodes) against single-group.
var targets = []target{
	{scenario: "put", sys: "cairn", baseline: "etcd", min: 1.5},
	{scenario: "range-linearizable", sys: "cairn", baseline: "etcd", min: 1.2},
	{scenario: "txn-put", sys: "cairn", baseline: "etcd", min: 1.5},
	{scenario: "lease-keepalive", sys: "cairn", baseline: "etcd", min: 1.0},
	{scenario: "watch-latency", sys: "cairn", baseline: "etcd", max: 1.0},
	{scenario: "put", sys: "cairn-3", baseline: "etcd-3", min: 1.5},
	{scenario: "put", sys: "cairn-sharded-3", baseline: "cairn-3", min: 1.0},
}

func (t target) String() string {
	if t.max > 0 {
		return fmt.Sprintf("p99 ≤ %.1f× %s", t.max, t.baseline)
	}
	return fmt.Sprintf("≥ %.1f× %s", t.min, t.baseline)
}

func (t target) met(ratio float64) bool {
	if t.max > 0 {
		return ratio <= t.max
	}
	return ratio >= t.min
}

func putOne(k, v string) func(context.Context, *clientv3.Client) error {
	return func(ctx context.Context, cli *clientv3.Client) error {
		_, err := cli.Put(ctx, k, v)
		return err
	}
}

func putMany(prefix string, n, valSize int) func(context.Context, *clientv3.Client) error {
	return func(ctx context.Context, cli *clientv3.Client) error {
		v := strings.Repeat("v", valSize)
		g, ctx := errgroup.WithContext(ctx)
		g.SetLimit(32)
		for i := 0; i < n; i++ {
			k := fmt.Sprintf("%s%06d", prefix, i)
			g.Go(func() error {
				_, err := cli.Put(ctx, k, v)
				return err
			})
		}
		return g.Wait()
	}
}

// prefixEnd is clientv3.GetPrefixRangeEnd for a prefix without 0xff bytes.
func prefixEnd(p string) string {
	b := []byte(p)
	b[len(b)-1]++
	return string(b)
}

// probe reports whether the system behind endpoint offers capability c.
// Support is found out, not declared, so a scenario starts counting for
// Cairn the day the service lands.
func probe(ctx context.Context, endpoint string, c capability) bool {
	if c == capKV {
		return true
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return false
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch c {
	case capLease:
		l, err := cli.Grant(ctx, 10)
		if err != nil {
			return false
		}
		_, err = cli.KeepAliveOnce(ctx, l.ID)
		return err == nil
	case capWatch:
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		defer wcancel()
		wc := cli.Watch(wctx, "bench/probe/watch")
		if _, err := cli.Put(ctx, "bench/probe/watch", "x"); err != nil {
			return false
		}
		for {
			select {
			case r, ok := <-wc:
				if !ok || r.Err() != nil {
					return false
				}
				if len(r.Events) > 0 {
					return true
				}
			case <-ctx.Done():
				return false
			}
		}
	}
	return false
}
