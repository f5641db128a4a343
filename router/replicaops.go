package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Cluster-wide operations over ranges wherever they live (issue 21 S9):
// a range's hash at a revision from any holder (HashAt, HashKV), every
// replica's hash on its own member (CheckReplicas, `cairn check`), and a
// range's image streamed from a holder (Image, for a backup taken on a
// member without it). Each waits first until the range's leader has
// closed the revision — every write at or below it has committed — and
// the answering replica takes a read index, so every acknowledged write
// and compaction has applied there: replicas holding the same data
// answer the same hash at the same revision.

// imageChunk is the size of a RangeImage stream's chunks.
const imageChunk = 64 << 10

// rangeImager is a replica here that writes its image (shard.Range).
type rangeImager interface {
	// WriteImage writes the replica's store — versions, events, records
	// and leases — in the mvcc snapshot format.
	WriteImage(w io.Writer) error
}

// replicaIDer is a replica here that knows its id in its range
// (shard.Range).
type replicaIDer interface{ ReplicaID() shard.ReplicaID }

// hashReplica hashes replica r at rev after a read index (see the top of
// this file): at the newest of its last write at or below rev and its
// compacted revision, which holds the same records.
func hashReplica(ctx context.Context, r Replica, rev mvcc.Revision) (shard.HashResult, error) {
	st, err := r.Status(ctx, true)
	if err != nil {
		return shard.HashResult{}, err
	}
	if st.CompactRevision >= 0 && rev < st.CompactRevision {
		// A state machine's refusal, so that it travels as one (encodeError).
		return shard.HashResult{}, &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_COMPACTED,
			Message: fmt.Sprintf("mvcc: required revision %d has been compacted (compact revision %d)", rev, st.CompactRevision)}
	}
	return r.Hash(ctx, max(min(rev, st.Revision), st.CompactRevision), false)
}

// HashAt is the range's hash at rev, taken once its leader has closed rev,
// by this member's replica or else by one of the members holding it.
func (c *RangeClient) HashAt(ctx context.Context, rev mvcc.Revision) (shard.HashResult, error) {
	if err := c.WaitClosed(ctx, rev); err != nil {
		return shard.HashResult{}, err
	}
	if c.l != nil {
		return readLocal(ctx, c, func(r Replica) (shard.HashResult, error) { return hashReplica(ctx, r, rev) })
	}
	var out shard.HashResult
	err := c.eachHolder(ctx, func(nc internalpb.NodeClient) error {
		h, _, err := hashVia(ctx, nc, c.id, rev)
		out = h
		return err
	})
	return out, err
}

// hashVia asks a member for its replica's hash of range id at rev.
func hashVia(ctx context.Context, nc internalpb.NodeClient, id shard.RangeID, rev mvcc.Revision) (shard.HashResult, shard.ReplicaID, error) {
	resp, err := nc.HashReplica(ctx, &internalpb.HashReplicaRequest{Range: uint64(id), Revision: int64(rev)})
	if err != nil {
		return shard.HashResult{}, 0, rpcError(err)
	}
	if err := decodeError(resp.Error, errNotLeader); err != nil {
		return shard.HashResult{}, 0, err
	}
	h := resp.Hash
	return shard.HashResult{Hash: h.GetHash(), Revision: mvcc.Revision(h.GetRevision()), CompactRevision: mvcc.Revision(h.GetCompactRevision())},
		shard.ReplicaID(resp.Replica), nil
}

// eachHolder runs call on the members holding a remote range in turn
// (holders) until one answers, trying the round again while none has a
// started replica, until ctx ends.
func (c *RangeClient) eachHolder(ctx context.Context, call func(internalpb.NodeClient) error) error {
	var last error = fmt.Errorf("%w: range %d: no member holds it", shard.ErrNoLeader, c.id)
	for {
		for _, m := range c.holders() {
			nc, err := c.f.Client(m)
			if err != nil {
				last = err
				continue
			}
			if last = call(nc); last == nil || !errors.Is(last, shard.ErrNoLeader) {
				return c.outside(last)
			}
			if ctx.Err() != nil {
				return last
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: range %d: %v", shard.ErrNoLeader, c.id, last)
		case <-time.After(forwardRetry):
		}
	}
}

// Image writes the range's image (the mvcc snapshot format: its replica's
// store) to w, once its leader has closed rev, from this member's replica
// or else streamed from a member holding one. A holder that fails before
// sending anything is passed over; one that fails mid-stream ends it.
func (c *RangeClient) Image(ctx context.Context, rev mvcc.Revision, w io.Writer) error {
	if err := c.WaitClosed(ctx, rev); err != nil {
		return err
	}
	if c.l != nil {
		return readLocalErr(ctx, c, func(r Replica) error { return writeImage(ctx, c.l, r, w) })
	}
	return c.eachHolder(ctx, func(nc internalpb.NodeClient) error {
		stream, err := nc.RangeImage(ctx, &internalpb.RangeImageRequest{Range: uint64(c.id), Revision: int64(rev)})
		if err != nil {
			return rpcError(err)
		}
		sent := false
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				err = rpcError(err)
				if sent {
					return fmt.Errorf("router: range %d's image cut short: %v", c.id, err)
				}
				return err
			}
			if err := decodeError(chunk.Error, errNotLeader); err != nil {
				if sent {
					return fmt.Errorf("router: range %d's image cut short: %v", c.id, err)
				}
				return err
			}
			sent = true
			if _, err := w.Write(chunk.Data); err != nil {
				return err
			}
		}
	})
}

func readLocalErr(ctx context.Context, c *RangeClient, do func(Replica) error) error {
	_, err := readLocal(ctx, c, func(r Replica) (struct{}, error) { return struct{}{}, do(r) })
	return err
}

// writeImage writes local replica r's image once a read index has applied
// here.
func writeImage(ctx context.Context, l Local, r Replica, w io.Writer) error {
	im, ok := l.(rangeImager)
	if !ok {
		return fmt.Errorf("router: range %d's replica here writes no image", l.Descriptor().Id)
	}
	if _, err := r.Status(ctx, true); err != nil {
		return err
	}
	return im.WriteImage(w)
}

func (s *internalServer) HashReplica(ctx context.Context, req *internalpb.HashReplicaRequest) (*internalpb.HashReplicaResponse, error) {
	l, e := s.started(shard.RangeID(req.Range))
	if e != nil {
		return &internalpb.HashReplicaResponse{Error: e}, nil
	}
	h, err := hashReplica(ctx, l.Replica(), mvcc.Revision(req.Revision))
	if err != nil {
		return &internalpb.HashReplicaResponse{Error: encodeError(shard.WithRange(err, l.Descriptor()))}, nil
	}
	out := &internalpb.HashReplicaResponse{Hash: &internalpb.RangeHash{Hash: h.Hash, Revision: int64(h.Revision), CompactRevision: int64(h.CompactRevision)}}
	if id, ok := l.(replicaIDer); ok {
		out.Replica = uint64(id.ReplicaID())
	}
	return out, nil
}

func (s *internalServer) RangeImage(req *internalpb.RangeImageRequest, stream internalpb.Node_RangeImageServer) error {
	l, e := s.started(shard.RangeID(req.Range))
	if e != nil {
		return stream.Send(&internalpb.ImageChunk{Error: e})
	}
	cw := &chunkWriter{send: func(p []byte) error { return stream.Send(&internalpb.ImageChunk{Data: p}) }}
	err := writeImage(stream.Context(), l, l.Replica(), cw)
	if err == nil {
		err = cw.flush()
	}
	if err != nil && !cw.failed {
		return stream.Send(&internalpb.ImageChunk{Error: encodeError(shard.WithRange(err, l.Descriptor()))})
	}
	return err
}

// chunkWriter cuts what is written into chunks of imageChunk bytes.
type chunkWriter struct {
	send   func([]byte) error
	buf    []byte
	failed bool // send failed: the stream is gone
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		take := min(imageChunk-len(w.buf), len(p))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		if len(w.buf) == imageChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(w.buf)
	w.buf = w.buf[:0:0]
	if err != nil {
		w.failed = true
	}
	return err
}

func (s *internalServer) CheckReplicas(ctx context.Context, _ *internalpb.CheckReplicasRequest) (*internalpb.CheckReplicasResponse, error) {
	if s.srv == nil {
		return nil, Refuse(ErrPrecondition, "cairn: check: not served here")
	}
	resp, err := s.srv.CheckReplicas(ctx)
	if err != nil {
		return nil, splitStatus(err)
	}
	return resp, nil
}

func (o operatorServer) CheckReplicas(ctx context.Context, req *internalpb.CheckReplicasRequest) (*internalpb.CheckReplicasResponse, error) {
	return o.in.CheckReplicas(ctx, req)
}

// CheckReplicas hashes every replica of every range at one revision R on
// its member and compares each range's hashes (what etcd's corruption
// check does across members): R is the cluster's now; each range's leader
// closes R first. A range whose replicas disagree, or one of whose
// replicas cannot be hashed, is listed in mismatched. Single-group mode
// and a sharded cluster before its first split have one range, held by
// every member.
func (s *Server) CheckReplicas(ctx context.Context) (*internalpb.CheckReplicasResponse, error) {
	rev, err := s.now(ctx)
	if err != nil {
		return nil, err
	}
	counting := s.counting()
	out := &internalpb.CheckReplicasResponse{Revision: int64(rev)}
	for _, p := range s.cfg.Ranges.All() {
		rc, ok := p.Shard.(*RangeClient)
		if !ok {
			return nil, fmt.Errorf("router: range %d has no range client", p.ID)
		}
		if !counting {
			if err := rc.WaitClosed(ctx, rev); err != nil {
				return nil, fmt.Errorf("range %d: %w", p.ID, err)
			}
		}
		d := rc.Descriptor()
		pairs := placement.Pairs(d)
		hashes := map[uint32]bool{}
		bad := false
		for _, r := range pairs {
			rep := &internalpb.ReplicaCheck{Range: uint64(p.ID), Member: r.Member, Replica: r.Id}
			h, err := s.hashOn(ctx, rc, placement.NodeID(r.Member), rev)
			if err != nil {
				rep.Error, bad = err.Error(), true
			} else {
				rep.Hash, rep.CompactRevision = h.Hash, int64(h.CompactRevision)
				hashes[h.Hash] = true
			}
			out.Replicas = append(out.Replicas, rep)
		}
		if bad || len(hashes) > 1 {
			out.Mismatched = append(out.Mismatched, uint64(p.ID))
		}
	}
	return out, nil
}

// hashOn hashes member's replica of rc's range at rev: here, through the
// local replica; elsewhere, through HashReplica.
func (s *Server) hashOn(ctx context.Context, rc *RangeClient, member placement.NodeID, rev mvcc.Revision) (shard.HashResult, error) {
	if member == s.cfg.MemberID {
		l := s.cfg.Ranges.Local(rc.id)
		if l == nil {
			return shard.HashResult{}, fmt.Errorf("%w: no replica of range %d here", shard.ErrNoLeader, rc.id)
		}
		if err := rc.Wait(ctx); err != nil {
			return shard.HashResult{}, err
		}
		return hashReplica(ctx, l.Replica(), rev)
	}
	nc, err := rc.f.Client(member)
	if err != nil {
		return shard.HashResult{}, err
	}
	h, _, err := hashVia(ctx, nc, rc.id, rev)
	return h, err
}

// descriptors returns the ranges' descriptors as the cache has them, in
// key order.
func (s *Server) descriptors() []*placementpb.RangeDescriptor {
	var out []*placementpb.RangeDescriptor
	for _, p := range s.cfg.Ranges.All() {
		if rc, ok := p.Shard.(*RangeClient); ok {
			if d := rc.Descriptor(); d != nil {
				out = append(out, d)
			}
		}
	}
	return slices.Clip(out)
}
