package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// opLog records, in order, the writes the fake ranges receive.
type opLog struct {
	mu    sync.Mutex
	ops   []string
	wrote chan struct{} // signalled (without blocking) on each write
}

func newOpLog() *opLog { return &opLog{wrote: make(chan struct{}, 1)} }

func (l *opLog) add(op string) {
	l.mu.Lock()
	l.ops = append(l.ops, op)
	l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
}

func (l *opLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.ops, "\n")
}

// rangeReplica is a fake replica of range id that records the writes it
// receives, answers the reads of the fan-out (ShadowReads) and of the
// range info (ReplicaCounters), led by this member (1).
type rangeReplica struct {
	fakeReplica
	id         uint64
	log        *opLog
	registered map[int64][]shard.RangeID // the home's registrations
	shadowKeys map[int64][][]byte
	failWrite  error
	status     shard.Status
	closed     mvcc.Revision
	proposed   uint64
	keys       int64
}

func (r *rangeReplica) Write(_ context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	if r.failWrite != nil {
		return nil, r.failWrite
	}
	switch op := req.Op.(type) {
	case *shardpb.Request_ShadowRevoke:
		r.log.add(fmt.Sprintf("range %d: shadow-revoke lease=%d gen=%d", r.id, op.ShadowRevoke.Lease, op.ShadowRevoke.Generation))
	case *shardpb.Request_LeaseUnregister:
		r.log.add(fmt.Sprintf("range %d: unregister lease=%d range=%d", r.id, op.LeaseUnregister.Lease, op.LeaseUnregister.Shard))
	default:
		r.log.add(fmt.Sprintf("range %d: %T", r.id, req.Op))
	}
	return &shardpb.Response{}, nil
}

func (r *rangeReplica) Registered(_ context.Context, id int64, linearizable bool) ([]shard.RangeID, error) {
	if !linearizable {
		return nil, errors.New("registrations read serializably")
	}
	return r.registered[id], nil
}

func (r *rangeReplica) ShadowKeys(_ context.Context, id int64, linearizable bool) ([][]byte, error) {
	if !linearizable {
		return nil, errors.New("shadow keys read serializably")
	}
	return r.shadowKeys[id], nil
}

func (r *rangeReplica) Status(context.Context, bool) (shard.Status, error) { return r.status, nil }
func (r *rangeReplica) Closed() mvcc.Revision                              { return r.closed }
func (r *rangeReplica) Proposed() uint64                                   { return r.proposed }

func (r *rangeReplica) Range(_ context.Context, req *pb.RangeRequest, _ bool) (*pb.RangeResponse, error) {
	if !req.CountOnly || !req.Serializable {
		return nil, errors.New("want a serializable count")
	}
	return &pb.RangeResponse{Count: r.keys}, nil
}

// rangeLocal is this member's replica r of range d; ready is closed once
// it is started.
type rangeLocal struct {
	d     *placementpb.RangeDescriptor
	r     *rangeReplica
	ready chan struct{}
}

func (l *rangeLocal) Descriptor() *placementpb.RangeDescriptor { return l.d }
func (l *rangeLocal) Ready() <-chan struct{}                   { return l.ready }
func (l *rangeLocal) Replica() Replica                         { return l.r }

// fakeRanges holds fake ranges put in a RangeCache, each range's Shard a
// RangeClient of this member (1), which leads them all.
type fakeRanges struct {
	cache *RangeCache
	log   *opLog
	local map[uint64]*rangeLocal
}

// newFakeRanges returns ranges cut at splits (range i+1 from splits[i-1]
// to splits[i]); those named in starting are not started.
func newFakeRanges(splits []string, starting ...uint64) *fakeRanges {
	fr := &fakeRanges{cache: NewRangeCache(), log: newOpLog(), local: map[uint64]*rangeLocal{}}
	f := NewForwarder(1, nil)
	bounds := append(append([]string{""}, splits...), "")
	for i := 0; i+1 < len(bounds); i++ {
		id := uint64(i + 1)
		d := &placementpb.RangeDescriptor{Id: id, Start: []byte(bounds[i]), End: []byte(bounds[i+1]), Generation: 1, Replicas: []uint64{1}}
		l := &rangeLocal{d: d, r: &rangeReplica{fakeReplica: fakeReplica{leader: 1}, id: id, log: fr.log}, ready: make(chan struct{})}
		if !slices.Contains(starting, id) {
			close(l.ready)
		}
		fr.local[id] = l
		fr.cache.Put(RangeEntry{Local: l, Shard: f.Range(l)})
	}
	return fr
}

// fakeHome is range 1 as the node would tell the fan-out of it.
type fakeHome struct {
	mu      sync.Mutex
	leads   bool
	index   uint64
	pending map[lease.ID][]uint64
	// asked is signalled (without blocking) each time Leads is asked.
	asked        chan struct{}
	pendingReads int
}

func (h *fakeHome) Leads() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case h.asked <- struct{}{}:
	default:
	}
	return h.leads
}

func (h *fakeHome) AppliedIndex() uint64 { return h.index }

func (h *fakeHome) PendingRevokes() (map[lease.ID][]uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pendingReads++
	return h.pending, nil
}

func newFanout(fr *fakeRanges, home *fakeHome) *LeaseFanout {
	return NewLeaseFanout(LeaseFanoutConfig{Ranges: fr.cache, HomeID: 1, Home: home, Every: time.Millisecond, Try: 5 * time.Second})
}

// TestLeaseFanoutRevokeOrder: a revoke deletes the lease's shadows in each
// range registered at the home, in the order registered, and unregisters
// each range at the home once its shadows are revoked; a range not started
// here is only unregistered.
func TestLeaseFanoutRevokeOrder(t *testing.T) {
	fr := newFakeRanges([]string{"f", "m", "t"}, 3)
	fr.local[1].r.registered = map[int64][]shard.RangeID{7: {4, 2, 3}}
	f := newFanout(fr, &fakeHome{index: 42})
	defer f.Close()
	if err := f.RevokeRemote(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	want := `range 4: shadow-revoke lease=7 gen=42
range 1: unregister lease=7 range=4
range 2: shadow-revoke lease=7 gen=42
range 1: unregister lease=7 range=2
range 1: unregister lease=7 range=3`
	if got := fr.log.String(); got != want {
		t.Fatalf("writes:\n%s\nwant:\n%s", got, want)
	}
}

// TestLeaseFanoutRevokeCutShort: a range refusing the shadow revoke stops
// the revoke there, that range still registered at the home.
func TestLeaseFanoutRevokeCutShort(t *testing.T) {
	fr := newFakeRanges([]string{"f", "m"})
	fr.local[1].r.registered = map[int64][]shard.RangeID{7: {2, 3}}
	fr.local[3].r.failWrite = shard.ErrStopped
	f := newFanout(fr, &fakeHome{index: 9})
	defer f.Close()
	if err := f.RevokeRemote(context.Background(), 7); !errors.Is(err, shard.ErrStopped) {
		t.Fatalf("revoke: %v, want %v", err, shard.ErrStopped)
	}
	want := `range 2: shadow-revoke lease=7 gen=9
range 1: unregister lease=7 range=2`
	if got := fr.log.String(); got != want {
		t.Fatalf("writes:\n%s\nwant:\n%s", got, want)
	}
}

// TestLeaseFanoutRemoteKeys: a lease's keys outside its home are those of
// the ranges registered at the home, started here.
func TestLeaseFanoutRemoteKeys(t *testing.T) {
	fr := newFakeRanges([]string{"f", "m", "t"}, 4)
	fr.local[1].r.registered = map[int64][]shard.RangeID{7: {3, 2, 4}}
	fr.local[2].r.shadowKeys = map[int64][][]byte{7: {[]byte("g"), []byte("h")}}
	fr.local[3].r.shadowKeys = map[int64][][]byte{7: {[]byte("n")}, 8: {[]byte("o")}}
	fr.local[4].r.shadowKeys = map[int64][][]byte{7: {[]byte("u")}}
	f := newFanout(fr, &fakeHome{})
	defer f.Close()
	keys, err := f.RemoteKeys(context.Background(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%q", keys); got != `["n" "g" "h"]` {
		t.Fatalf("keys %s", got)
	}
}

// TestLeaseFanoutPending: the loop finishes the revokes pending at the
// home only while this member leads it, and Close stops it.
func TestLeaseFanoutPending(t *testing.T) {
	fr := newFakeRanges([]string{"m"})
	home := &fakeHome{index: 5, pending: map[lease.ID][]uint64{7: {2}}, asked: make(chan struct{})}
	f := newFanout(fr, home)
	f.Start()
	// Not leading: asked twice, so the first round is over, and nothing
	// was read or written.
	<-home.asked
	<-home.asked
	home.mu.Lock()
	reads := home.pendingReads
	home.leads = true
	home.mu.Unlock()
	if reads != 0 || fr.log.String() != "" {
		t.Fatalf("not leading: %d reads of pending revokes, writes %q", reads, fr.log.String())
	}
	want := `range 2: shadow-revoke lease=7 gen=5
range 1: unregister lease=7 range=2`
	deadline := time.After(10 * time.Second)
	for !strings.HasPrefix(fr.log.String(), want) {
		select {
		case <-fr.log.wrote:
		case <-deadline:
			t.Fatalf("writes:\n%s\nwant:\n%s", fr.log.String(), want)
		}
	}
	f.Close()
}

// TestLeaseFanoutCloseUnstarted: Close returns at once when Start was
// never called.
func TestLeaseFanoutCloseUnstarted(t *testing.T) {
	f := newFanout(newFakeRanges(nil), &fakeHome{})
	f.Close()
	f.Close()
}
