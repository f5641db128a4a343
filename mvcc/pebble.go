package mvcc

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// PebbleOptions sets what the store needs of the pebble it lives in: a
// comparer that knows where a version record's key ends and its revision
// begins, and bloom filters on those keys, so that reading a key that does
// not exist (every first put of a key) is answered by a filter instead of a
// read of every level. Every pebble a Store opens on must be opened with
// them (Open checks).
//
//	'k' esc(key) ^rev  →  prefix 'k' esc(key), suffix ^rev
//	other records     →  the whole key is the prefix
func PebbleOptions(o *pebble.Options) *pebble.Options {
	if o == nil {
		o = &pebble.Options{}
	}
	o.Comparer = comparer
	for i := range o.Levels {
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		o.Levels[i].FilterType = pebble.TableFilter
	}
	return o
}

// comparer orders keys bytewise, as pebble's default does; it differs in
// Split (see PebbleOptions) and, to keep every key it writes whole, in not
// shortening separators.
var comparer = &pebble.Comparer{
	Compare:              bytes.Compare,
	Equal:                bytes.Equal,
	ComparePointSuffixes: bytes.Compare,
	CompareRangeSuffixes: bytes.Compare,
	AbbreviatedKey:       pebble.DefaultComparer.AbbreviatedKey,
	FormatKey:            pebble.DefaultComparer.FormatKey,
	Separator:            func(dst, a, _ []byte) []byte { return append(dst, a...) },
	Successor:            func(dst, a []byte) []byte { return append(dst, a...) },
	ImmediateSuccessor:   func(dst, a []byte) []byte { return append(append(dst, a...), 0) },
	Split:                splitKey,
	Name:                 "cairn.mvcc.v1",
}

// splitKey returns the length of k's prefix: for a version record, up to
// and including the terminator of the escaped user key (0x00 0x01, which
// appears nowhere else in it); for anything else, all of k.
func splitKey(k []byte) int {
	if len(k) == 0 || k[0] != kindVersion {
		return len(k)
	}
	for i := 1; i+1 < len(k); i++ {
		if k[i] == 0 {
			if k[i+1] == 1 {
				return i + 2
			}
			i++ // 0x00 0xff: an escaped zero byte
		}
	}
	return len(k)
}

var errComparer = errors.New("mvcc: the pebble DB was not opened with mvcc.PebbleOptions")

// checkComparer verifies that db splits version keys as the store needs.
func checkComparer(db *pebble.DB) error {
	b := db.NewIndexedBatch()
	defer b.Close()
	if err := b.Set(versionKey([]byte("probe"), 1), nil, nil); err != nil {
		return err
	}
	it, err := b.NewIter(nil)
	if err != nil {
		return fmt.Errorf("mvcc: %w", err)
	}
	defer it.Close()
	if !it.SeekPrefixGE(versionKey([]byte("probe"), 2)) {
		return errComparer
	}
	return nil
}
