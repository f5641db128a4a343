package compat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

// revSplits cut the sharded Cairn of TestRevisionPromise into three ranges:
// "rv/a/..." (and everything below it), "rv/b/...", and "rv/c/..." onwards,
// which no scenario ever writes to (the idle range).
var revSplits = []string{"rv/b", "rv/c"}

// idleTime is how long scenario "repeated reads" keeps reading with no
// write: several of the 50–100 ms periods at which idle ranges publish their
// closed revisions, so that anything that moves revisions without a write
// has had its chance. It is an input of the scenario, not an assertion
// about timing.
const idleTime = 300 * time.Millisecond

// TestRevisionPromise checks what DESIGN.md "Reads" promises about header
// revisions, the scenarios Kubernetes' storage tests exercise (issue 20),
// against etcd and Cairn on the same requests:
//
//   - a linearizable read in one range after a write in another reports
//     that write's revision;
//   - linearizable reads with no write between report the same revision,
//     within a range, across ranges and in an idle range, while time passes;
//   - a compaction at the current revision reports it and moves nothing;
//   - a read at the revision of a write made in another range is served,
//     one above every reported revision is ErrFutureRev;
//   - a watch from "now" in one range after writes in another delivers
//     only later events.
//
// Every server must hold those relations (etcd included, which checks the
// test). Where revisions are dense — single-group and the default mode of
// one range — every revision must also be etcd's; with several ranges the
// keys, values, events and errors must be etcd's and the revisions hold by
// the relations alone.
func TestRevisionPromise(t *testing.T) {
	if *flagSelf {
		runRevisionScenarios(t, startEtcd(t, "etcd"), startEtcd(t, "etcd2"), true)
		return
	}
	t.Run("single-group", func(t *testing.T) {
		runRevisionScenarios(t, startEtcd(t, "etcd"), startCairn(t, "cairn"), true)
	})
	t.Run("one-range", func(t *testing.T) {
		runRevisionScenarios(t, startEtcd(t, "etcd"),
			startCairnWith(t, "cairn", func(c *node.Config) { c.Sharded = true }), true)
	})
	t.Run("three-ranges", func(t *testing.T) {
		forShardedSizes(t, func(t *testing.T, members int) {
			runRevisionScenarios(t, startEtcd(t, "etcd"),
				startShardedCairnN(t, "cairn-sharded", revSplits, members), false)
		})
	})
}

// revScenarios run in this order on the same two servers; each uses its
// own keys ("rv/<range>/<n>/..."), and the compaction comes before the
// scenarios that read at past revisions only at revisions above it.
var revScenarios = []struct {
	name string
	run  func(p *revProbe)
}{
	{"write-then-read-elsewhere", scenarioWriteThenRead},
	{"repeated-reads", scenarioRepeatedReads},
	{"compact-current", scenarioCompactCurrent},
	{"failed-compare", scenarioFailedCompare},
	{"list-at-write-elsewhere", scenarioListAtWrite},
	{"watch-from-now", scenarioWatchFromNow},
}

// runRevisionScenarios runs every scenario on etcd and then on other, as
// a subtest each, and compares what they noted (revisions only if dense).
func runRevisionScenarios(t *testing.T, etcd, other *server, dense bool) {
	sides := []*revSide{{s: etcd, dense: true}, {s: other, dense: dense}}
	for _, sc := range revScenarios {
		t.Run(sc.name, func(t *testing.T) {
			var notes [2][]revNote
			for i, sd := range sides {
				p := &revProbe{t: t, revSide: sd}
				sc.run(p)
				notes[i] = p.notes
			}
			want, got := notesText(notes[0], dense), notesText(notes[1], dense)
			if want != got {
				t.Errorf("%s and %s differ (revisions compared: %v)\n--- %s:\n%s\n--- %s:\n%s",
					etcd.name, other.name, dense, etcd.name, want, other.name, got)
			}
		})
	}
}

// revSide is one server under test and what it has reported so far.
type revSide struct {
	s     *server
	dense bool  // revisions count writes exactly as etcd's do
	seen  int64 // the highest header revision any response reported
}

// revProbe sends one scenario's requests to one server, checks the
// relations of the promise as it goes and notes what is compared with etcd.
type revProbe struct {
	t *testing.T
	*revSide
	notes []revNote
}

// revNote is one observation; rev marks one that names a revision, compared
// only where revisions are dense.
type revNote struct {
	text string
	rev  bool
}

func notesText(notes []revNote, withRevs bool) string {
	var b strings.Builder
	for _, n := range notes {
		if n.rev && !withRevs {
			continue
		}
		b.WriteString(n.text)
		b.WriteByte('\n')
	}
	return b.String()
}

func (p *revProbe) note(format string, args ...any) {
	p.notes = append(p.notes, revNote{text: fmt.Sprintf(format, args...)})
}

func (p *revProbe) noteRev(format string, args ...any) {
	p.notes = append(p.notes, revNote{text: fmt.Sprintf(format, args...), rev: true})
}

// errorf reports a broken relation, naming the server.
func (p *revProbe) errorf(format string, args ...any) {
	p.t.Helper()
	p.t.Errorf("%s: "+format, append([]any{p.s.name}, args...)...)
}

func (p *revProbe) fatalf(format string, args ...any) {
	p.t.Helper()
	p.t.Fatalf("%s: "+format, append([]any{p.s.name}, args...)...)
}

func (p *revProbe) saw(rev int64) { p.seen = max(p.seen, rev) }

// put writes key and returns the write's revision.
func (p *revProbe) put(key string) int64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := p.s.cli.Put(ctx, key, "v:"+key)
	if err != nil {
		p.fatalf("put %s: %v", key, err)
	}
	p.saw(resp.Header.Revision)
	p.noteRev("put %s: revision %d", key, resp.Header.Revision)
	return resp.Header.Revision
}

// read is one linearizable read a scenario sends.
type read struct {
	what string // what it reads, for messages
	key  string
	opts []clientv3.OpOption
}

// The reads scenario n sends to range b, to the idle range c, across the
// three ranges and over the whole key space.
func readOtherRange(n int) read { return read{"a key in range b", fmt.Sprintf("rv/b/%d/k", n), nil} }
func readIdleRange(n int) read {
	return read{"a key in the idle range c", fmt.Sprintf("rv/c/%d/k", n), nil}
}

var (
	readAcross     = read{"prefix rv/ (three ranges)", "rv/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}}
	readEverything = read{"the whole key space", "\x00", []clientv3.OpOption{clientv3.WithFromKey(), clientv3.WithCountOnly()}}
)

// get sends r (at revision rev, 0 for the newest) and returns the answer.
func (p *revProbe) get(r read, rev int64) (*clientv3.GetResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := p.s.cli.Get(ctx, r.key, append(slices.Clone(r.opts), clientv3.WithRev(rev))...)
	if err == nil {
		p.saw(resp.Header.Revision)
	}
	return resp, err
}

// mustGet is get for a read that must succeed.
func (p *revProbe) mustGet(r read, rev int64) *clientv3.GetResponse {
	p.t.Helper()
	resp, err := p.get(r, rev)
	if err != nil {
		p.fatalf("get %s at revision %d: %v", r.what, rev, err)
	}
	return resp
}

// headerIs reads r at the newest revision and checks that its header
// reports want, the revision of the last write.
func (p *revProbe) headerIs(r read, want int64, after string) {
	p.t.Helper()
	got := p.mustGet(r, 0).Header.Revision
	p.noteRev("get %s %s: header %d", r.what, after, got)
	if got != want {
		p.errorf("get %s %s: header revision %d, want %d (the last write's)", r.what, after, got, want)
	}
}

// noteKVs notes key-values: keys and values always, revisions only as
// a revision note.
func (p *revProbe) noteKVs(what string, kvs []*mvccpb.KeyValue) {
	var keys, revs []string
	for _, kv := range kvs {
		keys = append(keys, fmt.Sprintf("%s=%s", kv.Key, kv.Value))
		revs = append(revs, fmt.Sprintf("%s@%d/%d", kv.Key, kv.CreateRevision, kv.ModRevision))
	}
	p.note("%s: [%s]", what, strings.Join(keys, " "))
	p.noteRev("%s: create/mod [%s]", what, strings.Join(revs, " "))
}

// Scenario 1: a linearizable read that starts after a write completed
// reports that write's revision, in any range (Kubernetes'
// TestGetCurrentResourceVersion: "expected the global etcd RV").
func scenarioWriteThenRead(p *revProbe) {
	wa := p.put("rv/a/1/k")
	after := "after a write in range a"
	p.headerIs(readOtherRange(1), wa, after)
	p.headerIs(readIdleRange(1), wa, after)
	p.headerIs(readAcross, wa, after)
	p.headerIs(read{"the key just written (range a)", "rv/a/1/k", nil}, wa, after)

	wb := p.put("rv/b/1/k")
	after = "after a write in range b"
	p.headerIs(read{"a key in range a", "rv/a/1/k", nil}, wb, after)
	p.headerIs(readIdleRange(1), wb, after)
	p.headerIs(readEverything, wb, after)
}

// Scenario 2: linearizable reads with no write between report the same
// revision, the last write's, however long the cluster stays idle
// (Kubernetes' TestLinearizedReadRevisionInvariant). The reads go round
// for idleTime of wall time; nothing waits on a timer.
func scenarioRepeatedReads(p *revProbe) {
	w := p.put("rv/a/2/k")
	reads := []read{
		{"the key just written (range a)", "rv/a/2/k", nil},
		readOtherRange(2),
		readIdleRange(2),
		readAcross,
		readEverything,
	}
	// Per read: the distinct header revisions in the order seen, and when
	// the first one that is not w was seen.
	headers := make([][]int64, len(reads))
	firstOff := make([]string, len(reads))
	start := time.Now()
	rounds := 0
	for rounds < 2 || time.Since(start) < idleTime {
		for i, r := range reads {
			h := p.mustGet(r, 0).Header.Revision
			if !slices.Contains(headers[i], h) {
				headers[i] = append(headers[i], h)
			}
			if h != w && firstOff[i] == "" {
				firstOff[i] = fmt.Sprintf("first %d in round %d, %v after the write", h, rounds, time.Since(start).Round(time.Millisecond))
			}
		}
		rounds++
	}
	for i, r := range reads {
		p.noteRev("get %s, repeated: headers %v", r.what, headers[i])
		if firstOff[i] != "" {
			hs := headers[i]
			shown := fmt.Sprint(hs)
			if len(hs) > 6 {
				shown = fmt.Sprintf("%v … %v", hs[:3], hs[len(hs)-3:])
			}
			p.errorf("get %s repeated %d times over %v with no write: %d distinct header revisions %s (%s), want only %d (the last write's)",
				r.what, rounds, idleTime, len(hs), shown, firstOff[i], w)
		}
	}
	p.t.Logf("%s: %d rounds of %d reads over %v", p.s.name, rounds, len(reads), time.Since(start).Round(time.Millisecond))
}

// Scenario 3: a compaction at the current revision answers with that
// revision and moves nothing: reads still report it and the next write
// follows it (in etcd, and where revisions are dense, immediately:
// Kubernetes' TestCompact and TestCompactConflict).
func scenarioCompactCurrent(p *revProbe) {
	w := p.put("rv/a/3/k")
	p.headerIs(readOtherRange(3), w, "before compacting")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	resp, err := p.s.cli.Compact(ctx, w)
	cancel()
	if err != nil {
		p.fatalf("compact at the current revision %d: %v", w, err)
	}
	h := resp.Header.Revision
	p.saw(h)
	p.noteRev("compact %d: header %d", w, h)
	if h != w {
		p.errorf("compact at the current revision %d: header revision %d, want %d (a compaction is no write)", w, h, w)
	}
	after := "after compacting at the current revision"
	p.headerIs(read{"the key just written (range a)", "rv/a/3/k", nil}, w, after)
	p.headerIs(readOtherRange(3), w, after)
	p.headerIs(readIdleRange(3), w, after)
	p.headerIs(readAcross, w, after)

	next := p.put("rv/b/3/k")
	if next <= h {
		p.errorf("the write after compacting at %d (header %d) has revision %d, want above the header", w, h, next)
	}
	if p.dense && next != w+1 {
		p.errorf("the write after compacting at %d has revision %d, want %d (revisions are dense)", w, next, w+1)
	}
}

// Scenario 3b: a txn whose compare fails, taking a branch that only reads,
// writes nothing and moves no revision, though its other branch writes
// (Kubernetes' compactor: TestCompactConflict, "Current revision should
// stay the same"); so does a delete of nothing in a counting range and
// etcd. Its own header reports the last write's revision.
func scenarioFailedCompare(p *revProbe) {
	w := p.put("rv/a/8/k")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, key := range []string{"rv/a/8/k", "rv/b/8/k"} {
		resp, err := p.s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(key), "=", 42)).
			Then(clientv3.OpPut(key, "never")).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			p.fatalf("txn on %s with a failing compare: %v", key, err)
		}
		p.saw(resp.Header.Revision)
		p.note("txn on %s with a failing compare: succeeded=%v", key, resp.Succeeded)
		p.noteRev("txn on %s with a failing compare: header %d", key, resp.Header.Revision)
		if resp.Succeeded {
			p.errorf("txn on %s: compare version = 42 held", key)
		}
		if resp.Header.Revision != w {
			p.errorf("txn on %s with a failing compare: header revision %d, want %d (it wrote nothing)", key, resp.Header.Revision, w)
		}
	}
	after := "after txns whose compares failed"
	p.headerIs(read{"a key in range a", "rv/a/8/k", nil}, w, after)
	p.headerIs(readOtherRange(8), w, after)
	p.headerIs(readAcross, w, after)
	next := p.put("rv/b/8/k")
	if p.dense && next != w+1 {
		p.errorf("the write after failed compares has revision %d, want %d (revisions are dense)", next, w+1)
	}
}

// Scenario 4: a read at a revision some response already reported is
// served, waiting if need be, never refused as future (Kubernetes: "too
// large resource version" for a List at the revision of a write just made
// in another range); one above every revision reported is ErrFutureRev.
// The write-then-list steps repeat, alternating ranges, since a range that
// lags the other one only sometimes would refuse only sometimes.
func scenarioListAtWrite(p *revProbe) {
	prefix := func(rng string) read {
		return read{fmt.Sprintf("prefix rv/%s/4/ (range %s)", rng, rng), fmt.Sprintf("rv/%s/4/", rng), []clientv3.OpOption{clientv3.WithPrefix()}}
	}
	across := read{"prefix rv/ (three ranges)", "rv/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly()}}
	idle := read{"prefix rv/c/ (idle range c)", "rv/c/", []clientv3.OpOption{clientv3.WithPrefix()}}
	const steps = 10
	for i := range steps {
		in, other := "a", "b"
		if i%2 == 1 {
			in, other = other, in
		}
		w := p.put(fmt.Sprintf("rv/%s/4/k%d", in, i))
		for _, r := range []read{prefix(other), idle, across} {
			what := fmt.Sprintf("step %d: list %s at the write just made in range %s", i, r.what, in)
			resp, err := p.get(r, w)
			if err != nil {
				p.errorf("%s (revision %d): %v, want it served", what, w, err)
				p.note("%s: error %v", what, err)
				continue
			}
			p.noteKVs(what, resp.Kvs)
			p.noteRev("%s: header %d", what, resp.Header.Revision)
			if resp.Header.Revision != w {
				p.errorf("%s: header revision %d, want %d (the last write's)", what, resp.Header.Revision, w)
			}
		}
	}

	// One above every revision any response reported so far.
	future := p.seen + 1
	p.noteRev("future revision: %d", future)
	for _, r := range []read{
		{"rv/b/4/k1 (range b)", "rv/b/4/k1", nil},
		{"rv/a/4/k0 (range a)", "rv/a/4/k0", nil},
		{"rv/c/4/z (idle range c)", "rv/c/4/z", nil},
		across,
	} {
		what := fmt.Sprintf("get %s at one above every revision reported", r.what)
		resp, err := p.get(r, future)
		switch {
		case err == nil:
			p.errorf("%s (%d): served with header %d, want ErrFutureRev", what, future, resp.Header.Revision)
			p.note("%s: served", what)
		case !errors.Is(err, rpctypes.ErrFutureRev):
			p.errorf("%s (%d): %v, want ErrFutureRev", what, future, err)
			p.note("%s: %v", what, err)
		default:
			p.note("%s: %v", what, err)
		}
	}
}

// Scenario 5: a watch from "now" (no start revision) on one range, after
// writes there and then in another range, delivers the writes that follow
// and none of the old ones; so does one from one above the header revision
// of a read in the idle range, which is how Kubernetes' store starts a
// watch "from now" (its watch tests saw old events replayed); a progress
// request after a write elsewhere
// reports that write's revision (Kubernetes' cacher waits for a progress
// notification at the revision it was asked to list at).
func scenarioWatchFromNow(p *revProbe) {
	p.put("rv/b/5/old")
	last := p.put("rv/a/5/x")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	type watch struct {
		what, key string
		start     int64 // 0: now
		ch        clientv3.WatchChan
		events    []string // every event delivered, "TYPE key@rev"
	}
	idle := p.mustGet(readIdleRange(5), 0).Header.Revision
	p.noteRev("get %s: header %d", readIdleRange(5).what, idle)
	watches := []*watch{
		{what: "prefix rv/b/5/ (range b) from now", key: "rv/b/5/"},
		{what: "prefix rv/ (three ranges) from now", key: "rv/"},
		{what: "prefix rv/b/5/ (range b) from the idle range's header+1", key: "rv/b/5/", start: idle + 1},
	}
	// next is w's next response that is not only events, the events
	// before it kept; nil when the watch ended.
	next := func(w *watch, until string) *clientv3.WatchResponse {
		p.t.Helper()
		for {
			select {
			case resp, ok := <-w.ch:
				if !ok {
					p.fatalf("watch %s: closed waiting for %s; events so far: %v", w.what, until, w.events)
				}
				for _, ev := range resp.Events {
					w.events = append(w.events, fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision))
				}
				if len(resp.Events) == 0 || until == "rv/b/5/new" && strings.Contains(w.events[len(w.events)-1], " rv/b/5/new@") {
					return &resp
				}
			case <-ctx.Done():
				p.fatalf("watch %s: no %s within %v; events so far: %v", w.what, until, opTimeout, w.events)
			}
		}
	}
	for _, w := range watches {
		w.ch = p.s.cli.Watch(ctx, w.key, clientv3.WithPrefix(), clientv3.WithCreatedNotify(), clientv3.WithRev(w.start))
		resp := next(w, "created response")
		if !resp.Created {
			p.fatalf("watch %s: first response not a created one: %v", w.what, resp.Err())
		}
		p.saw(resp.Header.Revision)
		p.noteRev("watch %s created: header %d", w.what, resp.Header.Revision)
		if resp.Header.Revision != last {
			p.errorf("watch %s: created with header revision %d, want %d (the last write's)",
				w.what, resp.Header.Revision, last)
		}
	}

	// A write outside both watches, in range a, then a progress request.
	elsewhere := p.put("q/5")
	if err := p.s.cli.RequestProgress(ctx); err != nil {
		p.fatalf("request progress: %v", err)
	}
	for _, w := range watches {
		resp := next(w, "progress notification")
		if !resp.IsProgressNotify() {
			p.fatalf("watch %s: a response that is neither events nor progress after a progress request: %v", w.what, resp.Err())
		}
		p.noteRev("watch %s progress: header %d", w.what, resp.Header.Revision)
		if resp.Header.Revision != elsewhere {
			p.errorf("watch %s: progress after a write at %d in range a outside the watch: header revision %d, want %d (the last write's)",
				w.what, elsewhere, resp.Header.Revision, elsewhere)
		}
	}

	later := p.put("rv/b/5/new")
	for _, w := range watches {
		next(w, "rv/b/5/new")
		p.noteRev("watch %s: events %v", w.what, w.events)
		var keys []string
		for _, e := range w.events {
			keys = append(keys, e[:strings.LastIndexByte(e, '@')])
		}
		p.note("watch %s: events %v", w.what, keys)
		if len(w.events) != 1 || w.events[0] != fmt.Sprintf("PUT rv/b/5/new@%d", later) {
			p.errorf("watch %s, created after the write at %d: events %v, want only PUT rv/b/5/new@%d",
				w.what, last, w.events, later)
		}
	}
}
