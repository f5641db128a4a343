package mvcc

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestComparer: the comparer's split is consistent with its order over
// version prefixes (with escaped zero bytes and keys that prefix one
// another) and revision suffixes — the split of a prefix and a suffix is the
// prefix, keys order by prefix first and then by suffix — and every kind of
// record splits as documented. (pebble.CheckComparer also demands that a
// prefix stripped of leading bytes is a prefix, which only its synthetic
// prefixes of ingested files need; Cairn ingests none.)
func TestComparer(t *testing.T) {
	var prefixes, suffixes [][]byte
	for _, k := range []string{"", "a", "a\x00", "a\x00b", "ab", "b", "\x00", "\xff"} {
		prefixes = append(prefixes, keyPrefix([]byte(k)))
	}
	for _, r := range []Revision{1, 2, 255, 1 << 40} {
		v := versionKey(nil, r)
		suffixes = append(suffixes, v[len(v)-8:])
	}
	suffixes = append(suffixes, nil)
	for i, p := range prefixes {
		for j, s := range suffixes {
			k := append(append([]byte(nil), p...), s...)
			if n := comparer.Split(k); n != len(p) {
				t.Fatalf("Split(%q) = %d, want %d", k, n, len(p))
			}
			for i2, p2 := range prefixes {
				for j2, s2 := range suffixes {
					k2 := append(append([]byte(nil), p2...), s2...)
					want := comparer.Compare(p, p2)
					if want == 0 {
						want = comparer.ComparePointSuffixes(s, s2)
					}
					if got := comparer.Compare(k, k2); got != want {
						t.Fatalf("Compare(%q, %q) = %d, but prefixes and suffixes say %d (%d/%d %d/%d)", k, k2, got, want, i, j, i2, j2)
					}
				}
			}
		}
	}
	for _, tc := range []struct {
		key  []byte
		want int
	}{
		{versionKey([]byte("a\x00b"), 7), len(keyPrefix([]byte("a\x00b")))},
		{keyPrefix([]byte("ab")), len(keyPrefix([]byte("ab")))},
		{eventKey(5), len(eventKey(5))},
		{[]byte("mfoo"), 4},
		{[]byte{kindVersion, 'a'}, 2}, // a bound cut short: all prefix
	} {
		if got := splitKey(tc.key); got != tc.want {
			t.Errorf("splitKey(%q) = %d, want %d", tc.key, got, tc.want)
		}
	}
}

// TestOpenChecksComparer: a store refuses a pebble opened without
// PebbleOptions, whose prefix seeks would miss every version.
func TestOpenChecksComparer(t *testing.T) {
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(db, Options{ID: 1}); !errors.Is(err, errComparer) {
		t.Fatalf("Open on a default pebble: %v, want %v", err, errComparer)
	}
}
