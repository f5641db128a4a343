package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/router"
)

// deadEndpoint is a host:port nothing listens on.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestCtlFlags: cairn ranges takes etcdctl's client flags: -w simple, json
// and table; --endpoints without a scheme, tried in order past one that
// cannot be reached (but not past one that answers with an error);
// ETCDCTL_* variables for the flags not given; -h prints the usage and
// succeeds.
func TestCtlFlags(t *testing.T) {
	ranges := []router.RangeInfo{
		{ID: 1, End: "m", Generation: 1, Replicas: []uint64{0xab}, Leader: 0xab, Revision: 7, Closed: 9, Writes: 3, Keys: 4, Watchers: 2},
		{ID: 12, Start: "m", Generation: 2, Replicas: []uint64{0xab, 0xcd}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(ranges)
	}))
	defer srv.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer broken.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	dead := deadEndpoint(t)

	const summary = "2 ranges, 4 keys, 1 without a leader; leaders: ab 1\n"
	const simple = summary + "1, \"\", \"m\", 1, ab, ab, 4, 7, 9, 3, 2\n" +
		"12, \"m\", ∞, 2, none, ab,cd, 0, 0, 0, 0, 0\n"
	const table = summary +
		"+-------+-------+-----+-----+--------+----------+------+----------+--------+--------+----------+\n" +
		"| RANGE | START | END | GEN | LEADER | REPLICAS | KEYS | REVISION | CLOSED | WRITES | WATCHERS |\n" +
		"+-------+-------+-----+-----+--------+----------+------+----------+--------+--------+----------+\n" +
		"|     1 | \"\"    | \"m\" |   1 | ab     | ab       |    4 |        7 |      9 |      3 |        2 |\n" +
		"|    12 | \"m\"   | ∞   |   2 | none   | ab,cd    |    0 |        0 |      0 |      0 |        0 |\n" +
		"+-------+-------+-----+-----+--------+----------+------+----------+--------+--------+----------+\n"
	for _, tc := range []struct {
		name      string
		args, env []string
		want      string // "json": the ranges as JSON
	}{
		{"default simple, scheme optional", []string{"--endpoints", host}, nil, simple},
		{"dead endpoint first", []string{"--endpoints", dead + "," + srv.URL, "--dial-timeout", "1s"}, nil, simple},
		{"table", []string{"--endpoints", host, "-w", "table"}, nil, table},
		{"json", []string{"--endpoints=" + host, "--write-out=json"}, nil, "json"},
		{"environment", nil, []string{"ETCDCTL_ENDPOINTS=" + dead + "," + host, "ETCDCTL_WRITE_OUT=table"}, table},
		{"command line over environment", []string{"-w", "simple"}, []string{"ETCDCTL_ENDPOINTS=" + host, "ETCDCTL_WRITE_OUT=table"}, simple},
		{"--endpoint alias", []string{"--endpoint", srv.URL}, []string{"ETCDCTL_ENDPOINTS=" + dead}, simple},
	} {
		var out bytes.Buffer
		if err := rangesCommand(tc.args, tc.env, &out); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.want == "json" {
			var got []router.RangeInfo
			if err := json.Unmarshal(out.Bytes(), &got); err != nil || !reflect.DeepEqual(got, ranges) || strings.Count(out.String(), "\n") != 1 {
				t.Errorf("%s: %q (%v)", tc.name, out.String(), err)
			}
			continue
		}
		if out.String() != tc.want {
			t.Errorf("%s:\n%s\nwant\n%s", tc.name, out.String(), tc.want)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"every endpoint dead", []string{"--endpoints", dead + "," + dead, "--dial-timeout", "1s"}, "connection refused"},
		{"an error answer ends the command", []string{"--endpoints", broken.URL + "," + srv.URL}, "500"},
		{"unknown format", []string{"--endpoints", host, "-w", "yaml"}, "unsupported output format"},
		{"https to a plain server", []string{"--endpoints", "https://" + host}, "HTTPS"},
		{"unknown flag", []string{"--endpoints", host, "--bogus"}, "-h for usage"},
		{"argument", []string{"--endpoints", host, "extra"}, "unexpected argument"},
	} {
		var out bytes.Buffer
		if err := rangesCommand(tc.args, nil, &out); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestCtlHelp: -h and --help print the usage on stdout and exit 0, for
// every subcommand, as etcdctl's.
func TestCtlHelp(t *testing.T) {
	for _, args := range [][]string{
		{"ranges", "-h"}, {"ranges", "--help"}, {"range", "-h"}, {"range", "split", "-h"},
		{"range", "split", "--help"}, {"snapshot", "restore", "-h"}, {"snapshot", "-h"},
	} {
		cmd := exec.Command(binary, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "usage: cairn "+args[0]) || stderr.Len() != 0 {
			t.Errorf("cairn %s: %v, stdout %q, stderr %q", strings.Join(args, " "), err, out, stderr.String())
		}
	}
	var out bytes.Buffer
	if err := rangesCommand([]string{"-h"}, nil, &out); err != nil ||
		!strings.Contains(out.String(), "--endpoints") || !strings.Contains(out.String(), "ETCDCTL_ENDPOINTS") ||
		strings.Contains(out.String(), "--endpoint ") {
		t.Errorf("ranges -h: %v\n%s", err, out.String())
	}
}

// TestRangeSplitCtlFlags: cairn range split tries the endpoints in order
// past one that cannot be reached, takes one without a scheme, and prints
// the two ranges as table and as JSON (protojson, etcdctl's JSON of a
// response).
func TestRangeSplitCtlFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{Name: "m", DataDir: t.TempDir(), ListenClientURLs: []string{"http://127.0.0.1:0"},
		ListenPeerURLs: []string{"http://127.0.0.1:0"}, HeartbeatInterval: 20 * time.Millisecond,
		ElectionTimeout: 200 * time.Millisecond, Sharded: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	host := strings.TrimPrefix(n.ClientURLs()[0], "http://")
	endpoints := deadEndpoint(t) + "," + host

	var out bytes.Buffer
	if err := rangeCommand([]string{"split", "--endpoints", endpoints, "--dial-timeout", "1s", "-w", "table", "m"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	const table = "" +
		"+-------+-------+-----+-----+\n" +
		"| RANGE | START | END | GEN |\n" +
		"+-------+-------+-----+-----+\n" +
		"|     1 | \"\"    | \"m\" |   2 |\n" +
		"|     2 | \"m\"   | ∞   |   2 |\n" +
		"+-------+-------+-----+-----+\n"
	if out.String() != table {
		t.Fatalf("split -w table:\n%s\nwant\n%s", out.String(), table)
	}
	out.Reset()
	if err := rangeCommand([]string{"split", "t"}, []string{"ETCDCTL_ENDPOINTS=" + endpoints, "ETCDCTL_WRITE_OUT=json",
		"ETCDCTL_DIAL_TIMEOUT=1s"}, &out); err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Ranges []struct {
			ID         string `json:"id"`
			Start, End string
			Generation string `json:"generation"`
		} `json:"ranges"`
	}
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil || len(resp.Ranges) != 2 || resp.Ranges[0].ID != "2" ||
		resp.Ranges[1].ID != "3" || resp.Ranges[1].Start != "dA==" { // protojson: bytes in base64, uint64 as strings
		t.Fatalf("split -w json: %s (%v)", out.String(), err)
	}
}
