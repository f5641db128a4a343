package node_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
)

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startCluster starts n members founded with etcd's --initial-cluster, all
// at once (each waits for a quorum), and returns them in name order.
func startCluster(tb testing.TB, size int) []*node.Node {
	tb.Helper()
	names := make([]string, size)
	peers := make([]string, size)
	var initial []string
	for i := range size {
		names[i] = fmt.Sprintf("m%d", i)
		peers[i] = "http://" + freeAddr(tb)
		initial = append(initial, names[i]+"="+peers[i])
	}
	nodes := make([]*node.Node, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i := range size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			nodes[i], errs[i] = node.Start(ctx, node.Config{
				Name:                names[i],
				DataDir:             tb.TempDir(),
				ListenClientURLs:    []string{"http://127.0.0.1:0"},
				ListenPeerURLs:      []string{peers[i]},
				InitialCluster:      strings.Join(initial, ","),
				InitialClusterToken: "test-cluster",
				HeartbeatInterval:   20 * time.Millisecond,
				ElectionTimeout:     200 * time.Millisecond,
			})
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if n != nil {
			tb.Cleanup(func() { _ = n.Close() })
		}
		if errs[i] != nil {
			tb.Fatalf("start %s: %v", names[i], errs[i])
		}
	}
	return nodes
}

func clientFor(tb testing.TB, urls ...string) *clientv3.Client {
	tb.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// TestCluster: three members founded with --initial-cluster list each
// other with names and client URLs; a write through any member is read
// linearizably through the others and watched on every member; leases
// granted, kept alive and inspected through followers are served by the
// leader's lessor.
func TestCluster(t *testing.T) {
	nodes := startCluster(t, 3)
	clients := make([]*clientv3.Client, len(nodes))
	for i, n := range nodes {
		clients[i] = clientFor(t, n.ClientURLs()...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ml, err := clients[1].MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ml.Members {
		got = append(got, fmt.Sprintf("%s %v %v learner=%v", m.Name, m.ClientURLs, len(m.PeerURLs), m.IsLearner))
	}
	slices.Sort(got)
	var want []string
	for i, n := range nodes {
		want = append(want, fmt.Sprintf("m%d %v 1 learner=false", i, n.ClientURLs()))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("members:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	watches := make([]clientv3.WatchChan, len(nodes))
	for i, c := range clients {
		watches[i] = c.Watch(ctx, "k", clientv3.WithPrefix())
	}
	for i, c := range clients {
		if _, err := c.Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatalf("put through m%d: %v", i, err)
		}
	}
	for i, c := range clients {
		r, err := c.Get(ctx, "k", clientv3.WithPrefix())
		if err != nil || len(r.Kvs) != len(nodes) {
			t.Fatalf("linearizable get through m%d: %v %v", i, r, err)
		}
	}
	for i, ch := range watches {
		evs := collect(t, ch, len(nodes))
		for j, e := range evs {
			if e.typ != mvccpb.PUT || e.key != fmt.Sprintf("k%d", j) {
				t.Fatalf("watch on m%d: %+v", i, evs)
			}
		}
	}

	for i, c := range clients {
		g, err := c.Grant(ctx, 30)
		if err != nil {
			t.Fatalf("grant through m%d: %v", i, err)
		}
		if _, err := c.Put(ctx, fmt.Sprintf("l%d", i), "v", clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		ka, err := c.KeepAliveOnce(ctx, g.ID)
		if err != nil || ka.TTL != 30 {
			t.Fatalf("keepalive through m%d: %v %v", i, ka, err)
		}
		ttl, err := c.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
		if err != nil || ttl.GrantedTTL != 30 || len(ttl.Keys) != 1 {
			t.Fatalf("time to live through m%d: %v %v", i, ttl, err)
		}
		ls, err := c.Leases(ctx)
		if err != nil || len(ls.Leases) != i+1 {
			t.Fatalf("leases through m%d: %v %v", i, ls, err)
		}
	}
}
