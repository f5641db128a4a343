//go:build cairn_planted_closed_pass

package shard

// plantedClosedPass is a deliberate bug for the robustness suite's self
// test (tests/robustness, TestPlantedClosedPass): with the build tag
// cairn_planted_closed_pass, a range's locks no longer cap its closed
// revision (lockTable.limit is unbounded), so the closed revision, the
// watch hub's hold and compaction pass a prepared cross-range write, and
// the commit at R is applied though the range has closed past R (its
// check against the published closed revision is skipped, so that the
// transaction still resolves and the cluster keeps running). The checker
// must catch it.
const plantedClosedPass = true
