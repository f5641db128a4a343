package router

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

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
// that asked for it.
func (ws *watchServer) Watch(gs pb.Watch_WatchServer) error {
	ctx, cancelCause := context.WithCancelCause(gs.Context())
	cancel := func() { cancelCause(nil) }
	defer cancel()
	if requireLeader(ctx) {
		if _, _, ok := ws.s.cfg.Shard.Leader(); !ok {
			return rpctypes.ErrGRPCNoLeader
		}
		go ws.monitorLeader(ctx, cancelCause)
	}
	st := ws.s.newWatchStream()
	defer st.Close()

	var mu sync.Mutex
	fragment := map[int64]bool{} // guarded by mu
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- ws.recvLoop(gs, st, func(id int64, on bool) {
			mu.Lock()
			defer mu.Unlock()
			if on {
				fragment[id] = true
			} else {
				delete(fragment, id)
			}
		})
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
		for _, r := range rs {
			ws.s.fill(r.Header)
			mu.Lock()
			frag := fragment[r.WatchId] && len(r.Events) > 0
			mu.Unlock()
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

// noLeaderChecks is how many consecutive leader checks must find no leader
// before a stream that asked for one is failed: one election's worth of
// leaderless time is normal, as in etcd (which also waits for three).
const noLeaderChecks = 3

// monitorLeader fails the stream with etcd's "no leader" once the shard has
// had no leader for noLeaderChecks checks in a row (clientv3's
// WithRequireLeader streams expect that, to move to another member).
func (ws *watchServer) monitorLeader(ctx context.Context, cancel context.CancelCauseFunc) {
	every := ws.s.cfg.LeaderCheckInterval
	if every <= 0 {
		every = DefaultLeaderCheckInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	misses := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, _, ok := ws.s.cfg.Shard.Leader(); ok {
			misses = 0
			continue
		}
		if misses++; misses >= noLeaderChecks {
			cancel(rpctypes.ErrGRPCNoLeader)
			return
		}
	}
}

func (ws *watchServer) recvLoop(gs pb.Watch_WatchServer, st watchStream, setFragment func(int64, bool)) error {
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
			r := st.Create(u.CreateRequest)
			if !r.Canceled && u.CreateRequest.Fragment {
				setFragment(r.WatchId, true)
			}
		case *pb.WatchRequest_CancelRequest:
			if u.CancelRequest != nil && st.Cancel(watch.ID(u.CancelRequest.WatchId)) {
				setFragment(u.CancelRequest.WatchId, false)
			}
		case *pb.WatchRequest_ProgressRequest:
			if u.ProgressRequest != nil {
				st.RequestProgress()
			}
		}
	}
}

// watchStream is one client stream's watchers: a merged stream over the
// ranges' hubs (direct over one range: single-group mode, or a sharded
// cluster before its first split).
type watchStream interface {
	Create(req *pb.WatchCreateRequest) *pb.WatchResponse
	Cancel(id watch.ID) bool
	RequestProgress()
	Next(ctx context.Context) ([]*pb.WatchResponse, error)
	Close()
}

func (s *Server) newWatchStream() watchStream {
	return s.cfg.Merger.NewStream(watchQueueLimit, s.watchParts)
}

// watchParts cuts watched keys into the ranges' parts (watch.Splitter).
func (s *Server) watchParts(key, rangeEnd []byte) []watch.Part {
	var out []watch.Part
	for _, p := range s.cfg.Ranges.Spanning(key, rangeEnd) {
		var stop []byte
		if len(p.End) > 0 {
			stop = p.End
		}
		if lo, hi, ok := clipRange(key, rangeEnd, p.Start, stop); ok {
			out = append(out, watch.Part{Hub: p.Watches, Key: lo, RangeEnd: hi, Kick: p.Kick})
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
