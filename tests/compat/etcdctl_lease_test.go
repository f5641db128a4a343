package compat

import (
	"bufio"
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// leaseMasks hide what differs between two servers' leases: the ids they
// pick and the seconds left, which depend on when each was asked.
var leaseMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\b[0-9a-f]{10,16}\b`), "LEASE"},
	{regexp.MustCompile(`remaining\(\d+s\)`), "remaining(Ns)"},
	{regexp.MustCompile(`"Lease" : \d+`), `"Lease" : LEASE`},
}

func maskLease(s string) string {
	for _, m := range leaseMasks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}

// TestEtcdctlLease runs etcdctl's lease commands, put --lease, lock and
// elect (campaign and observe) against etcd and Cairn and compares what
// they print, lease ids and remaining seconds masked.
func TestEtcdctlLease(t *testing.T) {
	bin := buildEtcdctl(t)
	etcd, cairn := startPair(t)
	runCtlLease(t, bin, etcd, cairn, nil)
}

// runCtlLease runs TestEtcdctlLease's commands on etcd and on cairn and
// compares what they printed after mask (nil: none) hid on both sides
// what may differ by design.
func runCtlLease(t *testing.T, bin string, etcd, cairn *server, mask func(string) string) {
	t.Helper()
	if mask == nil {
		mask = func(s string) string { return s }
	}
	idRe := regexp.MustCompile(`lease ([0-9a-f]+) granted`)
	var outs [2][]string
	for i, s := range []*server{etcd, cairn} {
		ctl := func(args ...string) string {
			r := runEtcdctl(t, bin, s, ctlStep{args: args})
			return maskLease(r.String())
		}
		grant := runEtcdctl(t, bin, s, ctlStep{args: []string{"lease", "grant", "600"}})
		m := idRe.FindStringSubmatch(grant.stdout)
		if m == nil {
			t.Fatalf("%s: lease grant printed %q", s.name, grant.stdout)
		}
		id := m[1]
		outs[i] = append(outs[i],
			maskLease(grant.String()),
			ctl("put", "--lease="+id, "leased", "v"),
			ctl("put", "--lease=1234abcd", "leased", "v"),
			ctl("get", "leased", "-w", "fields"),
			ctl("lease", "timetolive", id),
			ctl("lease", "timetolive", id, "--keys"),
			ctl("lease", "list"),
			ctl("lease", "keep-alive", "--once", id),
			ctl("lease", "keep-alive", "--once", "1234abcd"),
			ctl("lease", "revoke", id),
			ctl("lease", "timetolive", id),
			ctl("lease", "revoke", id),
			ctl("get", "leased"),
			ctl("lock", "mylock", "echo", "held"),
		)
		// Streaming commands: keep-alive prints a line per renewal; elect
		// campaigns (prints the leader key and value, then holds); elect -l
		// observes. Each runs until the lines expected have come out.
		g2 := runEtcdctl(t, bin, s, ctlStep{args: []string{"lease", "grant", "600"}})
		id2 := idRe.FindStringSubmatch(g2.stdout)[1]
		outs[i] = append(outs[i],
			streamLines(t, bin, s, 1, "lease", "keep-alive", id2),
			streamLines(t, bin, s, 2, "elect", "myelection", "first"),
			streamLines(t, bin, s, 2, "lock", "mylock2"),
		)
		campaign := startStream(t, bin, s, "elect", "myelection2", "leader-value")
		campaign.lines(t, 2)
		outs[i] = append(outs[i], streamLines(t, bin, s, 2, "elect", "-l", "myelection2"))
		campaign.stop()
	}
	for j := range outs[0] {
		if w, g := mask(outs[0][j]), mask(outs[1][j]); w != g {
			t.Errorf("step %d:\n%s:\n%s\n%s:\n%s", j, etcd.name, indent(w), cairn.name, indent(g))
		}
	}
}

// stream is a running etcdctl whose stdout is read line by line.
type stream struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	out    chan string
	revs   *shardRevs // the server's (nil: revisions as they are)
}

func startStream(t *testing.T, bin string, s *server, args ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if s.revs != nil {
		args = s.revs.step(ctlStep{args: args}).args
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints=" + s.endpoint}, args...)...)
	cmd.Env = ctlEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st := &stream{cmd: cmd, cancel: cancel, out: make(chan string, 100), revs: s.revs}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			st.out <- sc.Text()
		}
		close(st.out)
	}()
	t.Cleanup(st.stop)
	return st
}

// lines waits (with a deadline) for n lines and returns them masked.
func (st *stream) lines(t *testing.T, n int) string {
	t.Helper()
	var got []string
	deadline := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case l, ok := <-st.out:
			if !ok {
				t.Fatalf("etcdctl %v ended after %q", st.cmd.Args, got)
			}
			got = append(got, st.revs.out(l))
		case <-deadline:
			t.Fatalf("etcdctl %v printed %q, want %d lines", st.cmd.Args, got, n)
		}
	}
	return maskLease(strings.Join(got, "\n"))
}

func (st *stream) stop() {
	st.cancel()
	_ = st.cmd.Wait()
}

// streamLines runs a streaming etcdctl command until it printed n lines.
func streamLines(t *testing.T, bin string, s *server, n int, args ...string) string {
	t.Helper()
	st := startStream(t, bin, s, args...)
	defer st.stop()
	return maskLease(strings.Join(args, " ")) + ":\n" + st.lines(t, n)
}
