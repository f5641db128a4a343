package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// fakeBackups writes "backup of <id>" or "image at <rev>", refusing the
// first refuse images as ranges changed.
type fakeBackups struct {
	refuse, images int
	ids            []shard.RangeID
}

func (b *fakeBackups) IDs() []shard.RangeID { return b.ids }

func (b *fakeBackups) WriteBackup(id shard.RangeID, w io.Writer) error {
	_, err := fmt.Fprintf(w, "backup of %d", id)
	return err
}

func (b *fakeBackups) WriteImage(ids []shard.RangeID, rev mvcc.Revision, w io.Writer) error {
	b.images++
	if b.images <= b.refuse {
		return shard.ErrRangesChanged
	}
	_, err := fmt.Fprintf(w, "image of %v at %d", ids, rev)
	return err
}

// TestBackup: over a static map a backup is the one range's own; over
// ranges it is one image at the cluster's revision, taken again while
// splits get in the way, and refused as transient after a few tries.
func TestBackup(t *testing.T) {
	ctx := context.Background()
	sh := &statusShard{st: shard.Status{Revision: 7}}
	b := &fakeBackups{ids: []shard.RangeID{1, 2}}
	var out strings.Builder
	static := NewStaticRangeCache(entryOf(newMutableLocal(1, "", "", 1)))
	if err := New(Config{Shard: sh, Ranges: static, Backups: b}).backup(ctx, &out); err != nil || out.String() != "backup of 1" {
		t.Errorf("static: backup = %q, %v; want the range's own", out.String(), err)
	}

	c := NewRangeCache()
	for _, l := range []Local{newMutableLocal(1, "", "m", 2), newMutableLocal(2, "m", "", 2)} {
		e := entryOf(l)
		e.Watches = watch.NewHub(10010) // has applied every write up to now
		c.Put(e)
	}
	s := New(Config{Shard: sh, Ranges: c, Oracle: fixedOracle(10007), Backups: b})
	b.refuse = 2
	out.Reset()
	if err := s.backup(ctx, &out); err != nil || out.String() != "image of [1 2] at 10007" || b.images != 3 {
		t.Errorf("ranges: backup = %q, %v after %d images; want the image at 10007 after 3", out.String(), err, b.images)
	}
	b.refuse, b.images = 100, 0
	if err := s.backup(ctx, io.Discard); !errors.Is(err, ErrTryAgain) || b.images != imageTries {
		t.Errorf("ranges always changing: backup = %v after %d images; want ErrTryAgain after %d", err, b.images, imageTries)
	}
}
