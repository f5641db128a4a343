package mvcc

import (
	"bytes"
	"testing"
)

// FuzzVersionKey: the record key encoding round-trips and orders records by
// user key, then newest revision first.
func FuzzVersionKey(f *testing.F) {
	f.Add([]byte("a"), []byte("a\x00"), int64(2), int64(3))
	f.Add([]byte("\x00"), []byte(""), int64(1), int64(1))
	f.Add([]byte("a\x00\x01"), []byte("a\x00\x02"), int64(9), int64(1<<40))
	f.Fuzz(func(t *testing.T, k1, k2 []byte, r1, r2 int64) {
		if r1 < 0 || r2 < 0 {
			return
		}
		e1, e2 := versionKey(k1, Revision(r1)), versionKey(k2, Revision(r2))
		_, d1, dr1, err := decodeVersionKey(e1)
		if err != nil || !bytes.Equal(d1, k1) || dr1 != Revision(r1) {
			t.Fatalf("round trip of %q@%d: %q@%d %v", k1, r1, d1, dr1, err)
		}
		want := bytes.Compare(k1, k2)
		if want == 0 {
			switch {
			case r1 > r2:
				want = -1
			case r1 < r2:
				want = 1
			}
		}
		if got := bytes.Compare(e1, e2); got != want {
			t.Fatalf("order of %q@%d vs %q@%d: %d, want %d", k1, r1, k2, r2, got, want)
		}
		// Every version of k1 lies below keyBound(k2) exactly when k1 < k2.
		if (bytes.Compare(e1, keyBound(k2)) < 0) != (bytes.Compare(k1, k2) < 0) {
			t.Fatalf("keyBound(%q) misplaces %q", k2, k1)
		}
		if bytes.Compare(e1, nextKeyBound(keyPrefix(k1))) >= 0 {
			t.Fatalf("nextKeyBound(%q) below its own version", k1)
		}
	})
}
