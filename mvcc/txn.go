package mvcc

import (
	"bytes"
	"cmp"
	"math"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// rangeLimit is how many keys to fetch: all of them when the answer must be
// re-sorted or filtered, else one more than the limit (to set More).
func rangeLimit(r *pb.RangeRequest) int64 {
	limit := r.Limit
	if !isDefaultOrdering(r.SortTarget, r.SortOrder) || hasRevisionFilters(r) {
		limit = 0
	}
	if limit > 0 && limit < math.MaxInt64 {
		limit++
	}
	return limit
}

func isDefaultOrdering(t pb.RangeRequest_SortTarget, o pb.RangeRequest_SortOrder) bool {
	return o == pb.RangeRequest_NONE || (t == pb.RangeRequest_KEY && o == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

func filterRange(rr *rangeResult, r *pb.RangeRequest) {
	prune := func(drop func(*mvccpb.KeyValue) bool) {
		j := 0
		for _, kv := range rr.kvs {
			if !drop(kv) {
				rr.kvs[j] = kv
				j++
			}
		}
		rr.kvs = rr.kvs[:j]
	}
	if r.MaxModRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.ModRevision > r.MaxModRevision })
	}
	if r.MinModRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.ModRevision < r.MinModRevision })
	}
	if r.MaxCreateRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision > r.MaxCreateRevision })
	}
	if r.MinCreateRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision < r.MinCreateRevision })
	}
}

// kvSorter orders key-values by one field. sort.Sort (not a stable sort)
// is used on purpose: etcd uses it, and ties must come out in etcd's order.
type kvSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (s kvSorter) Len() int           { return len(s.kvs) }
func (s kvSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s kvSorter) Less(i, j int) bool { return s.less(s.kvs[i], s.kvs[j]) }

func sortRange(rr *rangeResult, r *pb.RangeRequest) { SortKVs(rr.kvs, r) }

// FetchLimit is how many key-values, in key order, etcd takes from the
// store for r before it filters, sorts and cuts to r.Limit: r.Limit+1 when
// the request keeps the store's order (judged, as etcd does, before a
// sort_order of NONE is read as ascending) and has no revision filters,
// otherwise all of them (0). A router merging shards' answers must cut the
// key-ordered union to it before sorting, or its ties and limits differ
// from etcd's.
func FetchLimit(r *pb.RangeRequest) int64 { return rangeLimit(r) }

// SortKVs orders kvs as etcd orders a Range's result for r, in place. kvs
// must be in key order (as the store yields them): etcd's sort is not
// stable, so ties come out as etcd's come out only from the same input.
func SortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) {
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	if isDefaultOrdering(r.SortTarget, order) {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch r.SortTarget {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version-b.Version < 0 }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision-b.CreateRevision < 0 }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision-b.ModRevision < 0 }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		return // refused by ValidateRange
	}
	var s sort.Interface = kvSorter{kvs, less}
	switch order {
	case pb.RangeRequest_ASCEND:
		sort.Sort(s)
	case pb.RangeRequest_DESCEND:
		sort.Sort(sort.Reverse(s))
	}
}

// compareToPath evaluates the compares of r and of every nested txn on the
// taken branches, depth first: path[0] is r's outcome, then its nested
// txns' paths in order, as etcd lays it out.
func compareToPath(v *view, r *pb.TxnRequest) ([]bool, error) {
	ok, err := applyCompares(v, r.Compare)
	if err != nil {
		return nil, err
	}
	path := []bool{ok}
	ops := r.Success
	if !ok {
		ops = r.Failure
	}
	for _, op := range ops {
		t := op.GetRequestTxn()
		if t == nil {
			continue
		}
		sub, err := compareToPath(v, t)
		if err != nil {
			return nil, err
		}
		path = append(path, sub...)
	}
	return path, nil
}

func applyCompares(v *view, cmps []*pb.Compare) (bool, error) {
	for _, c := range cmps {
		ok, err := applyCompare(v, c)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// applyCompare holds when every key of the compare's range satisfies it; an
// empty range compares as a zero key-value, except that a VALUE compare on
// nothing fails. A compare over keys outside the span is ErrOutsideSpan,
// as an op there is: the request reached a range that does not hold its
// keys (a split moved them), and is refused so that the router sends it to
// the one that does. (Taking it as false would run the else branch on a
// compare never made: a Kubernetes create told that its key exists.)
func applyCompare(v *view, c *pb.Compare) (bool, error) {
	rr, err := v.rangeKeys(c.Key, mkGteRange(c.RangeEnd), 0, 0, false)
	if err != nil {
		return false, err
	}
	if len(rr.kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	for _, kv := range rr.kvs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var result int
	switch c.Target {
	case pb.Compare_VALUE:
		result = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		result = cmp.Compare(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		result = cmp.Compare(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		result = cmp.Compare(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		result = cmp.Compare(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return result == 0
	case pb.Compare_NOT_EQUAL:
		return result != 0
	case pb.Compare_GREATER:
		return result > 0
	case pb.Compare_LESS:
		return result < 0
	}
	return true
}

// checkTxn runs etcd's pre-write checks over the branches path takes:
// range revisions, and for puts the lease and the previous key that
// ignore_value / ignore_lease need. leases nil: no lease exists.
func checkTxn(v *view, r *pb.TxnRequest, path []bool, leases LeaseChecker) error {
	var err error
	eachTakenOp(r, path, func(op *pb.RequestOp) bool {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			err = checkRangeRev(v, o.RequestRange)
		case *pb.RequestOp_RequestPut:
			err = checkPut(v, o.RequestPut, leases)
		}
		return err == nil
	})
	return err
}

func checkRangeRev(v *view, r *pb.RangeRequest) error {
	switch {
	case r.Revision == 0:
		return nil
	case Revision(r.Revision) > v.cur:
		return ErrFutureRev
	case Revision(r.Revision) < v.compact:
		return ErrCompacted
	}
	return nil
}

// checkPut is etcd's: the lease must exist, and ignore_value/ignore_lease
// need a live previous key.
func checkPut(v *view, p *pb.PutRequest, leases LeaseChecker) error {
	if p.Lease != 0 && (leases == nil || !leases.LeaseExists(p.Lease)) {
		return ErrLeaseNotFound
	}
	if p.IgnoreValue || p.IgnoreLease {
		if err := v.checkSpan(p.Key, nil); err != nil {
			return err
		}
		prev, err := v.get(p.Key, v.cur)
		if err != nil {
			return err
		}
		if prev == nil {
			return ErrKeyNotFound
		}
	}
	return nil
}
