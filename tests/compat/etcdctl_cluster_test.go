package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/testport"
)

// TestEtcdctlCluster runs etcdctl's cluster and maintenance commands
// against a three-member etcd and a three-member Cairn and compares what
// they print. Ids, URLs, sizes, durations, hashes and raft counters differ
// between any two clusters, so they are masked; tables are compared cell
// by cell, rows in any order (members are listed by id).
func TestEtcdctlCluster(t *testing.T) {
	bin := buildEtcdctl(t)
	runCtlCluster(t, bin, startCairnCluster(t, 3))
}

// TestShardedEtcdctlCluster runs TestEtcdctlCluster's commands against a
// three-member sharded Cairn with four ranges (snapshot save writes every
// range at one revision).
func TestShardedEtcdctlCluster(t *testing.T) {
	bin := buildEtcdctl(t)
	eps := startCairnClusterWith(t, 3, func(c *node.Config) {
		c.Sharded = true
		c.InitialSplitKeys = [][]byte{[]byte("c"), []byte("k"), []byte("t")}
		if os.Getenv("CAIRN_DEBUG_LOG") != "" {
			c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("member", c.Name)
		}
	})
	runCtlCluster(t, bin, eps)
}

// ctlClusterStep is one etcdctl command of runCtlClusterSteps. Its
// arguments may name NOT-LEADER (the hex id of a member that does not
// lead), SNAPSHOT (a new file) or --peer-urls=NEW-PEER (a free address).
type ctlClusterStep struct {
	args []string
	all  bool // against every endpoint given, not the first one only
}

// ctlClusterSteps are TestEtcdctlCluster's commands.
var ctlClusterSteps = []ctlClusterStep{
	{[]string{"put", "k", "v"}, true},
	{[]string{"member", "list", "-w", "table"}, true},
	{[]string{"member", "list"}, true},
	{[]string{"endpoint", "status", "--cluster", "-w", "table"}, true},
	{[]string{"endpoint", "status"}, true},
	{[]string{"endpoint", "health", "--cluster"}, true},
	{[]string{"endpoint", "hashkv", "--cluster"}, true},
	{[]string{"alarm", "list"}, true},
	{[]string{"defrag"}, true},
	{[]string{"move-leader", "NOT-LEADER"}, true},
	{[]string{"snapshot", "save", "SNAPSHOT"}, false},
	{[]string{"member", "remove", "ffffffffffff"}, true},
	{[]string{"member", "update", "ffffffffffff", "--peer-urls=NEW-PEER"}, true},
	// Last: the follower moved keeps listening where it was, so the
	// group no longer reaches it (the quorum of two remains).
	{[]string{"member", "update", "NOT-LEADER", "--peer-urls=NEW-PEER"}, true},
	{[]string{"member", "list", "-w", "table"}, true},
}

// runCtlCluster runs TestEtcdctlCluster's commands against a three-member
// etcd and the Cairn cluster at cairn, and compares what they print.
func runCtlCluster(t *testing.T, bin string, cairn []string) {
	runCtlClusterSteps(t, bin, ctlClusterSteps, startEtcdCluster(t, 3), cairn)
}

// runCtlClusterSteps runs steps against an etcd and a Cairn cluster, each
// given as the client URLs etcdctl is to talk to (all of them or some),
// and compares what they print.
func runCtlClusterSteps(t *testing.T, bin string, steps []ctlClusterStep, etcd, cairn []string) {
	clusters := map[string][]string{"etcd": etcd, "cairn": cairn}
	for _, st := range steps {
		var want string
		for _, name := range []string{"etcd", "cairn"} {
			eps := clusters[name]
			args := slices.Clone(st.args)
			for i, a := range args {
				switch a {
				case "NOT-LEADER":
					args[i] = notLeader(t, bin, eps)
				case "SNAPSHOT":
					args[i] = filepath.Join(t.TempDir(), "snap.db")
				case "--peer-urls=NEW-PEER":
					args[i] = "--peer-urls=http://" + testport.Addr(t)
				}
			}
			targets := eps[:1]
			if st.all {
				targets = eps
			}
			code, stdout, stderr := runCtl(t, bin, targets, args)
			got := fmt.Sprintf("exit %d\n%s", code, strings.Join(maskCluster(stdout), "\n"))
			if name == "etcd" {
				want = got
			} else if got != want {
				t.Errorf("etcdctl %s:\netcd:\n%s\ncairn:\n%s\ncairn's stderr:\n%s", strings.Join(st.args, " "), indent(want), indent(got), indent(stderr))
			}
		}
	}
}

// runCtl runs etcdctl against endpoints and returns its exit code and stdout.
func runCtl(t *testing.T, bin string, endpoints, args []string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints=" + strings.Join(endpoints, ","), "--dial-timeout=10s", "--command-timeout=30s"}, args...)...)
	cmd.Env = ctlEnv()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), out.String(), errOut.String()
	}
	t.Fatalf("etcdctl %v: %v", args, err)
	return 0, "", ""
}

// notLeader returns the hex id of a member that does not lead.
func notLeader(t *testing.T, bin string, endpoints []string) string {
	t.Helper()
	_, out, _ := runCtl(t, bin, endpoints, []string{"endpoint", "status", "-w", "simple"})
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ", ")
		// endpoint, id, version, storage version, size, in use, %, quota, is leader, ...
		if len(f) > 8 && f[8] == "false" {
			return f[1]
		}
	}
	t.Fatalf("no follower in:\n%s", out)
	return ""
}

var clusterMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`(http://)?127\.0\.0\.1:\d+`), "URL"},
	// etcdctl prints some ids with %16x: an id with leading zero digits
	// comes padded with spaces.
	{regexp.MustCompile(` *\b[0-9a-f]{12,16}\b`), " ID"},
	{regexp.MustCompile(`\d+(\.\d+)? (B|kB|MB|GB)\b`), "SIZE"},
	{regexp.MustCompile(`\d+%`), "P%"},
	{regexp.MustCompile(`took( =)? [0-9.]+[a-zµ]+`), "took T"},
	{regexp.MustCompile(`[^ ]*snap\.db`), "FILE"},
	{regexp.MustCompile(`\b\d+\b`), "N"},
}

// maskCluster normalises etcdctl output: table rows become their trimmed
// cells joined with |, borders go, masks apply, and the lines are sorted.
func maskCluster(out string) []string {
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.ContainsAny(line, "┌├└") {
			continue
		}
		if strings.Contains(line, "│") {
			cells := strings.Split(strings.Trim(line, "│"), "│")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			line = strings.Join(cells, "|")
		}
		for _, m := range clusterMasks {
			line = m.re.ReplaceAllString(line, m.with)
		}
		lines = append(lines, line)
	}
	slices.Sort(lines)
	return lines
}

// startEtcdCluster starts size embedded etcd members founding one cluster
// and returns their client endpoints once all serve.
func startEtcdCluster(t *testing.T, size int) []string {
	t.Helper()
	cfgs := make([]*embed.Config, size)
	var initial []string
	for i := range size {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = true
		client, peer := mustURL(t, "http://"+testport.Addr(t)), mustURL(t, "http://"+testport.Addr(t))
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenMetricsUrls = nil
		cfg.InitialClusterToken = "etcdctl-cluster"
		cfgs[i] = cfg
		initial = append(initial, cfg.Name+"="+peer.String())
	}
	return startEmbedCluster(t, cfgs, initial)
}

// startCairnCluster starts size in-process Cairn members founding one
// cluster with etcd's flags and returns their client endpoints.
func startCairnCluster(t *testing.T, size int) []string {
	t.Helper()
	return startCairnClusterWith(t, size, nil)
}

// startCairnClusterWith is startCairnCluster with every member's config
// changed by edit (nil: none).
func startCairnClusterWith(t *testing.T, size int, edit func(*node.Config)) []string {
	t.Helper()
	var initial, peers []string
	for i := range size {
		peers = append(peers, "http://"+testport.Addr(t))
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peers[i]))
	}
	endpoints := make([]string, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i := range size {
		client := "http://" + testport.Addr(t)
		endpoints[i] = client
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			cfg := node.Config{
				Name: fmt.Sprintf("m%d", i), DataDir: t.TempDir(),
				ListenClientURLs: []string{client}, ListenPeerURLs: []string{peers[i]},
				InitialCluster: strings.Join(initial, ","), InitialClusterToken: "etcdctl-cluster",
			}
			if edit != nil {
				edit(&cfg)
			}
			n, err := node.Start(ctx, cfg)
			if err != nil {
				errs[i] = err
				return
			}
			t.Cleanup(func() { _ = n.Close() })
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return endpoints
}

// startEmbedCluster starts the embedded etcd members cfgs as one cluster
// founded by initial (name=peer URL each), waits until every member is
// ready and returns their client endpoints.
func startEmbedCluster(t *testing.T, cfgs []*embed.Config, initial []string) []string {
	t.Helper()
	var endpoints []string
	var es []*embed.Etcd
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		es = append(es, e)
		endpoints = append(endpoints, cfg.AdvertiseClientUrls[0].String())
	}
	for _, e := range es {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			t.Fatal(err)
		case <-time.After(startTimeout):
			t.Fatal("etcd cluster not ready")
		}
	}
	return endpoints
}
