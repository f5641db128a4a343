package robustness

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/tests/v3/robustness/client"
)

// The self tests of the cross-range planted bugs (planted_txn_test.go,
// planted_closed_test.go, each behind its build tag) share this: cairn
// built with the bug runs a sharded scenario whose traffic crosses ranges,
// and the test passes only if the checker reports the failure.

// noFault injects nothing: the planted bug is the fault, and the cluster
// must keep running with it (a bug that stops the cluster would be caught
// by the progress wait, not by the checker).
var noFault = fault{name: "none", sizes: []int{1, 3}, sharded: true,
	inject: func(context.Context, *cluster, *client.ClientSet, *rand.Rand) error { return nil }}

// runPlantedCross builds cairn with tag, runs s on it, and passes only if
// the check fails with a verdict containing one of caught.
func runPlantedCross(t *testing.T, tag string, s scenario, caught ...string) {
	start := time.Now()
	bin := buildCairn(t, t.TempDir(), tag)
	out := t.TempDir()
	saved := *flagOut
	*flagOut = out
	defer func() { *flagOut = saved }()
	err := runScenario(t, bin, s)
	if err == nil {
		t.Fatalf("the checker passed a build with the planted bug %s", tag)
	}
	for _, not := range []string{"fault or progress", "last put"} {
		if strings.Contains(err.Error(), not) {
			t.Fatalf("the cluster stopped serving, the checker did not judge it: %v", err)
		}
	}
	found := false
	for _, c := range caught {
		found = found || strings.Contains(err.Error(), c)
	}
	if !found {
		t.Fatalf("the check failed, but not with any of %q: %v", caught, err)
	}
	if _, err := os.Stat(filepath.Join(out, t.Name(), "scenario.txt")); err != nil {
		t.Errorf("failure report: %v", err)
	}
	t.Logf("caught in %v, as it must be: %v", time.Since(start).Round(time.Second), err)
}
