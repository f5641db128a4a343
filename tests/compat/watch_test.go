package compat

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	flagWatchSeed   = flag.Int64("watch.seed", 0, "TestWatchDifferential: run only this seed, logging every step (with -v)")
	flagWatchSeqs   = flag.Int("watch.seqs", seqs(30, 100), "TestWatchDifferential: how many seeded scenarios (30, or 100 with -tags cairn_long)")
	flagWatchPairs  = flag.Int("watch.pairs", 2, "TestWatchDifferential: how many pairs of servers run the scenarios side by side (as parallel subtests, so -parallel bounds them too)")
	flagWatchStrict = flag.Bool("watch.strict", false, "TestWatchDifferential: also send and compare what etcd and Cairn are known to answer differently (see the known differences at TestWatchDifferential); expect failures")
)

// TestWatchDifferential runs seeded watch scenarios in lockstep against
// etcd and Cairn and compares every response of one raw gRPC Watch stream
// per scenario, watcher by watcher.
//
// A scenario (seed N, keys under "watchNNN/") interleaves writes — puts
// (some with a lease), deletes of a key, of ranges and of prefixes, txns
// putting and deleting several keys in one revision, lease revokes,
// compactions to a past revision — with stream requests: creates (start
// now, at a past revision of the scenario, at the compaction revision, at
// a compacted one, at a future one; one key, a prefix, a from-key range
// bounded by the prefix's end, an unbounded from-key range, an explicit
// range, an empty one; NOPUT/NODELETE filters; prev_kv; server-chosen and
// client-chosen watch ids, duplicates among them), cancels (of live,
// finished and unknown ids) and progress requests. At the end every
// watcher's responses — created, events (all fields, prev_kv included,
// one response per revision), canceled, compact_revision, cancel reason —
// must be the same on both servers. Revisions are printed relative to each
// server's revision at the scenario's start, so the servers need not be
// at the same revision; lease ids by grant order.
//
// The order of responses is only compared per watch id: etcd sends
// control responses (created, canceled) and events on two channels, and
// the events of one revision to different watchers in map order. What is
// compared is made deterministic by waiting, never by sleeping:
//
//   - A barrier watcher (id 1000) watches "watchNNN.barrier". To settle a
//     stream, the test puts that key and waits for the event: both servers
//     send a stream's events in revision order, so every event of an
//     earlier revision has been received by then. It also sends a create
//     request for an empty range (refused) and waits for every created
//     response, which orders the control responses before it (a create,
//     accepted or refused, always gets exactly one).
//   - A watcher created at a past revision first catches up, in one
//     response that etcd sends up to 100 ms later, with its revision at
//     that time. Before anything else is written, the settle then creates
//     a probe (id 1001) on the scenario's whole namespace at the current
//     revision: when its catch-up arrives, the watchers created before it
//     have been caught up too.
//   - Streams are settled before a cancel (etcd drops events still queued
//     for a watcher once its canceled response is out), before a
//     compaction (etcd reads prev_kv when it sends an event, which a
//     compaction can make impossible) and at the end.
//
// Known difference, kept out of the default run (-watch.strict puts it
// back), and kept on purpose: Cairn answers a progress request late rather
// than never, which is still never ahead of an event:
//
//   - etcd answers a progress request only if every watcher of the stream
//     is synced and none starts beyond the current revision, and else
//     drops it; Cairn defers it until the watchers are synced, and answers
//     at once when a future start is the next revision. The test sends
//     progress requests only when etcd answers them.
func TestWatchDifferential(t *testing.T) {
	runWatchPairs(t, *flagWatchSeqs, func(t *testing.T, _ []int64) (*server, *server, func(int64) []string) {
		etcd, cairn := startPair(t)
		return etcd, cairn, func(int64) []string { return nil }
	})
}

// runWatchPairs runs the watch scenarios of seeds 1 to n (or -watch.seed
// alone) and logs what they exercised. Most of a scenario's time is spent
// waiting for etcd to catch watchers up (it does every 100 ms), so the
// seeds are spread over a few pairs of servers running side by side; start
// gives a pair its servers for its seeds, and each seed's range splits
// (runWatchScenario).
func runWatchPairs(t *testing.T, n int, start func(t *testing.T, seeds []int64) (etcd, cairn *server, splits func(int64) []string)) {
	var seeds []int64
	for seed := int64(1); seed <= int64(n); seed++ {
		seeds = append(seeds, seed)
	}
	if *flagWatchSeed != 0 {
		seeds = []int64{*flagWatchSeed}
	}
	pairs := max(1, min(*flagWatchPairs, len(seeds)))
	var st watchStats
	t.Run("pairs", func(t *testing.T) {
		for p := range pairs {
			t.Run(fmt.Sprint(p), func(t *testing.T) {
				t.Parallel()
				var mine []int64
				for i := p; i < len(seeds); i += pairs {
					mine = append(mine, seeds[i])
				}
				etcd, cairn, splits := start(t, mine)
				failed := 0
				for _, seed := range mine {
					if !runWatchScenario(t, seed, []*server{etcd, cairn}, seed == *flagWatchSeed, &st, splits(seed)) {
						if failed++; failed >= 5 {
							t.Fatalf("stopping after %d failed scenarios", failed)
						}
					}
				}
			})
		}
	})
	t.Logf("%d scenarios on %d pairs of servers; %v", len(seeds), pairs, &st)
}

// Watch ids the test keeps for itself on every stream.
const (
	barrierWatchID = 1000
	probeWatchID   = 1001
)

// watchWait bounds every wait for a response.
const watchWait = 10 * time.Second

// watchStats counts what the scenarios exercised, so that a generator
// change that stops reaching a case shows in the log.
type watchStats struct {
	mu sync.Mutex // guards the counts when pairs add theirs

	steps, writes, compactions, creates, refused, compactCanceled, cancels, progress, events int
	across                                                                                   int // writes that reached several ranges of a sharded Cairn
}

func (s *watchStats) add(o *watchStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps += o.steps
	s.writes += o.writes
	s.across += o.across
	s.compactions += o.compactions
	s.creates += o.creates
	s.refused += o.refused
	s.compactCanceled += o.compactCanceled
	s.cancels += o.cancels
	s.progress += o.progress
	s.events += o.events
}

func (s *watchStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("steps=%d writes=%d (across ranges %d) compactions=%d creates=%d (refused %d, canceled by compaction %d) cancels=%d progress=%d events received=%d",
		s.steps, s.writes, s.across, s.compactions, s.creates, s.refused, s.compactCanceled, s.cancels, s.progress, s.events)
}

// watchSide is one server's half of a scenario: its stream, every response
// read from it, and its revisions.
type watchSide struct {
	s      *server
	prefix string // "watchNNN/"
	base   int64  // the server's revision when the scenario started
	rev    int64  // its revision after the last write of the scenario
	// compact is the server's compaction revision from the scenario's
	// last compaction (0: none yet).
	compact int64
	leases  []int64 // granted in this scenario, by grant order
	stream  pb.Watch_WatchClient
	// creates counts the create requests sent; ids holds, by create index,
	// the watch id the server answered with (-1: refused).
	creates int
	ids     []int64

	// revs maps revisions relative to the scenario's start (etcd's, which
	// are dense) to this server's and back, for a sharded Cairn whose
	// revisions are not dense; nil: relative revisions are offsets.
	revs *relRevs
	// loose leaves out of answers and the rendering what a sharded Cairn
	// answers differently by design: header revisions of events and of
	// writes that changed nothing, and how events are cut into responses.
	loose bool
	// looseCreated also leaves out the header revisions of created
	// responses: on a member of a sharded cluster they are what that
	// member's replicas know of their ranges' revisions, which follow the
	// leaders' closed revisions with a lag (DESIGN.md: a header carries
	// the revision of the ranges that answered).
	looseCreated bool

	mu      sync.Mutex // guards resps and recvErr
	resps   []*pb.WatchResponse
	recvErr error
	more    chan struct{} // size 1: signalled after each receive
	done    chan struct{} // closed when the receive loop ends
}

func (sd *watchSide) barrierKey() string { return strings.TrimSuffix(sd.prefix, "/") + ".barrier" }

// abs turns a revision relative to the scenario's start into this server's.
func (sd *watchSide) abs(rel int64) int64 {
	if sd.revs != nil {
		return sd.revs.abs(rel)
	}
	return sd.base + rel
}

// open starts the stream and its receive loop.
func (sd *watchSide) open(ctx context.Context) error {
	wc, err := pb.NewWatchClient(sd.s.cli.ActiveConnection()).Watch(ctx)
	if err != nil {
		return fmt.Errorf("open watch stream: %v", err)
	}
	sd.stream = wc
	sd.more = make(chan struct{}, 1)
	sd.done = make(chan struct{})
	go func() {
		defer close(sd.done)
		for {
			r, err := wc.Recv()
			sd.mu.Lock()
			if err != nil {
				sd.recvErr = err
			} else {
				sd.resps = append(sd.resps, r)
			}
			sd.mu.Unlock()
			select {
			case sd.more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return nil
}

// wait waits until cond holds on the responses received so far.
func (sd *watchSide) wait(what string, cond func(rs []*pb.WatchResponse) bool) error {
	deadline := time.NewTimer(watchWait)
	defer deadline.Stop()
	for {
		sd.mu.Lock()
		ok, err := cond(sd.resps), sd.recvErr
		sd.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stream failed while waiting for %s: %v", what, err)
		}
		select {
		case <-sd.more:
		case <-deadline.C:
			return fmt.Errorf("no %s after %v", what, watchWait)
		}
	}
}

func (sd *watchSide) responses() []*pb.WatchResponse {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return slices.Clone(sd.resps)
}

// create sends create requests and waits for their created responses,
// which also tells that the server has registered the watchers.
func (sd *watchSide) create(reqs ...*pb.WatchCreateRequest) error {
	for _, c := range reqs {
		if err := sd.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: c}}); err != nil {
			return fmt.Errorf("send create: %v", err)
		}
		sd.creates++
	}
	want := sd.creates
	var created []int64
	err := sd.wait(fmt.Sprintf("created response to create request #%d", want-1), func(rs []*pb.WatchResponse) bool {
		created = created[:0]
		for _, r := range rs {
			if r.Created {
				created = append(created, r.WatchId)
			}
		}
		return len(created) >= want
	})
	if err != nil {
		return err
	}
	sd.ids = created[:want:want]
	return nil
}

// ctrlBarrier sends a create for an empty range, which is refused, and
// waits for its answer: every control response the requests before it
// caused has then been sent.
func (sd *watchSide) ctrlBarrier() error {
	return sd.create(&pb.WatchCreateRequest{Key: []byte(sd.prefix + "z"), RangeEnd: []byte(sd.prefix + "y")})
}

func (sd *watchSide) cancelWatch(id int64) error {
	err := sd.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
	if err != nil {
		return fmt.Errorf("send cancel: %v", err)
	}
	return nil
}

func (sd *watchSide) put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (int64, error) {
	resp, err := sd.s.cli.Put(ctx, key, val, opts...)
	if err != nil {
		return 0, err
	}
	sd.rev = resp.Header.Revision
	return resp.Header.Revision, nil
}

// hasEvent reports whether watcher id has been sent an event at rev.
func hasEvent(id, rev int64) func(rs []*pb.WatchResponse) bool {
	return func(rs []*pb.WatchResponse) bool {
		for _, r := range rs {
			if r.WatchId == id && slices.ContainsFunc(r.Events, func(ev *mvccpb.Event) bool { return ev.Kv.ModRevision == rev }) {
				return true
			}
		}
		return false
	}
}

// settle makes everything the stream will send for the requests and
// writes so far arrive (see TestWatchDifferential). With probe, watchers
// created at a past revision are waited for too. The probe watches the
// scenario's whole namespace from the current revision, so its catch-up
// has an event; no write may come before it, because etcd's catch-up
// responses carry its revision at the time.
//
// REQUIRES: with probe, the current revision is one of the scenario's
// (the generator draws past starts only after a write).
func (sd *watchSide) settle(ctx context.Context, probe bool) (string, error) {
	if probe {
		ns := strings.TrimSuffix(sd.prefix, "/")
		err := sd.create(&pb.WatchCreateRequest{Key: []byte(ns), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(ns)), StartRevision: sd.rev, WatchId: probeWatchID})
		if err != nil {
			return "", err
		}
		if err := sd.wait("catch-up of the probe watcher", hasEvent(probeWatchID, sd.rev)); err != nil {
			return "", err
		}
		if err := sd.cancelWatch(probeWatchID); err != nil {
			return "", err
		}
		// The probe watches the barrier key too: it must be gone first.
		if err := sd.ctrlBarrier(); err != nil {
			return "", err
		}
	}
	rev, err := sd.put(ctx, sd.barrierKey(), "")
	if err != nil {
		return "", fmt.Errorf("put barrier key: %v", err)
	}
	if err := sd.ctrlBarrier(); err != nil {
		return "", err
	}
	if err := sd.wait(fmt.Sprintf("barrier event at revision %d", rev), hasEvent(barrierWatchID, rev)); err != nil {
		return "", err
	}
	return "rev=" + sd.writtenRev(rev), nil
}

// relRev prints a revision relative to the scenario's start; 0 (unset)
// stays 0.
func (sd *watchSide) relRev(rev int64) string {
	if rev == 0 {
		return "0"
	}
	if sd.revs != nil {
		rel, ok := sd.revs.rel(rev)
		if !ok {
			return fmt.Sprintf("before the scenario (%d)", rev)
		}
		return fmt.Sprintf("r%+d", rel)
	}
	return fmt.Sprintf("r%+d", rev-sd.base)
}

// writtenRev prints the revision of a write just done; with revs, it has
// no relative revision yet (the mapping records it after the step), and
// prints as the next one.
func (sd *watchSide) writtenRev(rev int64) string {
	if sd.revs != nil && len(sd.revs.revs) > 0 && rev > sd.revs.revs[len(sd.revs.revs)-1] {
		return fmt.Sprintf("r%+d", sd.revs.rels[len(sd.revs.rels)-1]+1)
	}
	return sd.relRev(rev)
}

// relRevs maps the revisions of a server whose revisions are not dense to
// etcd's relative ones by order: each write's revision to the relative
// revision etcd gave the same write; any revision between two writes to
// the earlier one (a sharded Cairn's revision after a write is at or above
// it, below the next).
type relRevs struct {
	rels, revs []int64 // ascending; rels[i] is revs[i]'s relative revision
}

func (m *relRevs) record(rel, rev int64) {
	if n := len(m.revs); n > 0 && (rev <= m.revs[n-1] || rel <= m.rels[n-1]) {
		return
	}
	m.rels = append(m.rels, rel)
	m.revs = append(m.revs, rev)
}

// abs returns the revision of the write etcd numbers rel (relative); a
// relative revision not written (yet) maps above everything so far.
func (m *relRevs) abs(rel int64) int64 {
	i, ok := slices.BinarySearch(m.rels, rel)
	if ok {
		return m.revs[i]
	}
	if i == 0 {
		return m.revs[0]
	}
	return m.revs[i-1] + 1
}

// rel returns the relative revision of the last write at or below rev.
func (m *relRevs) rel(rev int64) (int64, bool) {
	i, ok := slices.BinarySearch(m.revs, rev)
	if ok {
		return m.rels[i], true
	}
	if i == 0 {
		return 0, false
	}
	return m.rels[i-1], true
}

func (sd *watchSide) leaseName(id int64) string {
	if i := slices.Index(sd.leases, id); i >= 0 {
		return fmt.Sprintf("L%d", i)
	}
	return fmt.Sprintf("unknown(%d)", id)
}

// watchGen draws a scenario's steps. It knows the store only from etcd's
// answers (observe), so that both servers get the same requests, and only
// the scenario's own history, so that a seed replays alone.
type watchGen struct {
	r      *rand.Rand
	prefix string
	keys   []string // key names under the prefix ("" is the prefix itself)

	cur     int64 // etcd's revision, relative to the scenario's start
	compact int64 // the scenario's last compaction revision, relative (0: none)
	leases  int   // leases granted so far; the last one is used by puts

	watchers []genWatch // by create index
	dirty    bool       // writes since the last settle
	pending  []watchStep

	// splits, for a sharded Cairn, are its range boundaries in the
	// scenario's keys: writes reach several ranges (Cairn commits them
	// at one revision, and a watcher must get its events in one response),
	// but no put carries a lease and no lease is revoked (a put with a
	// lease in a txn across ranges is still refused, and a revoke deletes
	// in each range at its own revision), and no watch starts in the
	// future (a revision not yet written has no counterpart).
	splits []string
}

// keySpan is etcd's [key, end) (end empty: the key alone).
type keySpan struct{ key, end []byte }

// crosses reports whether a write over spans reaches two ranges (counted
// in watchStats).
func (g *watchGen) crosses(spans []keySpan) bool {
	count := func(below func(s string) bool) int {
		n := 0
		for _, s := range g.splits {
			if below(s) {
				n++
			}
		}
		return n
	}
	seen := map[int]bool{}
	for _, sp := range spans {
		k, e := string(sp.key), string(sp.end)
		lo := count(func(s string) bool { return s <= k })
		hi := lo
		switch {
		case e == "\x00":
			hi = len(g.splits)
		case e > k:
			hi = count(func(s string) bool { return s < e })
		}
		for i := lo; i <= hi; i++ {
			seen[i] = true
		}
	}
	return len(seen) > 1
}

// genWatch is what the generator knows of a create request from etcd's
// answers.
type genWatch struct {
	id        int64 // -1: refused
	start     int64 // relative start revision; 0 with now
	now       bool
	negative  bool // start revision -1
	live      bool
	compacted bool // canceled for compaction
	user      bool // drawn by a create step (not a barrier, probe or the barrier watcher)
}

// watchStep is one step of a scenario: run does it on one server and
// returns what must be the same on both.
type watchStep struct {
	desc string
	kind string // for the stats: write, compact, create, cancel, progress, settle
	run  func(ctx context.Context, sd *watchSide) (string, error)
	// After run on etcd, observe updates the generator.
	observe func(g *watchGen, etcd *watchSide)
	// spans are the keys a write step writes (for watchGen.crosses).
	spans []keySpan
}

func newWatchGen(seed int64, prefix string) *watchGen {
	return &watchGen{
		r:      rand.New(rand.NewPCG(uint64(seed), 0x77a7c4)),
		prefix: prefix,
		keys:   []string{"", "a", "a/1", "a/2", "b", "b/1", "b/2", "c"},
		leases: 1,
	}
}

func (g *watchGen) pct(p int) bool { return g.r.IntN(100) < p }

// short prints a key or range end of the scenario without "watchNNN".
func (g *watchGen) short(k string) string {
	base := strings.TrimSuffix(g.prefix, "/")
	switch {
	case k == clientv3.GetPrefixRangeEnd(g.prefix):
		return "<end of />"
	case k == base:
		return base
	case strings.HasPrefix(k, base):
		return strings.TrimPrefix(k, base)
	}
	return fmt.Sprintf("%q", k)
}

func (g *watchGen) key() string { return g.prefix + g.keys[g.r.IntN(len(g.keys))] }

// between returns a random number in [lo, hi]; lo if hi < lo.
func (g *watchGen) between(lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + g.r.Int64N(hi-lo+1)
}

func (g *watchGen) live() []int {
	var out []int
	for i, w := range g.watchers {
		if w.live {
			out = append(out, i)
		}
	}
	return out
}

// progressAnswered tells whether etcd answers a progress request now: all
// watchers synced (true after every settle) and none starting beyond the
// current revision.
func (g *watchGen) progressAnswered() bool {
	for _, w := range g.watchers {
		if w.live && !w.now && w.start > g.cur {
			return false
		}
	}
	return true
}

// next returns the next step: a forced one (a settle, clientv3's cancel of
// a watcher canceled for compaction), else a random one.
func (g *watchGen) next(step int) watchStep {
	if len(g.pending) > 0 {
		s := g.pending[0]
		g.pending = g.pending[1:]
		return s
	}
	if step == 0 || len(g.live()) == 0 && g.pct(70) {
		return g.createStep()
	}
	switch n := g.r.IntN(100); {
	case n < 48:
		return g.writeStep(step)
	case n < 55 && g.cur > g.compact:
		return g.compactStep()
	case n < 57 && g.splits == nil:
		return g.revokeStep()
	case n < 78 && len(g.live()) < 8:
		return g.createStep()
	case n < 90:
		return g.cancelStep()
	case n < 96 && (g.progressAnswered() || *flagWatchStrict):
		return g.progressStep()
	default:
		return g.writeStep(step)
	}
}

// writeStep draws a write.
func (g *watchGen) writeStep(step int) watchStep { return g.drawWrite(step) }

func (g *watchGen) wrote(step watchStep) watchStep {
	prev := step.observe
	step.observe = func(g *watchGen, etcd *watchSide) {
		g.cur = etcd.rev - etcd.base
		g.dirty = true
		if prev != nil {
			prev(g, etcd)
		}
	}
	return step
}

// drawWrite draws a put, a delete of a key, a range or a prefix, or a txn.
func (g *watchGen) drawWrite(step int) watchStep {
	short := g.short
	val := fmt.Sprintf("v%d", step)
	lease := g.pct(25) && g.splits == nil
	putOpts := func(sd *watchSide) []clientv3.OpOption {
		if lease {
			return []clientv3.OpOption{clientv3.WithLease(clientv3.LeaseID(sd.leases[len(sd.leases)-1]))}
		}
		return nil
	}
	leaseDesc := ""
	if lease {
		leaseDesc = fmt.Sprintf(" lease=L%d", g.leases-1)
	}
	switch n := g.r.IntN(100); {
	case n < 40:
		k := g.key()
		return g.wrote(watchStep{desc: fmt.Sprintf("put %s=%s%s", short(k), val, leaseDesc), kind: "write", spans: []keySpan{{key: []byte(k)}},
			run: func(ctx context.Context, sd *watchSide) (string, error) {
				rev, err := sd.put(ctx, k, val, putOpts(sd)...)
				if err != nil {
					return "error " + errText(err), nil
				}
				return "rev=" + sd.writtenRev(rev), nil
			}})
	case n < 55:
		k := g.key()
		return g.wrote(watchStep{desc: "delete " + short(k), kind: "write", run: deleteRun(k, ""), spans: []keySpan{{key: []byte(k)}}})
	case n < 70:
		var k, end string
		switch g.r.IntN(4) {
		case 0: // a prefix
			k = g.prefix + []string{"", "a", "a/", "b/", "c"}[g.r.IntN(5)]
			end = clientv3.GetPrefixRangeEnd(k)
		case 1: // from a key to the prefix's end
			k, end = g.key(), clientv3.GetPrefixRangeEnd(g.prefix)
		default: // [k, end), sometimes empty
			k, end = g.key(), g.key()
		}
		return g.wrote(watchStep{desc: fmt.Sprintf("delete [%s, %s)", short(k), short(end)), kind: "write", run: deleteRun(k, end),
			spans: []keySpan{{key: []byte(k), end: []byte(end)}}})
	default:
		return g.txnStep(step, short, lease, leaseDesc)
	}
}

func deleteRun(k, end string) func(ctx context.Context, sd *watchSide) (string, error) {
	return func(ctx context.Context, sd *watchSide) (string, error) {
		var opts []clientv3.OpOption
		if end != "" {
			opts = append(opts, clientv3.WithRange(end))
		}
		resp, err := sd.s.cli.Delete(ctx, k, opts...)
		if err != nil {
			return "error " + errText(err), nil
		}
		sd.rev = resp.Header.Revision
		if sd.loose && resp.Deleted == 0 {
			return "deleted=0", nil
		}
		return fmt.Sprintf("deleted=%d rev=%s", resp.Deleted, sd.writtenRev(resp.Header.Revision)), nil
	}
}

// txnStep draws a txn whose branches put and delete several distinct keys
// (and maybe a prefix none of the branch's puts is under) in one revision.
func (g *watchGen) txnStep(step int, short func(string) string, lease bool, leaseDesc string) watchStep {
	cmpKey, cmpVer := g.key(), g.r.Int64N(3)
	type txnOp struct {
		del      bool
		key, end string
	}
	branch := func(n int) []txnOp {
		var ops []txnOp
		used := map[string]bool{}
		if g.pct(25) {
			ops = append(ops, txnOp{del: true, key: g.prefix + "b/", end: clientv3.GetPrefixRangeEnd(g.prefix + "b/")})
			for _, k := range g.keys {
				if strings.HasPrefix(k, "b/") {
					used[g.prefix+k] = true
				}
			}
		}
		for len(ops) < n {
			k := g.key()
			if used[k] {
				continue
			}
			used[k] = true
			ops = append(ops, txnOp{del: g.pct(35), key: k})
		}
		return ops
	}
	then, els := branch(2+g.r.IntN(3)), branch(1+g.r.IntN(2))
	descOps := func(ops []txnOp) string {
		var s []string
		for i, o := range ops {
			switch {
			case o.end != "":
				s = append(s, fmt.Sprintf("delete [%s, %s)", short(o.key), short(o.end)))
			case o.del:
				s = append(s, "delete "+short(o.key))
			default:
				s = append(s, fmt.Sprintf("put %s=v%d.%d%s", short(o.key), step, i, leaseDesc))
			}
		}
		return strings.Join(s, ", ")
	}
	clientOps := func(sd *watchSide, ops []txnOp) []clientv3.Op {
		var out []clientv3.Op
		for i, o := range ops {
			switch {
			case o.end != "":
				out = append(out, clientv3.OpDelete(o.key, clientv3.WithRange(o.end)))
			case o.del:
				out = append(out, clientv3.OpDelete(o.key))
			default:
				var opts []clientv3.OpOption
				if lease {
					opts = append(opts, clientv3.WithLease(clientv3.LeaseID(sd.leases[len(sd.leases)-1])))
				}
				out = append(out, clientv3.OpPut(o.key, fmt.Sprintf("v%d.%d", step, i), opts...))
			}
		}
		return out
	}
	desc := fmt.Sprintf("txn if version(%s)=%d then {%s} else {%s}", short(cmpKey), cmpVer, descOps(then), descOps(els))
	spans := []keySpan{{key: []byte(cmpKey)}}
	for _, o := range append(slices.Clone(then), els...) {
		spans = append(spans, keySpan{key: []byte(o.key), end: []byte(o.end)})
	}
	return g.wrote(watchStep{desc: desc, kind: "write", spans: spans, run: func(ctx context.Context, sd *watchSide) (string, error) {
		resp, err := sd.s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(cmpKey), "=", cmpVer)).
			Then(clientOps(sd, then)...).Else(clientOps(sd, els)...).Commit()
		if err != nil {
			return "error " + errText(err), nil
		}
		sd.rev = resp.Header.Revision
		if sd.loose { // the txn may have changed nothing
			return fmt.Sprintf("succeeded=%v", resp.Succeeded), nil
		}
		return fmt.Sprintf("succeeded=%v rev=%s", resp.Succeeded, sd.relRev(resp.Header.Revision)), nil
	}})
}

// revokeStep revokes the lease puts use (deleting its keys in one
// revision) and grants the next one.
func (g *watchGen) revokeStep() watchStep {
	n := g.leases
	g.leases++
	return g.wrote(watchStep{desc: fmt.Sprintf("revoke L%d, grant L%d", n-1, n), kind: "write", run: func(ctx context.Context, sd *watchSide) (string, error) {
		resp, err := sd.s.cli.Revoke(ctx, clientv3.LeaseID(sd.leases[len(sd.leases)-1]))
		if err != nil {
			return "error " + errText(err), nil
		}
		sd.rev = max(sd.rev, resp.Header.Revision)
		gr, err := sd.s.cli.Grant(ctx, 600)
		if err != nil {
			return "", fmt.Errorf("grant: %v", err)
		}
		sd.leases = append(sd.leases, int64(gr.ID))
		return "rev=" + sd.relRev(resp.Header.Revision), nil
	}})
}

// settleStep settles the stream (see TestWatchDifferential).
func (g *watchGen) settleStep(probe bool) watchStep {
	desc := "settle"
	if probe {
		desc = "settle with probe"
	}
	return watchStep{desc: desc, kind: "settle",
		run: func(ctx context.Context, sd *watchSide) (string, error) { return sd.settle(ctx, probe) },
		observe: func(g *watchGen, etcd *watchSide) {
			g.cur = etcd.rev - etcd.base
			g.dirty = false
			// Watchers etcd canceled for compaction: clientv3 cancels them
			// on the server at once; so does the test.
			rs := etcd.responses()
			for i := range g.watchers {
				w := &g.watchers[i]
				if !w.live || !canceledForCompaction(rs, w.id) {
					continue
				}
				w.live, w.compacted = false, true
				g.pending = append(g.pending, g.cancelOf([]int{i}, "as clientv3 does after a compaction cancel"))
			}
		}}
}

func canceledForCompaction(rs []*pb.WatchResponse, id int64) bool {
	// A watch id is only reused after a cancel, so the last response
	// about it tells.
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].WatchId == id {
			return rs[i].CompactRevision != 0
		}
	}
	return false
}

func (g *watchGen) compactStep() watchStep {
	rel := g.between(g.compact+1, g.cur)
	physical := g.pct(30)
	s := watchStep{desc: fmt.Sprintf("compact r%+d physical=%v", rel, physical), kind: "compact",
		run: func(ctx context.Context, sd *watchSide) (string, error) {
			var opts []clientv3.CompactOption
			if physical {
				opts = append(opts, clientv3.WithCompactPhysical())
			}
			resp, err := sd.s.cli.Compact(ctx, sd.abs(rel), opts...)
			if err != nil {
				return "error " + errText(err), nil
			}
			sd.compact = sd.abs(rel)
			return "compacted rev=" + sd.relRev(resp.Header.Revision), nil
		},
		observe: func(g *watchGen, etcd *watchSide) { g.compact = etcd.compact - etcd.base }}
	return g.afterSettle(s)
}

// afterSettle queues s behind a settle if there were writes since the
// last one.
func (g *watchGen) afterSettle(s watchStep) watchStep {
	if !g.dirty {
		return s
	}
	g.pending = append([]watchStep{s}, g.pending...)
	return g.settleStep(false)
}

// createStep draws one to three create requests sent back to back.
func (g *watchGen) createStep() watchStep {
	short := g.short
	var reqs []func(sd *watchSide) *pb.WatchCreateRequest
	var descs []string
	var gws []genWatch
	probe := false
	for range 1 + g.r.IntN(3) {
		var id int64
		switch n := g.r.IntN(100); {
		case n < 50:
		case n < 86:
			id = 1 + g.r.Int64N(10) // sometimes one the server would choose next
		case n < 88:
			id = -5 // taken as it is, as any id but 0
		default: // a duplicate on purpose
			if l := g.live(); len(l) > 0 {
				id = g.watchers[l[g.r.IntN(len(l))]].id
			} else {
				id = barrierWatchID
			}
		}
		// Start revision.
		gw := genWatch{now: true}
		startDesc := "now"
		switch n := g.r.IntN(100); {
		case n < 40:
		case n < 60 && g.cur >= 1:
			gw.now, gw.start = false, g.between(max(1, g.compact), g.cur)
		case n < 67 && g.compact >= 1:
			gw.now, gw.start = false, g.compact // still readable
		case n < 85 && g.compact >= 2:
			gw.now, gw.start = false, g.between(max(1, g.compact-3), g.compact-1) // compacted
		case n < 90 && g.splits == nil:
			gw.now, gw.start = false, g.cur+1+g.r.Int64N(4) // future
		case n < 92:
			gw.negative = true // refused: compacted
		}
		if gw.negative {
			startDesc = "-1"
		} else if !gw.now {
			startDesc = fmt.Sprintf("r%+d", gw.start)
			if gw.start <= g.cur {
				probe = true
			}
		}
		// Range.
		var key, end string
		switch n := g.r.IntN(100); {
		case n < 35:
			key = g.key()
			if g.pct(10) {
				key = g.prefix + "never"
			}
			if g.pct(3) {
				key = "" // the key "\x00"
			}
		case n < 55:
			key = g.prefix + []string{"", "a", "a/", "b", "b/"}[g.r.IntN(5)]
			if g.pct(10) {
				key = strings.TrimSuffix(g.prefix, "/") // the barrier key too
			}
			end = clientv3.GetPrefixRangeEnd(key)
		case n < 67:
			key, end = g.key(), clientv3.GetPrefixRangeEnd(g.prefix)
		case n < 75:
			key, end = g.key(), "\x00"
		case n < 97:
			key, end = g.key(), g.key() // sometimes empty or inverted: refused
			if key > end && g.pct(60) {
				key, end = end, key
			}
		default:
			key, end = "", "\x00" // everything (past starts are the scenario's own revisions)
		}
		var filters []pb.WatchCreateRequest_FilterType
		if g.pct(20) {
			filters = append(filters, pb.WatchCreateRequest_NOPUT)
		}
		if g.pct(20) {
			filters = append(filters, pb.WatchCreateRequest_NODELETE)
		}
		prevKV := g.pct(50)

		d := fmt.Sprintf("id=%d key=%s", id, short(key))
		if end != "" {
			d += " end=" + short(end)
		}
		d += " start=" + startDesc
		for _, f := range filters {
			d += " " + f.String()
		}
		if prevKV {
			d += " prev_kv"
		}
		descs = append(descs, d)
		gws = append(gws, gw)
		reqs = append(reqs, func(sd *watchSide) *pb.WatchCreateRequest {
			c := &pb.WatchCreateRequest{Key: []byte(key), WatchId: id, Filters: filters, PrevKv: prevKV}
			if end != "" {
				c.RangeEnd = []byte(end)
			}
			switch {
			case gw.negative:
				c.StartRevision = -1
			case !gw.now:
				c.StartRevision = sd.abs(gw.start)
			}
			return c
		})
	}
	s := watchStep{desc: "create {" + strings.Join(descs, "}, {") + "}", kind: "create",
		run: func(ctx context.Context, sd *watchSide) (string, error) {
			var cs []*pb.WatchCreateRequest
			for _, r := range reqs {
				cs = append(cs, r(sd))
			}
			first := sd.creates
			if err := sd.create(cs...); err != nil {
				return "", err
			}
			return fmt.Sprintf("ids=%v", sd.ids[first:]), nil
		},
		observe: func(g *watchGen, etcd *watchSide) {
			// The barriers' and probes' create requests have indexes too.
			g.track(etcd, len(etcd.ids)-len(gws))
			for _, gw := range gws {
				gw.id = etcd.ids[len(g.watchers)]
				gw.live, gw.user = gw.id != -1, true
				g.watchers = append(g.watchers, gw)
			}
		}}
	if probe {
		g.pending = append(g.pending, g.settleStep(true))
	}
	return s
}

// cancelOf cancels the watchers of some create requests, each server its
// own ids for them, and waits until the server has done it.
func (g *watchGen) cancelOf(idx []int, why string) watchStep {
	desc := fmt.Sprintf("cancel the watches of create #%v", idx)
	if why != "" {
		desc += " (" + why + ")"
	}
	return watchStep{desc: desc, kind: "cancel",
		run: func(ctx context.Context, sd *watchSide) (string, error) {
			var ids []int64
			for _, i := range idx {
				ids = append(ids, sd.ids[i])
				if err := sd.cancelWatch(sd.ids[i]); err != nil {
					return "", err
				}
			}
			return fmt.Sprintf("ids=%v", ids), sd.ctrlBarrier()
		},
		observe: func(g *watchGen, etcd *watchSide) {
			// A cancel is by id: it ends whichever watcher has the id now.
			for _, i := range idx {
				for j := range g.watchers {
					if g.watchers[j].id == g.watchers[i].id {
						g.watchers[j].live = false
					}
				}
			}
		}}
}

// track gives the create requests etcd has answered up to n that no create
// step drew (barriers, probes) their place in g.watchers.
func (g *watchGen) track(etcd *watchSide, n int) {
	for len(g.watchers) < n {
		g.watchers = append(g.watchers, genWatch{id: etcd.ids[len(g.watchers)]})
	}
}

// cancelStep cancels live watchers, finished or refused ones, or an id
// nobody has.
func (g *watchGen) cancelStep() watchStep {
	var s watchStep
	switch n, l := g.r.IntN(100), g.live(); {
	case n < 75 && len(l) > 0:
		g.r.Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
		s = g.cancelOf(l[:1+g.r.IntN(min(2, len(l)))], "")
	case n < 90 && len(g.watchers) > 1:
		// A finished or refused one (the barrier watcher is #0).
		s = g.cancelOf([]int{1 + g.r.IntN(len(g.watchers)-1)}, "")
	default:
		id := int64(77)
		s = watchStep{desc: "cancel unknown id 77", kind: "cancel",
			run: func(ctx context.Context, sd *watchSide) (string, error) {
				if err := sd.cancelWatch(id); err != nil {
					return "", err
				}
				return "", sd.ctrlBarrier()
			},
		}
	}
	return g.afterSettle(s)
}

// progressStep sends a progress request and waits for its answer, when
// etcd answers it (-watch.strict sends it anyway and does not wait).
func (g *watchGen) progressStep() watchStep {
	answered := g.progressAnswered()
	desc := "progress request"
	if !answered {
		desc += " (etcd drops it)"
	}
	return watchStep{desc: desc, kind: "progress", run: func(ctx context.Context, sd *watchSide) (string, error) {
		isProgress := func(r *pb.WatchResponse) bool {
			return r.WatchId == -1 && !r.Created && !r.Canceled && len(r.Events) == 0
		}
		before := 0
		for _, r := range sd.responses() {
			if isProgress(r) {
				before++
			}
		}
		err := sd.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
		if err != nil {
			return "", fmt.Errorf("send progress request: %v", err)
		}
		if !answered {
			return "", nil
		}
		var got *pb.WatchResponse
		err = sd.wait("progress response", func(rs []*pb.WatchResponse) bool {
			n := 0
			for _, r := range rs {
				if isProgress(r) {
					if n++; n > before {
						got = r
						return true
					}
				}
			}
			return false
		})
		if err != nil {
			return "", err
		}
		return "progress rev=" + sd.relRev(got.Header.GetRevision()), nil
	}}
}

// runWatchScenario runs scenario seed on both servers and compares.
//
// With splits, servers[1] is a sharded Cairn whose ranges split the
// scenario's keys there (see watchGen.splits); its revisions are mapped to
// etcd's by order (relRevs).
func runWatchScenario(t *testing.T, seed int64, servers []*server, verbose bool, total *watchStats, splits []string) bool {
	t.Helper()
	st := &watchStats{}
	defer total.add(st)
	prefix := fmt.Sprintf("watch%03d/", seed)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sides := make([]*watchSide, len(servers))
	for i, s := range servers {
		sd := &watchSide{s: s, prefix: prefix, loose: splits != nil, looseCreated: splits != nil && servers[1].revs != nil}
		sd.base = currentRev(t, s)
		if i == 1 && splits != nil {
			sd.base = oracleRev(t, s)
			sd.revs = &relRevs{}
			sd.revs.record(0, sd.base)
		}
		sd.rev = sd.base
		gr, err := s.cli.Grant(ctx, 600)
		if err != nil {
			t.Fatalf("seed %d: %s: grant: %v", seed, s.name, err)
		}
		sd.leases = []int64{int64(gr.ID)}
		if err := sd.open(ctx); err != nil {
			t.Fatalf("seed %d: %s: %v", seed, s.name, err)
		}
		if err := sd.create(&pb.WatchCreateRequest{Key: []byte(sd.barrierKey()), WatchId: barrierWatchID}); err != nil {
			t.Fatalf("seed %d: %s: barrier watcher: %v", seed, s.name, err)
		}
		sides[i] = sd
	}
	defer func() {
		cancel()
		for _, sd := range sides {
			<-sd.done
			for _, l := range sd.leases {
				_, _ = sd.s.cli.Revoke(context.Background(), clientv3.LeaseID(l))
			}
		}
	}()

	g := newWatchGen(seed, prefix)
	g.splits = splits
	// The barrier watcher's create is #0.
	g.watchers = append(g.watchers, genWatch{id: barrierWatchID})
	var trace []string
	fail := func(format string, args ...any) bool {
		t.Errorf("seed %d (replay: go test -run TestWatchDifferential -watch.seed=%d -v): %s\nsteps (with %s's answers):\n  %s",
			seed, seed, fmt.Sprintf(format, args...), servers[0].name, strings.Join(trace, "\n  "))
		return false
	}
	do := func(step int, s watchStep) bool {
		answers := make([]string, len(sides))
		errs := make([]error, len(sides))
		etcdRev := sides[0].rev
		for _, sd := range sides {
			if sd.s.revs != nil {
				sd.s.revs.sync(t)
			}
		}
		var wg sync.WaitGroup
		for i, sd := range sides {
			wg.Go(func() { answers[i], errs[i] = s.run(ctx, sd) })
		}
		wg.Wait()
		trace = append(trace, fmt.Sprintf("%d: %s → %s", step, s.desc, answers[0]))
		if verbose {
			var b strings.Builder
			fmt.Fprintf(&b, "step %d: %s", step, s.desc)
			for i, sd := range sides {
				fmt.Fprintf(&b, "\n  %s: %s", sd.s.name, answers[i])
				if errs[i] != nil {
					fmt.Fprintf(&b, " (%v)", errs[i])
				}
			}
			t.Log(b.String())
		}
		if errs[0] != nil || errs[1] != nil {
			if errs[0] != nil && errs[1] == nil {
				t.Fatalf("seed %d: step %d: %s: %s: %v (a harness problem: etcd is the reference)", seed, step, s.desc, servers[0].name, errs[0])
			}
			return fail("step %d: %s:\n%s: %v\n%s: %v\n%s", step, s.desc, servers[0].name, errs[0], servers[1].name, errs[1], streamDiff(sides))
		}
		if answers[0] != answers[1] {
			return fail("step %d: %s: answers differ\n%s: %s\n%s: %s", step, s.desc, servers[0].name, answers[0], servers[1].name, answers[1])
		}
		if m := sides[1].revs; m != nil {
			rel := sides[0].rev - sides[0].base
			if sides[0].rev > etcdRev {
				m.record(rel, sides[1].rev)
			}
			sides[1].rev = m.abs(rel)
		}
		if s.observe != nil {
			s.observe(g, sides[0])
		}
		g.track(sides[0], len(sides[0].ids))
		st.steps++
		switch s.kind {
		case "write":
			st.writes++
			if g.splits != nil && g.crosses(s.spans) {
				st.across++
			}
		case "compact":
			st.compactions++
		case "cancel":
			st.cancels++
		case "progress":
			st.progress++
		}
		return true
	}

	n := 25 + g.r.IntN(16)
	step := 0
	for ; step < n || len(g.pending) > 0; step++ {
		if !do(step, g.next(step)) {
			return false
		}
	}
	// The end: settle, and a progress request when etcd answers one.
	if !do(step, g.settleStep(false)) {
		return false
	}
	for len(g.pending) > 0 {
		step++
		if !do(step, g.next(step)) {
			return false
		}
	}
	if g.progressAnswered() {
		step++
		if !do(step, g.progressStep()) {
			return false
		}
	}

	rendered := make([][]string, len(sides))
	for i, sd := range sides {
		rendered[i] = renderStream(sd)
	}
	for _, r := range sides[0].responses() {
		st.events += len(r.Events)
	}
	for _, w := range g.watchers {
		if w.user {
			st.creates++
			if w.id == -1 {
				st.refused++
			}
			if w.compacted {
				st.compactCanceled++
			}
		}
	}
	if verbose {
		for i, sd := range sides {
			t.Logf("%s's responses:\n%s", sd.s.name, strings.Join(rendered[i], "\n"))
		}
	}
	if d := cmp.Diff(rendered[0], rendered[1]); d != "" {
		return fail("watch responses differ (-%s +%s):\n%s", servers[0].name, servers[1].name, d)
	}
	return true
}

// streamDiff renders both streams as far as they got, for a failure that
// stopped a scenario early.
func streamDiff(sides []*watchSide) string {
	d := cmp.Diff(renderStream(sides[0]), renderStream(sides[1]))
	if d == "" {
		return "(the responses so far are the same)"
	}
	return fmt.Sprintf("responses so far (-%s +%s):\n%s", sides[0].s.name, sides[1].s.name, d)
}

// renderStream prints a stream's responses grouped by watch id, ids in
// order, each group in the order received; revisions relative to the
// scenario's start, keys without "watchNNN", leases by grant order.
func renderStream(sd *watchSide) []string {
	rs := sd.responses()
	var ids []int64
	byID := map[int64][]*pb.WatchResponse{}
	for _, r := range rs {
		if _, ok := byID[r.WatchId]; !ok {
			ids = append(ids, r.WatchId)
		}
		byID[r.WatchId] = append(byID[r.WatchId], r)
	}
	slices.Sort(ids)
	var out []string
	for _, id := range ids {
		out = append(out, fmt.Sprintf("watch %d:", id))
		var prev *pb.WatchResponse
		for _, r := range byID[id] {
			lines := renderResponse(sd, r)
			if sd.loose && len(r.Events) > 0 && prev != nil && len(prev.Events) > 0 {
				// Consecutive events as one block, but never one
				// revision's events in two responses.
				if prev.Events[len(prev.Events)-1].Kv.ModRevision == r.Events[0].Kv.ModRevision {
					out = append(out, "  (a revision's events split over two responses)")
				}
				lines = lines[1:]
			}
			out = append(out, lines...)
			prev = r
		}
	}
	return out
}

func renderResponse(sd *watchSide, r *pb.WatchResponse) []string {
	var b strings.Builder
	switch {
	case r.Created:
		b.WriteString("  created")
	case r.Canceled:
		b.WriteString("  canceled")
	case len(r.Events) == 0:
		b.WriteString("  progress")
	default:
		b.WriteString("  events")
	}
	if r.Created && r.Canceled {
		b.WriteString(" canceled")
	}
	if r.CompactRevision != 0 {
		fmt.Fprintf(&b, " compact_revision=%s", sd.relRev(r.CompactRevision))
	}
	if r.CancelReason != "" {
		fmt.Fprintf(&b, " reason=%q", r.CancelReason)
	}
	if r.Fragment {
		b.WriteString(" fragment")
	}
	if (!sd.loose || len(r.Events) == 0) && !(sd.looseCreated && r.Created) {
		fmt.Fprintf(&b, " rev=%s", sd.relRev(r.Header.GetRevision()))
	}
	out := []string{b.String()}
	events := r.Events
	if sd.loose && !*flagWatchStrict {
		events = byKeyWithinRevision(events)
	}
	for _, ev := range events {
		s := fmt.Sprintf("    %s %s", ev.Type, renderKV(sd, ev.Kv))
		if ev.PrevKv != nil {
			s += " prev={" + renderKV(sd, ev.PrevKv) + "}"
		}
		out = append(out, s)
	}
	return out
}

// byKeyWithinRevision returns events with each revision's events in key
// order, revisions left in the order received. A sharded Cairn (the loose
// comparison) delivers a transaction across ranges range by range, where
// etcd delivers a transaction's events in the order of its ops
// (TestShardedWatchDifferential; -watch.strict compares the order too).
func byKeyWithinRevision(events []*mvccpb.Event) []*mvccpb.Event {
	out := slices.Clone(events)
	for i := 0; i < len(out); {
		j := i + 1
		for j < len(out) && out[j].Kv.ModRevision == out[i].Kv.ModRevision {
			j++
		}
		slices.SortStableFunc(out[i:j], func(a, b *mvccpb.Event) int { return bytes.Compare(a.Kv.Key, b.Kv.Key) })
		i = j
	}
	return out
}

func renderKV(sd *watchSide, kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "<nil kv>"
	}
	s := strings.TrimPrefix(string(kv.Key), strings.TrimSuffix(sd.prefix, "/"))
	if len(kv.Value) > 0 {
		s += fmt.Sprintf("=%q", kv.Value)
	}
	if kv.CreateRevision != 0 {
		s += " create=" + sd.relRev(kv.CreateRevision)
	}
	s += " mod=" + sd.relRev(kv.ModRevision)
	if kv.Version != 0 {
		s += fmt.Sprintf(" ver=%d", kv.Version)
	}
	if kv.Lease != 0 {
		s += " lease=" + sd.leaseName(kv.Lease)
	}
	return s
}
