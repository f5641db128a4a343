package node_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestCrossRangeDeleteRange: a DeleteRange over four ranges (etcdctl del
// --prefix) deletes every key at one revision R, answers etcd's count and

// prev_kvs in key order, and a watch over the keys sees every delete at R.
func TestCrossRangeDeleteRange(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("p/b", "p/c", "p/d"))
	cli := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var keys []string
	for _, r := range []string{"a", "b", "c", "d"} {
		for i := range 3 {
			k := fmt.Sprintf("p/%s%d", r, i)
			keys = append(keys, k)
			if _, err := cli.Put(ctx, k, "v"+k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := cli.Put(ctx, "q", "outside"); err != nil {
		t.Fatal(err)
	}
	before, err := cli.Get(ctx, "p/", clientv3.WithPrefix())
	if err != nil || len(before.Kvs) != len(keys) {
		t.Fatalf("get before: %v, %v", before, err)
	}
	wch := cli.Watch(ctx, "p/", clientv3.WithPrefix(), clientv3.WithRev(before.Header.Revision+1))

	dr, err := cli.Delete(ctx, "p/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil {
		t.Fatal(err)
	}
	rev := dr.Header.Revision
	if dr.Deleted != int64(len(keys)) || len(dr.PrevKvs) != len(keys) || rev <= before.Header.Revision {
		t.Fatalf("delete: deleted %d, %d prev kvs at %d; want %d after %d", dr.Deleted, len(dr.PrevKvs), rev, len(keys), before.Header.Revision)
	}
	for i, kv := range dr.PrevKvs {
		if string(kv.Key) != keys[i] || string(kv.Value) != "v"+keys[i] {
			t.Fatalf("prev kv %d: %s=%s, want %s", i, kv.Key, kv.Value, keys[i])
		}
	}
	after, err := cli.Get(ctx, "p/", clientv3.WithPrefix())
	if err != nil || len(after.Kvs) != 0 || after.Header.Revision < rev {
		t.Fatalf("get after: %v, %v", after, err)
	}
	if g, err := cli.Get(ctx, "q"); err != nil || len(g.Kvs) != 1 {
		t.Fatalf("key outside the prefix: %v, %v", g, err)
	}
	seen := map[string]bool{}
	for len(seen) < len(keys) {
		wr, ok := <-wch
		if !ok || wr.Err() != nil {
			t.Fatalf("watch ended with %d of %d deletes: %v", len(seen), len(keys), wr.Err())
		}
		for _, ev := range wr.Events {
			if ev.Type != mvccpb.DELETE || ev.Kv.ModRevision != rev {
				t.Fatalf("watch event %v %s at %d, want deletes at %d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision, rev)
			}
			seen[string(ev.Kv.Key)] = true
		}
	}
	// Single-range deletes keep their path.
	if _, err := cli.Put(ctx, "p/a9", "x"); err != nil {
		t.Fatal(err)
	}
	if dr, err := cli.Delete(ctx, "p/a", clientv3.WithPrefix()); err != nil || dr.Deleted != 1 {
		t.Fatalf("single-range delete: %v, %v", dr, err)
	}
}

// TestCrossRangeTxn: a txn whose compares and ops span ranges takes the
// branch its compares choose, applies at one revision, answers etcd's
// shape (nested txns, reads inside), and takes the failure branch when a
// compare in another range fails.
func TestCrossRangeTxn(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("k", "t"))
	cli := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, k := range []string{"a", "m", "x"} {
		if _, err := cli.Put(ctx, k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	// Compares in two ranges hold: puts in three, a nested txn reading
	// across all, its own compare in the third.
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("a"), "=", "1"), clientv3.Compare(clientv3.Value("m"), "=", "1")).
		Then(clientv3.OpPut("a", "2"), clientv3.OpPut("z", "new"),
			clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Version("x"), "=", 1)},
				[]clientv3.Op{clientv3.OpPut("m", "2"), clientv3.OpGet("a", clientv3.WithRange("zz"))}, nil)).
		Else(clientv3.OpPut("fail", "1")).Commit()
	if err != nil || !tr.Succeeded || len(tr.Responses) != 3 {
		t.Fatalf("txn: %v, %v", tr, err)
	}
	rev := tr.Header.Revision
	nested := tr.Responses[2].GetResponseTxn()
	if nested == nil || !nested.Succeeded || len(nested.Responses) != 2 {
		t.Fatalf("nested txn answer: %v", nested)
	}
	got := nested.Responses[1].GetResponseRange()
	want := map[string]string{"a": "2", "m": "2", "x": "1", "z": "new"}
	if got == nil || got.Count != 4 || len(got.Kvs) != 4 {
		t.Fatalf("read inside the txn: %v", got)
	}
	for _, kv := range got.Kvs {
		if want[string(kv.Key)] != string(kv.Value) {
			t.Fatalf("read inside the txn: %s=%s, want %s", kv.Key, kv.Value, want[string(kv.Key)])
		}
		if k := string(kv.Key); k != "x" && kv.ModRevision != rev {
			t.Fatalf("read inside the txn: %s at %d, want %d", k, kv.ModRevision, rev)
		}
	}
	all, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil || len(all.Kvs) != 4 {
		t.Fatalf("after the txn: %v, %v", all, err)
	}
	for _, kv := range all.Kvs {
		if want[string(kv.Key)] != string(kv.Value) {
			t.Fatalf("after the txn: %s=%s", kv.Key, kv.Value)
		}
	}

	// A compare that fails in another range takes the failure branch,
	// which writes across ranges too.
	tr, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("a"), "=", "2"), clientv3.Compare(clientv3.Value("x"), "=", "nope")).
		Then(clientv3.OpPut("a", "3")).
		Else(clientv3.OpPut("b", "f"), clientv3.OpPut("y", "f"), clientv3.OpGet("m")).Commit()
	if err != nil || tr.Succeeded || len(tr.Responses) != 3 || tr.Header.Revision <= rev {
		t.Fatalf("failing txn: %v, %v", tr, err)
	}
	if g := tr.Responses[2].GetResponseRange(); g == nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "2" {
		t.Fatalf("read in the failure branch: %v", g)
	}
	for k, v := range map[string]string{"a": "2", "b": "f", "y": "f"} {
		g, err := cli.Get(ctx, k)
		if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != v || g.Kvs[0].ModRevision != tr.Header.Revision && k != "a" {
			t.Fatalf("get %s after the failing txn: %v, %v", k, g, err)
		}
	}
	// A txn whose taken branch only reads takes no revision.
	now, err := cli.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	tr, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("x"), "=", "nope")).Then(clientv3.OpPut("a", "4")).
		Else(clientv3.OpGet("a"), clientv3.OpGet("y")).Commit()
	if err != nil || tr.Succeeded || tr.Header.Revision < now.Header.Revision {
		t.Fatalf("read-only outcome: %v, %v", tr, err)
	}
	if g, _ := cli.Get(ctx, "a"); string(g.Kvs[0].Value) != "2" {
		t.Fatalf("a after the read-only outcome: %s", g.Kvs[0].Value)
	}
}

// TestCrossRangeSTM: concurrent STM transactions moving money between
// accounts in different ranges conflict, retry, and conserve the total.
func TestCrossRangeSTM(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("acct/2", "acct/4", "acct/6"))
	cli := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const accounts, start = 8, 100
	for i := range accounts {
		if _, err := cli.Put(ctx, fmt.Sprintf("acct/%d", i), strconv.Itoa(start)); err != nil {
			t.Fatal(err)
		}
	}
	const workers, transfers = 4, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range transfers {
				from := fmt.Sprintf("acct/%d", (w+i)%accounts)
				to := fmt.Sprintf("acct/%d", (w*3+i+5)%accounts)
				if from == to {
					continue
				}
				_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
					a, _ := strconv.Atoi(s.Get(from))
					b, _ := strconv.Atoi(s.Get(to))
					s.Put(from, strconv.Itoa(a-7))
					s.Put(to, strconv.Itoa(b+7))
					return nil
				}, concurrency.WithAbortContext(ctx))
				if err != nil {
					errs <- fmt.Errorf("transfer %s→%s: %w", from, to, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "acct/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != accounts {
		t.Fatalf("accounts: %v, %v", resp, err)
	}
	total := 0
	for _, kv := range resp.Kvs {
		v, _ := strconv.Atoi(string(kv.Value))
		total += v
	}
	if total != accounts*start {
		t.Fatalf("total %d after the transfers, want %d", total, accounts*start)
	}
}
