package node_test

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// next waits for the next watch response, with a deadline.
func next(t *testing.T, ch clientv3.WatchChan) clientv3.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no watch response within 20s")
	}
	return clientv3.WatchResponse{}
}

type ev struct {
	typ      mvccpb.Event_EventType
	key, val string
	mod      int64
	prev     string
}

func events(r clientv3.WatchResponse) []ev {
	var out []ev
	for _, e := range r.Events {
		x := ev{typ: e.Type, key: string(e.Kv.Key), val: string(e.Kv.Value), mod: e.Kv.ModRevision}
		if e.PrevKv != nil {
			x.prev = string(e.PrevKv.Value)
		}
		out = append(out, x)
	}
	return out
}

// collect reads responses until n events arrived.
func collect(t *testing.T, ch clientv3.WatchChan, n int) []ev {
	t.Helper()
	var out []ev
	for len(out) < n {
		out = append(out, events(next(t, ch))...)
	}
	if len(out) != n {
		t.Fatalf("got %d events, want %d: %v", len(out), n, out)
	}
	return out
}

// TestWatch: history replay from a past revision with prev_kv, live events
// after it, filters, progress requests and a compacted start revision.
func TestWatch(t *testing.T) {
	c := nodetest.Start(t, 1).Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	put := func(k, v string) int64 {
		r, err := c.Put(ctx, k, v)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	first := put("app/a", "1") // 2
	put("app/b", "1")          // 3
	put("other", "x")          // 4
	put("app/a", "2")          // 5

	w := c.Watch(clientv3.WithRequireLeader(ctx), "app/", clientv3.WithPrefix(), clientv3.WithRev(first), clientv3.WithPrevKV())
	got := collect(t, w, 3)
	want := []ev{{mvccpb.PUT, "app/a", "1", 2, ""}, {mvccpb.PUT, "app/b", "1", 3, ""}, {mvccpb.PUT, "app/a", "2", 5, "1"}}
	if !equalEvs(got, want) {
		t.Fatalf("replayed %v, want %v", got, want)
	}
	if _, err := c.Delete(ctx, "app/a"); err != nil { // 6
		t.Fatal(err)
	}
	put("app/c", "1") // 7
	got = collect(t, w, 2)
	want = []ev{{mvccpb.DELETE, "app/a", "", 6, "2"}, {mvccpb.PUT, "app/c", "1", 7, ""}}
	if !equalEvs(got, want) {
		t.Fatalf("live %v, want %v", got, want)
	}

	// NOPUT from now: only the delete shows up.
	wd := c.Watch(ctx, "app/", clientv3.WithPrefix(), clientv3.WithFilterPut())
	if err := c.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	put("app/d", "1")                                 // 8
	if _, err := c.Delete(ctx, "app/b"); err != nil { // 9
		t.Fatal(err)
	}
	got = collect(t, wd, 1)
	if !equalEvs(got, []ev{{mvccpb.DELETE, "app/b", "", 9, ""}}) {
		t.Fatalf("NOPUT watcher got %v", got)
	}

	// A progress request is answered after the events before it.
	wp := c.Watch(ctx, "app/", clientv3.WithPrefix(), clientv3.WithRev(first))
	if err := c.RequestProgress(ctx); err != nil { // the stream of ctx: wp's
		t.Fatal(err)
	}
	var seen int
	for {
		r := next(t, wp)
		if r.IsProgressNotify() {
			if r.Header.Revision != 9 || seen != 7 {
				t.Fatalf("progress at %d after %d events, want 9 after 7", r.Header.Revision, seen)
			}
			break
		}
		seen += len(r.Events)
	}

	// Below the compacted revision: cancelled with the compact revision.
	if _, err := c.Compact(ctx, 7); err != nil {
		t.Fatal(err)
	}
	wc := c.Watch(ctx, "app/", clientv3.WithPrefix(), clientv3.WithRev(3))
	r := next(t, wc)
	if r.CompactRevision != 7 || r.Err() != rpctypes.ErrCompacted {
		t.Fatalf("watch below compaction: compact=%d err=%v", r.CompactRevision, r.Err())
	}
	// At the compacted revision itself, history still replays.
	wk := c.Watch(ctx, "app/", clientv3.WithPrefix(), clientv3.WithRev(7))
	got = collect(t, wk, 3)
	if got[0].key != "app/c" || got[0].mod != 7 || got[2].mod != 9 {
		t.Fatalf("replay from the compacted revision: %v", got)
	}
}

func equalEvs(a, b []ev) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
