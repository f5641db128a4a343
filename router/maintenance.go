package router

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/cairn-kv/cairn/shard"
)

// maintenanceServer is etcd's Maintenance service. Status is served; the
// rest answer Unimplemented until the cluster issue brings them.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

// defaultQuotaBytes is etcd's default backend quota, reported when none is set.
const defaultQuotaBytes = 2 << 30

// Status reports the etcd API version Cairn speaks (clients such as
// Kubernetes check it), the store's size and the raft state.
func (m *maintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	v, err := m.s.cfg.Shard.Read(ctx, shard.StatusQuery{}, false)
	if err != nil {
		return nil, toGRPC(err)
	}
	st := v.(shard.Status)
	ns := m.s.cfg.Node.Status()
	resp := &pb.StatusResponse{
		Header:           &pb.ResponseHeader{Revision: int64(st.Revision)},
		Version:          version.Version,
		DbSize:           ns.DBSize,
		DbSizeInUse:      ns.DBSizeInUse,
		DbSizeQuota:      ns.DBSizeQuota,
		Leader:           ns.Leader,
		RaftIndex:        max(ns.RaftIndex, st.AppliedIndex),
		RaftAppliedIndex: st.AppliedIndex,
		IsLearner:        ns.IsLearner,
		DowngradeInfo:    &pb.DowngradeInfo{},
	}
	if resp.DbSizeQuota == 0 {
		resp.DbSizeQuota = defaultQuotaBytes
	}
	if resp.Leader == 0 {
		resp.Errors = append(resp.Errors, "etcdserver: no leader")
	}
	m.s.fill(resp.Header)
	resp.RaftTerm = resp.Header.RaftTerm
	return resp, nil
}

// clusterServer is etcd's Cluster service: MemberList is served (clients
// sync endpoints with it); membership changes come with the cluster issue.
type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (c *clusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	v, err := c.s.cfg.Shard.Read(ctx, shard.StatusQuery{}, r.Linearizable)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberListResponse{
		Header:  &pb.ResponseHeader{Revision: int64(v.(shard.Status).Revision)},
		Members: c.s.cfg.Node.Members(),
	}
	c.s.fill(resp.Header)
	return resp, nil
}
