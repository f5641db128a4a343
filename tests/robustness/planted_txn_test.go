//go:build cairn_planted_txn_revision

package robustness

import "testing"

// TestPlantedTxnRevision: cairn built to commit the last participant of
// every cross-range transaction at R+1 while the rest of it, and its
// answer, are at R (router/planted_txn_on.go) runs a sharded scenario of
// four ranges under etcd's traffic, whose multi-key txns and range deletes
// cross them. The check must fail: the recorder sees a revision no
// request answered with, a read or a watch sees half a transaction.
func TestPlantedTxnRevision(t *testing.T) {
	runPlantedCross(t, "cairn_planted_txn_revision", scenario{size: 1, profile: etcdMix, fault: noFault, seed: 7, sharded: true},
		"linearizable", "which no request answered", "the history has it at", "recorder: revision", "watch (client")
}
