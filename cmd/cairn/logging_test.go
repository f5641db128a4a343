package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/testport"
)

// TestLogFlags: etcd's logging flags land in node.LogConfig, from the
// command line or the environment; outputs are kept once each, in order.
func TestLogFlags(t *testing.T) {
	o, err := parseFlags(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (node.LogConfig{RotationJSON: node.DefaultLogRotationJSON}); !reflect.DeepEqual(o.log, want) {
		t.Errorf("no flags: %+v, want %+v", o.log, want)
	}
	want := node.LogConfig{Format: "console", Outputs: []string{"/var/log/a", "stderr"}, Rotate: true,
		RotationJSON: `{"maxsize": 5}`}
	for _, tc := range []struct{ args, env []string }{
		{[]string{"--log-format", "console", "--log-outputs", "/var/log/a, stderr,/var/log/a", "--enable-log-rotation",
			"--log-rotation-config-json", `{"maxsize": 5}`}, nil},
		{nil, []string{"ETCD_LOG_FORMAT=console", "ETCD_LOG_OUTPUTS=/var/log/a,stderr", "ETCD_ENABLE_LOG_ROTATION=true",
			`ETCD_LOG_ROTATION_CONFIG_JSON={"maxsize": 5}`}},
	} {
		o, err := parseFlags(tc.args, tc.env)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(o.log, want) || len(o.ignored) != 0 {
			t.Errorf("%v %v: %+v (ignored %v), want %+v", tc.args, tc.env, o.log, o.ignored, want)
		}
	}
}

// etcdTS is etcd's "ts" layout, 2006-01-02T15:04:05.000000Z0700.
var etcdTS = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d{4})$`)

// TestLogOutputsFile: `cairn --log-outputs=<file> --log-level=debug`
// writes etcd's lines to the file: every line a JSON object that starts
// with etcd's keys (level, ts, [logger,] caller, msg) and etcd's time
// layout, dragonboat's and pebble's lines among them, range 1's leader
// election at info; and nothing else goes to stderr. A bad logging flag
// stops cairn before it starts.
func TestLogOutputsFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cairn.log")
	cport, pport := testport.Port(t), testport.Port(t)
	p := launch(t, dir, "--log-outputs", file, "--log-level", "debug", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", cport),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"--heartbeat-interval", "20", "--election-timeout", "200")
	deadline := time.Now().Add(30 * time.Second)
	for tick := time.NewTicker(20 * time.Millisecond); ; <-tick.C {
		if data, _ := os.ReadFile(file); strings.Contains(string(data), "ready to serve client requests") {
			tick.Stop()
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("cairn exited before it was ready; stderr:\n%s", p.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no readiness line in %s within 30s; stderr:\n%s", file, p.output())
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("cairn did not exit on SIGTERM")
	}
	if out := p.output(); out != "" {
		t.Errorf("stderr is not empty with --log-outputs=<file>:\n%s", out)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var dragonboat, pebble, elected bool
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		keys := orderedKeys(t, line)
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		want := []string{"level", "ts", "caller", "msg"}
		if m["logger"] != nil {
			want = []string{"level", "ts", "logger", "caller", "msg"}
		}
		if len(keys) < len(want) || !slices.Equal(keys[:len(want)], want) {
			t.Fatalf("line starts with %q, want etcd's %q: %s", keys, want, line)
		}
		if ts, _ := m["ts"].(string); !etcdTS.MatchString(ts) {
			t.Fatalf("ts %q is not etcd's layout: %s", ts, line)
		}
		if lvl := m["level"]; !slices.Contains([]any{"debug", "info", "warn", "error"}, lvl) {
			t.Fatalf("level %v: %s", lvl, line)
		}
		name, _ := m["logger"].(string)
		dragonboat = dragonboat || strings.HasPrefix(name, "dragonboat.")
		pebble = pebble || name == "pebble"
		elected = elected || m["msg"] == "elected leader" && m["level"] == "info" && m["range"] == 1.0
	}
	if !dragonboat || !pebble || !elected {
		t.Errorf("dragonboat's lines %v, pebble's %v, range 1's election at info %v; log:\n%s", dragonboat, pebble, elected, data)
	}

	// A logging flag cairn cannot honour is refused at once.
	for _, args := range [][]string{
		{"--log-outputs", "default,stdout"},
		{"--log-format", "xml"},
		{"--enable-log-rotation"},
	} {
		if err := run(t.Context(), args, nil, os.Stdout, os.Stderr); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// orderedKeys returns the top-level keys of a JSON object line in order.
func orderedKeys(t *testing.T, line string) []string {
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
