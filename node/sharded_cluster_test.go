package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

// startShardedCluster starts a sharded cluster of size members whose key
// space is split at splits; every member holds a replica of every range.
func startShardedCluster(tb testing.TB, size int, splits ...string) []*node.Node {
	tb.Helper()
	return startClusterWith(tb, size, func(c *node.Config) {
		c.Sharded = true
		for _, k := range splits {
			c.InitialSplitKeys = append(c.InitialSplitKeys, []byte(k))
		}
	})
}

// TestShardedCluster: a three-member sharded cluster serves every request
// from every member, whichever member leads the range (or the placement
// group): writes in every range, reads over several ranges, revisions
// unique and increasing across ranges and members.
func TestShardedCluster(t *testing.T) {
	nodes := startShardedCluster(t, 3, "c", "h", "p")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clis := make([]*clientv3.Client, len(nodes))
	for i, n := range nodes {
		clis[i] = newClient(t, n)
	}
	watches := make([]clientv3.WatchChan, len(clis))
	for i, cli := range clis {
		watches[i] = cli.Watch(ctx, "", clientv3.WithPrefix())
	}
	var revs []int64
	var last int64
	for i := range 24 {
		cli := clis[i%3]
		key := fmt.Sprintf("%c%d", "adqz"[i%4], i)
		resp, err := cli.Put(ctx, key, fmt.Sprint(i))
		if err != nil {
			t.Fatalf("put %s through member %d: %v", key, i%3, err)
		}
		if resp.Header.Revision <= last {
			t.Fatalf("put %s at %d after %d", key, resp.Header.Revision, last)
		}
		last = resp.Header.Revision
		revs = append(revs, last)
	}
	// Every member's watch over all ranges sees every put, in order.
	for i, w := range watches {
		var got []int64
		for len(got) < len(revs) {
			select {
			case <-ctx.Done():
				t.Fatalf("member %d's watch saw %v of %v", i, got, revs)
			case wr := <-w:
				if err := wr.Err(); err != nil {
					t.Fatalf("member %d's watch: %v", i, err)
				}
				for _, ev := range wr.Events {
					got = append(got, ev.Kv.ModRevision)
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(revs) {
			t.Fatalf("member %d's watch saw %v, want %v", i, got, revs)
		}
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatalf("read through member %d: %v", i, err)
		}
		if resp.Count != 24 || resp.Header.Revision < last {
			t.Fatalf("member %d: count %d at %d, want 24 at or above %d", i, resp.Count, resp.Header.Revision, last)
		}
		old, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(revs[11]))
		if err != nil || old.Count != 12 {
			t.Fatalf("member %d: read at revision %d: %v, %v", i, revs[11], old, err)
		}
	}

	// A lease granted through one member, its keys put in three ranges
	// through another, revoked through the third: gone everywhere.
	gr, err := clis[1].Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a-l", "d-l", "z-l"} {
		if _, err := clis[2].Put(ctx, k, "v", clientv3.WithLease(gr.ID)); err != nil {
			t.Fatalf("put %s with the lease through member 2: %v", k, err)
		}
	}
	ttl, err := clis[0].TimeToLive(ctx, gr.ID, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 3 {
		t.Fatalf("time-to-live through member 0: %v, %v", ttl, err)
	}
	if _, err := clis[0].Revoke(ctx, gr.ID); err != nil {
		t.Fatal(err)
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 24 {
			t.Fatalf("member %d after the revoke: %v, %v", i, resp, err)
		}
	}
}
