package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Forwarded writes over one stream per member pair (the Forward call).
//
// A write landing on a member that does not lead its range used to travel
// one unary Write call each; under load two writes in three do, and each
// call costs its own HTTP/2 stream, headers and scheduling on both sides.
// The Forwarder keeps one long-lived Forward stream to each member it
// forwards to: every write goes out tagged with an id and the time its
// caller has left, several in one message when they queue up while the
// stream is busy; the leader's member proposes each as the Write call
// would, and answers them in any order, as many in one message as are
// ready.
//
//	member 1 (forwards)                         member 2 (leads)
//	write a ─┐                                  ┌─▶ Write(a) ─┐
//	write b ─┼─▶ {writes: [a#7 b#8]} ─────────▶ ┼─▶ Write(b) ─┼─▶ {answers: [b#8 a#7]}
//	caller of a gives up ──▶ {cancel: [7]} ───▶ a's context ends
//
// What a caller sees is what the Write call gave (writeVia):
//   - an answer: its Error decoded as the call's (decodeError);
//   - the caller's context ending: the call's own failure (a deadline past
//     is shard.ErrLeaderLost; a cancel sends the write's id to the leader,
//     whose context for it ends, as the call's would);
//   - the stream failing after the write went out on it: the leader's
//     member failed with the write maybe proposed (shard.ErrLeaderLost);
//     before it went out (the stream could not be opened): errUnreachable,
//     which the caller may retry, as a call that reached no peer;
//   - a member that answers Forward with Unimplemented (it predates it)
//     is sent Write calls instead, and asked again after noStreamFor.
//
// Concurrency: a stream's sender goroutine alone sends on it, its
// receiver goroutine alone receives; callers hand writes over under mu.
// Both goroutines end when the stream fails or the Forwarder closes
// (Close waits for them).

// noStreamFor is how long a member that answered Forward with
// Unimplemented is sent Write calls before it is asked again (it may have
// been upgraded meanwhile).
const noStreamFor = time.Minute

// forwardBatchBytes bounds the writes (or answers) one message of a
// Forward stream carries: a message holds at least one, and more only
// while they add up to no more than this, so that a batch stays within
// what the peer port accepts in a message (MaxRequestBytes and its
// overhead) whenever each of its parts would as a call of its own.
const forwardBatchBytes = 512 * 1024

// batchOf is how many of the first items go in one message: at least one
// (if any), then more while their sizes add up to forwardBatchBytes.
func batchOf[T any](items []T, size func(T) int) int {
	total := 0
	for i, it := range items {
		total += size(it)
		if i > 0 && total > forwardBatchBytes {
			return i
		}
	}
	return len(items)
}

// errNoStream is a write that the member could not take on a Forward
// stream because it does not serve one: nothing of it was done there.
var errNoStream = errors.New("router: member serves no forward stream")

// memberStreams are long-lived streams of one kind (Forward, Side), one
// per member, with the bookkeeping they share: a failed stream is opened
// again when next wanted, one whose member answered Unimplemented is not
// for noStreamFor, and one on a member's old connection is closed.
type memberStreams[S memberStream] struct {
	mu     sync.Mutex
	closed bool                   // guarded by mu
	by     map[placement.NodeID]S // guarded by mu
	wg     sync.WaitGroup         // the streams' goroutines
}

// memberStream is a stream of memberStreams: its streamBase, and run,
// which serves it until it fails or is cancelled.
type memberStream interface {
	base() *streamBase
	run()
}

// streamBase is what every member stream has.
type streamBase struct {
	conn   grpc.ClientConnInterface
	ctx    context.Context // ends with the stream
	cancel context.CancelFunc
	wake   chan struct{} // size 1: something queued to send

	mu sync.Mutex
	// failed is set once the stream failed, with unimplemented if the
	// member does not serve it (guarded by mu); at is when.
	failed        error
	unimplemented bool
	at            time.Time
	// answered: an answer came on the stream (guarded by mu).
	answered bool
}

func (b *streamBase) base() *streamBase { return b }

// markFailed records that the stream failed with err, unless it had
// already; it reports whether it had not. REQUIRES: b.mu.
func (b *streamBase) markFailed(err error) bool {
	if b.failed != nil {
		return false
	}
	b.failed, b.at = err, time.Now()
	b.unimplemented = status.Code(err) == codes.Unimplemented && !b.answered
	return true
}

// poke wakes the sender.
func (b *streamBase) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// stream returns the stream to member over conn, opening one (made by
// open, its goroutine run) if there is none or the last failed; false if
// the member serves none or the streams are closed.
func (ms *memberStreams[S]) stream(member placement.NodeID, conn grpc.ClientConnInterface, open func() S) (S, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var none S
	if ms.closed {
		return none, false
	}
	if st, ok := ms.by[member]; ok && sameConn(st.base().conn, conn) {
		b := st.base()
		b.mu.Lock()
		failed, unimpl, at := b.failed, b.unimplemented, b.at
		b.mu.Unlock()
		switch {
		case failed == nil:
			return st, true
		case unimpl && time.Since(at) < noStreamFor:
			return none, false
		}
	} else if ok {
		st.base().cancel() // the member's address changed: a stream on the new connection
	}
	st := open()
	b := st.base()
	b.conn, b.wake = conn, make(chan struct{}, 1)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if ms.by == nil {
		ms.by = map[placement.NodeID]S{}
	}
	ms.by[member] = st
	ms.wg.Add(1)
	go func() {
		defer ms.wg.Done()
		st.run()
	}()
	return st, true
}

// close ends every stream and waits for their goroutines.
func (ms *memberStreams[S]) close() {
	ms.mu.Lock()
	ms.closed = true
	for _, st := range ms.by {
		st.base().cancel()
	}
	ms.mu.Unlock()
	ms.wg.Wait()
}

// forwardStreams are a Forwarder's streams, by member.
type forwardStreams = memberStreams[*forwardStream]

// forwardStream is one Forward stream to a member.
type forwardStream struct {
	streamBase
	// next is the id of the next write (guarded by mu).
	next uint64
	// queue and cancels are to be sent, in this order (guarded by mu).
	queue   []*internalpb.ForwardedWrite
	cancels []uint64
	// calls are the writes not answered yet, by id (guarded by mu).
	calls map[uint64]*forwardCall
}

// forwardCall is a write waiting for its answer.
type forwardCall struct {
	sent     bool                   // put on the stream (guarded by the stream's mu)
	deadline time.Time              // the caller's (zero: none)
	done     chan forwardCallResult // size 1
}

type forwardCallResult struct {
	resp *internalpb.WriteResponse
	err  error
	// reached: the write may have reached the member (err is the stream's).
	reached bool
}

// sameConn reports whether a and b are the same connection (dialers
// return the one they cached; one whose type cannot be compared is taken
// for the same).
func sameConn(a, b grpc.ClientConnInterface) bool {
	if reflect.TypeOf(a) != reflect.TypeOf(b) {
		return false
	}
	if !reflect.TypeOf(a).Comparable() {
		return true
	}
	return a == b
}

func newForwardStream() *forwardStream {
	return &forwardStream{calls: map[uint64]*forwardCall{}}
}

// run opens the stream, sends what callers queue and starts the receiver;
// it returns once the stream failed or was cancelled.
func (st *forwardStream) run() {
	stream, err := internalpb.NewNodeClient(st.conn).Forward(st.ctx)
	if err != nil {
		st.fail(err, false)
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
	for {
		select {
		case <-st.ctx.Done():
			// Closed here (the forwarder closing, the member's address
			// changed): a write already sent may have been proposed, so
			// its outcome is unknown (shard.ErrLeaderLost), never one a
			// caller could send again; one not sent yet may be.
			st.fail(status.Error(codes.Unavailable, "cairn: the forward stream was closed"), true)
			return
		case <-st.wake:
		}
		st.mu.Lock()
		n := batchOf(st.queue, func(w *internalpb.ForwardedWrite) int { return proto.Size(w.Write) })
		req := &internalpb.ForwardRequest{Writes: st.queue[:n:n], Cancel: st.cancels}
		st.queue, st.cancels = st.queue[n:], nil
		if len(st.queue) > 0 {
			st.poke() // the rest in the next message
		}
		for _, w := range req.Writes {
			if c := st.calls[w.Id]; c != nil {
				c.sent = true
				if !c.deadline.IsZero() {
					// The time left as it goes out, as gRPC sends a
					// call's (at least a nanosecond: 0 is none).
					w.Timeout = max(int64(time.Until(c.deadline)), 1)
				}
			}
		}
		st.mu.Unlock()
		if len(req.Writes) == 0 && len(req.Cancel) == 0 {
			continue
		}
		if err := stream.Send(req); err != nil {
			// The stream is broken; Recv tells why.
			<-recvDone
			return
		}
	}
}

// receive hands the answers on the stream to their callers until it
// fails.
func (st *forwardStream) receive(stream internalpb.Node_ForwardClient) {
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			// The member ended the stream: as a connection it closed.
			err = status.Error(codes.Unavailable, "cairn: the member ended the forward stream")
		}
		if err != nil {
			st.fail(err, true)
			return
		}
		st.mu.Lock()
		st.answered = true
		for _, a := range resp.Answers {
			if c := st.calls[a.Id]; c != nil {
				delete(st.calls, a.Id)
				c.done <- forwardCallResult{resp: a.Write}
			}
		}
		st.mu.Unlock()
	}
}

// fail marks the stream failed with err and fails every write waiting on
// it: one sent on an open stream (open) with err, as reached; one not sent
// yet with err, as not; every one with errNoStream if the member does not
// serve the stream.
func (st *forwardStream) fail(err error, open bool) {
	st.cancel()
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.markFailed(err) {
		return
	}
	for id, c := range st.calls {
		r := forwardCallResult{err: err, reached: open && c.sent}
		if st.unimplemented {
			r = forwardCallResult{err: errNoStream}
		}
		c.done <- r
		delete(st.calls, id)
	}
	st.queue, st.cancels = nil, nil
}

// write sends w (its id set here) on the stream and waits for its answer
// or ctx's end, whichever comes first.
func (st *forwardStream) write(ctx context.Context, w *internalpb.WriteRequest) forwardCallResult {
	fw := &internalpb.ForwardedWrite{Write: w}
	c := &forwardCall{done: make(chan forwardCallResult, 1)}
	if d, ok := ctx.Deadline(); ok {
		if !time.Now().Before(d) {
			return forwardCallResult{err: status.FromContextError(context.DeadlineExceeded).Err()}
		}
		c.deadline = d
	}
	st.mu.Lock()
	if st.failed != nil {
		err, unimpl := st.failed, st.unimplemented
		st.mu.Unlock()
		if unimpl {
			return forwardCallResult{err: errNoStream}
		}
		return forwardCallResult{err: err}
	}
	st.next++
	fw.Id = st.next
	st.calls[fw.Id] = c
	st.queue = append(st.queue, fw)
	st.mu.Unlock()
	st.poke()
	select {
	case r := <-c.done:
		return r
	case <-ctx.Done():
	}
	st.mu.Lock()
	if _, waiting := st.calls[fw.Id]; waiting {
		delete(st.calls, fw.Id)
		if c.sent {
			st.cancels = append(st.cancels, fw.Id)
		} else {
			for i, q := range st.queue {
				if q.Id == fw.Id {
					st.queue = append(st.queue[:i], st.queue[i+1:]...)
					break
				}
			}
		}
	} else {
		// Answered (or failed) meanwhile: the answer stands, as a call's
		// that returned just before its context ended.
		st.mu.Unlock()
		return <-c.done
	}
	sent := c.sent
	st.mu.Unlock()
	if sent {
		st.poke()
	}
	// As the Write call fails when its context ends.
	return forwardCallResult{err: status.FromContextError(ctx.Err()).Err(), reached: sent}
}

// write proposes req to range id through member (nc is its client), which
// must lead it: on the Forward stream to member if it serves one, else by
// a Write call (writeVia).
func (f *Forwarder) write(ctx context.Context, member placement.NodeID, nc internalpb.NodeClient, id shard.RangeID, req *shardpb.Request) (*shardpb.Response, error) {
	if f.streams != nil {
		if conn, err := f.dial(member); err == nil {
			if st, ok := f.streams.stream(member, conn, newForwardStream); ok {
				r := st.write(ctx, &internalpb.WriteRequest{Range: uint64(id), Request: req})
				if !errors.Is(r.err, errNoStream) {
					return writeAnswer(ctx, id, r.resp, r.err, r.reached)
				}
			}
		}
	}
	return writeVia(ctx, nc, id, req)
}

// writeAnswer is what a forwarded write of range id comes to: resp, or
// the transport's failure err, where reached says whether the write may
// have reached the member (writeVia says what each means).
func writeAnswer(ctx context.Context, id shard.RangeID, resp *internalpb.WriteResponse, err error, reached bool) (*shardpb.Response, error) {
	if err != nil {
		switch err = rpcError(err); {
		case errors.Is(err, errUnreachable) && reached:
			return nil, fmt.Errorf("%w: range %d: the leader's member failed: %v", shard.ErrLeaderLost, id, err)
		case errors.Is(err, context.DeadlineExceeded) && deadlinePassed(ctx):
			return nil, fmt.Errorf("%w: range %d: the leader's member did not answer in time (%w)", shard.ErrLeaderLost, id, err)
		}
		return nil, err
	}
	if err := decodeError(resp.Error, errNotLeader); err != nil {
		return nil, err
	}
	return resp.Response, nil
}

// Forward serves a member's Forward stream: each write is proposed as the
// Write call proposes it (leading, answerBefore), under a context that
// ends at the caller's deadline as the write carries it, when the caller
// cancels it, or when the stream ends. The answers go back as they come,
// batched.
func (s *internalServer) Forward(stream internalpb.Node_ForwardServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var (
		mu      sync.Mutex
		running = map[uint64]context.CancelFunc{} // guarded by mu
		answers []*internalpb.ForwardedAnswer     // to send (guarded by mu)
		wake    = make(chan struct{}, 1)
		writes  sync.WaitGroup
	)
	sent := make(chan error, 1)
	go func() { sent <- s.sendAnswers(ctx, stream, &mu, &answers, wake) }()
	defer func() {
		cancel()
		writes.Wait()
		<-sent
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		mu.Lock()
		for _, id := range req.Cancel {
			if stop := running[id]; stop != nil {
				stop()
			}
		}
		for _, w := range req.Writes {
			wctx, stop := writeContext(ctx, w.Timeout)
			running[w.Id] = stop
			writes.Add(1)
			go func() {
				defer writes.Done()
				resp, _ := s.Write(wctx, w.Write) // refusals travel in resp.Error
				mu.Lock()
				stop()
				delete(running, w.Id)
				answers = append(answers, &internalpb.ForwardedAnswer{Id: w.Id, Write: resp})
				mu.Unlock()
				select {
				case wake <- struct{}{}:
				default:
				}
			}()
		}
		mu.Unlock()
	}
}

// writeContext is the context of a forwarded write whose caller had
// timeout left (0: no deadline), under the stream's ctx.
func writeContext(ctx context.Context, timeout int64) (context.Context, context.CancelFunc) {
	if timeout > 0 {
		return context.WithTimeout(ctx, time.Duration(timeout))
	}
	return context.WithCancel(ctx)
}

// sendAnswers sends the answers queued in *answers (guarded by mu) as they
// come, all queued at a time in one message, until ctx ends or a send
// fails.
func (s *internalServer) sendAnswers(ctx context.Context, stream internalpb.Node_ForwardServer, mu *sync.Mutex,
	answers *[]*internalpb.ForwardedAnswer, wake chan struct{}) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
		mu.Lock()
		n := batchOf(*answers, func(a *internalpb.ForwardedAnswer) int { return proto.Size(a.Write) })
		out := (*answers)[:n:n]
		*answers = (*answers)[n:]
		if len(*answers) > 0 {
			select { // the rest in the next message
			case wake <- struct{}{}:
			default:
			}
		}
		mu.Unlock()
		if len(out) == 0 {
			continue
		}
		if err := stream.Send(&internalpb.ForwardResponse{Answers: out}); err != nil {
			return err
		}
	}
}
