package lease

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The Lessor is what mvcc asks about leases.
var _ interface{ LeaseExists(id int64) bool } = (*Lessor)(nil)

func TestMinTTLFor(t *testing.T) {
	for _, c := range []struct {
		ticks     int
		heartbeat time.Duration
		want      int64
	}{
		{10, 100 * time.Millisecond, 2}, // etcd's defaults: 1.5 s → 2
		{10, time.Second, 15},
		{1, 100 * time.Millisecond, 1}, // 1 tick (integer 3/2) of 100 ms → 1
		{20, 100 * time.Millisecond, 3},
	} {
		if got := MinTTLFor(c.ticks, c.heartbeat); got != c.want {
			t.Errorf("MinTTLFor(%d, %s) = %d, want %d", c.ticks, c.heartbeat, got, c.want)
		}
	}
	if DefaultMinTTL != MinTTLFor(10, 100*time.Millisecond) {
		t.Errorf("DefaultMinTTL is not etcd's default")
	}
}

func TestRevokeNeedsIndexedBatch(t *testing.T) {
	db := openTestDB(t)
	l := openTestLessor(t, db)
	b := db.NewBatch()
	defer b.Close()
	if _, err := l.Grant(b, 1, 10, epoch); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Revoke(b, 1); !errors.Is(err, ErrBatchNotIndexed) {
		t.Fatalf("revoke in an unindexed batch: %v", err)
	}
	if !l.LeaseExists(1) {
		t.Fatal("a refused revoke removed the lease")
	}
}

// Two stores share a pebble DB; each sees only its own records, and
// RecordBounds holds exactly its store's records.
func TestStoresAreSeparate(t *testing.T) {
	db := openTestDB(t)
	for _, id := range []uint64{1, 2, ^uint64(0)} {
		l, err := Open(db, Options{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		b := db.NewIndexedBatch()
		if _, err := l.Grant(b, ID(id&0xff), 10, epoch); err != nil {
			t.Fatal(err)
		}
		if err := l.Attach(b, ID(id&0xff), [][]byte{[]byte("k")}); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint64{1, 2, ^uint64(0)} {
		l, err := Open(db, Options{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Leases(); len(got) != 1 || got[0].ID != ID(id&0xff) {
			t.Errorf("store %d after reopen: %v", id, got)
		}
		lo, hi := RecordBounds(id)
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for it.First(); it.Valid(); it.Next() {
			if !bytes.HasPrefix(it.Key(), storePrefix(id)) {
				t.Errorf("store %d bounds hold %q", id, it.Key())
			}
			n++
		}
		it.Close()
		if n != 2 {
			t.Errorf("store %d bounds hold %d records, want 2", id, n)
		}
	}
}

// The largest id's attachments are bounded too.
func TestAttachBoundsOfExtremeIDs(t *testing.T) {
	db := openTestDB(t)
	l := openTestLessor(t, db)
	ids := []ID{-1 << 63, -1, 1, 1<<63 - 1}
	b := db.NewIndexedBatch()
	defer b.Close()
	for _, id := range ids {
		if _, err := l.Grant(b, id, 10, epoch); err != nil {
			t.Fatal(err)
		}
		if err := l.Attach(b, id, [][]byte{[]byte("k"), {0xff, 0xff}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		keys, err := l.Revoke(b, id)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmtKeys(keys); got != `k \xff\xff` {
			t.Errorf("revoke %d: keys %s", id, got)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(record{ttl: 10, remaining: 4}))
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeRecord(r), data) {
			// Varints have one canonical encoding only when minimal; a
			// non-minimal one decodes but must still round-trip its value.
			if r2, err := decodeRecord(encodeRecord(r)); err != nil || r2 != r {
				t.Fatalf("round trip of %x: %v %v", data, r2, err)
			}
		}
	})
}

// TestDropStore: DropStore deletes every record of one store — leases,
// attachments, shadows — and no record of the stores next to it (the
// largest id included), so a lessor reopened on the dropped store is empty
// and the others are as they were.
func TestDropStore(t *testing.T) {
	db := openTestDB(t)
	ids := []uint64{1, 2, 3, ^uint64(0)}
	for _, id := range ids {
		l, err := Open(db, Options{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		b := db.NewIndexedBatch()
		if _, err := l.Grant(b, 7, 10, epoch); err != nil {
			t.Fatal(err)
		}
		if err := l.Attach(b, 7, [][]byte{[]byte("k"), []byte("\xff")}); err != nil {
			t.Fatal(err)
		}
		if err := l.Shadow(b, 9, 1); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	count := func() map[uint64]int {
		n := map[uint64]int{}
		for _, id := range ids {
			lo, hi := RecordBounds(id)
			it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
			if err != nil {
				t.Fatal(err)
			}
			for it.First(); it.Valid(); it.Next() {
				n[id]++
			}
			it.Close()
		}
		return n
	}
	before := count()
	for _, dropped := range []uint64{2, ^uint64(0)} {
		b := db.NewBatch()
		if err := DropStore(b, dropped); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	after := count()
	for _, id := range ids {
		want := before[id]
		if id == 2 || id == ^uint64(0) {
			want = 0
		}
		if before[id] == 0 || after[id] != want {
			t.Errorf("store %d: %d records before the drops, %d after, want %d", id, before[id], after[id], want)
		}
		l, err := Open(db, Options{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(l.Leases()) + len(l.Shadows()); (got == 0) != (want == 0) {
			t.Errorf("store %d reopened: %d leases and shadows, want none: %t", id, got, want == 0)
		}
	}
}
