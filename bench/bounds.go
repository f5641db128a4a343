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
	"put@cairn-sharded-3": "Latency, not CPU: a CPU profile of a member during put (64 clients) shows it busy under half the time, a third of that in syscalls — fdatasync of the raft log (12–13%) and socket writes (17%) — and 7% forwarding writes to the range's leader on another member. A put waits for its range's leader to stamp it (an oracle round trip, over gRPC unless that member leads the placement group), for raft to replicate and fsync it, and, two times in three, for one more gRPC hop; spread over 8 ranges, each range's batches are an eighth as large, so the same load takes more log writes and fsyncs than one group's. Every member holds all 8 ranges (24 raft replicas on two cores). Placing fewer replicas per range than members, and leaders with their clients, is the work that follows.",
}
