package router

import (
	"cmp"
	"context"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/shard"
)

// The side channel of closed revisions (DESIGN.md "Closed revision") is
// one per member pair, not per range: the closers of every range a member
// leads tick together (shard.Clock), and what they publish for a peer goes
// to it as one message — at most one in flight per peer, carrying the
// newest closed revision of each range published since the one before,
// and the kicks (ForwardKick) asked of the peer meanwhile, the highest of
// each range. A member with many ranges so sends each peer about one
// message a round.
//
// The messages travel on one long-lived Side stream per member pair, as
// forwarded writes do on Forward streams (forwardstream.go, whose
// memberStreams keep both): each tagged with an id that the peer's answer
// acknowledges once it took it, the next sent only then.
//
//	member 1 (leads ranges 5, 7)                member 2 (replicas)
//	publish 5@40, 7@41, 5@42 ─▶ {#3 5@42 7@41} ─▶ Published ─▶ {ack #3}
//
// A message whose stream fails before its answer came (the peer restarted,
// the answer took longer than the channel's timeout, the channel closed)
// is not lost: its values go back to wait, behind any newer of the same
// range, and the next publish for the peer opens a stream again and sends
// them. A peer that answers Side with Unimplemented (it predates it) is
// sent Closed and Kick calls instead, one message at a time as before, and
// asked again after noStreamFor.
//
// Concurrency: mu guards the waiting values; a stream's sender goroutine
// alone sends on it and its receiver alone receives (as a Forward
// stream's); a goroutine per peer sends the calls while there is
// something to send. Close ends them all and waits for them.

// SideChannel sends members the closed revisions of the ranges this one
// leads, and the kicks of ranges they lead, batched per peer (see the top
// of this file). Safe for concurrent use.
type SideChannel struct {
	fwd *Forwarder
	// timeout bounds one message (its call, or its answer on a stream).
	timeout time.Duration
	streams memberStreams[*sideStream]
	mu      sync.Mutex
	closed  bool                           // REQUIRES: mu
	peers   map[placement.NodeID]*sidePeer // REQUIRES: mu
	calls   sync.WaitGroup                 // the goroutines sending calls
	// received counts what this node was sent, for tests: messages, the
	// most ranges one carried, the most handled at once.
	received struct{ messages, maxRanges, inFlight, maxInFlight atomic.Int64 }
}

// sidePeer is what waits to be sent to one peer (guarded by the channel's
// mu): the newest closed revision of each range and the highest kick of
// each; calling: a goroutine sends them by unary calls.
type sidePeer struct {
	pending map[uint64]*internalpb.RangeClosed
	kicks   map[uint64]int64
	calling bool
}

// NewSideChannel returns a side channel sending through fwd, each message
// given timeout.
func NewSideChannel(fwd *Forwarder, timeout time.Duration) *SideChannel {
	return &SideChannel{fwd: fwd, timeout: timeout}
}

// Close ends the channel's streams and calls and waits for their
// goroutines; nothing is sent after.
func (sc *SideChannel) Close() {
	sc.mu.Lock()
	sc.closed = true
	sc.mu.Unlock()
	sc.streams.close()
	sc.calls.Wait()
}

// peer returns what waits for peer. REQUIRES: sc.mu.
func (sc *SideChannel) peer(peer placement.NodeID) *sidePeer {
	if sc.peers == nil {
		sc.peers = map[placement.NodeID]*sidePeer{}
	}
	p := sc.peers[peer]
	if p == nil {
		p = &sidePeer{pending: map[uint64]*internalpb.RangeClosed{}, kicks: map[uint64]int64{}}
		sc.peers[peer] = p
	}
	return p
}

// Publish queues rc for peer, in place of any value of its range still
// waiting, and has it sent.
func (sc *SideChannel) Publish(peer placement.NodeID, rc *internalpb.RangeClosed) {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.peer(peer).pending[rc.Range] = rc
	sc.mu.Unlock()
	sc.flush(peer)
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
// its answer: it goes with the next message to that member.
func (sc *SideChannel) ForwardKick(r *shard.Range, leader shard.ReplicaID, rev mvcc.Revision) {
	sc.kick(sc.fwd.memberOf.member(r.ID(), leader), r.ID(), rev)
}

// kick queues for peer, range id's leader, a request to close rev soon,
// and has it sent.
func (sc *SideChannel) kick(peer placement.NodeID, id shard.RangeID, rev mvcc.Revision) {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	p := sc.peer(peer)
	p.kicks[uint64(id)] = max(p.kicks[uint64(id)], int64(rev))
	sc.mu.Unlock()
	sc.flush(peer)
}

// flush has what waits for peer sent: on its Side stream (opened if
// need be), or by calls if it serves none. A peer that cannot be dialled
// keeps it for the next flush.
func (sc *SideChannel) flush(peer placement.NodeID) {
	conn, err := sc.fwd.dial(peer)
	if err != nil {
		return
	}
	if st, ok := sc.streams.stream(peer, conn, func() *sideStream { return &sideStream{sc: sc, peer: peer} }); ok {
		st.poke()
		return
	}
	sc.call(peer)
}

// take removes from what waits for peer one message's worth: ranges in
// order, as many as batchOf allows, and every kick; nil if nothing waits.
func (sc *SideChannel) take(peer placement.NodeID) *internalpb.SideRequest {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	p := sc.peers[peer]
	if p == nil || len(p.pending) == 0 && len(p.kicks) == 0 {
		return nil
	}
	req := &internalpb.SideRequest{}
	ranges := slices.SortedFunc(maps.Values(p.pending), func(a, b *internalpb.RangeClosed) int { return cmp.Compare(a.Range, b.Range) })
	n := batchOf(ranges, func(rc *internalpb.RangeClosed) int { return proto.Size(rc) })
	req.Closed = ranges[:n:n]
	for _, rc := range req.Closed {
		delete(p.pending, rc.Range)
	}
	for _, id := range slices.Sorted(maps.Keys(p.kicks)) {
		req.Kicks = append(req.Kicks, &internalpb.KickRequest{Range: id, Revision: p.kicks[id]})
	}
	clear(p.kicks)
	return req
}

// requeue puts back for peer what req carried, which may not have reached
// it, behind any newer value of the same range that waits.
func (sc *SideChannel) requeue(peer placement.NodeID, req *internalpb.SideRequest) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	p := sc.peer(peer)
	for _, rc := range req.Closed {
		if _, newer := p.pending[rc.Range]; !newer {
			p.pending[rc.Range] = rc
		}
	}
	for _, k := range req.Kicks {
		p.kicks[k.Range] = max(p.kicks[k.Range], k.Revision)
	}
}

// call starts the goroutine sending what waits for peer by Closed and
// Kick calls, unless it runs.
func (sc *SideChannel) call(peer placement.NodeID) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	p := sc.peers[peer]
	if sc.closed || p == nil || p.calling || len(p.pending) == 0 && len(p.kicks) == 0 {
		return
	}
	p.calling = true
	sc.calls.Add(1)
	go func() {
		defer sc.calls.Done()
		sc.sendCalls(peer, p)
	}()
}

// sendCalls sends what waits for peer by calls, one message at a time,
// until nothing is left or a call fails (what it carried waits again, for
// the next flush).
func (sc *SideChannel) sendCalls(peer placement.NodeID, p *sidePeer) {
	for {
		req := sc.take(peer)
		sc.mu.Lock()
		if req == nil || sc.closed {
			p.calling = false
			sc.mu.Unlock()
			if req != nil {
				sc.requeue(peer, req)
			}
			return
		}
		sc.mu.Unlock()
		if err := sc.sendCall(peer, req); err != nil {
			sc.requeue(peer, req)
			sc.mu.Lock()
			p.calling = false
			sc.mu.Unlock()
			return
		}
	}
}

// sendCall sends req to peer as a Closed call and a Kick call per kick.
func (sc *SideChannel) sendCall(peer placement.NodeID, req *internalpb.SideRequest) error {
	nc, err := sc.fwd.Client(peer)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
	defer cancel()
	if len(req.Closed) > 0 {
		if _, err := nc.Closed(ctx, &internalpb.ClosedRequest{Ranges: req.Closed}); err != nil {
			return err
		}
	}
	for i, k := range req.Kicks {
		if _, err := nc.Kick(ctx, k); err != nil {
			req.Closed, req.Kicks = nil, req.Kicks[i:] // the closed revisions went
			return err
		}
	}
	return nil
}

// sideStream is one Side stream to a member.
type sideStream struct {
	streamBase
	sc   *SideChannel
	peer placement.NodeID
	// next is the id of the last message sent; inFlight the message sent
	// and not answered yet (guarded by mu).
	next     uint64
	inFlight *internalpb.SideRequest
}

// run opens the stream, sends what waits for the peer one message at a
// time, and starts the receiver; it returns once the stream failed, the
// answer to a message did not come in time, or the stream was cancelled.
func (st *sideStream) run() {
	stream, err := internalpb.NewNodeClient(st.conn).Side(st.ctx)
	if err != nil {
		st.fail(err)
		return
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		st.receive(stream)
	}()
	defer func() {
		st.cancel()
		<-recvDone
	}()
	late := time.NewTimer(st.sc.timeout)
	late.Stop()
	defer late.Stop()
	for {
		select {
		case <-st.ctx.Done():
			st.fail(status.Error(codes.Unavailable, "cairn: the side stream was closed"))
			return
		case <-late.C:
			st.mu.Lock()
			waiting := st.inFlight != nil
			st.mu.Unlock()
			if waiting {
				st.fail(status.Error(codes.DeadlineExceeded, "cairn: no answer on the side stream in time"))
				return
			}
			continue
		case <-st.wake:
		}
		st.mu.Lock()
		busy := st.inFlight != nil
		st.mu.Unlock()
		if busy {
			continue // the answer wakes this again
		}
		req := st.sc.take(st.peer)
		if req == nil {
			continue
		}
		st.mu.Lock()
		if st.failed != nil {
			st.mu.Unlock()
			st.giveBack(req)
			continue // and return on ctx's end
		}
		st.next++
		req.Id = st.next
		st.inFlight = req
		st.mu.Unlock()
		late.Reset(st.sc.timeout)
		if err := stream.Send(req); err != nil {
			if err != io.EOF {
				st.fail(err)
			}
			// Otherwise the stream is broken and Recv tells why.
			<-recvDone
			return
		}
	}
}

// receive takes the answers on the stream until it fails, waking the
// sender for the next message at each.
func (st *sideStream) receive(stream internalpb.Node_SideClient) {
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			err = status.Error(codes.Unavailable, "cairn: the member ended the side stream")
		}
		if err != nil {
			st.fail(err)
			return
		}
		st.mu.Lock()
		st.answered = true
		if st.inFlight != nil && st.inFlight.Id == resp.Id {
			st.inFlight = nil
		}
		st.mu.Unlock()
		st.poke()
	}
}

// fail marks the stream failed with err and puts back what it had in
// flight, which may not have reached the peer.
func (st *sideStream) fail(err error) {
	st.cancel()
	st.mu.Lock()
	if !st.markFailed(err) {
		st.mu.Unlock()
		return
	}
	req := st.inFlight
	st.inFlight = nil
	st.mu.Unlock()
	st.giveBack(req)
}

// giveBack puts req (if any) back to wait for the stream's peer, once the
// stream failed; a peer that serves no stream is sent what waits by calls
// at once.
func (st *sideStream) giveBack(req *internalpb.SideRequest) {
	if req != nil {
		st.sc.requeue(st.peer, req)
	}
	st.mu.Lock()
	unimpl := st.unimplemented
	st.mu.Unlock()
	if unimpl {
		st.sc.call(st.peer)
	}
}

// Side serves a member's Side stream: each message is taken as a Closed
// call and its Kick calls would be, in order, and acknowledged.
func (s *internalServer) Side(stream internalpb.Node_SideServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if len(req.Closed) > 0 {
			s.m.Published(&internalpb.ClosedRequest{Ranges: req.Closed})
		}
		for _, k := range req.Kicks {
			s.m.Kick(shard.RangeID(k.Range), mvcc.Revision(k.Revision))
		}
		if err := stream.Send(&internalpb.SideResponse{Id: req.Id}); err != nil {
			return err
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
