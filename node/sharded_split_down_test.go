package node_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

// TestShardedSplitWhileDown: a member down while a range splits, whose
// logs are compacted past the split meanwhile (so it catches up from
// snapshots, not by applying the split), runs the new range once it is
// back and serves every key as the others do.
//
// Not in CI yet (CAIRN_SPLIT_DOWN=1 runs it): one CI run on 2 busy cores
// saw the split itself, with the member down, not finish in 90 s.
func TestShardedSplitWhileDown(t *testing.T) {
	if os.Getenv("CAIRN_SPLIT_DOWN") == "" {
		t.Skip("set CAIRN_SPLIT_DOWN=1: a split with a member down can hang under load (open, issue 6)")
	}
	var cfgs []node.Config
	var mu sync.Mutex
	nodes := startClusterWith(t, 3, func(c *node.Config) {
		c.Sharded = true
		c.SnapshotCount = 20
		c.InitialSplitKeys = [][]byte{[]byte("t")}
		mu.Lock()
		cfgs = append(cfgs, *c)
		mu.Unlock()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	first := newClient(t, nodes[0])
	for _, k := range []string{"a", "n", "u"} {
		if _, err := first.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}
	var cfg node.Config
	for _, c := range cfgs {
		if c.Name == "m2" {
			cfg = c
		}
	}
	if err := nodes[2].Close(); err != nil {
		t.Fatal(err)
	}
	// The ranges it led elect new leaders first: until then a request
	// may answer "no leader" (as etcd's does) or time out; what is under
	// test is the member's return.
	retry := func(what string, fn func() error) {
		t.Helper()
		for {
			err := fn()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%s while a member is down: %v", what, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	var child uint64
	retry("split", func() error {
		made, err := nodes[0].SplitRange(ctx, []byte("m"))
		if err == nil {
			child = made[1].Id
		}
		return err
	})
	for i := range 120 {
		retry("put", func() error {
			_, err := first.Put(ctx, fmt.Sprintf("%c%d", "cpv"[i%3], i), "while-down")
			return err
		})
	}
	back := restart(t, cfg)
	for {
		found := false
		for _, r := range back.Ranges() {
			found = found || (r.ID == child && r.Start == "m" && r.End == "t")
		}
		if here, err := back.SplitHere(child); found && here && err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the member back does not run range %d split off at m while it was down: %+v", child, back.Ranges())
		case <-time.After(20 * time.Millisecond):
		}
	}
	want, err := first.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, back)
	for {
		got, err := c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable())
		if err == nil && fmt.Sprint(got.Kvs) == fmt.Sprint(want.Kvs) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the member back serves %v (%v), want %d keys as the others", got, err, len(want.Kvs))
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := c.Put(ctx, "o", "after"); err != nil {
		t.Fatal(err)
	}
}
