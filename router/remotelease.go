package router

import (
	"context"
	"errors"
	"slices"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/mvcc"
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

// registered remembers the registrations the home has recorded, by
// (lease, range), with their generations, so that only a range's first
// write with a lease pays for one. A lease revoked since stays here: the
// range refuses the old generation (its tombstone), and the write
// registers again (withShadows).
type registered struct {
	mu   sync.Mutex
	seen map[[2]int64]uint64
}

// registeredCap bounds the memory of registered: beyond it, it starts
// over (at the price of registering again).
const registeredCap = 1 << 16

// withShadows runs a write in range sh that may attach keys to leases ids:
// for a range other than the home (sharded mode), the range is registered
// at each lease's home first and the write carries the leases as shadow
// leases. A write refused for a lease it took from a registration known
// from before is tried once more with fresh ones (the lease may have been
// revoked and granted again since).
func (s *Server) withShadows(ctx context.Context, sh Shard, ids []int64, write func([]*shardpb.ShadowLease) (*shardpb.Response, error)) (*shardpb.Response, error) {
	if sh == s.cfg.Shard || len(ids) == 0 || !slices.ContainsFunc(ids, func(id int64) bool { return id != 0 }) {
		return write(nil)
	}
	// The home by its id too: Config.Shard may be another client of it
	// (the node's, which follows range 1 as it moves).
	rangeID, _ := s.cfg.Ranges.id(sh)
	if rangeID == shardRange {
		return write(nil)
	}
	shadows, cached, err := s.shadowLeases(ctx, rangeID, ids, false)
	if err != nil {
		return nil, err
	}
	out, err := write(shadows)
	if cached && errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
		if shadows, _, err = s.shadowLeases(ctx, rangeID, ids, true); err != nil {
			return nil, err
		}
		out, err = write(shadows)
	}
	return out, err
}

// shadowLeases registers range rangeID at the home of each lease of ids
// (unless known, or fresh) and returns them as shadow leases, and whether
// any registration was known from before. A lease the home does not know
// is left out: the range then refuses a put with it, as etcd does, only if
// the put runs (a txn branch not taken does not need it).
func (s *Server) shadowLeases(ctx context.Context, rangeID shard.RangeID, ids []int64, fresh bool) (out []*shardpb.ShadowLease, cached bool, err error) {
	for _, id := range ids {
		if id == 0 || slices.ContainsFunc(out, func(sl *shardpb.ShadowLease) bool { return sl.Lease == id }) {
			continue
		}
		key := [2]int64{id, int64(rangeID)}
		s.registered.mu.Lock()
		gen, ok := s.registered.seen[key]
		s.registered.mu.Unlock()
		if ok && !fresh {
			cached = true
			out = append(out, &shardpb.ShadowLease{Lease: id, Generation: gen})
			continue
		}
		res, err := s.cfg.Shard.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseRegister{
			LeaseRegister: &shardpb.LeaseShard{Lease: id, Shard: uint64(rangeID)}}})
		var se *shard.Error
		if errors.As(err, &se) && se.Code == shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
			continue
		}
		if err != nil {
			return nil, false, toGRPC(err)
		}
		gen = res.GetLeaseRegistered()
		s.registered.mu.Lock()
		if s.registered.seen == nil || len(s.registered.seen) >= registeredCap {
			s.registered.seen = map[[2]int64]uint64{}
		}
		s.registered.seen[key] = gen
		s.registered.mu.Unlock()
		out = append(out, &shardpb.ShadowLease{Lease: id, Generation: gen})
	}
	return out, cached, nil
}

// txnLeases lists the leases a txn's puts name, nested txns included.
func txnLeases(r *pb.TxnRequest, out []int64) []int64 {
	mvcc.EachOp(r, func(op *pb.RequestOp) bool {
		if o, ok := op.Request.(*pb.RequestOp_RequestPut); ok && o.RequestPut.Lease != 0 {
			out = append(out, o.RequestPut.Lease)
		}
		return true
	})
	return out
}
