//go:build cairn_planted_txn_revision

package router

// plantedTxnSkew is a deliberate bug for the robustness suite's self test
// (tests/robustness, TestPlantedTxnRevision): with the build tag
// cairn_planted_txn_revision, the coordinator of a cross-range transaction
// takes two revisions, R and R+1, and commits its last participant at R+1
// while the others, the primary's record and the answer say R. The second
// revision is reserved, so revisions stay unique and the cluster keeps
// running; the transaction is simply not atomic at one revision. The
// checker must catch it.
const plantedTxnSkew = 1
