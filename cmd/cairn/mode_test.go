package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node/testport"
)

// TestModeOfDataDir: sharded mode is the default, and a data directory
// keeps the mode it was created in. One created with --single-group (the
// default of earlier versions) starts again without the flag, in
// single-group mode with its data; started with --single-group=false it is
// refused with the flag to use. A sharded one started with --single-group
// is refused too.
func TestModeOfDataDir(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// member runs cairn on data with args, on fresh ports.
	member := func(data string, args ...string) (endpoint string, all []string) {
		endpoint = fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
		return endpoint, append([]string{"--data-dir", filepath.Join(dir, data), "--listen-client-urls", endpoint,
			"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t)),
			"--heartbeat-interval", "20", "--election-timeout", "200"}, args...)
	}
	// ranges is `cairn ranges` against endpoint.
	ranges := func(endpoint string) string {
		t.Helper()
		var out bytes.Buffer
		if err := rangesCommand([]string{"--endpoint", endpoint, "-w", "table"}, nil, &out); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	const singleGroup = "single-group mode"

	// Created in single-group mode, then started without the flag.
	ep, args := member("single", "--single-group")
	p := startCairn(t, dir, args...)
	if _, err := client(t, ep).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	p.kill()
	ep, args = member("single")
	p = startCairn(t, dir, args...)
	if out := ranges(ep); !strings.Contains(out, singleGroup) {
		t.Fatalf("a single-group data directory started without --single-group: `cairn ranges` says\n%s", out)
	}
	if got, err := client(t, ep).Get(ctx, "k"); err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("k in the single-group data directory started without the flag: %v, %v", got, err)
	}
	p.kill()
	_, args = member("single", "--single-group=false")
	refused(t, launch(t, dir, args...), "--single-group")

	// Created without the flag: sharded, and refused in single-group mode.
	ep, args = member("sharded")
	p = startCairn(t, dir, args...)
	if out := ranges(ep); strings.Contains(out, singleGroup) || !strings.Contains(out, "RANGE") {
		t.Fatalf("a new data directory without flags: `cairn ranges` says\n%s", out)
	}
	p.kill()
	_, args = member("sharded", "--single-group")
	refused(t, launch(t, dir, args...), "--single-group=false")
}

// refused waits, with a deadline, for p to exit with an error naming flag
// as the way to start its data directory.
func refused(t *testing.T, p *proc, flag string) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("cairn in a data directory of the other mode did not exit within 30s:\n%s", p.output())
	}
	out := p.output()
	if code := p.cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(out, "start it so ("+flag+")") {
		t.Fatalf("cairn in a data directory of the other mode: exit code %d, want an error naming %s:\n%s", code, flag, out)
	}
}
