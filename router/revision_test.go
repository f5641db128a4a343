package router

import (
	"context"
	"testing"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/shard"
)

// statusShard is range 1 answering Status with st, counting the reads.
type statusShard struct {
	fakeReplica
	st    shard.Status
	reads int
}

func (s *statusShard) Status(context.Context, bool) (shard.Status, error) {
	s.reads++
	return s.st, nil
}

// fixedOracle is an oracle whose current value is itself.
type fixedOracle mvcc.Revision

func (o fixedOracle) Current(context.Context) (mvcc.Revision, error) { return mvcc.Revision(o), nil }

// TestServerNow: the cluster's revision is range 1's, read linearizably,
// while range 1 counts here and still did as of the read; the oracle's
// once it has split (DESIGN.md "Keys, values, revisions", "Reads"). A
// static map's range counts for good, though its state machine does not
// say so.
func TestServerNow(t *testing.T) {
	ctx := context.Background()
	sh := &statusShard{st: shard.Status{Revision: 7}}
	check := func(stage string, s *Server, counting bool, now mvcc.Revision, reads int) {
		t.Helper()
		sh.reads = 0
		if got := s.counting(); got != counting {
			t.Errorf("%s: counting = %v, want %v", stage, got, counting)
		}
		got, err := s.now(ctx)
		if err != nil || got != now {
			t.Errorf("%s: now = %d, %v; want %d", stage, got, err, now)
		}
		if sh.reads != reads {
			t.Errorf("%s: now read range 1's status %d times, want %d", stage, sh.reads, reads)
		}
	}
	static := NewStaticRangeCache(entryOf(newMutableLocal(1, "", "", 1)))
	check("static", New(Config{Shard: sh, Ranges: static}), true, 7, 1)

	counts := true
	c := NewRangeCache()
	r1 := entryOf(newMutableLocal(1, "", "", 1))
	r1.Counting = func() bool { return counts }
	c.Put(r1)
	s := New(Config{Shard: sh, Ranges: c, Oracle: fixedOracle(10007)})
	sh.st.Counting = true
	check("one range", s, true, 7, 1)
	sh.st.Counting = false
	check("split before the read index", s, true, 10007, 1)
	counts = false
	check("split applied here", s, false, 10007, 0)
	check("no range 1 here", New(Config{Shard: sh, Ranges: NewRangeCache(), Oracle: fixedOracle(10007)}), false, 10007, 0)
}
