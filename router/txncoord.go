package router

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// The coordinator of cross-range transactions (docs/plan-txn.md, slice
// 2). A DeleteRange or Txn whose keys fall in several ranges runs here,
// in the router that received it:
//
//	prepare every participant (lock its spans, read them) → evaluate the
//	whole txn over the reads → R from the oracle → TxnDecide at the
//	primary (the commit point) → TxnCommit at R everywhere → forget
//
// A prepare refused by another transaction's lock, or because its spans
// were written since, aborts the attempt and the whole transaction runs
// again, until the request's deadline. A txn whose taken branch changes
// nothing takes no revision: its locks are released and it answers as a
// read. Single-range requests never come here.

// spansRanges is shardFor's refusal of spans in several ranges: the
// parts, for the coordinator; to a client (a caller that does not
// coordinate), etcd's InvalidArgument as before.
type spansRanges struct{ parts []RangePart }

func (e *spansRanges) Error() string              { return crossRange(e.parts).Error() }
func (e *spansRanges) GRPCStatus() *status.Status { return status.Convert(crossRange(e.parts)) }

// revisionOracle is the oracle as the coordinator needs it: it hands out
// the transaction's revision (placement.OracleClient).
type revisionOracle interface {
	Revisions(ctx context.Context, n int64) (mvcc.Revision, error)
}

// txnSeq numbers this process's transactions; seeded by the clock, so that
// ids stay unique across restarts.
var txnSeq atomic.Uint64

func init() { txnSeq.Store(uint64(time.Now().UnixNano())) }

// newTxnID is a transaction id unique forever: the member id mixed with
// the process's counter (never 0).
func (s *Server) newTxnID() uint64 {
	m := uint64(s.cfg.MemberID) * 0x9e3779b97f4a7c15
	for {
		if id := (m<<40 | m>>24) ^ txnSeq.Add(1); id != 0 {
			return id
		}
	}
}

// participant is one range of a cross-range transaction and the spans the
// transaction names in it.
type participant struct {
	part  RangePart
	spans []*shardpb.KeySpan // clipped to the range, etcd's key/range_end
	// intents are what it commits (puts and delete ranges).
	intents []*pb.RequestOp
	// prepared: its lock is held.
	prepared bool
}

// isInf reports whether an etcd range_end names no upper bound.
func isInf(end []byte) bool { return len(end) == 1 && end[0] == 0 }

// clip returns sp (etcd's key/range_end) cut to [start, end) (end empty: no
// bound), and whether anything is left.
func clip(sp keySpan, start, end []byte) (*shardpb.KeySpan, bool) {
	inside := func(k []byte) bool {
		return bytes.Compare(k, start) >= 0 && (len(end) == 0 || bytes.Compare(k, end) < 0)
	}
	if len(sp.end) == 0 {
		return &shardpb.KeySpan{Key: sp.key}, inside(sp.key)
	}
	lo := sp.key
	if bytes.Compare(lo, start) < 0 {
		lo = start
	}
	var hi []byte // nil: no bound
	if !isInf(sp.end) {
		hi = sp.end
	}
	if len(end) > 0 && (hi == nil || bytes.Compare(end, hi) < 0) {
		hi = end
	}
	if hi != nil && bytes.Compare(lo, hi) >= 0 {
		return nil, false
	}
	if len(lo) == 0 {
		lo = []byte{0}
	}
	if hi == nil {
		return &shardpb.KeySpan{Key: lo, RangeEnd: []byte{0}}, true
	}
	return &shardpb.KeySpan{Key: lo, RangeEnd: hi}, true
}

// participants are the ranges spans meet, in key order, with the spans
// clipped to each.
func (s *Server) participants(spans []keySpan) []*participant {
	byID := map[shard.RangeID]*participant{}
	var out []*participant
	for _, sp := range spans {
		if len(sp.end) > 0 && !isInf(sp.end) && bytes.Compare(sp.end, sp.key) <= 0 {
			continue // empty: touches nothing
		}
		for _, p := range s.spanning(sp.key, sp.end) {
			c, ok := clip(sp, p.Start, p.End)
			if !ok {
				continue
			}
			pt := byID[p.ID]
			if pt == nil {
				pt = &participant{part: p}
				byID[p.ID] = pt
				out = append(out, pt)
			}
			dup := false
			for _, o := range pt.spans {
				if bytes.Equal(o.Key, c.Key) && bytes.Equal(o.RangeEnd, c.RangeEnd) {
					dup = true
					break
				}
			}
			if !dup {
				pt.spans = append(pt.spans, c)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].part.Start, out[j].part.Start) < 0 })
	return out
}

// deleteAcross runs a DeleteRange over several ranges as a cross-range
// transaction.
func (s *Server) deleteAcross(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if proto.Size(r) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	t := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}}}
	resp, err := s.coordinate(ctx, t)
	if err != nil {
		return nil, err
	}
	out := resp.Responses[0].GetResponseDeleteRange()
	out.Header = resp.Header
	return out, nil
}

// txnAcross runs a txn whose keys fall in several ranges. A txn that
// writes is refused over the request limit as one range's write is (etcd
// refuses it at its proposal, whichever branch would run), although no
// single message carries all of it here.
func (s *Server) txnAcross(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if !mvcc.IsTxnReadOnly(r) && proto.Size(r) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	return s.coordinate(ctx, r)
}

// coordinate runs a txn whose keys fall in several ranges, again while a
// prepare is refused by another transaction, until the request's deadline.
func (s *Server) coordinate(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if len(txnLeases(r, nil)) > 0 {
		return nil, status.Error(codes.InvalidArgument,
			"etcdserver: a put with a lease in a transaction across ranges is not supported yet")
	}
	if _, ok := s.cfg.Oracle.(revisionOracle); !ok {
		return nil, toGRPC(errors.New("router: the oracle hands out no revisions"))
	}
	wctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	backoff := 2 * time.Millisecond
	for {
		resp, err := s.txnAttempt(wctx, r)
		if err == nil {
			s.fill(resp.Header)
			return resp, nil
		}
		if !errors.Is(err, shard.ErrLocked) && !errors.Is(err, shard.ErrTxnConflict) {
			if wctx.Err() != nil && ctx.Err() == nil {
				return nil, rpctypes.ErrGRPCTimeout
			}
			return nil, toGRPC(err)
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, toGRPC(ctx.Err())
			}
			return nil, rpctypes.ErrGRPCTimeout
		case <-time.After(backoff/2 + rand.N(backoff)):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// The steps between which a test may stop a coordinator (Config.TxnStep).
const (
	// TxnStepPrepared: every participant prepared, nothing decided.
	TxnStepPrepared = "prepared"
	// TxnStepDecided: the primary recorded Committed, no participant
	// committed yet.
	TxnStepDecided = "decided"
	// TxnStepCommitted: the first participant committed, the others not.
	TxnStepCommitted = "committed"
)

// TxnSteps lists the steps in the order a coordinator passes them.
var TxnSteps = []string{TxnStepPrepared, TxnStepDecided, TxnStepCommitted}

// errTxnStopped is a coordinator stopped by Config.TxnStep.
var errTxnStopped = rpctypes.ErrGRPCTimeout

// stopsAt calls the test hook at step: true if the coordinator is to stop
// there, as if its member crashed (no abort, no settling).
func (s *Server) stopsAt(step string) bool {
	return s.cfg.TxnStep != nil && s.cfg.TxnStep(step)
}

// settleTimeout bounds the coordinator's work after its client's deadline:
// aborting the prepared participants, asking the primary the outcome,
// committing a decided transaction. What it leaves, the resolver finishes.
func (s *Server) settleContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.requestTimeout())
}

// txnAttempt is one run of the protocol. An error wrapping shard.ErrLocked
// or shard.ErrTxnConflict means nothing was decided: run it again.
func (s *Server) txnAttempt(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	parts := s.participants(txnSpans(r, nil))
	if len(parts) == 0 {
		return nil, toGRPC(errors.New("router: a transaction across ranges without a participant"))
	}
	capRev, err := s.cfg.Oracle.Current(ctx)
	if err != nil {
		return nil, err
	}
	id := s.newTxnID()
	primary := parts[0]
	primaryKey := primary.spans[0].Key
	for _, sp := range primary.spans[1:] {
		if bytes.Compare(sp.Key, primaryKey) < 0 {
			primaryKey = sp.Key
		}
	}
	deadline, _ := ctx.Deadline()
	auth := authInfo(ctx)

	// 1. Prepare every participant, reading its spans.
	reads := make([]*pb.TxnResponse, len(parts))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		rr := &pb.TxnRequest{}
		for _, sp := range p.spans {
			rr.Success = append(rr.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestRange{
				RequestRange: &pb.RangeRequest{Key: sp.Key, RangeEnd: sp.RangeEnd}}})
		}
		data, err := proto.Marshal(rr)
		if err != nil {
			return nil, err
		}
		req := &shardpb.Request{AuthInfo: auth, Op: &shardpb.Request_TxnPrepare{TxnPrepare: &shardpb.TxnPrepare{
			Id: id, PrimaryRange: uint64(primary.part.ID), PrimaryKey: primaryKey, Spans: p.spans,
			Cap: int64(capRev), DeadlineUnixNano: deadline.UnixNano(), Reads: data}}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := p.part.Shard.Write(ctx, req)
			if err != nil {
				errs[i] = err
				return
			}
			p.prepared = true
			reads[i] = &pb.TxnResponse{}
			errs[i] = proto.Unmarshal(out.GetTxnPrepared().GetReads(), reads[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.abortAll(id, parts)
		return nil, firstErr(errs)
	}

	if s.stopsAt(TxnStepPrepared) {
		return nil, errTxnStopped
	}

	// 2. Evaluate over the prepared reads.
	v := newTxnView(reads, capRev)
	ev, err := v.eval(ctx, s, r, 0)
	if err != nil {
		s.abortAll(id, parts)
		return nil, err
	}
	if !ev.changed {
		// Nothing changes: no revision; the locks held every key it read
		// unchanged while the oracle passed now.
		s.abortAll(id, parts)
		now, err := s.cfg.Oracle.Current(ctx)
		if err != nil {
			return nil, err
		}
		// Again at now, for the reads' headers (STM takes its snapshot
		// revision from them).
		if ev, err = v.eval(ctx, s, r, now); err != nil {
			return nil, err
		}
		ev.resp.Header.Revision = int64(now)
		return ev.resp, nil
	}

	// 3. The revision, after every prepare was acknowledged: above every
	// lock's cap.
	rev, err := s.cfg.Oracle.(revisionOracle).Revisions(ctx, 1+plantedTxnSkew)
	if err != nil {
		s.abortAll(id, parts)
		return nil, err
	}
	if ev, err = v.eval(ctx, s, r, rev); err != nil {
		s.abortAll(id, parts)
		return nil, err
	}
	ev.resp.Header.Revision = int64(rev)
	var writes []*shardpb.TxnWrites
	intents := make([][]byte, len(parts))
	for i, p := range parts {
		p.intents = ev.intents(p)
		if len(p.intents) == 0 {
			continue
		}
		if intents[i], err = proto.Marshal(&pb.TxnRequest{Success: p.intents}); err != nil {
			s.abortAll(id, parts)
			return nil, err
		}
		writes = append(writes, &shardpb.TxnWrites{Range: uint64(p.part.ID), Intents: intents[i]})
	}

	// 4. The commit point.
	decide := &shardpb.Request{Op: &shardpb.Request_TxnDecide{TxnDecide: &shardpb.TxnDecide{
		Id: id, Revision: int64(rev), Writes: writes, PrimaryKey: primaryKey}}}
	out, err := primary.part.Shard.Write(ctx, decide)
	var rec *shardpb.TxnRecord
	if err == nil {
		rec = out.GetTxnRecord()
	} else {
		var se *shard.Error
		if errors.As(err, &se) {
			// Refused: nothing recorded.
			s.abortAll(id, parts)
			return nil, err
		}
		// Unknown: the primary's record tells (resolving aborts it if
		// the decision never applied).
		sctx, cancel := s.settleContext()
		rec, err = s.resolveAt(sctx, id, primaryKey)
		cancel()
		if err != nil {
			return nil, rpctypes.ErrGRPCTimeout // the resolver settles it
		}
	}
	if rec.GetOutcome() != shardpb.TxnOutcome_TXN_OUTCOME_COMMITTED {
		s.abortAll(id, parts)
		return nil, rpctypes.ErrGRPCTimeout
	}

	if s.stopsAt(TxnStepDecided) {
		return nil, errTxnStopped
	}

	// 5. Apply everywhere; the decision stands whatever the client's
	// context does now.
	sctx, cancel := s.settleContext()
	defer cancel()
	var failed atomic.Bool
	for i, p := range parts {
		if i == 1 && s.cfg.TxnStep != nil {
			// Under the test hook the first participant commits
			// alone, so that a test can stop the coordinator between
			// it and the others.
			wg.Wait()
			if s.stopsAt(TxnStepCommitted) {
				return nil, errTxnStopped
			}
		}
		at := int64(rev)
		if plantedTxnSkew > 0 && i == len(parts)-1 {
			at += plantedTxnSkew // planted bug: one participant at R+1
		}
		req := &shardpb.Request{Op: &shardpb.Request_TxnCommit{TxnCommit: &shardpb.TxnCommit{Id: id, Revision: at, Intents: intents[i]}}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := retryWrite(sctx, p.part.Shard, req); err != nil {
				failed.Store(true)
			}
		}()
	}
	wg.Wait()
	if failed.Load() {
		// Decided: the resolver applies what is left once the locks pass
		// their deadline; the client cannot know it has.
		return nil, rpctypes.ErrGRPCTimeout
	}
	go func() {
		fctx, cancel := s.settleContext()
		defer cancel()
		_ = retryWrite(fctx, primary.part.Shard, &shardpb.Request{Op: &shardpb.Request_TxnForget{TxnForget: &shardpb.TxnForget{Id: id}}})
	}()
	return ev.resp, nil
}

func firstErr(errs []error) error {
	// A refusal by a lock first: it makes the whole transaction run
	// again; then a moved range (rerouted refreshes the map).
	for _, err := range errs {
		if errors.Is(err, shard.ErrLocked) || errors.Is(err, shard.ErrTxnConflict) {
			return err
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// retryWrite proposes req until it applies or ctx ends (the commit and
// forget requests: idempotent, and due once decided).
func retryWrite(ctx context.Context, sh Shard, req *shardpb.Request) error {
	for {
		_, err := sh.Write(ctx, req)
		var se *shard.Error
		if err == nil || errors.As(err, &se) && !errors.Is(err, shard.ErrLocked) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// abortAll releases the locks of the participants prepared, in the
// background of the caller's context; a lock left is the resolver's.
func (s *Server) abortAll(id uint64, parts []*participant) {
	sctx, cancel := s.settleContext()
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range parts {
		// Every participant: a prepare that failed here may have
		// applied there (an abort of no lock is a no-op).
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = retryWrite(sctx, p.part.Shard, &shardpb.Request{Op: &shardpb.Request_TxnAbort{TxnAbort: &shardpb.TxnAbort{Id: id}}})
		}()
	}
	wg.Wait()
}

// resolveAt asks transaction id's primary (the range holding primaryKey)
// for its outcome, recording an abort if nothing is decided yet.
func (s *Server) resolveAt(ctx context.Context, id uint64, primaryKey []byte) (*shardpb.TxnRecord, error) {
	for {
		ps := s.spanning(primaryKey, nil)
		var err error
		if len(ps) == 1 {
			var out *shardpb.Response
			out, err = ps[0].Shard.Write(ctx, &shardpb.Request{Op: &shardpb.Request_TxnResolve{TxnResolve: &shardpb.TxnResolve{Id: id, PrimaryKey: primaryKey}}})
			if err == nil {
				return out.GetTxnRecord(), nil
			}
			var o *shard.OutsideRangeError
			if errors.As(err, &o) {
				s.cfg.Ranges.Refresh(o.Range)
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// untilUnlocked runs fn again while a cross-range transaction's lock
// refuses it (shard.ErrLocked: a write or a read above its cap of a locked
// key), until ctx ends: a lock is held for one transaction's commit, or
// until the resolver ends it.
func untilUnlocked[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	backoff := time.Millisecond
	for {
		out, err := fn()
		if err == nil || !errors.Is(err, shard.ErrLocked) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}
