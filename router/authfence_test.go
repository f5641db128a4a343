package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/shard/auth"
)

// fencedReplica is a range's replica that records the auth fences written
// to it, refusing them while down.
type fencedReplica struct {
	*fakeReplica
	id  shard.RangeID
	log *fenceLog
	mu  sync.Mutex
	// down refuses writes (guarded by mu).
	down bool
}

// fenceLog is the fences written to any range, in order.
type fenceLog struct {
	mu   sync.Mutex
	sent []string
}

func (l *fenceLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := strings.Join(l.sent, " ")
	l.sent = nil
	return out
}

func (r *fencedReplica) Write(_ context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return nil, errors.New("down")
	}
	f := req.GetAuthFence()
	if f == nil {
		return nil, fmt.Errorf("range %d: not a fence: %v", r.id, req)
	}
	r.log.mu.Lock()
	r.log.sent = append(r.log.sent, fmt.Sprintf("r%d:%d/%v", r.id, f.Revision, f.Enabled))
	r.log.mu.Unlock()
	return &shardpb.Response{}, nil
}

func (r *fencedReplica) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

// fixedAuth is an AuthStore whose state the test sets.
type fixedAuth struct {
	mu sync.Mutex
	st *auth.State
}

func (a *fixedAuth) Auth(context.Context, bool) (*auth.State, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st, nil
}

func (a *fixedAuth) addRole(t *testing.T, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, _, err := a.st.Apply(&pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: name}})
	if err != nil {
		t.Fatal(err)
	}
	a.st = st
}

// TestAuthFencerPass: while this member leads range 1, a pass fences every
// other range once with range 1's auth state, then only when the state
// moved on; a range that refused is fenced at the next pass; losing range
// 1's leadership forgets what was sent, so taking it again fences every
// range again. Before any auth change nothing is sent.
func TestAuthFencerPass(t *testing.T) {
	log := &fenceLog{}
	r1 := &fakeReplica{leader: 1}
	cache := NewRangeCache()
	cache.Put(RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 1, End: []byte("g"), Generation: 1}, r1), Shard: r1})
	ranges := map[shard.RangeID]*fencedReplica{}
	for _, d := range []*placementpb.RangeDescriptor{
		{Id: 2, Start: []byte("g"), End: []byte("p"), Generation: 1},
		{Id: 3, Start: []byte("p"), Generation: 1},
	} {
		r := &fencedReplica{fakeReplica: &fakeReplica{leader: 2}, id: shard.RangeID(d.Id), log: log}
		ranges[r.id] = r
		cache.Put(RangeEntry{Local: newFakeLocal(d, r.fakeReplica), Shard: r})
	}
	st := &fixedAuth{st: auth.New()}
	s := New(Config{MemberID: 1, Shard: r1, Ranges: cache, Auth: st})
	f := &refencer{s: s, sent: map[shard.RangeID]*shardpb.AuthFence{}}
	ctx := context.Background()
	for _, step := range []struct {
		name string
		do   func()
		want string
	}{
		{"no auth change yet", func() {}, ""},
		{"a change", func() { st.addRole(t, "a") }, "r2:2/false r3:2/false"},
		{"nothing new", func() {}, ""},
		{"range 3 down at a change", func() { ranges[3].setDown(true); st.addRole(t, "b") }, "r2:3/false"},
		{"range 3 back", func() { ranges[3].setDown(false) }, "r3:3/false"},
		{"leadership lost", func() { r1.leader = 2 }, ""},
		{"leadership back", func() { r1.leader = 1 }, "r2:3/false r3:3/false"},
	} {
		step.do()
		f.pass(ctx)
		got := strings.Split(log.take(), " ")
		slices.Sort(got)
		if g := strings.TrimSpace(strings.Join(got, " ")); g != step.want {
			t.Fatalf("%s: fences %q, want %q", step.name, g, step.want)
		}
	}
}
