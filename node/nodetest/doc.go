// Package nodetest starts in-process Cairn clusters for node's black-box
// tests: real node.Nodes (dragonboat NodeHosts, pebble, gRPC) on 127.0.0.1
// in the test's process, with fast raft timings.
//
//	c := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.Partitionable())
//	cli := c.Client(0)
//	c.Partition(1)           // member 1 hears nobody and nobody hears it
//	c.Heal()
//	c.Stop(2)                // closes member 2's node
//	c.Restart(2)             // its data directory and config again
//	nodetest.Eventually(t, "member 2 serves k", func() bool { ... })
//
// Members are numbered 0..size-1 in the order Start makes them (named m0,
// m1, ...; a one-member cluster's only member is named "test"); a member
// added with Join takes the next number. Every node and client is closed
// when the test ends (the nodes all at once), and each member's data
// directory is a temporary directory of the test unless DataDir names it.
//
// Sharing: subtests can share one cluster, each through c.For(t), which
// fails t on the harness's errors and closes the clients made through it
// when t ends; the members stay up until the test that started them ends.
//
// A one-member cluster is started as a lone node (no --initial-cluster,
// peer URL on port 0); a larger one is founded with etcd's
// --initial-cluster, every member started at once (each waits for a
// quorum), on peer ports from testport.
//
// Waiting: Eventually polls a condition until it holds or 20 seconds pass;
// WaitFor polls until a condition returns nil or the test's context ends,
// and fails with the condition's last error. Tests wait on conditions with
// these, never with a fixed sleep.
//
// Certificates: NewCA makes a test certificate authority whose Issue
// writes server-and-client certificates for 127.0.0.1 and localhost, for
// members and clients configured with TLS (node's, cmd/cairn's and
// tests/compat's tests share it).
//
// Concurrency: a Cluster belongs to the test's goroutine. Node, Client and
// the partition methods may be called from other goroutines while no
// Stop, Restart or Join runs.
//
// Non-goals: other processes (tests/compat starts the cairn binary), fault
// injection below the raft transport (disk faults, clock skew).
package nodetest
