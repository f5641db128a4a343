package shard

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Defaults of PrimaryConfig.
const (
	// DefaultPrimaryInterval is how often the primary looks at leadership,
	// expiries and checkpoints. It bounds how late an expired lease's
	// revoke is proposed (etcd looks every 500 ms).
	DefaultPrimaryInterval = 100 * time.Millisecond
	// DefaultRevokeRound is how many revokes the primary proposes at once.
	// A round applies before the next is proposed, so client writes queue
	// behind at most one round, however many leases expire together.
	DefaultRevokeRound = 1000
	// checkpointsPerRequest bounds one checkpoint request.
	checkpointsPerRequest = 1000
	// primaryWriteTimeout bounds one round of proposals.
	primaryWriteTimeout = 10 * time.Second
)

// PrimaryConfig configures the lessor duties of one shard replica.
type PrimaryConfig struct {
	Replica *Replica
	// Lessor returns the replica's lessor, nil until its state machine is
	// open (StateMachine.Lessor).
	Lessor func() *lease.Lessor
	// ReplicaID is this replica's id in the raft group.
	ReplicaID ReplicaID
	// ElectionTimeout is added to every lease's TTL at promotion, so that a
	// lease does not expire because its keepalives went to the old leader.
	ElectionTimeout time.Duration
	// Interval and RevokeRound: 0 means the defaults above.
	Interval    time.Duration
	RevokeRound int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Primary carries out the duties of the lessor on the shard's leader (see
// lease's doc.go): it promotes the lessor when this replica leads and
// demotes it when it stops, proposes the revokes of expired leases and the
// checkpoints of long ones. Its one goroutine owns the leadership state.
type Primary struct {
	cfg    PrimaryConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// leading and term are the leadership seen at the last look; owned by
	// the loop goroutine.
	leading bool
	term    uint64
}

// StartPrimary starts the loop; Close stops it.
func StartPrimary(cfg PrimaryConfig) *Primary {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultPrimaryInterval
	}
	if cfg.RevokeRound <= 0 {
		cfg.RevokeRound = DefaultRevokeRound
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Primary{cfg: cfg, cancel: cancel}
	p.wg.Add(1)
	go p.loop(ctx)
	return p
}

// Close stops the loop and waits for it. The lessor is left demoted.
func (p *Primary) Close() {
	p.cancel()
	p.wg.Wait()
	if l := p.cfg.Lessor(); l != nil {
		l.Demote()
	}
}

func (p *Primary) loop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		p.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick follows leadership and, while leading, does the due work.
func (p *Primary) tick(ctx context.Context) {
	l := p.cfg.Lessor()
	if l == nil {
		return
	}
	leader, term, ok := p.cfg.Replica.Leader()
	lead := ok && leader == p.cfg.ReplicaID
	switch {
	case lead && (!l.IsPrimary() || !p.leading || term != p.term):
		// A new term, or a lessor demoted underneath (a snapshot restore
		// rebuilds it demoted): start every lease afresh from its
		// checkpoint, extended by an election timeout.
		l.Promote(p.cfg.Now(), p.cfg.ElectionTimeout)
		p.cfg.Log.Debug("lessor promoted", "term", term, "leases", l.Len())
	case !lead && p.leading:
		l.Demote()
		p.cfg.Log.Debug("lessor demoted", "term", term)
	}
	p.leading, p.term = lead, term
	if !lead {
		return
	}
	p.revokeExpired(ctx, l)
	p.checkpoint(ctx, l)
}

// revokeExpired proposes the revokes of expired leases in rounds of at most
// RevokeRound, each applied before the next is proposed. A revoke that
// fails is handed out again by the lessor after its retry interval.
func (p *Primary) revokeExpired(ctx context.Context, l *lease.Lessor) {
	for ctx.Err() == nil {
		ids := l.Expired(p.cfg.Now(), p.cfg.RevokeRound)
		if len(ids) == 0 {
			return
		}
		reqs := make([]*shardpb.Request, len(ids))
		for i, id := range ids {
			data, _ := proto.Marshal(&pb.LeaseRevokeRequest{ID: int64(id)})
			reqs[i] = &shardpb.Request{Op: &shardpb.Request_LeaseRevoke{LeaseRevoke: data}}
		}
		p.write(ctx, "revoke expired leases", reqs)
		if len(ids) < p.cfg.RevokeRound {
			return
		}
	}
}

// checkpoint proposes the due checkpoints.
func (p *Primary) checkpoint(ctx context.Context, l *lease.Lessor) {
	cps := l.DueCheckpoints(p.cfg.Now(), 0)
	var reqs []*shardpb.Request
	for len(cps) > 0 {
		n := min(len(cps), checkpointsPerRequest)
		req := &pb.LeaseCheckpointRequest{Checkpoints: make([]*pb.LeaseCheckpoint, n)}
		for i, c := range cps[:n] {
			req.Checkpoints[i] = &pb.LeaseCheckpoint{ID: int64(c.ID), Remaining_TTL: c.RemainingTTL}
		}
		cps = cps[n:]
		data, _ := proto.Marshal(req)
		reqs = append(reqs, &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: data}})
	}
	if len(reqs) > 0 {
		p.write(ctx, "checkpoint leases", reqs)
	}
}

// write proposes reqs and logs the first failure. A lease revoked meanwhile
// by a client is not a failure.
func (p *Primary) write(ctx context.Context, what string, reqs []*shardpb.Request) {
	ctx, cancel := context.WithTimeout(ctx, primaryWriteTimeout)
	defer cancel()
	_, errs := p.cfg.Replica.WriteAll(ctx, reqs)
	for _, err := range errs {
		var e *Error
		if err == nil || (errors.As(err, &e) && e.Code == shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND) {
			continue
		}
		if ctx.Err() == nil {
			p.cfg.Log.Warn("lessor proposal failed", "what", what, "error", err)
		}
		return
	}
}
