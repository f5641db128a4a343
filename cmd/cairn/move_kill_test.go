package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/router"
)

// moveKillSplitKey is where TestMoveKill9 splits range 1: range 2 holds
// the keys from it on.
const moveKillSplitKey = "m"

// The keys of TestMoveKill9: the survivors' writers put and delete keys
// of both ranges (moveKillLow… in range 1, moveKillHigh… in range 2),
// which the reads and watches cover ([moveKillLow, moveKillEnd), across
// both ranges); the destination's own writers put keys of range 2 outside
// that span (moveKillDest…), their puts failing when it dies.
const (
	moveKillLow  = "a/"
	moveKillHigh = "n/"
	moveKillEnd  = "o"
	moveKillDest = "z/"
)

// moveKillSettle bounds the wait for range 2 to settle after the
// destination restarted: a move the mover cannot finish is undone once the
// destination has not caught up within its patience (30 s).
const moveKillSettle = 40 * time.Second

// moveKillOp bounds each request of a survivor's client: far above a
// failover (an election is 500 ms here), so that only a request the
// cluster failed to answer fails.
const moveKillOp = 30 * time.Second

// mkWrite is one acknowledged write of TestMoveKill9's model.
type mkWrite struct {
	key, val string
	del      bool
	rev      int64
}

// String is the write as a watch event shows it (the value shortened).
func (w mkWrite) String() string {
	if w.del {
		return fmt.Sprintf("delete %s@%d", w.key, w.rev)
	}
	return fmt.Sprintf("put %s=%s@%d", w.key, shortValue(w.val), w.rev)
}

// shortValue is a value without its padding.
func shortValue(v string) string { v, _, _ = strings.Cut(v, "-"); return v }

// mkWatch records what one watch of TestMoveKill9 delivers, and whether
// it ended (canceled, closed) before the test stopped it.
type mkWatch struct {
	name string
	from int64
	mu   sync.Mutex
	got  []string
	end  error
}

func (w *mkWatch) run(wc clientv3.WatchChan) {
	for resp := range wc {
		if err := resp.Err(); err != nil || resp.Canceled {
			w.mu.Lock()
			w.end = fmt.Errorf("canceled: %v (%s)", err, resp.CancelReason)
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		for _, ev := range resp.Events {
			wr := mkWrite{key: string(ev.Kv.Key), val: string(ev.Kv.Value), del: ev.Type == mvccpb.DELETE, rev: ev.Kv.ModRevision}
			w.got = append(w.got, wr.String())
		}
		w.mu.Unlock()
	}
	w.mu.Lock()
	if w.end == nil {
		w.end = errors.New("its channel closed")
	}
	w.mu.Unlock()
}

func (w *mkWatch) snapshot() ([]string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.got), w.end
}

// TestMoveKill9 (issue 21): five members holding each range on three of
// them (--range-replicas 3), range 1 split so that range 2 exists.
// `cairn range move 2` from one of range 2's members to one holding none
// runs in the background, and the destination is killed with SIGKILL as
// soon as `cairn ranges -w json` shows it in range 2's replica set, then
// restarted. Meanwhile, through the four members that are never killed
// (the survivors): writers put and delete keys of both ranges, a reader
// reads both ranges at once linearizably and another serializably, two
// watches cover both ranges, and a lease with a key in each range is kept
// alive; writers through the destination put keys of range 2 too. No
// request through a survivor fails; each read is the model's state at its
// revision (a linearizable one no older than the last write done before
// it); each watch gets every write from its start exactly once, in
// revision order, and is never canceled; the lease lives on with its
// keys. Range 2 then settles with three voters and its move closed:
// either finished (the destination holds it, the source does not) or
// undone (the original three hold it). Every member ends with the model's
// state, every acknowledged write of the destination's writers is there,
// and `cairn check` finds every replica equal (exit 0).
func TestMoveKill9(t *testing.T) {
	const size = 5
	pc := launchCluster(t, size, "move-kill-test", "--heartbeat-interval", "50", "--election-timeout", "500", "--range-replicas", "3")
	dir, endpoints, args, procs := pc.dir, pc.endpoints, pc.args, pc.procs
	all := strings.Join(endpoints, ",")
	ids := make([]uint64, size)
	mc := failoverClient(t, endpoints)
	for i, ep := range endpoints {
		ids[i] = memberID(t, mc, ep)
	}
	// A split goes through a member holding the range split.
	var holders []uint64
	waitFor(t, "range 1's replicas", func() bool {
		voters, _, ok := rangeReplicas(all, 1)
		holders = voters
		return ok && len(voters) > 0
	})
	splitVia := endpoints[slices.Index(ids, holders[0])]
	if out, err := exec.Command(binary, "range", "split", "--endpoints", splitVia, moveKillSplitKey).CombinedOutput(); err != nil {
		t.Fatalf("cairn range split %s: %v\n%s", moveKillSplitKey, err, out)
	}

	// Range 2's replicas before the move.
	var before []uint64
	waitFor(t, "range 2 on three voters", func() bool {
		voters, learners, ok := rangeReplicas(all, 2)
		before = voters
		return ok && len(voters) == 3 && len(learners) == 0
	})
	slices.Sort(before)
	from := before[0]
	to := uint64(0)
	for _, id := range ids {
		if !slices.Contains(before, id) {
			to = id
			break
		}
	}
	toIdx, fromIdx := slices.Index(ids, to), slices.Index(ids, from)
	var survivors []int
	never := -1 // a survivor that never holds range 2
	for i, id := range ids {
		if i == toIdx {
			continue
		}
		survivors = append(survivors, i)
		if !slices.Contains(before, id) {
			never = i
		}
	}
	t.Logf("members %x at %v", ids, endpoints)
	t.Logf("range 2 on %x; moving it from %x to %x (%s)", before, from, to, endpoints[toIdx])

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var (
		mu       sync.Mutex
		writes   []mkWrite          // every acknowledged write through a survivor
		errs     []error            // every failed request through a survivor
		destAck  = map[string]ack{} // the destination's writers' acknowledged puts
		lastDone atomic.Int64       // the highest revision of a write done
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	record := func(w mkWrite) {
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
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(writes) + len(destAck) }
	clients := make([]*clientv3.Client, size)
	for i, ep := range endpoints {
		clients[i] = client(t, ep)
	}

	// A lease with a key in each range, kept alive through a survivor.
	lc := clients[never]
	lease, err := lc.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{moveKillLow, moveKillHigh} {
		key := p + "lease"
		r, err := lc.Put(ctx, key, "held", clientv3.WithLease(lease.ID))
		if err != nil {
			t.Fatal(err)
		}
		record(mkWrite{key: key, val: "held", rev: r.Header.Revision})
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

	// Watches over both ranges from the revision after the lease's keys:
	// through the member range 2 leaves and through one never holding it.
	wctx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	first := lastDone.Load() + 1
	var watches []*mkWatch
	for _, i := range []int{fromIdx, never} {
		w := &mkWatch{name: fmt.Sprintf("through member %x", ids[i]), from: first}
		wc := clients[i].Watch(wctx, moveKillLow, clientv3.WithRange(moveKillEnd), clientv3.WithRev(first))
		go w.run(wc)
		watches = append(watches, w)
	}

	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	pad := "-" + strings.Repeat("x", 1024)
	// Writers through the survivors, two each: puts of keys of both ranges
	// (range 2's padded, so that the destination has some catching up to
	// do), now and then a delete of one of their own.
	for n := range 2 * len(survivors) {
		i := survivors[n%len(survivors)]
		c := clients[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			live := map[string]bool{}
			for seq := 0; lctx.Err() == nil; seq++ {
				key, val := fmt.Sprintf("%s%02d/%02d", moveKillLow, n, seq/2%16), fmt.Sprintf("%d.%d", n, seq)
				if seq%2 == 1 {
					key, val = fmt.Sprintf("%s%02d/%02d", moveKillHigh, n, seq/2%16), val+pad
				}
				octx, ocancel := context.WithTimeout(ctx, moveKillOp)
				if live[key] && seq%7 == 0 {
					r, err := c.Delete(octx, key)
					ocancel()
					if err != nil {
						fail(fmt.Errorf("member %x: delete %s: %w", ids[i], key, err))
						return
					}
					delete(live, key)
					record(mkWrite{key: key, del: true, rev: r.Header.Revision})
					continue
				}
				r, err := c.Put(octx, key, val)
				ocancel()
				if err != nil {
					fail(fmt.Errorf("member %x: put %s: %w", ids[i], key, err))
					return
				}
				live[key] = true
				record(mkWrite{key: key, val: val, rev: r.Header.Revision})
			}
		}()
	}
	// Writers through the destination: their puts fail while it is down,
	// and one that raced the kill may or may not have been applied.
	for w := range 2 {
		c := clients[toIdx]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("%s%02d/%06d", moveKillDest, w, i), fmt.Sprintf("v%d%s", i, pad)
				pctx, pcancel := context.WithTimeout(lctx, 5*time.Second)
				resp, err := c.Put(pctx, k, v)
				pcancel()
				if err != nil {
					continue
				}
				mu.Lock()
				destAck[k] = ack{v, resp.Header.Revision}
				mu.Unlock()
			}
		}()
	}
	// Readers through the survivors in turn, of both ranges at once:
	// one linearizable, one serializable.
	type mkRead struct {
		how          string
		member       uint64
		rev, atLeast int64
		kvs          map[string]string
	}
	var reads []mkRead
	for _, serializable := range []bool{false, true} {
		how, opts := "linearizable", []clientv3.OpOption{clientv3.WithRange(moveKillEnd)}
		if serializable {
			how, opts = "serializable", append(opts, clientv3.WithSerializable())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; lctx.Err() == nil; n++ {
				i := survivors[n%len(survivors)]
				atLeast := lastDone.Load()
				octx, ocancel := context.WithTimeout(ctx, moveKillOp)
				r, err := clients[i].Get(octx, moveKillLow, opts...)
				ocancel()
				if err != nil {
					fail(fmt.Errorf("member %x: %s read: %w", ids[i], how, err))
					return
				}
				kvs := map[string]string{}
				for _, kv := range r.Kvs {
					kvs[string(kv.Key)] = string(kv.Value)
				}
				if serializable {
					atLeast = 0 // a serializable read may be stale
				}
				mu.Lock()
				reads = append(reads, mkRead{how, ids[i], r.Header.Revision, atLeast, kvs})
				mu.Unlock()
			}
		}()
	}
	// failed reports the survivors' failures so far, as the test's error.
	failed := func() {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("%d requests through the survivors failed; first: %v", len(errs), errors.Join(errs[:min(len(errs), 3)]...))
		}
	}
	// Enough data that the destination takes a moment to catch up.
	waitFor(t, "1000 acknowledged writes", func() bool { return count() >= 1000 })
	failed()

	// finished says whether a member logged the move done.
	finished := func() bool {
		for _, p := range procs {
			if strings.Contains(p.output(), `"move done"`) {
				return true
			}
		}
		return false
	}

	// The move, in the background; the destination killed as soon as the
	// map names it among range 2's replicas.
	type result struct {
		out []byte
		err error
	}
	moved := make(chan result, 1)
	go func() {
		out, err := exec.CommandContext(ctx, binary, "range", "move", "--endpoints", all,
			"2", fmt.Sprintf("%x", from), fmt.Sprintf("%x", to)).CombinedOutput()
		moved <- result{out, err}
	}()
	// Every member's map copy is watched at once: the first to name the
	// destination has the kill sent.
	seen := make(chan string, size)
	mctx, stopMapWatch := context.WithCancel(ctx)
	for _, ep := range endpoints {
		go func() {
			for mctx.Err() == nil {
				voters, learners, _ := rangeReplicas(ep, 2)
				if slices.Contains(learners, to) {
					seen <- fmt.Sprintf("learner (voters %x, learners %x, through %s)", voters, learners, ep)
					return
				}
				if slices.Contains(voters, to) {
					seen <- fmt.Sprintf("voter (voters %x, learners %x, through %s)", voters, learners, ep)
					return
				}
			}
		}()
	}
	var how string
	select {
	case how = <-seen:
	case <-time.After(30 * time.Second):
		t.Fatal("the destination not in range 2's replica set within 30s")
	}
	procs[toIdx].kill()
	stopMapWatch()
	t.Logf("destination killed once the map had it %s; the move finished before the kill: %v", how, finished())
	atKill := count()
	waitFor(t, "writes go on without the destination", func() bool { return count() >= atKill+100 })
	failed()
	procs[toIdx] = startCairn(t, dir, args[toIdx]...)

	// Range 2 settles: three voters, the move closed (finished, or
	// undone: the destination gone from the map again).
	after := append(slices.DeleteFunc(slices.Clone(before), func(id uint64) bool { return id == from }), to)
	slices.Sort(after)
	var (
		outcome  string
		moveDone bool
		res      result
	)
	deadline := time.Now().Add(moveKillSettle)
	for outcome == "" {
		if time.Now().After(deadline) {
			for _, ep := range endpoints {
				var out bytes.Buffer
				_ = rangesCommand([]string{"-w", "json", "--endpoints", ep}, nil, &out)
				t.Logf("%s: %s", ep, out.String())
			}
			voters, learners, _ := rangeReplicas(all, 2)
			t.Fatalf("range 2 did not settle within %v: voters %x, learners %x (move command done: %v)", moveKillSettle, voters, learners, moveDone)
		}
		if !moveDone {
			select {
			case res = <-moved:
				moveDone = true
				t.Logf("cairn range move: %v\n%s", res.err, res.out)
			default:
			}
		}
		voters, learners, ok := rangeReplicas(all, 2)
		slices.Sort(voters)
		switch {
		case !ok || len(learners) > 0 || len(voters) != 3:
		case slices.Equal(voters, before):
			outcome = "undone"
		case slices.Equal(voters, after) && finished():
			outcome = "finished"
		case !slices.Equal(voters, after):
			t.Fatalf("range 2 on voters %x: neither the original %x nor the moved %x", voters, before, after)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, with a deadline
	}
	t.Logf("the move was %s", outcome)
	if moveDone && res.err == nil && outcome != "finished" {
		t.Errorf("cairn range move succeeded, but range 2 is back on %x", before)
	}
	stopLoad()
	wg.Wait()
	failed()

	mu.Lock()
	defer mu.Unlock()
	slices.SortFunc(writes, func(a, b mkWrite) int { return cmp.Compare(a.rev, b.rev) })
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
	done := map[string]int{}
	for _, r := range reads {
		done[r.how]++
		if r.rev < r.atLeast {
			t.Fatalf("a %s read through %x at revision %d after a write done at %d", r.how, r.member, r.rev, r.atLeast)
		}
		if want := stateAt(r.rev); !maps.Equal(r.kvs, want) {
			t.Fatalf("the %s read through %x at revision %d is not the model's state there: %s", r.how, r.member, r.rev, mkDiff(r.kvs, want))
		}
	}
	if done["linearizable"] == 0 || done["serializable"] == 0 {
		t.Fatalf("reads done: %v, want some of each", done)
	}

	// Every member ends with the model's state, and with every write the
	// destination acknowledged.
	last := writes[len(writes)-1].rev
	want := stateAt(last)
	for i, ep := range endpoints {
		var got map[string]string
		var dest map[string]ack
		waitFor(t, "a read through "+ep, func() bool {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			r, err := clients[i].Get(rctx, moveKillLow, clientv3.WithRange(moveKillEnd))
			if err != nil {
				return false
			}
			d, err := clients[i].Get(rctx, moveKillDest, clientv3.WithPrefix())
			if err != nil {
				return false
			}
			got, dest = map[string]string{}, map[string]ack{}
			for _, kv := range r.Kvs {
				got[string(kv.Key)] = string(kv.Value)
			}
			for _, kv := range d.Kvs {
				dest[string(kv.Key)] = ack{string(kv.Value), kv.ModRevision}
			}
			return true
		})
		if !maps.Equal(got, want) {
			t.Fatalf("through %s, the final state is not the model's: %s", ep, mkDiff(got, want))
		}
		for k, a := range destAck {
			if g, ok := dest[k]; !ok || g != a {
				t.Fatalf("through %s: acknowledged write %s@%d lost or changed: got %s@%d (present %v)", ep, k, a.rev, shortValue(g.value), g.rev, ok)
			}
		}
	}

	// Every watch: exactly the writes from its start, in order.
	for _, w := range watches {
		var exp []string
		for _, wr := range writes {
			if wr.rev >= w.from {
				exp = append(exp, wr.String())
			}
		}
		wdeadline := time.Now().Add(60 * time.Second)
		for {
			got, end := w.snapshot()
			if end != nil {
				t.Fatalf("the watch %s ended: %v (%d events)", w.name, end, len(got))
			}
			if len(got) >= len(exp) {
				break
			}
			if time.Now().After(wdeadline) {
				t.Fatalf("the watch %s has %d of %d events after a minute", w.name, len(got), len(exp))
			}
			time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
		}
		got, _ := w.snapshot()
		if !slices.Equal(got, exp) {
			i := 0
			for i < min(len(got), len(exp)) && got[i] == exp[i] {
				i++
			}
			t.Fatalf("the watch %s from %d: first difference at event %d of %d:\n got  %v\n want %v",
				w.name, w.from, i, len(exp), got[i:min(len(got), i+3)], exp[i:min(len(exp), i+3)])
		}
	}

	// The lease lived on with its keys.
	select {
	case <-kaDone:
		t.Fatal("the lease's keepalive channel closed during the move")
	default:
	}
	ttl, err := lc.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) != 2 {
		t.Fatalf("the lease after the move: %v (%v), want alive with 2 keys", ttl, err)
	}
	t.Logf("%d writes through the survivors (revisions %d to %d), %d through the destination acknowledged, reads %v, %d keepalives",
		len(writes), first, last, len(destAck), done, kaCount.Load())

	cctx, ccancel := context.WithTimeout(ctx, 90*time.Second)
	defer ccancel()
	if out, err := exec.CommandContext(cctx, binary, "check", "--endpoints", all).CombinedOutput(); err != nil {
		t.Fatalf("cairn check after the move: %v\n%s", err, out)
	}
	if !moveDone {
		<-moved // the command ends within its own minute
	}
}

// mkDiff shows how got differs from want: the keys missing, extra or with
// another value (values shortened), the first few of each.
func mkDiff(got, want map[string]string) string {
	var missing, extra, changed []string
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k+"="+shortValue(v))
		case g != v:
			changed = append(changed, fmt.Sprintf("%s=%s (want %s)", k, shortValue(g), shortValue(v)))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k+"="+shortValue(v))
		}
	}
	for _, l := range [][]string{missing, extra, changed} {
		slices.Sort(l)
	}
	first := func(l []string) []string { return l[:min(len(l), 5)] }
	return fmt.Sprintf("%d keys, want %d; missing %d %v, extra %d %v, changed %d %v",
		len(got), len(want), len(missing), first(missing), len(extra), first(extra), len(changed), first(changed))
}

// rangeReplicas returns range id's voting and non-voting members as
// `cairn ranges -w json` through endpoints prints them (ok false if it
// could not): the command's code, in this process, so that a test polls
// the map without starting a process each time.
func rangeReplicas(endpoints string, id uint64) (voters, learners []uint64, ok bool) {
	var out bytes.Buffer
	if err := rangesCommand([]string{"-w", "json", "--endpoints", endpoints}, nil, &out); err != nil {
		return nil, nil, false
	}
	var ranges []router.RangeInfo
	if err := json.Unmarshal(out.Bytes(), &ranges); err != nil {
		return nil, nil, false
	}
	for _, r := range ranges {
		if r.ID != id {
			continue
		}
		if len(r.ReplicaSet) == 0 {
			return r.Replicas, nil, true
		}
		for _, rep := range r.ReplicaSet {
			if rep.Learner {
				learners = append(learners, rep.Member)
			} else {
				voters = append(voters, rep.Member)
			}
		}
		return voters, learners, true
	}
	return nil, nil, false
}
