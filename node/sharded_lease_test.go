package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedLeases: a lease's keys may lie in any range. TimeToLive lists
// them all; a revoke deletes them in every range before it returns, and a
// later put with the lease is refused in every range, as etcd refuses an
// unknown lease (but not in a txn branch that does not run); an expired
// lease's keys go in every range too; a put with an unknown lease is
// refused outside the home as inside it; an id granted again after its
// revoke is a live lease in every range again.
func TestShardedLeases(t *testing.T) {
	cli := nodetest.Start(t, 1, nodetest.Sharded("c", "h", "p")).Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	keys := []string{"a1", "d1", "q1", "q2"} // ranges 1, 2, 4, 4
	gr, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(gr.ID)); err != nil {
			t.Fatalf("put %s with the lease: %v", k, err)
		}
	}
	if _, err := cli.Put(ctx, "m1", "no lease"); err != nil {
		t.Fatal(err)
	}
	ttl, err := cli.TimeToLive(ctx, gr.ID, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%s", ttl.Keys); got != "[a1 d1 q1 q2]" {
		t.Fatalf("time-to-live keys %s", got)
	}
	// Moving a key off the lease detaches it.
	if _, err := cli.Put(ctx, "q2", "v2"); err != nil {
		t.Fatal(err)
	}
	w := cli.Watch(ctx, "", clientv3.WithPrefix())
	if _, err := cli.Revoke(ctx, gr.ID); err != nil {
		t.Fatal(err)
	}
	// Gone when the revoke returns.
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, kv := range resp.Kvs {
		left = append(left, string(kv.Key))
	}
	if fmt.Sprint(left) != "[m1 q2]" {
		t.Fatalf("after the revoke: %v", left)
	}
	var deleted []string
	for len(deleted) < 3 {
		select {
		case <-ctx.Done():
			t.Fatalf("delete events seen: %v", deleted)
		case wr := <-w:
			for _, ev := range wr.Events {
				deleted = append(deleted, fmt.Sprintf("%s %s", ev.Type, ev.Kv.Key))
			}
		}
	}
	if fmt.Sprint(deleted) != "[DELETE a1 DELETE d1 DELETE q1]" {
		t.Fatalf("watch saw %v", deleted)
	}
	for _, k := range []string{"a2", "d2", "z2"} {
		if _, err := cli.Put(ctx, k, "late", clientv3.WithLease(gr.ID)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Fatalf("a late put of %s with the revoked lease: %v", k, err)
		}
	}
	txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("d3"), "=", 0)).
		Then(clientv3.OpPut("d3", "ok")).Else(clientv3.OpPut("d3", "late", clientv3.WithLease(gr.ID))).Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("a txn naming the revoked lease in the branch not taken: %v, %v", txn, err)
	}
	if _, err := cli.Put(ctx, "d4", "v", clientv3.WithLease(123456)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("put with an unknown lease: %v", err)
	}

	// The same id granted again is a new lease in every range.
	const chosen = 777
	for round := range 2 {
		g, err := pbLease(cli).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: chosen, TTL: 60})
		if err != nil {
			t.Fatalf("grant id %d, round %d: %v", chosen, round, err)
		}
		if _, err := cli.Put(ctx, "e7", fmt.Sprint(round), clientv3.WithLease(clientv3.LeaseID(g.ID))); err != nil {
			t.Fatalf("put with lease %d, round %d: %v", chosen, round, err)
		}
		if _, err := cli.Revoke(ctx, clientv3.LeaseID(chosen)); err != nil {
			t.Fatal(err)
		}
		if resp, err := cli.Get(ctx, "e7"); err != nil || len(resp.Kvs) != 0 {
			t.Fatalf("round %d: e7 after the revoke: %v, %v", round, resp, err)
		}
	}

	// Expiry: the primary revokes at the home, the node in every range.
	short, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"b5", "e5", "z5"} {
		if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(short.ID)); err != nil {
			t.Fatal(err)
		}
	}
	nodetest.WaitFor(ctx, t, func() error {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var live []string
		for _, kv := range resp.Kvs {
			live = append(live, string(kv.Key))
		}
		if fmt.Sprint(live) != "[d3 m1 q2]" {
			return fmt.Errorf("keys of the expired lease still there: %v", live)
		}
		return nil
	})
}

func pbLease(cli *clientv3.Client) pb.LeaseClient { return pb.NewLeaseClient(cli.ActiveConnection()) }
