package mvcc

import (
	"bytes"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// ValidateRange checks a RangeRequest as etcd does before serving it.
func ValidateRange(r *pb.RangeRequest) error {
	if r == nil || len(r.Key) == 0 {
		return ErrEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return ErrInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return ErrInvalidSortOption
	}
	return nil
}

// ValidatePut checks a PutRequest as etcd does before proposing it.
func ValidatePut(r *pb.PutRequest) error {
	if r == nil || len(r.Key) == 0 {
		return ErrEmptyKey
	}
	if r.IgnoreValue && len(r.Value) != 0 {
		return ErrValueProvided
	}
	if r.IgnoreLease && r.Lease != 0 {
		return ErrLeaseProvided
	}
	return nil
}

// ValidateDeleteRange checks a DeleteRangeRequest as etcd does.
func ValidateDeleteRange(r *pb.DeleteRangeRequest) error {
	if r == nil || len(r.Key) == 0 {
		return ErrEmptyKey
	}
	return nil
}

// ValidateTxn checks a TxnRequest as etcd does before proposing it: the op
// count (maxOps <= 0 means no limit), empty keys, each op, then put/delete
// overlaps within each branch (a put may not repeat a key or fall inside a
// delete of the same txn, nested txns included).
func ValidateTxn(r *pb.TxnRequest, maxOps int) error {
	if maxOps <= 0 {
		maxOps = math.MaxInt32
	}
	if err := validateTxnOps(r, maxOps); err != nil {
		return err
	}
	if _, _, err := checkIntervals(r.Success); err != nil {
		return err
	}
	_, _, err := checkIntervals(r.Failure)
	return err
}

func validateTxnOps(r *pb.TxnRequest, maxOps int) error {
	if r == nil {
		return ErrKeyNotFound
	}
	opc := max(len(r.Compare), len(r.Success), len(r.Failure))
	if opc > maxOps {
		return ErrTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.GetKey()) == 0 {
			return ErrEmptyKey
		}
	}
	// As in etcd, a nested txn may use what the outer one left of the limit.
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			if err := validateOp(u, maxOps-opc); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateOp(u *pb.RequestOp, maxOps int) error {
	switch op := u.Request.(type) {
	case *pb.RequestOp_RequestRange:
		return ValidateRange(op.RequestRange)
	case *pb.RequestOp_RequestPut:
		return ValidatePut(op.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return ValidateDeleteRange(op.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return validateTxnOps(op.RequestTxn, maxOps)
	default:
		// etcd answers an op without a request with "key not found".
		return ErrKeyNotFound
	}
}

// interval is a deleted key range as etcd's overlap check sees it:
// [begin, end) with a single key k as [k, k+"\x00"). An end of "\x00"
// (etcd's "from key") makes an interval that contains no key here, exactly
// as in etcd, whose check treats it the same way.
type interval struct{ begin, end []byte }

func delInterval(d *pb.DeleteRangeRequest) interval {
	if len(d.RangeEnd) == 0 {
		return interval{d.Key, append(append([]byte(nil), d.Key...), 0)}
	}
	return interval{d.Key, d.RangeEnd}
}

func (iv interval) contains(k []byte) bool {
	return bytes.Compare(iv.begin, k) <= 0 && bytes.Compare(k, iv.end) < 0
}

func anyContains(ivs []interval, k []byte) bool {
	for _, iv := range ivs {
		if iv.contains(k) {
			return true
		}
	}
	return false
}

// checkIntervals mirrors etcd's overlap rules for one branch: it returns
// the keys put and the ranges deleted by the branch and its nested txns.
// The checks run in etcd's order (the branch's deletes, then each nested
// txn against what came before it, then the branch's puts), so the same
// requests are refused.
func checkIntervals(reqs []*pb.RequestOp) (map[string]struct{}, []interval, error) {
	var dels []interval
	for _, req := range reqs {
		if d := req.GetRequestDeleteRange(); d != nil {
			dels = append(dels, delInterval(d))
		}
	}
	puts := make(map[string]struct{})
	for _, req := range reqs {
		t := req.GetRequestTxn()
		if t == nil {
			continue
		}
		putsThen, delsThen, err := checkIntervals(t.Success)
		if err != nil {
			return nil, nil, err
		}
		putsElse, delsElse, err := checkIntervals(t.Failure)
		if err != nil {
			return nil, nil, err
		}
		for k := range putsThen {
			if _, ok := puts[k]; ok || anyContains(dels, []byte(k)) {
				return nil, nil, ErrDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range putsElse {
			if _, ok := puts[k]; ok {
				if _, safe := putsThen[k]; !safe {
					return nil, nil, ErrDuplicateKey
				}
			}
			if anyContains(dels, []byte(k)) {
				return nil, nil, ErrDuplicateKey
			}
			puts[k] = struct{}{}
		}
		dels = append(dels, delsThen...)
		dels = append(dels, delsElse...)
	}
	for _, req := range reqs {
		p := req.GetRequestPut()
		if p == nil {
			continue
		}
		k := string(p.Key)
		if _, ok := puts[k]; ok || anyContains(dels, p.Key) {
			return nil, nil, ErrDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}

// IsTxnReadOnly reports whether every op of both branches is a Range (a
// nested txn counts as a write, as in etcd).
func IsTxnReadOnly(r *pb.TxnRequest) bool {
	// A nested txn's op is not a Range, so the walk stops before entering it.
	return EachOp(r, func(op *pb.RequestOp) bool { return op.GetRequestRange() != nil })
}
