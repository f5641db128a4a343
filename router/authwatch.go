package router

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/shard/auth"
	"github.com/cairn-kv/cairn/watch"
)

// Auth on watches. A create is checked as etcd checks it
// (isWatchPermitted): READ over its keys for the stream's caller, refused
// as a created-and-canceled response with etcd's reason. Unlike etcd,
// which never looks again, a watch also stops at a revoke: before a batch
// of responses is sent, every watcher of the stream is checked again
// against the auth state if it changed since the last check, and one whose
// creator may no longer read its keys is canceled with etcd's "permission
// denied" as reason; none of its responses after the check is sent, so no
// event of a write made after the revoke reaches it (a write after the
// revoke applies after it, so its event is handed to the sender after the
// state it is checked against has the revoke). In sharded mode the event
// may come from another range than range 1, whose replica here can lag:
// the range applied the revoke's auth fence before the write, so a replica
// here fenced past the local auth state means the state is read again
// from range 1's leader (guard).

// permitted checks a watch create request as etcd does, returning the
// caller's user, or etcd's cancel reason if it is refused. A request
// with a negative start revision is not checked: the store refuses it
// first, as etcd's does.
func (ws *watchServer) permitted(ctx context.Context, req *pb.WatchCreateRequest) (string, string) {
	if req.StartRevision < 0 {
		return "", ""
	}
	key := req.Key
	if len(key) == 0 {
		key = []byte{0}
	}
	start := ws.s.authStart()
	c, err := ws.s.caller(ctx)
	if err == nil {
		err = c.st.Check(c.user, key, req.RangeEnd, authpb.Permission_READ)
	}
	if err != nil && ws.s.checkAgain(ctx, toGRPC(err), c.st, start) {
		// Refused by a cached state: once more against a fresh one
		// (authcache.go).
		if c, err = ws.s.caller(ctx); err == nil {
			err = c.st.Check(c.user, key, req.RangeEnd, authpb.Permission_READ)
		}
	}
	switch {
	case err == nil:
		return c.user, ""
	case errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken), errors.Is(err, auth.ErrInvalidAuthToken):
		return "", rpctypes.ErrGRPCInvalidAuthToken.Error()
	case errors.Is(err, auth.ErrAuthOldRevision):
		return "", rpctypes.ErrGRPCAuthOldRevision.Error()
	case errors.Is(err, auth.ErrUserEmpty):
		return "", rpctypes.ErrGRPCUserEmpty.Error()
	case auth.Sentinel(err) != nil:
		return "", rpctypes.ErrGRPCPermissionDenied.Error()
	}
	// The auth state could not be read: the create is refused with the
	// error as the reason rather than served unchecked.
	return "", toGRPC(err).Error()
}

// guard drops from rs the responses of watchers whose creator lost read
// permission on their keys, canceling them (their canceled response, with
// etcd's "permission denied", comes in a later batch), and rewrites the
// canceled responses of such watchers. Without an auth store it is rs.
func (ws *watchServer) guard(ctx context.Context, st watchStream, ww *streamWatchers, rs []*pb.WatchResponse) []*pb.WatchResponse {
	if ws.s.cfg.Auth == nil {
		return rs
	}
	// A state that cannot be read (the node is stopping) leaves the
	// watchers as last checked.
	state, err := ws.s.cfg.Auth.Auth(ctx, false)
	if err == nil && !ws.s.counting() && state.Revision() < ws.s.cfg.Ranges.authFence() {
		// Sharded mode: an event of a range other than range 1 may come
		// from a write applied after a revoke this member's replica of
		// range 1 has not applied yet — but not after the range here
		// applied the revoke's fence. A replica here fenced past the
		// state read is the sign: the state is read again from range
		// 1's leader, which has every change fenced.
		state, err = ws.s.cfg.Auth.Auth(ctx, true)
	}
	if err == nil {
		for _, id := range ww.recheck(state) {
			st.Cancel(watch.ID(id))
		}
	}
	return ww.filter(rs)
}

// recheck checks every watcher against state if it is not the state last
// checked against, and returns the watchers that lost their permission
// (marked revoked, forgotten as watchers).
func (w *streamWatchers) recheck(state *auth.State) []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if state == w.checked {
		return nil
	}
	w.checked = state
	var lost []int64
	for id, sp := range w.spans {
		key := sp.key
		if len(key) == 0 {
			key = []byte{0}
		}
		if state.Check(w.users[id], key, sp.end, authpb.Permission_READ) == nil {
			continue
		}
		if w.revoked == nil {
			w.revoked = map[int64]bool{}
		}
		w.revoked[id] = true
		lost = append(lost, id)
		delete(w.spans, id)
		delete(w.fragment, id)
		delete(w.users, id)
	}
	return lost
}

// filter returns rs without the responses of revoked watchers but their
// canceled one, which gets etcd's "permission denied" as reason.
func (w *streamWatchers) filter(rs []*pb.WatchResponse) []*pb.WatchResponse {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.revoked) == 0 {
		return rs
	}
	out := rs[:0]
	for _, r := range rs {
		switch {
		case w.revoked[r.WatchId] && r.Canceled:
			delete(w.revoked, r.WatchId)
			r.CancelReason = rpctypes.ErrGRPCPermissionDenied.Error()
			out = append(out, r)
		case w.revoked[r.WatchId]:
		default:
			out = append(out, r)
		}
	}
	return out
}
