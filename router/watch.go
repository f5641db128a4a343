package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard/auth"
	"github.com/cairn-kv/cairn/watch"
)

// watchQueueLimit bounds the responses queued for one stream; beyond it
// the stream's watchers fall behind and catch up from the store.
const watchQueueLimit = 128

// watchServer is etcd's Watch service over the ranges' watch hubs.
type watchServer struct {
	pb.UnimplementedWatchServer
	s *Server
}

// Watch serves one bidirectional stream: a receive loop applies create,
// cancel and progress requests to the stream; this goroutine sends what
// the stream queues, in order, fragmenting large responses of watchers
// that asked for it. A stream that requires a leader is refused while
// range 1 has none, and cancelled once a range its watchers reach has had
// none for a while (monitorLeader).
func (ws *watchServer) Watch(gs pb.Watch_WatchServer) error {
	ctx, cancelCause := context.WithCancelCause(gs.Context())
	cancel := func() { cancelCause(nil) }
	defer cancel()
	ww := &streamWatchers{}
	if requireLeader(ctx) {
		if _, _, ok := ws.s.cfg.Shard.Leader(); !ok {
			return rpctypes.ErrGRPCNoLeader
		}
		go ws.monitorLeader(ctx, cancelCause, ww)
	}
	st := ws.s.newWatchStream()
	defer st.Close()

	recvErr := make(chan error, 1)
	go func() {
		err := ws.recvLoop(gs, st, ww)
		if err == nil {
			// The client closed its side (io.EOF): as etcd's, the
			// stream goes on sending until the client goes away. The
			// JSON gateway closes it after a request body is read.
			return
		}
		recvErr <- err
		cancel()
	}()
	for {
		rs, err := st.Next(ctx)
		if err != nil {
			if errors.Is(context.Cause(ctx), rpctypes.ErrGRPCNoLeader) {
				return rpctypes.ErrGRPCNoLeader
			}
			select {
			case rerr := <-recvErr:
				return rerr
			default:
				return nil
			}
		}
		rs = ws.guard(ctx, st, ww, rs)
		for _, r := range rs {
			ws.s.fill(r.Header)
			frag := ww.fragments(r.WatchId) && len(r.Events) > 0
			if frag {
				err = sendFragments(r, ws.s.cfg.MaxRequestBytes, gs.Send)
			} else {
				err = gs.Send(r)
			}
			if err != nil {
				return err
			}
		}
	}
}

// streamWatchers is what a stream remembers of its watchers: which asked
// for fragmented responses, and the keys each watches, which decide the
// ranges whose leader the stream needs. The receive loop adds watchers and
// removes those the client cancels; the send loop and monitorLeader read
// them. A watcher the store cancels (compacted) stays until the stream
// ends: its range's leader is then still asked for, which errs towards
// etcd, whose monitor cancels every such stream while it has no leader.
type streamWatchers struct {
	mu       sync.Mutex
	fragment map[int64]bool    // guarded by mu
	spans    map[int64]keySpan // guarded by mu: each watcher's keys
	// users is who created each watcher, with auth enabled (authwatch.go);
	// revoked the watchers canceled for a lost permission, until their
	// canceled response is sent; checked the auth state every watcher was
	// last checked against. Guarded by mu.
	users   map[int64]string
	revoked map[int64]bool
	checked *auth.State
}

// created records watcher id over req's keys.
func (w *streamWatchers) created(id int64, req *pb.WatchCreateRequest) { w.createdBy(id, req, "") }

// createdBy records watcher id over req's keys, made by user.
func (w *streamWatchers) createdBy(id int64, req *pb.WatchCreateRequest, user string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.spans == nil {
		w.spans, w.fragment, w.users = map[int64]keySpan{}, map[int64]bool{}, map[int64]string{}
	}
	w.spans[id] = keySpan{key: req.Key, end: req.RangeEnd}
	w.users[id] = user
	if req.Fragment {
		w.fragment[id] = true
	}
}

// canceled forgets watcher id.
func (w *streamWatchers) canceled(id int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.spans, id)
	delete(w.fragment, id)
	delete(w.users, id)
}

// fragments reports whether watcher id asked for fragmented responses.
func (w *streamWatchers) fragments(id int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fragment[id]
}

// reach reports whether a watcher's keys overlap one of the ranges in l.
func (w *streamWatchers) reach(l *Leaderless) bool {
	if len(l.Ranges) == 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sp := range w.spans {
		for _, r := range l.Ranges {
			var end []byte
			if len(r.End) > 0 {
				end = r.End
			}
			if _, _, ok := clipRange(sp.key, sp.end, r.Start, end); ok {
				return true
			}
		}
	}
	return false
}

// noLeaderChecks is how many consecutive leader checks must find no leader
// before a stream that asked for one is failed: one election's worth of
// leaderless time is normal, as in etcd (which also waits for three).
const noLeaderChecks = 3

// monitorLeader fails the stream with etcd's "no leader" once, for
// noLeaderChecks checks in a row, range 1 or a range one of its watchers
// reaches has had no leader (clientv3's WithRequireLeader streams expect
// that, to move to another member). The ranges without a leader come from
// the leader watch's set, so a check costs no raft call per range.
func (ws *watchServer) monitorLeader(ctx context.Context, cancel context.CancelCauseFunc, ww *streamWatchers) {
	ws.s.cancelWhenLeaderless(ctx, cancel, func() bool {
		_, _, ok := ws.s.cfg.Shard.Leader()
		return ok && !ww.reach(ws.s.leaderless())
	})
}

func (ws *watchServer) recvLoop(gs pb.Watch_WatchServer, st watchStream, ww *streamWatchers) error {
	for {
		req, err := gs.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch u := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			if u.CreateRequest == nil {
				continue
			}
			user, reason := ws.permitted(gs.Context(), u.CreateRequest)
			if reason != "" {
				st.Refuse(reason)
				continue
			}
			if r := ws.create(gs.Context(), st, u.CreateRequest); !r.Canceled {
				ww.createdBy(r.WatchId, u.CreateRequest, user)
			}
		case *pb.WatchRequest_CancelRequest:
			if u.CancelRequest != nil && st.Cancel(watch.ID(u.CancelRequest.WatchId)) {
				ww.canceled(u.CancelRequest.WatchId)
			}
		case *pb.WatchRequest_ProgressRequest:
			if u.ProgressRequest != nil {
				ws.requestProgress(gs.Context(), st)
			}
		}
	}
}

// create starts a watch. Once the key space has split, a watch from now
// starts above the cluster's current revision, closed first in every range
// it reaches (DESIGN.md "Reads"): "now" is then at or above every write
// that completed before the request, in any range, and no write at or below
// it is still to come where the watch looks. A counting range's watch
// starts at its own revision, as etcd's does; so does a watch whose ranges
// cannot close now in time (no leader), as before.
func (ws *watchServer) create(ctx context.Context, st watchStream, req *pb.WatchCreateRequest) *pb.WatchResponse {
	// Watches over ranges without a replica here are served from mirror
	// hubs (feed.go); without Mirrors they are refused, canceled at once.
	if ws.s.cfg.Mirrors == nil {
		for _, p := range ws.s.cfg.Ranges.Spanning(req.Key, req.RangeEnd) {
			if p.Watches == nil {
				return st.Refuse(fmt.Sprintf("cairn: range %d has no replica on this member; watch it through a member holding it", p.ID))
			}
		}
	}
	if req.StartRevision != 0 || ws.s.counting() {
		return st.Create(req)
	}
	now, err := ws.s.closedNow(ctx, req.Key, req.RangeEnd)
	if err != nil {
		return st.Create(req)
	}
	return st.CreateAt(req, now)
}

// requestProgress asks for a progress notification: once the key space has
// split, at the cluster's current revision, so that it reports at least
// every write completed before the request (a Kubernetes watch cache waits
// for one to know it is fresh).
func (ws *watchServer) requestProgress(ctx context.Context, st watchStream) {
	if ws.s.counting() {
		st.RequestProgress()
		return
	}
	now, err := ws.s.now(ctx)
	if err != nil {
		now = 0
	}
	st.RequestProgressAt(now)
}

// closedNow returns the cluster's current revision once every range that
// etcd's [key, end) reaches has closed it.
func (s *Server) closedNow(ctx context.Context, key, end []byte) (mvcc.Revision, error) {
	now, err := s.now(ctx)
	if err != nil {
		return 0, err
	}
	parts := s.spanning(key, end)
	if len(parts) == 0 {
		parts = s.spanning(key, nil)
	}
	ctx, cancel := context.WithTimeout(ctx, closeNowTimeout)
	defer cancel()
	errs := make(chan error, len(parts))
	for _, p := range parts {
		go func() { errs <- p.Shard.WaitClosed(ctx, now) }()
	}
	for range parts {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return now, err
}

// closeNowTimeout bounds how long a watch's create waits for its ranges to
// close the current revision (an election's worth).
const closeNowTimeout = 5 * time.Second

// watchStream is one client stream's watchers: a merged stream over the
// ranges' hubs (direct over one range: single-group mode, or a sharded
// cluster before its first split).
type watchStream interface {
	Create(req *pb.WatchCreateRequest) *pb.WatchResponse
	CreateAt(req *pb.WatchCreateRequest, now mvcc.Revision) *pb.WatchResponse
	RequestProgressAt(now mvcc.Revision)
	Cancel(id watch.ID) bool
	Refuse(reason string) *pb.WatchResponse
	RequestProgress()
	Next(ctx context.Context) ([]*pb.WatchResponse, error)
	Close()
}

func (s *Server) newWatchStream() watchStream {
	return s.cfg.Merger.NewStream(watchQueueLimit, s.watchParts)
}

// watchParts cuts watched keys into the ranges' parts (watch.Splitter): a
// range held elsewhere by its mirror hub here (Mirrors.Part).
func (s *Server) watchParts(key, rangeEnd []byte) []watch.Part {
	var out []watch.Part
	for _, p := range s.cfg.Ranges.Spanning(key, rangeEnd) {
		hub, kick := p.Watches, p.Kick
		if hub == nil {
			if s.cfg.Mirrors == nil {
				continue // held elsewhere: create refuses such watches
			}
			hub, kick = s.cfg.Mirrors.Part(p.ID, p.Start, p.End)
		}
		var stop []byte
		if len(p.End) > 0 {
			stop = p.End
		}
		if lo, hi, ok := clipRange(key, rangeEnd, p.Start, stop); ok {
			out = append(out, watch.Part{Hub: hub, Key: lo, RangeEnd: hi, Kick: kick})
		}
	}
	return out
}

// requireLeader reports whether the client asked (clientv3
// WithRequireLeader) to fail without a leader.
func requireLeader(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	vs := md.Get(rpctypes.MetadataRequireLeaderKey)
	return len(vs) > 0 && vs[0] == rpctypes.MetadataHasLeader
}

// sendFragments splits a response over limit bytes into responses of
// whole events, all but the last marked fragment, as etcd does.
func sendFragments(r *pb.WatchResponse, limit int, send func(*pb.WatchResponse) error) error {
	if proto.Size(r) < limit || len(r.Events) < 2 {
		return send(r)
	}
	evs := r.Events
	for len(evs) > 0 {
		part := proto.Clone(r).(*pb.WatchResponse)
		part.Events = nil
		n := 0
		for n < len(evs) {
			part.Events = evs[:n+1]
			if n > 0 && proto.Size(part) >= limit {
				part.Events = evs[:n]
				break
			}
			n++
		}
		evs = evs[len(part.Events):]
		part.Fragment = len(evs) > 0
		if err := send(part); err != nil {
			return err
		}
	}
	return nil
}

// RunProgress sends the progress notifications of m's watches over ranges
// every interval (etcd's --watch-progress-notify-interval) until stop is
// closed; the caller runs it on a goroutine it owns.
func RunProgress(m *watch.Merger, every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			m.ProgressTick()
		}
	}
}
