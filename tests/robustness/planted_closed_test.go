//go:build cairn_planted_closed_pass

package robustness

import "testing"

// TestPlantedClosedPass: cairn built so that a range's closed revision is
// not capped below a prepared cross-range write (shard/planted_closed_on.go)
// runs a sharded scenario of four ranges under etcd's traffic, whose
// multi-key txns and range deletes cross them. The range's watch feed
// releases revisions above the prepared write before its commit at R: the
// check must fail.
func TestPlantedClosedPass(t *testing.T) {
	runPlantedCross(t, "cairn_planted_closed_pass", scenario{size: 1, profile: etcdMix, fault: noFault, seed: 7, sharded: true},
		"recorder: revision", "watch (client", "linearizable", "the history has")
}
