package compat

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/protobuf/proto"
)

// TestAuthLockElection compares etcd's Lock and Election services with
// Cairn's under auth: each step runs as the user who calls it (etcd's
// in-process client carries the caller's context; Cairn's node client
// forwards the caller's token), so a user without write permission on the
// lock's keys, or without a user, is refused with etcd's error.
func TestAuthLockElection(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(map[bool]string{false: "single-group", true: "sharded"}[sharded], func(t *testing.T) {
			sides := []*authSide{newAuthSide(t, startAuthEtcd(t), sharded), newAuthSide(t, startAuthCairn(t, sharded), sharded)}
			steps := append(authPrologue(), lockSteps()...)
			for i, st := range steps {
				var answers [2]string
				for k, sd := range sides {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					answers[k] = st.run(ctx, sd)
					cancel()
				}
				if answers[0] != answers[1] {
					t.Fatalf("step %d: %s\netcd:  %s\ncairn: %s", i, st.desc, answers[0], answers[1])
				}
			}
		})
	}
}

// lockSteps: alice (read-write on a/) locks and campaigns under a/, bob
// (no rights on a/) and a client without a user try the same.
func lockSteps() []authStep {
	var steps []authStep
	grant := func(client string) authStep {
		return asClient(client, "LeaseGrant", func(ctx context.Context, c *clientv3.Client, sd *authSide) (proto.Message, error) {
			resp, err := c.Grant(ctx, 600)
			if err == nil {
				sd.leases = append(sd.leases, int64(resp.ID))
			}
			return pbResp(resp, err)
		})
	}
	// The lock's key names the lease: shown as the lease's grant order.
	lockKey := func(sd *authSide, key []byte) string {
		name, lease, _ := strings.Cut(string(key), "/lock/")
		var id int64
		fmt.Sscanf(lease, "%x", &id)
		return fmt.Sprintf("%s/lock/L%d", name, sd.leaseName(id))
	}
	lock := func(client string, li int) authStep {
		return authStep{desc: fmt.Sprintf("%s Lock a/lock L%d", client, li+1), run: func(ctx context.Context, sd *authSide) string {
			resp, err := v3lockpb.NewLockClient(sd.clients[client].ActiveConnection()).Lock(ctx,
				&v3lockpb.LockRequest{Name: []byte("a/lock"), Lease: sd.lease(li)})
			if err != nil {
				return "error " + errText(err)
			}
			return "locked " + lockKey(sd, resp.Key)
		}}
	}
	unlock := func(client string, li int) authStep {
		return authStep{desc: fmt.Sprintf("%s Unlock a/lock/L%d", client, li+1), run: func(ctx context.Context, sd *authSide) string {
			_, err := v3lockpb.NewLockClient(sd.clients[client].ActiveConnection()).Unlock(ctx,
				&v3lockpb.UnlockRequest{Key: []byte(fmt.Sprintf("a/lock/%x", sd.lease(li)))})
			if err != nil {
				return "error " + errText(err)
			}
			return "unlocked"
		}}
	}
	campaign := func(client string, li int) authStep {
		return authStep{desc: fmt.Sprintf("%s Campaign a/el L%d", client, li+1), run: func(ctx context.Context, sd *authSide) string {
			resp, err := v3electionpb.NewElectionClient(sd.clients[client].ActiveConnection()).Campaign(ctx,
				&v3electionpb.CampaignRequest{Name: []byte("a/el"), Lease: sd.lease(li), Value: []byte(client)})
			if err != nil {
				return "error " + errText(err)
			}
			return "leads " + string(resp.Leader.Name)
		}}
	}
	leader := func(client string) authStep {
		return authStep{desc: client + " Leader a/el", run: func(ctx context.Context, sd *authSide) string {
			resp, err := v3electionpb.NewElectionClient(sd.clients[client].ActiveConnection()).Leader(ctx,
				&v3electionpb.LeaderRequest{Name: []byte("a/el")})
			if err != nil {
				return "error " + errText(err)
			}
			return "leader " + string(resp.Kv.Value)
		}}
	}
	steps = append(steps,
		grant("alice"), grant("bob"),
		lock("alice", 0), lock("bob", 1), lock("anon", 5), unlock("bob", 0), unlock("alice", 0),
		campaign("alice", 0), campaign("bob", 1), leader("bob"), leader("anon"), leader("alice"),
	)
	return steps
}

// TestAuthWatchRevoked: a permission revoked while a user's watch is open
// ends the watch with etcd's "permission denied", and no event of a write
// made after the revoke reaches it. (etcd checks a watch only when it is
// created, so this is Cairn's alone.)
func TestAuthWatchRevoked(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(map[bool]string{false: "single-group", true: "sharded"}[sharded], func(t *testing.T) {
			sd := newAuthSide(t, startAuthCairn(t, sharded), sharded)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for _, st := range authPrologue() {
				if a := st.run(ctx, sd); strings.HasPrefix(a, "error") {
					t.Fatalf("%s: %s", st.desc, a)
				}
			}
			root, alice := sd.clients["root"], sd.clients["alice"]
			// A unary call first: the client logs in before its watch.
			if _, err := alice.Get(ctx, "a/1"); err != nil {
				t.Fatal(err)
			}
			ws, err := pb.NewWatchClient(alice.ActiveConnection()).Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
				CreateRequest: &pb.WatchCreateRequest{Key: []byte("a/"), RangeEnd: []byte("a0")}}}); err != nil {
				t.Fatal(err)
			}
			if r, err := ws.Recv(); err != nil || !r.Created || r.Canceled {
				t.Fatalf("watch not created: %v %v", r, err)
			}
			if _, err := root.Put(ctx, "a/1", "before"); err != nil {
				t.Fatal(err)
			}
			if r, err := ws.Recv(); err != nil || len(r.Events) != 1 || string(r.Events[0].Kv.Value) != "before" {
				t.Fatalf("want the event before the revoke, got %v (err %v)", r, err)
			}
			if _, err := root.RoleRevokePermission(ctx, "ra", "a/", "a0"); err != nil {
				t.Fatal(err)
			}
			if _, err := root.Put(ctx, "a/2", "after"); err != nil {
				t.Fatal(err)
			}
			for {
				r, err := ws.Recv()
				if err != nil {
					t.Fatalf("watch ended without being canceled: %v", err)
				}
				for _, ev := range r.Events {
					t.Errorf("event after the revoke reached the watch: %s=%s", ev.Kv.Key, ev.Kv.Value)
				}
				if r.Canceled {
					if want := rpctypes.ErrGRPCPermissionDenied.Error(); r.CancelReason != want {
						t.Errorf("canceled with %q, want %q", r.CancelReason, want)
					}
					break
				}
			}
		})
	}
}
