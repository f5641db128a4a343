//go:build !cairn_planted_closed_pass

package shard

// plantedClosedPass is false in every real build; see planted_closed_on.go.
const plantedClosedPass = false
