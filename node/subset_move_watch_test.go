package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// TestSubsetWatchMoveHere: five members, three replicas per range; a
// member watches keys over several ranges, among them an idle one it holds
// no replica of (its mirror, fed by a holder, reports progress only when
// the watch asks), while another member writes keys of a busy range, and
// the idle range's replica on the member feeding the watch moves to the
// watching member itself. The watch goes on seeing every write, in order,
// the same events as a watch from history on a holder: the progress it
// asked of the idle range's old feed is asked again of the new one (the
// robustness suite's 4node-sharded-etcd-move-replica once lost its
// recorder's watch there, waiting on an answer that never came).
func TestSubsetWatchMoveHere(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const prefix, from, to = "mw-", "c", "mx" // [c, mx) meets five ranges; writes go to [l, n)
	id := rangeOf(t, cl, from)                // the idle range [b, d)
	hs := holders(t, cl, rangeOf(t, cl, prefix))
	w := outsider(t, cl, from)
	writer := (w + 1) % cl.Size()
	seq := 0
	put := func() int64 {
		t.Helper()
		var rev int64
		nodetest.WaitFor(ctx, t, func() error {
			seq++
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			defer pcancel()
			r, err := cl.Client(writer).Put(pctx, fmt.Sprintf("%s%d", prefix, seq%5), fmt.Sprintf("v%d", seq))
			if err != nil {
				return err
			}
			rev = r.Header.Revision
			return nil
		})
		return rev
	}
	start := put()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	live := &watchLog{}
	go live.run(cl.Client(w).Watch(wctx, from, clientv3.WithRange(to), clientv3.WithRev(start), clientv3.WithPrevKV()))
	nodetest.Eventually(t, "the watch sees the first write", func() bool {
		evs, err := live.snapshot()
		return err != nil || len(evs) > 0
	})
	feeder, ok := cl.Node(w).FeedSources()[id]
	if !ok {
		t.Fatalf("member %d has no feed of range %d", w, id)
	}
	src := cl.MemberIndex(feeder)

	// Writes while the replica moves from the feeder to the watcher.
	nc := operatorClient(t, cl, writer)
	moved := make(chan error, 1)
	go func() {
		_, err := nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: id, FromMember: uint64(feeder), ToMember: cl.Node(w).MemberID()})
		moved <- err
	}()
	var end int64
	for moving := true; moving; {
		select {
		case err := <-moved:
			if err != nil {
				t.Fatalf("move range %d from member %d to member %d: %v", id, src, w, err)
			}
			moving = false
		default:
		}
		end = put()
	}
	for range 20 {
		end = put()
	}
	t.Logf("range %d moved from member %d to member %d, which watches; last write at %d", id, src, w, end)

	var want []string
	hctx, hcancel := context.WithCancel(ctx)
	for wr := range cl.Client(hs[0]).Watch(hctx, from, clientv3.WithRange(to), clientv3.WithRev(start), clientv3.WithPrevKV()) {
		if err := wr.Err(); err != nil {
			t.Fatalf("watch from history: %v", err)
		}
		for _, ev := range wr.Events {
			want = append(want, eventString(ev))
		}
		if len(wr.Events) > 0 && wr.Events[len(wr.Events)-1].Kv.ModRevision >= end {
			break
		}
	}
	hcancel()
	var got []string
	nodetest.Eventually(t, fmt.Sprintf("the watch through member %d sees the %d events up to revision %d", w, len(want), end), func() bool {
		var err error
		got, err = live.snapshot()
		if err != nil {
			t.Fatalf("the watch through member %d ended: %v", w, err)
		}
		return len(got) >= len(want)
	})
	if !slices.Equal(got, want) {
		t.Fatalf("the watch through member %d saw\n%v\nwant (a holder's history)\n%v", w, got, want)
	}
}
