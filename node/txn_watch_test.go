package node_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestCrossRangeTxnWatch: while cross-range transactions commit, other keys
// of their ranges are written as fast as they go; a watch over one
// participant range and one over every range get every event once, in
// revision order, each transaction's events in one response (docs/plan-txn.md,
// invariant 2: a range's hub holds what applies above a lock's cap).
func TestCrossRangeTxnWatch(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("k", "t"))
	cli := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start, err := cli.Put(ctx, "a", "0")
	if err != nil {
		t.Fatal(err)
	}
	from := clientv3.WithRev(start.Header.Revision + 1)
	one := cli.Watch(ctx, "a", clientv3.WithRange("k"), from) // range [, k) alone
	all := cli.Watch(ctx, "", clientv3.WithFromKey(), from)

	// Writers of other keys of the participants, single-range writes.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	puts := map[string][]int64{} // prefix → revisions of its puts
	for _, prefix := range []string{"b", "x"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r, err := cli.Put(ctx, fmt.Sprintf("%s%d", prefix, i%5), "v")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				puts[prefix] = append(puts[prefix], r.Header.Revision)
				mu.Unlock()
			}
		}()
	}
	var txns []int64
	for i := range 20 {
		tr, err := cli.Txn(ctx).Then(clientv3.OpPut("a", fmt.Sprint(i)), clientv3.OpPut("m", fmt.Sprint(i)), clientv3.OpPut("z", fmt.Sprint(i))).Commit()
		if err != nil {
			t.Fatal(err)
		}
		txns = append(txns, tr.Header.Revision)
	}
	close(stop)
	wg.Wait()
	isTxn := map[int64]bool{}
	for _, r := range txns {
		isTxn[r] = true
	}

	check := func(name string, wch clientv3.WatchChan, perTxn int, prefixes ...string) {
		t.Helper()
		last := txns[len(txns)-1]
		for _, p := range prefixes {
			for _, r := range puts[p] {
				last = max(last, r)
			}
		}
		var prev int64
		got := map[int64]int{}
		for prev < last {
			wr, ok := <-wch
			if !ok || wr.Err() != nil {
				t.Fatalf("%s: watch ended at %d: %v", name, prev, wr.Err())
			}
			inResp := map[int64]int{}
			for _, ev := range wr.Events {
				r := ev.Kv.ModRevision
				if r < prev {
					t.Fatalf("%s: event %s at %d after one at %d", name, ev.Kv.Key, r, prev)
				}
				prev = r
				inResp[r]++
				got[r]++
			}
			for r, n := range inResp {
				if isTxn[r] && n != perTxn {
					t.Fatalf("%s: %d of transaction %d's %d events in one response", name, n, r, perTxn)
				}
			}
		}
		for _, r := range txns {
			if got[r] != perTxn {
				t.Fatalf("%s: transaction at %d: %d events, want %d", name, r, got[r], perTxn)
			}
		}
		for _, p := range prefixes {
			for _, r := range puts[p] {
				if got[r] != 1 {
					t.Fatalf("%s: put of %s… at %d: %d events, want 1", name, p, r, got[r])
				}
			}
		}
	}
	check("range [, k)", one, 1, "b")
	check("every range", all, 3, "b", "x")
}
