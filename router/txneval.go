package router

import (
	"bytes"
	"cmp"
	"context"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
)

// The coordinator's evaluation of a cross-range txn, as a range's store
// evaluates one (mvcc.Batch.Txn), over the keys its participants read when
// they locked them: every compare first, on the state before the txn, then
// the ops of the branches taken in order, each seeing the writes of the
// ones before it.

// txnView is the state of the locked spans at the prepare, from the
// participants' reads.
type txnView struct {
	base map[string]*mvccpb.KeyValue
	// capRev is the oracle's value before the prepares: a read at a past
	// revision above it names the future.
	capRev mvcc.Revision
}

func newTxnView(reads []*pb.TxnResponse, capRev mvcc.Revision) *txnView {
	v := &txnView{base: map[string]*mvccpb.KeyValue{}, capRev: capRev}
	for _, rd := range reads {
		for _, ro := range rd.GetResponses() {
			for _, kv := range ro.GetResponseRange().GetKvs() {
				v.base[string(kv.Key)] = kv
			}
		}
	}
	return v
}

// txnEval is an evaluation: the answer, the writes in order, and whether
// any changes a key.
type txnEval struct {
	resp    *pb.TxnResponse
	writes  []*pb.RequestOp
	changed bool
}

// inEtcdSpan reports whether key lies in etcd's [start, end).
func inEtcdSpan(key, start, end []byte) bool {
	if len(end) == 0 {
		return bytes.Equal(key, start)
	}
	return bytes.Compare(key, start) >= 0 && (isInf(end) || bytes.Compare(key, end) < 0)
}

// scan returns the live keys of [key, end) in m, in key order.
func scan(m map[string]*mvccpb.KeyValue, key, end []byte) []*mvccpb.KeyValue {
	if len(end) == 0 {
		if kv := m[string(key)]; kv != nil {
			return []*mvccpb.KeyValue{kv}
		}
		return nil
	}
	var out []*mvccpb.KeyValue
	for _, kv := range m {
		if inEtcdSpan(kv.Key, key, end) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

// eval evaluates r; rev is the transaction's revision (0 before it is
// taken: the writes' revisions are then placeholders).
func (v *txnView) eval(ctx context.Context, s *Server, r *pb.TxnRequest, rev mvcc.Revision) (*txnEval, error) {
	path := v.path(r)
	cur := make(map[string]*mvccpb.KeyValue, len(v.base))
	for k, kv := range v.base {
		cur[k] = kv
	}
	ev := &txnEval{resp: &pb.TxnResponse{Header: &pb.ResponseHeader{}}}
	if _, err := v.exec(ctx, s, cur, r, path, rev, ev, ev.resp); err != nil {
		return nil, err
	}
	return ev, nil
}

// path is the outcome of r's compares and of its nested txns' on the
// branches taken, depth first, as mvcc lays it out.
func (v *txnView) path(r *pb.TxnRequest) []bool {
	ok := true
	for _, c := range r.Compare {
		if !compareHolds(v.base, c) {
			ok = false
			break
		}
	}
	out := []bool{ok}
	ops := r.Success
	if !ok {
		ops = r.Failure
	}
	for _, op := range ops {
		if t := op.GetRequestTxn(); t != nil {
			out = append(out, v.path(t)...)
		}
	}
	return out
}

// compareHolds is etcd's compare over the keys of its range: every key
// must satisfy it; none compares as a zero key-value, except that a VALUE
// compare on nothing fails.
func compareHolds(m map[string]*mvccpb.KeyValue, c *pb.Compare) bool {
	kvs := scan(m, c.Key, c.RangeEnd)
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false
		}
		kvs = []*mvccpb.KeyValue{{}}
	}
	for _, kv := range kvs {
		var res int
		switch c.Target {
		case pb.Compare_VALUE:
			res = bytes.Compare(kv.Value, c.GetValue())
		case pb.Compare_CREATE:
			res = cmp.Compare(kv.CreateRevision, c.GetCreateRevision())
		case pb.Compare_MOD:
			res = cmp.Compare(kv.ModRevision, c.GetModRevision())
		case pb.Compare_VERSION:
			res = cmp.Compare(kv.Version, c.GetVersion())
		case pb.Compare_LEASE:
			res = cmp.Compare(kv.Lease, c.GetLease())
		}
		var ok bool
		switch c.Result {
		case pb.Compare_EQUAL:
			ok = res == 0
		case pb.Compare_NOT_EQUAL:
			ok = res != 0
		case pb.Compare_GREATER:
			ok = res > 0
		case pb.Compare_LESS:
			ok = res < 0
		default:
			ok = true
		}
		if !ok {
			return false
		}
	}
	return true
}

// exec runs the branch of r that path takes into resp, returning how many
// entries of path its nested txns used.
func (v *txnView) exec(ctx context.Context, s *Server, cur map[string]*mvccpb.KeyValue, r *pb.TxnRequest, path []bool,
	rev mvcc.Revision, ev *txnEval, resp *pb.TxnResponse) (int, error) {
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	resp.Succeeded = path[0]
	resp.Responses = make([]*pb.ResponseOp, len(ops))
	used := 0
	for i, op := range ops {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := v.rangeOp(ctx, s, cur, o.RequestRange, rev)
			if err != nil {
				return 0, err
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestPut:
			p := o.RequestPut
			prev := cur[string(p.Key)]
			if (p.IgnoreValue || p.IgnoreLease) && prev == nil {
				return 0, rpctypes.ErrGRPCKeyNotFound
			}
			kv := &mvccpb.KeyValue{Key: p.Key, Value: p.Value, Lease: p.Lease, ModRevision: int64(rev), CreateRevision: int64(rev), Version: 1}
			if prev != nil {
				kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
				if p.IgnoreValue {
					kv.Value = prev.Value
				}
				if p.IgnoreLease {
					kv.Lease = prev.Lease
				}
			}
			cur[string(p.Key)] = kv
			pr := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: int64(rev)}}
			if p.PrevKv && prev != nil {
				pr.PrevKv = prev
			}
			ev.writes = append(ev.writes, op)
			ev.changed = true
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}}
		case *pb.RequestOp_RequestDeleteRange:
			d := o.RequestDeleteRange
			gone := scan(cur, d.Key, d.RangeEnd)
			dr := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: int64(rev)}, Deleted: int64(len(gone))}
			for _, kv := range gone {
				delete(cur, string(kv.Key))
			}
			if d.PrevKv {
				dr.PrevKvs = gone
			}
			if len(gone) > 0 {
				ev.writes = append(ev.writes, op)
				ev.changed = true
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}}
		case *pb.RequestOp_RequestTxn:
			sub := &pb.TxnResponse{Header: &pb.ResponseHeader{}} // etcd leaves a nested txn's header empty
			k, err := v.exec(ctx, s, cur, o.RequestTxn, path[1:], rev, ev, sub)
			if err != nil {
				return 0, err
			}
			path = path[k+1:]
			used += k + 1
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}}
		}
	}
	return used, nil
}

// rangeOp answers a Range of the txn as a range's store would: a past
// revision from the ranges' history (a snapshot read at it), the present
// from the locked state with the txn's writes so far.
func (v *txnView) rangeOp(ctx context.Context, s *Server, cur map[string]*mvccpb.KeyValue, r *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error) {
	if r.Revision > 0 {
		if mvcc.Revision(r.Revision) > v.capRev {
			return nil, rpctypes.ErrGRPCFutureRev
		}
		q := proto.Clone(r).(*pb.RangeRequest)
		q.Serializable = false
		resp, err := s.rangeAcross(ctx, q, s.spanning(r.Key, r.RangeEnd))
		if err != nil {
			return nil, err
		}
		resp.Header = &pb.ResponseHeader{Revision: int64(rev)}
		return resp, nil
	}
	all := scan(cur, r.Key, r.RangeEnd)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: int64(rev)}, Count: int64(len(all))}
	if r.CountOnly {
		return resp, nil
	}
	kvs := all
	if lim := mvcc.FetchLimit(r); lim > 0 && int64(len(kvs)) > lim {
		kvs = kvs[:lim]
	}
	kvs = filterKVs(kvs, r)
	mvcc.SortKVs(kvs, r)
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs = kvs[:r.Limit]
		resp.More = true
	}
	resp.Kvs = make([]*mvccpb.KeyValue, len(kvs))
	for i, kv := range kvs {
		if r.KeysOnly {
			kv = proto.Clone(kv).(*mvccpb.KeyValue)
			kv.Value = nil
		}
		resp.Kvs[i] = kv
	}
	return resp, nil
}

// filterKVs drops the key-values outside r's revision filters, into a new
// slice.
func filterKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	out := make([]*mvccpb.KeyValue, 0, len(kvs))
	for _, kv := range kvs {
		switch {
		case r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision,
			r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision,
			r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision,
			r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// intents are the writes of the evaluation that fall in participant p:
// its puts, and its delete ranges cut to p's spans.
func (ev *txnEval) intents(p *participant) []*pb.RequestOp {
	var out []*pb.RequestOp
	for _, op := range ev.writes {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestPut:
			if inPart(o.RequestPut.Key, p.part) {
				w := proto.Clone(o.RequestPut).(*pb.PutRequest)
				w.PrevKv = false
				out = append(out, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: w}})
			}
		case *pb.RequestOp_RequestDeleteRange:
			d := o.RequestDeleteRange
			c, ok := clip(keySpan{d.Key, d.RangeEnd}, p.part.Start, p.part.End)
			if !ok {
				continue
			}
			out = append(out, &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{
				Key: c.Key, RangeEnd: c.RangeEnd}}})
		}
	}
	return out
}

// inPart reports whether key lies in range p.
func inPart(key []byte, p RangePart) bool {
	return bytes.Compare(key, p.Start) >= 0 && (len(p.End) == 0 || bytes.Compare(key, p.End) < 0)
}
