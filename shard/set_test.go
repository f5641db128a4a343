package shard

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// TestSet runs testdata/set.txt: a member's replicas in key order as they
// are added and split. Commands:
//
//	add id=N [start=K] [end=K] [gen=N] [started]   add a replica
//	split parent=N child=N key=K                    a split applies here
//	start id=N                                      its replica starts
//	get id=N [started]                              Get
//	all / routing                                   All / Routing
func TestSet(t *testing.T) {
	s := NewSet(SetConfig{})
	show := func(rs []*Range) string {
		var b strings.Builder
		for _, r := range rs {
			d := r.Descriptor()
			end := string(d.End)
			if end == "" {
				end = "∞"
			}
			fmt.Fprintf(&b, "r%d [%s,%s) g%d", d.Id, d.Start, end, d.Generation)
			if r.Started() {
				b.WriteString(" started")
			}
			b.WriteString("\n")
		}
		return b.String()
	}
	datadriven.RunTest(t, "testdata/set.txt", func(t *testing.T, d *datadriven.TestData) string {
		arg := func(key string) string {
			var v string
			if d.HasArg(key) {
				d.ScanArgs(t, key, &v)
			}
			return v
		}
		var id uint64
		if d.HasArg("id") {
			d.ScanArgs(t, "id", &id)
		}
		switch d.Cmd {
		case "add":
			var gen uint64
			if d.HasArg("gen") {
				d.ScanArgs(t, "gen", &gen)
			}
			desc := &placementpb.RangeDescriptor{Id: id, Generation: gen}
			if v := arg("start"); v != "" {
				desc.Start = []byte(v)
			}
			if v := arg("end"); v != "" {
				desc.End = []byte(v)
			}
			r := NewRange(RangeConfig{}, desc, 0)
			if d.HasArg("started") {
				close(r.ready)
			}
			s.Add(r)
			return show(s.Routing())
		case "split":
			var parent, child uint64
			d.ScanArgs(t, "parent", &parent)
			d.ScanArgs(t, "child", &child)
			p := s.Get(RangeID(parent), false)
			cd := &placementpb.RangeDescriptor{Id: child, Start: []byte(arg("key")), End: slices.Clone(p.Descriptor().End),
				Generation: p.Descriptor().Generation + 1}
			if s.Split(p, NewRange(RangeConfig{}, cd, 0)) == nil {
				return "present already\n" + show(s.Routing())
			}
			return show(s.Routing())
		case "start":
			close(s.Get(RangeID(id), false).ready)
			return show(s.All())
		case "get":
			r := s.Get(RangeID(id), d.HasArg("started"))
			if r == nil {
				return "none\n"
			}
			return show([]*Range{r})
		case "all":
			return show(s.All())
		case "routing":
			return show(s.Routing())
		}
		t.Fatalf("unknown command %q", d.Cmd)
		return ""
	})
}

func TestSpanOfAndFoundersOf(t *testing.T) {
	sp := SpanOf(&placementpb.RangeDescriptor{End: []byte{}})
	if sp.Start == nil || len(sp.Start) != 0 || sp.End != nil {
		t.Fatalf("SpanOf(whole) = %+v, want start [] and end nil", sp)
	}
	if got := FoundersOf(&placementpb.RangeDescriptor{Replicas: []uint64{1, 2}}); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("FoundersOf without founders = %v, want the replicas", got)
	}
	if got := FoundersOf(&placementpb.RangeDescriptor{Replicas: []uint64{1, 2, 4}, Founders: []uint64{1, 2, 3}}); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("FoundersOf = %v, want the founders", got)
	}
}

// TestLocalRanges: after a restart, a range the map names whose split did
// not apply here (this member founded it) is left in the range before it,
// pending; one whose split applied here, or one this member did not found
// (it joins it), runs as the map has it.
func TestLocalRanges(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm, _ := openSM(t, db, 1, SpanOf(&placementpb.RangeDescriptor{}))
	// Range 2 split off range 1 here; range 3 did not (yet).
	resp := apply(t, sm, 1, &shardpb.Request{Op: &shardpb.Request_Split{Split: &shardpb.SplitRange{Key: []byte("g"), Child: 2}}})
	if e := resp[0].GetError(); e != nil {
		t.Fatalf("split: %v", e)
	}
	ranges := []*placementpb.RangeDescriptor{
		{Id: 1, End: []byte("g"), Generation: 1, Replicas: []uint64{1, 2}},
		{Id: 2, Start: []byte("g"), End: []byte("p"), Generation: 2, Parent: 1, Replicas: []uint64{1, 2}},
		{Id: 3, Start: []byte("p"), End: []byte("t"), Generation: 2, Parent: 2, Replicas: []uint64{1, 2}},
		{Id: 4, Start: []byte("t"), Generation: 3, Parent: 2, Replicas: []uint64{1, 2, 7}, Founders: []uint64{2, 7}},
	}
	log := slog.New(slog.DiscardHandler)
	if local, pending, err := LocalRanges(db, 1, ranges, true, log); err != nil || len(local) != 4 || pending != nil {
		t.Fatalf("founding: local %v pending %v err %v; want the map as it is", local, pending, err)
	}
	local, pending, err := LocalRanges(db, 1, ranges, false, log)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range local {
		got = append(got, fmt.Sprintf("r%d [%s,%s) g%d", d.Id, d.Start, d.End, d.Generation))
	}
	want := []string{"r1 [,g) g1", "r2 [g,t) g1", "r4 [t,) g3"}
	if !slices.Equal(got, want) {
		t.Fatalf("local = %q, want %q", got, want)
	}
	if len(pending) != 1 || pending[0].Id != 3 {
		t.Fatalf("pending = %v, want range 3", pending)
	}
}

// TestFounderPairs: a range's founders as pairs — its founder_set, else
// its founders (or replicas) under their member ids — and a split's named
// founders — founder_replicas, else its founders under their member ids.
func TestFounderPairs(t *testing.T) {
	show := func(pairs []*placementpb.Replica) string {
		var out []string
		for _, p := range pairs {
			out = append(out, fmt.Sprintf("%d:%d/%v", p.Member, p.Id, p.Learner))
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		d    *placementpb.RangeDescriptor
		want string
	}{
		{&placementpb.RangeDescriptor{Replicas: []uint64{1, 2}}, "1:1/false 2:2/false"},
		{&placementpb.RangeDescriptor{Replicas: []uint64{1, 2, 4}, Founders: []uint64{1, 2}}, "1:1/false 2:2/false"},
		{&placementpb.RangeDescriptor{Replicas: []uint64{1, 2}, Founders: []uint64{1, 2},
			FounderSet: []*placementpb.Replica{{Member: 1, Id: 5}, {Member: 2, Id: 6}, {Member: 3, Id: 7, Learner: true}}},
			"1:5/false 2:6/false 3:7/true"},
	} {
		if got := show(founderPairs(c.d)); got != c.want {
			t.Errorf("founderPairs(%v) = %s, want %s", c.d, got, c.want)
		}
	}
	refs := func(op *shardpb.SplitRange) string {
		var out []string
		for _, r := range SplitFounders(op) {
			out = append(out, fmt.Sprintf("%d:%d/%v", r.Member, r.Id, r.Learner))
		}
		return strings.Join(out, " ")
	}
	if got := refs(&shardpb.SplitRange{Founders: []uint64{1, 2}}); got != "1:1/false 2:2/false" {
		t.Errorf("legacy split founders: %s", got)
	}
	if got := refs(&shardpb.SplitRange{Founders: []uint64{1}, FounderReplicas: []*shardpb.ReplicaRef{{Member: 1, Id: 9}, {Member: 2, Id: 8, Learner: true}}}); got != "1:9/false 2:8/true" {
		t.Errorf("split founder replicas: %s", got)
	}
	if SplitFounders(&shardpb.SplitRange{}) != nil {
		t.Error("a split naming no founders names some")
	}
}
