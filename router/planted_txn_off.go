//go:build !cairn_planted_txn_revision

package router

// plantedTxnSkew is 0 in every real build; see planted_txn_on.go.
const plantedTxnSkew = 0
