package node_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedSplitUnderLoad: ranges split again and again while clients
// write, read over several ranges, watch every key and keep a lease alive,
// on one node and on three. No client sees an error; the watch sees every
// write once, in revision order; reads see the model; the lease's keys,
// spread over ranges the splits made, stay while it lives and go, in every
// range, when it is revoked.
//
// From one range, the first split happens under load too: the range stops
// numbering its revisions itself (dense, as etcd) and the oracle numbers
// every write after it above them, with writes in flight across the change.
func TestShardedSplitUnderLoad(t *testing.T) {
	for _, c := range []struct {
		size   int
		splits []string
	}{{1, []string{"m"}}, {3, []string{"m"}}, {1, nil}, {3, nil}} {
		t.Run(fmt.Sprintf("%d-members-%d-ranges", c.size, len(c.splits)+1), func(t *testing.T) {
			splitUnderLoad(t, nodetest.Start(t, c.size, nodetest.Sharded(c.splits...)), len(c.splits)+1)
		})
	}
}

// splitUnderLoad splits the ranges of cl, initial of them, ten times
// under load.
func splitUnderLoad(t *testing.T, cl *nodetest.Cluster, initial int) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nodes, clis := cl.Nodes(), cl.Clients()
	gr, err := clis[0].Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	ka, err := clis[len(clis)-1].KeepAlive(ctx, gr.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	watch := clis[0].Watch(ctx, "", clientv3.WithPrefix())

	type write struct {
		key, val string
		rev      int64
		del      bool
	}
	var mu sync.Mutex
	var writes []write
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			cli := clis[w%len(clis)]
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%c%c", 'a'+rnd.IntN(26), 'a'+rnd.IntN(26))
				switch rnd.IntN(10) {
				case 0:
					resp, err := cli.Delete(ctx, key)
					if err != nil {
						t.Errorf("delete %s: %v", key, err)
						return
					}
					if resp.Deleted > 0 {
						mu.Lock()
						writes = append(writes, write{key: key, rev: resp.Header.Revision, del: true})
						mu.Unlock()
					}
				case 1:
					if _, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
						t.Errorf("read over every range: %v", err)
						return
					}
				default:
					var opts []clientv3.OpOption
					if w == 0 {
						key = "l" + key // the lease's keys
						opts = append(opts, clientv3.WithLease(gr.ID))
					}
					val := fmt.Sprint(w, "-", i)
					resp, err := cli.Put(ctx, key, val, opts...)
					if err != nil {
						t.Errorf("put %s: %v", key, err)
						return
					}
					mu.Lock()
					writes = append(writes, write{key: key, val: val, rev: resp.Header.Revision})
					mu.Unlock()
				}
			}
		})
	}
	// Split again and again, through every member in turn.
	for i, k := range []string{"f", "t", "c", "la", "lm", "p", "w", "h", "lt", "b"} {
		if _, err := nodes[i%len(nodes)].SplitRange(ctx, []byte(k)); err != nil {
			t.Fatalf("split at %q: %v", k, err)
		}
		nodetest.WaitFor(ctx, t, func() error {
			mu.Lock()
			n := len(writes)
			mu.Unlock()
			if n >= (i+1)*15 || t.Failed() {
				return nil
			}
			return errors.New("writes stalled")
		})
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	if got := len(nodes[0].Ranges()); got != initial+10 {
		t.Fatalf("%d ranges after 10 splits of %d", got, initial)
	}
	slices.SortFunc(writes, func(a, b write) int { return int(a.rev - b.rev) })
	last := writes[len(writes)-1].rev

	// The watch saw every write once, in order.
	var seen []int64
	for len(seen) == 0 || seen[len(seen)-1] < last {
		select {
		case <-ctx.Done():
			t.Fatalf("the watch saw %d of %d writes", len(seen), len(writes))
		case wr := <-watch:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE && ev.Kv.ModRevision > last {
					continue
				}
				seen = append(seen, ev.Kv.ModRevision)
			}
		}
	}
	var want []int64
	for _, w := range writes {
		want = append(want, w.rev)
	}
	if !slices.Equal(seen, want) {
		d := firstDiff(seen, want)
		t.Fatalf("the watch saw %d events, want %d (first difference at %d: saw %v, want %v = %+v)", len(seen), len(want), d,
			seen[max(0, d-2):min(len(seen), d+3)], want[max(0, d-2):min(len(want), d+3)], writes[d])
	}
	// Every member reads the model.
	model := map[string]string{}
	for _, w := range writes {
		if w.del {
			delete(model, w.key)
		} else {
			model[w.key] = w.val
		}
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, kv := range resp.Kvs {
			got[string(kv.Key)] = string(kv.Value)
		}
		if fmt.Sprint(got) != fmt.Sprint(model) {
			t.Fatalf("member %d reads %d keys, the model has %d", i, len(got), len(model))
		}
	}
	// The lease kept its keys; revoked, they go from every range.
	if _, err := clis[0].Revoke(ctx, gr.ID); err != nil {
		t.Fatal(err)
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "l", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, kv := range resp.Kvs {
			if len(kv.Key) == 3 { // the lease writer's keys ("l" and two letters)
				left = append(left, fmt.Sprintf("%s@%d(lease %x)", kv.Key, kv.ModRevision, kv.Lease))
			}
		}
		if len(left) > 0 {
			t.Fatalf("member %d: the revoked lease's keys are left: %v", i, left)
		}
	}
}

func firstDiff(a, b []int64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
