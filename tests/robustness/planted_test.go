//go:build cairn_planted_stale_reads

package robustness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlantedBug: cairn built with a planted bug — linearizable reads
// served by the local replica without a read index — runs the partition
// scenario, where the cut-off member keeps answering reads from its stale
// state. The check must fail, and fail on linearizability; a checker that
// passes this build is broken.
func TestPlantedBug(t *testing.T) {
	runPlanted(t, scenario{size: 3, profile: etcdMix, seed: 7})
}

// TestPlantedBugSharded is TestPlantedBug on a sharded cluster of four
// ranges, checked with the sparse model: the planted bug serves a read
// within one range from the local replica there too.
func TestPlantedBugSharded(t *testing.T) {
	runPlanted(t, scenario{size: 3, profile: etcdMix, seed: 7, sharded: true})
}

func runPlanted(t *testing.T, s scenario) {
	bin := buildCairn(t, t.TempDir(), "cairn_planted_stale_reads")
	var partition fault
	for _, f := range faults {
		if f.name == "partition-follower" {
			partition = f
		}
	}
	out := t.TempDir()
	saved := *flagOut
	*flagOut = out
	defer func() { *flagOut = saved }()
	s.fault = partition
	err := runScenario(t, bin, s)
	if err == nil {
		t.Fatal("the checker passed a build that serves stale linearizable reads")
	}
	if !strings.Contains(err.Error(), "linearizable") && !strings.Contains(err.Error(), "linearization") {
		t.Fatalf("the check failed, but not on linearizability: %v", err)
	}
	// The failure report holds the seed and porcupine's visualisation.
	for _, f := range []string{"scenario.txt", "history.html"} {
		if _, err := os.Stat(filepath.Join(out, t.Name(), f)); err != nil {
			t.Errorf("failure report: %v", err)
		}
	}
	t.Logf("caught, as it must be: %v", err)
}
