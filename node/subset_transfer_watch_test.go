package node_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// TestSubsetWatchLeaderChange (issue 21): five members, three replicas
// per range; a member holding no replica of a range watches keys of it
// (its mirror, fed by a holder) while another member writes them and the
// range's leadership moves between its holders four times, to and from
// the member feeding the watch: the watch sees every acknowledged write
// exactly once, in revision order, the same events as a watch from
// history on a holder, and is never canceled.
func TestSubsetWatchLeaderChange(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	const prefix = "jw-"
	id := rangeOf(t, cl, prefix)
	hs := holders(t, cl, id)
	w := outsider(t, cl, prefix)
	writer := -1 // the other member without the range: writes reach the leader by its hints
	for i := range cl.Size() {
		if i != w && !slices.Contains(hs, i) {
			writer = i
		}
	}
	t.Logf("range %d of %q on %v; member %d watches, member %d writes", id, prefix, hs, w, writer)

	// put writes through writer, retrying with a new value whatever did
	// not answer; acked are the writes answered, by value.
	var (
		mu    sync.Mutex
		acked = map[string]int64{} // value → revision its put answered
		tried = map[string]bool{}  // every value put, answered or not
		seq   int
		last  int64 // the revision of the last answered put
	)
	put := func() error {
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			mu.Lock()
			seq++
			key, val := fmt.Sprintf("%s%d", prefix, seq%7), fmt.Sprintf("v%d", seq)
			tried[val] = true
			mu.Unlock()
			pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
			r, err := cl.Client(writer).Put(pctx, key, val)
			pcancel()
			if err != nil {
				t.Logf("put %s=%s: %v (tried again with a new value)", key, val, err)
				continue
			}
			mu.Lock()
			acked[val] = r.Header.Revision
			last = max(last, r.Header.Revision)
			mu.Unlock()
			return nil
		}
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	if err := put(); err != nil {
		t.Fatal(err)
	}
	start := func() int64 { mu.Lock(); defer mu.Unlock(); return last }()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	live := &watchLog{}
	go live.run(cl.Client(w).Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(start), clientv3.WithPrevKV()))
	nodetest.Eventually(t, "the watch sees the first write", func() bool {
		evs, err := live.snapshot()
		return err != nil || len(evs) > 0
	})

	// Writes go on until the transfers are done.
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			if err := put(); err != nil {
				werr <- err
				return
			}
		}
	}()

	leaderOf := func() int {
		var l int
		nodetest.Eventually(t, fmt.Sprintf("range %d has a leader", id), func() bool {
			for _, h := range hs {
				for _, ri := range cl.Node(h).Ranges() {
					if ri.ID == id && ri.Leader != 0 {
						l = cl.MemberIndex(ri.Leader)
						return true
					}
				}
			}
			return false
		})
		return l
	}
	// Four transfers: to the feeder, from it, between the other two
	// holders, and back to the feeder (when it leads first: from it,
	// between the others twice, back to it).
	nc := operatorClient(t, cl, w)
	for step := range 4 {
		feeder := -1
		if m, ok := cl.Node(w).FeedSources()[id]; ok {
			feeder = cl.MemberIndex(m)
		}
		from := leaderOf()
		to := feeder
		if from == feeder || feeder < 0 || step == 1 || step == 2 {
			for _, h := range hs {
				if h != feeder && h != from {
					to = h
					break
				}
			}
		}
		t.Logf("transfer %d: range %d's lead from member %d to %d; member %d feeds the watch", step+1, id, from, to, feeder)
		before := count()
		nodetest.WaitFor(ctx, t, func() error {
			if _, err := nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: id, Member: cl.Node(to).MemberID()}); err != nil {
				return fmt.Errorf("transfer range %d's lead to member %d: %w", id, to, err)
			}
			if l := leaderOf(); l != to {
				return fmt.Errorf("member %d leads range %d, not %d", l, id, to)
			}
			return nil
		})
		// Some writes under the new leader before the next transfer.
		nodetest.Eventually(t, fmt.Sprintf("writes go on after transfer %d", step+1), func() bool { return count() >= before+20 })
	}
	close(stop)
	if err := <-werr; err != nil {
		t.Fatalf("writes: %v", err)
	}
	mu.Lock()
	end := last
	mu.Unlock()

	// history collects a watch's events from start through end.
	history := func(c *clientv3.Client) []*clientv3.Event {
		hctx, hcancel := context.WithCancel(ctx)
		defer hcancel()
		var evs []*clientv3.Event
		for wr := range c.Watch(hctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(start), clientv3.WithPrevKV()) {
			if err := wr.Err(); err != nil {
				t.Fatalf("watch from history: %v", err)
			}
			evs = append(evs, wr.Events...)
			if len(evs) > 0 && evs[len(evs)-1].Kv.ModRevision >= end {
				return evs
			}
		}
		t.Fatalf("watch from history ended before revision %d: %v", end, ctx.Err())
		return nil
	}
	ref := history(cl.Client(hs[0]))
	var want []string
	for _, ev := range ref {
		want = append(want, eventString(ev))
	}
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		got, err = live.snapshot()
		if err != nil {
			t.Fatalf("the watch through member %d ended: %v", w, err)
		}
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the watch's log, with a deadline
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the watch through member %d saw %d events\n%v\nwant (a holder's history) %d\n%v", w, len(got), got, len(want), want)
	}
	// The same events, checked: every answered put once, at its
	// revision, in revision order, and nothing but puts tried.
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]int64{}
	var prev int64
	for _, ev := range ref {
		v := string(ev.Kv.Value)
		if _, twice := seen[v]; twice || !tried[v] {
			t.Fatalf("event %s: seen before %v, put %v", eventString(ev), twice, tried[v])
		}
		if ev.Kv.ModRevision <= prev {
			t.Fatalf("event %s after revision %d", eventString(ev), prev)
		}
		prev = ev.Kv.ModRevision
		seen[v] = ev.Kv.ModRevision
	}
	for v, rev := range acked {
		if seen[v] != rev {
			t.Fatalf("put of %s answered at revision %d; the watch saw it at %d (0: never)", v, rev, seen[v])
		}
	}
	t.Logf("%d puts answered, %d tried, %d events", len(acked), len(tried), len(got))
}
