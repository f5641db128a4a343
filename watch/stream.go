package watch

import (
	"bytes"
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// Stream is one client's watch stream: its watchers and the queue of
// responses waiting to be sent, in the order they must be sent.
//
// Invariant: every response about a watcher is queued after its created
// response, and a progress response is queued only after every event up
// to its revision (for this stream's watchers) — the queue is the order.
// All fields are guarded by the hub's mu.
type Stream struct {
	h        *Hub
	limit    int
	queue    []*pb.WatchResponse
	ready    chan struct{} // size 1: signalled when queue becomes non-empty
	watchers map[ID]*watcher
	nextID   ID
	closed   bool
	// progressPending: a progress request waits for watchers to sync.
	progressPending bool
}

// NewStream opens a stream whose queue holds at most limit responses
// (beyond which its watchers fall behind and are caught up later).
func (h *Hub) NewStream(limit int) *Stream {
	return h.newStream(limit, make(chan struct{}, 1))
}

// newStream opens a stream that signals ready (of size 1) when it has
// something for its consumer; several streams may share one channel.
func (h *Hub) newStream(limit int, ready chan struct{}) *Stream {
	s := &Stream{h: h, limit: limit, ready: ready, watchers: map[ID]*watcher{}}
	h.mu.Lock()
	h.streams[s] = struct{}{}
	h.mu.Unlock()
	return s
}

// REQUIRES: h.mu
func (s *Stream) full() bool { return len(s.queue) >= s.limit }

// offer queues r unless the queue is full (control responses use push).
// REQUIRES: h.mu
func (s *Stream) offer(r *pb.WatchResponse) bool {
	if s.closed {
		return true
	}
	if s.full() {
		return false
	}
	s.push(r)
	return true
}

// push queues r even past the limit: created, cancelled and progress
// responses are few and must not be lost.
// REQUIRES: h.mu
func (s *Stream) push(r *pb.WatchResponse) {
	if s.closed {
		return
	}
	s.queue = append(s.queue, r)
	s.wakeup()
}

// wakeup signals the stream's consumer.
// REQUIRES: h.mu
func (s *Stream) wakeup() { wake(s.ready) }

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("watch: stream closed")

// Next waits for queued responses and returns them all, in order.
func (s *Stream) Next(ctx context.Context) ([]*pb.WatchResponse, error) {
	for {
		s.h.mu.Lock()
		if s.closed {
			s.h.mu.Unlock()
			return nil, ErrClosed
		}
		if len(s.queue) > 0 {
			out := s.takeLocked()
			s.h.mu.Unlock()
			return out, nil
		}
		s.h.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ready:
		}
	}
}

// takeLocked empties the queue and returns what it held; if the stream's
// watchers lag, catch-up is signalled, as there is room again.
// REQUIRES: h.mu
func (s *Stream) takeLocked() []*pb.WatchResponse {
	out := s.queue
	s.queue = nil
	for _, w := range s.watchers {
		if _, ok := s.h.unsynced[w]; ok {
			s.h.signal()
			break
		}
	}
	return out
}

// take returns, without waiting, the queued responses and whether the
// stream is closed (a direct Merged stream's Next).
func (s *Stream) take() (rs []*pb.WatchResponse, closed bool) {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	if s.closed {
		return nil, true
	}
	return s.takeLocked(), false
}

// drain returns, without waiting, the queued responses, the hub's
// revision, and whether the stream is closed; mark receives each watcher's
// mark: every event it matches at or below the mark is in the responses
// returned now or before.
func (s *Stream) drain(mark func(id ID, rev mvcc.Revision)) (rs []*pb.WatchResponse, rev mvcc.Revision, closed bool) {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return nil, h.rev, true
	}
	rs = s.takeLocked()
	for id, w := range s.watchers {
		switch {
		case h.synced.has(w):
			mark(id, max(w.next-1, h.rev))
		default:
			if _, ok := h.unsynced[w]; ok {
				mark(id, w.next-1)
			}
		}
	}
	return rs, h.rev, false
}

// Create registers a watcher as etcd's WatchCreateRequest asks and queues
// its created response (or a refusal: created and canceled, with etcd's
// reason). The response is returned too, for the caller's bookkeeping.
func (s *Stream) Create(req *pb.WatchCreateRequest) *pb.WatchResponse {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	refuse := func(reason string) *pb.WatchResponse {
		r := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(h.rev)}, WatchId: int64(InvalidID),
			Created: true, Canceled: true, CancelReason: reason}
		s.push(r)
		return r
	}
	key, end, reason := checkCreate(req)
	if reason != "" {
		return refuse(reason)
	}
	id := ID(req.WatchId)
	if id == 0 { // etcd's AutoWatchID
		for s.watchers[s.nextID] != nil {
			s.nextID++
		}
		id = s.nextID
		s.nextID++
	} else if s.watchers[id] != nil {
		return refuse(ErrDuplicateID.Error())
	}
	w := &watcher{id: id, key: key, end: end, next: mvcc.Revision(req.StartRevision), prevKV: req.PrevKv,
		progress: req.ProgressNotify, stream: s}
	for _, f := range req.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	if w.next == 0 {
		w.next = h.rev + 1
	}
	r := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(h.rev)}, WatchId: int64(id), Created: true}
	s.push(r)
	s.watchers[id] = w
	if w.next > h.rev {
		h.synced.add(w)
	} else {
		h.unsynced[w] = struct{}{}
		h.signal()
	}
	return r
}

// checkCreate returns the watched span of a create request (end nil: one
// key; empty: from key on), or etcd's reason to refuse it.
func checkCreate(req *pb.WatchCreateRequest) (key, end []byte, reason string) {
	key = req.Key
	if len(key) == 0 {
		key = []byte{0} // etcd: the smallest key
	}
	if req.StartRevision < 0 {
		return nil, nil, errCompacted
	}
	end = req.RangeEnd
	switch {
	case len(end) == 0:
		end = nil
	case len(end) == 1 && end[0] == 0:
		end = []byte{}
	}
	if len(end) != 0 && bytes.Compare(key, end) >= 0 {
		return nil, nil, ErrEmptyRange.Error()
	}
	return key, end, ""
}

// Refuse queues a refusal of a create request the router will not serve
// (created and canceled, with reason) and returns it.
func (s *Stream) Refuse(reason string) *pb.WatchResponse {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	r := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(s.h.rev)}, WatchId: int64(InvalidID),
		Created: true, Canceled: true, CancelReason: reason}
	s.push(r)
	return r
}

// Cancel removes a watcher and queues etcd's canceled response; unknown
// ids are ignored, as etcd ignores them.
func (s *Stream) Cancel(id ID) bool {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	w := s.watchers[id]
	if w == nil {
		return false
	}
	h.removeLocked(w)
	s.push(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(h.rev)}, WatchId: int64(id), Canceled: true})
	if s.progressPending {
		s.progressLocked() // the cancelled watcher may have held it back
	}
	return true
}

// RequestProgress queues a progress notification (watch id -1) at the
// hub's revision once every watcher of the stream is synced: at once if
// they are, else as soon as catch-up gets them there. A stream without
// watchers gets none, as in etcd.
func (s *Stream) RequestProgress() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	s.progressPending = true
	s.progressLocked()
}

// REQUIRES: h.mu
func (s *Stream) progressLocked() {
	h := s.h
	if len(s.watchers) == 0 {
		s.progressPending = false
		return
	}
	for _, w := range s.watchers {
		if !h.synced.has(w) || w.next > h.rev+1 {
			return
		}
	}
	s.progressPending = false
	s.push(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: int64(h.rev)}, WatchId: int64(InvalidID)})
}

// Close drops the stream and its watchers.
func (s *Stream) Close() {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range s.watchers {
		h.removeLocked(w)
	}
	s.closed = true
	s.queue = nil
	delete(h.streams, s)
	s.wakeup()
}

// Close closes every stream of the hub (their Next returns ErrClosed), for
// a node shutting down.
func (h *Hub) Close() {
	h.mu.Lock()
	streams := make([]*Stream, 0, len(h.streams))
	for s := range h.streams {
		streams = append(streams, s)
	}
	h.mu.Unlock()
	for _, s := range streams {
		s.Close()
	}
}
