package router

import (
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// The router's folds over a txn (txnSpans, txnLeases, txnMaxRev,
// txnSerializable, quotaCost), on one txn with nested txns in both
// branches:
//
//	compare a
//	success: [get b rev=7 serializable, txn{ compare c; success: [put d lease=1 "xy"]; failure: [del e..f, put g lease=2 ""] }]
//	failure: [put h lease=3 "v", txn{ success: [get i rev=9] }]
func walkedTxn() *pb.TxnRequest {
	get := func(k string, rev int64, ser bool) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k), Revision: rev, Serializable: ser}}}
	}
	put := func(k string, lease int64, v string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Lease: lease, Value: []byte(v)}}}
	}
	txn := func(t *pb.TxnRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
	}
	del := &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("e"), RangeEnd: []byte("f")}}}
	return &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("a")}},
		Success: []*pb.RequestOp{get("b", 7, true), txn(&pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte("c")}},
			Success: []*pb.RequestOp{put("d", 1, "xy")},
			Failure: []*pb.RequestOp{del, put("g", 2, "")},
		})},
		Failure: []*pb.RequestOp{put("h", 3, "v"), txn(&pb.TxnRequest{Success: []*pb.RequestOp{get("i", 9, false)}})},
	}
}

func TestTxnWalks(t *testing.T) {
	r := walkedTxn()
	var spans []string
	for _, s := range txnSpans(r, nil) {
		spans = append(spans, fmt.Sprintf("%s..%s", s.key, s.end))
	}
	// Compares first, a nested txn's compares just before its ops.
	if want := []string{"a..", "b..", "c..", "d..", "e..f", "g..", "h..", "i.."}; !slices.Equal(spans, want) {
		t.Errorf("txnSpans = %q, want %q", spans, want)
	}
	if got, want := txnLeases(r, nil), []int64{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("txnLeases = %v, want %v", got, want)
	}
	if got := txnMaxRev(r); got != 9 {
		t.Errorf("txnMaxRev = %d, want 9 (the nested failure branch's read)", got)
	}
	if txnSerializable(r) {
		t.Errorf("txnSerializable = true, want false: the nested get i is linearizable")
	}
	r.Failure[1].GetRequestTxn().Success[0].GetRequestRange().Serializable = true
	if !txnSerializable(r) {
		t.Errorf("txnSerializable = false with every range serializable")
	}

	// Nested txn: max(put d = 256+3, del + put g = 256+1) = 259.
	// Success: 0 + 259; failure: put h = 256+2, nested txn 0. So 259.
	if got := quotaCost(r); got != 259 {
		t.Errorf("quotaCost = %d, want 259", got)
	}
	r.Failure = append(r.Failure, &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
		Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("j")}}}},
	}}})
	// Failure now: 258 + 0 + 257 = 515.
	if got := quotaCost(r); got != 515 {
		t.Errorf("quotaCost = %d, want 515 once the failure branch holds a second nested put", got)
	}
}
