package node_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// subsetWatchCoalesced (TestSubsets/WatchCoalesced): fifty identical
// watches through a member that holds no replica of the watched range
// share its one mirror, fed by one stream (one feed more on that member,
// not fifty), and each sees every event once, in order.
func subsetWatchCoalesced(t *testing.T, cl *nodetest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var d *placementpb.RangeDescriptor
	for _, r := range rangeMapOf(t, cl) {
		if bytes.Compare(r.Start, []byte("c")) <= 0 && (len(r.End) == 0 || bytes.Compare([]byte("c"), r.End) < 0) {
			d = r
		}
	}
	if d == nil {
		t.Fatal("no range holds c")
	}
	held := holders(t, cl, d.Id)
	out := -1
	for i := range cl.Size() {
		if !slices.Contains(held, i) {
			out = i
			break
		}
	}
	if out < 0 {
		t.Fatalf("every member holds range %d", d.Id)
	}
	n, c := cl.Node(out), cl.Client(out)
	before := n.MirrorFeeds()

	const watchers = 50
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	chans := make([]clientv3.WatchChan, watchers)
	for i := range chans {
		chans[i] = c.Watch(wctx, "c/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		if resp := <-chans[i]; !resp.Created || resp.Err() != nil {
			t.Fatalf("watch %d: not created: %+v, %v", i, resp, resp.Err())
		}
	}
	if got := n.MirrorFeeds() - before; got > 1 {
		t.Fatalf("%d identical watches opened %d feeds on member %d, want at most one", watchers, got, out)
	}

	const puts = 5
	writer := cl.Client(held[0])
	var want []string
	for i := range puts {
		key := fmt.Sprintf("c/%d", i)
		if _, err := writer.Put(ctx, key, "v"); err != nil {
			t.Fatal(err)
		}
		want = append(want, key)
	}
	for i, ch := range chans {
		var got []string
		for len(got) < puts {
			select {
			case resp, ok := <-ch:
				if !ok || resp.Err() != nil {
					t.Fatalf("watch %d ended after %v: %v", i, got, resp.Err())
				}
				for _, ev := range resp.Events {
					got = append(got, string(ev.Kv.Key))
				}
			case <-ctx.Done():
				t.Fatalf("watch %d saw %v, want %v", i, got, want)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("watch %d saw %v, want %v", i, got, want)
		}
	}
	if got := n.MirrorFeeds() - before; got > 1 {
		t.Fatalf("after the events, member %d has %d feeds more, want at most one", out, got)
	}
}
