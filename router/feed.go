package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Watches over ranges held on other members (issue 21, --range-replicas).
//
// A member that holds no replica of a range its clients watch keeps a
// mirror of the range: a watch.Hub (Mirrors) that the existing merging
// (watch.Merger, watchParts) serves clients from exactly as from a local
// range's hub. One mirror per range is shared by every watch of the member
// on it (coalesced), and fed by a *feed* from one member that holds the
// range: every event of the mirror's key span, with prev_kv, in revision
// order, and the revision up to which it has sent everything (its mark).
// All feeds between two members travel on one Feed stream, the caller's
// (feedConn), whatever the number of ranges and watches.
//
//	outsider: watch [a, z) → part on mirror(r2) ──Feed open r2 [m, z) from 0──▶ holder
//	holder:   merged stream on its replicas of [m, z)  ◀── batches (events, mark)
//	outsider: first batch = base b: mirror.Skip(b); then Notify(mark, events)
//
// A feed from 0 starts where the holder's replicas are (the first batch,
// alone, carries that base); watchers of the mirror that need revisions up
// to it read them from the holder's history (Events, remoteHistory), as a
// local hub's lagging watchers read its store — COMPACTED there cancels
// them as etcd does. A feed that ends (the holder stops, restarts, loses
// its replica, or the stream breaks) is opened again on a holder from the
// mirror's revision+1: no event is missed, and events at or below the
// mirror's revision are never notified again (no repeat). A feed whose
// start the new holder has compacted away re-bases the mirror (from 0):
// the watchers that lacked the compacted revisions are then canceled with
// the compacted revision, as etcd cancels them.
//
// The holder serves a feed from a merged stream (watch.NewMergedStream) of
// its own replicas over the feed's span, so a split of the range there
// moves the feed's watcher with the split (watch.Merger.Split), and the
// feed goes on carrying the span it was opened with: a mirror keeps its
// span across splits of its range; watches made after the split of a
// remote range reach the new range's own mirror. Marks rise with events
// and when the mirror asks (FeedKick, from the merged stream's Part.Kick):
// the holder then closes the revision soon and reports it once its
// stream has passed it.
//
// A mirror without watchers for MirrorsConfig.Idle closes its feed and is
// forgotten. Feeds carry whole spans: a narrow watch on a remote range
// costs its whole range's events between the two members (a span filter
// could be added; a widened filter would have to restart at the holder's
// sent revision, not the mirror's).

// feedQueueLimit bounds the responses a holder's feed stream queues per
// range before its watcher falls behind and catches up from the store.
const feedQueueLimit = 256

// feedBatchEvents bounds the events of one Events answer.
const feedBatchEvents = 1000

// defaultMirrorIdle is how long a mirror without watchers keeps its feed.
const defaultMirrorIdle = 30 * time.Second

// feedRetry is how long a mirror waits before it opens a feed again on a
// member that just failed it (another holder is tried at once).
const feedRetry = 200 * time.Millisecond

// historyTimeout bounds one Events call of a mirror's catch-up.
const historyTimeout = 10 * time.Second

// spanEtcd returns [key, end) in the descriptor's form (end empty: to the
// end) in etcd's (key empty: the smallest key; "\x00": to the end).
func spanEtcd(key, end []byte) (k, e []byte) {
	k, e = key, end
	if len(k) == 0 {
		k = []byte{0}
	}
	if len(e) == 0 {
		e = []byte{0}
	}
	return k, e
}

// inSpan reports whether k lies in [key, end) (end empty: to the end).
func inSpan(k, key, end []byte) bool {
	return bytes.Compare(k, key) >= 0 && (len(end) == 0 || bytes.Compare(k, end) < 0)
}

// covers reports whether [key, end) holds all of [k2, e2) (ends empty: to
// the end).
func covers(key, end, k2, e2 []byte) bool {
	if bytes.Compare(key, k2) > 0 {
		return false
	}
	if len(end) == 0 {
		return true
	}
	return len(e2) != 0 && bytes.Compare(e2, end) <= 0
}

// ---- the holder's side ----

// feedRange is one of this member's replicas as a feed reads it: its part
// of the feed's span (etcd's form) and its history.
type feedRange struct {
	part watch.Part
	hist watch.History
}

// feedSource is this member's replicas as feeds read them.
type feedSource interface {
	// feedRanges cuts [key, end) (end empty: to the end) into this
	// member's replicas, in key order; ok is false if a key of it lies in
	// no replica here.
	feedRanges(key, end []byte) (rs []feedRange, ok bool)
	// parts cuts etcd's [key, rangeEnd) into this member's replicas'
	// parts (watch.Splitter), leaving out keys held elsewhere.
	parts(key, rangeEnd []byte) []watch.Part
}

// cacheSource is a RangeCache's ranges with a replica here as a
// feedSource.
type cacheSource struct{ c *RangeCache }

// historian is a local replica that reads its history (shard.Range).
type historian interface {
	StateMachine() *shard.StateMachine
}

func (cs cacheSource) feedRanges(key, end []byte) ([]feedRange, bool) {
	ek, ee := spanEtcd(key, end)
	next, done := key, false // the first key not yet covered
	var out []feedRange
	for _, p := range cs.c.Spanning(ek, ee) {
		h, _ := cs.c.Local(p.ID).(historian)
		if p.Watches == nil || h == nil || bytes.Compare(p.Start, next) > 0 {
			return nil, false
		}
		sm := h.StateMachine()
		if sm == nil {
			return nil, false
		}
		var stop []byte
		if len(p.End) > 0 {
			stop = p.End
		}
		lo, hi, ok := clipRange(ek, ee, p.Start, stop)
		if !ok {
			continue
		}
		out = append(out, feedRange{part: watch.Part{Hub: p.Watches, Key: lo, RangeEnd: hi, Kick: p.Kick}, hist: sm})
		if len(p.End) == 0 {
			done = true
			break
		}
		next = p.End
	}
	if !done && (len(end) == 0 || bytes.Compare(next, end) < 0) {
		return nil, false
	}
	return out, len(out) > 0
}

func (cs cacheSource) parts(key, rangeEnd []byte) []watch.Part {
	var out []watch.Part
	for _, p := range cs.c.Spanning(key, rangeEnd) {
		if p.Watches == nil || cs.c.Remote(p.ID) {
			continue
		}
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

// feedServer serves the Feed and Events calls from this member's replicas.
type feedServer struct {
	src    feedSource
	merger *watch.Merger
	// streams counts the Feed streams served so far.
	streams atomic.Int64
}

// servedFeed is one feed of a Feed stream, on the holder.
type servedFeed struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	ms     *watch.Merged // nil until its watch is made
	// want is the highest revision a kick asked for before the watch was
	// made, asked of it once it is.
	want mvcc.Revision
}

// serve runs one Feed stream: a receive loop opens, kicks and cancels
// feeds (each a goroutine over a merged stream of this member's replicas);
// this goroutine sends their batches, as many in one response as are
// ready.
func (fs *feedServer) serve(stream internalpb.Node_FeedServer) error {
	fs.streams.Add(1)
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	out := make(chan *internalpb.FeedBatch, 64)
	recvErr := make(chan error, 1)
	go func() { recvErr <- fs.recv(ctx, stream, out) }()
	for {
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case b := <-out:
			resp := &internalpb.FeedResponse{Batches: []*internalpb.FeedBatch{b}}
		more:
			for len(resp.Batches) < 64 {
				select {
				case b := <-out:
					resp.Batches = append(resp.Batches, b)
				default:
					break more
				}
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

func (fs *feedServer) recv(ctx context.Context, stream internalpb.Node_FeedServer, out chan<- *internalpb.FeedBatch) error {
	feeds := map[uint64]*servedFeed{}
	defer func() {
		for _, f := range feeds {
			f.cancel()
		}
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		switch op := req.Op.(type) {
		case *internalpb.FeedRequest_Open:
			o := op.Open
			if f := feeds[o.Feed]; f != nil {
				f.cancel()
			}
			fctx, fcancel := context.WithCancel(ctx)
			f := &servedFeed{cancel: fcancel}
			feeds[o.Feed] = f
			go fs.run(fctx, o, f, out)
		case *internalpb.FeedRequest_Cancel:
			if f := feeds[op.Cancel]; f != nil {
				f.cancel()
				delete(feeds, op.Cancel)
			}
		case *internalpb.FeedRequest_Kick:
			if f := feeds[op.Kick.Feed]; f != nil {
				f.mu.Lock()
				if rev := mvcc.Revision(op.Kick.Revision); f.ms != nil {
					f.ms.RequestProgressAt(rev)
				} else {
					f.want = max(f.want, rev)
				}
				f.mu.Unlock()
			}
		}
	}
}

// run serves feed o until ctx ends: one watch over o's span on a merged
// stream of this member's replicas, each response passed on as a batch.
func (fs *feedServer) run(ctx context.Context, o *internalpb.FeedOpen, f *servedFeed, out chan<- *internalpb.FeedBatch) {
	emit := func(b *internalpb.FeedBatch) bool {
		b.Feed = o.Feed
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	end := func(reason internalpb.FeedEndReason, compact int64, msg string) {
		emit(&internalpb.FeedBatch{End: &internalpb.FeedEnd{Reason: reason, CompactRevision: compact, Message: msg}})
	}
	rs, ok := fs.src.feedRanges(o.Key, o.End)
	if !ok {
		end(internalpb.FeedEndReason_FEED_END_NO_RANGE, 0, fmt.Sprintf("cairn: no replica here of every key of range %d's span", o.Range))
		return
	}
	ms := fs.merger.NewMergedStream(feedQueueLimit, fs.src.parts)
	defer ms.Close()
	key, rend := spanEtcd(o.Key, o.End)
	req := &pb.WatchCreateRequest{Key: key, RangeEnd: rend, StartRevision: o.StartRevision, PrevKv: true}
	var r *pb.WatchResponse
	if o.StartRevision == 0 {
		// From where every replica of the span here has got to: below it
		// the caller reads the history (Events), which waits for it.
		base := rs[0].part.Hub.Rev()
		for _, fr := range rs[1:] {
			base = min(base, fr.part.Hub.Rev())
		}
		if r = ms.CreateAt(req, base); !r.Canceled && !emit(&internalpb.FeedBatch{Revision: int64(base)}) {
			return
		}
	} else {
		r = ms.Create(req)
	}
	if r.Canceled {
		end(internalpb.FeedEndReason_FEED_END_UNSPECIFIED, 0, r.CancelReason)
		return
	}
	f.mu.Lock()
	f.ms = ms
	if f.want > 0 {
		ms.RequestProgressAt(f.want)
	}
	f.mu.Unlock()
	for {
		resps, err := ms.Next(ctx)
		if err != nil {
			if !errors.Is(err, watch.ErrClosed) {
				return
			}
			end(internalpb.FeedEndReason_FEED_END_UNSPECIFIED, 0, "cairn: the member is stopping")
			return
		}
		var b *internalpb.FeedBatch
		for _, r := range resps {
			switch {
			case r.Canceled && r.CompactRevision != 0:
				end(internalpb.FeedEndReason_FEED_END_COMPACTED, r.CompactRevision, "")
				return
			case r.Created || r.Canceled:
				continue
			}
			if b == nil {
				b = &internalpb.FeedBatch{}
			}
			for _, ev := range r.Events {
				data, err := proto.Marshal(ev)
				if err != nil {
					end(internalpb.FeedEndReason_FEED_END_UNSPECIFIED, 0, err.Error())
					return
				}
				b.Events = append(b.Events, data)
			}
			b.Revision = max(b.Revision, r.Header.GetRevision())
		}
		if b != nil && !emit(b) {
			return
		}
	}
}

// events answers an Events call: the span's events in [from, to], once
// every replica here of the span has reached to.
func (fs *feedServer) events(req *internalpb.EventsRequest, stream internalpb.Node_EventsServer) error {
	rs, ok := fs.src.feedRanges(req.Key, req.End)
	if !ok {
		return stream.Send(&internalpb.EventsResponse{Error: &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_NO_RANGE,
			Message: fmt.Sprintf("cairn: no replica here of every key of range %d's span", req.Range)}})
	}
	ctx := stream.Context()
	from, to := mvcc.Revision(req.From), mvcc.Revision(req.To)
	for _, fr := range rs {
		ch := make(chan struct{}, 1)
		fr.part.Hub.WaitRev(to, ch)
		if fr.part.Kick != nil {
			fr.part.Kick(to)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var compact mvcc.Revision
	for _, fr := range rs {
		compact = max(compact, fr.hist.CompactRev())
	}
	compacted := func() error {
		return stream.Send(&internalpb.EventsResponse{Compacted: true, CompactRevision: int64(compact)})
	}
	if from < compact {
		return compacted()
	}
	byRev := map[int64][][]byte{}
	for _, fr := range rs {
		err := fr.hist.Events(from, to, func(rev mvcc.Revision, evs []*mvccpb.Event) bool {
			for _, ev := range evs {
				if !inSpan(ev.Kv.Key, req.Key, req.End) {
					continue
				}
				data, err := proto.Marshal(ev)
				if err != nil {
					continue
				}
				byRev[int64(rev)] = append(byRev[int64(rev)], data)
			}
			return true
		})
		if errors.Is(err, mvcc.ErrCompacted) {
			compact = max(compact, fr.hist.CompactRev())
			return compacted()
		}
		if err != nil {
			return stream.Send(&internalpb.EventsResponse{Error: encodeError(err)})
		}
	}
	revs := make([]int64, 0, len(byRev))
	for rev := range byRev {
		revs = append(revs, rev)
	}
	slices.Sort(revs)
	resp := &internalpb.EventsResponse{CompactRevision: int64(compact)}
	n := 0
	for _, rev := range revs {
		resp.Revisions = append(resp.Revisions, &internalpb.RevisionEvents{Revision: rev, Events: byRev[rev]})
		if n += len(byRev[rev]); n >= feedBatchEvents {
			if err := stream.Send(resp); err != nil {
				return err
			}
			resp, n = &internalpb.EventsResponse{CompactRevision: int64(compact)}, 0
		}
	}
	return stream.Send(resp)
}

// ---- the watching side ----

// MirrorsConfig wires a Mirrors.
type MirrorsConfig struct {
	// Ranges is the range map: its members holding a span are a feed's
	// sources, its forwarder dials them (unless Holders and Dial are set).
	Ranges *RangeCache
	// Holders lists the members, other than this one, holding a replica
	// of every range [key, end) meets (end empty: to the end), the most
	// likely to answer first; nil: Ranges'.
	Holders func(key, end []byte) []placement.NodeID
	// Dial returns a client of member's node-to-node service; nil:
	// Ranges' forwarder's.
	Dial func(member placement.NodeID) (internalpb.NodeClient, error)
	// Idle is how long a mirror without watchers keeps its feed; 0 means
	// 30 seconds.
	Idle time.Duration
	// Log receives feed failures; nil discards them.
	Log *slog.Logger
}

// Mirrors holds this member's mirror hubs of ranges held elsewhere, their
// feeds and the Feed streams (one per member) that carry them; see the
// top of this file. Part gives watchParts a range's mirror; one goroutine
// opens feeds for mirrors that have watchers and closes those idle for
// Idle; one pair per Feed stream sends and receives; one per mirror
// catches its lagging watchers up.
//
// Concurrency: mu guards every mirror's and connection's state and the
// maps; it is taken after a merged stream's lock (Part.Kick) and before a
// hub's (batches are notified under it), never the other way.
type Mirrors struct {
	cfg    MirrorsConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}

	mu       sync.Mutex
	mirrors  map[shard.RangeID]*mirror // the current mirror of each range
	retired  map[*mirror]struct{}      // replaced, kept until idle
	conns    map[placement.NodeID]*feedConn
	byFeed   map[uint64]*mirror
	nextFeed uint64
}

// mirror is one range's mirror hub and its feed.
type mirror struct {
	ms       *Mirrors
	id       shard.RangeID
	key, end []byte // the span it mirrors, end empty: to the end
	hub      *watch.Hub
	compact  atomic.Int64 // the holders' compacted revision, as last heard
	stop     chan struct{}

	// Guarded by ms.mu.
	touched   time.Time // last handed out by Part
	idleSince time.Time // when its last watcher left (zero: it has some)
	conn      *feedConn // its feed's stream (nil: none open)
	feed      uint64    // its feed's id (0: none open)
	src       placement.NodeID
	// fromZero: the open feed started from 0, its first batch is the
	// base (Skip); based: that batch has come.
	fromZero, based bool
	// want is the highest revision the mirror's watchers asked its feed
	// to report (kick): a merged stream asks once for each revision it
	// waits on, so a feed opened again is asked again.
	want mvcc.Revision
	// failed holds the members whose feeds failed lately, by when.
	failed  map[placement.NodeID]time.Time
	retryAt time.Time
}

// NewMirrors returns the mirrors of this member and starts their manager;
// Close stops it.
func NewMirrors(cfg MirrorsConfig) *Mirrors {
	if cfg.Idle <= 0 {
		cfg.Idle = defaultMirrorIdle
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Holders == nil {
		cfg.Holders = cfg.Ranges.feedHolders
	}
	if cfg.Dial == nil {
		cfg.Dial = cfg.Ranges.fwd.Client
	}
	ctx, cancel := context.WithCancel(context.Background())
	ms := &Mirrors{cfg: cfg, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1),
		mirrors: map[shard.RangeID]*mirror{}, retired: map[*mirror]struct{}{},
		conns: map[placement.NodeID]*feedConn{}, byFeed: map[uint64]*mirror{}}
	ms.wg.Add(1)
	go ms.run()
	return ms
}

// Close stops the feeds and the goroutines; hubs handed out get nothing
// more.
func (ms *Mirrors) Close() {
	ms.cancel()
	ms.wg.Wait()
}

// Part returns the mirror hub of range id, which spans [start, end) here,
// and its kick (watch.Part), making the mirror if there is none. Its feed
// opens once it has watchers.
func (ms *Mirrors) Part(id shard.RangeID, start, end []byte) (*watch.Hub, func(mvcc.Revision)) {
	ms.mu.Lock()
	m := ms.mirrors[id]
	if m != nil && !covers(m.key, m.end, start, end) {
		// The range is not what its mirror mirrors (it grew): a new
		// mirror for new watches, the old one kept until idle.
		ms.retired[m] = struct{}{}
		m = nil
	}
	if m == nil {
		m = &mirror{ms: ms, id: id, key: bytes.Clone(start), end: bytes.Clone(end), hub: watch.NewHub(0),
			stop: make(chan struct{}), failed: map[placement.NodeID]time.Time{}}
		ms.mirrors[id] = m
		ms.wg.Add(1)
		go m.pump()
	}
	m.touched = time.Now()
	ms.mu.Unlock()
	wake(ms.wake)
	return m.hub, m.kick
}

// Feeds returns how many feeds are open.
func (ms *Mirrors) Feeds() int {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return len(ms.byFeed)
}

// wake signals a channel of size 1 without blocking.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run opens and closes feeds as their mirrors gain and lose watchers.
func (ms *Mirrors) run() {
	defer ms.wg.Done()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ms.ctx.Done():
			ms.mu.Lock()
			for _, c := range ms.conns {
				c.cancel()
			}
			for _, m := range ms.all() {
				close(m.stop)
			}
			ms.mu.Unlock()
			return
		case <-ms.wake:
		case <-t.C:
		}
		t.Stop()
		t.Reset(ms.check(time.Now()))
	}
}

// all returns every mirror, current and retired.
// REQUIRES: ms.mu
func (ms *Mirrors) all() []*mirror {
	out := make([]*mirror, 0, len(ms.mirrors)+len(ms.retired))
	for _, m := range ms.mirrors {
		out = append(out, m)
	}
	for m := range ms.retired {
		out = append(out, m)
	}
	return out
}

// check opens the feeds of mirrors with watchers, closes those idle, and
// returns when to look again.
func (ms *Mirrors) check(now time.Time) time.Duration {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	next := time.Second
	for _, m := range ms.all() {
		if m.hub.Watchers() > 0 {
			m.idleSince = time.Time{}
			if m.feed == 0 {
				if wait := m.retryAt.Sub(now); wait > 0 {
					next = min(next, wait)
				} else if !ms.openLocked(m, now) {
					next = min(next, feedRetry)
				}
			}
			continue
		}
		if now.Sub(m.touched) < 100*time.Millisecond {
			// Just handed out: its watcher is being made.
			next = min(next, 10*time.Millisecond)
		}
		if m.idleSince.IsZero() {
			m.idleSince = now
		}
		since := m.idleSince
		if m.touched.After(since) {
			since = m.touched
		}
		if idle := now.Sub(since); idle >= ms.cfg.Idle {
			ms.dropLocked(m)
		} else {
			next = min(next, ms.cfg.Idle-idle)
		}
	}
	return next
}

// dropLocked closes m's feed and forgets m.
// REQUIRES: ms.mu
func (ms *Mirrors) dropLocked(m *mirror) {
	ms.closeFeedLocked(m)
	if ms.mirrors[m.id] == m {
		delete(ms.mirrors, m.id)
	}
	delete(ms.retired, m)
	close(m.stop)
}

// closeFeedLocked cancels m's open feed, if any.
// REQUIRES: ms.mu
func (ms *Mirrors) closeFeedLocked(m *mirror) {
	if m.feed == 0 {
		return
	}
	if m.conn != nil {
		m.conn.queueLocked(&internalpb.FeedRequest{Op: &internalpb.FeedRequest_Cancel{Cancel: m.feed}})
	}
	delete(ms.byFeed, m.feed)
	m.feed, m.conn = 0, nil
}

// openLocked opens m's feed on a holder of its span, preferring those
// that have not failed it lately; false if none is known.
// REQUIRES: ms.mu
func (ms *Mirrors) openLocked(m *mirror, now time.Time) bool {
	holders := ms.cfg.Holders(m.key, m.end)
	if len(holders) == 0 {
		return false
	}
	src := holders[0]
	for _, h := range holders {
		if at, ok := m.failed[h]; !ok || now.Sub(at) > 5*time.Second {
			src = h
			break
		}
	}
	c := ms.conns[src]
	if c == nil {
		c = ms.dialLocked(src)
	}
	ms.nextFeed++
	m.feed, m.conn, m.src = ms.nextFeed, c, src
	ms.byFeed[m.feed] = m
	start := m.hub.Rev() + 1
	m.fromZero = !m.based
	if m.fromZero {
		start = 0
	}
	c.queueLocked(&internalpb.FeedRequest{Op: &internalpb.FeedRequest_Open{Open: &internalpb.FeedOpen{Feed: m.feed,
		Range: uint64(m.id), Key: m.key, End: m.end, StartRevision: int64(start)}}})
	if m.want > m.hub.Rev() {
		c.kicks[m.feed] = m.want // sent after the open
	}
	return true
}

// failLocked ends m's feed after its holder failed it: it is opened
// again, on another holder if there is one.
// REQUIRES: ms.mu
func (ms *Mirrors) failLocked(m *mirror, why string) {
	ms.cfg.Log.Info("watch feed ended; opening it again", "range", m.id, "member", fmt.Sprintf("%x", uint64(m.src)),
		"revision", m.hub.Rev(), "reason", why)
	ms.closeFeedLocked(m)
	now := time.Now()
	if at, ok := m.failed[m.src]; ok && now.Sub(at) < 5*time.Second {
		m.retryAt = now.Add(feedRetry) // failing again soon: back off
	}
	m.failed[m.src] = now
	wake(ms.wake)
}

// kick asks m's feed to report revision rev soon (watch.Part.Kick: it
// never blocks).
func (m *mirror) kick(rev mvcc.Revision) {
	ms := m.ms
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m.want = max(m.want, rev)
	if m.feed == 0 || m.conn == nil {
		wake(ms.wake)
		return
	}
	c := m.conn
	if rev > c.kicks[m.feed] {
		c.kicks[m.feed] = rev
		wake(c.ready)
	}
}

// apply takes batch b of feed stream c.
func (ms *Mirrors) apply(c *feedConn, b *internalpb.FeedBatch) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.byFeed[b.Feed]
	if m == nil || m.conn != c {
		return // closed or replaced since
	}
	if e := b.End; e != nil {
		if e.Reason == internalpb.FeedEndReason_FEED_END_COMPACTED {
			// The holder has compacted away the revisions the mirror
			// lacks: re-based where the holder is, its watchers that
			// lacked them are canceled by the catch-up, as etcd does.
			m.compact.Store(max(m.compact.Load(), e.CompactRevision))
			m.based = false
		}
		ms.failLocked(m, fmt.Sprintf("%v %s", e.Reason, e.Message))
		return
	}
	rev := mvcc.Revision(b.Revision)
	if m.fromZero && !m.based {
		m.based = true
		m.hub.Skip(rev)
	}
	var evs []*mvccpb.Event
	have := m.hub.Rev()
	for _, data := range b.Events {
		ev := &mvccpb.Event{}
		if err := proto.Unmarshal(data, ev); err != nil {
			ms.failLocked(m, err.Error())
			return
		}
		if mvcc.Revision(ev.Kv.ModRevision) > have {
			evs = append(evs, ev)
		}
	}
	m.hub.Notify(rev, evs)
}

// connFailed ends feed stream c and the feeds it carried.
func (ms *Mirrors) connFailed(c *feedConn, err error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if c.dead {
		return
	}
	c.dead = true
	c.cancel()
	if ms.conns[c.member] == c {
		delete(ms.conns, c.member)
	}
	for _, m := range ms.all() {
		if m.conn == c {
			ms.failLocked(m, fmt.Sprintf("feed stream: %v", err))
		}
	}
}

// pump catches the mirror's lagging watchers up from the holders'
// history until the mirror is dropped.
func (m *mirror) pump() {
	defer m.ms.wg.Done()
	hist := remoteHistory{m}
	for {
		select {
		case <-m.stop:
			return
		case <-m.hub.Pending():
		}
		for {
			more, err := m.hub.Catchup(hist, 1000)
			if err != nil {
				m.ms.cfg.Log.Info("watch catch-up from another member failed", "range", m.id, "error", err)
				select {
				case <-m.stop:
					return
				case <-time.After(feedRetry):
				}
			}
			if !more {
				break
			}
		}
	}
}

// remoteHistory is a mirror's span's history as its holders read it
// (watch.History).
type remoteHistory struct{ m *mirror }

func (h remoteHistory) CompactRev() mvcc.Revision { return mvcc.Revision(h.m.compact.Load()) }

func (h remoteHistory) Events(from, to mvcc.Revision, fn func(rev mvcc.Revision, evs []*mvccpb.Event) bool) error {
	m, ms := h.m, h.m.ms
	ms.mu.Lock()
	members := []placement.NodeID{}
	if m.src != 0 {
		members = append(members, m.src)
	}
	ms.mu.Unlock()
	for _, hm := range ms.cfg.Holders(m.key, m.end) {
		if !slices.Contains(members, hm) {
			members = append(members, hm)
		}
	}
	err := fmt.Errorf("%w: range %d: no member holds it", shard.ErrNoLeader, m.id)
	for _, member := range members {
		var revs []*internalpb.RevisionEvents
		revs, err = h.read(member, from, to)
		if errors.Is(err, mvcc.ErrCompacted) {
			return err
		}
		if err != nil {
			continue
		}
		for _, re := range revs {
			evs := make([]*mvccpb.Event, 0, len(re.Events))
			for _, data := range re.Events {
				ev := &mvccpb.Event{}
				if err := proto.Unmarshal(data, ev); err != nil {
					return err
				}
				evs = append(evs, ev)
			}
			if !fn(mvcc.Revision(re.Revision), evs) {
				break
			}
		}
		return nil
	}
	return err
}

// read reads the span's events in [from, to] from member.
func (h remoteHistory) read(member placement.NodeID, from, to mvcc.Revision) ([]*internalpb.RevisionEvents, error) {
	m := h.m
	nc, err := m.ms.cfg.Dial(member)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(m.ms.ctx, historyTimeout)
	defer cancel()
	st, err := nc.Events(ctx, &internalpb.EventsRequest{Range: uint64(m.id), Key: m.key, End: m.end,
		From: int64(from), To: int64(to)})
	if err != nil {
		return nil, rpcError(err)
	}
	var out []*internalpb.RevisionEvents
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, rpcError(err)
		}
		if resp.Error != nil {
			return nil, decodeError(resp.Error, errNotLeader)
		}
		if c := resp.CompactRevision; c > m.compact.Load() {
			m.compact.Store(c)
		}
		if resp.Compacted {
			return nil, mvcc.ErrCompacted
		}
		out = append(out, resp.Revisions...)
	}
}

// feedConn is the Feed stream to one member: its requests queue here and
// one goroutine sends them (kicks coalesced per feed), another receives
// the batches.
type feedConn struct {
	ms     *Mirrors
	member placement.NodeID
	ctx    context.Context
	cancel context.CancelFunc
	ready  chan struct{} // size 1: queue or kicks has something
	// Guarded by ms.mu.
	queue []*internalpb.FeedRequest
	kicks map[uint64]mvcc.Revision
	dead  bool
}

// dialLocked opens the Feed stream to member.
// REQUIRES: ms.mu
func (ms *Mirrors) dialLocked(member placement.NodeID) *feedConn {
	ctx, cancel := context.WithCancel(ms.ctx)
	c := &feedConn{ms: ms, member: member, ctx: ctx, cancel: cancel, ready: make(chan struct{}, 1),
		kicks: map[uint64]mvcc.Revision{}}
	ms.conns[member] = c
	ms.wg.Add(1)
	go c.run()
	return c
}

// queueLocked queues r for the stream.
// REQUIRES: ms.mu
func (c *feedConn) queueLocked(r *internalpb.FeedRequest) {
	c.queue = append(c.queue, r)
	wake(c.ready)
}

func (c *feedConn) run() {
	defer c.ms.wg.Done()
	nc, err := c.ms.cfg.Dial(c.member)
	if err != nil {
		c.ms.connFailed(c, err)
		return
	}
	st, err := nc.Feed(c.ctx)
	if err != nil {
		c.ms.connFailed(c, err)
		return
	}
	c.ms.wg.Add(1)
	go func() {
		defer c.ms.wg.Done()
		for {
			resp, err := st.Recv()
			if err != nil {
				c.ms.connFailed(c, err)
				return
			}
			for _, b := range resp.Batches {
				c.ms.apply(c, b)
			}
		}
	}()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.ready:
		}
		c.ms.mu.Lock()
		reqs := c.queue
		c.queue = nil
		feeds := make([]uint64, 0, len(c.kicks))
		for f := range c.kicks {
			feeds = append(feeds, f)
		}
		sort.Slice(feeds, func(i, j int) bool { return feeds[i] < feeds[j] })
		for _, f := range feeds {
			reqs = append(reqs, &internalpb.FeedRequest{Op: &internalpb.FeedRequest_Kick{Kick: &internalpb.FeedKick{Feed: f,
				Revision: int64(c.kicks[f])}}})
		}
		clear(c.kicks)
		c.ms.mu.Unlock()
		for _, r := range reqs {
			if err := st.Send(r); err != nil {
				c.ms.connFailed(c, err)
				return
			}
		}
	}
}

// feedHolders lists the members other than this one that the map names
// holding every range [key, end) meets (end empty: to the end): the first
// range's leader hint first, then its voters, then its learners.
func (c *RangeCache) feedHolders(key, end []byte) []placement.NodeID {
	v := c.view.Load()
	ek, ee := spanEtcd(key, end)
	var out []placement.NodeID
	for i, p := range c.Spanning(ek, ee) {
		e := v.entries[p.ID]
		var members []placement.NodeID
		if i == 0 {
			if rc, _ := e.Shard.(*RangeClient); rc != nil {
				members = rc.holders()
			}
		}
		if d := e.descriptor(); d != nil {
			for _, r := range placement.Pairs(d) {
				if m := placement.NodeID(r.Member); m != c.fwd.self && !slices.Contains(members, m) {
					members = append(members, m)
				}
			}
		}
		if i == 0 {
			out = members
			continue
		}
		out = slices.DeleteFunc(out, func(m placement.NodeID) bool { return !slices.Contains(members, m) })
	}
	return out
}

// Sources returns, by range, the member feeding each mirror with an open
// feed (for tests and the range page).
func (ms *Mirrors) Sources() map[shard.RangeID]placement.NodeID {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	out := map[shard.RangeID]placement.NodeID{}
	for _, m := range ms.all() {
		if m.feed != 0 {
			out[m.id] = m.src
		}
	}
	return out
}
