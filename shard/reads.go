package shard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v4"

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
	r.reads.Add(1)
	r.sample.add(req.GetKey())
	return read[*pb.RangeResponse](ctx, r, RangeQuery{Req: req}, linearizable)
}

// ReadTxn answers a read-only txn. floor, if set, is a revision the caller
// knows the shard's closed revision has reached (TxnQuery.Floor).
func (r *Replica) ReadTxn(ctx context.Context, req *pb.TxnRequest, floor mvcc.Revision, linearizable bool) (*pb.TxnResponse, error) {
	r.reads.Add(1)
	r.sample.add(txnReadKey(req))
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
// invariant: it panics). A linearizable read goes through a read index
// (linearRead); others read the local replica.
func read[T any](ctx context.Context, r *Replica, query any, linearizable bool) (T, error) {
	var (
		zero T
		v    any
		err  error
	)
	if linearizable {
		v, err = r.linearRead(ctx, query)
	} else {
		v, err = r.nh.StaleRead(uint64(r.shardID), query)
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

// linearRead reads query from the local replica once a read index has
// confirmed it is up to date. A read index changes nothing, so it is asked
// again whenever the one in flight cannot answer: dropped (no leader yet,
// or a new leader that has not committed in its term), sent to a leader
// that has since been replaced — it died or was deposed, and dragonboat
// would wait for its answer until the timeout — or unanswered for two
// election timeouts (a message lost on the way). So a read caught by a
// leader's death answers once a new leader is known, within the election
// time and a round. It gives up after the request timeout, whatever the
// caller's deadline.
func (r *Replica) linearRead(ctx context.Context, query any) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	poll := time.NewTicker(leaderPoll)
	defer poll.Stop()
	for {
		leader, term, _ := r.Leader()
		deadline, _ := ctx.Deadline()
		rs, err := r.nh.ReadIndex(uint64(r.shardID), time.Until(deadline))
		if err == nil {
			if err = r.awaitReadIndex(ctx, rs, leader, term, poll.C); err == nil {
				v, err := r.nh.ReadLocalNode(rs, query)
				rs.Release()
				return v, err
			}
		}
		if !errors.Is(err, errAskAgain) && !retryable(err) {
			return nil, err
		}
		if errors.Is(err, errAskAgain) {
			continue
		}
		select {
		case <-time.After(retryBackoff):
		case <-ctx.Done():
			return nil, classify(err)
		}
	}
}

// errAskAgain: a read index in flight will not answer in time; ask again.
var errAskAgain = errors.New("shard: read index asked again")

// awaitReadIndex waits for the read index rs, asked while leader led in
// term (as this replica knew it), and releases it unless it completed (the
// caller reads, then releases). It returns errAskAgain once a different
// leader or term is known, or after two election timeouts, leaving rs to
// dragonboat, which answers it at its timeout.
func (r *Replica) awaitReadIndex(ctx context.Context, rs *dragonboat.RequestState, leader ReplicaID, term uint64, poll <-chan time.Time) error {
	giveUp := time.NewTimer(2 * r.election)
	defer giveUp.Stop()
	for {
		select {
		case res := <-rs.ResultC():
			if res.Completed() {
				return nil
			}
			rs.Release()
			switch {
			case res.Dropped():
				return errDropped
			case res.Timeout():
				return dragonboat.ErrTimeout
			case res.Terminated():
				return dragonboat.ErrShardClosed
			case res.Rejected():
				return dragonboat.ErrRejected
			default:
				return dragonboat.ErrAborted
			}
		case <-poll:
			if l, t, ok := r.Leader(); ok && (l != leader || t != term) {
				return errAskAgain
			}
		case <-giveUp.C:
			return errAskAgain
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
