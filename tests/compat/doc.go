// Package compat holds Cairn's compatibility tests against etcd itself. It
// is its own module (github.com/cairn-kv/cairn/tests/compat) so that the
// server module does not depend on etcd's server, and it has no code of its
// own: everything is in the _test.go files.
//
// The model is differential testing: the same requests go to an embedded
// etcd (go.etcd.io/etcd/server/v3/embed, the version pinned in go.mod) and to
// an in-process Cairn (node.Start), and the answers must be the same, field
// by field, apart from what names the server (cluster id, member id, raft
// term).
//
//   - TestDifferential runs seeded random sequences of KV operations (puts,
//     ranges with every option, deletes, txns with nested txns, compactions,
//     bad input) through go.etcd.io/etcd/client/v3 on one etcd and one Cairn,
//     in lockstep, so that revisions stay equal and can be compared too.
//     Sequence N uses seed N. A failure prints the seed, the op index, the
//     request and both answers; -seed=N replays sequences 1..N (the servers
//     are shared, so a sequence's answers depend on the ones before it) and
//     logs every op of sequence N with -v. -self compares etcd with a second
//     etcd, which checks the harness itself: it must pass.
//   - TestEtcdctl builds etcdctl at the version pinned here and runs the same
//     command lines against a fresh etcd and a fresh Cairn, comparing exit
//     code, stdout and stderr after masking what names the server.
//
// Invariant: the two servers see exactly the same requests in the same order
// (the generator reads only etcd's answers), so a run is a deterministic
// function of the seeds and of etcd's behaviour.
//
// Non-goals: leases other than 0 and a missing one (etcd chooses lease ids),
// watch, auth, cluster membership, and anything that depends on timing.
//
// Run with: cd tests/compat && go test -count=1 ./...
package compat
