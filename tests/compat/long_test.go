//go:build cairn_long

package compat

// long is set by the build tag cairn_long (make test-long): the seeded
// differential tests run their full counts of sequences instead of CI's.
const long = true
