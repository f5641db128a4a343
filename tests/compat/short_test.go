//go:build !cairn_long

package compat

// long is unset without the build tag cairn_long: the seeded differential
// tests run CI's counts of sequences (make test), a quarter to a third of
// the full ones make test-long runs; each count still draws every kind of
// operation its test sends.
const long = false
