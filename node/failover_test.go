package node_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// writer puts keys through a client until stopped, remembering the ones
// that were acknowledged; failed writes (during an election) are retried
// with the next key.
type writer struct {
	mu    sync.Mutex
	acked []string
	stop  chan struct{}
	done  chan struct{}
}

func startWriter(c *clientv3.Client) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			k := fmt.Sprintf("load/%06d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := c.Put(ctx, k, "v")
			cancel()
			if err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, k)
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *writer) finish() []string {
	close(w.stop)
	<-w.done
	return w.acked
}

// TestFailover: under a write load the leader's node stops; writes resume
// on the others; the old leader restarts and catches up — from a streamed
// snapshot, the others having compacted their logs past it meanwhile.
// Every acknowledged write is readable on every member and every member
// ends with the same HashKV.
func TestFailover(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Edit(func(c *node.Config) { c.SnapshotCount = 50 }))
	urls := cl.URLs()
	c := nodetest.NewClient(t, urls...)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	w := startWriter(c)
	nodetest.Eventually(t, "100 writes are acknowledged", func() bool { return w.count() >= 100 })
	st, err := c.Status(ctx, urls[0])
	if err != nil {
		t.Fatal(err)
	}
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := map[uint64]string{}
	for _, m := range ml.Members {
		names[m.ID] = m.Name
	}
	leader := names[st.Leader]
	idx := map[string]int{"m0": 0, "m1": 1, "m2": 2}
	if err := cl.Stop(idx[leader]); err != nil {
		t.Fatal(err)
	}
	before := w.count()
	// Enough writes that the others compact their logs (--snapshot-count 50)
	// past everything the stopped member has.
	nodetest.Eventually(t, "writes resume without the leader", func() bool { return w.count() >= before+300 })

	cl.Restart(idx[leader])

	acked := w.finish()
	last, err := c.Put(ctx, "last", "v")
	if err != nil {
		t.Fatal(err)
	}
	nodetest.SameHashes(ctx, t, c, cl.URLs(), last.Header.Revision, "once the member is back")
	for i, n := range cl.Nodes() {
		r, err := cl.Client(i).Get(ctx, "load/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, kv := range r.Kvs {
			have[string(kv.Key)] = true
		}
		for _, k := range acked {
			if !have[k] {
				t.Fatalf("acknowledged write %s is missing on %v", k, n.ClientURLs())
			}
		}
	}
}

// TestRejoinWiped: a member whose data is lost is removed and added again
// (as etcd's runbook says); started empty with --initial-cluster-state
// existing, it finds the new id the cluster gave its peer URLs, receives a
// snapshot (the logs were compacted) and converges, under a write load.
func TestRejoinWiped(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Edit(func(c *node.Config) { c.SnapshotCount = 50 }))
	urls := cl.URLs()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := nodetest.NewClient(t, urls...)
	st, err := c.Status(ctx, urls[0])
	if err != nil {
		t.Fatal(err)
	}
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim *pb.Member
	for _, m := range ml.Members {
		if m.ID != st.Leader {
			victim = m
			break
		}
	}
	idx := map[string]int{"m0": 0, "m1": 1, "m2": 2}[victim.Name]
	var others []string
	for i, n := range cl.Nodes() {
		if i != idx {
			others = append(others, n.ClientURLs()...)
		}
	}
	c = nodetest.NewClient(t, others...)
	w := startWriter(c)
	nodetest.Eventually(t, "100 writes are acknowledged", func() bool { return w.count() >= 100 })
	if err := cl.Stop(idx); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cl.Config(idx).DataDir); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MemberRemove(ctx, victim.ID); err != nil {
		t.Fatal(err)
	}
	added, err := c.MemberAdd(ctx, victim.PeerURLs)
	if err != nil {
		t.Fatal(err)
	}
	if added.Member.ID == victim.ID {
		t.Fatalf("the removed id %x was given again", victim.ID)
	}
	before := w.count()
	nodetest.Eventually(t, "the logs move past the wiped member", func() bool { return w.count() >= before+200 })
	cl.RestartWith(idx, func(c *node.Config) { c.InitialClusterState = "existing" })

	acked := w.finish()
	last, err := c.Put(ctx, "last", "v")
	if err != nil {
		t.Fatal(err)
	}
	nodetest.SameHashes(ctx, t, c, cl.URLs(), last.Header.Revision, "once the member is back")
	r, err := cl.Client(idx).Get(ctx, "load/", clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSerializable())
	if err != nil || len(r.Kvs) < len(acked) {
		t.Fatalf("rejoined member has %d keys, %d acknowledged (%v)", len(r.Kvs), len(acked), err)
	}
	if ml, err := c.MemberList(ctx); err != nil || len(ml.Members) != 3 {
		t.Fatalf("members: %v %v", ml, err)
	}
}
