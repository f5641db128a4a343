package router

import (
	"context"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/cairn-kv/cairn/mvcc"
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
// Kubernetes check it), the store's size and the raft state. Errors holds
// etcd's "no leader" while any range here has no leader, and the alarms.
func (m *maintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	st, err := m.s.cfg.Shard.Status(ctx, false)
	if err != nil {
		return nil, toGRPC(err)
	}
	// Range 1's revision is the cluster's while it counts; once split,
	// the cluster's is the oracle's (a write in any range moves it).
	rev := st.Revision
	if !m.s.counting() {
		if rev, err = m.s.now(ctx); err != nil {
			return nil, toGRPC(err)
		}
	}
	ns := m.s.cfg.Node.Status()
	resp := &pb.StatusResponse{
		Header:  &pb.ResponseHeader{Revision: int64(rev)},
		Version: version.Version,
		// etcd's storage schema version is its minor release: 3.7.0.
		StorageVersion:   version.Cluster(version.Version) + ".0",
		DbSize:           ns.DBSize,
		DbSizeInUse:      ns.DBSizeInUse,
		DbSizeQuota:      ns.DBSizeQuota,
		RaftIndex:        max(ns.RaftIndex, st.AppliedIndex),
		RaftAppliedIndex: st.AppliedIndex,
		IsLearner:        ns.IsLearner,
		DowngradeInfo:    &pb.DowngradeInfo{},
	}
	if leader, _, ok := m.s.cfg.Shard.Leader(); ok {
		resp.Leader = uint64(m.s.shardMember(leader))
	}
	if resp.DbSizeQuota == 0 {
		resp.DbSizeQuota = m.s.cfg.QuotaBackendBytes
	}
	if resp.DbSizeQuota == 0 {
		resp.DbSizeQuota = defaultQuotaBytes
	}
	// Leader is range 1's, which etcdctl shows; the error also tells of
	// any other range here without a leader.
	if resp.Leader == 0 || len(m.s.leaderless().Ranges) > 0 {
		resp.Errors = append(resp.Errors, "etcdserver: no leader")
	}
	if alarms, err := m.s.cfg.Shard.Alarms(ctx, false); err == nil {
		for _, a := range alarms {
			resp.Errors = append(resp.Errors, a.String())
		}
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
	st, err := c.s.cfg.Shard.Status(ctx, r.Linearizable)
	if err != nil {
		return nil, toGRPC(err)
	}
	members, err := c.s.cfg.Node.Members(r.Linearizable)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberListResponse{
		Header:  &pb.ResponseHeader{Revision: int64(st.Revision)},
		Members: members,
	}
	c.s.fill(resp.Header)
	return resp, nil
}

// Operator is what the Maintenance service asks of the node beyond
// NodeInfo; the node implements it.
type Operator interface {
	// Defragment compacts the node's storage files, so that its size in
	// use (NodeStatus.DBSizeInUse) no longer counts what compaction and
	// deletes removed.
	Defragment(ctx context.Context) error
	// TransferLeader moves the shard's leadership to member target.
	TransferLeader(ctx context.Context, target uint64) error
}

func (m *maintenanceServer) operator() (Operator, error) { return m.s.cfg.Node, nil }

// HashKV hashes this member's history up to the revision asked (0: now);
// members that applied the same log answer the same hash at a revision.
func (m *maintenanceServer) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	// A counting range (single-group mode, or sharded before the first
	// split) hashes its own history, as etcd's member does (serializable,
	// one hash); once split, the ranges' hashes combine at one revision.
	if !m.s.counting() {
		return m.s.hashAll(ctx, mvcc.Revision(r.Revision))
	}
	st, err := m.s.cfg.Shard.Status(ctx, false)
	if err != nil {
		return nil, toGRPC(err)
	}
	hr, err := m.s.cfg.Shard.Hash(ctx, mvcc.Revision(r.Revision), false)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.HashKVResponse{Header: &pb.ResponseHeader{Revision: int64(st.Revision)},
		Hash: hr.Hash, CompactRevision: int64(hr.CompactRevision), HashRevision: int64(hr.Revision)}
	m.s.fill(resp.Header)
	return resp, nil
}

// Hash is HashKV at the current revision (etcd's hashes its whole backend).
func (m *maintenanceServer) Hash(ctx context.Context, r *pb.HashRequest) (*pb.HashResponse, error) {
	kv, err := m.HashKV(ctx, &pb.HashKVRequest{})
	if err != nil {
		return nil, err
	}
	return &pb.HashResponse{Header: kv.Header, Hash: kv.Hash}, nil
}

func (m *maintenanceServer) Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	op, err := m.operator()
	if err != nil {
		return nil, err
	}
	err = op.Defragment(ctx)
	m.s.invalidateSize() // the store shrank, or may have, even on failure
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.DefragmentResponse{Header: &pb.ResponseHeader{}}
	m.s.fill(resp.Header)
	return resp, nil
}

// MoveLeader transfers leadership to another voting member; as etcd, only
// the leader may be asked.
func (m *maintenanceServer) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	op, err := m.operator()
	if err != nil {
		return nil, err
	}
	if leader, _, ok := m.s.cfg.Shard.Leader(); !ok || m.s.shardMember(leader) != m.s.cfg.MemberID {
		return nil, rpctypes.ErrGRPCNotLeader
	}
	if err := op.TransferLeader(ctx, r.TargetID); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MoveLeaderResponse{Header: &pb.ResponseHeader{}}
	m.s.fill(resp.Header)
	return resp, nil
}

// snapshotChunk is the size of each Snapshot response's blob.
const snapshotChunk = 32 << 10

// Snapshot streams a backup of this member's store at one revision
// (backup), in a file shaped as etcd's clients expect (Snapshotter);
// `cairn snapshot restore` reads it back.
func (m *maintenanceServer) Snapshot(_ *pb.SnapshotRequest, stream pb.Maintenance_SnapshotServer) error {
	rc, size, err := m.s.cfg.Node.BackupFile(func(w io.Writer) error { return m.s.backup(stream.Context(), w) })
	if err != nil {
		return toGRPC(err)
	}
	defer rc.Close()
	buf := make([]byte, snapshotChunk)
	for sent := int64(0); sent < size; {
		n, err := io.ReadFull(rc, buf[:min(int64(len(buf)), size-sent)])
		if err != nil {
			return toGRPC(err)
		}
		sent += int64(n)
		resp := &pb.SnapshotResponse{Header: &pb.ResponseHeader{}, RemainingBytes: uint64(size - sent), Blob: buf[:n], Version: version.Version}
		m.s.fill(resp.Header)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// Snapshotter keeps a backup while it is sent; the node implements it.
type Snapshotter interface {
	// BackupFile writes a backup file with write (the store's image; the
	// file adds etcd's padding and checksum) and returns it open at its
	// start, with its size; closing it removes it.
	BackupFile(write func(w io.Writer) error) (io.ReadCloser, int64, error)
}
