package shard

import (
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// etcdOp applies a request that carries an encoded etcd request: wire is
// decoded into a fresh Req (refused as a bad request, naming what, if it
// does not decode), call applies it, and its answer is encoded into the
// shard response result builds. A refusal or failure of call is returned
// as is, with no response.
func etcdOp[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](what string, wire []byte, call func(PReq) (Resp, error), result func([]byte) *shardpb.Response) (*shardpb.Response, error) {
	req := PReq(new(Req))
	if err := proto.Unmarshal(wire, req); err != nil {
		return nil, badRequest("shard: undecodable %s: %v", what, err)
	}
	resp, err := call(req)
	return encoded(result, resp, err)
}

// encoded is the shard response result builds around the encoding of resp,
// an etcd response, or err (with no response) if err is not nil.
func encoded[Resp proto.Message](result func([]byte) *shardpb.Response, resp Resp, err error) (*shardpb.Response, error) {
	if err != nil {
		return nil, err
	}
	data, err := proto.Marshal(resp)
	if err != nil {
		return nil, err
	}
	return result(data), nil
}

// The business calls of the requests etcdOp decodes: each applies one
// decoded etcd request into the batch, stamped a.stamp where it writes.

// put refuses while NOSPACE is raised: a put adds data.
func (a *applier) put(req *pb.PutRequest) (*pb.PutResponse, error) {
	if a.alarms.has(pb.AlarmType_NOSPACE) {
		return nil, errNoSpace
	}
	if !a.locks.empty() {
		if err := a.locks.lockedBy(spanOf(req.Key, nil), 0); err != nil {
			return nil, err
		}
	}
	resp, err := a.b.Put(req, a.stamp)
	if err == nil {
		a.counts.Puts++
	}
	return resp, err
}

func (a *applier) deleteRange(req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if !a.locks.empty() {
		if err := a.locks.lockedBy(spanOf(req.Key, req.RangeEnd), 0); err != nil {
			return nil, err
		}
	}
	resp, err := a.b.DeleteRange(req, a.stamp)
	if err == nil {
		a.counts.Deletes++
	}
	return resp, err
}

// txn refuses while NOSPACE is raised if the txn may add data (Capped).
func (a *applier) txn(req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if Capped(req) && a.alarms.has(pb.AlarmType_NOSPACE) {
		return nil, errNoSpace
	}
	if err := a.locks.checkTxnUnlocked(req); err != nil {
		return nil, err
	}
	resp, err := a.b.Txn(req, a.stamp)
	if err == nil {
		a.counts.add(txnCounts(req, resp))
	}
	return resp, err
}

func (a *applier) compact(req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if l := a.locks.limit(); mvcc.Revision(req.Revision) > l {
		// A transaction may still commit at any revision above its lock's
		// cap, below the range's revision: compaction waits for it.
		return nil, fmt.Errorf("%w: a compaction at %d, above the cap %d of a lock", ErrLocked, req.Revision, l)
	}
	return a.b.Compact(mvcc.Revision(req.Revision))
}

// leaseGrant refuses while NOSPACE is raised, as etcd does. The grant's
// clock is the applier's (the primary's, see Config.Now).
func (a *applier) leaseGrant(req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if a.alarms.has(pb.AlarmType_NOSPACE) {
		return nil, errNoSpace
	}
	l, err := a.lessor.Grant(a.b.Pebble(), lease.ID(req.ID), req.TTL, a.now())
	if err != nil {
		return nil, err
	}
	return &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: int64(a.b.Rev())}, ID: int64(l.ID), TTL: l.TTL}, nil
}

func (a *applier) leaseRevoke(req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return a.revoke(func() ([][]byte, error) {
		if err := a.leaseLocked(req.ID); err != nil {
			return nil, err
		}
		return a.lessor.Revoke(a.b.Pebble(), lease.ID(req.ID))
	})
}

// revoke deletes, stamped a.stamp, the keys that take (a revoke in the
// lessor) returns. A stale stamp is refused before take runs, so before
// the lessor forgets the lease: a refused request changes nothing.
func (a *applier) revoke(take func() ([][]byte, error)) (*pb.LeaseRevokeResponse, error) {
	if err := a.b.CheckStamp(a.stamp); err != nil {
		return nil, err
	}
	keys, err := take()
	if err != nil {
		return nil, err
	}
	n, rev, err := a.b.DeleteKeys(keys, a.stamp)
	if err != nil {
		return nil, err
	}
	a.counts.add(deleteCounts(int(n)))
	return &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: int64(rev)}}, nil
}

func (a *applier) leaseCheckpoint(req *pb.LeaseCheckpointRequest) (*pb.LeaseCheckpointResponse, error) {
	for _, c := range req.Checkpoints {
		if err := a.lessor.Checkpoint(a.b.Pebble(), lease.ID(c.ID), c.Remaining_TTL); err != nil {
			return nil, err
		}
	}
	return &pb.LeaseCheckpointResponse{Header: &pb.ResponseHeader{Revision: int64(a.b.Rev())}}, nil
}

func (a *applier) alarm(req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return a.alarms.apply(a.b, req), nil
}

// The shard responses around an encoded etcd response, one per request
// that answers with one.

func putResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_Put{Put: d}}
}
func deleteRangeResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_DeleteRange{DeleteRange: d}}
}
func txnResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_Txn{Txn: d}}
}
func compactionResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_Compaction{Compaction: d}}
}
func leaseGrantResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_LeaseGrant{LeaseGrant: d}}
}
func leaseRevokeResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_LeaseRevoke{LeaseRevoke: d}}
}
func shadowRevokeResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_ShadowRevoke{ShadowRevoke: d}}
}
func leaseCheckpointResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_LeaseCheckpoint{LeaseCheckpoint: d}}
}
func alarmResult(d []byte) *shardpb.Response {
	return &shardpb.Response{Result: &shardpb.Response_Alarm{Alarm: d}}
}
