package node_test

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestCrossRangeTooLarge: a txn across ranges over etcd's request limit is
// refused as etcd refuses it (request is too large), whichever branch
// holds the large put, and writes nothing; so is a delete across ranges.
// Found by TestShardedDifferential once it sent writes across ranges.
func TestCrossRangeTooLarge(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Sharded("m")).Client(0)
	kv := pb.NewKVClient(c.ActiveConnection())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	put := func(k string, size int) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: make([]byte, size)}}}
	}
	big := 1536*1024 + 1
	for name, r := range map[string]*pb.TxnRequest{
		"success branch": {Success: []*pb.RequestOp{put("b", big), put("z", 1)}},
		"failure branch": {
			Compare: []*pb.Compare{{Key: []byte("z"), Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL}},
			Success: []*pb.RequestOp{put("b", 1), put("y", 1)},
			Failure: []*pb.RequestOp{put("c", big)},
		},
	} {
		if _, err := kv.Txn(ctx, r); !sameStatus(err, rpctypes.ErrGRPCRequestTooLarge) {
			t.Errorf("%s: %v, want %v", name, err, rpctypes.ErrGRPCRequestTooLarge)
		}
	}
	// A delete across ranges whose key alone is over the limit.
	dkey := append([]byte("a"), make([]byte, big)...)
	if _, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: dkey, RangeEnd: []byte("z")}); !sameStatus(err, rpctypes.ErrGRPCRequestTooLarge) {
		t.Errorf("delete: %v, want %v", err, rpctypes.ErrGRPCRequestTooLarge)
	}
	all, err := c.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil || len(all.Kvs) != 1 {
		t.Fatalf("after the refused txns: %v, %v", all, err)
	}
}
