package mvcc

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

type anyLease struct{}

func (anyLease) LeaseExists(int64) bool { return true }

// TestWriteImage: the stores of one DB (a range and the range split off
// it, written at interleaved stamped revisions) imaged at revision 17 and
// restored into a fresh DB make one store of the whole key space that
// answers at and below 17 as the two did, has nothing above 17, the
// highest compaction of the two, the attachments Attach gave for the keys
// live at 17, the carried records, and the keys of a lease not in the
// image deleted at 18.
func TestWriteImage(t *testing.T) {
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	left, err := Open(db, Options{ID: 1, Leases: anyLease{}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(s *Store, fn func(b *Batch) error) {
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
	put := func(s *Store, key string, lease int64, rev Revision) {
		t.Helper()
		write(s, func(b *Batch) error {
			_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(fmt.Sprint(key, rev)), Lease: lease}, rev)
			return err
		})
	}
	put(left, "a", 7, 10)
	put(left, "m", 0, 11)
	put(left, "z", 8, 12)
	write(left, func(b *Batch) error { _, err := b.SplitOff([]byte("k"), 2); return err })
	right, err := Open(db, Options{ID: 2, Leases: anyLease{}})
	if err != nil {
		t.Fatal(err)
	}
	put(left, "a", 7, 13)
	put(left, "b", 0, 14)
	put(right, "m", 8, 15)
	write(right, func(b *Batch) error {
		_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("z")}, 16)
		return err
	})
	put(left, "c", 0, 20) // above the image
	write(left, func(b *Batch) error { _, err := b.Compact(11); return err })

	snap := db.NewSnapshot()
	defer snap.Close()
	if ids, err := StoreIDs(snap); err != nil || fmt.Sprint(ids) != "[1 2]" {
		t.Fatalf("store ids %v, %v", ids, err)
	}
	var attached []string
	img := Image{
		Stores: []uint64{1, 2},
		Rev:    17,
		Attach: func(lease int64, key []byte) ([]byte, bool) {
			attached = append(attached, fmt.Sprintf("%s:%d", key, lease))
			if lease == 8 {
				return nil, false // revoked since 17
			}
			return []byte(fmt.Sprintf("l/a/%d/%s", lease, key)), true
		},
		Carried: func(frame func(k, v []byte) error) error { return frame([]byte("l/r/7"), []byte("ttl")) },
	}
	var buf bytes.Buffer
	rev, err := WriteImage(snap, &buf, img)
	if err != nil || rev != 18 {
		t.Fatalf("image at revision %d, %v; want 18 (the revoked lease's key deleted)", rev, err)
	}
	if fmt.Sprint(attached) != "[a:7 m:8]" {
		t.Fatalf("Attach asked for %v, want the leased keys live at 17 only", attached)
	}

	into, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer into.Close()
	whole, err := Open(into, Options{ID: 1, Leases: anyLease{}, Carried: []RawSpan{{Lo: []byte("l"), Hi: []byte("l\xff")}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := whole.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if whole.Rev() != 18 || whole.CompactRev() != 11 || whole.Span().Start != nil || whole.Span().End != nil {
		t.Fatalf("restored at %d, compacted %d, span %q", whole.Rev(), whole.CompactRev(), whole.Span())
	}
	keys := func(rev int64) string {
		resp, err := whole.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
		if err != nil {
			return err.Error()
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, fmt.Sprintf("%s=%s/l%d", kv.Key, kv.Value, kv.Lease))
		}
		return fmt.Sprint(out)
	}
	for _, c := range []struct {
		rev  int64
		want string
	}{
		{0, "[a=a13/l7 b=b14/l0]"},
		{17, "[a=a13/l7 b=b14/l0 m=m15/l8]"},
		{15, "[a=a13/l7 b=b14/l0 m=m15/l8 z=z12/l8]"},
		{12, "[a=a10/l7 m=m11/l0 z=z12/l8]"},
	} {
		if got := keys(c.rev); got != c.want {
			t.Errorf("at %d: %s, want %s", c.rev, got, c.want)
		}
	}
	if _, err := whole.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 10}); !errors.Is(err, ErrCompacted) {
		t.Errorf("at 10 (compacted at 11): %v", err)
	}
	var history []string
	if err := whole.Events(12, 18, func(rev Revision, evs []*mvccpb.Event) bool {
		for _, e := range evs {
			history = append(history, fmt.Sprintf("%s %s@%d", e.Type, e.Kv.Key, rev))
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if want := "[PUT z@12 PUT a@13 PUT b@14 PUT m@15 DELETE z@16 DELETE m@18]"; fmt.Sprint(history) != want {
		t.Fatalf("history %v, want %s", history, want)
	}
	for _, k := range []string{"l/a/7/a", "l/r/7"} {
		if _, closer, err := into.Get([]byte(k)); err != nil {
			t.Errorf("carried record %s: %v", k, err)
		} else {
			closer.Close()
		}
	}

	// A store compacted past the image's revision since refuses it.
	write(right, func(b *Batch) error { _, err := b.Compact(16); return err })
	snap2 := db.NewSnapshot()
	defer snap2.Close()
	img.Rev = 15
	if _, err := WriteImage(snap2, &bytes.Buffer{}, img); !errors.Is(err, ErrImageCompacted) {
		t.Fatalf("image at 15 of a store compacted at 16: %v", err)
	}
}
