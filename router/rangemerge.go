package router

import (
	"bytes"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
)

// A Range over several ranges (sharded mode) is answered in two steps:
// each range's shard answers partRange — the request clipped to its span,
// at one revision, in key order — and mergeRange combines those answers
// into exactly what etcd answers for the same data. etcd takes key-values
// from its store in key order (limit+1 of them, or all when it must sort
// or filter), filters, sorts with an unstable sort and cuts to the limit;
// the merge does the same over the key-ordered union of the parts, so
// even ties in a sort come out in etcd's order.

// partRange returns the request the shard owning [start, end) answers for
// r at revision rev (0: its latest), or nil if r does not reach the span.
// end nil is the end of the key space.
func partRange(r *pb.RangeRequest, start, end []byte, rev int64) *pb.RangeRequest {
	lo, hi, ok := clipRange(r.Key, r.RangeEnd, start, end)
	if !ok {
		return nil
	}
	p := proto.Clone(r).(*pb.RangeRequest)
	p.Key, p.RangeEnd, p.Revision = lo, hi, rev
	// In key order, as many as etcd would take from its store.
	p.SortOrder, p.SortTarget = pb.RangeRequest_NONE, pb.RangeRequest_KEY
	p.Limit = mvcc.FetchLimit(r)
	// A sort by value needs the values; the merge drops them after.
	p.KeysOnly = r.KeysOnly && r.SortTarget != pb.RangeRequest_VALUE
	return p
}

// clipRange intersects etcd's [key, rangeEnd) (rangeEnd empty: the key
// alone; "\x00": to the end) with [start, end) and returns it in etcd's
// form.
func clipRange(key, rangeEnd, start, end []byte) (lo, hi []byte, ok bool) {
	inSpan := func(k []byte) bool {
		return bytes.Compare(k, start) >= 0 && (end == nil || bytes.Compare(k, end) < 0)
	}
	if len(rangeEnd) == 0 {
		return key, nil, inSpan(key)
	}
	lo = key
	if bytes.Compare(start, lo) > 0 {
		lo = start
	}
	toEnd := len(rangeEnd) == 1 && rangeEnd[0] == 0
	switch {
	case end == nil && toEnd:
		hi = []byte{0}
	case end == nil:
		hi = rangeEnd
	case toEnd || bytes.Compare(end, rangeEnd) < 0:
		hi = end
	default:
		hi = rangeEnd
	}
	if !(len(hi) == 1 && hi[0] == 0) && bytes.Compare(lo, hi) >= 0 {
		return nil, nil, false
	}
	return lo, hi, true
}

// mergeRange combines the parts' answers to partRange requests, given in
// key order of their spans, into etcd's answer to r at revision rev.
func mergeRange(r *pb.RangeRequest, parts []*pb.RangeResponse, rev int64) *pb.RangeResponse {
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rev}}
	var kvs []*mvccpb.KeyValue
	for _, p := range parts {
		resp.Count += p.Count
		kvs = append(kvs, p.Kvs...)
	}
	if n := mvcc.FetchLimit(r); n > 0 && int64(len(kvs)) > n {
		kvs = kvs[:n]
	}
	mvcc.SortKVs(kvs, r)
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs = kvs[:r.Limit]
		resp.More = true
	}
	if r.KeysOnly {
		for i, kv := range kvs {
			c := proto.Clone(kv).(*mvccpb.KeyValue)
			c.Value = nil
			kvs[i] = c
		}
	}
	resp.Kvs = kvs
	return resp
}
