// Package testport hands out 127.0.0.1 ports for tests that must name a port
// before anything listens on it (peer URLs in an initial cluster, a process
// started with flags).
//
// Asking the kernel for port 0 and closing the listener is racy: the kernel
// hands the same range to the local end of every outgoing connection, so a
// busy test binary (raft transports, gRPC clients) can take the port before
// the server binds it. Ports from this package come from below the ephemeral
// range, and each is held by a file lock for the life of the process that got
// it, so test binaries running in parallel never pick the same one.
package testport
