package mvcc

import (
	"bytes"
	"fmt"
	"math/rand"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestMiddleKeyByBytes: a store whose first 10 keys hold 100 KB values
// and whose next 1,000 hold 10 B ones has most of its bytes in the first
// 10 keys: MiddleKey falls among them (halving the keys would put it near
// the 505th), with the bytes before it within 10% of half of the span's.
// In a store split off the same DB (the keys from k0500 on), the middle
// key lies inside that store's own span, above its first key.
func TestMiddleKeyByBytes(t *testing.T) {
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := Open(db, Options{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if k, err := s.MiddleKey(); err != nil || k != nil {
		t.Fatalf("empty store: middle key %q, %v; want none", k, err)
	}
	rnd := rand.New(rand.NewSource(1))
	key := func(i int) []byte { return []byte(fmt.Sprintf("k%04d", i)) }
	for i := range 1010 {
		size := 10
		if i < 10 {
			size = 100 << 10
		}
		v := make([]byte, size)
		rnd.Read(v) // incompressible
		b := s.NewBatch()
		if _, err := b.Put(&pb.PutRequest{Key: key(i), Value: v}, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if err := db.Flush(); err != nil { // EstimateDiskUsage counts tables only
		t.Fatal(err)
	}
	mid, err := s.MiddleKey()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Compare(mid, key(1)) < 0 || bytes.Compare(mid, key(9)) > 0 {
		t.Fatalf("middle key %q; want one of k0001..k0009 (the 100 KB values)", mid)
	}
	// The values' bytes before the middle key, of all of them.
	var before, total int
	for i := range 1010 {
		size := 10
		if i < 10 {
			size = 100 << 10
		}
		total += size
		if bytes.Compare(key(i), mid) < 0 {
			before += size
		}
	}
	if d := before - total/2; d > total/10 || -d > total/10 {
		t.Fatalf("middle key %q has %d of %d value bytes before it; want within 10%% of half", mid, before, total)
	}
	t.Logf("middle key %q: %d of %d value bytes before it", mid, before, total)

	// A store over [k0500, ∞) of the same DB: its own keys only.
	b := s.NewBatch()
	if _, err := b.SplitOff(key(500), 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	child, err := Open(db, Options{ID: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	cm, err := child.MiddleKey()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Compare(cm, key(500)) <= 0 || bytes.Compare(cm, key(1009)) > 0 {
		t.Fatalf("child [k0500, ∞): middle key %q; want one above k0500", cm)
	}
	pm, err := s.MiddleKey()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Compare(pm, key(1)) < 0 || bytes.Compare(pm, key(9)) > 0 {
		t.Fatalf("parent [, k0500): middle key %q; want one of k0001..k0009", pm)
	}
}

// TestMiddleKeyUniform: 2,000 keys under one long common prefix, 1 KB
// values each, the last 100 of them under a prefix far above the rest in
// byte order: the middle key has within 10% of half of the keys before it.
func TestMiddleKeyUniform(t *testing.T) {
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := Open(db, Options{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewSource(2))
	var keys [][]byte
	for i := range 2000 {
		k := []byte(fmt.Sprintf("/registry/pods/default/pod-%06d", i))
		if i >= 1900 {
			k = []byte(fmt.Sprintf("\xff\xfe/other/%06d", i))
		}
		keys = append(keys, k)
		v := make([]byte, 1<<10)
		rnd.Read(v)
		b := s.NewBatch()
		if _, err := b.Put(&pb.PutRequest{Key: k, Value: v}, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	mid, err := s.MiddleKey()
	if err != nil {
		t.Fatal(err)
	}
	before := 0
	for _, k := range keys {
		if bytes.Compare(k, mid) < 0 {
			before++
		}
	}
	if before < 900 || before > 1100 {
		t.Fatalf("middle key %q has %d of 2000 keys before it; want 900..1100", mid, before)
	}
	t.Logf("middle key %q: %d of 2000 keys before it", mid, before)
}
