package node_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// enableAuth adds root (password rootpw, role root) and alice (alicepw,
// no role) through c and enables auth.
func enableAuth(ctx context.Context, t *testing.T, c *clientv3.Client) {
	t.Helper()
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
}

// operatorAs is the node-to-node service on urls' client port, called
// as user (none if ""): clientv3's connection carries its token.
func operatorAs(t *testing.T, urls []string, user, password string) internalpb.NodeClient {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, Username: user, Password: password,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return internalpb.NewNodeClient(cli.ActiveConnection())
}

// TestOperatorCallsNeedRoot: once auth is enabled, the operator's calls
// on the client port — SplitRange (`cairn range split`), CheckReplicas
// (`cairn check`), MoveRange and TransferRangeLeader — refuse a caller
// without a user (etcd's user name empty) and a user without root
// (permission denied), and serve root. On the peer port the same calls,
// made by a member (the scheduler's splits, a move forwarded to the
// placement leader's member), carry no user and are served: a member was
// admitted by the peer port, and the operator's rights were checked where
// the call came in.
func TestOperatorCallsNeedRoot(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	enableAuth(ctx, t, cl.Client(0))
	self := cl.Node(0).MemberID()
	splitAt := []string{"t", "w"} // root's split, then a member's
	calls := map[string]func(internalpb.NodeClient) error{
		"SplitRange": func(nc internalpb.NodeClient) error {
			_, err := nc.SplitRange(ctx, &internalpb.SplitRangeRequest{Key: []byte(splitAt[0])})
			if err == nil {
				splitAt = splitAt[1:]
			}
			return err
		},
		"CheckReplicas": func(nc internalpb.NodeClient) error {
			_, err := nc.CheckReplicas(ctx, &internalpb.CheckReplicasRequest{})
			return err
		},
		"TransferRangeLeader": func(nc internalpb.NodeClient) error {
			_, err := nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: 2, Member: self})
			return err
		},
		"MoveRange": func(nc internalpb.NodeClient) error {
			// No range 9: served, the map refuses it (NotFound).
			_, err := nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 9, FromMember: self, ToMember: self + 1})
			if status.Code(err) == codes.NotFound {
				return nil
			}
			return err
		},
	}
	urls := cl.Node(0).ClientURLs()
	anon, alice, root := operatorAs(t, urls, "", ""), operatorAs(t, urls, "alice", "alicepw"), operatorAs(t, urls, "root", "rootpw")
	for name, call := range calls {
		if err := call(anon); !errors.Is(rpctypes.Error(err), rpctypes.ErrUserEmpty) {
			t.Errorf("%s without a user: %v, want %v", name, err, rpctypes.ErrUserEmpty)
		}
		if err := call(alice); !errors.Is(rpctypes.Error(err), rpctypes.ErrPermissionDenied) {
			t.Errorf("alice's %s: %v, want %v", name, err, rpctypes.ErrPermissionDenied)
		}
		if err := call(root); err != nil {
			t.Errorf("root's %s: %v", name, err)
		}
	}

	// The peer port, from the member's own address (admitted: no peer TLS).
	conn, err := grpc.NewClient("passthrough:///"+hostOf(t, cl.Node(0).PeerURLs()[0]),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	member := internalpb.NewNodeClient(conn)
	for _, name := range []string{"SplitRange", "MoveRange", "TransferRangeLeader"} {
		if err := calls[name](member); err != nil {
			t.Errorf("a member's %s on the peer port: %v", name, err)
		}
	}
}

// TestMoveForwardedUnderAuth: with auth enabled, root's MoveRange asked
// through a member that does not lead the placement group is forwarded
// over the peer port to the member that does, and the range moves.
func TestMoveForwardedUnderAuth(t *testing.T) {
	cl := nodetest.Start(t, 4, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	held := holders(t, cl, 2)
	to := slices.IndexFunc([]int{0, 1, 2, 3}, func(i int) bool { return !slices.Contains(held, i) })
	via := slices.IndexFunc(cl.Nodes(), func(n *node.Node) bool { return n.MemberID() != cl.Node(0).PlacementLeader() })
	enableAuth(ctx, t, cl.Client(0))
	fromID, toID := cl.Node(held[0]).MemberID(), cl.Node(to).MemberID()
	resp, err := operatorAs(t, cl.Node(via).ClientURLs(), "root", "rootpw").MoveRange(ctx,
		&internalpb.MoveRangeRequest{Range: 2, FromMember: fromID, ToMember: toID})
	if err != nil {
		t.Fatalf("root's move of range 2 through member %d (not the placement leader's): %v", via, err)
	}
	if _, ok := placement.ReplicaOf(resp.Range, placement.NodeID(toID)); !ok {
		t.Fatalf("after the move range 2 is %v, without member %d", placement.Pairs(resp.Range), to)
	}
	if _, ok := placement.ReplicaOf(resp.Range, placement.NodeID(fromID)); ok {
		t.Fatalf("after the move range 2 is %v, still on member %d", placement.Pairs(resp.Range), held[0])
	}
}
