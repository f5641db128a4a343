package shard

import (
	"context"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard/auth"
)

// Reads of the replica client, one method per query the state machine
// answers (StateMachine.Lookup). Each takes linearizable: true reads
// through ReadIndex (a heartbeat round with the leader) and then the local
// replica, false reads the local replica as it is. A refusal by the state
// machine is returned as *Error, the group's conditions as this package's
// errors (ErrTimeout, ErrNoLeader, ...).

// Range answers req from the range's store.
func (r *Replica) Range(ctx context.Context, req *pb.RangeRequest, linearizable bool) (*pb.RangeResponse, error) {
	return read[*pb.RangeResponse](ctx, r, RangeQuery{Req: req}, linearizable)
}

// ReadTxn answers a read-only txn. floor, if set, is a revision the caller
// knows the shard's closed revision has reached (TxnQuery.Floor).
func (r *Replica) ReadTxn(ctx context.Context, req *pb.TxnRequest, floor mvcc.Revision, linearizable bool) (*pb.TxnResponse, error) {
	return read[*pb.TxnResponse](ctx, r, TxnQuery{Req: req, Floor: floor}, linearizable)
}

// Status reads the store's revisions, applied index, closed revision and
// fence.
func (r *Replica) Status(ctx context.Context, linearizable bool) (Status, error) {
	return read[Status](ctx, r, StatusQuery{}, linearizable)
}

// Hash reads the hash of the store's history up to rev (0: the current
// revision), as mvcc.Store.HashKV.
func (r *Replica) Hash(ctx context.Context, rev mvcc.Revision, linearizable bool) (HashResult, error) {
	return read[HashResult](ctx, r, HashQuery{Rev: rev}, linearizable)
}

// Alarms reads the raised alarms.
func (r *Replica) Alarms(ctx context.Context, linearizable bool) ([]*pb.AlarmMember, error) {
	return read[[]*pb.AlarmMember](ctx, r, AlarmsQuery{}, linearizable)
}

// Auth reads the range's auth state (range 1's is the cluster's).
func (r *Replica) Auth(ctx context.Context, linearizable bool) (*auth.State, error) {
	return read[*auth.State](ctx, r, AuthQuery{}, linearizable)
}

// Members reads the published member attributes by member id
// (MembersQuery).
func (r *Replica) Members(ctx context.Context, linearizable bool) (map[uint64]*pb.Member, error) {
	return read[map[uint64]*pb.Member](ctx, r, MembersQuery{}, linearizable)
}

// Registered reads, at lease id's home, the shards registered as holding
// its keys whose revoke there is not done (RegisteredQuery; sharded mode).
func (r *Replica) Registered(ctx context.Context, id int64, linearizable bool) ([]RangeID, error) {
	ids, err := read[[]uint64](ctx, r, RegisteredQuery{ID: id}, linearizable)
	return rangeIDs(ids), err
}

// ShadowKeys reads the keys attached here to lease id, homed in another
// shard (ShadowKeysQuery; sharded mode).
func (r *Replica) ShadowKeys(ctx context.Context, id int64, linearizable bool) ([][]byte, error) {
	return read[[][]byte](ctx, r, ShadowKeysQuery{ID: id}, linearizable)
}

// read runs query through the shard's Lookup and returns its answer, which
// Lookup gives as a T for that query (an answer of another type is a broken
// invariant: it panics). A linearizable read goes through ReadIndex, tried
// again while the group has no leader; as a write, it gives up after the
// proposal timeout, whatever the caller's deadline. Others read the local
// replica.
func read[T any](ctx context.Context, r *Replica, query any, linearizable bool) (T, error) {
	var (
		zero T
		v    any
		err  error
	)
	if !linearizable {
		v, err = r.nh.StaleRead(uint64(r.shardID), query)
	} else {
		ctx, cancel := context.WithTimeout(ctx, proposalTimeout)
		defer cancel()
		for {
			if v, err = r.nh.SyncRead(ctx, uint64(r.shardID), query); err == nil || !retryable(err) {
				break
			}
			select {
			case <-time.After(retryBackoff):
			case <-ctx.Done():
				return zero, classify(err)
			}
		}
	}
	if err != nil {
		return zero, lookupError(err)
	}
	t, ok := v.(T)
	if !ok {
		panic(fmt.Sprintf("shard: shard %d answered %T with %T, want %T", r.shardID, query, v, zero))
	}
	return t, nil
}
