package mvcc

import (
	"context"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestHashKVUnchangedByDefrag: what a node's Defragment does to the store
// (pebble flushes its memtable and compacts every level, dropping the
// records a compaction deleted) leaves HashKV unchanged at every revision
// it answers: the hash covers the records, not how pebble lays them out.
func TestHashKVUnchangedByDefrag(t *testing.T) {
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := Open(db, Options{ID: 1, Leases: anyLease{}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(fn func(b *Batch) error) {
		t.Helper()
		b := s.NewBatch()
		defer b.Close()
		if err := fn(b); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	// Overwrites, deletes and a compaction: records both live and removed.
	rev := Revision(1)
	for i := range 40 {
		rev++
		key := fmt.Sprintf("k%02d", i%7)
		if i%5 == 4 {
			write(func(b *Batch) error {
				_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(key)}, rev)
				return err
			})
			continue
		}
		write(func(b *Batch) error {
			_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(fmt.Sprint(key, "@", rev))}, rev)
			return err
		})
	}
	const compactAt = 20
	write(func(b *Batch) error { _, err := b.Compact(compactAt); return err })

	hashes := func() map[Revision]uint32 {
		t.Helper()
		out := map[Revision]uint32{}
		for r := Revision(compactAt); r <= rev; r++ {
			h, at, _, err := s.HashKV(r)
			if err != nil || at != r {
				t.Fatalf("HashKV(%d): at %d, %v", r, at, err)
			}
			out[r] = h
		}
		return out
	}
	before := hashes()
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Compact(context.Background(), []byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, true); err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	after := hashes()
	for r := Revision(compactAt); r <= rev; r++ {
		if before[r] != after[r] {
			t.Errorf("HashKV(%d) = %08x before the defragmentation, %08x after", r, before[r], after[r])
		}
	}
	if before[compactAt] == before[rev] {
		t.Errorf("HashKV(%d) = HashKV(%d): the test does not tell revisions apart", compactAt, rev)
	}
}
