package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// mergingErr is a frozen range's refusal, as its replica gives it.
var mergingErr = &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_MERGING, Message: "shard: range frozen for a merge: merge 1 into range 2"}

// newMergeJoiner returns a joiner over ranges r1 [,f), r2 [f,m) and r3
// [m,) of this member, not started, their hubs at revisions 10, 20 and 30,
// and the ranges it retired.
func newMergeJoiner() (*Joiner, *[]shard.RangeID) {
	set := shard.NewSet(shard.SetConfig{})
	cache := NewRangeCacheVia(NewForwarder(1, nil))
	for i, d := range []*placementpb.RangeDescriptor{
		{Id: 1, End: []byte("f"), Generation: 1, Replicas: []uint64{1}},
		{Id: 2, Start: []byte("f"), End: []byte("m"), Generation: 1, Replicas: []uint64{1}},
		{Id: 3, Start: []byte("m"), Generation: 2, Replicas: []uint64{1}},
	} {
		set.Add(shard.NewRange(shard.RangeConfig{}, d, mvcc.Revision(10*(i+1)))) // hubs at 10, 20, 30
	}
	cache.PutRanges(set.Routing()...)
	var retired []shard.RangeID
	return NewJoiner(JoinerConfig{Ranges: cache, Local: set, Merger: watch.NewMerger(),
		Retire: func(r *shard.Range) { retired = append(retired, r.ID()) }}), &retired
}

// lookups shows which range the cache routes each key to ("-": none).
func lookups(c *RangeCache, keys ...string) string {
	var out []string
	for _, k := range keys {
		if p, ok := c.Lookup([]byte(k)); ok {
			out = append(out, fmt.Sprintf("%s:%d", k, p.ID))
		} else {
			out = append(out, k+":-")
		}
	}
	return fmt.Sprint(out)
}

// TestRangeCacheMerge: a merge committed here (Joiner.OnMerge) takes the
// right range's keys into the left one in the member's ranges and the
// cache in one step, moves its watches to the left range's hub, retires
// the right range once, and leaves it known as
// merged (Successor), through later splits of the left range. A newer
// descriptor from a range's answer (Refresh) takes in a merge of ranges
// held elsewhere, but never a split's narrowing, an older answer, or one
// over a range held here; the map's tombstones and ranges leaving the map
// are known as merged too.
func TestRangeCacheMerge(t *testing.T) {
	j, retired := newMergeJoiner()
	c := j.cfg.Ranges
	left := j.cfg.Local.Get(2, false)
	if got := c.Successor(3); !slices.Equal(got, []shard.RangeID{3}) {
		t.Fatalf("Successor(3) before the merge = %v, want 3", got)
	}
	j.OnMerge(left, 3, mvcc.Span{Start: []byte("f")}, 40, 3)
	if got, want := lookups(c, "a", "g", "p", "z"), "[a:1 g:2 p:2 z:2]"; got != want {
		t.Fatalf("after the merge: %s, want %s", got, want)
	}
	if d := left.Descriptor(); len(d.End) != 0 || d.Generation != 3 {
		t.Fatalf("left's descriptor after the merge: %v", d)
	}
	if got := ids(c.All()); got != "1,2" || c.Client(3) != nil || j.cfg.Local.Get(3, false) != nil {
		t.Fatalf("range 3 still here after the merge: cache %s, client %v", got, c.Client(3))
	}
	if got := c.Successor(3); !slices.Equal(got, []shard.RangeID{2}) {
		t.Fatalf("Successor(3) = %v, want 2", got)
	}
	if !slices.Equal(*retired, []shard.RangeID{3}) {
		t.Fatalf("retired %v, want range 3", *retired)
	}
	// The watches moved: left's hub was raised to the right one's.
	if rev := left.Hub().Rev(); rev != 30 {
		t.Fatalf("left's hub at %d after the merge, want right's 30", rev)
	}
	// The commit applied again (left's log replayed): nothing more.
	j.OnMerge(left, 3, mvcc.Span{Start: []byte("f")}, 40, 3)
	if !slices.Equal(*retired, []shard.RangeID{3}) || ids(c.All()) != "1,2" {
		t.Fatalf("a replayed merge: retired %v, ranges %s", *retired, ids(c.All()))
	}
	// Left splits at p: range 3's keys are in both halves now.
	child := j.cfg.Local.Split(left, shard.NewRange(shard.RangeConfig{},
		&placementpb.RangeDescriptor{Id: 9, Start: []byte("p"), Generation: 4, Replicas: []uint64{1}}, 0))
	c.PutRanges(left, child)
	if got := c.Successor(3); !slices.Equal(got, []shard.RangeID{2, 9}) {
		t.Fatalf("Successor(3) after left split = %v, want 2 9", got)
	}
	if got := c.Successor(8); got != nil {
		t.Fatalf("Successor of an unknown range = %v, want none", got)
	}

	// Ranges held elsewhere: a merge seen first in a holder's answer.
	rc := NewRangeCacheVia(NewForwarder(1, nil))
	set := []*placementpb.Replica{{Member: 2, Id: 20}}
	r1 := &placementpb.RangeDescriptor{Id: 1, End: []byte("f"), Generation: 1, ReplicaSet: set}
	r2 := &placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), End: []byte("m"), Generation: 1, ReplicaSet: set}
	r3 := &placementpb.RangeDescriptor{Id: 3, Start: []byte("m"), End: []byte("t"), Generation: 2, ReplicaSet: set}
	r4 := &placementpb.RangeDescriptor{Id: 4, Start: []byte("t"), Generation: 2, ReplicaSet: set}
	rc.PutMap([]*placementpb.RangeDescriptor{r1, r2, r3, r4})
	client2 := rc.Client(2)
	l1 := newMutableLocal(5, "", "", 1)
	// Older than what the cache holds: nothing changes.
	rc.Refresh(&placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), End: []byte("t"), Generation: 1, ReplicaSet: set})
	// Narrower (r2 split): not taken in.
	rc.Refresh(&placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), End: []byte("h"), Generation: 2, ReplicaSet: set})
	// Over a range newer than it: not taken in.
	rc.Refresh(&placementpb.RangeDescriptor{Id: 1, End: []byte("t"), Generation: 2, ReplicaSet: set})
	if got, want := lookups(rc, "a", "g", "i", "p", "u"), "[a:1 g:2 i:2 p:3 u:4]"; got != want {
		t.Fatalf("after stale answers: %s, want %s", got, want)
	}
	merged := &placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), End: []byte("t"), Generation: 3, ReplicaSet: set}
	rc.Refresh(merged)
	if got, want := lookups(rc, "a", "g", "p", "u"), "[a:1 g:2 p:2 u:4]"; got != want {
		t.Fatalf("after the merged answer: %s, want %s", got, want)
	}
	if rc.Client(2) != client2 || client2.Descriptor() != merged || rc.Client(3) != nil {
		t.Fatalf("range 2's client replaced (%v) or range 3 still has one (%v)", rc.Client(2) != client2, rc.Client(3))
	}
	if got := rc.Successor(3); !slices.Equal(got, []shard.RangeID{2}) {
		t.Fatalf("Successor(3) = %v, want 2", got)
	}
	// A range held here is never replaced by an answer.
	rc.Put(entryOf(l1))
	rc.Refresh(&placementpb.RangeDescriptor{Id: 5, Generation: 9, ReplicaSet: set})
	if rc.Local(5) != l1 {
		t.Fatalf("an answer replaced a range held here")
	}
	rc.Remove(5)
	// The map drops range 4 (merged into 2): its span finds its keys.
	merged4 := &placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), Generation: 4, ReplicaSet: set}
	rc.PutMap([]*placementpb.RangeDescriptor{r1, merged4})
	if got, want := lookups(rc, "g", "u"), "[g:2 u:2]"; got != want || !slices.Equal(rc.Successor(4), []shard.RangeID{2}) {
		t.Fatalf("after the map merged range 4: %s (want %s), Successor(4) = %v", got, want, rc.Successor(4))
	}
	// The map's tombstones name ranges never seen here, through chains.
	rc.PutMerged([]*placementpb.Merged{{Range: 7, Into: 6, Generation: 2}, {Range: 6, Into: 1, Generation: 3},
		{Range: 1, Into: 5, Generation: 9}})
	if got := rc.Successor(7); !slices.Equal(got, []shard.RangeID{1}) {
		t.Fatalf("Successor(7) through the map's tombstones = %v, want 1 (range 1 is in the map this member has)", got)
	}
}

// TestRerouteOnMerging: a request refused by a range frozen for a merge is
// tried again until the range absorbing the keys serves them; a client sees the
// refusal only once its deadline passes, and then as etcd's timeout.
func TestRerouteOnMerging(t *testing.T) {
	j, _ := newMergeJoiner()
	s := New(Config{Ranges: j.cfg.Ranges})
	left := j.cfg.Local.Get(2, false)
	tries := 0
	served := ""
	_, err := rerouted(context.Background(), s, func() (struct{}, error) {
		tries++
		p, ok := j.cfg.Ranges.Lookup([]byte("p"))
		if !ok {
			return struct{}{}, errors.New("no range holds p")
		}
		if p.ID == 3 {
			if tries == 12 { // the commit applies here
				j.OnMerge(left, 3, mvcc.Span{Start: []byte("f")}, 40, 3)
			}
			return struct{}{}, toGRPC(mergingErr)
		}
		served = fmt.Sprint(p.ID)
		return struct{}{}, nil
	})
	if err != nil || served != "2" || tries != 13 {
		t.Fatalf("rerouted: %v after %d tries, served by %q; want range 2's answer on try 13", err, tries, served)
	}

	// Frozen for longer than the caller waits: etcd's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tries = 0
	_, err = rerouted(ctx, s, func() (struct{}, error) {
		tries++
		return struct{}{}, toGRPC(mergingErr)
	})
	if rpctypes.Error(err) != rpctypes.ErrTimeout || status.Code(err) != status.Code(rpctypes.ErrGRPCTimeout) || tries < 2 {
		t.Fatalf("frozen past the deadline: %v (%v) after %d tries, want etcd's timeout", err, status.Code(err), tries)
	}
	// The request's own bound when the caller sets none.
	s = New(Config{Ranges: j.cfg.Ranges, RequestTimeout: 50 * time.Millisecond})
	_, err = rerouted(context.Background(), s, func() (struct{}, error) { return struct{}{}, mergingErr })
	if rpctypes.Error(err) != rpctypes.ErrTimeout {
		t.Fatalf("frozen past the request timeout: %v, want etcd's timeout", err)
	}
	// A stale merge commit never reaches a client; were it to, a timeout.
	stale := &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_STALE_MERGE, Message: "shard: stale merge"}
	if err := toGRPC(stale); rpctypes.Error(err) != rpctypes.ErrTimeout || !errors.Is(err, shard.ErrStaleMerge) {
		t.Fatalf("toGRPC(stale merge) = %v", err)
	}
}

// mergeLocal is this member's started replica of a range, whose
// descriptor a merge replaces.
type mergeLocal struct {
	d     atomic.Pointer[placementpb.RangeDescriptor]
	r     Replica
	ready chan struct{}
}

func newMergeLocal(d *placementpb.RangeDescriptor, r Replica) *mergeLocal {
	l := &mergeLocal{r: r, ready: make(chan struct{})}
	l.d.Store(d)
	close(l.ready)
	return l
}

func (l *mergeLocal) Descriptor() *placementpb.RangeDescriptor { return l.d.Load() }
func (l *mergeLocal) Ready() <-chan struct{}                   { return l.ready }
func (l *mergeLocal) Replica() Replica                         { return l.r }

// frozenReplica refuses every write as a range frozen for a merge,
// signalling each refusal (without blocking).
type frozenReplica struct {
	fakeReplica
	refused chan struct{}
}

func (r *frozenReplica) Write(context.Context, *shardpb.Request) (*shardpb.Response, error) {
	select {
	case r.refused <- struct{}{}:
	default:
	}
	return nil, mergingErr
}

// TestLeaseFanoutMergedRange: a revoke of a lease registered in a range
// frozen for a merge waits out the freeze, then revokes the lease's keys
// in the range that absorbed it (its lessor took the attachments) and
// marks the merged range done at the home; a lease's keys in two ranges
// since merged are read once, from the merged range.
func TestLeaseFanoutMergedRange(t *testing.T) {
	fr := newFakeRanges([]string{"f"})
	fr.local[1].r.registered = map[int64][]shard.RangeID{7: {3}, 8: {2, 3}}
	f := NewForwarder(1, nil)
	l2 := newMergeLocal(&placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), End: []byte("m"), Generation: 1},
		&rangeReplica{fakeReplica: fakeReplica{leader: 1}, id: 2, log: fr.log,
			shadowKeys: map[int64][][]byte{8: {[]byte("g"), []byte("p")}}})
	frozen := &frozenReplica{fakeReplica: fakeReplica{leader: 1}, refused: make(chan struct{}, 1)}
	l3 := newMergeLocal(&placementpb.RangeDescriptor{Id: 3, Start: []byte("m"), Generation: 1}, frozen)
	fr.cache.Put(RangeEntry{Local: l2, Shard: f.Range(l2)}, RangeEntry{Local: l3, Shard: f.Range(l3)})
	fo := newFanout(fr, &fakeHome{index: 42})
	defer fo.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fo.RevokeRemote(ctx, 7) }()
	<-frozen.refused
	<-frozen.refused // refused, and tried again
	l2.d.Store(&placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), Generation: 2})
	fr.cache.merge(l2, nil, 3)
	if err := <-done; err != nil {
		t.Fatalf("revoke across the merge: %v", err)
	}
	want := `range 2: shadow-revoke lease=7 gen=42
range 1: unregister lease=7 range=3`
	if got := fr.log.String(); got != want {
		t.Fatalf("writes:\n%s\nwant:\n%s", got, want)
	}
	keys, err := fo.RemoteKeys(ctx, 8)
	if err != nil || fmt.Sprintf("%q", keys) != `["g" "p"]` {
		t.Fatalf("keys of a lease in both merged ranges: %q %v", keys, err)
	}
}

// TestForwardMergedRange: a member asked for a range merged away here —
// a write or a read — answers that the range absorbing it holds its keys,
// with that range's descriptor; the asking member's cache takes it in
// (the merged range held elsewhere, before its map shows the merge) and
// routes the keys there.
func TestForwardMergedRange(t *testing.T) {
	set := []*placementpb.Replica{{Member: 2, Id: 2}}
	memberOf := func(_ shard.RangeID, id shard.ReplicaID) (placement.NodeID, bool) { return placement.NodeID(id), true }
	// Member 2 held r2 [f,m) and r3 [m,); r2 absorbed r3.
	merged := &placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), Generation: 3, ReplicaSet: set}
	held := NewRangeCacheVia(NewForwarder(2, nil))
	l2 := newMergeLocal(&placementpb.RangeDescriptor{Id: 2, Start: []byte("f"), End: []byte("m"), Generation: 1, ReplicaSet: set},
		&fakeReplica{leader: 2})
	held.Put(entryOf(l2), entryOf(newMergeLocal(&placementpb.RangeDescriptor{Id: 3, Start: []byte("m"), Generation: 2,
		ReplicaSet: set}, &fakeReplica{leader: 2})))
	l2.d.Store(merged)
	held.merge(l2, nil, 3)
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{2: l2}}
	dial2 := serveMemberWith(t, Config{MemberID: 2, MemberOf: memberOf, Ranges: held}, m2)

	// Member 1 routes by a map from before the merge.
	fwd := NewForwarder(1, func(m placement.NodeID) (grpc.ClientConnInterface, error) { return dial2(m) })
	fwd.SetMemberOf(memberOf)
	c := NewRangeCacheVia(fwd)
	c.PutMap([]*placementpb.RangeDescriptor{
		{Id: 2, Start: []byte("f"), End: []byte("m"), Generation: 1, Leader: 2, ReplicaSet: set},
		{Id: 3, Start: []byte("m"), Generation: 2, Leader: 2, ReplicaSet: set},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r3 := c.Client(3)
	checkOutside := func(what string, err error) {
		t.Helper()
		var o *shard.OutsideRangeError
		if !errors.As(err, &o) || o.Range.Id != 2 || o.Range.Generation != 3 || len(o.Range.End) != 0 {
			t.Fatalf("%s of merged range 3: %v, want outside the range, with range 2's merged descriptor", what, err)
		}
		if !moved(toGRPC(err)) {
			t.Fatalf("%s: the router would not route %v again", what, err)
		}
	}
	_, err := r3.Write(ctx, &shardpb.Request{})
	checkOutside("a write", err)
	_, err = r3.Range(ctx, &pb.RangeRequest{Key: []byte("p")}, true)
	checkOutside("a read", err)
	_, err = r3.ReadAt(ctx, &pb.RangeRequest{Key: []byte("p")}, 9)
	checkOutside("a read at a revision", err)
	var o *shard.OutsideRangeError
	errors.As(err, &o)
	c.Refresh(o.Range)
	p, ok := c.Lookup([]byte("p"))
	if !ok || p.ID != 2 || c.Client(3) != nil {
		t.Fatalf("after the answer: p routes to %v (%v), range 3's client %v", p.ID, ok, c.Client(3))
	}
	if _, err := p.Shard.Write(ctx, &shardpb.Request{}); err != nil {
		t.Fatalf("a write routed to the merged range: %v", err)
	}
	// A range this member never held or merged: no range here, as before.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	_, err = f4(fwd).Write(short, &shardpb.Request{})
	if err == nil || moved(err) {
		t.Fatalf("a range member 2 knows nothing of: %v, want no range there (not an answer naming another)", err)
	}
}

// f4 is range 4 on member 2, which has no replica of it.
func f4(f *Forwarder) *RangeClient {
	return f.RemoteRange(&placementpb.RangeDescriptor{Id: 4, Leader: 2, ReplicaSet: []*placementpb.Replica{{Member: 2, Id: 2}}})
}
