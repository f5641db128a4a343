package router

import (
	"bytes"
	"context"
	"errors"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Defaults as etcd's.
const (
	DefaultMaxRequestBytes = 1536 * 1024 // etcd --max-request-bytes
	DefaultMaxTxnOps       = 128         // etcd --max-txn-ops
	// grpcOverheadBytes is what the gRPC server accepts beyond the request
	// limit, so that an oversized request gets etcd's own error rather than
	// a transport one.
	grpcOverheadBytes = 512 * 1024
)

// Shard is what the router needs of one raft group: the shard package's
// Replica implements it. Each read is linearizable (through the group's
// leader) when asked, else served by the local replica as it is; a
// refusal is a *shard.Error, the group's conditions shard's sentinels.
type Shard interface {
	Write(ctx context.Context, req *shardpb.Request) (*shardpb.Response, error)
	// Range answers a range request.
	Range(ctx context.Context, req *pb.RangeRequest, linearizable bool) (*pb.RangeResponse, error)
	// ReadTxn answers a read-only txn; floor, if set, is a revision the
	// group's closed revision is known to have reached.
	ReadTxn(ctx context.Context, req *pb.TxnRequest, floor mvcc.Revision, linearizable bool) (*pb.TxnResponse, error)
	// Status reads the group's revisions and applied index.
	Status(ctx context.Context, linearizable bool) (shard.Status, error)
	// Hash hashes the group's history up to rev (0: now).
	Hash(ctx context.Context, rev mvcc.Revision, linearizable bool) (shard.HashResult, error)
	// Alarms reads the raised alarms.
	Alarms(ctx context.Context, linearizable bool) ([]*pb.AlarmMember, error)
	Leader() (leader shard.ReplicaID, term uint64, ok bool)
}

// kvServer is etcd's KV service over the ranges.
type kvServer struct {
	pb.UnimplementedKVServer
	s *Server
}

func (k *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return rerouted(ctx, k.s, func() (*pb.RangeResponse, error) { return k.rangeKV(ctx, r) })
}

func (k *kvServer) rangeKV(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := mvcc.ValidateRange(r); err != nil {
		return nil, toGRPC(err)
	}
	if _, err := k.s.authorize(ctx, func(c caller) error { return checkRange(c, r) }); err != nil {
		return nil, err
	}
	// A cluster that is one counting range (single-group mode, or sharded
	// before its first split): the range has written everything up to the
	// cluster's revision and answers every read itself, at any revision,
	// empty intervals too, as etcd does — unless a split applied meanwhile.
	if k.s.counting() {
		resp, err := k.s.cfg.Shard.Range(ctx, r, !r.Serializable && !plantedStaleReads)
		if err != nil {
			return nil, toGRPC(err)
		}
		if k.s.counting() {
			k.s.fill(resp.Header)
			return resp, nil
		}
	}
	parts := k.s.spanning(r.Key, r.RangeEnd)
	// A read at a past revision may name one newer than the range's last
	// write: it is read once the range has closed it.
	if len(parts) != 1 || r.Revision > 0 {
		return k.s.rangeAcross(ctx, r, parts)
	}
	sh := parts[0].Shard
	if r.Serializable || plantedStaleReads {
		resp, err := untilUnlocked(ctx, func() (*pb.RangeResponse, error) { return sh.Range(ctx, r, false) })
		if err != nil {
			return nil, toGRPC(err)
		}
		k.s.fill(resp.Header)
		return resp, nil
	}
	// Linearizable, in one range of several (DESIGN.md "Reads"): at the
	// cluster's current revision, which a write in any range that
	// completed before this read began is at or below, once the range has
	// closed it; the header carries it.
	now, err := k.s.now(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := untilUnlocked(ctx, func() (*pb.RangeResponse, error) { return sh.ReadAt(ctx, r, now) })
	if err != nil {
		return nil, toGRPC(err)
	}
	resp.Header.Revision = int64(now)
	k.s.fill(resp.Header)
	return resp, nil
}

// RangeStream serves a range in chunks exactly as etcd 3.7 does, so clients
// see the same chunks: the first chunk holds at most 10 keys, later chunk
// sizes double or halve towards the request size limit, every chunk reads
// at the revision the first one pinned, and only the last chunk carries the
// header, More and Count. Custom sort orders and revision filters are
// refused, after the checks every Range gets.
func (k *kvServer) RangeStream(r *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	if err := mvcc.ValidateRange(r); err != nil {
		return toGRPC(err)
	}
	if r.SortOrder != pb.RangeRequest_NONE && !(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND) {
		return status.Error(codes.Unimplemented, "RangeStream does not support custom sort orders")
	}
	if r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0 {
		return status.Error(codes.Unimplemented, "RangeStream does not support revision filters")
	}
	ctx := stream.Context()
	req := proto.Clone(r).(*pb.RangeRequest)
	if req.CountOnly {
		resp, err := k.Range(ctx, req)
		if err != nil {
			return err
		}
		out := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: resp.Header.Revision}, Count: resp.Count}
		k.s.fill(out.Header)
		return stream.Send(&pb.RangeStreamResponse{RangeResponse: out})
	}
	totalLimit := req.Limit
	if totalLimit == 0 {
		totalLimit = math.MaxInt64
	}
	req.Limit = min(int64(rangeStreamFirstChunk), totalLimit)
	var count, headerRev int64
	for {
		resp, err := k.Range(ctx, req)
		if err != nil {
			return err
		}
		// Later chunks read at the pinned revision: the first read was
		// linearizable if asked, the rest can be served locally.
		req.Serializable = true
		if headerRev == 0 {
			headerRev = resp.Header.Revision
			if req.Revision == 0 {
				req.Revision = headerRev
			}
		}
		count += int64(len(resp.Kvs))
		var nextKey []byte
		if resp.More {
			nextKey = append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0)
		}
		out := &pb.RangeResponse{Kvs: resp.Kvs}
		done := !resp.More || count == totalLimit
		if done {
			out.Header = &pb.ResponseHeader{Revision: headerRev}
			k.s.fill(out.Header)
			out.More = resp.More
			out.Count = count
			if resp.More {
				rest, err := k.Range(ctx, &pb.RangeRequest{Key: nextKey, RangeEnd: req.RangeEnd, Revision: req.Revision, CountOnly: true, Serializable: true})
				if err != nil {
					return err
				}
				out.Count += rest.Count
			}
		}
		if err := stream.Send(&pb.RangeStreamResponse{RangeResponse: out}); err != nil {
			return err
		}
		if done {
			return nil
		}
		req.Key = nextKey
		req.Limit = nextChunkLimit(req.Limit, proto.Size(resp), k.s.cfg.MaxRequestBytes)
		req.Limit = min(req.Limit, totalLimit-count)
	}
}

// rangeStreamFirstChunk is etcd's first chunk size.
const rangeStreamFirstChunk = 10

// nextChunkLimit doubles or halves the chunk size when the last chunk was
// far from the target size, as etcd does; never below 1.
func nextChunkLimit(last int64, lastSize, target int) int64 {
	switch {
	case lastSize < target/2:
		last *= 2
	case lastSize > target*2:
		last /= 2
	}
	return max(last, 1)
}

func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	return rerouted(ctx, k.s, func() (*pb.PutResponse, error) { return k.put(ctx, r) })
}

func (k *kvServer) put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := mvcc.ValidatePut(r); err != nil {
		return nil, toGRPC(err)
	}
	if err := k.s.checkQuota(ctx, r); err != nil {
		return nil, err
	}
	ctx, err := k.s.authorize(ctx, func(c caller) error { return checkPut(c, r) })
	if err != nil {
		return nil, err
	}
	sh, err := k.s.shardFor(keySpan{r.Key, nil})
	if err != nil {
		return nil, err
	}
	out, err := k.s.withShadows(ctx, sh, []int64{r.Lease}, func(shadows []*shardpb.ShadowLease) (*shardpb.Response, error) {
		return k.s.write(ctx, sh, r, func(b []byte) *shardpb.Request {
			return &shardpb.Request{Op: &shardpb.Request_Put{Put: b}, ShadowLeases: shadows}
		})
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.PutResponse{}
	return resp, k.s.decode(out.GetPut(), resp, resp.GetHeader)
}

func (k *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return rerouted(ctx, k.s, func() (*pb.DeleteRangeResponse, error) { return k.deleteRange(ctx, r) })
}

func (k *kvServer) deleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := mvcc.ValidateDeleteRange(r); err != nil {
		return nil, toGRPC(err)
	}
	ctx, err := k.s.authorize(ctx, func(c caller) error { return checkDeleteRange(c, r) })
	if err != nil {
		return nil, err
	}
	sh, err := k.s.shardFor(keySpan{r.Key, r.RangeEnd})
	var across *spansRanges
	if errors.As(err, &across) && k.s.cfg.CrossRangeWrites {
		return k.s.deleteAcross(ctx, r)
	}
	if err != nil {
		return nil, err
	}
	out, err := k.s.write(ctx, sh, r, func(b []byte) *shardpb.Request {
		return &shardpb.Request{Op: &shardpb.Request_DeleteRange{DeleteRange: b}}
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.DeleteRangeResponse{}
	return resp, k.s.decode(out.GetDeleteRange(), resp, resp.GetHeader)
}

func (k *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	return rerouted(ctx, k.s, func() (*pb.TxnResponse, error) { return k.txn(ctx, r) })
}

func (k *kvServer) txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := mvcc.ValidateTxn(r, k.s.cfg.MaxTxnOps); err != nil {
		return nil, toGRPC(err)
	}
	ctx, err := k.s.authorize(ctx, func(c caller) error { return checkTxn(c, r) })
	if err != nil {
		return nil, err
	}
	sh, err := k.s.shardFor(txnSpans(r, nil)...)
	var across *spansRanges
	if errors.As(err, &across) && k.s.cfg.CrossRangeWrites {
		if !mvcc.IsTxnReadOnly(r) {
			if err := k.s.checkQuota(ctx, r); err != nil {
				return nil, err
			}
		}
		return k.s.txnAcross(ctx, r)
	}
	if err != nil {
		return nil, err
	}
	if mvcc.IsTxnReadOnly(r) {
		return k.s.readTxn(ctx, sh, r)
	}
	if resp, ok, err := k.s.txnAsRead(ctx, sh, r); ok {
		return resp, err
	}
	if err := k.s.checkQuota(ctx, r); err != nil {
		return nil, err
	}
	out, err := k.s.withShadows(ctx, sh, txnLeases(r, nil), func(shadows []*shardpb.ShadowLease) (*shardpb.Response, error) {
		return k.s.write(ctx, sh, r, func(b []byte) *shardpb.Request {
			return &shardpb.Request{Op: &shardpb.Request_Txn{Txn: b}, ShadowLeases: shadows}
		})
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.TxnResponse{}
	return resp, k.s.decode(out.GetTxn(), resp, resp.GetHeader)
}

func (k *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if err := k.s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	return k.s.compact(ctx, r, false)
}

// compact compacts at r.Revision, as a client's Compact: every range once
// the key space has split (compactAll), a counting range by itself (its
// revision is the cluster's: nothing to check against, nothing to wait
// for). A revision compacted already is refused with etcd's ErrCompacted,
// except that in sharded mode again (the automatic compactor's) passes
// over every range compacted at or past it and compacts the others.
func (s *Server) compact(ctx context.Context, r *pb.CompactionRequest, again bool) (*pb.CompactionResponse, error) {
	if !s.counting() {
		return s.compactAll(ctx, r, again)
	}
	out, err := s.write(ctx, s.cfg.Shard, r, compactionRequest)
	if err != nil {
		return nil, err
	}
	resp := &pb.CompactionResponse{}
	return resp, s.decode(out.GetCompaction(), resp, resp.GetHeader)
}

func compactionRequest(b []byte) *shardpb.Request {
	return &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: b}}
}

// txnSerializable tells whether a read-only txn may be served from the local
// replica: as in etcd, only when every range in it asks to be serializable.
func txnSerializable(r *pb.TxnRequest) bool {
	return mvcc.EachOp(r, func(op *pb.RequestOp) bool {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			return o.RequestRange != nil && o.RequestRange.Serializable
		case *pb.RequestOp_RequestTxn:
			return o.RequestTxn != nil
		}
		return true
	})
}

// write encodes an etcd request, refuses it if it is over the request limit
// (as etcd does, with its message), and proposes it to the shard with the
// caller it was checked as (authorize), if any.
func (s *Server) write(ctx context.Context, sh Shard, req proto.Message, wrap func([]byte) *shardpb.Request) (*shardpb.Response, error) {
	data, err := proto.Marshal(req)
	if err != nil {
		return nil, toGRPC(err)
	}
	if len(data) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	w := wrap(data)
	w.AuthInfo = authInfo(ctx)
	if w.AuthInfo != nil && s.cfg.CheckedWrite != nil {
		s.cfg.CheckedWrite()
	}
	// etcd's server-side bound on a request: a write waits for a leader,
	// or for its outcome, no longer than that, whatever the client's
	// deadline.
	wctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	// A write that meets a cross-range transaction's lock waits it out.
	out, err := untilUnlocked(wctx, func() (*shardpb.Response, error) { return sh.Write(wctx, w) })
	if err != nil {
		if wctx.Err() != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, shard.ErrTimeout) {
			err = shard.ErrTimeout
		}
		return nil, toGRPC(err)
	}
	return out, nil
}

// decode unmarshals a response the state machine encoded and fills its header.
func (s *Server) decode(data []byte, into proto.Message, header func() *pb.ResponseHeader) error {
	if err := proto.Unmarshal(data, into); err != nil {
		return toGRPC(err)
	}
	h := header()
	if h == nil {
		return toGRPC(errNoHeader)
	}
	s.fill(h)
	return nil
}
