package router

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/shard"
)

// The side channel of closed revisions (DESIGN.md "Closed revision") is
// one per member pair, not per range: the closers of every range a member
// leads tick together (shard.Clock), and what they publish for a peer goes
// to it as one message — at most one in flight per peer, carrying the
// latest closed revision of each range published since the one before. A
// member with many ranges so sends each peer about one message a round.

// SideChannel sends members the closed revisions of the ranges this one
// leads, batched per peer (see the top of this file). Safe for concurrent
// use; it owns a goroutine per peer only while a message to it is on its
// way.
type SideChannel struct {
	fwd *Forwarder
	// timeout bounds one message.
	timeout time.Duration
	mu      sync.Mutex
	peers   map[placement.NodeID]*sidePeer // REQUIRES: mu
	// received counts what this node was sent, for tests: messages, the
	// most ranges one carried, the most handled at once.
	received struct{ messages, maxRanges, inFlight, maxInFlight atomic.Int64 }
}

// sidePeer is what waits for one peer; sending: a message is on its way.
type sidePeer struct {
	pending map[uint64]*internalpb.RangeClosed
	sending bool
}

// NewSideChannel returns a side channel sending through fwd, each message
// given timeout.
func NewSideChannel(fwd *Forwarder, timeout time.Duration) *SideChannel {
	return &SideChannel{fwd: fwd, timeout: timeout}
}

// Publish queues rc for peer, and sends unless a message to it is on its
// way already (whose sender then takes rc too).
func (sc *SideChannel) Publish(peer placement.NodeID, rc *internalpb.RangeClosed) {
	sc.mu.Lock()
	if sc.peers == nil {
		sc.peers = map[placement.NodeID]*sidePeer{}
	}
	p := sc.peers[peer]
	if p == nil {
		p = &sidePeer{pending: map[uint64]*internalpb.RangeClosed{}}
		sc.peers[peer] = p
	}
	p.pending[rc.Range] = rc
	start := !p.sending
	p.sending = true
	sc.mu.Unlock()
	if start {
		go sc.send(peer, p)
	}
}

// PublishClosed sends the other replicas of r, a range this member leads,
// its closed revision with the index applied here (shard.RangeConfig's
// Publish).
func (sc *SideChannel) PublishClosed(r *shard.Range, closed mvcc.Revision) {
	rc := &internalpb.RangeClosed{Range: uint64(r.ID()), Closed: int64(closed), Index: r.AppliedIndex()}
	for _, id := range r.Descriptor().Replicas {
		if peer := placement.NodeID(id); peer != sc.fwd.self {
			sc.Publish(peer, rc)
		}
	}
}

// ForwardKick asks the member of leader, r's leader, to close rev soon
// for watches here (shard.RangeConfig's ForwardKick), without waiting for
// its answer (bounded by the channel's timeout).
func (sc *SideChannel) ForwardKick(r *shard.Range, leader shard.ReplicaID, rev mvcc.Revision) {
	nc, err := sc.fwd.Client(sc.fwd.memberOf.member(r.ID(), leader))
	if err != nil {
		return
	}
	req := &internalpb.KickRequest{Range: uint64(r.ID()), Revision: int64(rev)}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
		defer cancel()
		_, _ = nc.Kick(ctx, req)
	}()
}

// send sends p's pending revisions to peer, one message at a time, until
// none is left; a lost message is made good by the next round.
func (sc *SideChannel) send(peer placement.NodeID, p *sidePeer) {
	for {
		sc.mu.Lock()
		if len(p.pending) == 0 {
			p.sending = false
			sc.mu.Unlock()
			return
		}
		req := &internalpb.ClosedRequest{}
		for _, rc := range p.pending {
			req.Ranges = append(req.Ranges, rc)
		}
		p.pending = map[uint64]*internalpb.RangeClosed{}
		sc.mu.Unlock()
		slices.SortFunc(req.Ranges, func(a, b *internalpb.RangeClosed) int { return cmp.Compare(a.Range, b.Range) })
		if nc, err := sc.fwd.Client(peer); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
			_, _ = nc.Closed(ctx, req)
			cancel()
		}
	}
}

// Got records a message received, until done is called.
func (sc *SideChannel) Got(r *internalpb.ClosedRequest) (done func()) {
	rc := &sc.received
	rc.messages.Add(1)
	raise(&rc.maxRanges, int64(len(r.Ranges)))
	raise(&rc.maxInFlight, rc.inFlight.Add(1))
	return func() { rc.inFlight.Add(-1) }
}

// Received is what this member was sent: messages, the most ranges one
// carried, the most handled at once.
func (sc *SideChannel) Received() (messages, maxRanges, maxInFlight int64) {
	r := &sc.received
	return r.messages.Load(), r.maxRanges.Load(), r.maxInFlight.Load()
}

// raise sets a to v if v is higher.
func raise(a *atomic.Int64, v int64) {
	for m := a.Load(); v > m && !a.CompareAndSwap(m, v); m = a.Load() {
	}
}
