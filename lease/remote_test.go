package lease

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestLeaseAcrossStores walks a lease homed in store 1 with keys in store
// 2 through its life: registration at the home, a shadow in store 2 with
// its attachment, revoke at the home leaving the registration pending, the
// shadow's revoke returning its keys and refusing a late put, the
// registration done, and the id granted again with a newer registration
// generation making a new shadow — each step surviving a reopen of both
// lessors.
func TestLeaseAcrossStores(t *testing.T) {
	db := openTestDB(t)
	home, other := openStore(t, db, 1), openStore(t, db, 2)
	commit := func(fn func(b *pebble.Batch) error) {
		t.Helper()
		b := db.NewIndexedBatch()
		if err := fn(b); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	reopen := func() {
		home, other = openStore(t, db, 1), openStore(t, db, 2)
	}
	commit(func(b *pebble.Batch) error { _, err := home.Grant(b, 7, 60, epoch); return err })
	if err := home.Register(db.NewIndexedBatch(), 8, 2); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("register an unknown lease: %v", err)
	}
	commit(func(b *pebble.Batch) error { return home.Register(b, 7, 2) })
	commit(func(b *pebble.Batch) error {
		if err := other.Shadow(b, 7, 40); err != nil {
			return err
		}
		return other.Attach(b, 7, [][]byte{[]byte("k1"), []byte("k2")})
	})
	reopen()
	if !other.LeaseExists(7) || len(other.Leases()) != 0 {
		t.Fatalf("a shadow exists for puts but is no lease of its store: exists=%v leases=%v", other.LeaseExists(7), other.Leases())
	}
	if keys, err := other.ShadowKeys(7); err != nil || fmt.Sprintf("%s", keys) != "[k1 k2]" {
		t.Fatalf("shadow keys %s, %v", keys, err)
	}
	if p, err := home.PendingRevokes(); err != nil || len(p) != 0 {
		t.Fatalf("pending revokes of a live lease: %v, %v", p, err)
	}
	commit(func(b *pebble.Batch) error { _, err := home.Revoke(b, 7); return err })
	reopen()
	if p, err := home.PendingRevokes(); err != nil || fmt.Sprint(p) != "map[7:[2]]" {
		t.Fatalf("pending revokes after the revoke: %v, %v", p, err)
	}
	if _, err := home.Grant(db.NewIndexedBatch(), 7, 60, epoch); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("grant the id of a lease whose revoke is under way: %v", err)
	}
	var keys [][]byte
	commit(func(b *pebble.Batch) (err error) { keys, err = other.RevokeShadow(b, 7, 45); return err })
	if fmt.Sprintf("%s", keys) != "[k1 k2]" {
		t.Fatalf("revoked shadow keys %s", keys)
	}
	reopen()
	if err := other.Shadow(db.NewIndexedBatch(), 7, 40); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("a late put with the revoked lease: %v", err)
	}
	if other.LeaseExists(7) {
		t.Fatal("the revoked shadow still exists")
	}
	commit(func(b *pebble.Batch) error { return home.Unregister(b, 7, 2) })
	reopen()
	if p, err := home.PendingRevokes(); err != nil || len(p) != 0 {
		t.Fatalf("pending revokes when done: %v, %v", p, err)
	}
	commit(func(b *pebble.Batch) error { _, err := home.Grant(b, 7, 60, epoch); return err })
	commit(func(b *pebble.Batch) error { return home.Register(b, 7, 2) })
	commit(func(b *pebble.Batch) error { return other.Shadow(b, 7, 55) })
	reopen()
	if !other.LeaseExists(7) {
		t.Fatal("the lease granted again has no shadow")
	}
	// A router that still knows the old registration is refused, and
	// registers again.
	if err := other.Shadow(db.NewIndexedBatch(), 7, 40); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("the revoked generation once the lease is back: %v", err)
	}
}

func openStore(t *testing.T, db *pebble.DB, id uint64) *Lessor {
	t.Helper()
	l, err := Open(db, Options{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestSplitOffMovesAttachments: a split moves the attachments of the keys
// it gives away to the child's lessor, as shadows of their leases (homed
// in the parent, or shadows there already, keeping their generation), and
// copies the tombstones; the parent keeps the rest.
func TestSplitOffMovesAttachments(t *testing.T) {
	db := openTestDB(t)
	parent := openStore(t, db, 1)
	b := db.NewIndexedBatch()
	if _, err := parent.Grant(b, 7, 60, epoch); err != nil {
		t.Fatal(err)
	}
	if err := parent.Attach(b, 7, [][]byte{[]byte("k1"), []byte("m2"), []byte("z3")}); err != nil {
		t.Fatal(err)
	}
	if err := parent.Shadow(b, 9, 40); err != nil {
		t.Fatal(err)
	}
	if err := parent.Attach(b, 9, [][]byte{[]byte("q4")}); err != nil {
		t.Fatal(err)
	}
	if _, err := parent.RevokeShadow(b, 11, 50); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	b = db.NewIndexedBatch()
	ids, err := parent.SplitOff(b, []byte("m"), nil, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids) != "[7 9]" {
		t.Fatalf("child holds keys of %v", ids)
	}
	child := openStore(t, db, 3)
	for id, want := range map[ID]string{7: "[m2 z3]", 9: "[q4]"} {
		keys, err := child.ShadowKeys(id)
		if err != nil || fmt.Sprintf("%s", keys) != want {
			t.Fatalf("child's keys of %d: %s, %v", id, keys, err)
		}
	}
	if err := child.Shadow(db.NewIndexedBatch(), 11, 1); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("the revoked lease in the child: %v", err)
	}
	st, err := func() (Status, error) { parent.Promote(epoch, 0); return parent.TimeToLive(7, epoch, true) }()
	if err != nil || fmt.Sprintf("%s", st.Keys) != "[k1]" {
		t.Fatalf("parent's keys of 7: %s, %v", st.Keys, err)
	}
}

// TestAbsorbThenRevokeShadow: a lease revoked at its home while a range
// holding keys of it (a shadow) is merged into its left neighbour. The
// revoke meant for the absorbed range reaches the absorbing one and
// deletes the keys of both, leaves a tombstone that refuses a late put,
// and survives a reopen; where the absorbing range is the home itself, the
// home's revoke done before the merge leaves the absorbed keys a shadow
// that the late revoke finds.
func TestAbsorbThenRevokeShadow(t *testing.T) {
	db := openTestDB(t)
	home, left, right := openStore(t, db, 1), openStore(t, db, 2), openStore(t, db, 3)
	commit := func(fn func(b *pebble.Batch) error) {
		t.Helper()
		b := db.NewIndexedBatch()
		defer b.Close()
		if err := fn(b); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	commit(func(b *pebble.Batch) error { _, err := home.Grant(b, 7, 60, epoch); return err })
	commit(func(b *pebble.Batch) error { return home.Register(b, 7, 2) })
	commit(func(b *pebble.Batch) error { return home.Register(b, 7, 3) })
	commit(func(b *pebble.Batch) error {
		if err := left.Shadow(b, 7, 40); err != nil {
			return err
		}
		return left.Attach(b, 7, [][]byte{[]byte("k1")})
	})
	commit(func(b *pebble.Batch) error {
		if err := right.Shadow(b, 7, 41); err != nil {
			return err
		}
		return right.Attach(b, 7, [][]byte{[]byte("m1"), []byte("m2")})
	})
	commit(func(b *pebble.Batch) error { _, err := home.Revoke(b, 7); return err })
	commit(func(b *pebble.Batch) error { return left.Absorb(b, 3) })
	// The fan-out revokes in the left range for both registrations; the
	// first finds every key, the second nothing.
	var keys [][]byte
	commit(func(b *pebble.Batch) (err error) { keys, err = left.RevokeShadow(b, 7, 41); return err })
	if fmt.Sprintf("%s", keys) != "[k1 m1 m2]" {
		t.Fatalf("revoked keys %s, want [k1 m1 m2]", keys)
	}
	commit(func(b *pebble.Batch) (err error) { keys, err = left.RevokeShadow(b, 7, 41); return err })
	if len(keys) != 0 {
		t.Fatalf("the second revoke found keys %s", keys)
	}
	left = openStore(t, db, 2)
	if left.LeaseExists(7) {
		t.Fatal("the revoked shadow exists after a reopen")
	}
	if err := left.Shadow(db.NewIndexedBatch(), 7, 41); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("a late put with the revoked lease: %v", err)
	}

	// The home absorbs a range whose shadow of a lease the home revoked
	// before the merge.
	next := openStore(t, db, 4)
	commit(func(b *pebble.Batch) error { _, err := home.Grant(b, 8, 60, epoch); return err })
	commit(func(b *pebble.Batch) error { return home.Register(b, 8, 4) })
	commit(func(b *pebble.Batch) error {
		if err := next.Shadow(b, 8, 50); err != nil {
			return err
		}
		return next.Attach(b, 8, [][]byte{[]byte("z1")})
	})
	commit(func(b *pebble.Batch) error { _, err := home.Revoke(b, 8); return err })
	commit(func(b *pebble.Batch) error { return home.Absorb(b, 4) })
	home = openStore(t, db, 1)
	if _, ok := home.Lookup(8); ok || !home.LeaseExists(8) {
		t.Fatal("the revoked lease is not a shadow at the home after the merge")
	}
	commit(func(b *pebble.Batch) (err error) { keys, err = home.RevokeShadow(b, 8, 50); return err })
	if fmt.Sprintf("%s", keys) != "[z1]" {
		t.Fatalf("the home's late revoke found %s, want [z1]", keys)
	}
}
