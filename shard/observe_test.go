package shard

import (
	"fmt"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
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

// TestTimingDescribes: a slow request is described as etcd's slow-apply
// line describes it: values as their sizes only, the response's size, the
// refusal as the error, and etcd's prefix for reads.
func TestTimingDescribes(t *testing.T) {
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	put := &shardpb.Request{Op: &shardpb.Request_Put{Put: enc(&pb.PutRequest{Key: []byte("a"), Value: []byte("secret")})}}
	putResp := &shardpb.Response{Result: &shardpb.Response_Put{Put: enc(&pb.PutResponse{Header: &pb.ResponseHeader{Revision: 7}})}}
	txn := &shardpb.Request{Op: &shardpb.Request_Txn{Txn: enc(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: []byte("b"), Value: []byte("hidden!")}}}}})}}
	grant := &shardpb.Request{Op: &shardpb.Request_LeaseGrant{LeaseGrant: enc(&pb.LeaseGrantRequest{ID: 0x1f, TTL: 5})}}
	refused := &shardpb.Response{Result: &shardpb.Response_Error{Error: &shardpb.Error{Message: "mvcc: required revision has been compacted"}}}
	hold := &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{Target: 2}}}
	rangeReq := &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c")}
	rangeRes := &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{{Key: []byte("a")}, {Key: []byte("b")}}}
	for _, tc := range []struct {
		name                       string
		t                          Timing
		prefix, req, resp, errText string
	}{
		{"put", Timing{applied: put, response: putResp}, "", `put:<key:"a" value_size:6 >`, "size:4", ""},
		{"txn", Timing{applied: txn, response: refused}, "", `value_size:7`, "", "mvcc: required revision has been compacted"},
		{"lease grant", Timing{applied: grant}, "", "lease_grant:<ttl:5-second id:000000000000001f>", "", ""},
		{"cairn's own", Timing{applied: hold, response: &shardpb.Response{Result: &shardpb.Response_TransferHold{TransferHold: true}}},
			"", "transfer_hold:<>", "size:2", ""},
		{"read", Timing{rangeReq: rangeReq, rangeRes: rangeRes}, "read-only range ", `key:"a" range_end:"c"`,
			fmt.Sprintf("range_response_count:2 size:%d", proto.Size(rangeRes)), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.t.Prefix(); got != tc.prefix {
				t.Errorf("prefix %q, want %q", got, tc.prefix)
			}
			if got := tc.t.Request(); !strings.Contains(got, tc.req) || strings.Contains(got, "secret") || strings.Contains(got, "hidden") {
				t.Errorf("request %q, want it to hold %q and no value", got, tc.req)
			}
			if got := tc.t.Response(); got != tc.resp {
				t.Errorf("response %q, want %q", got, tc.resp)
			}
			var errText string
			if err := tc.t.Err(); err != nil {
				errText = err.Error()
			}
			if errText != tc.errText {
				t.Errorf("error %q, want %q", errText, tc.errText)
			}
		})
	}
}
