package mvcc

import (
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func getOp(k string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k)}}}
}

func putOp(k string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k)}}}
}

func delOp(k string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k)}}}
}

func txnOp(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}

func txnOf(success, failure []*pb.RequestOp) *pb.TxnRequest {
	return &pb.TxnRequest{Success: success, Failure: failure}
}

func opName(op *pb.RequestOp) string {
	switch o := op.Request.(type) {
	case *pb.RequestOp_RequestRange:
		return "get " + string(o.RequestRange.Key)
	case *pb.RequestOp_RequestPut:
		return "put " + string(o.RequestPut.Key)
	case *pb.RequestOp_RequestDeleteRange:
		return "del " + string(o.RequestDeleteRange.Key)
	case *pb.RequestOp_RequestTxn:
		if o.RequestTxn == nil {
			return "txn(nil)"
		}
		return "txn"
	}
	return "?"
}

func ops(o ...*pb.RequestOp) []*pb.RequestOp { return o }

// nestedTxn is
//
//	success: [put a, txn{ success: [put b, txn{ success: [get c] failure: [del d] }], failure: [del e] }, get f]
//	failure: [txn{ success: [put g], failure: [put h] }, del i]
func nestedTxn() *pb.TxnRequest {
	return txnOf(
		ops(putOp("a"), txnOp(txnOf(ops(putOp("b"), txnOp(txnOf(ops(getOp("c")), ops(delOp("d"))))), ops(delOp("e")))), getOp("f")),
		ops(txnOp(txnOf(ops(putOp("g")), ops(putOp("h")))), delOp("i")),
	)
}

// TestEachOp runs EachOp (no path) and eachTakenOp (a path) and lists the
// ops they visit.
func TestEachOp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		txn    *pb.TxnRequest
		path   []bool // nil: EachOp, both branches
		stopAt string // fn returns false on the op of this name
		want   []string
		done   bool
	}{
		{name: "empty", txn: &pb.TxnRequest{}, want: nil, done: true},
		{name: "compares are not ops", txn: &pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("x")}}}, want: nil, done: true},
		{
			name: "flat, success before failure",
			txn:  txnOf(ops(getOp("a"), putOp("b")), ops(delOp("c"), getOp("d"))),
			want: []string{"get a", "put b", "del c", "get d"},
			done: true,
		},
		{
			name: "only failure",
			txn:  txnOf(nil, ops(putOp("a"))),
			want: []string{"put a"},
			done: true,
		},
		{
			name: "nested: the txn op, then its success, its failure, then what follows",
			txn:  nestedTxn(),
			want: []string{"put a", "txn", "put b", "txn", "get c", "del d", "del e", "get f", "txn", "put g", "put h", "del i"},
			done: true,
		},
		{
			name: "a nil nested txn is an op with nothing under it",
			txn:  txnOf(ops(txnOp(nil), putOp("a")), nil),
			want: []string{"txn(nil)", "put a"},
			done: true,
		},
		{
			name:   "stops at the op fn refuses",
			txn:    nestedTxn(),
			stopAt: "get c",
			want:   []string{"put a", "txn", "put b", "txn", "get c"},
		},
		{
			name:   "stopping on a nested txn's op does not enter it",
			txn:    txnOf(ops(getOp("a"), txnOp(txnOf(ops(putOp("b")), nil))), ops(putOp("c"))),
			stopAt: "txn",
			want:   []string{"get a", "txn"},
		},
		{
			name:   "stopping on the last op still reports the stop",
			txn:    txnOf(ops(getOp("a")), nil),
			stopAt: "get a",
			want:   []string{"get a"},
		},
		{
			name: "taken: flat success",
			txn:  txnOf(ops(getOp("a")), ops(putOp("b"))),
			path: []bool{true},
			want: []string{"get a"},
			done: true,
		},
		{
			name: "taken: flat failure",
			txn:  txnOf(ops(getOp("a")), ops(putOp("b"))),
			path: []bool{false},
			want: []string{"put b"},
			done: true,
		},
		{
			// path: r success; nested txn 1 success; its nested txn 2 failure.
			name: "taken: nested txns take path entries in the order they are reached",
			txn:  nestedTxn(),
			path: []bool{true, true, false},
			want: []string{"put a", "txn", "put b", "txn", "del d", "get f"},
			done: true,
		},
		{
			name: "taken: nested txn on the failure branch",
			txn:  nestedTxn(),
			path: []bool{false, false},
			want: []string{"txn", "put h", "del i"},
			done: true,
		},
		{
			name: "taken: a failing nested txn reaches no deeper txn",
			txn:  nestedTxn(),
			path: []bool{true, false},
			want: []string{"put a", "txn", "del e", "get f"},
			done: true,
		},
		{
			name: "taken: sibling txns take consecutive entries after the first's subtree",
			txn: txnOf(ops(
				txnOp(txnOf(ops(txnOp(txnOf(ops(putOp("a")), ops(putOp("b"))))), nil)),
				txnOp(txnOf(ops(putOp("c")), ops(putOp("d")))),
			), nil),
			path: []bool{true, true, false, false},
			want: []string{"txn", "txn", "put b", "txn", "put d"},
			done: true,
		},
		{
			name:   "taken: stops at the op fn refuses",
			txn:    nestedTxn(),
			path:   []bool{true, true, true},
			stopAt: "put b",
			want:   []string{"put a", "txn", "put b"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			fn := func(op *pb.RequestOp) bool {
				got = append(got, opName(op))
				return opName(op) != tc.stopAt
			}
			var done bool
			if tc.path == nil {
				done = EachOp(tc.txn, fn)
			} else {
				done = eachTakenOp(tc.txn, tc.path, fn)
			}
			if !slices.Equal(got, tc.want) || done != tc.done {
				t.Fatalf("visited %q, done=%v; want %q, done=%v", got, done, tc.want, tc.done)
			}
		})
	}
}

func TestIsTxnReadOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		txn  *pb.TxnRequest
		want bool
	}{
		{"empty", &pb.TxnRequest{}, true},
		{"ranges in both branches", txnOf(ops(getOp("a")), ops(getOp("b"))), true},
		{"a put in failure", txnOf(ops(getOp("a")), ops(getOp("b"), putOp("c"))), false},
		{"a delete", txnOf(ops(delOp("a")), nil), false},
		{"a nested txn of ranges counts as a write", txnOf(ops(txnOp(txnOf(ops(getOp("a")), nil))), nil), false},
	} {
		if got := IsTxnReadOnly(tc.txn); got != tc.want {
			t.Errorf("%s: IsTxnReadOnly = %v, want %v", tc.name, got, tc.want)
		}
	}
}
