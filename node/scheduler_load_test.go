package node_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestSchedulerSplitsByLoad: one member, two ranges split at "m"; range
// [, m) holds 300 cold keys and 20 hot ones (hot/0..9 and hot2/0..9)
// that a client reads and writes without pause, with a trickle of reads
// of cold keys in both ranges. With a low split-load threshold the
// scheduler splits the hot range where its load lies — inside the hot
// keys' span, not among the cold keys that most of its data is — and
// leaves the cold range alone, while the hot traffic sees no error.
func TestSchedulerSplitsByLoad(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"),
		nodetest.Edit(func(c *node.Config) {
			c.PlacementScheduler = true
			c.SchedulerWindow = 200 * time.Millisecond
			c.SplitLoad = 50 // writes+reads per second
		}))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cl.Client(0)

	// The cold keys, in a few requests (they count as load too).
	for _, prefix := range []string{"cold/", "zcold/"} {
		for base := 0; base < 300; base += 100 {
			var ops []clientv3.Op
			for i := base; i < base+100; i++ {
				ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%03d", prefix, i), "cold"))
			}
			if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(rangeMapOf(t, cl)); n != 2 {
		t.Fatalf("%d ranges before the traffic, want 2", n)
	}

	var hot []string
	for i := range 10 {
		hot = append(hot, fmt.Sprintf("hot/%d", i), fmt.Sprintf("hot2/%d", i))
	}
	lo, hi := []byte("hot/0"), []byte("hot2/9") // the hot keys' span

	stop := make(chan struct{})
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		ops  int
	)
	traffic := func(do func(ctx context.Context, i int) error) {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			err := do(rctx, i)
			rcancel()
			mu.Lock()
			ops++
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}
	}
	wg.Add(2)
	go traffic(func(ctx context.Context, i int) error {
		_, err := c.Put(ctx, hot[i%len(hot)], fmt.Sprint(i))
		return err
	})
	go traffic(func(ctx context.Context, i int) error {
		key := hot[i%len(hot)]
		switch {
		case i%200 == 0:
			key = fmt.Sprintf("zcold/%03d", i/200%300) // the cold range
		case i%50 == 0:
			key = fmt.Sprintf("cold/%03d", i/50%300)
		}
		_, err := c.Get(ctx, key)
		return err
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	nodetest.WaitFor(ctx, t, func() error {
		if n := len(rangeMapOf(t, cl)); n < 3 {
			return fmt.Errorf("%d ranges: no split by load yet", n)
		}
		return nil
	})
	ranges := rangeMapOf(t, cl)
	close(stop)
	wg.Wait()

	mu.Lock()
	if len(errs) > 0 {
		t.Errorf("%d of %d hot requests failed while the range split by load; first: %v", len(errs), ops, errs[0])
	}
	if ops == 0 {
		t.Error("no hot request went through")
	}
	mu.Unlock()
	var bounds []string
	for _, d := range ranges {
		bounds = append(bounds, fmt.Sprintf("[%q, %q)", d.Start, d.End))
		switch {
		case len(d.Start) == 0:
		case string(d.Start) == "m":
			if len(d.End) != 0 {
				t.Errorf("the cold range [m, ) split: it ends at %q", d.End)
			}
		case bytes.Compare(d.Start, lo) < 0 || bytes.Compare(d.Start, hi) > 0:
			t.Errorf("a range starts at %q: outside the hot keys' span [%s, %s]", d.Start, lo, hi)
		}
	}
	t.Logf("after %d hot requests: %v", ops, bounds)

	for prefix, want := range map[string]int64{"cold/": 300, "zcold/": 300, "hot": 20} {
		r, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count != want {
			t.Errorf("%d keys under %q after the split, want %d", r.Count, prefix, want)
		}
	}
}
