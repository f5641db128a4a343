package nodetest

import (
	"context"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// SameHashes waits until every member at urls has reached rev (its Status
// header), then asks each for its HashKV at rev through c and fails tb if
// the members disagree: replicas that applied the same log hold the same
// data. what names the moment in the failure ("after the partition
// healed").
func SameHashes(ctx context.Context, tb testing.TB, c *clientv3.Client, urls []string, rev int64, what string) {
	tb.Helper()
	hashes := map[uint32]bool{}
	for _, u := range urls {
		Eventually(tb, "member "+u+" catches up", func() bool {
			st, err := c.Status(ctx, u)
			return err == nil && st.Header.Revision >= rev
		})
		h, err := c.HashKV(ctx, u, rev)
		if err != nil {
			tb.Fatal(err)
		}
		hashes[h.Hash] = true
	}
	if len(hashes) != 1 {
		tb.Fatalf("members diverge %s: %d different hashes", what, len(hashes))
	}
}
