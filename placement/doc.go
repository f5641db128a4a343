// Package placement holds the placement group's state: the range map, the
// node registry and the revision oracle (DESIGN.md, "Ranges, placement,
// membership" and "Keys, values, revisions").
//
// # Model
//
// Table is the placement group's deterministic state machine state: range
// descriptors (id, [start, end), generation, replicas, leader hint) that
// tile the key space, registered nodes, and the oracle's persisted bound.
// Commands (proto/placementpb) change it — bootstrap, split, leader hint,
// node registration, raising the bound — and a refused command changes
// nothing. A descriptor's generation grows with every change of its bounds,
// so a command or a router holding a stale descriptor is told apart.
//
// Oracle is the leader's revision allocator: it hands out revisions from
// memory under the persisted bound, asks for a new bound (one raft write)
// only when its window runs low, and a new leader starts above the
// persisted bound, so revisions are unique and increasing across leader
// changes, if not dense. The scripts in testdata/ walk through both.
//
// # Concurrency
//
// Neither Table nor Oracle is safe for concurrent use, neither starts
// goroutines nor reads the clock: the owner serializes them. StateMachine is the placement
// group's dragonboat state machine around a Table (commands from the log,
// the whole state in each snapshot; its own lock lets Lookup run beside
// Update).
//
// # Non-goals (yet)
//
// Allocator is the oracle's service on one replica of the running group:
// it serves revisions only while that replica leads, folds the requests
// that arrive during a round into the next one (one leadership check, and
// at most one bound raised through raft, per round), starts a new term's
// oracle above the bound it reads linearizably, and confirms leadership
// after each take so that revisions also increase in real time across
// leader changes. It owns one goroutine; Close stops it.
//
// Starting the placement group on the nodes, the scheduler (split by size
// and load, merge, moves) and merges are the sharded-mode issue's next
// steps. The package imports mvcc for its Revision type only.
package placement
