//go:build cairn_planted_stale_reads

package router

// plantedStaleReads is a deliberate bug for the robustness suite's self
// test (tests/robustness, TestPlantedBug): with the build tag
// cairn_planted_stale_reads, linearizable ranges are served from the local
// replica without a read index, as serializable ones, so a member cut off
// from the leader answers with stale data. The checker must catch it.
const plantedStaleReads = true
