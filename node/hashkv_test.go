package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestHashKVStableAcrossDefrag: a defragmentation changes no member's
// HashKV, in single-group and in sharded mode. After writes in both ranges
// (overwrites, deletes) and a compaction, every member's hash at the last
// revision is taken, every member is defragmented, and each answers the
// same hash at that revision as before, as etcd's members do (its hash
// covers the keys, not the file's layout); `endpoint hashkv` is how
// operators check members agree, and they defragment often.
func TestHashKVStableAcrossDefrag(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			var opts []nodetest.Option
			if sharded {
				opts = append(opts, nodetest.Sharded("m"))
			}
			urls := nodetest.Start(t, 3, opts...).URLs()
			c := nodetest.NewClient(t, urls...)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// "a…" keys are in range 1, "z…" in range 2 (sharded).
			var compactAt int64
			for i := range 30 {
				key := fmt.Sprintf("%c%d", "az"[i%2], i%5)
				resp, err := c.Put(ctx, key, fmt.Sprint(i))
				if err != nil {
					t.Fatal(err)
				}
				if i == 15 {
					compactAt = resp.Header.Revision
				}
			}
			for _, k := range []string{"a1", "z2"} {
				if _, err := c.Delete(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.Compact(ctx, compactAt); err != nil {
				t.Fatal(err)
			}
			// In range 1: a member's Status reports range 1's revision,
			// which SameHashes waits on.
			last, err := c.Put(ctx, "a9", "last")
			if err != nil {
				t.Fatal(err)
			}
			rev := last.Header.Revision
			nodetest.SameHashes(ctx, t, c, urls, rev, "before the defragmentation")
			// At rev, and at the current revision (`endpoint hashkv`
			// without --rev): nothing is written meanwhile.
			before, beforeNow := map[string]uint32{}, map[string]uint32{}
			for _, u := range urls {
				h, err := c.HashKV(ctx, u, rev)
				if err != nil {
					t.Fatal(err)
				}
				before[u] = h.Hash
				if h, err = c.HashKV(ctx, u, 0); err != nil {
					t.Fatal(err)
				}
				beforeNow[u] = h.Hash
			}
			for _, u := range urls {
				if _, err := c.Defragment(ctx, u); err != nil {
					t.Fatalf("defragment %s: %v", u, err)
				}
			}
			for _, u := range urls {
				h, err := c.HashKV(ctx, u, rev)
				if err != nil {
					t.Fatal(err)
				}
				if h.Hash != before[u] || h.HashRevision != rev || h.CompactRevision != compactAt {
					t.Errorf("member %s: HashKV(%d) = %08x (revision %d, compacted at %d) after the defragmentation, %08x before (compacted at %d)",
						u, rev, h.Hash, h.HashRevision, h.CompactRevision, before[u], compactAt)
				}
				if h, err = c.HashKV(ctx, u, 0); err != nil {
					t.Fatal(err)
				}
				if h.Hash != beforeNow[u] {
					t.Errorf("member %s: HashKV(0) = %08x (revision %d) after the defragmentation, %08x before", u, h.Hash, h.HashRevision, beforeNow[u])
				}
			}
			nodetest.SameHashes(ctx, t, c, urls, rev, "after the defragmentation")
		})
	}
}
