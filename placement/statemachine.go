package placement

import (
	"fmt"
	"io"
	"sync"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// StateMachine is the placement group's dragonboat state machine: a Table
// in memory, changed by the commands in the log and saved whole in
// snapshots (the state is small: a descriptor per range, a record per
// node). Entries are encoded placementpb.Commands; each entry's Result
// carries the encoded placementpb.Result.
//
// mu guards table: Update and RecoverFromSnapshot write, Lookup and
// SaveSnapshot read, and dragonboat may run Lookup alongside the others.
type StateMachine struct {
	mu    sync.RWMutex
	table *Table
	// onApply, if set, is called after each applied entry and recovered
	// snapshot, outside mu.
	onApply func()
}

// NewStateMachine is dragonboat's CreateStateMachineFunc for the placement
// group.
func NewStateMachine(shardID, replicaID uint64) sm.IStateMachine {
	return &StateMachine{table: NewTable()}
}

// NewStateMachineNotifying returns a CreateStateMachineFunc for the
// placement group whose state machine calls onApply after every entry it
// applies and every snapshot it recovers, from dragonboat's apply
// goroutine: onApply must not block (a member's map follower signals a
// channel of one). A change is readable (Lookup) when onApply is called.
func NewStateMachineNotifying(onApply func()) func(shardID, replicaID uint64) sm.IStateMachine {
	return func(uint64, uint64) sm.IStateMachine {
		return &StateMachine{table: NewTable(), onApply: onApply}
	}
}

// applied calls onApply, if set.
func (s *StateMachine) applied() {
	if s.onApply != nil {
		s.onApply()
	}
}

// Update applies one command. A command that does not decode is refused in
// its result; it never stops the replica.
func (s *StateMachine) Update(e sm.Entry) (sm.Result, error) {
	var cmd placementpb.Command
	var res *placementpb.Result
	if err := proto.Unmarshal(e.Cmd, &cmd); err != nil {
		res = &placementpb.Result{Error: fmt.Sprintf("placement: undecodable command: %v", err)}
	} else {
		s.mu.Lock()
		res = s.table.Apply(&cmd)
		s.mu.Unlock()
	}
	data, err := proto.Marshal(res)
	if err != nil {
		return sm.Result{}, fmt.Errorf("placement: encode result: %w", err)
	}
	s.applied()
	return sm.Result{Data: data}, nil
}

// Queries Lookup answers.
type (
	// LookupQuery asks for the range holding Key (*placementpb.RangeDescriptor, nil before bootstrap).
	LookupQuery struct{ Key []byte }
	// OverlappingQuery asks for the ranges over [Start, End) ([]*placementpb.RangeDescriptor).
	OverlappingQuery struct{ Start, End []byte }
	// StateQuery asks for the whole state (*placementpb.State).
	StateQuery struct{}
	// NodesQuery asks for the registered nodes ([]*placementpb.Node, by id).
	NodesQuery struct{}
	// BoundQuery asks for the oracle's persisted bound (mvcc.Revision).
	BoundQuery struct{}
	// ReplicaMemberQuery asks for the member holding replica Replica of
	// range Range (NodeID; 0 if the map names no such replica), without
	// copying the map: what a node registry's MemberOf asks.
	ReplicaMemberQuery struct {
		Range   RangeID
		Replica ReplicaID
	}
)

// Lookup answers a query on the current state.
func (s *StateMachine) Lookup(q interface{}) (interface{}, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch q := q.(type) {
	case LookupQuery:
		return s.table.Lookup(q.Key), nil
	case OverlappingQuery:
		return s.table.Overlapping(q.Start, q.End), nil
	case StateQuery:
		return s.table.State(), nil
	case NodesQuery:
		return s.table.Nodes(), nil
	case BoundQuery:
		return s.table.Bound(), nil
	case ReplicaMemberQuery:
		return s.table.replicaMember(q.Range, q.Replica), nil
	}
	return nil, fmt.Errorf("placement: unknown query %T", q)
}

// SaveSnapshot writes the whole state.
func (s *StateMachine) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	s.mu.RLock()
	st := s.table.State()
	s.mu.RUnlock()
	data, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("placement: encode snapshot: %w", err)
	}
	_, err = w.Write(data)
	return err
}

// RecoverFromSnapshot replaces the state with a snapshot's.
func (s *StateMachine) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("placement: read snapshot: %w", err)
	}
	var st placementpb.State
	if err := proto.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("placement: decode snapshot: %w", err)
	}
	s.mu.Lock()
	s.table.Load(&st)
	s.mu.Unlock()
	s.applied()
	return nil
}

// Close does nothing: the state lives in memory and in the log.
func (s *StateMachine) Close() error { return nil }
