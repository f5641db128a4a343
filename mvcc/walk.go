package mvcc

import pb "go.etcd.io/etcd/api/v3/etcdserverpb"

// EachOp calls fn for every op of r's branches, Success before Failure, and
// of the txns nested in them, depth first and in order: an op holding a
// nested txn is visited first, then that txn's Success ops, then its
// Failure ops, then the op after it. A nil nested txn is visited as an op
// and has nothing under it. The walk stops as soon as fn returns false;
// EachOp reports whether it visited every op. Compares are not visited.
//
//	txn{ success: [put a, txn{ success: [put b], failure: [del c] }], failure: [get d] }
//	→ put a, txn, put b, del c, get d
//
// It is the one walker over a TxnRequest: callers that need something of
// every op (its keys, its leases, whether it writes) fold it in fn rather
// than recursing themselves.
func EachOp(r *pb.TxnRequest, fn func(op *pb.RequestOp) bool) bool {
	return walk(r, bothBranches, fn)
}

// eachTakenOp is EachOp over the branches a txn takes: path[0] says
// whether r takes Success (true) or Failure, then come the nested txns on
// the taken branches in the order EachOp reaches them, as compareToPath
// lays the path out. A path shorter than that panics.
func eachTakenOp(r *pb.TxnRequest, path []bool, fn func(op *pb.RequestOp) bool) bool {
	return walk(r, func(t *pb.TxnRequest) (first, then []*pb.RequestOp) {
		took := path[0]
		path = path[1:]
		if took {
			return t.Success, nil
		}
		return t.Failure, nil
	}, fn)
}

func bothBranches(t *pb.TxnRequest) (first, then []*pb.RequestOp) {
	return t.Success, t.Failure
}

// walk visits r's ops as EachOp says, of each txn (r first, then the nested
// ones as it reaches them) only the branches pick returns, in that order.
func walk(r *pb.TxnRequest, pick func(t *pb.TxnRequest) (first, then []*pb.RequestOp), fn func(op *pb.RequestOp) bool) bool {
	// todo holds the op lists left to visit, the next on top: a nested
	// txn's branches go above the rest of the branch that holds it.
	var buf [8][]*pb.RequestOp
	todo := buf[:0]
	first, then := pick(r)
	todo = append(todo, then, first)
	for len(todo) > 0 {
		top := len(todo) - 1
		ops := todo[top]
		if len(ops) == 0 {
			todo = todo[:top]
			continue
		}
		op := ops[0]
		todo[top] = ops[1:]
		if !fn(op) {
			return false
		}
		if t := op.GetRequestTxn(); t != nil {
			first, then := pick(t)
			todo = append(todo, then, first)
		}
	}
	return true
}
