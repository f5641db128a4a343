package router

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// alarmedReplica is a fakeReplica with alarms raised.
type alarmedReplica struct {
	*fakeReplica
	alarms []*pb.AlarmMember
}

func (r *alarmedReplica) Alarms(context.Context, bool) ([]*pb.AlarmMember, error) {
	return r.alarms, r.err
}

// swappableLeader is a fakeReplica whose leader may change while a watch
// reads it.
type swappableLeader struct {
	*fakeReplica
	leader atomic.Uint64
}

func (r *swappableLeader) Leader() (shard.ReplicaID, uint64, bool) {
	id := r.leader.Load()
	return shard.ReplicaID(id), 1, id != 0
}

// swapLocal is a started local replica that is a swappableLeader.
type swapLocal struct {
	*fakeLocal
	r *swappableLeader
}

func (l swapLocal) Replica() Replica { return l.r }

// recordingObserver lists the probes reported.
type recordingObserver struct{ seen []string }

func (o *recordingObserver) Probe(kind, check string, ok bool) {
	o.seen = append(o.seen, fmt.Sprintf("%s %s %v", kind, check, ok))
}

// TestProbes runs testdata/probes.txt: a sharded member with ranges 1 and
// 2 here, answering /health, /livez and /readyz as etcd does.
//
//	set leader1=<id> leader2=<id> alarm=<NOSPACE|CORRUPT|none> err=<message|none>
//	get <path> | post <path>   → status, Content-Type, Allow, body
//	observed                   → the probes reported since the last time
func TestProbes(t *testing.T) {
	r1 := &alarmedReplica{fakeReplica: &fakeReplica{leader: 1}}
	r2 := &fakeReplica{leader: 1}
	cache := NewRangeCache()
	d1 := &placementpb.RangeDescriptor{Id: 1, End: []byte("m"), Generation: 1}
	d2 := &placementpb.RangeDescriptor{Id: 2, Start: []byte("m"), Generation: 1}
	cache.Put(RangeEntry{Local: newFakeLocal(d1, r1.fakeReplica), Shard: r1},
		RangeEntry{Local: newFakeLocal(d2, r2), Shard: r2})
	obs := &recordingObserver{}
	s := New(Config{Shard: r1, Ranges: cache, Observer: obs, RequestTimeout: time.Second})
	h := s.ProbeHandler()

	datadriven.RunTest(t, "testdata/probes.txt", func(t *testing.T, d *datadriven.TestData) string {
		switch d.Cmd {
		case "set":
			for _, a := range d.CmdArgs {
				v := a.Vals[0]
				switch a.Key {
				case "leader1":
					var id uint64
					d.ScanArgs(t, "leader1", &id)
					r1.leader = shard.ReplicaID(id)
				case "leader2":
					var id uint64
					d.ScanArgs(t, "leader2", &id)
					r2.leader = shard.ReplicaID(id)
				case "alarm":
					r1.alarms = nil
					if v != "none" {
						r1.alarms = []*pb.AlarmMember{{MemberID: 1, Alarm: pb.AlarmType(pb.AlarmType_value[v])}}
					}
				case "err":
					r1.err = nil
					if v != "none" {
						r1.err = fmt.Errorf("%s", v)
					}
				default:
					t.Fatalf("set: unknown %s", a.Key)
				}
			}
			return ""
		case "get", "post":
			method := http.MethodGet
			if d.Cmd == "post" {
				method = http.MethodPost
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(method, d.CmdArgs[0].String(), nil))
			resp := w.Result()
			b, _ := io.ReadAll(resp.Body)
			out := fmt.Sprintf("%d %s\n", resp.StatusCode, resp.Header.Get("Content-Type"))
			if allow := resp.Header.Get("Allow"); allow != "" {
				out += "Allow: " + allow + "\n"
			}
			return out + strings.ReplaceAll(string(b), "\n", "⏎\n")
		case "observed":
			out := strings.Join(obs.seen, "\n")
			obs.seen = nil
			return out + "\n"
		}
		t.Fatalf("unknown command %s", d.Cmd)
		return ""
	})
}

// TestLeaderlessSince: a range keeps the time it was first seen without
// a leader across scans, and leaves the set once it has one.
func TestLeaderlessSince(t *testing.T) {
	r1, r2 := &fakeReplica{leader: 1}, &fakeReplica{}
	cache := NewRangeCache()
	cache.Put(RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 1, End: []byte("m"), Generation: 1}, r1), Shard: r1},
		RangeEntry{Local: newFakeLocal(&placementpb.RangeDescriptor{Id: 2, Start: []byte("m"), Generation: 1}, r2), Shard: r2})
	t0 := time.Unix(100, 0)
	l := scanLeaderless(cache, nil, t0)
	if len(l.Ranges) != 1 || l.Ranges[0].ID != 2 || !l.Ranges[0].Since.Equal(t0) || string(l.Ranges[0].Start) != "m" {
		t.Fatalf("scan 1: %+v, want range 2 since %v", l.Ranges, t0)
	}
	r1.leader = 0
	l = scanLeaderless(cache, l, t0.Add(time.Second))
	if len(l.Ranges) != 2 || !l.Ranges[0].Since.Equal(t0.Add(time.Second)) || !l.Ranges[1].Since.Equal(t0) {
		t.Fatalf("scan 2: %+v, want range 1 since t0+1s and range 2 since t0", l.Ranges)
	}
	r2.leader = 3
	if l = scanLeaderless(cache, l, t0.Add(2*time.Second)); len(l.Ranges) != 1 || l.Ranges[0].ID != 1 || !l.Has(1) || l.Has(2) {
		t.Fatalf("scan 3: %+v, want range 1 alone", l.Ranges)
	}

	// The watch publishes what it scans.
	a := &swappableLeader{fakeReplica: &fakeReplica{}}
	cache = NewRangeCache()
	cache.Put(RangeEntry{Local: swapLocal{newFakeLocal(&placementpb.RangeDescriptor{Id: 1, Generation: 1}, nil), a}, Shard: a})
	s := New(Config{Shard: a, Ranges: cache})
	w := s.StartLeaderWatch(time.Millisecond)
	defer w.Close()
	if got := w.Leaderless(); !got.Has(1) {
		t.Fatalf("watch: %+v, want range 1", got.Ranges)
	}
	a.leader.Store(2)
	deadline := time.Now().Add(10 * time.Second)
	for w.Leaderless().Has(1) {
		if time.Now().After(deadline) {
			t.Fatal("the watch still has range 1 without a leader after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
