package node_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedWatch: watches over several ranges of a sharded node, with
// writers busy on every range at once, see etcd's sequence: every write in
// the watched keys exactly once, in revision order (the revisions the puts
// were answered with), the events of one write together; a watch from a
// past revision gets the history first; a progress notification is never
// ahead of an event, and a watch on an idle range still gets events from
// a busy one promptly enough to finish.
func TestShardedWatch(t *testing.T) {
	cli := nodetest.Start(t, 1, nodetest.Sharded("c", "h", "p")).Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Some history before the watches.
	var early []int64
	for i, k := range []string{"a1", "d1", "q1", "e1"} {
		resp, err := cli.Put(ctx, k, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		early = append(early, resp.Header.Revision)
	}
	all := cli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(early[1]), clientv3.WithPrevKV())
	mid := cli.Watch(ctx, "b", clientv3.WithRange("q"), clientv3.WithProgressNotify())
	one := cli.Watch(ctx, "z9") // a single key in the last range

	// Writers on every range at once.
	type write struct {
		key string
		rev int64
		del bool
	}
	var mu sync.Mutex
	var writes []write
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 40 {
				key := fmt.Sprintf("%c%d", "adqz"[w], i%5)
				if w == 3 && i%10 == 9 {
					key = "z9"
				}
				if i%7 == 6 {
					resp, err := cli.Delete(ctx, key)
					if err != nil {
						t.Error(err)
						return
					}
					if resp.Deleted > 0 {
						mu.Lock()
						writes = append(writes, write{key, resp.Header.Revision, true})
						mu.Unlock()
					}
					continue
				}
				resp, err := cli.Put(ctx, key, fmt.Sprint(i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				writes = append(writes, write{key, resp.Header.Revision, false})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.SortFunc(writes, func(a, b write) int { return int(a.rev - b.rev) })
	last := writes[len(writes)-1].rev

	// collect reads a watch until it has seen last (or, for one key, the
	// key's last write), checking order and headers on the way.
	collect := func(name string, wc clientv3.WatchChan, until int64) []write {
		var got []write
		prev := int64(0)
		for {
			select {
			case <-ctx.Done():
				t.Fatalf("%s: only %d events by the deadline, last at %d, want up to %d", name, len(got), prev, until)
			case resp, ok := <-wc:
				if !ok || resp.Err() != nil {
					t.Fatalf("%s: watch ended: %v", name, resp.Err())
				}
				if resp.IsProgressNotify() && resp.Header.Revision < prev {
					t.Fatalf("%s: progress at %d after an event at %d", name, resp.Header.Revision, prev)
				}
				for _, ev := range resp.Events {
					if ev.Kv.ModRevision <= prev {
						t.Fatalf("%s: event at %d after one at %d", name, ev.Kv.ModRevision, prev)
					}
					if ev.Kv.ModRevision > resp.Header.Revision {
						t.Fatalf("%s: event at %d in a response at %d", name, ev.Kv.ModRevision, resp.Header.Revision)
					}
					prev = ev.Kv.ModRevision
					got = append(got, write{string(ev.Kv.Key), ev.Kv.ModRevision, ev.Type == mvccpb.DELETE})
				}
				if prev >= until {
					return got
				}
			}
		}
	}
	want := func(in func(string) bool, from int64) []write {
		var out []write
		for i, k := range []string{"a1", "d1", "q1", "e1"} {
			if early[i] >= from && in(k) {
				out = append(out, write{k, early[i], false})
			}
		}
		for _, w := range writes {
			if in(w.key) {
				out = append(out, w)
			}
		}
		return out
	}
	check := func(name string, got, want []write) {
		if !slices.Equal(got, want) {
			t.Fatalf("%s:\n got  %v\n want %v", name, got, want)
		}
	}
	check("all", collect("all", all, last), want(func(string) bool { return true }, early[1]))
	inMid := func(k string) bool { return k >= "b" && k < "q" }
	wantMid := want(inMid, early[3]+1)
	check("b..q", collect("b..q", mid, wantMid[len(wantMid)-1].rev), wantMid)
	wantOne := want(func(k string) bool { return k == "z9" }, early[3]+1)
	check("z9", collect("z9", one, wantOne[len(wantOne)-1].rev), wantOne)

	// A progress request is answered at or above the last write, behind
	// its events.
	if err := cli.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	for resp := range mid {
		if resp.Err() != nil {
			t.Fatal(resp.Err())
		}
		if len(resp.Events) > 0 {
			t.Fatalf("events after the last write: %v", resp.Events)
		}
		if resp.IsProgressNotify() && resp.Header.Revision >= last {
			break
		}
	}
}

// TestShardedWatchCoalesced: the same watch from many clients of a sharded
// node holds one watcher in each range it spans, and every client gets
// every event; a different watch (prev_kv) has its own; when the clients
// go, so do the watchers.
func TestShardedWatchCoalesced(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("k2", "k5", "k8"))
	n := cl.Node(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	watchers := func() string {
		var out []int
		for _, r := range n.Ranges() {
			out = append(out, r.Watchers)
		}
		return fmt.Sprint(out)
	}
	wait := func(what, want string) {
		t.Helper()
		nodetest.WaitFor(ctx, t, func() error {
			if got := watchers(); got != want {
				return fmt.Errorf("watchers per range %s, want %s: %s", got, want, what)
			}
			return nil
		})
	}
	wctx, stop := context.WithCancel(ctx)
	var chans []clientv3.WatchChan
	for range 6 {
		c := cl.Client(0)
		chans = append(chans, c.Watch(clientv3.WithRequireLeader(wctx), "k", clientv3.WithPrefix()))
	}
	prev := cl.Client(0).Watch(wctx, "k", clientv3.WithPrefix(), clientv3.WithPrevKV())
	wait("six identical watches share one watcher per range, the prev_kv one has its own", "[2 2 2 2]")
	cli := cl.Client(0)
	var want []string
	for i := range 10 {
		resp, err := cli.Put(ctx, fmt.Sprintf("k%d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("k%d@%d", i, resp.Header.Revision))
	}
	for i, ch := range append(chans, prev) {
		var got []string
		for len(got) < len(want) {
			select {
			case wr := <-ch:
				if err := wr.Err(); err != nil {
					t.Fatalf("watch %d: %v", i, err)
				}
				for _, e := range wr.Events {
					got = append(got, fmt.Sprintf("%s@%d", e.Kv.Key, e.Kv.ModRevision))
				}
			case <-ctx.Done():
				t.Fatalf("watch %d got %v, want %v", i, got, want)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("watch %d got %v, want %v", i, got, want)
		}
	}
	stop()
	wait("the watches ended", "[0 0 0 0]")
}
