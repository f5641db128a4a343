package router

import (
	"context"
	"time"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// The resolver (docs/plan-txn.md "Recovery"): a lock of a cross-range
// transaction older than its deadline makes the leader of the range
// holding it ask the primary for the outcome (TxnResolve, which records an
// abort if nothing was decided), then commit the range's writes from the
// record or drop the lock. The coordinator that outlived its deadline then
// finds the abort when it decides, and answers etcd's timeout.

// lockLister is a replica that lists its locks (shard.Replica.Locks).
type lockLister interface {
	Locks(ctx context.Context, linearizable bool) ([]*shardpb.TxnLock, error)
}

// resolverEvery is how often the resolver looks at the locks here.
const resolverEvery = 500 * time.Millisecond

// runResolver resolves, until stop closes, the locks past their deadline
// in the ranges this member leads.
func (s *Server) runResolver(stop <-chan struct{}) {
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	go func() {
		select {
		case <-stop:
			cancelBase()
		case <-base.Done():
		}
	}()
	t := time.NewTicker(resolverEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(base, s.requestTimeout())
		s.resolveExpired(ctx)
		cancel()
	}
}

// resolveExpired is one round of the resolver.
func (s *Server) resolveExpired(ctx context.Context) {
	if s.cfg.Ranges == nil || s.cfg.Ranges.static {
		return
	}
	now := time.Now().UnixNano()
	for _, p := range s.cfg.Ranges.All() {
		rc, ok := p.Shard.(*RangeClient)
		if !ok || rc.l == nil {
			continue
		}
		if m, ok := rc.LeaderMember(); !ok || m != s.cfg.MemberID {
			continue
		}
		ll, ok := rc.l.Replica().(lockLister)
		if !ok {
			continue
		}
		locks, err := ll.Locks(ctx, false)
		if err != nil {
			continue
		}
		for _, l := range locks {
			if l.DeadlineUnixNano == 0 || l.DeadlineUnixNano > now {
				continue
			}
			rec, err := s.resolveAt(ctx, l.Id, l.PrimaryKey)
			if err != nil {
				s.cfg.Log.Warn("cross-range transaction: resolve failed", "range", p.ID, "txn", l.Id, "err", err)
				continue
			}
			req := &shardpb.Request{Op: &shardpb.Request_TxnAbort{TxnAbort: &shardpb.TxnAbort{Id: l.Id}}}
			if rec.GetOutcome() == shardpb.TxnOutcome_TXN_OUTCOME_COMMITTED {
				c := &shardpb.TxnCommit{Id: l.Id, Revision: rec.Revision}
				for _, w := range rec.Writes {
					if w.Range == uint64(p.ID) {
						c.Intents = w.Intents
					}
				}
				req = &shardpb.Request{Op: &shardpb.Request_TxnCommit{TxnCommit: c}}
			}
			if err := retryWrite(ctx, p.Shard, req); err != nil {
				s.cfg.Log.Warn("cross-range transaction: settle failed", "range", p.ID, "txn", l.Id, "err", err)
			}
		}
	}
}
