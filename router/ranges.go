package router

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Oracle is the revision oracle as the router reads it
// (placement.OracleClient).
type Oracle interface {
	// Current returns the oracle's current value: a revision at or above
	// every revision handed out before the call, without handing one out.
	Current(ctx context.Context) (mvcc.Revision, error)
}

// now returns the cluster's current revision: a revision at or above every
// write completed before the call, moved by writes alone (DESIGN.md
// "Reads"). While the cluster is one range that counts its revisions, it
// is that range's revision, read linearizably — no oracle revision, so
// that headers show etcd's dense revisions; once it has split, the
// oracle's current value, which reading does not move. Over a static map
// (single-group mode, no oracle) it is always the one range's revision,
// read linearizably.
func (s *Server) now(ctx context.Context) (mvcc.Revision, error) {
	if !s.counting() {
		return s.cfg.Oracle.Current(ctx)
	}
	st, err := s.cfg.Shard.Status(ctx, true)
	if err != nil {
		return 0, err
	}
	// Counting still, as of the read index: no split has committed before
	// it, so no write has an oracle revision. (A static map's range counts
	// for good, though its state machine, single-group mode's, does not
	// call it counting.)
	if st.Counting || s.cfg.Ranges.static {
		return st.Revision, nil
	}
	return s.cfg.Oracle.Current(ctx)
}

// counting reports whether the cluster is one range that numbers its
// revisions itself (RangeCache.Counting: single-group mode, or a sharded
// cluster before its first split): that range's revision is the
// cluster's, so it answers every read itself, at any revision, as etcd's
// one store does. Once false, it stays false; a read answered while it
// held stands if it still holds after the answer (the read index then
// preceded any split).
func (s *Server) counting() bool { return s.cfg.Ranges.Counting() }

// RangePart is one range: its id, its span [Start, End) (End empty: to the
// end of the key space), its shard and its watch hub.
type RangePart struct {
	ID         shard.RangeID
	Start, End []byte
	Shard      RangeShard
	Watches    *watch.Hub
	// Kick asks the range to raise its closed revision to rev soon, for
	// watches waiting on it; nil: it rises on its own schedule only.
	Kick func(rev mvcc.Revision)
}

// RangeShard is a range: besides what every shard does, it answers a read
// at a revision once its closed revision has reached it.
type RangeShard interface {
	Shard
	ReadAt(ctx context.Context, req *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error)
	WaitClosed(ctx context.Context, rev mvcc.Revision) error
}

// spanning returns the ranges that etcd's [key, end) meets, in key order
// (RangeCache.Spanning).
func (s *Server) spanning(key, end []byte) []RangePart { return s.cfg.Ranges.Spanning(key, end) }

// keySpan is etcd's [key, end) of one part of a request.
type keySpan struct{ key, end []byte }

// shardFor returns the shard serving every key of spans: the range they
// all lie in (single-group mode's one range holds every key). Spans in
// several ranges are refused with *spansRanges (InvalidArgument naming the
// ranges to a client), which DeleteRange and Txn hand to the cross-range
// coordinator (txncoord.go).
func (s *Server) shardFor(spans ...keySpan) (Shard, error) {
	var (
		parts []RangePart
		seen  = map[shard.RangeID]bool{}
	)
	for _, sp := range spans {
		ps := s.spanning(sp.key, sp.end)
		if len(ps) == 0 {
			// An empty interval (end at or before key) touches nothing:
			// the range of its key serves it, as etcd does, with nothing.
			ps = s.spanning(sp.key, nil)
		}
		for _, p := range ps {
			if !seen[p.ID] {
				seen[p.ID] = true
				parts = append(parts, p)
			}
		}
	}
	switch len(parts) {
	case 0: // a txn with nothing in it: any range answers it
		return s.cfg.Shard, nil
	case 1:
		return parts[0].Shard, nil
	}
	return nil, &spansRanges{parts: parts}
}

// crossRange is the refusal of a write over several ranges.
func crossRange(parts []RangePart) error {
	names := make([]string, len(parts))
	for i, p := range parts {
		end := "∞"
		if len(p.End) > 0 {
			end = fmt.Sprintf("%q", p.End)
		}
		names[i] = fmt.Sprintf("%d [%q, %s)", p.ID, p.Start, end)
	}
	// etcd refuses a request over its server's limits (too many ops in a
	// txn, too large) with InvalidArgument and an "etcdserver: " message,
	// which clients neither retry nor take for a failed precondition (a
	// compare), and parse as an etcd error (rpctypes.ErrorDesc).
	return status.Errorf(codes.InvalidArgument,
		"etcdserver: the request spans ranges %s; a write across ranges is not supported yet", strings.Join(names, ", "))
}

// txnSpans lists every key span a txn compares, reads or writes, nested
// txns included.
func txnSpans(r *pb.TxnRequest, out []keySpan) []keySpan {
	compares := func(cs []*pb.Compare) {
		for _, c := range cs {
			out = append(out, keySpan{c.Key, c.RangeEnd})
		}
	}
	compares(r.Compare)
	mvcc.EachOp(r, func(op *pb.RequestOp) bool {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			out = append(out, keySpan{o.RequestRange.Key, o.RequestRange.RangeEnd})
		case *pb.RequestOp_RequestPut:
			out = append(out, keySpan{o.RequestPut.Key, nil})
		case *pb.RequestOp_RequestDeleteRange:
			out = append(out, keySpan{o.RequestDeleteRange.Key, o.RequestDeleteRange.RangeEnd})
		case *pb.RequestOp_RequestTxn:
			compares(o.RequestTxn.GetCompare()) // before the nested txn's ops, which come next
		}
		return true
	})
	return out
}

// rangeAcross answers a Range over several ranges as one snapshot at one
// revision R (DESIGN.md "Reads"): R is the asked revision or a fresh one
// from the oracle, each range answers its part at R once its closed
// revision has reached R, and the parts merge into etcd's answer.
func (s *Server) rangeAcross(ctx context.Context, r *pb.RangeRequest, parts []RangePart) (*pb.RangeResponse, error) {
	now, err := s.now(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	rev := now
	if r.Revision > 0 {
		if mvcc.Revision(r.Revision) > now {
			return nil, rpctypes.ErrGRPCFutureRev
		}
		rev = mvcc.Revision(r.Revision)
	}
	if len(parts) == 0 {
		// An empty interval (its end at or before its key) is answered,
		// empty, by its key's range, which still checks the revision.
		if parts = s.spanning(r.Key, nil); len(parts) == 1 {
			resp, err := parts[0].Shard.ReadAt(ctx, r, rev)
			if err != nil {
				return nil, toGRPC(err)
			}
			resp.Header.Revision = int64(now)
			s.fill(resp.Header)
			return resp, nil
		}
	}
	resps := make([]*pb.RangeResponse, len(parts))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		var end []byte
		if len(p.End) > 0 {
			end = p.End
		}
		req := partRange(r, p.Start, end, int64(rev))
		if req == nil {
			resps[i] = &pb.RangeResponse{}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps[i], errs[i] = untilUnlocked(ctx, func() (*pb.RangeResponse, error) { return p.Shard.ReadAt(ctx, req, rev) })
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, toGRPC(err)
		}
	}
	// The header carries the revision now, as etcd's reports its current
	// revision whatever revision the read was at.
	resp := mergeRange(r, resps, int64(now))
	s.fill(resp.Header)
	return resp, nil
}

// compactAll compacts every range at r.Revision (DESIGN.md: compaction
// applies cluster-wide): each range once its closed revision has reached
// it, so no write at or below it is still to come there. Unless again (the
// automatic compactor's retry), the first range refuses a revision it
// compacted already, and the first range that fails ends the call. With
// again, a range that fails (no leader, say) is given the request timeout
// and passed over, the others still compact, and the first failure is
// returned once every range was tried, so that one range without a leader
// does not stop the others' history from being compacted.
func (s *Server) compactAll(ctx context.Context, r *pb.CompactionRequest, again bool) (*pb.CompactionResponse, error) {
	now, err := s.now(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	if mvcc.Revision(r.Revision) > now {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	var first error
	for i, p := range s.cfg.Ranges.All() {
		err := s.compactRange(ctx, p, r, again)
		// A range compacted already (by an earlier call that failed half
		// way) is fine once the first range took it.
		if err == nil || (i > 0 || again) && errors.Is(err, rpctypes.ErrGRPCCompacted) {
			continue
		}
		if !again {
			return nil, err
		}
		if first == nil {
			first = fmt.Errorf("range %d: %w", p.ID, err)
		}
		if ctx.Err() != nil {
			break // stopped: the ranges left would fail the same way
		}
	}
	if first != nil {
		return nil, first
	}
	resp := &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: int64(now)}}
	s.fill(resp.Header)
	return resp, nil
}

// compactRange compacts range p at r.Revision once its closed revision has
// reached it. A range whose leader changed after the wait may propose with
// a lower closed revision and answer that r.Revision is in its future: it
// waits again and retries.
func (s *Server) compactRange(ctx context.Context, p RangePart, r *pb.CompactionRequest, again bool) error {
	if again {
		var cancel context.CancelFunc
		// The automatic compactor's wait on one range, whose context
		// otherwise has no deadline: a request's timeout, as etcd gives
		// its own compaction.
		ctx, cancel = context.WithTimeout(ctx, s.requestTimeout())
		defer cancel()
	}
	var err error
	for attempt := 0; attempt == 0 || (attempt < 3 && errors.Is(err, rpctypes.ErrGRPCFutureRev)); attempt++ {
		if err := p.Shard.WaitClosed(ctx, mvcc.Revision(r.Revision)); err != nil {
			return toGRPC(err)
		}
		_, err = s.write(ctx, p.Shard, r, compactionRequest)
	}
	return err
}

// hashAll is HashKV in sharded mode (DESIGN.md "Operations": per shard
// and combined): the hash of this member's replicas of every range at one
// revision — rev, or a fresh oracle revision for 0 — each range's hash
// taken once this member's replica has applied everything up to it, the
// hashes combined in key order. Members holding the same data answer the
// same hash at the same revision.
func (s *Server) hashAll(ctx context.Context, rev mvcc.Revision) (*pb.HashKVResponse, error) {
	now, err := s.now(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	if rev > now {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	if rev <= 0 {
		rev = now
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	compact := mvcc.Revision(-1)
	for _, p := range s.cfg.Ranges.All() {
		// Here or on a member holding the range, once its leader closed
		// rev (HashAt): every member hashes the same data.
		rc, ok := p.Shard.(*RangeClient)
		if !ok {
			return nil, toGRPC(fmt.Errorf("router: range %d has no range client", p.ID))
		}
		hr, err := rc.HashAt(ctx, rev)
		if err != nil {
			return nil, toGRPC(err)
		}
		fmt.Fprintf(h, "%x:%x:%d;", p.Start, hr.Hash, hr.CompactRevision)
		compact = max(compact, hr.CompactRevision)
	}
	resp := &pb.HashKVResponse{Header: &pb.ResponseHeader{Revision: int64(now)}, Hash: h.Sum32(),
		CompactRevision: int64(compact), HashRevision: int64(rev)}
	s.fill(resp.Header)
	return resp, nil
}

// WaitApplied waits until this member's replica of p has applied every
// write up to rev (its watch hub has reached rev), asking the range to
// close rev soon.
func WaitApplied(ctx context.Context, p RangePart, rev mvcc.Revision) error {
	if p.Watches == nil {
		return nil // no replica here: its holders' reads are linearizable
	}
	ch := make(chan struct{}, 1)
	p.Watches.WaitRev(rev, ch)
	for {
		if p.Kick != nil {
			p.Kick(rev)
		}
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readTxn answers a read-only txn in the range sh. A counting range
// answers it itself at any revision (see kvServer.rangeKV). Otherwise a
// linearizable one reads once the range has closed the cluster's current
// revision — a write in any range that completed before the txn began is
// at or below it — and reports at least that revision (DESIGN.md "Reads");
// a serializable one naming past revisions has the newest of them closed
// first, if no newer than the cluster's, so that reads at it see a settled
// past even when the range wrote nothing that recent (a newer one is left
// for the range to refuse as a future revision).
func (s *Server) readTxn(ctx context.Context, sh Shard, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	resp, err := s.readTxnAs(ctx, sh, r, !txnSerializable(r))
	if err != nil {
		return nil, toGRPC(err)
	}
	return resp, nil
}

// txnAsRead answers, once the key space has split, a txn that writes in
// one branch only as a read if its compares take the other, which only
// reads — as etcd answers it, with no revision of its own: a stamped write
// that changed nothing would move the cluster's revision without a write
// (DESIGN.md "Reads"; Kubernetes' compactor relies on a failed compare
// leaving it). The compares are tried on the local replica first, which
// costs no round trip, so that a txn that is likely to write goes straight
// to its range's leader; one they fail there is read linearizably at the
// cluster's revision (readTxnAs), and written after all if its compares
// pass there. ok reports whether the txn was answered (or refused) here.
func (s *Server) txnAsRead(ctx context.Context, sh Shard, r *pb.TxnRequest) (resp *pb.TxnResponse, ok bool, err error) {
	if s.counting() || !(onlyReads(r.Success) || onlyReads(r.Failure)) {
		return nil, false, nil
	}
	if _, err := sh.ReadTxn(ctx, r, 0, false); err != nil {
		return nil, false, nil // the branch taken here writes (or the write will say what is wrong)
	}
	resp, err = s.readTxnAs(ctx, sh, r, true)
	if errors.Is(err, mvcc.ErrNotReadOnly) {
		return nil, false, nil
	}
	if err != nil {
		return nil, true, toGRPC(err)
	}
	return resp, true, nil
}

// onlyReads reports whether every op of a txn branch is a Range.
func onlyReads(ops []*pb.RequestOp) bool {
	for _, op := range ops {
		if op.GetRequestRange() == nil {
			return false
		}
	}
	return true
}

// readTxnAs is readTxn, linearizable or not, its errors as the shard gave
// them.
func (s *Server) readTxnAs(ctx context.Context, sh Shard, r *pb.TxnRequest, linearizable bool) (*pb.TxnResponse, error) {
	if s.counting() {
		resp, err := sh.ReadTxn(ctx, r, 0, linearizable)
		if err != nil {
			return nil, err
		}
		if s.counting() {
			s.fill(resp.Header)
			return resp, nil
		}
	}
	rs, ok := sh.(RangeShard)
	past := mvcc.Revision(txnMaxRev(r))
	var floor, now mvcc.Revision
	if ok && (linearizable || past > 0) {
		var err error
		if now, err = s.now(ctx); err != nil {
			return nil, err
		}
		if !linearizable {
			now = past
		}
		if past <= now || linearizable {
			if err := rs.WaitClosed(ctx, now); err != nil {
				return nil, err
			}
			floor = now
		}
	}
	resp, err := untilUnlocked(ctx, func() (*pb.TxnResponse, error) { return sh.ReadTxn(ctx, r, floor, linearizable) })
	if err != nil {
		return nil, err
	}
	if linearizable {
		resp.Header.Revision = max(resp.Header.Revision, int64(now))
	}
	s.fill(resp.Header)
	return resp, nil
}

// txnMaxRev is the newest revision a txn's reads name, nested txns included.
func txnMaxRev(r *pb.TxnRequest) int64 {
	var rev int64
	mvcc.EachOp(r, func(op *pb.RequestOp) bool {
		if o, ok := op.Request.(*pb.RequestOp_RequestRange); ok {
			rev = max(rev, o.RequestRange.Revision)
		}
		return true
	})
	return rev
}

// reroutes bounds how often one request is routed again after a split.
const reroutes = 100

// rerouted runs fn, again while it fails because a range it was routed to
// no longer holds its keys (a split or a merge gave them to another range
// since the request was routed), or is frozen for a merge (until the
// request's deadline, mergeWait): clients never see a split or a merge. A request a range
// refused as checked against a stale cached auth state is checked and
// sent once more (authRetry).
func rerouted[T any](ctx context.Context, s *Server, fn func() (T, error)) (T, error) {
	ar := s.authRetry()
	mw := s.mergeWait(ctx)
	for i := 0; ; i++ {
		out, err := fn()
		if ar.again(ctx, err) {
			continue // checked against a stale cached auth state (authcache.go)
		}
		if errors.Is(err, shard.ErrMerging) {
			if !mw.wait(ctx) {
				return out, toGRPC(err) // etcd's timeout (or the caller's cancel)
			}
			i-- // not a reroute: the range is where it was
			continue
		}
		if !moved(err) || i >= reroutes {
			return out, err
		}
		var o *shard.OutsideRangeError
		if errors.As(err, &o) {
			s.cfg.Ranges.Refresh(o.Range)
		}
		select {
		case <-ctx.Done():
			return out, err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// moved reports whether err is a range's refusal of keys outside it
// (shard.OutsideRangeError, which survives forwarding and toGRPC).
func moved(err error) bool {
	var o *shard.OutsideRangeError
	return errors.As(err, &o)
}
