package node_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// loadWatch is one watch of TestMoveUnderLoad: on member, from revision
// from on, its events as eventString shows them.
type loadWatch struct {
	name   string
	member int
	from   int64
	log    *watchLog
	closed atomic.Bool // its channel closed (canceled) before the end
}

// TestMoveUnderLoad: five members, three replicas per range, four ranges;
// range 2 moves away from a member, back to it and away again, while
// writers on every member put and delete keys in every range, a reader
// reads all of them at once (linearizable, through each member in turn),
// watches over all the ranges run on the member the range leaves, on the
// member it moves to, on one that never holds it, and on the member it
// left once it is back there, and a lease with keys in every range is
// kept alive. No request fails; each read is the model's state at its
// revision, and no older than the last write done before it; every watch
// gets exactly the writes from its start, in revision order, none
// missing, none twice, and is never canceled; the lease and its keys live
// on; every member ends with the model's state.
func TestMoveUnderLoad(t *testing.T) {
	cl := nodetest.Start(t, 5, nodetest.Sharded("k/f", "k/m", "k/t"), nodetest.RangeReplicas(3),
		nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// One key prefix per range: k/a… range 1, k/g… range 2, k/n… 3, k/u… 4.
	prefixes := []string{"k/a", "k/g", "k/n", "k/u"}
	for i, p := range prefixes {
		if got := rangeOf(t, cl, p); got != uint64(i+1) {
			t.Fatalf("%s is in range %d, want %d", p, got, i+1)
		}
	}
	hs := holders(t, cl, 2)
	var others []int
	for i := range cl.Size() {
		if !slices.Contains(hs, i) {
			others = append(others, i)
		}
	}
	// src loses its replica of range 2, gets one back, and loses it
	// again; dst gains one and loses it; never never holds one.
	src, dst, never := hs[0], others[0], others[1]
	t.Logf("range 2 on members %v: moves %d→%d→%d→%d; member %d never holds it", hs, src, dst, src, dst, never)

	var (
		mu     sync.Mutex
		writes []written // every acknowledged write
		errs   []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	var lastDone atomic.Int64 // the highest revision of a write done
	record := func(w written) {
		mu.Lock()
		writes = append(writes, w)
		mu.Unlock()
		for {
			old := lastDone.Load()
			if w.rev <= old || lastDone.CompareAndSwap(old, w.rev) {
				return
			}
		}
	}

	// A lease with a key in every range, kept alive through the member
	// range 2 leaves (its home, range 1, is elsewhere or not).
	lc := cl.Client(src)
	lease, err := lc.Grant(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range prefixes {
		key := p + "-lease"
		r, err := lc.Put(ctx, key, "held", clientv3.WithLease(lease.ID))
		if err != nil {
			t.Fatal(err)
		}
		record(written{key: key, val: "held", rev: r.Header.Revision})
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ka, err := lc.KeepAlive(kctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kaCount atomic.Int64
	kaDone := make(chan struct{})
	go func() {
		defer close(kaDone)
		for range ka {
			kaCount.Add(1)
		}
	}()

	// Watches over every range, from the revision after the lease's keys.
	start, err := cl.Client(0).Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	var watches []*loadWatch
	watchFrom := func(name string, member int, from int64) {
		w := &loadWatch{name: name, member: member, from: from, log: &watchLog{}}
		wc := cl.Client(member).Watch(ctx, "k/", clientv3.WithPrefix(), clientv3.WithRev(from))
		go func() {
			w.log.run(wc)
			w.closed.Store(true)
		}()
		watches = append(watches, w)
	}
	first := start.Header.Revision + 1
	watchFrom("on the member range 2 leaves", src, first)
	watchFrom("on the member range 2 moves to", dst, first)
	watchFrom("on a member never holding range 2", never, first)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Writers: each member puts (or deletes one of its own keys) in every
	// range in turn.
	for i := range cl.Size() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cl.Client(i)
			live := map[string]bool{}
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%s-%d-%d", prefixes[seq%len(prefixes)], i, seq/len(prefixes)%8)
				octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
				if live[key] && seq%5 == 0 {
					r, err := c.Delete(octx, key)
					ocancel()
					if err != nil {
						fail(fmt.Errorf("member %d: delete %s: %w", i, key, err))
						return
					}
					delete(live, key)
					record(written{del: true, key: key, rev: r.Header.Revision})
					continue
				}
				val := fmt.Sprintf("%d.%d", i, seq)
				r, err := c.Put(octx, key, val)
				ocancel()
				if err != nil {
					fail(fmt.Errorf("member %d: put %s: %w", i, key, err))
					return
				}
				live[key] = true
				record(written{key: key, val: val, rev: r.Header.Revision})
			}
		}()
	}
	// The reader: all four ranges at once, through each member in turn.
	type read struct {
		rev, atLeast int64
		kvs          map[string]string
	}
	var reads []read
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			atLeast := lastDone.Load()
			octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
			r, err := cl.Client(i%cl.Size()).Get(octx, "k/", clientv3.WithPrefix())
			ocancel()
			if err != nil {
				fail(fmt.Errorf("member %d: read: %w", i%cl.Size(), err))
				return
			}
			kvs := map[string]string{}
			for _, kv := range r.Kvs {
				kvs[string(kv.Key)] = string(kv.Value)
			}
			mu.Lock()
			reads = append(reads, read{r.Header.Revision, atLeast, kvs})
			mu.Unlock()
		}
	}()
	stopLoad := func() {
		close(stop)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("%d requests failed during the moves; first: %v", len(errs), errors.Join(errs[:min(len(errs), 3)]...))
		}
	}

	nc := operatorClient(t, cl, never)
	move := func(from, to int) {
		t.Helper()
		if _, err := nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 2, FromMember: cl.Node(from).MemberID(),
			ToMember: cl.Node(to).MemberID()}); err != nil {
			t.Fatalf("move range 2 from member %d to %d: %v", from, to, err)
		}
		nodetest.Eventually(t, fmt.Sprintf("member %d dropped its replica of range 2", from), func() bool {
			_, runs := cl.Node(from).LocalReplicas()[2]
			return !runs
		})
	}
	// waitWrites lets the load run until n more writes are done.
	waitWrites := func(n int) {
		t.Helper()
		mu.Lock()
		want := len(writes) + n
		mu.Unlock()
		nodetest.Eventually(t, fmt.Sprintf("%d more writes", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(writes) >= want || len(errs) > 0
		})
	}
	waitWrites(50)
	move(src, dst)
	waitWrites(50)
	move(dst, src)
	// A watch on the replica src has again.
	now, err := cl.Client(src).Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	watchFrom("on the member range 2 came back to", src, now.Header.Revision+1)
	waitWrites(50)
	move(src, dst)
	waitWrites(50)
	stopLoad()

	mu.Lock()
	defer mu.Unlock()
	sort.Slice(writes, func(i, j int) bool { return writes[i].rev < writes[j].rev })
	for i := 1; i < len(writes); i++ {
		if writes[i].rev == writes[i-1].rev {
			t.Fatalf("two writes at revision %d: %v, %v", writes[i].rev, writes[i-1], writes[i])
		}
	}
	// stateAt is the model's keys and values at rev.
	stateAt := func(rev int64) map[string]string {
		out := map[string]string{}
		for _, w := range writes {
			if w.rev > rev {
				break
			}
			if w.del {
				delete(out, w.key)
			} else {
				out[w.key] = w.val
			}
		}
		return out
	}
	for _, r := range reads {
		if r.rev < r.atLeast {
			t.Fatalf("a read at revision %d after a write done at %d", r.rev, r.atLeast)
		}
		if want := stateAt(r.rev); !maps.Equal(r.kvs, want) {
			t.Fatalf("the read at revision %d is not the model's state there:\n got  %v\n want %v", r.rev, r.kvs, want)
		}
	}
	last := writes[len(writes)-1].rev
	want := stateAt(last)
	for i := range cl.Size() {
		r, err := cl.Client(i).Get(ctx, "k/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, kv := range r.Kvs {
			got[string(kv.Key)] = string(kv.Value)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("member %d's final state is not the model's:\n got  %v\n want %v", i, got, want)
		}
	}

	// Every watch: exactly the writes from its start, in order.
	for _, w := range watches {
		var exp []string
		for _, wr := range writes {
			if wr.rev >= w.from {
				wr.prev = ""
				exp = append(exp, wr.String())
			}
		}
		nodetest.WaitFor(ctx, t, func() error {
			got, err := w.log.snapshot()
			if err != nil || w.closed.Load() {
				t.Fatalf("watch %s (member %d) ended: %v (%d events)", w.name, w.member, err, len(got))
			}
			if len(got) < len(exp) {
				return fmt.Errorf("watch %s (member %d) has %d of %d events", w.name, w.member, len(got), len(exp))
			}
			return nil
		})
		got, _ := w.log.snapshot()
		if !slices.Equal(got, exp) {
			i := 0
			for i < min(len(got), len(exp)) && got[i] == exp[i] {
				i++
			}
			t.Fatalf("watch %s (member %d) from %d: first difference at event %d of %d:\n got  %v\n want %v",
				w.name, w.member, w.from, i, len(exp), got[i:min(len(got), i+3)], exp[i:min(len(exp), i+3)])
		}
	}

	// The lease lived on with its keys.
	select {
	case <-kaDone:
		t.Fatal("the lease's keepalive channel closed during the moves")
	default:
	}
	ttl, err := lc.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) != len(prefixes) {
		t.Fatalf("the lease after the moves: %v (%v), want alive with %d keys", ttl, err, len(prefixes))
	}
	t.Logf("%d writes, %d reads, %d keepalives; revisions %d to %d", len(writes), len(reads), kaCount.Load(), first, last)
}
