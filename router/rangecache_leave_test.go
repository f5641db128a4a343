package router

import (
	"testing"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestRangeCacheLeaveTwice: a move's source is told to stop serving its
// replica (Leave), then raft removes the replica and the drop says so
// again (Leave), before the range map that no longer names this member
// reaches it: the range stays routed, through the members holding it, all
// along. Were it left out of the cache, a Get of one of its keys would
// find no range and answer nothing, and a Put would go to the range at the
// start of the key space, which refuses it.
func TestRangeCacheLeaveTwice(t *testing.T) {
	c := NewRangeCacheVia(NewForwarder(1, nil))
	pairs := []*placementpb.Replica{{Member: 1, Id: 5}, {Member: 2, Id: 6}, {Member: 3, Id: 7}}
	r1 := &placementpb.RangeDescriptor{Id: 1, End: []byte("m"), Generation: 2, ReplicaSet: pairs}
	c.PutMap([]*placementpb.RangeDescriptor{r1})
	l2 := newMutableLocal(2, "m", "", 2)
	l2.d.Load().ReplicaSet = pairs
	c.Put(entryOf(l2))
	for i, step := range []string{"stop serving", "raft removed it"} {
		c.Leave(2)
		p, ok := c.Lookup([]byte("p"))
		if !ok || p.ID != 2 || !c.Remote(2) {
			t.Fatalf("after %s (leave %d): lookup p = %v %v, remote %v; want range 2, remote", step, i+1, p, ok, c.Remote(2))
		}
		if got := c.Client(2).holders(); len(got) != 2 || got[0] == 1 || got[1] == 1 {
			t.Fatalf("after %s: range 2 is read through members %v, want 2 and 3", step, got)
		}
	}
	// The map, still naming this member (the move not recorded as over),
	// leaves the remote entry as it is.
	c.PutMap([]*placementpb.RangeDescriptor{r1, l2.Descriptor()})
	if _, ok := c.Lookup([]byte("p")); !ok || !c.Remote(2) {
		t.Fatalf("after a map still naming this member: range 2 is not routed remotely")
	}
}
