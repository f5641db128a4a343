package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// TestMoveSourceRoutesAfterRemoval: a move of range 2 held right after
// raft removed its source's replica, so that the range map still names the
// source: the source member, whose replica was told to stop serving, then
// removed and dropped, still serves the range's keys through the members
// holding it. A linearizable Get through it sees a key put before the
// move (not nothing: the range left out of its routes would be no range
// there), a Put through it goes through (not to range 1, which refuses
// keys outside its span), and once the move is over both still hold.
func TestMoveSourceRoutesAfterRemoval(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.RangeReplicas(2), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	range2 := func() *placementpb.RangeDescriptor {
		t.Helper()
		ds, err := cl.Node(0).RangeMap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Id == 2 {
				return d
			}
		}
		t.Fatal("no range 2 in the map")
		return nil
	}
	names := func(d *placementpb.RangeDescriptor, i int) bool {
		_, ok := placement.ReplicaOf(d, placement.NodeID(cl.Node(i).MemberID()))
		return ok
	}
	from, to := -1, -1
	for i := range cl.Size() {
		switch {
		case names(range2(), i) && from < 0:
			from = i
		case !names(range2(), i) && to < 0:
			to = i
		}
	}
	if from < 0 || to < 0 {
		t.Fatalf("range 2 is %v: no source and destination among %d members", placement.Pairs(range2()), cl.Size())
	}
	get := func(via int, key, want string) {
		t.Helper()
		r, err := cl.Client(via).Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s through member %d: %v", key, via, err)
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != want {
			t.Fatalf("get %s through member %d: %v, want %s", key, via, r.Kvs, want)
		}
	}
	if _, err := cl.Client(from).Put(ctx, "m-before", "1"); err != nil {
		t.Fatal(err)
	}

	// Whichever member drives the move holds it once the source is out
	// of raft's group, before the map records the move as over.
	reached := make(chan struct{}, cl.Size())
	var releases []func()
	for i := range cl.Size() {
		at, release := cl.Node(i).HoldMovesAt("removed")
		t.Cleanup(release) // before the members close
		releases = append(releases, release)
		go func() {
			select {
			case <-at:
				reached <- struct{}{}
			case <-ctx.Done():
			}
		}()
	}
	moved := make(chan error, 1)
	go func() {
		_, err := cl.Node(to).MoveRange(ctx, shard.RangeID(2), placement.NodeID(cl.Node(from).MemberID()),
			placement.NodeID(cl.Node(to).MemberID()), true)
		moved <- err
	}()
	select {
	case <-reached:
	case err := <-moved:
		t.Fatalf("the move ended (%v) before it removed the source", err)
	case <-ctx.Done():
		t.Fatal("the move did not remove the source")
	}
	nodetest.Eventually(t, "the source dropped its replica", func() bool {
		_, runs := cl.Node(from).LocalReplicas()[2]
		return !runs
	})
	if !names(range2(), from) {
		t.Fatalf("range 2 is %v: the map no longer names the source, the move was not held", placement.Pairs(range2()))
	}
	get(from, "m-before", "1")
	if _, err := cl.Client(from).Put(ctx, "m-during", "2"); err != nil {
		t.Fatalf("put through the source: %v", err)
	}
	get(from, "m-during", "2")
	get(to, "m-during", "2")

	for _, release := range releases {
		release()
	}
	if err := <-moved; err != nil {
		t.Fatalf("move range 2 from member %d to %d: %v", from, to, err)
	}
	get(from, "m-before", "1")
	get(from, "m-during", "2")
}
