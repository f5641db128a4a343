package robustness

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSubsetKill9 is TestShardedKill9 on five members holding each of the
// four ranges on three of them (--range-replicas 3, issue 21), two of them
// killed one by one before all five at once: every acknowledged write is
// there afterwards, read through every member (also those holding no
// replica of its range), and `cairn check` finds every replica of every
// range holding the same data at one revision (exit 0).
func TestSubsetKill9(t *testing.T) {
	c := runShardedKill9(t, 5, 2, "--range-replicas", "3")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The command's own timeout for hashing every replica is 60s.
	cmd := exec.CommandContext(ctx, c.members[0].bin, "check", "--endpoints", strings.Join(c.endpoints(), ","))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cairn check after kill -9: %v\n%s", err, out)
	}
	// One line per replica: four ranges on three members each.
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 12 {
		t.Fatalf("cairn check printed %d replicas, want 12:\n%s", len(lines), out)
	}
	t.Logf("cairn check:\n%s", out)
}
