package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// written is one write as its client saw it: the event a watch must show.
type written struct {
	del      bool
	key, val string
	rev      int64
	prev     string // "" if none
}

func (w written) String() string {
	op := "put"
	if w.del {
		op = "del"
	}
	return fmt.Sprintf("%s %s=%q @%d prev=%q", op, w.key, w.val, w.rev, w.prev)
}

// eventString is ev as a wrote's String.
func eventString(ev *clientv3.Event) string {
	w := written{del: ev.Type == mvccpb.DELETE, key: string(ev.Kv.Key), rev: ev.Kv.ModRevision}
	if !w.del {
		w.val = string(ev.Kv.Value)
	}
	if ev.PrevKv != nil {
		w.prev = string(ev.PrevKv.Value)
	}
	return w.String()
}

// watchLog collects a watch's events and progress notifications.
type watchLog struct {
	mu       sync.Mutex
	events   []string
	progress []int64 // header revisions of progress notifications
	seenAt   []int   // len(events) when each progress came
	err      error
}

func (l *watchLog) run(wc clientv3.WatchChan) {
	for wr := range wc {
		l.mu.Lock()
		if err := wr.Err(); err != nil && l.err == nil {
			l.err = err
		}
		if wr.IsProgressNotify() {
			l.progress = append(l.progress, wr.Header.Revision)
			l.seenAt = append(l.seenAt, len(l.events))
		}
		for _, ev := range wr.Events {
			l.events = append(l.events, eventString(ev))
		}
		l.mu.Unlock()
	}
}

func (l *watchLog) snapshot() (evs []string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events), l.err
}

// TestSubsetWatch: five members, three replicas per range, ten ranges; a
// member holding only some of the ranges a prefix spans watches it (prev_kv,
// a NOPUT filter, progress) while members write in every range: the
// watches see exactly what was written, in revision order; then the member
// feeding it a range held elsewhere stops while writes go on: still exact,
// nothing missed, nothing twice.
func TestSubsetWatch(t *testing.T) {
	cl := startSubsets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The watched keys [c, k) meet ranges [b,d) [d,f) [f,h) [h,j) [j,l):
	// a member holding some of them and not others.
	spanKeys := []string{"c", "d", "f", "h", "j"}
	o := -1
	var remote []string
	for i := range cl.Size() {
		remote = remote[:0]
		for _, k := range spanKeys {
			if !slices.Contains(holders(t, cl, rangeOf(t, cl, k)), i) {
				remote = append(remote, k)
			}
		}
		if len(remote) > 0 && len(remote) < len(spanKeys) {
			o = i
			break
		}
	}
	if o < 0 {
		t.Fatal("no member holds some but not all of the watched ranges")
	}
	t.Logf("member %d watches; the ranges of %v are held elsewhere", o, remote)
	cli := cl.Client(o)

	var (
		mu   sync.Mutex
		done []written
		seq  int
	)
	values := map[string]string{}
	inSpan := func(k string) bool { return k >= "c" && k < "k" }
	// write puts (or deletes) key through member m's client, recording
	// what the watch must show; a write whose outcome is unknown (the
	// member stopping) is read back before it is recorded or retried.
	write := func(m int, key string, del bool) {
		t.Helper()
		c := cl.Client(m)
		mu.Lock()
		seq++
		val := fmt.Sprintf("v%d", seq)
		prev := values[key]
		mu.Unlock()
		for attempt := 0; ; attempt++ {
			if ctx.Err() != nil {
				t.Fatalf("write %s: %v", key, ctx.Err())
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			var rev int64
			var err error
			if del {
				var r *clientv3.DeleteResponse
				if r, err = c.Delete(wctx, key); err == nil {
					rev = r.Header.Revision
				}
			} else {
				var r *clientv3.PutResponse
				if r, err = c.Put(wctx, key, val); err == nil {
					rev = r.Header.Revision
				}
			}
			wcancel()
			if err == nil {
				mu.Lock()
				if del {
					delete(values, key)
					done = append(done, written{del: true, key: key, rev: rev, prev: prev})
				} else {
					values[key] = val
					done = append(done, written{key: key, val: val, rev: rev, prev: prev})
				}
				mu.Unlock()
				return
			}
			if del {
				t.Fatalf("delete %s: %v", key, err) // deletes only while every member is up
			}
			// Did it apply? Read it back through another member.
			r, gerr := cl.Client(o).Get(ctx, key)
			if gerr == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == val {
				mu.Lock()
				values[key] = val
				done = append(done, written{key: key, val: val, rev: r.Kvs[0].ModRevision, prev: prev})
				mu.Unlock()
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) && attempt > 50 {
				t.Fatalf("put %s: %v", key, err)
			}
			time.Sleep(50 * time.Millisecond) // back off; the cluster elects
		}
	}
	expectWritten := func(noPut bool) []written {
		mu.Lock()
		defer mu.Unlock()
		ws := slices.Clone(done)
		slices.SortFunc(ws, func(a, b written) int { return int(a.rev - b.rev) })
		var out []written
		for _, w := range ws {
			if inSpan(w.key) && !(noPut && !w.del) {
				out = append(out, w)
			}
		}
		return out
	}
	expect := func(noPut bool) []string {
		var out []string
		for _, w := range expectWritten(noPut) {
			out = append(out, w.String())
		}
		return out
	}

	// A first write, so that the watches start from history.
	write(0, "c0", false)
	start := done[0].rev
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	all, dels := &watchLog{}, &watchLog{}
	go all.run(cli.Watch(wctx, "c", clientv3.WithRange("k"), clientv3.WithRev(start), clientv3.WithPrevKV(), clientv3.WithProgressNotify()))
	go dels.run(cli.Watch(wctx, "c", clientv3.WithRange("k"), clientv3.WithRev(start), clientv3.WithPrevKV(), clientv3.WithFilterPut()))

	keys := []string{"a1", "c1", "d1", "e1", "f1", "g1", "h1", "i1", "j1", "k1", "x1"}
	for i := 0; i < 3; i++ {
		for j, k := range keys {
			write((i+j)%cl.Size(), k, false)
		}
	}
	for j, k := range []string{"c1", "e1", "h1", "j1", "k1"} {
		write(j%cl.Size(), k, true)
	}
	waitExact := func(what string) {
		t.Helper()
		for _, w := range []struct {
			name  string
			log   *watchLog
			noPut bool
		}{{"all", all, false}, {"deletes", dels, true}} {
			want := expect(w.noPut)
			var got []string
			deadline := time.Now().Add(15 * time.Second)
			for {
				var err error
				got, err = w.log.snapshot()
				if err != nil {
					t.Fatalf("%s: watch %s: %v", what, w.name, err)
				}
				if len(got) >= len(want) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s: watch %s saw\n%v\nwant\n%v", what, w.name, got, want)
			}
		}
	}
	waitExact("before the stop")

	// A progress request: its revision covers every write so far; at
	// every progress notification, the events up to its revision, and
	// only those, have come.
	lastRev := func() int64 { mu.Lock(); defer mu.Unlock(); return done[len(done)-1].rev }()
	all.mu.Lock()
	n0 := len(all.progress)
	all.mu.Unlock()
	if err := cli.RequestProgress(wctx); err != nil {
		t.Fatal(err)
	}
	nodetest.Eventually(t, "a progress notification at or above the last write", func() bool {
		all.mu.Lock()
		defer all.mu.Unlock()
		return slices.ContainsFunc(all.progress[n0:], func(p int64) bool { return p >= lastRev })
	})
	all.mu.Lock()
	for i, p := range all.progress {
		n := 0
		for _, w := range expectWritten(false) {
			if w.rev <= p {
				n++
			}
		}
		if all.seenAt[i] != n {
			t.Errorf("progress at %d after %d events, want %d", p, all.seenAt[i], n)
		}
	}
	all.mu.Unlock()

	// Stop the member feeding a remote range of the span, writing on.
	srcs := cl.Node(o).FeedSources()
	victim := -1
	for _, k := range remote {
		if m, ok := srcs[rangeOf(t, cl, k)]; ok {
			victim = cl.MemberIndex(m)
			break
		}
	}
	if victim < 0 || victim == o {
		t.Fatalf("no member feeds member %d the ranges of %v: %v", o, remote, srcs)
	}
	t.Logf("stopping member %d, which feeds member %d", victim, o)
	victimID := cl.Node(victim).MemberID()
	// Writes through live members holding the key's range (a member
	// without it would route by leader hints that may name the stopped
	// member for a while: that is S5's, not the watch's).
	live := map[string][]int{}
	for _, k := range keys {
		for _, h := range holders(t, cl, rangeOf(t, cl, k)) {
			if h != victim {
				live[k] = append(live[k], h)
			}
		}
	}
	writerFor := func(key string, n int) int { return live[key][n%len(live[key])] }
	stopped := make(chan error, 1)
	go func() { stopped <- cl.Stop(victim) }()
	for i := 0; i < 3; i++ {
		for j, k := range keys {
			write(writerFor(k, i+j), fmt.Sprintf("%s-%d", k, i), false)
		}
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop member %d: %v", victim, err)
	}
	for j, k := range keys {
		write(writerFor(k, j), k+"-after", false)
	}
	waitExact("after the feeding member stopped")
	for id, m := range cl.Node(o).FeedSources() {
		if m == victimID {
			t.Fatalf("member %d's mirror of range %d still fed by the stopped member %d", o, id, victim)
		}
	}
}
