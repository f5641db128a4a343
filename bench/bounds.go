package main

// bounds says, for each target the report checks, what a CPU profile of
// Cairn (`--enable-pprof`, /debug/pprof/profile during the scenario) shows
// bounds it on the reference machine (2 vCPU, client and servers sharing
// them). The report prints the entry of every target it marks FAIL. Keep
// these current: re-profile when the numbers move.
var bounds = map[string]string{
	"put":                 "Per put, Cairn's apply looks the key up before writing it (a prefix seek into pebble's memtable and, through bloom filters, its tables: about a quarter of the server's CPU), because it keeps no in-memory index of keys — the price of its RSS (a tenth of etcd's at 10M keys). gRPC and protobuf take about a fifth, the Go runtime (GC, scheduling) about a sixth; dragonboat's log fsync is one per batch, as etcd's WAL. The client takes about half the machine: the no-op ceiling is only ~2× etcd, so 1.5× etcd would leave almost nothing for storage.",
	"txn-put":             "As put: a one-op txn is a put with a compare step; the lookup before the write and gRPC dominate.",
	"range-linearizable":  "Each read waits for a read index (dragonboat batches them, one heartbeat round per batch) and then seeks pebble; etcd answers from its in-memory btree and bbolt's mmap. With the client on the same two cores, the ceiling is ~2.7× etcd.",
	"lease-keepalive":     "Keepalives are answered by the lessor in memory on the leader, as etcd's are; the stream and gRPC costs dominate both.",
	"watch-latency":       "An event reaches a watcher after the apply batch that holds it commits to pebble: under 1,000 puts/s the apply batches are larger than etcd's (dragonboat hands the state machine everything committed since the last call), which adds a batch's apply time to the tail.",
	"put@3":               "Three processes on two cores: dragonboat replicates over TCP and each member fsyncs its log; CPU, not the network, is the bound, and each member also pays the lookup before the write.",
	"put@cairn-sharded-3": "Not profiled yet; from the design as it stands: every member holds all 8 ranges (24 raft replicas on two cores, each with its heartbeats and its own log fsyncs, where single-group has 3), a put reaching a member that does not lead its range (two in three) takes one more gRPC hop to the leader, every stamped batch asks the revision oracle, over gRPC unless the range's leader also leads the placement group, and idle ranges publish their closed revision to the other members every 50 ms. Sharding pays off when ranges have fewer replicas than there are members and more cores than two; placing replicas and leaders (and batching oracle requests per node) is the work that follows.",
}
