package robustness

import (
	"bytes"
	"fmt"
	"os"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/tests/v3/robustness/model"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// persistedHistory reads the members' journals and returns the requests
// the cluster persisted, in raft order, as etcd's model spells them. It
// fails if two members applied different commands at one index (raft's
// safety) or if the merged log has a hole.
func persistedHistory(journals []string) ([]model.EtcdRequest, error) {
	byIndex := map[uint64][]byte{}
	from := map[uint64]string{}
	for _, path := range journals {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		err = shard.ReadJournal(f, func(index uint64, cmd *shardpb.Command) error {
			data, err := proto.Marshal(cmd)
			if err != nil {
				return err
			}
			if prev, ok := byIndex[index]; ok {
				if !bytes.Equal(prev, data) {
					return fmt.Errorf("raft index %d: %s applied %v, %s applied %v", index, from[index], mustDecode(prev), path, cmd)
				}
				return nil
			}
			byIndex[index], from[index] = data, path
			return nil
		})
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	indexes := make([]uint64, 0, len(byIndex))
	for i := range byIndex {
		indexes = append(indexes, i)
	}
	slices.Sort(indexes)
	var out []model.EtcdRequest
	for _, i := range indexes {
		var cmd shardpb.Command
		if err := proto.Unmarshal(byIndex[i], &cmd); err != nil {
			return nil, err
		}
		for _, r := range cmd.Requests {
			req, err := toModel(r)
			if err != nil {
				return nil, fmt.Errorf("raft index %d: %w", i, err)
			}
			if req != nil {
				out = append(out, *req)
			}
		}
	}
	return out, nil
}

func mustDecode(data []byte) *shardpb.Command {
	var c shardpb.Command
	_ = proto.Unmarshal(data, &c)
	return &c
}

// toModel turns one persisted Cairn request into etcd's model request;
// requests that are not client-visible (lease checkpoints, member
// attributes, alarms) give nil.
func toModel(r *shardpb.Request) (*model.EtcdRequest, error) {
	switch op := r.Op.(type) {
	case *shardpb.Request_Put:
		var put pb.PutRequest
		if err := proto.Unmarshal(op.Put, &put); err != nil {
			return nil, err
		}
		return txnOf(nil, []model.EtcdOperation{{Type: model.PutOperation, Put: model.PutOptions{
			Key: string(put.Key), Value: model.ToValueOrHash(string(put.Value)), LeaseID: put.Lease}}}, nil), nil
	case *shardpb.Request_DeleteRange:
		var del pb.DeleteRangeRequest
		if err := proto.Unmarshal(op.DeleteRange, &del); err != nil {
			return nil, err
		}
		if len(del.RangeEnd) != 0 {
			return nil, fmt.Errorf("the model has no ranged delete: %v", &del)
		}
		return txnOf(nil, []model.EtcdOperation{{Type: model.DeleteOperation, Delete: model.DeleteOptions{Key: string(del.Key)}}}, nil), nil
	case *shardpb.Request_Txn:
		var txn pb.TxnRequest
		if err := proto.Unmarshal(op.Txn, &txn); err != nil {
			return nil, err
		}
		var conds []model.EtcdCondition
		for _, c := range txn.Compare {
			switch {
			case c.Result == pb.Compare_EQUAL && c.Target == pb.Compare_VERSION:
				conds = append(conds, model.EtcdCondition{Key: string(c.Key), ExpectedVersion: c.GetVersion()})
			case c.Result == pb.Compare_EQUAL && c.Target == pb.Compare_MOD:
				conds = append(conds, model.EtcdCondition{Key: string(c.Key), ExpectedRevision: c.GetModRevision()})
			default:
				return nil, fmt.Errorf("the model has no condition like %v", c)
			}
		}
		success, err := modelOps(txn.Success)
		if err != nil {
			return nil, err
		}
		failure, err := modelOps(txn.Failure)
		if err != nil {
			return nil, err
		}
		return txnOf(conds, success, failure), nil
	case *shardpb.Request_Compaction:
		var c pb.CompactionRequest
		if err := proto.Unmarshal(op.Compaction, &c); err != nil {
			return nil, err
		}
		return &model.EtcdRequest{Type: model.Compact, Compact: &model.CompactRequest{Revision: c.Revision}}, nil
	case *shardpb.Request_LeaseGrant:
		var g pb.LeaseGrantRequest
		if err := proto.Unmarshal(op.LeaseGrant, &g); err != nil {
			return nil, err
		}
		return &model.EtcdRequest{Type: model.LeaseGrant, LeaseGrant: &model.LeaseGrantRequest{LeaseID: g.ID}}, nil
	case *shardpb.Request_LeaseRevoke:
		var rv pb.LeaseRevokeRequest
		if err := proto.Unmarshal(op.LeaseRevoke, &rv); err != nil {
			return nil, err
		}
		return &model.EtcdRequest{Type: model.LeaseRevoke, LeaseRevoke: &model.LeaseRevokeRequest{LeaseID: rv.ID}}, nil
	case *shardpb.Request_LeaseCheckpoint, *shardpb.Request_MemberAttrs, *shardpb.Request_Alarm, *shardpb.Request_TransferHold,
		*shardpb.Request_MemberPeers:
		return nil, nil
	}
	return nil, fmt.Errorf("unknown request %v", r)
}

func txnOf(conds []model.EtcdCondition, success, failure []model.EtcdOperation) *model.EtcdRequest {
	if conds == nil {
		conds = []model.EtcdCondition{}
	}
	if success == nil {
		success = []model.EtcdOperation{}
	}
	if failure == nil {
		failure = []model.EtcdOperation{}
	}
	return &model.EtcdRequest{Type: model.Txn, Txn: &model.TxnRequest{Conditions: conds, OperationsOnSuccess: success, OperationsOnFailure: failure}}
}

func modelOps(ops []*pb.RequestOp) ([]model.EtcdOperation, error) {
	out := []model.EtcdOperation{}
	for _, op := range ops {
		switch {
		case op.GetRequestRange() != nil:
			r := op.GetRequestRange()
			out = append(out, model.EtcdOperation{Type: model.RangeOperation, Range: model.RangeOptions{
				Start: string(r.Key), End: string(r.RangeEnd), Limit: r.Limit, KeysOnly: r.KeysOnly}})
		case op.GetRequestPut() != nil:
			p := op.GetRequestPut()
			out = append(out, model.EtcdOperation{Type: model.PutOperation, Put: model.PutOptions{
				Key: string(p.Key), Value: model.ToValueOrHash(string(p.Value)), LeaseID: p.Lease}})
		case op.GetRequestDeleteRange() != nil:
			d := op.GetRequestDeleteRange()
			if len(d.RangeEnd) != 0 {
				return nil, fmt.Errorf("the model has no ranged delete: %v", d)
			}
			out = append(out, model.EtcdOperation{Type: model.DeleteOperation, Delete: model.DeleteOptions{Key: string(d.Key)}})
		default:
			return nil, fmt.Errorf("the model has no operation like %v", op)
		}
	}
	return out, nil
}
