package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/router"
)

// moveKillSplitKey is where TestMoveKill9 splits range 1: range 2 holds
// the keys from it on, and the writers write only those.
const moveKillSplitKey = "m"

// moveKillSettle bounds the wait for range 2 to settle after the
// destination restarted: a move the mover cannot finish is undone once the
// destination has not caught up within its patience (30 s).
const moveKillSettle = 40 * time.Second

// TestMoveKill9 (issue 21): five members holding each range on three of
// them (--range-replicas 3), range 1 split so that range 2 exists, writers
// putting range 2's keys through every member. `cairn range move 2` from
// one of range 2's members to one holding none runs in the background,
// and the destination is killed with SIGKILL as soon as `cairn ranges -w
// json` shows it in range 2's replica set, then restarted. Range 2 then
// settles with three voters and its move closed: either finished (the
// destination holds it, the source does not) or undone (the original
// three hold it). Every acknowledged write is readable through every
// member, and `cairn check` finds every replica equal (exit 0).
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
	toIdx := slices.Index(ids, to)
	t.Logf("members %x at %v", ids, endpoints)
	t.Logf("range 2 on %x; moving it from %x to %x (%s)", before, from, to, endpoints[toIdx])

	// Writers of range 2's keys, each through its own member.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu    sync.Mutex
		acked = map[string]ack{}
		wg    sync.WaitGroup
	)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	pad := strings.Repeat("x", 1024)
	for w := range 2 * size {
		c := client(t, endpoints[w%size])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("%sw/%02d/%06d", moveKillSplitKey, w, i), fmt.Sprintf("v%d-%s", i, pad)
				pctx, pcancel := context.WithTimeout(lctx, 5*time.Second)
				resp, err := c.Put(pctx, k, v)
				pcancel()
				if err != nil {
					continue // its member is down, or the put raced the kill: this key may or may not exist
				}
				mu.Lock()
				acked[k] = ack{v, resp.Header.Revision}
				mu.Unlock()
			}
		}()
	}
	// Enough data that the destination takes a moment to catch up.
	waitFor(t, "1000 acknowledged writes", func() bool { return count() >= 1000 })

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
	wctx, stopWatch := context.WithCancel(ctx)
	for _, ep := range endpoints {
		go func() {
			for wctx.Err() == nil {
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
	stopWatch()
	t.Logf("destination killed once the map had it %s; the move finished before the kill: %v", how, finished())
	atKill := count()
	waitFor(t, "writes go on without the destination", func() bool { return count() >= atKill+100 })
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

	// Every acknowledged write, through every member.
	t.Logf("%d acknowledged writes", count())
	for _, ep := range endpoints {
		c := client(t, ep)
		var got map[string]ack
		waitFor(t, "a read of range 2 through "+ep, func() bool {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			resp, err := c.Get(rctx, moveKillSplitKey+"w/", clientv3.WithPrefix())
			if err != nil {
				return false
			}
			got = map[string]ack{}
			for _, kv := range resp.Kvs {
				got[string(kv.Key)] = ack{string(kv.Value), kv.ModRevision}
			}
			return true
		})
		for k, want := range acked {
			if g, ok := got[k]; !ok || g != want {
				t.Fatalf("through %s: acknowledged write %s=%s@%d lost or changed: got %+v (present %v)", ep, k, want.value, want.rev, g, ok)
			}
		}
	}

	cctx, ccancel := context.WithTimeout(ctx, 90*time.Second)
	defer ccancel()
	if out, err := exec.CommandContext(cctx, binary, "check", "--endpoints", all).CombinedOutput(); err != nil {
		t.Fatalf("cairn check after the move: %v\n%s", err, out)
	}
	if !moveDone {
		<-moved // the command ends within its own minute
	}
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
