package compat

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"

	"github.com/cairn-kv/cairn/node"
)

// ctlWatchProgressInterval is both servers' progress-notification interval
// in TestEtcdctlWatch: etcd's minimum (v3rpc's minWatchProgressInterval),
// so that watch --progress-notify prints within the test.
const ctlWatchProgressInterval = 100 * time.Millisecond

// ctlWatchWait bounds every wait for a line from etcdctl. A server that
// never prints the line costs this much and shows up as a difference
// (ctlWatchNoLine in its transcript) rather than as a stuck test.
const ctlWatchWait = 10 * time.Second

// ctlWatchNoLine ends a transcript whose wait ran out.
const ctlWatchNoLine = "(no such line within the deadline)"

// ctlWatchScenario is one topic of TestEtcdctlWatch. run drives etcdctl
// against one server and returns transcript entries, one per command;
// the entries from etcd and from Cairn must be equal.
type ctlWatchScenario struct {
	name string
	run  func(e *ctlWatchEnv) []string
}

// TestEtcdctlWatch runs etcdctl watch, in its plain, --prefix, range,
// --rev, --prev-kv, --progress-notify, json, fields and interactive (-i)
// forms, against etcd and Cairn, and compares what it prints.
//
// Revisions are compared as they are, not masked: each scenario starts
// with both servers at the same revision (ctlWatchAlign pads the one
// behind) and makes the same writes on both. A watch without --rev is
// known to be established only when it prints something, so such
// scenarios write a sentinel until it shows (establish) and keep what
// comes after it; their simple output shows no revisions, so the number of
// sentinel writes does not show. Watches that print revisions (json,
// fields, progress) start at a known revision instead (--rev=next, or the
// first progress notification), or come before any sentinel write; the
// two progress notifications that come after one are waited for at the
// current revision and named, not numbered.
func TestEtcdctlWatch(t *testing.T) {
	bin := buildEtcdctl(t)
	etcd, other := startCtlWatchPair(t)
	runCtlWatch(t, bin, etcd, other, nil)
}

// runCtlWatch runs ctlWatchScenarios on etcd and on other, each as a
// subtest, and compares their transcripts after mask (nil: none) hid on
// both sides what may differ by design.
func runCtlWatch(t *testing.T, bin string, etcd, other *server, mask func(string) string) {
	if mask == nil {
		mask = func(s string) string { return s }
	}
	for _, sc := range ctlWatchScenarios {
		t.Run(sc.name, func(t *testing.T) {
			ctlWatchAlign(t, etcd, other)
			want := sc.run(&ctlWatchEnv{t: t, bin: bin, s: etcd})
			got := sc.run(&ctlWatchEnv{t: t, bin: bin, s: other})
			for i := range max(len(want), len(got)) {
				var w, g string
				if i < len(want) {
					w = mask(want[i])
				}
				if i < len(got) {
					g = mask(got[i])
				}
				if strings.Contains(w, ctlWatchNoLine) {
					t.Errorf("entry %d: etcd itself did not print what the test waits for:\n%s", i, indent(w))
				}
				if w != g {
					t.Errorf("entry %d differs\n--- %s:\n%s\n--- %s:\n%s", i, etcd.name, indent(w), other.name, indent(g))
				} else if testing.Verbose() {
					t.Logf("entry %d:\n%s", i, indent(w))
				}
			}
		})
	}
}

var ctlWatchScenarios = []ctlWatchScenario{
	{"key", func(e *ctlWatchEnv) []string {
		st := e.watch("wk")
		e.establish(st, "wk")
		e.put("wk", "1")
		e.put("wk2", "not-watched")
		e.put("w", "not-watched")
		e.del("wk")
		e.del("wk") // deletes nothing: no event
		e.put("wk", "end")
		return []string{e.entry("watch wk", ctlAfterSentinel(st.ctlUntil(ctlLineIs("end"))))}
	}},
	{"prefix", func(e *ctlWatchEnv) []string {
		st := e.watch("--prefix", "wp/")
		e.establish(st, "wp/ready")
		e.put("wp/a", "1")
		e.put("wpx", "not-watched")
		e.put("wp/b", "2")
		e.put("wp/c", "3")
		e.del("wp/a", clientv3.WithRange("wp/c")) // two events in one revision
		e.put("wp/", "end")
		return []string{e.entry("watch --prefix wp/", ctlAfterSentinel(st.ctlUntil(ctlLineIs("end"))))}
	}},
	{"range", func(e *ctlWatchEnv) []string {
		st := e.watch("wr/a", "wr/c")
		e.establish(st, "wr/a")
		e.put("wr/b", "1")
		e.put("wr/c", "not-watched")
		e.put("wr/", "not-watched")
		e.put("wr/bz", "2")
		e.put("wr/a", "end")
		return []string{e.entry("watch wr/a wr/c", ctlAfterSentinel(st.ctlUntil(ctlLineIs("end"))))}
	}},
	{"prev-kv", func(e *ctlWatchEnv) []string {
		e.put("pv/a", "0")
		st := e.watch("--prev-kv", "--prefix", "pv/")
		e.establish(st, "pv/ready")
		e.put("pv/a", "1")
		e.put("pv/b", "new")
		e.del("pv/a")
		e.put("pv/z", "end")
		return []string{e.entry("watch --prev-kv --prefix pv/", ctlAfterSentinel(st.ctlUntil(ctlLineIs("end"))))}
	}},
	{"rev", func(e *ctlWatchEnv) []string {
		base := e.rev()
		e.put("h/a", "1")
		e.put("h/b", "2")
		e.put("h/a", "3")
		e.del("h/b")
		e.put("h/c", "end")
		rev := func(d int64) string { return fmt.Sprintf("--rev=%d", base+d) }
		return []string{
			e.watchUntil(ctlLineIs("end"), "--prefix", "h/", rev(1)),
			e.watchUntil(ctlLineIs("3"), "h/a", rev(2)),
			e.watchUntil(ctlLineIs("end"), "--prefix", "h/", "--prev-kv", rev(3)),
			e.watchUntil(ctlLineHasValue("end"), "-w", "json", "--prefix", "h/", rev(1)),
			e.watchUntil(ctlLineIs(`"Value" : "end"`), "-w", "fields", "--prefix", "h/", "--prev-kv", rev(4)),
		}
	}},
	{"live-json-fields", func(e *ctlWatchEnv) []string {
		e.put("j/a", "0")
		next := fmt.Sprintf("--rev=%d", e.rev()+1)
		js := e.watch("-w", "json", "--prev-kv", "--prefix", "j/", next)
		e.put("j/a", "1")
		first := js.ctlUntil(ctlLineHasValue("1"))
		e.put("j/a", "2")
		e.del("j/a")
		e.put("j/b", "end")
		rest := js.ctlUntil(ctlLineHasValue("end"))

		next = fmt.Sprintf("--rev=%d", e.rev()+1)
		fs := e.watch("-w", "fields", "f/k", next)
		e.put("f/k", "1")
		ffirst := fs.ctlUntil(ctlLineIs(`"Value" : "1"`))
		e.del("f/k")
		e.put("f/k", "end")
		frest := fs.ctlUntil(ctlLineIs(`"Value" : "end"`))
		return []string{
			e.entry("watch -w json --prev-kv --prefix j/ --rev=next", append(first, rest...)),
			e.entry("watch -w fields f/k --rev=next", append(ffirst, frest...)),
		}
	}},
	{"progress-notify", func(e *ctlWatchEnv) []string {
		// Idle, a watch gets one notification per interval, all at the
		// current revision r; the first shows it is established.
		r := e.rev()
		out := []string{e.watchUntil(ctlLineHasPrefix("{"), "--progress-notify", "-w", "json", "pn")}
		st := e.watch("--progress-notify", "pn")
		lines := st.ctlUntil(ctlLineIs(ctlProgressLine(r)))
		e.put("pn", "1")
		lines = append(lines, st.ctlUntil(ctlLineIs(ctlProgressLine(r+1)))...)
		out = append(out, e.entry("watch --progress-notify pn", ctlCollapseProgress(lines)))

		// A watch without --progress-notify gets none. It is open until
		// the watch above is notified after the sentinel writes, that
		// is, for at least a full interval with no event; the
		// sentinel writes make the revision differ between the
		// servers, so the notification is named, not numbered.
		plain := e.watch("pn")
		e.establish(plain, "pn")
		cur := ctlProgressLine(e.rev())
		notified := st.ctlUntil(ctlLineIs(cur))
		if last := notified[len(notified)-1]; last == cur {
			out = append(out, "watch --progress-notify pn: notified at the current revision after the sentinel")
		} else {
			out = append(out, "watch --progress-notify pn: after the sentinel: "+last)
		}
		e.put("pn", "end")
		out = append(out, e.entry("watch pn (alongside)", ctlAfterSentinel(plain.ctlUntil(ctlLineIs("end")))))
		return out
	}},
	{"interactive", func(e *ctlWatchEnv) []string {
		e.put("i/c", "0")
		base := e.rev()
		in := e.interactive()
		var out []string
		in.send(fmt.Sprintf("watch --rev=%d i/a", base+1))
		e.put("i/a", "1")
		out = append(out, in.ctlUntil(ctlLineIs("1"))...)
		// Lines interactive mode rejects, on stderr, before the next.
		in.send("")
		in.send("cancel")
		in.send("watch")
		in.send("watch --prefix i/p i/q")
		in.send("watch --prefix i/p")
		e.establish(in.stream, "i/p/ready")
		e.put("i/p/x", "p1")
		out = append(out, ctlAfterSentinel(in.ctlUntil(ctlLineIs("p1")))...)
		in.send(fmt.Sprintf("watch --prev-kv --rev=%d i/c", e.rev()+1))
		e.put("i/c", "c1")
		out = append(out, in.ctlUntil(ctlLineIs("c1"))...)
		// One notification per open watch (three), all at the current
		// revision; they are identical lines, so their order from
		// etcdctl's goroutines does not matter. The sentinel writes
		// above make that revision differ between the servers: the
		// wait accepts only the current one, which is then named so.
		p := ctlProgressLine(e.rev())
		in.send("progress")
		for range 3 {
			for _, l := range in.ctlUntil(ctlLineIs(p)) {
				if l == p {
					l = "progress notify: (current revision)"
				}
				out = append(out, l)
			}
		}
		e.put("i/p/y", "p2")
		out = append(out, in.ctlUntil(ctlLineIs("p2"))...)
		return []string{
			e.entry("watch -i: stdout", out),
			e.entry("watch -i: end of input", []string{in.finish()}),
			e.ctl("watch -i <<< progress", "progress\n", "watch", "-i"),
			e.ctl("watch -i <<< watch --bogus", "watch --bogus x\n", "watch", "-i"),
		}
	}},
	{"compacted", func(e *ctlWatchEnv) []string {
		base := e.rev()
		e.put("c/k", "1")
		e.put("c/k", "2")
		e.put("c/k", "3")
		e.compact(base + 2)
		rev := func(d int64) string { return fmt.Sprintf("--rev=%d", base+d) }
		in := e.interactive()
		in.send("watch c/k " + rev(1))
		canceled := in.errUntil(ctlLineHasPrefix("watch was canceled"))
		in.send("watch c/k " + rev(2))
		replay := in.ctlUntil(ctlLineIs("3"))
		return []string{
			e.ctl("watch c/k --rev=compacted", "", "watch", "c/k", rev(1)),
			e.ctl("watch -w json c/k --rev=compacted", "", "watch", "-w", "json", "c/k", rev(1)),
			e.ctl("watch --prefix c/ --rev=compacted --prev-kv", "", "watch", "--prefix", "c/", rev(1), "--prev-kv"),
			e.watchUntil(ctlLineIs("3"), "c/k", rev(2)), // the compaction revision itself is kept
			e.entry("watch -i: watch c/k --rev=compacted", canceled),
			e.entry("watch -i: watch c/k --rev=compact-revision", replay),
			e.entry("watch -i: end of input", []string{in.finish()}),
		}
	}},
}

// startCtlWatchPair is startPair with both servers sending progress
// notifications every ctlWatchProgressInterval. etcd reads the interval from
// a v3rpc package variable whenever a watch stream opens (embed's
// WatchProgressNotifyInterval only sets it), so the test sets it directly,
// as etcd's own integration tests do, and puts back etcd's default of ten
// minutes, which no other test changes, when it ends.
func startCtlWatchPair(t *testing.T) (etcd, other *server) {
	v3rpc.SetProgressReportInterval(ctlWatchProgressInterval)
	t.Cleanup(func() { v3rpc.SetProgressReportInterval(10 * time.Minute) })
	etcd = startEtcd(t, "etcd")
	if *flagSelf {
		return etcd, startEtcd(t, "etcd2")
	}
	return etcd, startCtlWatchCairn(t, "cairn", ctlWatchProgressInterval)
}

// startCtlWatchCairn is startCairn with a progress-notification interval
// (cairn --watch-progress-notify-interval).
func startCtlWatchCairn(t *testing.T, name string, interval time.Duration) *server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	n, err := node.Start(ctx, node.Config{
		Name:                        name,
		DataDir:                     t.TempDir(),
		ListenClientURLs:            []string{"http://127.0.0.1:0"},
		ListenPeerURLs:              []string{"http://127.0.0.1:0"},
		WatchProgressNotifyInterval: interval,
	})
	if err != nil {
		t.Fatalf("start cairn %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close cairn %s: %v", name, err)
		}
	})
	ep := n.ClientURLs()[0]
	cli, wire := newClient(t, ep)
	return &server{name: name, endpoint: ep, cli: cli, wire: wire}
}

// ctlWatchAlign pads the server behind with writes to "pad" until both are at
// the same revision. No scenario watches "pad".
func ctlWatchAlign(t *testing.T, a, b *server) {
	t.Helper()
	for {
		ra, rb := serverRev(t, a), serverRev(t, b)
		if ra == rb {
			return
		}
		behind := a
		if rb < ra {
			behind = b
		}
		(&ctlWatchEnv{t: t, s: behind}).put("pad", "")
	}
}

// ctlWatchEnv is one scenario's run against one server.
type ctlWatchEnv struct {
	t   *testing.T
	bin string
	s   *server
}

func (e *ctlWatchEnv) put(key, val string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := e.s.cli.Put(ctx, key, val); err != nil {
		e.t.Fatalf("%s: put %s: %v", e.s.name, key, err)
	}
	e.wrote()
}

// wrote numbers what the scenario just wrote on a sharded Cairn.
func (e *ctlWatchEnv) wrote() {
	if e.s.revs != nil {
		e.s.revs.sync(e.t)
	}
}

func (e *ctlWatchEnv) del(key string, opts ...clientv3.OpOption) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := e.s.cli.Delete(ctx, key, opts...); err != nil {
		e.t.Fatalf("%s: delete %s: %v", e.s.name, key, err)
	}
	e.wrote()
}

func (e *ctlWatchEnv) compact(rev int64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if e.s.revs != nil {
		rev = e.s.revs.toServer(rev)
	}
	if _, err := e.s.cli.Compact(ctx, rev); err != nil {
		e.t.Fatalf("%s: compact at %d: %v", e.s.name, rev, err)
	}
}

func (e *ctlWatchEnv) rev() int64 {
	e.t.Helper()
	return serverRev(e.t, e.s)
}

// watch starts etcdctl watch args; the scenario's end stops it.
func (e *ctlWatchEnv) watch(args ...string) *stream {
	e.t.Helper()
	return startStream(e.t, e.bin, e.s, append([]string{"watch"}, args...)...)
}

// watchUntil runs etcdctl watch args until it prints a line done accepts,
// and returns the entry for it.
func (e *ctlWatchEnv) watchUntil(done func(string) bool, args ...string) string {
	e.t.Helper()
	st := e.watch(args...)
	defer st.stop()
	return e.entry("watch "+strings.Join(args, " "), st.ctlUntil(done))
}

// ctl runs an etcdctl command that ends by itself, with stdin, and returns
// the entry for its exit code, stdout and stderr.
func (e *ctlWatchEnv) ctl(label, stdin string, args ...string) string {
	e.t.Helper()
	return label + ":\n" + runEtcdctl(e.t, e.bin, e.s, ctlStep{args: args, stdin: stdin}).String()
}

// entry labels lines, masked of what names the server. Labels carry no
// revisions, which are the same on both servers anyway.
func (e *ctlWatchEnv) entry(label string, lines []string) string {
	return label + ":\n" + indent(normalizeCtl(strings.Join(lines, "\n"), e.s.endpoint))
}

// establish writes key=ready until the watch on st prints that value,
// which shows the watch is in place: a watch without --rev sees only
// writes made after the server set it up, and there is no other sign of
// that. The wait between writes grows; a slow watch can so print the
// sentinel more than once, which ctlAfterSentinel drops.
func (e *ctlWatchEnv) establish(st *stream, key string) {
	e.t.Helper()
	deadline := time.Now().Add(ctlWatchWait)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		e.put(key, "ready")
		timeout := time.After(wait)
	lines:
		for {
			select {
			case l, ok := <-st.out:
				if !ok {
					e.t.Fatalf("%s: etcdctl %v ended before the watch was established", e.s.name, st.cmd.Args)
				}
				if l == "ready" {
					return
				}
			case <-timeout:
				break lines
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: etcdctl %v printed no sentinel for %s within %v", e.s.name, st.cmd.Args, key, ctlWatchWait)
		}
	}
}

// ctlUntil reads st's lines until one that done accepts, and returns them,
// that one included. If none comes within ctlWatchWait it returns what came,
// ended with ctlWatchNoLine.
func (st *stream) ctlUntil(done func(string) bool) []string {
	var got []string
	deadline := time.After(ctlWatchWait)
	for {
		select {
		case l, ok := <-st.out:
			if !ok {
				return append(got, "(etcdctl ended) "+ctlWatchNoLine)
			}
			l = st.revs.out(l)
			got = append(got, l)
			if done(l) {
				return got
			}
		case <-deadline:
			return append(got, ctlWatchNoLine)
		}
	}
}

func ctlLineIs(want string) func(string) bool { return func(l string) bool { return l == want } }

func ctlLineHasPrefix(p string) func(string) bool {
	return func(l string) bool { return strings.HasPrefix(l, p) }
}

// ctlLineHasValue accepts a json line that carries value, as encoding/json
// writes bytes (base64).
func ctlLineHasValue(value string) func(string) bool {
	b64 := `"` + base64.StdEncoding.EncodeToString([]byte(value)) + `"`
	return func(l string) bool { return strings.Contains(l, b64) }
}

func ctlProgressLine(rev int64) string { return fmt.Sprintf("progress notify: %d", rev) }

// ctlAfterSentinel drops the lines up to the last sentinel value (establish).
func ctlAfterSentinel(lines []string) []string {
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] == "ready" {
			return lines[i+1:]
		}
	}
	return lines
}

// ctlCollapseProgress folds runs of the same progress notification into one:
// how many an idle watch gets depends on how long the test took.
func ctlCollapseProgress(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "progress notify: ") && len(out) > 0 && out[len(out)-1] == l {
			continue
		}
		out = append(out, l)
	}
	return out
}

// ctlInteractive is a running etcdctl watch -i: a stream whose stdin the test
// writes and whose stderr it reads too, which startStream offers neither of.
type ctlInteractive struct {
	*stream
	stdin   io.WriteCloser
	errs    chan string
	errSeen []string // stderr lines errUntil has read
}

func (e *ctlWatchEnv) interactive() *ctlInteractive {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, e.bin, "--endpoints="+e.s.endpoint, "watch", "-i")
	cmd.Env = ctlEnv()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Buffered like startStream's, so that etcdctl does not block on
	// output the test has not asked for yet.
	in := &ctlInteractive{
		stream: &stream{cmd: cmd, cancel: cancel, out: make(chan string, 100), revs: e.s.revs},
		stdin:  stdin,
		errs:   make(chan string, 100),
	}
	go ctlScanInto(stdout, in.out)
	go ctlScanInto(stderr, in.errs)
	t.Cleanup(in.stop)
	return in
}

func ctlScanInto(r io.Reader, out chan<- string) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		out <- sc.Text()
	}
	close(out)
}

// send writes one command line to etcdctl.
func (in *ctlInteractive) send(line string) {
	_, _ = fmt.Fprintln(in.stdin, in.revs.line(line)) // a dead etcdctl shows in what it printed
}

// errUntil reads stderr lines until one that done accepts, and returns
// them: ctlUntil for stderr.
func (in *ctlInteractive) errUntil(done func(string) bool) []string {
	var got []string
	deadline := time.After(ctlWatchWait)
	for {
		select {
		case l, ok := <-in.errs:
			if !ok {
				return append(got, "(etcdctl ended) "+ctlWatchNoLine)
			}
			l = in.revs.out(l)
			got = append(got, l)
			in.errSeen = append(in.errSeen, l)
			if done(l) {
				return got
			}
		case <-deadline:
			return append(got, ctlWatchNoLine)
		}
	}
}

// finish closes stdin, which ends etcdctl with an error, and returns its
// exit code, the stdout nobody read yet and all of its stderr.
func (in *ctlInteractive) finish() string {
	_ = in.stdin.Close()
	drain := func(ch <-chan string) []string {
		var got []string
		deadline := time.After(ctlWatchWait)
		for {
			select {
			case l, ok := <-ch:
				if !ok {
					return got
				}
				got = append(got, in.revs.out(l))
			case <-deadline:
				return append(got, ctlWatchNoLine)
			}
		}
	}
	out, errs := drain(in.out), drain(in.errs)
	code := 0
	if err := in.cmd.Wait(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			return fmt.Sprintf("wait: %v", err)
		}
		code = exit.ExitCode()
	}
	r := ctlResult{code: code, stdout: strings.Join(out, "\n"), stderr: strings.Join(append(in.errSeen, errs...), "\n")}
	return r.String()
}
