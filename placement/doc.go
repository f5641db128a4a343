// Package placement holds the placement group's state: the range map, the
// node registry and the revision oracle (DESIGN.md, "Ranges, placement,
// membership" and "Keys, values, revisions"), and a member's clients of
// it. PeerRegistry is the node registry as dragonboat's transport asks it:
// a replica's member and that member's peer address (recorded through raft,
// else seeded from --initial-cluster).
//
// # Model
//
// Table is the placement group's deterministic state machine state: range
// descriptors (id, [start, end), generation, replicas, leader hint) that
// tile the key space, registered nodes, open moves, open merges and the
// tombstones of merged ranges, and the oracle's persisted bound. Commands (proto/placementpb) change it — bootstrap,
// split, leader hint, node registration, raising the bound, a membership
// change under way, a range's replicas, a move's steps — and a refused
// command changes nothing and names its refusal (the Err sentinels of
// table.go). A descriptor's generation grows with every change of its
// bounds, so a command or a router holding a stale descriptor is told
// apart.
//
// A range's replicas are (member, replica id) pairs (replicas.go): ids
// are allocated by the Table, never reissued and never a member's id; a
// bootstrap with range_replicas places the founders round robin. Maps
// written before pairs read as pairs (m, m) — each replica's id its
// member's — and their commands replay as they did (testdata/legacy). A
// move (moves.go) takes one replica from one member to another in
// recorded steps, so that its driver resumes it after a crash. A merge
// (merges.go, docs/plan-merge.md) likewise: the right range of two
// neighbours whose replicas are voters on the same members merges into the
// left one, which keeps its id; the record holds back every other change
// of the two (ErrMerging) and any membership change, and the map changes
// only once the left range's log committed the merge (commit_merge: the
// left range to the right one's end, a Merged tombstone for the right
// one, which MergedInto follows through chains). MemberOf,
// ReplicaOf, Voters and Founders read a descriptor of any age.
//
// Oracle is the leader's revision allocator: it hands out revisions from
// memory under the persisted bound, asks for a new bound (one raft write)
// only when its window runs low, and a new leader starts above the
// persisted bound, so revisions are unique and increasing across leader
// changes, if not dense. The scripts in testdata/ walk through both.
//
// # The running group
//
// StateMachine is the placement group's dragonboat state machine around a
// Table (commands from the log, the whole state in each snapshot).
//
// Allocator is the oracle's service on one replica of the running group:
// it serves revisions only while that replica leads, folds the requests
// that arrive during a round into the next one (one leadership check, and
// at most one bound raised through raft, per round), starts a new term's
// oracle above the bound it reads linearizably, and confirms leadership
// after each take so that revisions also increase in real time across
// leader changes. A round ends with ErrNotLeader as soon as its replica
// stops leading, not at its timeout.
//
// A member reaches the group through two clients:
//
//   - OracleClient (client.go) hands out revisions: from the member's own
//     Allocator while its replica leads, otherwise from the leader's
//     member, folding the requests that wait meanwhile into one round
//     trip, abandoned for the new leader as soon as the member's replica
//     names one. Its OracleObserver (nil: none) hears of each round trip
//     and the revisions handed out, for the node's metrics.
//   - Client (mapclient.go) reads the state linearizably and proposes the
//     range map's commands over Raft, a small interface the member's
//     NodeHost satisfies: Bootstrap (once, by the founders; a restored
//     backup's revision is the bound, and it starts as one range),
//     RecordSplit (finding a split an earlier try or call recorded),
//     Reconfigure, ChangeReplicas, Add/Promote/RemoveReplica and
//     Begin/Advance/EndMove, Begin/Advance/Commit/EndMerge. It tries
//     again while the group has
//     no leader, until the caller's context ends, and returns refusals as
//     the sentinels. Its scripts in testdata/client run it over a fake
//     group around a real StateMachine.
//
// Membership (membership.go) walks a membership change of the cluster
// through the placement group and every range: adding a member (the range
// map names its replica of each range first, under an allocated id; each
// range's replicas compact their logs, so that it gets the range as a
// snapshot), removing one (the placement group, the member list, last),
// promoting a learner (the placement group last); the range map marks the
// change under way (no splits or merges meanwhile; a mark waits out an
// open merge) and records each range's
// replicas. It drives raft through a small
// interface the member's NodeHost satisfies, and reaches the member's own
// replicas and the other members through interfaces the member wires in;
// its scripts in testdata/members run it over fakes of them.
//
// # Concurrency
//
// Neither Table nor Oracle is safe for concurrent use, neither starts
// goroutines nor reads the clock: the owner serializes them.
// StateMachine's own lock lets Lookup run beside Update. Allocator owns
// one goroutine, which Close stops; OracleClient starts one only while
// round trips are under way; each round and round trip watches the leader
// with one more for its length; Client and Membership start none and keep
// no state. The four are safe for concurrent use.
//
// Merges are driven by MergeDriver (mergedriver.go: the steps in the
// ranges' raft groups, resumed from the map's record) on the placement
// leader's member, asked for by an operator (cairn range merge) or by the
// Scheduler (scheduler.go rule 6: two adjacent ranges small and cold
// together, their replicas moved onto the same members first; a merge the
// node refuses is passed to Scheduler.Refuse and not planned again until a
// range's generation changes).
//
// # Non-goals (yet)
//
// The map can place ranges on a subset of
// members and record moves, but members do not act on it yet: every
// member holds every range, under its member id. The package imports mvcc
// for its Revision type and shard for its id types only.
package placement
