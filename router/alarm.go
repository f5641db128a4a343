package router

import (
	"context"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// etcd's quota costs: a put costs its key and value plus an overhead, a
// lease grant a fixed overhead.
const (
	quotaPutOverhead   = 256
	quotaLeaseOverhead = 64
)

// quotaCost is what a request may add to the store, as etcd counts it. A
// txn costs its costlier branch, a nested txn counting as its own cost in
// the branch that holds it.
func quotaCost(r any) int64 {
	switch r := r.(type) {
	case *pb.PutRequest:
		return putCost(r)
	case *pb.LeaseGrantRequest:
		return quotaLeaseOverhead
	case *pb.TxnRequest:
		// Every txn, r first, in the order the walk reaches them: a nested
		// txn comes after the txn holding it, so costing them backwards
		// costs each before it is needed.
		txns := []*pb.TxnRequest{r}
		mvcc.EachOp(r, func(op *pb.RequestOp) bool {
			if t := op.GetRequestTxn(); t != nil {
				txns = append(txns, t)
			}
			return true
		})
		cost := make(map[*pb.TxnRequest]int64, len(txns))
		branch := func(ops []*pb.RequestOp) (n int64) {
			for _, op := range ops {
				if p := op.GetRequestPut(); p != nil {
					n += putCost(p)
				} else if t := op.GetRequestTxn(); t != nil {
					n += cost[t]
				}
			}
			return n
		}
		for _, t := range slices.Backward(txns) {
			cost[t] = max(branch(t.Success), branch(t.Failure))
		}
		return cost[r]
	}
	return 0
}

func putCost(p *pb.PutRequest) int64 {
	return int64(quotaPutOverhead + len(p.Key) + len(p.Value))
}

// checkQuota refuses a request that would take the store past its quota,
// raising this member's NOSPACE alarm first, as etcd does. The size it
// compares is the store's in use (NodeStatus.DBSizeInUse), which a
// compaction followed by a defragmentation lowers, so that, as with etcd,
// compact, defrag and alarm disarm let writes in again.
func (s *Server) checkQuota(ctx context.Context, r any) error {
	cost := quotaCost(r)
	if cost == 0 {
		return nil
	}
	quota := s.cfg.QuotaBackendBytes
	switch {
	case quota < 0: // as etcd: a negative quota means none
		return nil
	case quota == 0:
		quota = defaultQuotaBytes
	}
	if s.dbSize()+cost < quota {
		return nil
	}
	_, _ = s.alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: uint64(s.cfg.MemberID), Alarm: pb.AlarmType_NOSPACE})
	return rpctypes.ErrGRPCNoSpace
}

// alarm proposes an alarm change. Once an alarm is cleared, the next quota
// check asks for the size afresh: an operator who defragmented elsewhere
// and disarms here expects the next write to see the smaller store.
func (s *Server) alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	out, err := s.write(ctx, s.cfg.Shard, r, func(b []byte) *shardpb.Request {
		return &shardpb.Request{Op: &shardpb.Request_Alarm{Alarm: b}}
	})
	if r.Action == pb.AlarmRequest_DEACTIVATE {
		s.invalidateSize()
	}
	if err != nil {
		return nil, err
	}
	resp := &pb.AlarmResponse{}
	return resp, s.decode(out.GetAlarm(), resp, resp.GetHeader)
}

// Alarm lists, raises or clears alarms; the list is read linearizably.
func (m *maintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	if r.Action != pb.AlarmRequest_GET {
		return m.s.alarm(ctx, r)
	}
	alarms, err := m.s.cfg.Shard.Alarms(ctx, true)
	if err != nil {
		return nil, toGRPC(err)
	}
	h, err := m.s.header(ctx)
	if err != nil {
		return nil, err
	}
	var out []*pb.AlarmMember
	for _, a := range alarms {
		if r.Alarm == pb.AlarmType_NONE || a.Alarm == r.Alarm {
			if r.MemberID == 0 || a.MemberID == r.MemberID {
				out = append(out, a)
			}
		}
	}
	return &pb.AlarmResponse{Header: h, Alarms: out}, nil
}

// dbSizeRefresh bounds how stale the size the quota check uses may be:
// asking the storage engine for its size on every write would cost more
// than the write.
const dbSizeRefresh = 100 * time.Millisecond

// dbSize returns the size of the node's store in use, refreshed at most
// every dbSizeRefresh and after invalidateSize.
func (s *Server) dbSize() int64 {
	now := time.Now().UnixNano()
	if at := s.sizeAt.Load(); now-at < int64(dbSizeRefresh) && at != 0 {
		return s.size.Load()
	}
	size := s.cfg.Node.Status().DBSizeInUse
	s.size.Store(size)
	s.sizeAt.Store(now)
	return size
}

// invalidateSize makes the next dbSize ask the node: after a
// defragmentation or an alarm's disarm, the size cached before is stale.
func (s *Server) invalidateSize() { s.sizeAt.Store(0) }
