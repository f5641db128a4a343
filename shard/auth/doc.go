// Package auth is etcd's authentication state as a deterministic value:
// whether auth is enabled, the auth revision, users (a bcrypt hash, roles,
// the no-password option) and roles (key permissions), with etcd's rules
// for changing them and etcd's permission checks.
//
// State.Apply takes etcd's InternalRaftRequest carrying one auth request
// (passwords already hashed, as etcd's API layer sends them) and returns
// the next state and etcd's answer; a State is never modified, so the
// state machine that holds it (range 1 in single-group mode; see
// docs/plan-auth.md) swaps a pointer and readers keep their snapshot.
// Marshal and Unmarshal keep the whole state as one record: it is small.
//
// The revision starts at 1 and grows by one with every change but
// AuthEnable, as etcd's; a request whose permissions were checked at an
// older revision than the holder's current one is refused with
// ErrAuthOldRevision by whoever applies it.
//
// Non-goals: tokens, password hashing and the checks' placement (which
// request needs which permission) are the router's; this package never
// reads a clock or does I/O.
package auth
