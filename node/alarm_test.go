package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestNoSpaceAlarm: with the NOSPACE alarm raised, writes that add data
// are refused with etcd's error and change nothing, deletes still work,
// Status reports the alarm; once disarmed, writes work again. A store past
// --quota-backend-bytes raises the alarm itself.
func TestNoSpaceAlarm(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, n.ClientURLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	member := st.Header.MemberId
	mc := pb.NewMaintenanceClient(c.ActiveConnection())
	if _, err := mc.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: member, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	list, err := c.AlarmList(ctx)
	if err != nil || len(list.Alarms) != 1 || list.Alarms[0].Alarm != pb.AlarmType_NOSPACE || list.Alarms[0].MemberID != member {
		t.Fatalf("alarm list: %v %v", list, err)
	}
	before, _ := c.Get(ctx, "", clientv3.WithPrefix())
	for what, err := range map[string]error{
		"put":         second(c.Put(ctx, "b", "2")),
		"txn put":     second(c.Txn(ctx).Then(clientv3.OpPut("b", "2")).Commit()),
		"lease grant": second(c.Grant(ctx, 60)),
	} {
		if !errors.Is(err, rpctypes.ErrNoSpace) {
			t.Fatalf("%s under NOSPACE: %v, want %v", what, err, rpctypes.ErrNoSpace)
		}
	}
	after, _ := c.Get(ctx, "", clientv3.WithPrefix())
	if after.Header.Revision != before.Header.Revision {
		t.Fatalf("refused writes moved the revision %d → %d", before.Header.Revision, after.Header.Revision)
	}
	if st, err := c.Status(ctx, n.ClientURLs()[0]); err != nil || len(st.Errors) != 1 {
		t.Fatalf("status errors under NOSPACE: %v %v", st, err)
	}
	if _, err := c.Delete(ctx, "a"); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	if _, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: member, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "b", "2"); err != nil {
		t.Fatalf("put after disarm: %v", err)
	}

	// A quota the store already exceeds: the first put raises the alarm.
	sc := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.Name, c.QuotaBackendBytes = "small", 1 })).Client(0)
	if _, err := sc.Put(ctx, "x", "y"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put over quota: %v", err)
	}
	if list, err := sc.AlarmList(ctx); err != nil || len(list.Alarms) != 1 {
		t.Fatalf("alarm after exceeding the quota: %v %v", list, err)
	}
}

func second[T any](_ T, err error) error { return err }
