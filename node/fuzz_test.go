package node_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// The fuzz targets here send arbitrary etcd requests to one in-process
// node over real gRPC. Whatever the request, the node answers — a result or
// an error with a definite gRPC code, never a crash — and a request it
// refuses changes nothing. Each fuzzing process starts its own node.

type fuzzTarget struct {
	kv    pb.KVClient
	watch pb.WatchClient
	maint pb.MaintenanceClient
	lease pb.LeaseClient
}

func startFuzzTarget(f *testing.F) *fuzzTarget {
	n := nodetest.Start(f, 1).Node(0)
	conn, err := grpc.NewClient(strings.TrimPrefix(n.ClientURLs()[0], "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	ft := &fuzzTarget{kv: pb.NewKVClient(conn), watch: pb.NewWatchClient(conn), maint: pb.NewMaintenanceClient(conn), lease: pb.NewLeaseClient(conn)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Something to read, overwrite, delete, compare and watch: keys a, b,
	// c (c under lease 7), several revisions, and a compaction at 3.
	if _, err := ft.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 7, TTL: 3600}); err != nil {
		f.Fatal(err)
	}
	for i, kv := range [][2]string{{"a", "1"}, {"b", "1"}, {"a", "2"}, {"c", "1"}} {
		req := &pb.PutRequest{Key: []byte(kv[0]), Value: []byte(kv[1])}
		if i == 3 {
			req.Lease = 7
		}
		if _, err := ft.kv.Put(ctx, req); err != nil {
			f.Fatal(err)
		}
	}
	if _, err := ft.kv.Compact(ctx, &pb.CompactionRequest{Revision: 3}); err != nil {
		f.Fatal(err)
	}
	return ft
}

// state fingerprints the node's data: HashKV over all history with its
// revisions, and the leases.
func (ft *fuzzTarget) state(t *testing.T, ctx context.Context) string {
	t.Helper()
	h, err := ft.maint.HashKV(ctx, &pb.HashKVRequest{})
	if err != nil {
		t.Fatalf("HashKV after a fuzzed request: %v", err)
	}
	l, err := ft.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil {
		t.Fatalf("LeaseLeases after a fuzzed request: %v", err)
	}
	return fmt.Sprintf("hash %d rev %d compact %d leases %v", h.Hash, h.Header.Revision, h.CompactRevision, l.Leases)
}

// checkRefusal fails unless err is a gRPC status with a definite code: not
// Unknown or Internal (an unclassified failure) and not Unavailable (the
// node went away).
func checkRefusal(t *testing.T, what string, err error) {
	t.Helper()
	s, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: error without a gRPC status: %v", what, err)
	}
	switch s.Code() {
	case codes.Unknown, codes.Internal, codes.Unavailable, codes.DeadlineExceeded:
		t.Fatalf("%s: refused with %v: %s", what, s.Code(), s.Message())
	}
}

// fuzzCall runs one fuzzed request: it must answer, and if it refuses, the
// state must be as before.
func (ft *fuzzTarget) fuzzCall(t *testing.T, what string, mutates bool, call func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := ft.state(t, ctx)
	err := call(ctx)
	if err != nil {
		checkRefusal(t, what, err)
	}
	if err != nil || !mutates {
		if after := ft.state(t, ctx); after != before {
			t.Fatalf("%s (err %v) changed the state:\n%s\nto\n%s", what, err, before, after)
		}
	}
}

func addMsg(f *testing.F, ms ...proto.Message) {
	for _, m := range ms {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzRange(f *testing.F) {
	addMsg(f,
		&pb.RangeRequest{Key: []byte("a")},
		&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 2, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD},
		&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), Revision: 2, CountOnly: true},
		&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Revision: 99, KeysOnly: true, Serializable: true},
		&pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a"), MinModRevision: 3, MaxCreateRevision: 4},
	)
	ft := startFuzzTarget(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.RangeRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ft.fuzzCall(t, fmt.Sprintf("Range %v", &req), false, func(ctx context.Context) error {
			_, err := ft.kv.Range(ctx, &req)
			return err
		})
	})
}

func FuzzPut(f *testing.F) {
	addMsg(f,
		&pb.PutRequest{Key: []byte("a"), Value: []byte("x"), PrevKv: true},
		&pb.PutRequest{Key: []byte("c"), IgnoreValue: true, IgnoreLease: true},
		&pb.PutRequest{Key: []byte("d"), Value: []byte("x"), Lease: 8},
		&pb.PutRequest{Key: []byte("e"), IgnoreValue: true},
		&pb.PutRequest{Value: []byte("no key")},
	)
	ft := startFuzzTarget(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.PutRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ft.fuzzCall(t, fmt.Sprintf("Put %v", &req), true, func(ctx context.Context) error {
			_, err := ft.kv.Put(ctx, &req)
			return err
		})
	})
}

func FuzzTxn(f *testing.F) {
	put := func(k string, lease int64) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("t"), Lease: lease}}}
	}
	addMsg(f,
		&pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_VALUE, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Value{Value: []byte("2")}}},
			Success: []*pb.RequestOp{put("x", 0), {Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("b"), PrevKv: true}}}},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}}}},
		},
		&pb.TxnRequest{Success: []*pb.RequestOp{put("x", 0), put("x", 0)}},
		&pb.TxnRequest{Success: []*pb.RequestOp{put("y", 0), put("z", 99)}},
		&pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte("c"), Target: pb.Compare_LEASE, Result: pb.Compare_NOT_EQUAL, TargetUnion: &pb.Compare_Lease{Lease: 7}, RangeEnd: []byte("d")}},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{put("n", 7)}}}}},
		},
		&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), Revision: 1}}}, put("w", 0)}},
	)
	ft := startFuzzTarget(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.TxnRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ft.fuzzCall(t, fmt.Sprintf("Txn %v", &req), true, func(ctx context.Context) error {
			_, err := ft.kv.Txn(ctx, &req)
			return err
		})
	})
}

func FuzzWatchCreate(f *testing.F) {
	addMsg(f,
		&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 3, PrevKv: true},
		&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte{0}, StartRevision: 1},
		&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a"), WatchId: 4},
		&pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, 7}, ProgressNotify: true, Fragment: true, StartRevision: 99},
		&pb.WatchCreateRequest{StartRevision: -1, WatchId: -5},
	)
	ft := startFuzzTarget(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.WatchCreateRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ft.fuzzCall(t, fmt.Sprintf("Watch create %v", &req), false, func(ctx context.Context) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := ft.watch.Watch(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &req}}); err != nil {
				return err
			}
			r, err := s.Recv()
			if err != nil {
				return err
			}
			if !r.Created {
				t.Fatalf("first answer to a create: %v, want created (or refused as created and canceled)", r)
			}
			if r.Canceled {
				return nil
			}
			// Accepted: it can be cancelled again.
			if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: r.WatchId}}}); err != nil {
				return err
			}
			for {
				r, err := s.Recv()
				if err != nil {
					return err
				}
				if r.Canceled {
					return nil
				}
			}
		})
	})
}
