package compat

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
)

// TestHashKVUnchangedByDefrag: what `etcdctl endpoint hashkv --cluster`
// prints — each member's HashKV at a revision — is the same on every
// member and unchanged by `etcdctl defrag --cluster`, as on etcd, on a
// three-member Cairn in single-group and sharded mode (four ranges, the
// keys in each). Defragmentation rewrites storage, not data, so the hash
// must not move (issue 24, gap 2). The history hashed holds overwrites,
// deletes and a compaction.
func TestHashKVUnchangedByDefrag(t *testing.T) {
	for _, c := range []struct {
		name  string
		start func(t *testing.T) []string
	}{
		{"etcd", func(t *testing.T) []string { return startEtcdCluster(t, 3) }},
		{"cairn", func(t *testing.T) []string { return startCairnCluster(t, 3) }},
		{"cairn-sharded", func(t *testing.T) []string {
			return startCairnClusterWith(t, 3, func(c *node.Config) {
				c.Sharded = true
				c.InitialSplitKeys = [][]byte{[]byte("c"), []byte("k"), []byte("t")}
			})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			eps := c.start(t)
			cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			must := func(_ any, err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			keys := []string{"a", "b", "d", "j", "m", "s", "u", "z"} // two in each range
			for round := range 3 {
				for _, k := range keys {
					must(cli.Put(ctx, k, fmt.Sprintf("%s-%d", k, round)))
				}
			}
			must(cli.Delete(ctx, "b"))
			must(cli.Delete(ctx, "m"))
			resp, err := cli.Put(ctx, "z", "last")
			if err != nil {
				t.Fatal(err)
			}
			must(cli.Compact(ctx, resp.Header.Revision-4, clientv3.WithCompactPhysical()))
			must(cli.Put(ctx, "d", "after-compaction"))
			rev := resp.Header.Revision

			// What `endpoint hashkv --cluster` prints: every member's
			// answer once each has applied the writes (a follower's hash
			// is its own store's).
			hashkv := func() map[string]string {
				t.Helper()
				out := map[string]string{}
				for _, ep := range eps {
					h, err := cli.HashKV(ctx, ep, rev)
					if err != nil {
						t.Fatalf("hashkv %s at %d: %v", ep, rev, err)
					}
					out[ep] = fmt.Sprintf("hash %d, hash revision %d, compact revision %d", h.Hash, h.HashRevision, h.CompactRevision)
				}
				return out
			}
			var before map[string]string
			deadline := time.Now().Add(30 * time.Second)
			for {
				before = hashkv()
				if len(slices.Compact(slices.Sorted(maps.Values(before)))) == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("members disagree on hashkv at %d: %v", rev, before)
				}
				time.Sleep(100 * time.Millisecond) // polling a follower's catch-up, not a timing assumption
			}
			for _, ep := range eps { // defrag --cluster
				if _, err := cli.Defragment(ctx, ep); err != nil {
					t.Fatalf("defrag %s: %v", ep, err)
				}
			}
			after := hashkv()
			for _, ep := range eps {
				if after[ep] != before[ep] {
					t.Errorf("%s: hashkv at %d changed by defrag: %s, was %s", ep, rev, after[ep], before[ep])
				}
			}
		})
	}
}
