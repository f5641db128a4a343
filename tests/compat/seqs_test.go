package compat

// seqs is a seeded test's default number of sequences: ci in CI, full
// under the build tag cairn_long (long). A flag given on the command line
// overrides either.
func seqs[N int | int64](ci, full N) N {
	if long {
		return full
	}
	return ci
}
