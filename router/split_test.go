package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// fakeSplitMap records splits as the placement client would answer them.
type fakeSplitMap struct {
	err      error
	recorded []string
}

func (m *fakeSplitMap) RecordSplit(_ context.Context, r placement.RangeID, gen uint64, key []byte) (left, right *placementpb.RangeDescriptor, err error) {
	if m.err != nil {
		return nil, nil, m.err
	}
	m.recorded = append(m.recorded, fmt.Sprintf("r%d g%d at %s", r, gen, key))
	return &placementpb.RangeDescriptor{Id: uint64(r), End: key, Generation: gen + 1},
		&placementpb.RangeDescriptor{Id: 9, Start: key, Generation: gen + 1, Parent: uint64(r)}, nil
}

func (m *fakeSplitMap) State(context.Context) (*placementpb.State, error) {
	return &placementpb.State{}, nil
}

// newTestSplitter returns a splitter over ranges r1 [,m) and r2 [m,), not
// started, that stops every split before the range splits (CutShort) and
// never starts a split's new range (NoStart).
func newTestSplitter(m SplitMap) *Splitter {
	set := shard.NewSet(shard.SetConfig{})
	cache := NewRangeCacheVia(NewForwarder(1, nil))
	newRange := func(d *placementpb.RangeDescriptor, rev mvcc.Revision) *shard.Range {
		return shard.NewRange(shard.RangeConfig{}, d, rev)
	}
	set.Add(newRange(&placementpb.RangeDescriptor{Id: 1, End: []byte("m"), Generation: 1, Replicas: []uint64{1, 2}}, 0))
	set.Add(newRange(&placementpb.RangeDescriptor{Id: 2, Start: []byte("m"), Generation: 1, Replicas: []uint64{1, 2}}, 0))
	cache.PutRanges(set.Routing()...)
	yes := func() bool { return true }
	return NewSplitter(SplitterConfig{Self: 1, Map: m, Ranges: cache, Local: set, Merger: watch.NewMerger(), Home: 1,
		NewRange: newRange, StartRange: func(*shard.Range, bool, bool) error { return errors.New("not in this test") },
		CutShort: yes, NoStart: yes})
}

// TestSplitRangeRefusals: SplitRange refuses, before recording anything,
// an empty key and a key a range starts at; what the range map refuses it
// refuses as a precondition; a split cut short once the map names it
// answers the ranges the map made.
func TestSplitRangeRefusals(t *testing.T) {
	m := &fakeSplitMap{}
	s := newTestSplitter(m)
	ctx := context.Background()
	for _, tc := range []struct {
		key  string
		kind error
		msg  string
	}{
		{"", ErrInvalid, "cairn: the split key is empty"},
		{"m", ErrPrecondition, `cairn: range 2 already starts at "m"`},
	} {
		if _, err := s.SplitRange(ctx, []byte(tc.key)); !errors.Is(err, tc.kind) || err.Error() != tc.msg {
			t.Errorf("split at %q: %v, want %v %q", tc.key, err, tc.kind, tc.msg)
		}
	}
	if len(m.recorded) != 0 {
		t.Fatalf("recorded %v for refused splits", m.recorded)
	}
	made, err := s.SplitRange(ctx, []byte("t"))
	if err != nil || len(made) != 2 || made[1].Id != 9 || strings.Join(m.recorded, ",") != "r2 g1 at t" {
		t.Fatalf("split at t: %v %v, recorded %v; want r2's split recorded and its ranges", made, err, m.recorded)
	}
	m.err = placement.ErrReconfiguring
	if _, err := s.SplitRange(ctx, []byte("c")); !errors.Is(err, ErrPrecondition) || !errors.Is(err, placement.ErrReconfiguring) {
		t.Fatalf("split while the map refuses: %v, want a precondition wrapping the map's refusal", err)
	}
}

// TestOnSplit: a split applying here shortens its range and puts the new
// range after it, in the member's set and in the range cache, once only.
func TestOnSplit(t *testing.T) {
	s := newTestSplitter(&fakeSplitMap{})
	parent := s.cfg.Local.Get(2, false)
	show := func() string {
		var b strings.Builder
		for _, r := range s.cfg.Local.Routing() {
			d := r.Descriptor()
			fmt.Fprintf(&b, "r%d [%s,%s) g%d %v; ", d.Id, d.Start, d.End, d.Generation, d.Founders)
		}
		return b.String()
	}
	// Without founders named, the new range's are the parent's replicas.
	want := "r1 [,m) g1 []; r2 [m,t) g2 []; r3 [t,) g2 [1 2]; "
	s.OnSplit(parent, 3, mvcc.Span{Start: []byte("t")}, 7, nil)
	if got := show(); got != want {
		t.Fatalf("after the split: %s, want %s", got, want)
	}
	if p, ok := s.cfg.Ranges.Lookup([]byte("u")); !ok || p.ID != 3 {
		t.Fatalf("the cache routes u to %v (%v), want range 3", p.ID, ok)
	}
	if p, ok := s.cfg.Ranges.Lookup([]byte("p")); !ok || p.ID != 2 {
		t.Fatalf("the cache routes p to %v (%v), want range 2", p.ID, ok)
	}
	if rev := s.cfg.Local.Get(3, false).Hub().Rev(); rev != 7 {
		t.Fatalf("the new range's hub is at %d, want the split's revision 7", rev)
	}
	// The same split reaching this member again (the new range joined
	// from the map meanwhile) adds nothing.
	s.OnSplit(parent, 3, mvcc.Span{Start: []byte("t")}, 7, nil)
	if n := len(s.cfg.Local.Routing()); n != 3 {
		t.Fatalf("%d ranges after the split came again, want 3", n)
	}
}

// TestOnSplitFounders: the new range's descriptor carries the replicas the
// split names, under their ids, a learner's too (not among the voters or
// the founders' members); splitRequest names the range map's founders so.
func TestOnSplitFounders(t *testing.T) {
	s := newTestSplitter(&fakeSplitMap{})
	parent := s.cfg.Local.Get(2, false)
	founders := []*shardpb.ReplicaRef{{Member: 1, Id: 7}, {Member: 2, Id: 8}, {Member: 3, Id: 9, Learner: true}}
	s.OnSplit(parent, 3, mvcc.Span{Start: []byte("t")}, 7, founders)
	d := s.cfg.Local.Get(3, false).Descriptor()
	var pairs []string
	for _, p := range placement.Pairs(d) {
		pairs = append(pairs, fmt.Sprintf("%d:%d/%v", p.Member, p.Id, p.Learner))
	}
	for _, p := range placement.Founders(d) {
		pairs = append(pairs, fmt.Sprintf("f%d:%d/%v", p.Member, p.Id, p.Learner))
	}
	want := "1:7/false 2:8/false 3:9/true f1:7/false f2:8/false f3:9/true"
	if got := strings.Join(pairs, " "); got != want || fmt.Sprint(d.Replicas, d.Founders) != "[1 2] [1 2]" {
		t.Fatalf("the new range's pairs: %s, members %v %v; want %s, members [1 2] [1 2]", got, d.Replicas, d.Founders, want)
	}
	req, err := s.splitRequest(context.Background(), parent, d)
	if err != nil {
		t.Fatal(err)
	}
	split := req.GetSplit()
	if got := fmt.Sprint(split.Founders, len(split.FounderReplicas)); got != "[1 2] 3" ||
		!proto.Equal(split.FounderReplicas[2], founders[2]) {
		t.Fatalf("split request founders %v, founder replicas %v", split.Founders, split.FounderReplicas)
	}
}
