package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
)

// TestStrictReconfigCheck: with one of three members down, a voter cannot
// be added and a live member cannot be removed ("unhealthy cluster", as
// etcd answers), while a learner can be added and the down member
// removed; in both modes (sharded mode checks the same member list before
// its walk over the ranges). (With the check off those changes go to raft
// and cost the quorum; cmd/cairn's flag test covers
// --strict-reconfig-check=false.)
func TestStrictReconfigCheck(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts []nodetest.Option
	}{
		{"single-group", nil},
		{"sharded", []nodetest.Option{nodetest.Sharded("m")}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()

			c := nodetest.Start(t, 3, mode.opts...)
			ids := memberIDs(t, c)
			cli := c.Client(0)
			// A member counts as started once it has published its name,
			// shortly after it starts; the one stopped below must have.
			nodetest.WaitFor(ctx, t, func() error {
				resp, err := cli.MemberList(ctx)
				if err != nil {
					return err
				}
				for _, m := range resp.Members {
					if m.Name == "" {
						return fmt.Errorf("member %x has not published its name: %v", m.ID, resp.Members)
					}
				}
				return nil
			})
			if err := c.Stop(2); err != nil {
				t.Fatal(err)
			}
			// The stopped member may have led raft groups (in sharded
			// mode the placement group, which member changes go through):
			// the two left elect their leaders first.
			nodetest.WaitFor(ctx, t, func() error {
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				defer wcancel()
				if _, err := cli.MemberList(wctx); err != nil {
					return err
				}
				_, err := cli.Put(wctx, "after-stop", "v")
				return err
			})
			if _, err := cli.MemberAdd(ctx, []string{"http://" + testport.Addr(t)}); !errors.Is(err, rpctypes.ErrUnhealthy) {
				t.Fatalf("voter added with a member down: %v, want %v", err, rpctypes.ErrUnhealthy)
			}
			if _, err := cli.MemberRemove(ctx, ids[1]); !errors.Is(err, rpctypes.ErrUnhealthy) {
				t.Fatalf("live member removed with another down: %v, want %v", err, rpctypes.ErrUnhealthy)
			}
			learner, err := cli.MemberAddAsLearner(ctx, []string{"http://" + testport.Addr(t)})
			if err != nil {
				t.Fatalf("learner add with a member down: %v", err)
			}
			if _, err := cli.MemberRemove(ctx, learner.Member.ID); err != nil {
				t.Fatalf("removing the learner: %v", err)
			}
			if _, err := cli.MemberRemove(ctx, ids[2]); err != nil {
				t.Fatalf("removing the down member: %v", err)
			}
		})
	}
}

// TestStrictReconfigNotEnoughStarted: a one-member cluster may add a
// second member (how a restored cluster grows), but not a third while the
// second has never started; in both modes.
func TestStrictReconfigNotEnoughStarted(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts []nodetest.Option
	}{
		{"single-group", nil},
		{"sharded", []nodetest.Option{nodetest.Sharded("m")}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cli := nodetest.Start(t, 1, mode.opts...).Client(0)
			// Answered within etcdctl's 5 s, as etcd does, although the
			// cluster has no quorum then until the second member runs.
			actx, acancel := context.WithTimeout(ctx, 5*time.Second)
			defer acancel()
			if _, err := cli.MemberAdd(actx, []string{"http://" + testport.Addr(t)}); err != nil {
				t.Fatalf("second member: %v", err)
			}
			if _, err := cli.MemberAdd(ctx, []string{"http://" + testport.Addr(t)}); !errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) {
				t.Fatalf("third member with the second never started: %v, want %v", err, rpctypes.ErrMemberNotEnoughStarted)
			}
		})
	}
}

// memberIDs is the members' ids in the cluster's order.
func memberIDs(t *testing.T, c *nodetest.Cluster) []uint64 {
	t.Helper()
	var ids []uint64
	for _, n := range c.Nodes() {
		ids = append(ids, n.MemberID())
	}
	return ids
}
