package router

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// mutableLocal is a replica whose descriptor a split replaces.
type mutableLocal struct {
	d     atomic.Pointer[placementpb.RangeDescriptor]
	ready chan struct{}
}

func newMutableLocal(id uint64, start, end string, gen uint64) *mutableLocal {
	l := &mutableLocal{ready: make(chan struct{})}
	close(l.ready)
	l.set(start, end, gen)
	l.d.Load().Id = id
	return l
}

func (l *mutableLocal) set(start, end string, gen uint64) {
	d := &placementpb.RangeDescriptor{Start: []byte(start), End: []byte(end), Generation: gen}
	if old := l.d.Load(); old != nil {
		d.Id = old.Id
	}
	l.d.Store(d)
}

func (l *mutableLocal) Descriptor() *placementpb.RangeDescriptor { return l.d.Load() }
func (l *mutableLocal) Ready() <-chan struct{}                   { return l.ready }
func (l *mutableLocal) Replica() Replica                         { return &fakeReplica{leader: 1} }

// entryOf is l's cache entry, its shard a RangeClient of it.
func entryOf(l Local) RangeEntry {
	return RangeEntry{Local: l, Shard: NewForwarder(1, nil).Range(l)}
}

// ids lists parts' range ids.
func ids(parts []RangePart) string {
	var out []string
	for _, p := range parts {
		out = append(out, fmt.Sprint(p.ID))
	}
	return strings.Join(out, ",")
}

// TestRangeCache: lookups by key and by etcd interval, as the replicas'
// descriptors say, through a split (put by the node, or found by a
// refusal first).
func TestRangeCache(t *testing.T) {
	c := NewRangeCache()
	r1 := newMutableLocal(1, "", "m", 1)
	r2 := newMutableLocal(2, "m", "", 1)
	c.Put(entryOf(r1), entryOf(r2))

	type spanCase struct{ key, end, want string }
	check := func(stage string, lookups map[string]string, spans []spanCase) {
		t.Helper()
		for key, want := range lookups {
			got := ""
			if p, ok := c.Lookup([]byte(key)); ok {
				got = fmt.Sprint(p.ID)
			}
			if got != want {
				t.Errorf("%s: lookup %q = %q, want %q", stage, key, got, want)
			}
		}
		for _, sc := range spans {
			var end []byte
			if sc.end != "" {
				end = []byte(sc.end)
			}
			if got := ids(c.Spanning([]byte(sc.key), end)); got != sc.want {
				t.Errorf("%s: spanning [%q, %q) = %s, want %s", stage, sc.key, sc.end, got, sc.want)
			}
		}
	}
	check("bootstrap", map[string]string{"\x00": "1", "a": "1", "lzz": "1", "m": "2", "z": "2"}, []spanCase{
		{"a", "", "1"},
		{"m", "", "2"},
		{"\x00", "\x00", "1,2"},
		{"a", "m", "1"},
		{"a", "m\x00", "1,2"},
		{"l", "n", "1,2"},
		{"m", "\x00", "2"},
		{"n", "a", ""}, // end before key: nothing
	})

	// A split applies on the replica: the cache holds the old map until
	// told.
	r2.set("m", "t", 2)
	check("split unseen", map[string]string{"u": "2"}, []spanCase{{"n", "z", "2"}})

	// A refusal from a generation the cache has does not reread.
	c.Refresh(&placementpb.RangeDescriptor{Id: 2, Generation: 1})
	check("stale refusal", map[string]string{"u": "2"}, nil)

	// A refusal carrying the new generation rereads the replicas: the new
	// range is not here yet, so its keys belong to none.
	c.Refresh(&placementpb.RangeDescriptor{Id: 2, Start: []byte("m"), End: []byte("t"), Generation: 2})
	check("refreshed", map[string]string{"s": "2", "t": "", "u": ""}, []spanCase{{"n", "z", "2"}, {"u", "", ""}})

	// The node puts the new range.
	r3 := newMutableLocal(3, "t", "", 2)
	c.Put(entryOf(r2), entryOf(r3))
	check("put", map[string]string{"a": "1", "s": "2", "t": "3", "zz": "3"}, []spanCase{
		{"\x00", "\x00", "1,2,3"},
		{"n", "z", "2,3"},
		{"t", "", "3"},
		{"a", "t", "1,2"},
	})
	if got := ids(c.All()); got != "1,2,3" {
		t.Errorf("All = %s, want 1,2,3", got)
	}
	for _, p := range c.All() {
		if id, ok := c.id(p.Shard); !ok || id != p.ID {
			t.Errorf("id of range %d's shard = %d, %v", p.ID, id, ok)
		}
		if c.Local(p.ID) == nil {
			t.Errorf("no local replica of range %d", p.ID)
		}
	}

	// This member's replica of range 2 is removed: its keys belong to no
	// range here, the others' stay.
	shard2 := c.Client(2)
	c.Remove(2)
	check("removed", map[string]string{"a": "1", "s": "", "t": "3"}, []spanCase{{"a", "z", "1,3"}})
	if c.Local(2) != nil || c.Client(2) != nil {
		t.Errorf("range 2 still has an entry after its removal")
	}
	if _, ok := c.id(shard2); ok {
		t.Errorf("range 2's shard still maps to an id after its removal")
	}
}

// TestReroutedRefreshes: a request refused by a range that split since is
// routed again with the cache read again from the replicas.
func TestReroutedRefreshes(t *testing.T) {
	c := NewRangeCache()
	r1 := newMutableLocal(1, "", "", 1)
	c.Put(entryOf(r1))
	s := New(Config{Ranges: c})
	r1.set("", "m", 2) // split here, not put yet
	tries := 0
	_, err := rerouted(context.Background(), s, func() (struct{}, error) {
		tries++
		if _, ok := c.Lookup([]byte("x")); ok {
			return struct{}{}, toGRPC(shard.WithRange(&shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_OUTSIDE_RANGE,
				Message: "outside"}, r1.Descriptor()))
		}
		return struct{}{}, nil
	})
	if err != nil || tries != 2 {
		t.Fatalf("rerouted: %v after %d tries, want success on the second", err, tries)
	}
}

// TestStaticRangeCache: single-group mode's map is range 1 alone for good:
// every key and interval routes to it, neither Put nor Refresh changes it,
// and the server shows no range map.
func TestStaticRangeCache(t *testing.T) {
	r1 := newMutableLocal(1, "", "", 1)
	c := NewStaticRangeCache(entryOf(r1))
	check := func() {
		t.Helper()
		if p, ok := c.Lookup([]byte("x")); !ok || p.ID != 1 {
			t.Errorf("Lookup(x) = %d, %v; want range 1", p.ID, ok)
		}
		if got := ids(c.Spanning([]byte("a"), []byte{0})); got != "1" {
			t.Errorf("Spanning(a, end) = %s, want 1", got)
		}
	}
	check()
	r1.set("", "m", 2)
	c.Refresh(r1.Descriptor())
	c.Put(entryOf(newMutableLocal(2, "m", "", 2)))
	check()
	if got := New(Config{Ranges: c}).Ranges(); got != nil {
		t.Errorf("Ranges() = %+v, want none in single-group mode", got)
	}
}

// TestRangeCachePutMap: the map's ranges without a replica here get remote
// clients (kept across map updates, their descriptors and leader hints
// the map's), leave with the map, and never replace a local replica's
// entry; a remote range 1 counts while the map has it whole, and never
// again once it showed it split.
func TestRangeCachePutMap(t *testing.T) {
	c := NewRangeCacheVia(NewForwarder(1, nil))
	whole := &placementpb.RangeDescriptor{Id: 1, Generation: 1, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 2, Id: 7}, {Member: 3, Id: 8}, {Member: 4, Id: 9}}}
	c.PutMap([]*placementpb.RangeDescriptor{whole})
	if !c.Remote(1) || !c.Counting() {
		t.Fatalf("remote whole range 1: remote %v counting %v", c.Remote(1), c.Counting())
	}
	rc := c.Client(1)
	if m, ok := rc.LeaderMember(); !ok || m != 2 {
		t.Fatalf("leader hint %d %v, want the map's 2", m, ok)
	}
	if id, _, ok := rc.Leader(); !ok || id != 7 {
		t.Fatalf("leader replica %d %v, want 7", id, ok)
	}
	r1 := &placementpb.RangeDescriptor{Id: 1, End: []byte("m"), Generation: 2, ReplicaSet: whole.ReplicaSet}
	r2 := &placementpb.RangeDescriptor{Id: 2, Start: []byte("m"), Generation: 2, Leader: 4, ReplicaSet: whole.ReplicaSet}
	c.PutMap([]*placementpb.RangeDescriptor{r1, r2})
	if c.Client(1) != rc || rc.Descriptor() != r1 {
		t.Fatalf("range 1's client was replaced or kept its old descriptor")
	}
	if p, ok := c.Lookup([]byte("p")); !ok || p.ID != 2 || !c.Remote(2) {
		t.Fatalf("lookup p: %v %v", p, ok)
	}
	if c.Counting() {
		t.Fatalf("range 1 split in the map still counts")
	}
	c.PutMap([]*placementpb.RangeDescriptor{whole})
	if c.Counting() {
		t.Fatalf("range 1 counts again after the map showed it split")
	}
	if _, ok := c.Lookup([]byte("p")); !ok {
		t.Fatalf("whole range 1 does not hold p")
	}
	// A local replica's entry is the replica's, whatever the map says.
	l2 := newMutableLocal(2, "m", "", 2)
	c.PutMap([]*placementpb.RangeDescriptor{r1, r2})
	c.Put(entryOf(l2))
	c.PutMap([]*placementpb.RangeDescriptor{r1, r2})
	if c.Remote(2) || c.Local(2) != l2 {
		t.Fatalf("the map replaced range 2's local replica")
	}
	// A range the map names this member in is left to its replica.
	mine := &placementpb.RangeDescriptor{Id: 4, Start: []byte("x"), Generation: 3, ReplicaSet: []*placementpb.Replica{{Member: 1, Id: 11}}}
	c.PutMap([]*placementpb.RangeDescriptor{r1, r2, mine})
	if c.Client(4) != nil {
		t.Fatalf("a range the map names this member in got a remote client")
	}
	// A remote range the map no longer has leaves; a local one stays.
	c.PutMap([]*placementpb.RangeDescriptor{{Id: 3, End: []byte("m"), Generation: 3}})
	if c.Client(1) != nil || c.Local(2) != l2 || !c.Remote(3) {
		t.Fatalf("after the map dropped range 1: %v %v %v", c.Client(1), c.Local(2), c.Remote(3))
	}
}
