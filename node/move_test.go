package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// operatorClient is the node-to-node service's operator face on member
// i's client port (what `cairn range` calls).
func operatorClient(t *testing.T, cl *nodetest.Cluster, i int) internalpb.NodeClient {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(cl.Node(i).ClientURLs()[0], "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return internalpb.NewNodeClient(conn)
}

// rangeIn is range id of the map read through member 0.
func rangeIn(t *testing.T, cl *nodetest.Cluster, id uint64) *placementpb.RangeDescriptor {
	t.Helper()
	for _, d := range rangeMapOf(t, cl) {
		if d.Id == id {
			return d
		}
	}
	t.Fatalf("no range %d in the map", id)
	return nil
}

// TestMoveRange: five members, three replicas per range; range 2 moves
// to a member that holds none of it and back again, asked through a
// member that does not lead the placement group, while every member
// writes and reads it: each move gives the destination a new replica id
// and the range as a snapshot, the member left drops the range's data, the range's raft membership is
// the map's pairs, and no request fails.
func TestMoveRange(t *testing.T) {
	cl := nodetest.Start(t, 5, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Load: each member writes keys of range 2 and reads each back
	// through the next member, until the moves are over.
	var (
		mu      sync.Mutex
		errs    []error
		written []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range cl.Size() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				key, val := fmt.Sprintf("m-%d-%05d", i, seq), fmt.Sprint(seq)
				octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := cl.Client(i).Put(octx, key, val)
				if err == nil {
					var r *clientv3.GetResponse
					r, err = cl.Client((i+1)%cl.Size()).Get(octx, key)
					if err == nil && (len(r.Kvs) != 1 || string(r.Kvs[0].Value) != val) {
						err = fmt.Errorf("read %s back: %v", key, r.Kvs)
					}
				}
				ocancel()
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("member %d, %s: %w", i, key, err))
				} else {
					written = append(written, key)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	stopLoad := func() {
		close(stop)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("%d requests failed during the moves; first: %v", len(errs), errors.Join(errs[:min(len(errs), 3)]...))
		}
	}

	before := rangeIn(t, cl, 2)
	seen := map[uint64]bool{}
	for _, p := range placement.Pairs(before) {
		seen[p.Id] = true
	}
	from := holders(t, cl, 2)[0]
	to := -1
	for i := range cl.Size() {
		if !slices.Contains(holders(t, cl, 2), i) {
			to = i
			break
		}
	}
	via := 0
	for via < cl.Size() && cl.Node(via).MemberID() == cl.Node(0).PlacementLeader() {
		via++
	}
	nc := operatorClient(t, cl, via)

	move := func(from, to int) {
		t.Helper()
		fromID, toID := cl.Node(from).MemberID(), cl.Node(to).MemberID()
		held := rangeIn(t, cl, 2) // as it was on the member left
		// What leftNothing looks for is there before the move.
		if kinds, err := cl.Node(from).RangeData(held); err != nil || kinds['k'] == 0 || kinds['e'] == 0 || kinds['m'] == 0 || kinds['r'] == 0 {
			t.Fatalf("member %d's pebble before range 2 leaves it: %s (%v), want its data", from, fmtKinds(kinds), err)
		}
		snapshots := cl.Node(to).DestinationSnapshots()
		resp, err := nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 2, FromMember: fromID, ToMember: toID})
		if err != nil {
			t.Fatalf("move range 2 from member %d to %d: %v", from, to, err)
		}
		d := resp.Range
		rid, ok := placement.ReplicaOf(d, placement.NodeID(toID))
		if !ok || seen[uint64(rid)] {
			t.Fatalf("after the move the destination's replica is %d (%v); ids seen before: %v", rid, ok, seen)
		}
		seen[uint64(rid)] = true
		// The destination got the range as a snapshot, not by replaying
		// the range's log from its start.
		if got := cl.Node(to).DestinationSnapshots(); got <= snapshots {
			t.Fatalf("member %d's new replica was restored from %d snapshots, want one more than %d", to, got, snapshots)
		}
		if _, ok := placement.ReplicaOf(d, placement.NodeID(fromID)); ok || len(placement.Voters(d)) != 3 {
			t.Fatalf("after the move range 2 is %v", placement.Pairs(d))
		}
		// Raft agrees with the map on every member holding the range; the
		// member left runs no replica of it and holds none of its data.
		want := []uint64{}
		for _, p := range placement.Voters(d) {
			want = append(want, p.Id)
		}
		slices.Sort(want)
		nodetest.Eventually(t, "range 2's raft membership is the map's", func() bool {
			for _, p := range placement.Pairs(d) {
				n := cl.Node(cl.MemberIndex(p.Member))
				if n.LocalReplicas()[2] != p.Id || !slices.Equal(slices.Sorted(slices.Values(n.RaftReplicas()[2])), want) {
					return false
				}
			}
			return true
		})
		leftNothing(t, cl.Node(from), held)
	}
	move(from, to)
	move(to, from)
	stopLoad()

	// Every key written is there, read through every member.
	mu.Lock()
	defer mu.Unlock()
	if len(written) == 0 {
		t.Fatal("no write went through")
	}
	t.Logf("%d writes during the moves; replica ids of range 2 seen: %v", len(written), seen)
	for i := range cl.Size() {
		r, err := cl.Client(i).Get(ctx, "m-", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || r.Count != int64(len(written)) {
			t.Fatalf("member %d counts %v keys (%v), want %d", i, r, err, len(written))
		}
	}
}

// TestMoveCallsNeedRoot: once auth is enabled, moving a range and
// transferring its leadership are root's, as etcd's MoveLeader is: a
// user without root is refused with etcd's permission denied; root is
// let through.
func TestMoveCallsNeedRoot(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cl.Client(0)
	for _, step := range []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	as := func(user, pw string) internalpb.NodeClient {
		cli, err := clientv3.New(clientv3.Config{Endpoints: cl.URLs(), Username: user, Password: pw, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		return internalpb.NewNodeClient(cli.ActiveConnection())
	}
	self := cl.Node(0).MemberID()
	alice, root := as("alice", "alicepw"), as("root", "rootpw")
	_, err := alice.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 2, FromMember: self, ToMember: self + 1})
	if !errors.Is(rpctypes.Error(err), rpctypes.ErrPermissionDenied) {
		t.Errorf("alice's MoveRange: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	_, err = alice.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: 2, Member: self})
	if !errors.Is(rpctypes.Error(err), rpctypes.ErrPermissionDenied) {
		t.Errorf("alice's TransferRangeLeader: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := root.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: 2, Member: self}); err != nil {
		t.Errorf("root's TransferRangeLeader: %v", err)
	}
	_, err = root.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 9, FromMember: self, ToMember: self + 1})
	if status.Code(err) != codes.NotFound {
		t.Errorf("root's MoveRange of no range: %v, want NotFound", err)
	}
}
