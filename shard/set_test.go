package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// TestSet runs testdata/set.txt: a member's replicas in key order as they
// are added and split. Commands:
//
//	add id=N [start=K] [end=K] [gen=N] [started]   add a replica
//	split parent=N child=N key=K                    a split applies here
//	merge left=N right=N [end=K] gen=N              a merge applies here
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
		case "merge":
			var left, right, gen uint64
			d.ScanArgs(t, "left", &left)
			d.ScanArgs(t, "right", &right)
			d.ScanArgs(t, "gen", &gen)
			span := mvcc.Span{Start: s.Get(RangeID(left), false).Descriptor().Start}
			if v := arg("end"); v != "" {
				span.End = []byte(v)
			}
			gone := s.Merge(s.Get(RangeID(left), false), RangeID(right), span, gen)
			if gone == nil {
				return "not held\n" + show(s.Routing())
			}
			return "retire " + show([]*Range{gone}) + show(s.Routing())
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
	if local, pending, merged, err := LocalRanges(db, 1, ranges, true, log); err != nil || len(local) != 4 || pending != nil || merged != nil {
		t.Fatalf("founding: local %v pending %v merged %v err %v; want the map as it is", local, pending, merged, err)
	}
	local, pending, merged, err := LocalRanges(db, 1, ranges, false, log)
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
	if len(pending) != 1 || pending[0].Id != 3 || merged != nil {
		t.Fatalf("pending = %v merged = %v, want range 3 pending, none merged", pending, merged)
	}
}

// dropScene builds, on db, two ranges with replica records (replica 5 of
// range 1, replica 6 of range 2) and a Set holding both: range 1 counts
// writes on both sides of "m" (so event records hold keys of both), with a
// lease attaching keys of both; it splits at "m" into range 2; both write
// stamped, and range 2 compacts (rewriting records it shares with range 1).
// Range 1's keys contain "gone", range 2's "kept".
func dropScene(t *testing.T, db *pebble.DB, events *mvcc.EventLog) (sm2 *StateMachine, set *Set) {
	t.Helper()
	open := func(id uint64, span mvcc.Span) *StateMachine {
		s := Factory(Config{DB: db, Events: events, Span: span})(id, 1).(*StateMachine)
		if _, err := s.Open(nil); err != nil {
			t.Fatal(err)
		}
		return s
	}
	sm1 := open(1, mvcc.Span{})
	idx := uint64(0)
	do := func(s *StateMachine, reqs ...*shardpb.Request) {
		t.Helper()
		idx++
		for _, r := range apply(t, s, idx, reqs...) {
			if e := r.GetError(); e != nil {
				t.Fatalf("apply at %d: %v", idx, e)
			}
		}
	}
	do(sm1, putReq(t, "a-gone", "1", 0), putReq(t, "x-kept", "1", 0))
	do(sm1, leaseReq(t, &pb.LeaseGrantRequest{ID: 7, TTL: 100}))
	do(sm1, leaseReq(t, &pb.PutRequest{Key: []byte("b-gone"), Value: []byte("1"), Lease: 7}),
		leaseReq(t, &pb.PutRequest{Key: []byte("y-kept"), Value: []byte("1"), Lease: 7}))
	do(sm1, leaseReq(t, &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("z")}))
	do(sm1, putReq(t, "a-gone", "2", 0), putReq(t, "x-kept", "2", 0))
	do(sm1, &shardpb.Request{Op: &shardpb.Request_Split{Split: &shardpb.SplitRange{Key: []byte("m"), Child: 2}}})
	sm2 = open(2, mvcc.Span{Start: []byte("m")})
	do(sm2, leaseReq(t, &pb.LeaseGrantRequest{ID: 8, TTL: 100}))
	do(sm2, leaseReq(t, &pb.PutRequest{Key: []byte("y-kept"), Value: []byte("3"), Lease: 8}))
	do(sm1, putReq(t, "c-gone", "3", 100))
	do(sm2, putReq(t, "x-kept", "3", 101))
	do(sm1, putReq(t, "a-gone", "3", 102))
	do(sm2, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: marshalCompact(t, 4)}})
	set = NewSet(SetConfig{DB: db, Events: events})
	for _, d := range []*placementpb.RangeDescriptor{{Id: 1, End: []byte("m")}, {Id: 2, Start: []byte("m")}} {
		replica := ReplicaID(4 + d.Id)
		set.Add(NewRange(RangeConfig{ReplicaID: replica}, d, 0))
		if err := WriteRecord(db, ReplicaRecord{Range: RangeID(d.Id), Replica: replica, Span: SpanOf(d)}); err != nil {
			t.Fatal(err)
		}
	}
	return sm2, set
}

func marshalCompact(t *testing.T, rev int64) []byte {
	b, err := proto.Marshal(&pb.CompactionRequest{Revision: rev})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rangeState is everything of range 2 a drop of range 1 must leave as it
// is: its keys, its history, its internal and lessor records, its
// replica record. (Range 2 spans [m,).)
func rangeState(t *testing.T, db *pebble.DB, id uint64) string {
	t.Helper()
	s := Factory(Config{DB: db, Span: mvcc.Span{Start: []byte("m")}})(id, 1).(*StateMachine)
	if _, err := s.Open(nil); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "keys %s\n", keys(t, s))
	if err := s.Events(s.CompactRev(), s.Rev(), func(rev mvcc.Revision, evs []*mvccpb.Event) bool {
		for _, ev := range evs {
			fmt.Fprintf(&b, "event %d %s %s=%s\n", rev, ev.Type, ev.Kv.Key, ev.Kv.Value)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []byte{'m', 'l', 'r'} {
		lo := binary.BigEndian.AppendUint64([]byte{kind}, id)
		hi := binary.BigEndian.AppendUint64([]byte{kind}, id+1)
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			t.Fatal(err)
		}
		for it.First(); it.Valid(); it.Next() {
			fmt.Fprintf(&b, "record %x = %x\n", it.Key(), it.Value())
		}
		it.Close()
	}
	return b.String()
}

// leftOf lists what remains in db of range 1: its versions (keys with
// "gone"), event records naming them, its internal, lessor and replica
// records.
func leftOf(t *testing.T, db *pebble.DB) []string {
	t.Helper()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var left []string
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		switch {
		case k[0] == 'k' && bytes.Contains(k, []byte("gone")):
			left = append(left, fmt.Sprintf("version %q", k))
		case k[0] == 'e' && bytes.Contains(it.Value(), []byte("gone")):
			left = append(left, fmt.Sprintf("event record %x names %q", k, it.Value()))
		case (k[0] == 'm' || k[0] == 'l' || k[0] == 'r') && len(k) >= 9 && binary.BigEndian.Uint64(k[1:9]) == 1:
			left = append(left, fmt.Sprintf("record %q", k))
		}
	}
	return left
}

// TestDropResumesAfterCrash: a drop of range 1 interrupted by a crash —
// before its data batch (the raft data removal failed), or after it and
// before its sweep — is finished by ResumeDrops on the reopened pebble:
// nothing of range 1 is left, range 2 is as it was, and the raft data is
// removed again only if the crash came before the batch.
func TestDropResumesAfterCrash(t *testing.T) {
	for _, tc := range []struct {
		name        string
		beforeBatch bool
	}{{"before the data batch", true}, {"before the sweep", false}} {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			db := openDB(t, fs)
			_, set := dropScene(t, db, mvcc.NewEventLog(db))
			want := rangeState(t, db, 2)
			if len(leftOf(t, db)) == 0 {
				t.Fatal("the scene has nothing of range 1")
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			err := set.Drop(ctx, 1, func(_ context.Context, id RangeID, replica ReplicaID) error {
				if id != 1 || replica != 5 {
					t.Errorf("remove the raft data of replica %d of range %d, want replica 5 of range 1", replica, id)
				}
				if tc.beforeBatch {
					return errors.New("injected: the removal fails")
				}
				cancel() // the drop stops before its sweep
				return nil
			})
			if err == nil {
				t.Fatal("the interrupted drop returned no error")
			}
			if set.Owns([]byte("a-gone")) || !set.Owns([]byte("x-kept")) {
				t.Fatal("after the drop began, the set still owns range 1's keys, or no longer range 2's")
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{})
			db.Close()

			db = openDB(t, crashed)
			defer db.Close()
			recs, err := Records(db)
			if err != nil {
				t.Fatal(err)
			}
			wantPhase := DropSweeping
			if tc.beforeBatch {
				wantPhase = DropMarked
			}
			if len(recs) != 2 || recs[0].Range != 1 || recs[0].Drop != wantPhase || recs[1].Dropping() {
				t.Fatalf("records after the crash: %+v, want range 1 in phase %d and range 2 not dropping", recs, wantPhase)
			}
			if len(leftOf(t, db)) == 0 {
				t.Fatal("the crash left nothing of range 1 for the resumed drop to do")
			}
			set = NewSet(SetConfig{DB: db, Events: mvcc.NewEventLog(db)})
			set.Add(NewRange(RangeConfig{ReplicaID: 6}, &placementpb.RangeDescriptor{Id: 2, Start: []byte("m")}, 0))
			removed := 0
			if err := set.ResumeDrops(context.Background(), func(_ context.Context, id RangeID, replica ReplicaID) error {
				if id != 1 || replica != 5 {
					t.Errorf("remove the raft data of replica %d of range %d, want replica 5 of range 1", replica, id)
				}
				removed++
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if wantRemoved := map[bool]int{true: 1, false: 0}[tc.beforeBatch]; removed != wantRemoved {
				t.Fatalf("the resumed drop removed raft data %d times, want %d", removed, wantRemoved)
			}
			if left := leftOf(t, db); len(left) > 0 {
				t.Fatalf("left of range 1 after the resumed drop:\n%s", strings.Join(left, "\n"))
			}
			if got := rangeState(t, db, 2); got != want {
				t.Fatalf("range 2 after the drop:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestDropNeverTouchesOwnedSpan: the record of a dropped range may name a
// span wider than its store's (here the whole key space, where its store
// has [,m) and range 2 owns [m,)); the drop deletes nothing of a span a
// range of the set owns, and a replica that overlaps a drop under way
// starts only after the drop's data batch.
func TestDropNeverTouchesOwnedSpan(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	events := mvcc.NewEventLog(db)
	_, set := dropScene(t, db, events)
	if err := WriteRecord(db, ReplicaRecord{Range: 1, Replica: 5, Span: mvcc.Span{Start: []byte{}}}); err != nil {
		t.Fatal(err)
	}
	// Without the split's record of its span, the store's span is the
	// record's as far as the drop can tell.
	b := db.NewBatch()
	if err := b.Delete(append(binary.BigEndian.AppendUint64([]byte{'m'}, 1), "span"...), nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	b.Close()
	want := rangeState(t, db, 2)

	release := make(chan struct{})
	removing := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- set.Drop(context.Background(), 1, func(context.Context, RangeID, ReplicaID) error {
			close(removing)
			<-release
			return nil
		})
	}()
	<-removing
	// A replica over [g,p) waits for the drop's data batch.
	waited := make(chan error, 1)
	go func() { waited <- set.waitDrops(3, mvcc.Span{Start: []byte("g"), End: []byte("p")}) }()
	select {
	case err := <-waited:
		t.Fatalf("a replica overlapping the drop did not wait for its data batch (%v)", err)
	default:
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if left := leftOf(t, db); len(left) > 0 {
		t.Fatalf("left of range 1 after the drop:\n%s", strings.Join(left, "\n"))
	}
	if got := rangeState(t, db, 2); got != want {
		t.Fatalf("range 2 after the drop:\n%s\nwant:\n%s", got, want)
	}
	if recs, err := Records(db); err != nil || len(recs) != 1 || recs[0].Range != 2 {
		t.Fatalf("records after the drop: %+v %v, want range 2's", recs, err)
	}
	if set.Get(1, false) != nil || set.Get(2, false) == nil {
		t.Fatal("the set after the drop does not hold exactly range 2")
	}
}

// TestReplicaRecordsStayLocal: replica records are the member's own: no
// snapshot of a range (SaveSnapshot) and no image of the member's ranges
// (WriteImageBackup) carries them, and a restore of either brings none.
func TestReplicaRecordsStayLocal(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm2, _ := dropScene(t, db, mvcc.NewEventLog(db))
	if err := WriteRecord(db, ReplicaRecord{Range: 2, Replica: 9, Drop: DropMarked, Span: mvcc.Span{Start: []byte("m")}}); err != nil {
		t.Fatal(err)
	}
	recs, err := Records(db)
	if err != nil || len(recs) != 3 {
		t.Fatalf("records %+v %v, want 3", recs, err)
	}
	snap, err := sm2.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := sm2.SaveSnapshot(snap, &stream, nil); err != nil {
		t.Fatal(err)
	}
	var image bytes.Buffer
	pin := db.NewSnapshot()
	if _, err := WriteImageBackup(pin, 1, sm2.Rev(), &image); err != nil {
		t.Fatal(err)
	}
	pin.Close()
	for name, out := range map[string][]byte{"snapshot": stream.Bytes(), "image": image.Bytes()} {
		for _, rec := range recs {
			if bytes.Contains(out, replicaKey(rec.Range, rec.Replica)) {
				t.Errorf("the %s carries the record of replica %d of range %d", name, rec.Replica, rec.Range)
			}
		}
		fresh := openDB(t, vfs.NewMem())
		var err error
		if name == "snapshot" {
			s := Factory(Config{DB: fresh, Span: mvcc.Span{Start: []byte("m")}})(2, 1).(*StateMachine)
			if _, err = s.Open(nil); err == nil {
				err = s.RecoverFromSnapshot(bytes.NewReader(out), nil)
			}
		} else {
			_, err = RestoreBackup(fresh, 1, bytes.NewReader(out))
		}
		if err != nil {
			t.Fatalf("restore the %s: %v", name, err)
		}
		if got, err := Records(fresh); err != nil || len(got) != 0 {
			t.Errorf("restoring the %s made records %+v (%v)", name, got, err)
		}
		fresh.Close()
	}
}

// TestReplicaRecordCodec: records read back as written, in (range,
// replica) order.
func TestReplicaRecordCodec(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	in := []ReplicaRecord{
		{Range: 1, Replica: 3, Span: mvcc.Span{Start: []byte{}}},
		{Range: 1, Replica: 7, Learner: true, Drop: DropSweeping, Span: mvcc.Span{Start: []byte("a\x00"), End: []byte("q")}},
		{Range: 2, Replica: 1, Drop: DropMarked, Span: mvcc.Span{Start: []byte("q"), End: []byte{0xff}}},
	}
	for _, i := range []int{2, 0, 1} {
		if err := WriteRecord(db, in[i]); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Records(db)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", in) {
		t.Fatalf("records = %+v, want %+v", got, in)
	}
	if rec, err := MarkDropping(db, 1, 3); err != nil || rec.Drop != DropMarked {
		t.Fatalf("MarkDropping = %+v %v", rec, err)
	}
	if rec, err := MarkDropping(db, 1, 7); err != nil || rec.Drop != DropSweeping {
		t.Fatalf("MarkDropping of a record further on = %+v %v, want it as it is", rec, err)
	}
	if _, err := MarkDropping(db, 3, 1); !errors.Is(err, ErrNoReplica) {
		t.Fatalf("MarkDropping of no record: %v", err)
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
