package shard

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestTxnCounts: a txn counts its compares as ranges and the operations of
// the branch it took, nested txns included, and counts as a txn only when
// it ran more than one operation.
func TestTxnCounts(t *testing.T) {
	put := &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a")}}}
	get := &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a")}}}
	del := &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("a")}}}
	cmp := &pb.Compare{Key: []byte("a")}
	nested := &pb.TxnRequest{Compare: []*pb.Compare{cmp}, Success: []*pb.RequestOp{put, put}, Failure: []*pb.RequestOp{del}}
	txnOp := &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: nested}}
	txnResp := func(ok bool, subs ...*pb.TxnResponse) *pb.TxnResponse {
		r := &pb.TxnResponse{Succeeded: ok}
		for _, s := range subs {
			r.Responses = append(r.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: s}})
		}
		return r
	}
	for _, tc := range []struct {
		name string
		req  *pb.TxnRequest
		resp *pb.TxnResponse
		want OpCounts
	}{
		{"one put", &pb.TxnRequest{Success: []*pb.RequestOp{put}}, txnResp(true), OpCounts{Puts: 1}},
		{"compare and put", &pb.TxnRequest{Compare: []*pb.Compare{cmp}, Success: []*pb.RequestOp{put}}, txnResp(true), OpCounts{Puts: 1, Ranges: 1, Txns: 1}},
		{"failure branch", &pb.TxnRequest{Compare: []*pb.Compare{cmp}, Success: []*pb.RequestOp{put}, Failure: []*pb.RequestOp{get, del}},
			txnResp(false), OpCounts{Ranges: 2, Deletes: 1, Txns: 1}},
		{"nested", &pb.TxnRequest{Success: []*pb.RequestOp{txnOp}}, txnResp(true, txnResp(true)), OpCounts{Puts: 2, Ranges: 1, Txns: 1}},
		{"nested failure", &pb.TxnRequest{Success: []*pb.RequestOp{txnOp}}, txnResp(true, txnResp(false)), OpCounts{Deletes: 1, Ranges: 1, Txns: 1}},
		{"empty", &pb.TxnRequest{}, txnResp(true), OpCounts{}},
	} {
		if got := txnCounts(tc.req, tc.resp); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
