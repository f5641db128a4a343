package main

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/version"
)

// TestVersion: `cairn --version` prints etcd's four lines, in etcd's
// order and words (tools read the etcd version from the first), with the
// etcd API version Cairn serves, then Cairn's own version; it exits 0
// without starting a member.
func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		t.Fatalf("cairn --version: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	want := []string{
		"etcd Version: " + version.Version,
		"Git SHA: ",
		"Go Version: " + runtime.Version(),
		"Go OS/Arch: " + runtime.GOOS + "/" + runtime.GOARCH,
		"Cairn Version: ",
	}
	if len(lines) != len(want) {
		t.Fatalf("cairn --version printed %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) || strings.HasSuffix(w, ": ") && len(lines[i]) == len(w) {
			t.Errorf("line %d: %q, want %q (and a value)", i+1, lines[i], w)
		}
	}
	if !strings.HasPrefix(version.Version, "3.7.") {
		t.Errorf("etcd API version %s: Cairn serves etcd v3.7's API", version.Version)
	}
}
