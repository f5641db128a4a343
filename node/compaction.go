package node

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
// and only the member that leads the shard compacts: the others keep
// sampling (as etcd's paused compactor does), so a new leader picks the
// schedule up. Compactions are proposed through the node's replica of the
// shard, as the router's Compact is.
//
// Sharded mode (many shards per node) needs one cluster-wide revision per
// compaction, chosen above the shards; that comes with its issue.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Compaction modes, as etcd's --auto-compaction-mode values.
const (
	compactionPeriodic = "periodic"
	compactionRevision = "revision"
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

// compactionRetention reads --auto-compaction-mode and
// --auto-compaction-retention as etcd does: an integer is hours in periodic
// mode and a revision count in revision mode; anything else is a Go
// duration. (In revision mode etcd takes a duration's nanoseconds as the
// revision count; so does this, and the compactor warns about it.) Zero
// means no automatic compaction. The mode must be known even then, as etcd
// requires.
func compactionRetention(mode, retention string) (time.Duration, error) {
	switch mode {
	case compactionPeriodic, compactionRevision:
	default:
		return 0, fmt.Errorf("node: --auto-compaction-mode %q: want periodic or revision", mode)
	}
	if retention == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(retention); err == nil && n >= 0 {
		if mode == compactionRevision {
			return time.Duration(n), nil
		}
		if int64(n) > int64(1<<63-1)/int64(time.Hour) {
			return 0, fmt.Errorf("node: --auto-compaction-retention %q: too many hours", retention)
		}
		return time.Duration(n) * time.Hour, nil
	}
	d, err := time.ParseDuration(retention)
	if err != nil {
		return 0, fmt.Errorf("node: --auto-compaction-retention %q: want a number (hours in periodic mode, revisions in revision mode) or a duration such as 30m: %v", retention, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("node: --auto-compaction-retention %q is negative", retention)
	}
	return d, nil
}

// compactionClock is the compactor's time: the wall clock in production, a
// fake one the test advances.
type compactionClock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// compactionTarget is what the compactor needs of the node.
type compactionTarget interface {
	// revision is the current revision of this member's replica.
	revision(ctx context.Context) (mvcc.Revision, error)
	// leading reports whether this member leads the shard.
	leading() bool
	// compact proposes a compaction at rev; a revision already compacted
	// is no error.
	compact(ctx context.Context, rev mvcc.Revision) error
}

// compactor runs one of etcd's automatic compaction schedules (see the top
// of this file). It is driven by one goroutine, run's, and owns no other
// state than that goroutine's locals.
type compactor struct {
	log    *slog.Logger
	clock  compactionClock
	target compactionTarget
	mode   string
	// retention is the period in periodic mode and, as a plain count, the
	// number of revisions kept in revision mode.
	// Invariant: retention > 0.
	retention time.Duration
}

// startCompactor starts the automatic compactor the config asks for, if
// any. It runs until n.stop is closed, under n.wg.
func (n *Node) startCompactor() error {
	retention, err := compactionRetention(n.cfg.AutoCompactionMode, n.cfg.AutoCompactionRetention)
	if err != nil || retention == 0 {
		return err
	}
	clk := n.cfg.compactionClock
	if clk == nil {
		clk = wallClock{}
	}
	c := &compactor{log: n.log, clock: clk, target: replicaTarget{n}, mode: n.cfg.AutoCompactionMode, retention: retention}
	if c.mode == compactionRevision {
		if _, err := strconv.Atoi(n.cfg.AutoCompactionRetention); err != nil {
			n.log.Warn("--auto-compaction-retention is a duration but the mode is revision: as etcd, its nanoseconds are taken as the number of revisions to keep",
				"retention", n.cfg.AutoCompactionRetention, "revisions", int64(retention))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		defer cancel()
		c.run(ctx)
	}()
	go func() {
		defer n.wg.Done()
		select {
		case <-n.stop: // cancels a compaction in flight, so Close need not wait for it
			cancel()
		case <-ctx.Done():
		}
	}()
	return nil
}

// run compacts on the schedule until ctx is done.
func (c *compactor) run(ctx context.Context) {
	c.log.Info("automatic compaction enabled", "mode", c.mode, "retention", c.retentionAttr())
	if c.mode == compactionRevision {
		c.runRevision(ctx)
	} else {
		c.runPeriodic(ctx)
	}
}

func (c *compactor) retentionAttr() any {
	if c.mode == compactionRevision {
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
			c.log.Warn("auto compaction failed", "mode", c.mode, "revision", int64(rev), "retry-in", retry, "error", err)
		}
		return false
	}
	c.log.Info("completed auto compaction", "mode", c.mode, "revision", int64(rev), "took", c.clock.Now().Sub(start))
	return true
}

// replicaTarget compacts the node's shard through its replica, as the
// router's Compact does.
type replicaTarget struct{ n *Node }

func (t replicaTarget) revision(ctx context.Context) (mvcc.Revision, error) {
	st, err := t.n.first.proposer().Status(ctx, false)
	if err != nil {
		return 0, err
	}
	return st.Revision, nil
}

func (t replicaTarget) leading() bool {
	leader, _, ok := t.n.first.proposer().Leader()
	return ok && leader == t.n.memberID
}

func (t replicaTarget) compact(ctx context.Context, rev mvcc.Revision) error {
	data, err := proto.Marshal(&pb.CompactionRequest{Revision: int64(rev)})
	if err != nil {
		return err
	}
	_, err = t.n.first.proposer().Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: data}})
	var se *shard.Error
	if errors.As(err, &se) && se.Code == shardpb.ErrorCode_ERROR_CODE_COMPACTED {
		return nil
	}
	return err
}
