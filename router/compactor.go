package router

// Automatic compaction: etcd's --auto-compaction-mode and
// --auto-compaction-retention, on the same schedule as etcd's compactors
// (etcdserver/api/v3compactor), so an operator who tuned etcd gets the same
// history window from Cairn.
//
// Periodic mode, retention P (period). The compactor samples the shard's
// revision every P/10 (every 6 minutes once P is an hour or more) and keeps
// the samples of the last P. It compacts nothing during the first P; then,
// whenever the last successful compaction is at least min(P, 1h) old, it
// compacts at the oldest sample it keeps — the revision of about one P ago —
// unless that is the revision it compacted last. With P = 1h (interval 6m):
//
//	t=0    sample r0      (nothing compacted before t=60m)
//	t=6m   sample r1
//	...
//	t=54m  sample r9
//	t=60m  compact r0;    sample r10
//	t=66m  sample r11     (the window keeps 11 samples: r1..r11)
//	...
//	t=120m compact r9;    and so on every hour, each time the revision of
//	                      66 minutes before
//
// With P = 24h the first compaction comes after 24h and later ones every
// hour, each at the revision of about 24h before. A failed compaction is
// retried at the next sample.
//
// Revision mode, retention N. Every 5 minutes the compactor compacts at
// (current revision − N), unless that is not above 0 or is the revision it
// compacted last.
//
// In both modes a compaction at a revision already compacted counts as done,
// and only the member that leads the shard (range 1 in sharded mode)
// compacts: the others keep sampling (as etcd's paused compactor does), so
// a new leader picks the schedule up. A compaction takes the path a
// client's Compact takes, so it applies cluster-wide (DESIGN.md
// "Compaction"): the one shard in single-group mode, every range at the
// one revision in sharded mode (compactAll). The current revision is the
// one the Server reports: the shard's in single-group mode, the oracle's
// in sharded mode.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/mvcc"
)

// Compaction modes, as etcd's --auto-compaction-mode values.
const (
	CompactionPeriodic = "periodic"
	CompactionRevision = "revision"
)

const (
	// compactionDivisor: the periodic compactor samples (and retries)
	// this many times per min(P, 1h), as etcd's.
	compactionDivisor = 10
	// compactionMaxInterval caps the periodic compactor's interval between
	// compactions once the first period has passed, as etcd's.
	compactionMaxInterval = time.Hour
	// revisionCompactionInterval is how often the revision compactor
	// looks, as etcd's.
	revisionCompactionInterval = 5 * time.Minute
	// minCompactionSample keeps an absurdly small periodic retention
	// (etcd accepts "5ns") from turning the sampling loop into a busy loop.
	minCompactionSample = time.Millisecond
)

// CompactionRetention reads --auto-compaction-mode and
// --auto-compaction-retention as etcd does: an integer is hours in periodic
// mode and a revision count in revision mode; anything else is a Go
// duration. (In revision mode etcd takes a duration's nanoseconds as the
// revision count; so does this, and the compactor warns about it.) Zero
// means no automatic compaction. The mode must be known even then, as etcd
// requires.
func CompactionRetention(mode, retention string) (time.Duration, error) {
	switch mode {
	case CompactionPeriodic, CompactionRevision:
	default:
		return 0, fmt.Errorf("router: --auto-compaction-mode %q: want periodic or revision", mode)
	}
	if retention == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(retention); err == nil && n >= 0 {
		if mode == CompactionRevision {
			return time.Duration(n), nil
		}
		if int64(n) > int64(1<<63-1)/int64(time.Hour) {
			return 0, fmt.Errorf("router: --auto-compaction-retention %q: too many hours", retention)
		}
		return time.Duration(n) * time.Hour, nil
	}
	d, err := time.ParseDuration(retention)
	if err != nil {
		return 0, fmt.Errorf("router: --auto-compaction-retention %q: want a number (hours in periodic mode, revisions in revision mode) or a duration such as 30m: %v", retention, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("router: --auto-compaction-retention %q is negative", retention)
	}
	return d, nil
}

// CompactorClock is the compactor's time: the wall clock in production, a
// fake one a test advances.
type CompactorClock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// compactionTarget is what the compactor needs of the Server (serverTarget).
type compactionTarget interface {
	// revision is the current revision.
	revision(ctx context.Context) (mvcc.Revision, error)
	// leading reports whether this member leads the shard (range 1).
	leading() bool
	// compact compacts at rev; a revision already compacted is no error.
	compact(ctx context.Context, rev mvcc.Revision) error
}

// compactor runs one of etcd's automatic compaction schedules (see the top
// of this file). It is driven by one goroutine, run's, and owns no other
// state than that goroutine's locals.
type compactor struct {
	log    *slog.Logger
	clock  CompactorClock
	target compactionTarget
	mode   string
	// retention is the period in periodic mode and, as a plain count, the
	// number of revisions kept in revision mode.
	// Invariant: retention > 0.
	retention time.Duration
	// onFailure is CompactorConfig.OnFailure (nil: none).
	onFailure func()
}

// CompactorConfig is etcd's --auto-compaction-mode and
// --auto-compaction-retention (CompactionRetention reads them), with the
// compactor's clock (nil: the wall clock) and logger (nil: discard).
// OnFailure, if set, is called (on the compactor's goroutine) for each
// compaction that failed, before it is retried; in sharded mode one range
// that fails fails the compaction, though the others compacted.
type CompactorConfig struct {
	Mode, Retention string
	Clock           CompactorClock
	Log             *slog.Logger
	OnFailure       func()
}

// Compactor is a running automatic compactor; Close stops it.
type Compactor struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
}

// StartCompactor starts the automatic compaction cfg asks for, over s's
// own compaction path; it returns nil (which Close accepts) when cfg's
// retention is zero, and an error for a mode or retention etcd refuses.
func (s *Server) StartCompactor(cfg CompactorConfig) (*Compactor, error) {
	retention, err := CompactionRetention(cfg.Mode, cfg.Retention)
	if err != nil || retention == 0 {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = wallClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &compactor{log: cfg.Log, clock: cfg.Clock, target: serverTarget{s}, mode: cfg.Mode, retention: retention, onFailure: cfg.OnFailure}
	if c.mode == CompactionRevision {
		if _, err := strconv.Atoi(cfg.Retention); err != nil {
			c.log.Warn("--auto-compaction-retention is a duration but the mode is revision: as etcd, its nanoseconds are taken as the number of revisions to keep",
				"retention", cfg.Retention, "revisions", int64(retention))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cc := &Compactor{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cc.done)
		c.run(ctx)
	}()
	return cc, nil
}

// Close stops the compactor, cancelling a compaction in flight, and waits
// until it has stopped. A nil Compactor is a no-op.
func (c *Compactor) Close() {
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
}

// run compacts on the schedule until ctx is done.
func (c *compactor) run(ctx context.Context) {
	c.log.Info("automatic compaction enabled", "mode", c.mode, "retention", c.retentionAttr())
	if c.mode == CompactionRevision {
		c.runRevision(ctx)
	} else {
		c.runPeriodic(ctx)
	}
}

func (c *compactor) retentionAttr() any {
	if c.mode == CompactionRevision {
		return int64(c.retention)
	}
	return c.retention
}

func (c *compactor) runPeriodic(ctx context.Context) {
	period := c.retention
	every := min(period, compactionMaxInterval)
	sample := max(every/compactionDivisor, minCompactionSample)
	keep := int(period/sample) + 1 // revs[0] is the revision of about one period ago
	var (
		revs        []mvcc.Revision // the samples, oldest first; at most keep
		last        mvcc.Revision   // compacted last
		lastSuccess = c.clock.Now()
		wait        = period // the first compaction waits a whole period
	)
	for {
		if rev, err := c.target.revision(ctx); err == nil {
			revs = append(revs, rev)
			if len(revs) > keep {
				revs = revs[1:]
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-c.clock.After(sample):
		}
		if len(revs) == 0 || !c.target.leading() {
			continue
		}
		rev := revs[0]
		if c.clock.Now().Sub(lastSuccess) < wait || rev == last {
			continue
		}
		wait = every
		if c.compact(ctx, rev, sample) {
			last, lastSuccess = rev, c.clock.Now()
		}
	}
}

func (c *compactor) runRevision(ctx context.Context) {
	var last mvcc.Revision // compacted last
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.clock.After(revisionCompactionInterval):
		}
		if !c.target.leading() {
			continue
		}
		cur, err := c.target.revision(ctx)
		if err != nil {
			continue
		}
		rev := cur - mvcc.Revision(c.retention)
		if rev <= 0 || rev == last {
			continue
		}
		if c.compact(ctx, rev, revisionCompactionInterval) {
			last = rev
		}
	}
}

// compact compacts at rev and reports whether it is done (or was already).
func (c *compactor) compact(ctx context.Context, rev mvcc.Revision, retry time.Duration) bool {
	c.log.Info("starting auto compaction", "mode", c.mode, "revision", int64(rev), "retention", c.retentionAttr())
	start := c.clock.Now()
	if err := c.target.compact(ctx, rev); err != nil {
		if ctx.Err() == nil {
			if c.onFailure != nil {
				c.onFailure()
			}
			c.log.Warn("auto compaction failed", "mode", c.mode, "revision", int64(rev), "retry-in", retry, "error", err)
		}
		return false
	}
	c.log.Info("completed auto compaction", "mode", c.mode, "revision", int64(rev), "took", c.clock.Now().Sub(start))
	return true
}

// serverTarget compacts through the Server, as a client's Compact does.
type serverTarget struct{ s *Server }

func (t serverTarget) revision(ctx context.Context) (mvcc.Revision, error) {
	return t.s.now(ctx)
}

func (t serverTarget) leading() bool {
	leader, _, ok := t.s.cfg.Shard.Leader()
	return ok && t.s.shardMember(leader) == t.s.cfg.MemberID
}

func (t serverTarget) compact(ctx context.Context, rev mvcc.Revision) error {
	_, err := t.s.compact(ctx, &pb.CompactionRequest{Revision: int64(rev)}, true)
	if errors.Is(err, rpctypes.ErrGRPCCompacted) {
		return nil
	}
	return err
}
