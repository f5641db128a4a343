package robustness

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestShardedKill9: a three-member sharded cluster (four ranges) takes
// writes in every range through every member while its members are killed
// with SIGKILL one by one and restarted, and then all at once; every
// write a client saw acknowledged is there afterwards, with its value, on
// every member, and the revisions acknowledged are unique.
func TestShardedKill9(t *testing.T) {
	runShardedKill9(t, 3, 3)
}

// runShardedKill9 is TestShardedKill9 on a cluster of size members started
// with extra flags, killing the first oneByOne of them one by one before
// all at once; it returns the cluster, every member serving again.
func runShardedKill9(t *testing.T, size, oneByOne int, extra ...string) *cluster {
	bin := cairnBinary(t)
	c := startCluster(t, bin, t.TempDir(), size, append([]string{"--single-group=false", "--initial-split-keys", "b,m,t"}, extra...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.endpoint())
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var mu sync.Mutex
	acked := map[string]int64{} // key → revision; every key written once
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%c-%d-%d", "aclw"[(w+i)%4], w, i) // ranges 1 to 4
				wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
				resp, err := cli.Put(wctx, key, key)
				wcancel()
				if err != nil {
					continue // not acknowledged: may or may not be there
				}
				mu.Lock()
				acked[key] = resp.Header.Revision
				mu.Unlock()
			}
		})
	}
	waitWrites := func(n int) {
		t.Helper()
		for {
			mu.Lock()
			got := len(acked)
			mu.Unlock()
			if got >= n {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("only %d acknowledged writes", got)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	waitWrites(50)
	for i, m := range c.members[:oneByOne] {
		if err := killRestart(ctx, m); err != nil {
			t.Fatalf("kill -9 and restart %s: %v", m.name, err)
		}
		waitWrites(50 * (i + 2))
	}
	// All at once: nothing acknowledged may be lost.
	for _, m := range c.members {
		if err := m.kill(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	for _, m := range c.members {
		if err := m.start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range c.members {
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		err := m.waitReady(rctx)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	revs := map[int64]string{}
	for key, rev := range acked {
		if other, ok := revs[rev]; ok {
			t.Fatalf("revision %d acknowledged for %s and %s", rev, key, other)
		}
		revs[rev] = key
	}
	for _, m := range c.members {
		mc, err := clientv3.New(clientv3.Config{Endpoints: []string{m.endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := mc.Get(ctx, "", clientv3.WithPrefix())
		mc.Close()
		if err != nil {
			t.Fatalf("%s: read after the restart: %v", m.name, err)
		}
		got := map[string]int64{}
		for _, kv := range resp.Kvs {
			if string(kv.Value) != string(kv.Key) {
				t.Fatalf("%s: %s holds %q", m.name, kv.Key, kv.Value)
			}
			got[string(kv.Key)] = kv.ModRevision
		}
		for key, rev := range acked {
			if got[key] != rev {
				t.Fatalf("%s: acknowledged %s at %d, read at %d after kill -9", m.name, key, rev, got[key])
			}
		}
	}
	t.Logf("%d acknowledged writes over four ranges survived kill -9 of every member", len(acked))
	return c
}
