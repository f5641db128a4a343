package compat

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
)

// TestEtcdctlMemberAddNotStarted adds a member that is never started to a
// healthy three-member etcd and to a three-member sharded Cairn with six
// ranges, with etcdctl's default timeouts (5 s a command), then removes it
// and then the endpoint's own member (issue 24, gap 1): on both, every
// command succeeds and the member list shows the new member unstarted.
// Cairn answers the add once the member is in the placement group, not
// after adding it to every range.
func TestEtcdctlMemberAddNotStarted(t *testing.T) {
	bin := buildEtcdctl(t)
	clusters := map[string][]string{
		"etcd": startEtcdCluster(t, 3),
		"cairn": startCairnClusterWith(t, 3, func(c *node.Config) {
			c.Sharded = true
			c.InitialSplitKeys = [][]byte{[]byte("b"), []byte("d"), []byte("f"), []byte("k"), []byte("t")}
			if os.Getenv("CAIRN_DEBUG_LOG") != "" {
				c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("member", c.Name)
			}
		}),
	}
	added := regexp.MustCompile(`Member +([0-9a-f]+) added to cluster`) // etcdctl pads the id to 16 places
	for _, name := range []string{"etcd", "cairn"} {
		eps := clusters[name]
		run := func(args ...string) string {
			t.Helper()
			// etcd refuses changes until its members have been connected
			// for a while after start ("unhealthy cluster"): wait that out.
			deadline := time.Now().Add(30 * time.Second)
			start := time.Now()
			code, out, errOut := runCtlDefault(t, bin, eps[0], args)
			for code != 0 && strings.Contains(errOut, "unhealthy cluster") && time.Now().Before(deadline) {
				time.Sleep(500 * time.Millisecond)
				start = time.Now()
				code, out, errOut = runCtlDefault(t, bin, eps[0], args)
			}
			if code != 0 {
				t.Fatalf("%s: etcdctl %s: exit %d after %v\n%s%s", name, strings.Join(args, " "), code, time.Since(start), out, errOut)
			}
			return out
		}
		out := run("member", "add", "newmember", "--peer-urls", "http://localhost:123")
		m := added.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: member add printed %q", name, out)
		}
		newID := m[1]
		list := run("member", "list")
		if want := newID + ", unstarted, , http://localhost:123, , false"; !strings.Contains(list, want) {
			t.Errorf("%s: member list lacks %q:\n%s", name, want, list)
		}
		if n := strings.Count(strings.TrimSpace(list), "\n") + 1; n != 4 {
			t.Errorf("%s: member list shows %d members, want 4:\n%s", name, n, list)
		}
		run("member", "remove", newID)
		status := run("endpoint", "status")
		self := strings.Split(strings.TrimSpace(status), ", ")[1]
		// A member removing itself may stop before it answers (etcd:
		// "server stopped"); the member list below shows whether it left.
		// Sharded Cairn answers once the member has left the member list,
		// and removes its replicas of the ranges after.
		if code, out, errOut := runCtlDefault(t, bin, eps[0], []string{"member", "remove", self}); code != 0 &&
			!strings.Contains(errOut, "server stopped") {
			t.Fatalf("%s: etcdctl member remove %s (itself): exit %d\n%s%s", name, self, code, out, errOut)
		}
		// The members left may be electing (the removed member may have
		// led): a few tries.
		for try := 0; ; try++ {
			code, out, errOut := runCtlDefault(t, bin, strings.Join(eps[1:], ","), []string{"member", "list"})
			if code == 0 {
				list = out
				break
			}
			if try == 3 {
				t.Fatalf("%s: member list after the removals: exit %d\n%s", name, code, errOut)
			}
		}
		if strings.Contains(list, self) || strings.Contains(list, newID) {
			t.Errorf("%s: member list after both removals:\n%s", name, list)
		}
	}
}

// runCtlDefault runs etcdctl against endpoint with its default dial and
// command timeouts, and returns its exit code, stdout and stderr.
func runCtlDefault(t *testing.T, bin, endpoint string, args []string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints=" + endpoint}, args...)...)
	cmd.Env = ctlEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("etcdctl %v: %v", args, err)
	return 0, "", ""
}
