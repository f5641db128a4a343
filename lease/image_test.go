package lease

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestImage: an image of two stores' leases for store 9 holds each
// store's own leases (with their TTLs and checkpoints), re-keyed to store
// 9, and not the shadow store 2 holds of store 1's lease; it attaches keys
// to those leases only, under store 9.
func TestImage(t *testing.T) {
	db := openTestDB(t)
	one, two := openStore(t, db, 1), openStore(t, db, 2)
	b := db.NewIndexedBatch()
	for _, step := range []func() error{
		func() error { _, err := one.Grant(b, 7, 60, epoch); return err },
		func() error { return one.Checkpoint(b, 7, 30) },
		func() error { _, err := two.Grant(b, -3, 90, epoch); return err },
		func() error { return two.Shadow(b, 7, 40) },
		func() error { return two.Attach(b, 7, [][]byte{[]byte("k")}) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	snap := db.NewSnapshot()
	defer snap.Close()
	im, err := NewImage(snap, []uint64{1, 2}, 9)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := im.Carried(func(k, v []byte) error {
		id, err := decodeRecordKey(9, k)
		if err != nil {
			return err
		}
		r, err := decodeRecord(v)
		got = append(got, fmt.Sprintf("%d ttl=%d remaining=%d", id, r.ttl, r.remaining))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[-3 ttl=90 remaining=0 7 ttl=60 remaining=30]" {
		t.Fatalf("image records %v", got)
	}
	if k, ok := im.Attach(7, []byte("k")); !ok || string(k) != string(attachKey(9, 7, []byte("k"))) {
		t.Fatalf("attach k to 7: %x, %v", k, ok)
	}
	if _, ok := im.Attach(8, []byte("k")); ok {
		t.Fatal("attached a key to a lease the image has not")
	}
}
