package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
)

// TestConfigFile: --config-file reads etcd's YAML schema (testdata/
// etcd.conf.yml, which etcd itself loads: tests/compat) into the same
// node.Config the flags give; the TLS maps become the TLS flags, empty values and false for an ignored
// flag are left out, an unknown key is a warning; the other flags and
// ETCD_* variables are ignored, as etcd does, whether the file comes from
// the command line or ETCD_CONFIG_FILE.
func TestConfigFile(t *testing.T) {
	const file = "testdata/etcd.conf.yml"
	want := noFlags
	want.Name, want.DataDir = "m1", "/var/lib/m1"
	want.ListenClientURLs = []string{"http://10.0.0.1:2379", "http://127.0.0.1:2379"}
	want.AdvertiseClientURLs = []string{"http://m1:2379"}
	want.ListenPeerURLs = []string{"http://10.0.0.1:2380"}
	want.InitialAdvertisePeerURLs = []string{"http://m1:2380"}
	want.InitialCluster, want.InitialClusterState, want.InitialClusterToken = "m1=http://m1:2380,m2=http://m2:2380", "existing", "tok"
	want.QuotaBackendBytes, want.MaxRequestBytes, want.MaxTxnOps = 8<<30, 10<<20, 1024
	want.AutoCompactionMode, want.AutoCompactionRetention = "revision", "1000"
	want.HeartbeatInterval, want.ElectionTimeout, want.SnapshotCount = 50*time.Millisecond, 500*time.Millisecond, 5000
	want.WatchProgressNotifyInterval = 30 * time.Second
	want.GRPCKeepAliveMinTime, want.GRPCKeepAliveInterval, want.GRPCKeepAliveTimeout = 10*time.Second, time.Hour, 30*time.Second
	want.EnablePprof = true
	wantLog := node.LogConfig{Level: slog.LevelDebug, Format: "console", Outputs: []string{"stderr", "/var/log/m1.log"},
		RotationJSON: node.DefaultLogRotationJSON}
	want.ClientTLS.CertFile = "/etc/m1.crt"
	want.PeerTLS.TrustedCAFile, want.PeerTLS.AllowedCNs = "/etc/ca.crt", []string{"m"}
	wantIgnored := []string{"max-snapshots=5"}

	for _, tc := range []struct{ args, env []string }{
		{[]string{"--name", "other", "--config-file", file, "--log-level", "error"}, []string{"ETCD_DATA_DIR=/elsewhere"}},
		{nil, []string{"ETCD_CONFIG_FILE=" + file, "ETCD_NAME=other"}},
	} {
		o, err := parseFlags(tc.args, tc.env)
		if err != nil {
			t.Fatalf("%v %v: %v", tc.args, tc.env, err)
		}
		if !reflect.DeepEqual(o.cfg, want) {
			t.Errorf("%v %v: config\n got %+v\nwant %+v", tc.args, tc.env, o.cfg, want)
		}
		if !reflect.DeepEqual(o.log, wantLog) {
			t.Errorf("%v %v: log %+v, want %+v", tc.args, tc.env, o.log, wantLog)
		}
		var ignored []string
		for _, f := range o.ignored {
			ignored = append(ignored, f.name+"="+f.value)
			if f.source != "config file "+file {
				t.Errorf("%s: source %q", f.name, f.source)
			}
		}
		slices.Sort(ignored)
		if !slices.Equal(ignored, wantIgnored) {
			t.Errorf("ignored %q, want %q", ignored, wantIgnored)
		}
		var msgs []string
		for _, n := range o.notes {
			msgs = append(msgs, fmt.Sprint(n.msg, n.attrs))
		}
		if len(o.notes) != 2 || !strings.HasPrefix(o.notes[0].msg, "loaded server configuration, other configuration command line flags") ||
			o.notes[1].level != slog.LevelWarn || !slices.Contains(o.notes[1].attrs, any("unknown-to-etcd")) {
			t.Errorf("notes %q", msgs)
		}
	}

	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, args := range [][]string{
		{"--config-file", filepath.Join(dir, "missing.yml")},
		{"--config-file", write("bad.yml", "name: [unclosed")},
		{"--config-file", write("badvalue.yml", "heartbeat-interval: fast")},
		{"--config-file", write("map.yml", "name: {a: b}")},
		{"--config-file", write("tls.yml", "client-transport-security: yes")},
	} {
		if _, err := parseFlags(args, nil); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
