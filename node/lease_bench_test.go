package node_test

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

var benchLeases = flag.Int("bench.leases", 100_000, "BenchmarkLease*: how many leases")

// grantMany grants n leases of ttl seconds through 32 concurrent clients'
// requests and attaches one key to each.
func grantMany(b *testing.B, c *clientv3.Client, n int, ttl int64) []clientv3.LeaseID {
	b.Helper()
	ids := make([]clientv3.LeaseID, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				g, err := c.Grant(context.Background(), ttl)
				if err != nil {
					b.Error(err)
					return
				}
				ids[i] = g.ID
				if _, err := c.Put(context.Background(), fmt.Sprintf("lease/%07d", i), "v", clientv3.WithLease(g.ID)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return ids
}

// BenchmarkLeaseGrant measures lease grants (each with one attached key);
// -bench.leases sets the population granted first.
func BenchmarkLeaseGrant(b *testing.B) {
	c := nodetest.Start(b, 1).Client(0)
	grantMany(b, c, *benchLeases, 3600)
	b.ResetTimer()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Grant(context.Background(), 3600); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkLeaseKeepAlive measures keepalives (one renewal each) spread
// over -bench.leases leases.
func BenchmarkLeaseKeepAlive(b *testing.B) {
	c := nodetest.Start(b, 1).Client(0)
	ids := grantMany(b, c, *benchLeases, 3600)
	var next atomic.Int64
	b.ResetTimer()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[int(next.Add(1))%len(ids)]
			if _, err := c.KeepAliveOnce(context.Background(), id); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkLeaseExpiryStorm: -bench.leases leases with a key each expire at
// the same moment while 16 clients keep writing. It reports how long the
// revokes took (from the TTL running out until the last key is gone) and
// the p99 latency of the concurrent puts meanwhile (etcd caps revokes at
// 1,000/s; Cairn revokes in paced rounds without a cap).
func BenchmarkLeaseExpiryStorm(b *testing.B) {
	for range b.N {
		cl := nodetest.Start(b, 1)
		n, c := cl.Node(0), cl.Client(0)
		ctx := context.Background()
		// Long enough that every lease is granted before the first expires.
		ttl := 5 + int64(*benchLeases/2000)
		start := time.Now()
		grantMany(b, c, *benchLeases, ttl)
		if time.Since(start) > time.Duration(ttl)*time.Second/2 {
			b.Logf("granting took %v, close to the %ds TTL: expiries spread over the grant time", time.Since(start), ttl)
		}
		expires := start.Add(time.Duration(ttl) * time.Second)

		var mu sync.Mutex
		var lat []time.Duration
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					t0 := time.Now()
					if _, err := c.Put(ctx, fmt.Sprintf("load/%02d/%d", w, i%100), "v"); err != nil {
						b.Error(err)
						return
					}
					if time.Now().After(expires) {
						mu.Lock()
						lat = append(lat, time.Since(t0))
						mu.Unlock()
					}
				}
			}()
		}
		for {
			r, err := c.Get(ctx, "lease/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				b.Fatal(err)
			}
			if r.Count == 0 {
				break
			}
			time.Sleep(50 * time.Millisecond) // benchmark polling, not a test
		}
		revoked := time.Since(expires)
		close(stop)
		wg.Wait()
		slices.Sort(lat)
		if len(lat) > 0 {
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "put-p99-ms")
		}
		b.ReportMetric(revoked.Seconds(), "revoke-all-s")
		_ = n.Close()
	}
}
