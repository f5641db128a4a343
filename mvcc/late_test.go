package mvcc

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestCommitAt: a cross-range transaction's commit applies at a revision
// below the store's when other keys were written since; two stores of one
// DB (two participants on one member) commit at the same revision and each
// keeps its own events there; a commit meeting a newer version of a key it
// writes is refused and changes nothing.
func TestCommitAt(t *testing.T) {
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	left, err := Open(db, Options{ID: 1, Span: Span{Start: []byte("a"), End: []byte("m")}})
	if err != nil {
		t.Fatal(err)
	}
	right, err := Open(db, Options{ID: 2, Span: Span{Start: []byte("m")}})
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
	put := func(k, v string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v)}}}
	}
	del := func(k, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte(end)}}}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(write(left, func(b *Batch) error {
		_, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{put("a", "1"), put("b", "1"), put("c", "1")}}, 10)
		return err
	}))
	must(write(left, func(b *Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte("d"), Value: []byte("1")}, 30)
		return err
	}))
	must(write(right, func(b *Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte("x"), Value: []byte("1")}, 12)
		return err
	}))

	// The commit at 20, below left's revision 30.
	must(write(left, func(b *Batch) error {
		resp, err := b.CommitAt(&pb.TxnRequest{Success: []*pb.RequestOp{put("a", "2"), del("b", "c")}}, 20)
		if err == nil && resp.Header.Revision != 20 {
			err = fmt.Errorf("commit answered revision %d", resp.Header.Revision)
		}
		if err == nil && b.Rev() != 30 {
			err = fmt.Errorf("batch revision %d after a commit below it", b.Rev())
		}
		return err
	}))
	// The same transaction's commit in the other store, above its revision.
	must(write(right, func(b *Batch) error {
		_, err := b.CommitAt(&pb.TxnRequest{Success: []*pb.RequestOp{put("y", "2")}}, 20)
		return err
	}))
	if left.Rev() != 30 || right.Rev() != 20 {
		t.Fatalf("revisions %d, %d; want 30, 20", left.Rev(), right.Rev())
	}
	read := func(s *Store, key string, rev int64) string {
		rr, err := s.Range(&pb.RangeRequest{Key: []byte(key), Revision: rev})
		must(err)
		var out []string
		for _, kv := range rr.Kvs {
			out = append(out, fmt.Sprintf("%s=%s@%d/%d", kv.Key, kv.Value, kv.ModRevision, kv.Version))
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		s    *Store
		key  string
		rev  int64
		want string
	}{
		{left, "a", 19, "a=1@10/1"}, {left, "a", 20, "a=2@20/2"}, {left, "a", 0, "a=2@20/2"},
		{left, "b", 19, "b=1@10/1"}, {left, "b", 20, ""}, {left, "d", 0, "d=1@30/1"},
		{right, "y", 20, "y=2@20/1"}, {right, "x", 0, "x=1@12/1"},
	} {
		if got := read(c.s, c.key, c.rev); got != c.want {
			t.Errorf("%s at %d: %q, want %q", c.key, c.rev, got, c.want)
		}
	}
	events := func(s *Store) string {
		var out []string
		must(s.Events(20, 20, func(rev Revision, evs []*mvccpb.Event) bool {
			for _, ev := range evs {
				out = append(out, fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision))
			}
			return true
		}))
		return strings.Join(out, ", ")
	}
	if got, want := events(left), "PUT a@20, DELETE b@20"; got != want {
		t.Errorf("left's events at 20: %q, want %q", got, want)
	}
	if got, want := events(right), "PUT y@20"; got != want {
		t.Errorf("right's events at 20: %q, want %q", got, want)
	}

	// d has a version at 30: a commit at 25 writing it is refused, and
	// its put of a (earlier in the request) is not applied.
	err = write(left, func(b *Batch) error {
		_, err := b.CommitAt(&pb.TxnRequest{Success: []*pb.RequestOp{put("a", "3"), put("d", "2")}}, 25)
		return err
	})
	if !errors.Is(err, ErrStaleStamp) {
		t.Fatalf("commit below a newer version: %v", err)
	}
	err = write(left, func(b *Batch) error {
		_, err := b.CommitAt(&pb.TxnRequest{Success: []*pb.RequestOp{del("c", "e")}}, 25)
		return err
	})
	if !errors.Is(err, ErrStaleStamp) {
		t.Fatalf("delete range below a newer version: %v", err)
	}
	if got := read(left, "a", 0); got != "a=2@20/2" {
		t.Fatalf("a after refused commits: %q", got)
	}
	// A commit with compares is not a commit.
	err = write(left, func(b *Batch) error {
		_, err := b.CommitAt(&pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("a")}}, Success: []*pb.RequestOp{put("a", "3")}}, 40)
		return err
	})
	if err == nil {
		t.Fatal("commit with compares applied")
	}
}
