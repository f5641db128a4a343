package router

import (
	"context"
	"errors"
	"slices"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Leases across ranges (DESIGN.md "Leases"). Every lease's home is the
// first range (Config.Shard): grants, revokes, keepalives and its keys
// there are as in single-group mode. Before a write in another range
// attaches keys to a lease, the router registers that range at the home
// (once per lease and range while the process lives); the write then
// carries the lease as a shadow lease, which the range keeps to delete
// those keys when the home revokes it (RemoteLeases.RevokeRemote).

// RemoteLeases is what the process does for leases whose keys lie in
// ranges other than their home.
type RemoteLeases interface {
	// RevokeRemote deletes, in every range registered as holding keys of
	// lease id, revoked at its home, those keys (each range at its own
	// revision), and marks the lease revoked there.
	RevokeRemote(ctx context.Context, id int64) error
	// RemoteKeys returns the keys attached to lease id in ranges other
	// than its home.
	RemoteKeys(ctx context.Context, id int64) ([][]byte, error)
}

// registered remembers which (lease, range) pairs the home has recorded,
// so that only a range's first write with a lease pays for it. A revoked
// lease that stays in it is refused by the range itself (its tombstone).
type registered struct {
	mu   sync.Mutex
	seen map[[2]int64]struct{}
}

// registeredCap bounds the memory of registered: beyond it, it starts
// over (at the price of registering again).
const registeredCap = 1 << 16

// shadowLeases returns the leases of ids that a write in range sh must
// carry as shadow leases, registering the range at their home first. A
// lease the home does not know is left out: the range then refuses a put
// with it, as etcd does, only if the put runs (a txn branch not taken
// does not need it).
func (s *Server) shadowLeases(ctx context.Context, sh Shard, ids []int64) ([]int64, error) {
	if s.cfg.Ranges == nil || sh == s.cfg.Shard || len(ids) == 0 {
		return nil, nil
	}
	var rangeID uint64
	for _, p := range s.cfg.Ranges.All() {
		if Shard(p.Shard) == sh {
			rangeID = p.ID
		}
	}
	var out []int64
	for _, id := range ids {
		if id == 0 || slices.Contains(out, id) {
			continue
		}
		key := [2]int64{id, int64(rangeID)}
		s.registered.mu.Lock()
		_, ok := s.registered.seen[key]
		s.registered.mu.Unlock()
		if !ok {
			_, err := s.cfg.Shard.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseRegister{
				LeaseRegister: &shardpb.LeaseShard{Lease: id, Shard: rangeID}}})
			var se *shard.Error
			if errors.As(err, &se) && se.Code == shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
				continue
			}
			if err != nil {
				return nil, toGRPC(err)
			}
			s.registered.mu.Lock()
			if s.registered.seen == nil || len(s.registered.seen) >= registeredCap {
				s.registered.seen = map[[2]int64]struct{}{}
			}
			s.registered.seen[key] = struct{}{}
			s.registered.mu.Unlock()
		}
		out = append(out, id)
	}
	return out, nil
}

// txnLeases lists the leases a txn's puts name, nested txns included.
func txnLeases(r *pb.TxnRequest, out []int64) []int64 {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestPut:
				if o.RequestPut.Lease != 0 {
					out = append(out, o.RequestPut.Lease)
				}
			case *pb.RequestOp_RequestTxn:
				out = txnLeases(o.RequestTxn, out)
			}
		}
	}
	return out
}
