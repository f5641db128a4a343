package node

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-kv/cairn/proto/internalpb"
)

// The side channel of closed revisions (DESIGN.md "Closed revision") is
// one per node pair, not per range: the closers of every range this node
// leads tick together (closedClock), and what they publish for a peer
// goes to it as one message — at most one in flight per peer, carrying the
// latest closed revision of each range published since the one before.
// A node with many ranges so sends each peer about one message a round.

// closedClock is the node's closing round: next returns a channel closed
// at the next tick, so every closer wakes on the same one.
type closedClock struct {
	mu sync.Mutex
	ch chan struct{}
}

func newClosedClock() *closedClock { return &closedClock{ch: make(chan struct{})} }

func (c *closedClock) next() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

// run ticks every period until stop is closed.
func (c *closedClock) run(stop <-chan struct{}, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		close(c.ch)
		c.ch = make(chan struct{})
		c.mu.Unlock()
	}
}

// sideChannel batches closed revisions per peer.
type sideChannel struct {
	n     *Node
	mu    sync.Mutex
	peers map[uint64]*sidePeer
	// received counts what this node was sent, for tests: messages, the
	// most ranges one carried, the most handled at once.
	received struct{ messages, maxRanges, inFlight, maxInFlight atomic.Int64 }
}

// sidePeer is what waits for one peer; sending: a message is on its way.
type sidePeer struct {
	pending map[uint64]*internalpb.RangeClosed
	sending bool
}

// publish queues rc for peer, and sends unless a message to it is on its
// way already (whose sender then takes rc too).
func (sc *sideChannel) publish(peer uint64, rc *internalpb.RangeClosed) {
	sc.mu.Lock()
	if sc.peers == nil {
		sc.peers = map[uint64]*sidePeer{}
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

// send sends p's pending revisions to peer, one message at a time, until
// none is left; a lost message is made good by the next round.
func (sc *sideChannel) send(peer uint64, p *sidePeer) {
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
		if nc, err := sc.n.nodeClient(peer); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), closedEvery*4)
			_, _ = nc.Closed(ctx, req)
			cancel()
		}
	}
}

// got records a message received, until done is called.
func (sc *sideChannel) got(r *internalpb.ClosedRequest) (done func()) {
	rc := &sc.received
	rc.messages.Add(1)
	raise(&rc.maxRanges, int64(len(r.Ranges)))
	raise(&rc.maxInFlight, rc.inFlight.Add(1))
	return func() { rc.inFlight.Add(-1) }
}

// raise sets a to v if v is higher.
func raise(a *atomic.Int64, v int64) {
	for m := a.Load(); v > m && !a.CompareAndSwap(m, v); m = a.Load() {
	}
}
