//go:build !cairn_planted_stale_reads

package router

// plantedStaleReads is false in every real build; see planted_on.go.
const plantedStaleReads = false
