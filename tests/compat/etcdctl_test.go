package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// ctlStep is one etcdctl command line: its arguments (after the global
// flags) and what it reads on stdin.
type ctlStep struct {
	args  []string
	stdin string
}

func ctl(args ...string) ctlStep { return ctlStep{args: args} }

func ctlTxn(stdin string, args ...string) ctlStep {
	return ctlStep{args: append([]string{"txn"}, args...), stdin: stdin}
}

// ctlScript is what TestEtcdctl runs on both servers, in order, from fresh
// stores. Revisions are written out: etcd's first write is revision 2.
var ctlScript = []ctlStep{
	// put
	ctl("put", "foo", "bar"),                    // rev 2
	ctl("put", "foo", "bar2", "--prev-kv"),      // rev 3
	ctl("put", "foo1", "one"),                   // rev 4
	ctl("put", "foo2", "two", "-w", "json"),     // rev 5
	ctl("put", "foo3", "three", "-w", "fields"), // rev 6
	ctl("put", "a", "1"),                        // rev 7
	ctl("put", "b", "2", "--prev-kv", "-w", "json"),
	ctl("put", "b", "22", "--prev-kv"), // rev 9
	ctl("put", "zz", "last", "--prev-kv", "-w", "fields"),
	ctl("put", "foo", "--ignore-value"), // rev 11, value kept
	ctl("put", "nokey", "--ignore-value"),
	ctl("put", "foo", "x", "--lease=1234"),
	ctl("put", "foo", "--ignore-lease", "bar2"), // rev 12
	ctl("put", "foo", "--ignore-lease", "--lease=1234", "y"),
	ctl("put", "nokey", "v", "--ignore-lease"),
	ctl("put", "", "empty"),
	ctl("put"),
	// get
	ctl("get", "foo"),
	ctl("get", "nokey"),
	ctl("get", "foo", "--prefix"),
	ctl("get", "foo", "--from-key"),
	ctl("get", "", "--prefix"),
	ctl("get", "", "--from-key"),
	ctl("get", "a", "foo2"),
	ctl("get", "foo", "--rev=2"),
	ctl("get", "foo", "--rev=3"),
	ctl("get", "foo", "--prefix", "--rev=4"),
	ctl("get", "foo", "--prefix", "--limit=2"),
	ctl("get", "foo", "--prefix", "--limit=2", "-w", "json"),
	ctl("get", "foo", "--prefix", "--sort-by=KEY", "--order=DESCEND"),
	ctl("get", "foo", "--prefix", "--sort-by=KEY", "--order=ASCEND"),
	ctl("get", "", "--prefix", "--sort-by=CREATE", "--order=DESCEND"),
	ctl("get", "", "--prefix", "--sort-by=MODIFY", "--order=ASCEND"),
	ctl("get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit=3"),
	ctl("get", "", "--prefix", "--sort-by=VERSION", "--order=DESCEND"),
	ctl("get", "", "--prefix", "--sort-by=VALUE", "--order=ASCEND"),
	ctl("get", "", "--prefix", "--sort-by=VALUE"),
	ctl("get", "", "--prefix", "--order=DESCEND"),
	ctl("get", "foo", "--prefix", "--sort-by=BOGUS"),
	ctl("get", "foo", "--prefix", "--keys-only"),
	ctl("get", "foo", "--prefix", "--keys-only", "-w", "json"),
	ctl("get", "", "--prefix", "--min-mod-rev=5", "--max-mod-rev=9"),
	ctl("get", "", "--prefix", "--min-create-rev=4", "--max-create-rev=7", "-w", "json"),
	ctl("get", "", "--prefix", "--max-mod-rev=3", "--limit=1"),
	ctl("get", "foo", "--prefix", "--count-only"),
	ctl("get", "foo", "--prefix", "--count-only", "-w", "json"),
	ctl("get", "foo", "--prefix", "--count-only", "-w", "fields"),
	ctl("get", "foo", "--prefix", "--print-value-only"),
	ctl("get", "foo", "--consistency=s"),
	ctl("get", "foo", "--consistency=l"),
	ctl("get", "foo", "--prefix", "--consistency=s", "-w", "json"),
	ctl("get", "foo", "-w", "json"),
	ctl("get", "foo", "-w", "json", "--hex"),
	ctl("get", "foo", "--prefix", "-w", "fields"),
	ctl("get", "foo", "--prefix", "-w", "fields", "--hex"),
	ctl("get", "foo", "-w", "simple"),
	ctl("get", "foo", "-w", "simple", "--hex"),
	ctl("get", "foo", "--prefix", "-w", "table"),
	ctl("get", "foo", "--rev=100"),
	ctl("get", "foo", "--rev=100", "-w", "json"),
	ctl("get", ""),
	// txn, non-interactive stdin form: compares, blank line, success ops,
	// blank line, failure ops, blank line.
	ctlTxn("value(\"foo\") = \"bar2\"\n\nput foo txn1\nget foo\n\nput foo else1\n\n"),          // success
	ctlTxn("value(\"foo\") = \"nope\"\n\nput foo txn2\n\nput foo else2\nget foo --prefix\n\n"), // failure
	ctlTxn("mod(\"foo\") > \"0\"\nversion(\"foo1\") = \"1\"\n\nget foo1\ndel foo3\n\nput x y\n\n", "-w", "json"),
	ctlTxn("create(\"nokey\") = \"0\"\n\nput nokey created --prev-kv\n\n\n"),
	ctlTxn("create(\"nokey\") = \"0\"\n\nput nokey again\n\ndel nokey --prev-kv\n\n", "-w", "fields"),
	ctlTxn("version(\"foo\") > \"1\"\n\nget foo --keys-only\n\n\n"),
	ctlTxn("value(\"foo\") != \"x\"\nmod(\"zz\") < \"1000\"\n\nput a 10\nput a 11\n\n\n"), // duplicate key
	ctlTxn("\n\nget a\n\n\n"),
	ctlTxn("\n\n\n"),
	ctlTxn("value(\"foo\") = \"txn1\"\n\nput foo txn3\n\nget foo\n\n", "-i"), // interactive: prompts on stdout
	ctlTxn("bogus(\"foo\") = \"1\"\n\n\n\n"),
	ctlTxn("value(\"foo\") = \"txn1\"\n\nput foo --lease=99 v\n\n\n"),
	// del
	ctl("del", "nokey"),
	ctl("del", "foo3"),
	ctl("del", "foo1", "--prev-kv"),
	ctl("del", "foo", "--prefix", "--prev-kv", "-w", "json"),
	ctl("del", "x", "--from-key", "--prev-kv"),
	ctl("del", "a", "b", "--range"), // without --range etcdctl waits 2s for an interrupt
	ctl("del", ""),
	ctl("get", "", "--prefix", "-w", "json"),
	ctl("put", "foo", "again"),
	ctl("put", "foo", "again2"),
	// compaction and reads of compacted revisions
	ctl("compaction", "5"),
	ctl("compaction", "5"),
	ctl("compaction", "3"),
	ctl("compaction", "1000"),
	ctl("compaction", "notanumber"),
	ctl("get", "foo", "--rev=4"),
	ctl("get", "foo", "--rev=5"),
	ctl("get", "foo", "--rev=4", "-w", "json"),
	ctl("compaction", "--physical", "8"),
	ctl("get", "", "--prefix", "--rev=9"),
	ctl("get", "", "--prefix", "--rev=7"),
	ctl("txn", "--interactive=false", "extra-arg"),
}

// TestEtcdctl runs ctlScript with the etcdctl this module pins against a
// fresh etcd and a fresh Cairn, and compares exit codes, stdout and stderr.
func TestEtcdctl(t *testing.T) {
	bin := buildEtcdctl(t)
	etcd, other := startPair(t)
	runCtlScript(t, bin, ctlScript, etcd, other, nil)
}

// runCtlScript runs script's steps on etcd and on other, one by one, and
// compares what each printed after mask (nil: none) hid on both sides
// what may differ by design.
func runCtlScript(t *testing.T, bin string, script []ctlStep, etcd, other *server, mask func(string) string) {
	t.Helper()
	for i, step := range script {
		want := runEtcdctl(t, bin, etcd, step).masked(mask)
		got := runEtcdctl(t, bin, other, step).masked(mask)
		if testing.Verbose() {
			t.Logf("step %d: %s\n%v", i, step, want)
		}
		if want != got {
			t.Errorf("step %d: etcdctl %s: outputs differ\n--- %s:\n%v\n--- %s:\n%v", i, step, etcd.name, want, other.name, got)
		}
	}
}

func (s ctlStep) String() string {
	out := strings.Join(quoteAll(s.args), " ")
	if s.stdin != "" {
		out += fmt.Sprintf(" <<< %q", s.stdin)
	}
	return out
}

func quoteAll(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \"'") {
			a = fmt.Sprintf("%q", a)
		}
		q[i] = a
	}
	return q
}

// ctlResult is what one etcdctl run showed, normalised.
type ctlResult struct {
	code           int
	stdout, stderr string
}

// masked is r with mask applied to its outputs; nil leaves it as is.
func (r ctlResult) masked(mask func(string) string) ctlResult {
	if mask != nil {
		r.stdout, r.stderr = mask(r.stdout), mask(r.stderr)
	}
	return r
}

func (r ctlResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, indent(r.stdout), indent(r.stderr))
}

func indent(s string) string {
	if s == "" {
		return "  (empty)"
	}
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ")
}

// buildEtcdctl builds etcdctl at the version go.mod pins, into a temporary
// directory. The Go build cache makes this cheap after the first run.
func buildEtcdctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "etcdctl")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", bin, "go.etcd.io/etcd/etcdctl/v3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build etcdctl: %v\n%s", err, out)
	}
	return bin
}

// goTool is the go command of the toolchain running the test.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// runEtcdctl runs one step against s and returns its normalised result.
func runEtcdctl(t *testing.T, bin string, s *server, step ctlStep) ctlResult {
	t.Helper()
	if s.revs != nil {
		step = s.revs.step(step)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"--endpoints=" + s.endpoint, "--dial-timeout=10s", "--command-timeout=30s"}, step.args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = ctlEnv()
	cmd.Stdin = strings.NewReader(step.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("run etcdctl %s against %s: %v", step, s.name, err)
		}
		code = exit.ExitCode()
	}
	out, errs := stdout.String(), stderr.String()
	if s.revs != nil {
		// What the step wrote is numbered before its output is read.
		s.revs.sync(t)
		out, errs = s.revs.out(out), s.revs.out(errs)
	}
	return ctlResult{
		code:   code,
		stdout: normalizeCtl(out, s.endpoint),
		stderr: normalizeCtl(errs, s.endpoint),
	}
}

// ctlEnv is the test's environment without ETCDCTL_* settings, which would
// change what etcdctl does.
func ctlEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCDCTL_") {
			env = append(env, kv)
		}
	}
	return env
}

// ctlMasks replace what names the server (cluster id, member id, raft term,
// in decimal or, with --hex, in hex) and what names the moment or the
// process (timestamps, client ids and local addresses in etcdctl's own
// log lines).
var ctlMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`"(cluster_id|member_id|raft_term)":("[0-9a-fA-F]+"|\d+)`), `"$1":ID`},
	{regexp.MustCompile(`"(ClusterID|MemberID|RaftTerm)" : ("[0-9a-fA-F]+"|[0-9a-fA-F]+)`), `"$1" : ID`},
	{regexp.MustCompile(`"ts":"[^"]*"`), `"ts":TS`},
	{regexp.MustCompile(`0x[0-9a-f]{6,}`), `0xADDR`},
	{regexp.MustCompile(`LocalAddr: '[^']*'`), `LocalAddr: 'LOCAL'`},
}

func normalizeCtl(s, endpoint string) string {
	s = strings.ReplaceAll(s, endpoint, "ENDPOINT")
	s = strings.ReplaceAll(s, strings.TrimPrefix(endpoint, "http://"), "ENDPOINT")
	for _, m := range ctlMasks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}
