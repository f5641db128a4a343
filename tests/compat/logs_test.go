package compat

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/testport"
)

// TestLogLines: Cairn's log lines (node.NewLogger, what cmd/cairn logs
// with) are etcd's: embedded etcd logging to a file with its defaults and
// Cairn doing the same, each line starts with the same keys in the same
// order (level, ts, [logger,] caller, msg), with the same time layout and
// level names, and both write "ready to serve client requests".
func TestLogLines(t *testing.T) {
	dir := t.TempDir()
	etcdLog, cairnLog := filepath.Join(dir, "etcd.log"), filepath.Join(dir, "cairn.log")

	cfg := embed.NewConfig()
	cfg.Name = "etcd"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogOutputs = []string{etcdLog}
	cfg.UnsafeNoFsync = true
	client := mustURL(t, "http://"+testport.Addr(t))
	peer := mustURL(t, "http://"+testport.Addr(t))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatal(err)
	case <-time.After(startTimeout):
		t.Fatal("etcd not ready")
	}
	e.Close()

	log, closeLog, err := node.NewLogger(node.LogConfig{Outputs: []string{cairnLog}})
	if err != nil {
		t.Fatal(err)
	}
	startCairnWith(t, "cairn", func(c *node.Config) { c.Logger = log })
	t.Cleanup(func() { _ = closeLog() })

	ts := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d{4})$`)
	heads := func(file string) map[string]bool {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		heads := map[string]bool{}
		ready := false
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%s: not JSON: %q", file, line)
			}
			keys := lineKeys(t, line)
			i := slices.Index(keys, "msg")
			if i < 0 {
				t.Fatalf("%s: no msg: %q", file, line)
			}
			heads[strings.Join(keys[:i+1], " ")] = true
			if s, _ := m["ts"].(string); !ts.MatchString(s) {
				t.Errorf("%s: ts %q", file, s)
			}
			if l := m["level"]; !slices.Contains([]any{"debug", "info", "warn", "error"}, l) {
				t.Errorf("%s: level %v", file, l)
			}
			ready = ready || m["msg"] == "ready to serve client requests"
		}
		if !ready {
			t.Errorf("%s: no readiness line", file)
		}
		return heads
	}
	etcd, cairn := heads(etcdLog), heads(cairnLog)
	const plain = "level ts caller msg"
	if !etcd[plain] || !cairn[plain] {
		t.Errorf("lines without a logger name: etcd's start %v, Cairn's %v; want %q", etcd, cairn, plain)
	}
	for h := range cairn {
		if h != plain && h != "level ts logger caller msg" {
			t.Errorf("Cairn line starts %q; etcd's start %v", h, etcd)
		}
	}
	for h := range etcd {
		if h != plain && h != "level ts logger caller msg" {
			t.Errorf("etcd line starts %q: Cairn's handler does not know this layout", h)
		}
	}
}

// lineKeys returns the top-level keys of a JSON object line in order.
func lineKeys(t *testing.T, line string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %q", line)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
	}
	return keys
}
