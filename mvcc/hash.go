package mvcc

import (
	"fmt"
	"hash/crc32"

	"github.com/cockroachdb/pebble/v2"
)

// HashKV hashes the store's history up to rev (0: the current revision):
// every version record of its span at or below rev, tombstones included,
// and the compacted revision. Replicas that applied the same log answer
// the same hash at the same revision, which is what etcd's HashKV lets
// operators check. It returns the hash, the revision hashed and the
// compacted revision.
func (s *Store) HashKV(rev Revision) (hash uint32, at, compact Revision, err error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	// Loaded after the snapshot: a compaction that committed before it is
	// reflected here, so a rev it removed is refused.
	cur, compact := s.Rev(), s.CompactRev()
	if rev == 0 {
		rev = cur
	}
	// A compaction may reach past the last write (sharded mode compacts
	// every range at one revision): nothing lies between.
	if rev > max(cur, compact) {
		return 0, 0, compact, fmt.Errorf("%w: %d (current revision %d)", ErrFutureRev, rev, cur)
	}
	if compact >= 0 && rev < compact {
		return 0, 0, compact, fmt.Errorf("%w: %d (compact revision %d)", ErrCompacted, rev, compact)
	}
	lo, hi := VersionBounds(s.Span())
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, 0, compact, fmt.Errorf("mvcc: new iterator: %w", err)
	}
	defer it.Close()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	for it.First(); it.Valid(); it.Next() {
		_, _, r, err := decodeVersionKey(it.Key())
		if err != nil {
			return 0, 0, compact, err
		}
		if r > rev {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, 0, compact, err
		}
		h.Write(it.Key())
		h.Write(v)
	}
	if err := it.Error(); err != nil {
		return 0, 0, compact, err
	}
	fmt.Fprintf(h, "compact=%d", compact)
	return h.Sum32(), rev, compact, nil
}
