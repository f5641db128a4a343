package mvcc

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestSplitOff: a store splits its span at a key into a child store at one
// revision. The child answers for the keys from the split key on — their
// current values, their past versions and their history of events — at the
// parent's revision and compaction; the parent keeps the rest and refuses
// keys it gave away; both spans survive a reopen.
func TestSplitOff(t *testing.T) {
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	parent, err := Open(db, Options{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	write := func(s *Store, fn func(b *Batch) error) error {
		b := s.NewBatch()
		defer b.Close()
		if err := fn(b); err != nil {
			return err
		}
		return b.Commit()
	}
	for _, k := range []string{"a", "m", "z", "m", "b"} {
		if err := write(parent, func(b *Batch) error { _, err := b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(k)}, 0); return err }); err != nil {
			t.Fatal(err)
		}
	}
	if err := write(parent, func(b *Batch) error { _, err := b.Compact(3); return err }); err != nil {
		t.Fatal(err)
	}
	if err := write(parent, func(b *Batch) error { _, err := b.SplitOff([]byte(""), 2); return err }); !errors.Is(err, ErrOutsideSpan) {
		t.Fatalf("split at the span's start: %v", err)
	}
	if err := write(parent, func(b *Batch) error { _, err := b.SplitOff([]byte("k"), 2); return err }); err != nil {
		t.Fatal(err)
	}
	child, err := Open(db, Options{ID: 2})
	if err != nil {
		t.Fatal(err)
	}
	keys := func(s *Store, rev int64) string {
		sp := s.Span()
		end := sp.End
		if end == nil {
			end = []byte{0}
		}
		resp, err := s.Range(&pb.RangeRequest{Key: append([]byte{}, sp.Start...), RangeEnd: end, Revision: rev})
		if err != nil {
			return err.Error()
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, fmt.Sprintf("%s@%d", kv.Key, kv.ModRevision))
		}
		return fmt.Sprint(out)
	}
	if got := keys(child, 0); got != "[m@5 z@4]" {
		t.Fatalf("child keys %s", got)
	}
	if got := keys(child, 4); got != "[m@3 z@4]" {
		t.Fatalf("child keys at 4: %s", got)
	}
	if got := keys(parent, 0); got != "[a@2 b@6]" {
		t.Fatalf("parent keys %s", got)
	}
	for _, s := range []*Store{parent, child} {
		if n, err := s.Keys(); err != nil || n != 2 {
			t.Errorf("store of %v counts %d live keys (%v), want 2", s.Span(), n, err)
		}
		if u, err := s.DiskUsage(); err != nil {
			t.Errorf("store of %v: disk usage %d, %v", s.Span(), u, err)
		}
	}
	if child.Rev() != parent.Rev() || child.CompactRev() != 3 {
		t.Fatalf("child at %d compacted %d; parent at %d", child.Rev(), child.CompactRev(), parent.Rev())
	}
	var history []string
	if err := child.Events(3, child.Rev(), func(rev Revision, evs []*mvccpb.Event) bool {
		for _, e := range evs {
			history = append(history, fmt.Sprintf("%s@%d", e.Kv.Key, rev))
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(history) != "[m@3 z@4 m@5]" {
		t.Fatalf("child history %v", history)
	}
	if err := write(parent, func(b *Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte("n"), Value: []byte("x")}, 0)
		return err
	}); !errors.Is(err, ErrOutsideSpan) {
		t.Fatalf("the parent took a key it gave away: %v", err)
	}
	if err := write(child, func(b *Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte("n"), Value: []byte("x")}, 7)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	parent, err = Open(db, Options{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if parent.Span().End == nil || string(parent.Span().End) != "k" || string(child.Span().Start) != "k" || child.Span().End != nil {
		t.Fatalf("spans after reopen: parent %q, child %q", parent.Span(), child.Span())
	}
}
