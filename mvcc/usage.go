package mvcc

// Figures about a store for the node's metrics. Neither is kept as the
// store writes: each is computed when asked, and the caller (the node's
// range statistics, refreshed every 15 s) decides how often to pay for it.

// Keys counts the live keys of the store's span at its current revision,
// as a CountOnly Range over the span would: a scan of the span, one seek
// per key, so its cost grows with the range's size.
func (s *Store) Keys() (int64, error) {
	v, err := s.readView(0)
	if err != nil {
		return 0, err
	}
	defer v.close()
	var n int64
	err = v.scan(v.span.Start, v.span.End, v.cur, func(*version) bool {
		n++
		return true
	})
	return n, err
}

// DiskUsage estimates the bytes the version records of the store's span
// take on disk (pebble's EstimateDiskUsage, which reads no records). The
// event log and the internal records, shared by every store of the DB or
// small, are left out.
func (s *Store) DiskUsage() (uint64, error) {
	sp := s.Span()
	hi := versionsEnd
	if sp.End != nil {
		hi = keyBound(sp.End)
	}
	return s.db.EstimateDiskUsage(keyBound(sp.Start), hi)
}
