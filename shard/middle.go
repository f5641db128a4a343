package shard

// MiddleKey is a key strictly inside the range with about half of its
// versions' bytes on disk before it (mvcc.Store.MiddleKey: a bisection by
// pebble's disk usage estimates, reading no records), for the placement
// scheduler's split by size; nil if the range holds fewer than two keys.
func (s *StateMachine) MiddleKey() ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.store == nil {
		return nil, ErrClosed
	}
	return s.store.MiddleKey()
}
