package shard

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// mergeScene is range 1 split at m into range 2 on db, each with a key
// (a, n), in single-group mode (unstamped writes).
type mergeScene struct {
	t        *testing.T
	db       *pebble.DB
	l, r     *StateMachine
	lIx, rIx uint64
}

func newMergeScene(t *testing.T, db *pebble.DB) *mergeScene {
	t.Helper()
	m := &mergeScene{t: t, db: db}
	m.l, _ = openSM(t, db, 1, mvcc.Span{})
	m.do(1, putReq(t, "a", "1", 0), putReq(t, "n", "1", 0))
	m.do(1, &shardpb.Request{Op: &shardpb.Request_Split{Split: &shardpb.SplitRange{Key: []byte("m"), Child: 2}}})
	m.r, _ = openSM(t, db, 2, mvcc.Span{Start: []byte("m")})
	return m
}

// do applies reqs to range id (1 or 2) at its next index; each must apply.
func (m *mergeScene) do(id int, reqs ...*shardpb.Request) []*shardpb.Response {
	m.t.Helper()
	s, ix := m.l, &m.lIx
	if id == 2 {
		s, ix = m.r, &m.rIx
	}
	*ix++
	resps := apply(m.t, s, *ix, reqs...)
	for _, r := range resps {
		if e := r.GetError(); e != nil {
			m.t.Fatalf("range %d, index %d: %v", id, *ix, e)
		}
	}
	return resps
}

func freezeReq(merge uint64) *shardpb.Request {
	return &shardpb.Request{Op: &shardpb.Request_MergeFreeze{MergeFreeze: &shardpb.MergeFreeze{Merge: merge, Left: 1}}}
}

func commitReq(merge uint64) *shardpb.Request {
	return &shardpb.Request{Op: &shardpb.Request_MergeCommit{MergeCommit: &shardpb.MergeCommit{Merge: merge, Right: 2,
		RightStart: []byte("m"), Generation: 3}}}
}

// allKeys lists every key s serves in the whole key space.
func allKeys(t *testing.T, s *StateMachine) string {
	t.Helper()
	v, err := s.Lookup(RangeQuery{Req: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range v.(*pb.RangeResponse).Kvs {
		fmt.Fprintf(&b, "%s=%s ", kv.Key, kv.Value)
	}
	return b.String()
}

// TestFreezeSurvivesCrash: a freeze's batch is synced, so a machine crash
// right after it (pebble's unsynced writes lost) leaves the right range
// frozen on reopen, and what it applied before the freeze there too;
// a batch applied after it without a sync is lost, as the crash is meant
// to show.
func TestFreezeSurvivesCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	db := openDB(t, fs)
	m := newMergeScene(t, db)
	m.do(2, putReq(t, "n", "2", 0))
	if resp := m.do(2, freezeReq(1)); resp[0].GetMergeOutcome().GetFreezeIndex() != 2 {
		t.Fatalf("freeze answered %v, want freeze index 2", resp[0])
	}
	m.do(1, putReq(t, "b", "1", 0)) // not synced: lost in the crash
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	db.Close()

	db = openDB(t, crashed)
	defer db.Close()
	r, applied := openSM(t, db, 2, mvcc.Span{Start: []byte("m")})
	if merge, ok := r.Frozen(); !ok || merge != 1 || applied != 2 {
		t.Fatalf("after the crash: frozen %v for merge %d at applied index %d, want frozen for merge 1 at 2", ok, merge, applied)
	}
	v, err := r.Lookup(StatusQuery{})
	if err != nil || !v.(Status).Frozen || v.(Status).Merge != 1 {
		t.Fatalf("status after the crash: %+v %v, want frozen for merge 1", v, err)
	}
	if _, err := r.Lookup(RangeQuery{Req: &pb.RangeRequest{Key: []byte("n")}}); err == nil || !strings.Contains(err.Error(), "frozen") {
		t.Fatalf("a read of the frozen range after the crash: %v, want it refused", err)
	}
	l, lApplied := openSM(t, db, 1, mvcc.Span{End: []byte("m")})
	if lApplied != 2 || strings.Contains(keys(t, l), "b=") {
		t.Fatalf("the left range after the crash: applied %d, keys %s; want its unsynced batch lost (applied 2, no b)", lApplied, keys(t, l))
	}
}

// TestFrozenSnapshotIgnored: a frozen right range keeps its state when a
// snapshot of the same freeze arrives, or any once the left range absorbed
// it here (a restore would delete keys the left range wrote since); a
// snapshot taken before the freeze (the merge was undone meanwhile) is
// restored.
func TestFrozenSnapshotIgnored(t *testing.T) {
	snapshot := func(s *StateMachine) []byte {
		t.Helper()
		ctx, err := s.PrepareSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := s.SaveSnapshot(ctx, &buf, nil); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	t.Run("merged", func(t *testing.T) {
		db := openDB(t, vfs.NewMem())
		defer db.Close()
		m := newMergeScene(t, db)
		before := snapshot(m.r)
		m.do(2, freezeReq(1))
		frozen := snapshot(m.r)
		m.do(1, commitReq(1))
		m.do(1, putReq(t, "n", "from-left", 0))
		for name, img := range map[string][]byte{"frozen": frozen, "from before the freeze": before} {
			if err := m.r.RecoverFromSnapshot(bytes.NewReader(img), nil); err != nil {
				t.Fatalf("recover from the %s image: %v", name, err)
			}
			if got := allKeys(t, m.l); !strings.Contains(got, "n=from-left") {
				t.Fatalf("after the right range recovered from the %s image, the left range reads %s, want n=from-left", name, got)
			}
		}
	})
	t.Run("same freeze", func(t *testing.T) {
		db := openDB(t, vfs.NewMem())
		defer db.Close()
		m := newMergeScene(t, db)
		m.do(2, freezeReq(1))
		img := snapshot(m.r)
		m.do(2, &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{Target: 1}}})
		m.do(2, &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{Target: 1}}})
		if err := m.r.RecoverFromSnapshot(bytes.NewReader(img), nil); err != nil {
			t.Fatal(err)
		}
		if merge, ok := m.r.Frozen(); !ok || merge != 1 || m.r.AppliedIndex() != 3 {
			t.Fatalf("frozen %v (merge %d), applied %d; want frozen for merge 1, applied 3 as it was", ok, merge, m.r.AppliedIndex())
		}
	})
	t.Run("undone", func(t *testing.T) {
		db := openDB(t, vfs.NewMem())
		defer db.Close()
		m := newMergeScene(t, db)
		m.do(2, putReq(t, "n", "2", 0))
		img := snapshot(m.r)
		m.do(2, freezeReq(1))
		if err := m.r.RecoverFromSnapshot(bytes.NewReader(img), nil); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.r.Frozen(); ok || m.r.AppliedIndex() != 1 {
			t.Fatalf("frozen %v, applied %d after recovering from an image before the freeze; want thawed at 1", ok, m.r.AppliedIndex())
		}
	})
}

// TestResumeDropKeepsMergedSpan: after a merge applied here and a restart,
// LocalRanges leaves the right range out (to drop) and gives the left one
// the merged span; a drop of the right range resumed before any replica
// is in the set deletes none of its keys, which the left range's store
// owns now (its replica record still names its old span), only its
// records.
func TestResumeDropKeepsMergedSpan(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	m := newMergeScene(t, db)
	m.do(2, putReq(t, "p", "1", 0))
	m.do(2, freezeReq(1))
	m.do(1, commitReq(1))
	for _, rec := range []ReplicaRecord{{Range: 1, Replica: 5, Span: mvcc.Span{End: []byte("m")}}, {Range: 2, Replica: 6, Span: mvcc.Span{Start: []byte("m")}}} {
		if err := WriteRecord(db, rec); err != nil {
			t.Fatal(err)
		}
	}

	ranges := []*placementpb.RangeDescriptor{
		{Id: 1, End: []byte("m"), Generation: 1, Replicas: []uint64{1}},
		{Id: 2, Start: []byte("m"), Generation: 2, Parent: 1, Replicas: []uint64{1}},
	}
	local, pending, merged, err := LocalRanges(db, 1, ranges, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(local) != 1 || local[0].Id != 1 || len(local[0].End) != 0 || local[0].Generation != 3 || pending != nil ||
		len(merged) != 1 || merged[0].Id != 2 {
		t.Fatalf("LocalRanges: local %v pending %v merged %v; want range 1 over [,∞) at generation 3, range 2 merged", local, pending, merged)
	}

	if _, err := MarkDropping(db, 2, 6); err != nil {
		t.Fatal(err)
	}
	set := NewSet(SetConfig{DB: db, Events: mvcc.NewEventLog(db)})
	if err := set.ResumeDrops(context.Background(), func(context.Context, RangeID, ReplicaID) error { return nil }); err != nil {
		t.Fatal(err)
	}
	l, _ := openSM(t, db, 1, mvcc.Span{})
	if got, want := allKeys(t, l), "a=1 n=1 p=1 "; got != want {
		t.Fatalf("the left range after the right one's drop reads %q, want %q", got, want)
	}
	if recs, err := Records(db); err != nil || len(recs) != 1 || recs[0].Range != 1 {
		t.Fatalf("records after the drop: %+v %v, want range 1's", recs, err)
	}
	if _, ok, err := mvcc.StoredSpan(db, 2); err != nil || ok {
		t.Fatalf("the right range's span record after its drop: %v %v, want gone", ok, err)
	}
}
