package node_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// TestFailoverOutsider (issue 27): four sharded members, each range on
// three of them (--range-replicas 3), so one member, the outsider, holds
// no replica of a range and reaches it only through the members that do.
// The range's leader is cut off from the others (alive, its raft messages
// lost: a partitioned leader that still answers the outsider's calls);
// once healed, the range's leader then is stopped. Each time a linearizable
// get through the outsider, sent at once, answers within 3 s, and a put
// within etcd's request timeout, succeeding or failing with etcd's
// "request timed out, possibly due to previous leader failure" — not "no
// leader", which clients do not retry, nor a plain timeout.
//
// The range's leader is kept off the placement group's leader, so that
// only the range fails over here (the placement group's own failover is
// TestFailoverPlacementLeader's).
func TestFailoverOutsider(t *testing.T) {
	t.Parallel() // waits out a request timeout
	cl := nodetest.Start(t, 4, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.Partitionable())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const key = "x"
	id := rangeOf(t, cl, key)
	out := outsider(t, cl, key)
	hs := holders(t, cl, id)
	c := cl.Client(out)
	requestTimeout := 5*time.Second + 2*cl.Config(out).ElectionTimeout // etcd's, the node's default

	// leader is the member leading the range, as a holder's replica has it.
	leader := func(holders []int) int {
		var l int
		nodetest.Eventually(t, fmt.Sprintf("range %d has a leader", id), func() bool {
			for _, h := range holders {
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
	// lead returns the range's leader, first moving the lead to another
	// holder if the range's leader leads the placement group too.
	lead := func() int {
		l := leader(hs)
		pl := cl.Node(out).PlacementLeader()
		if cl.Node(l).MemberID() != pl {
			return l
		}
		for _, h := range hs {
			if h == l || cl.Node(h).MemberID() == pl {
				continue
			}
			nc := operatorClient(t, cl, h)
			if _, err := nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: id, Member: cl.Node(h).MemberID()}); err != nil {
				t.Fatalf("range %d's lead to member %d: %v", id, h, err)
			}
			nodetest.Eventually(t, fmt.Sprintf("member %d leads range %d", h, id), func() bool { return leader([]int{h}) == h })
			return h
		}
		t.Fatalf("no holder of range %d other than %d and the placement leader %x", id, l, pl)
		return -1
	}
	// serves waits until the outsider reads and writes the range again.
	serves := func(stage string) {
		nodetest.WaitFor(ctx, t, func() error {
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
			defer wcancel()
			if _, err := c.Put(wctx, key, stage); err != nil {
				return err
			}
			_, err := c.Get(wctx, key)
			return err
		})
	}
	// failover sends a linearizable get and a put through the outsider at
	// once, with clients' deadlines of 10 s (etcdctl --command-timeout),
	// and checks how and when they answer.
	failover := func(stage string) {
		t.Helper()
		getErr, getTook, putErr, putTook := getAndPutAtOnce(ctx, c, key, stage)
		t.Logf("%s: get %v after %v, put %v after %v", stage, getErr, getTook, putErr, putTook)
		if getErr != nil || getTook > 3*time.Second {
			t.Errorf("%s: linearizable get through the outsider: %v after %v, want an answer within 3 s", stage, getErr, getTook)
		}
		if putTook > requestTimeout+time.Second {
			t.Errorf("%s: put through the outsider answered after %v, past etcd's request timeout (%v)", stage, putTook, requestTimeout)
		}
		// Its leader lost, a put that does not succeed fails as etcd's
		// does then (the leader's member, up or not, no longer leads).
		if putErr != nil && rpctypes.Error(putErr).Error() != rpctypes.ErrTimeoutDueToLeaderFail.Error() {
			t.Errorf("%s: put through the outsider: %v, want success or %q", stage, putErr, rpctypes.ErrTimeoutDueToLeaderFail)
		}
	}

	serves("before")
	if slices.Contains(hs, out) {
		t.Fatalf("member %d holds range %d (holders %v)", out, id, hs)
	}
	l := lead()
	cl.Partition(l)
	failover("leader partitioned")
	cl.Heal()
	serves("healed")

	// Stopped as a crash would stop it, as far as the others can tell:
	// its raft replicas stop last, so the requests below, sent once it
	// is down, find the range without a leader and the outsider's hint
	// naming the member gone. (Sent while it stops, they would also wait
	// out its graceful stop of the client port, up to 2 s, during which
	// it may still lead.)
	l = lead()
	if err := cl.Stop(l); err != nil {
		t.Fatalf("stop member %d: %v", l, err)
	}
	failover("leader stopped")
	serves("after the stop")
	if r, err := c.Get(ctx, key, clientv3.WithSerializable()); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("serializable get through the outsider: %v %v", r, err)
	}
}

// getAndPutAtOnce sends a linearizable get of key and a put of value to
// it at once, each with a client's deadline of 10 s (etcdctl's
// --command-timeout), and returns how each answered and after how long.
func getAndPutAtOnce(ctx context.Context, c *clientv3.Client, key, value string) (getErr error, getTook time.Duration, putErr error, putTook time.Duration) {
	var wg sync.WaitGroup
	wg.Go(func() {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		start := time.Now()
		_, getErr = c.Get(rctx, key)
		getTook = time.Since(start)
	})
	wg.Go(func() {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		start := time.Now()
		_, putErr = c.Put(rctx, key, value)
		putTook = time.Since(start)
	})
	wg.Wait()
	return getErr, getTook, putErr, putTook
}
