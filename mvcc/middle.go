package mvcc

import (
	"bytes"
	"encoding/binary"

	"github.com/cockroachdb/pebble/v2"
)

// middleSteps bounds MiddleKey's bisection: each step is one seek and one
// EstimateDiskUsage.
const middleSteps = 64

// MiddleKey returns a user key strictly inside the store's span (above
// its first key, below its end) with about half of the bytes the span's
// version records take on disk before it, the key at which a range too
// large splits into halves of about equal size; nil if the span holds
// fewer than two keys or nothing on disk yet.
//
// How: a bisection over the span's version keys, by pebble's
// EstimateDiskUsage of [span start, candidate]. Each step takes the
// byte-wise midpoint of the two keys bracketing half of the bytes,
// snaps it to a version key present in the span (one seek) and measures
// the bytes before it. EstimateDiskUsage reads only table metadata and
// the index blocks of the tables the bound cuts, so a step costs a few
// block reads however large the range; the steps stop once no key lies
// between the bracket (at most middleSteps: about log2 of the range's
// keys in practice). It is accurate to one data block (4 KiB, or one
// value larger than that), far inside 10% of a range above
// RangeMaxBytes, whatever the sizes of its values — unlike halving the
// live keys, which skewed value sizes throw off, or summing key and
// value sizes with an iterator, which reads half of the range's data.
// What it does not see: writes still in the memtable (DiskUsage, which
// decides that a range is too large, does not count them either).
func (s *Store) MiddleKey() ([]byte, error) {
	sp := s.Span()
	lo, hi := VersionBounds(sp)
	total, err := s.db.EstimateDiskUsage(lo, hi)
	if err != nil || total == 0 {
		return nil, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	// prefixAt is the user key prefix ('k' esc(key)) of the version
	// record the iterator is at, and the user key.
	prefixAt := func() (prefix, key []byte, err error) {
		p, k, _, err := decodeVersionKey(it.Key())
		return append([]byte(nil), p...), k, err
	}
	if !it.First() {
		return nil, it.Error()
	}
	a, _, err := prefixAt()
	if err != nil {
		return nil, err
	}
	if !it.Last() {
		return nil, it.Error()
	}
	b, bKey, err := prefixAt()
	if err != nil || bytes.Equal(a, b) {
		return nil, err // one key: nothing to split off
	}
	// Invariant: a < b are prefixes of keys in the span; a is the first
	// key or has less than half of the bytes before it; b is the last key
	// or has at least half before it. The answer is b.
	target := total / 2
	for range middleSteps {
		m := between(a, b)
		var c, cKey []byte
		if it.SeekGE(m) {
			if c, cKey, err = prefixAt(); err != nil {
				return nil, err
			}
		}
		if c != nil && bytes.Compare(c, a) <= 0 {
			// m fell among a's own versions: the key after a.
			c = nil
			if it.SeekGE(nextKeyBound(a)) {
				if c, cKey, err = prefixAt(); err != nil {
					return nil, err
				}
			}
		}
		if c == nil || bytes.Compare(c, b) >= 0 {
			// No key in [m, b): the one below m, if it is above a.
			if !it.SeekLT(m) {
				break
			}
			if c, cKey, err = prefixAt(); err != nil {
				return nil, err
			}
			if bytes.Compare(c, a) <= 0 {
				break // no key strictly between a and b
			}
		}
		before, err := s.db.EstimateDiskUsage(lo, c)
		if err != nil {
			return nil, err
		}
		if before < target {
			a = c
		} else {
			b, bKey = c, cKey
		}
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	return bKey, nil
}

// between returns a key strictly between a and b (a < b, neither a
// prefix of the other: version key prefixes never are): their common
// prefix, then the midpoint of the next 8 bytes of each, zero-padded.
//
//	"k" "a\x00\x01" and "k" "c\x00\x01" → "k" "b\x00\x80\x00…"
func between(a, b []byte) []byte {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	word := func(p []byte) uint64 {
		var buf [8]byte
		copy(buf[:], p[n:])
		return binary.BigEndian.Uint64(buf[:])
	}
	x, y := word(a), word(b) // y - x ≥ 2^56: their first bytes differ
	return binary.BigEndian.AppendUint64(append([]byte(nil), a[:n]...), x+(y-x)/2)
}
