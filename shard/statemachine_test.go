package shard

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

func openDB(t *testing.T, fs vfs.FS) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", mvcc.PebbleOptions(&pebble.Options{FS: fs, Logger: nopLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	return db
}

type nopLogger struct{}

func (nopLogger) Infof(string, ...interface{})  {}
func (nopLogger) Errorf(string, ...interface{}) {}
func (nopLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf(format, args...))
}

func openSM(t *testing.T, db *pebble.DB, shardID uint64, span mvcc.Span) (*StateMachine, uint64) {
	t.Helper()
	s := Factory(Config{DB: db, Span: span})(shardID, 1).(*StateMachine)
	applied, err := s.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, applied
}

func putReq(t *testing.T, k, v string, stamp int64) *shardpb.Request {
	t.Helper()
	b, err := proto.Marshal(&pb.PutRequest{Key: []byte(k), Value: []byte(v)})
	if err != nil {
		t.Fatal(err)
	}
	return &shardpb.Request{Stamp: stamp, Op: &shardpb.Request_Put{Put: b}}
}

// apply proposes one entry of requests at index idx and returns its responses.
func apply(t *testing.T, s *StateMachine, idx uint64, reqs ...*shardpb.Request) []*shardpb.Response {
	t.Helper()
	cmd, err := proto.Marshal(&shardpb.Command{Requests: reqs})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Update([]sm.Entry{{Index: idx, Cmd: cmd}})
	if err != nil {
		t.Fatal(err)
	}
	var res shardpb.Result
	if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
		t.Fatal(err)
	}
	return res.Responses
}

// keys lists key=value@mod of everything the state machine serves.
func keys(t *testing.T, s *StateMachine) string {
	t.Helper()
	// The whole span: a shard refuses ranges reaching outside it.
	start, end := s.cfg.Span.Start, s.cfg.Span.End
	if len(start) == 0 {
		start = []byte{0}
	}
	if end == nil {
		end = []byte{0}
	}
	v, err := s.Lookup(RangeQuery{Req: &pb.RangeRequest{Key: start, RangeEnd: end}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, kv := range v.(*pb.RangeResponse).Kvs {
		fmt.Fprintf(&buf, "%s=%s@%d ", kv.Key, kv.Value, kv.ModRevision)
	}
	return buf.String()
}

func TestApplyAndReopen(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	s, applied := openSM(t, db, 1, mvcc.Span{})
	if applied != 0 {
		t.Fatalf("fresh applied index %d", applied)
	}
	resps := apply(t, s, 5, putReq(t, "a", "1", 0), putReq(t, "b", "2", 0))
	for _, r := range resps {
		if r.GetPut() == nil {
			t.Fatalf("put refused: %v", r)
		}
	}
	want := keys(t, s)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(StatusQuery{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("lookup after close: %v, want ErrClosed", err)
	}
	s2, applied := openSM(t, db, 1, mvcc.Span{})
	if applied != 5 {
		t.Fatalf("applied index after reopen = %d, want 5", applied)
	}
	if got := keys(t, s2); got != want {
		t.Fatalf("after reopen %q, want %q", got, want)
	}
}

func TestStaleStampAndBadCommand(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	s, _ := openSM(t, db, 1, mvcc.Span{})
	if r := apply(t, s, 1, putReq(t, "a", "1", 100)); r[0].GetPut() == nil {
		t.Fatalf("stamped put refused: %v", r[0])
	}
	before := keys(t, s)
	r := apply(t, s, 2, putReq(t, "a", "2", 100), putReq(t, "b", "2", 50))
	for i, resp := range r {
		if resp.GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_STALE_STAMP {
			t.Fatalf("response %d = %v, want STALE_STAMP", i, resp)
		}
	}
	if got := keys(t, s); got != before || got != "a=1@100 " {
		t.Fatalf("stale stamps changed the store: %q (before %q)", got, before)
	}
	out, err := s.Update([]sm.Entry{{Index: 3, Cmd: []byte{0xff, 0xff, 0xff}}})
	if err != nil {
		t.Fatalf("undecodable command stopped the state machine: %v", err)
	}
	var res shardpb.Result
	if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil || res.Responses[0].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_BAD_REQUEST {
		t.Fatalf("undecodable command: %v %v", &res, err)
	}
	if got := keys(t, s); got != before {
		t.Fatalf("bad command changed the store: %q", got)
	}
}

// TestSnapshotReplacesOnlyItsSpan: two shards share one pebble; recovering
// one from a snapshot replaces its span and internal records and leaves the
// other shard alone.
func TestSnapshotReplacesOnlyItsSpan(t *testing.T) {
	src := openDB(t, vfs.NewMem())
	left, _ := openSM(t, src, 1, mvcc.Span{End: []byte("m")})
	apply(t, left, 7, putReq(t, "a", "src", 0), putReq(t, "c", "src", 0))
	apply(t, left, 8, putReq(t, "a", "src2", 0))
	wantLeft := keys(t, left)

	ctx, err := left.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := left.SaveSnapshot(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}

	dst := openDB(t, vfs.NewMem())
	dl, _ := openSM(t, dst, 1, mvcc.Span{End: []byte("m")})
	dr, _ := openSM(t, dst, 2, mvcc.Span{Start: []byte("m")})
	apply(t, dl, 1, putReq(t, "b", "stale", 0), putReq(t, "zz-not-mine", "x", 0))
	apply(t, dr, 1, putReq(t, "n", "right", 0), putReq(t, "x", "right", 0))
	wantRight := keys(t, dr)

	if err := dl.RecoverFromSnapshot(bytes.NewReader(buf.Bytes()), nil); err != nil {
		t.Fatal(err)
	}
	if got := keys(t, dl); got != wantLeft {
		t.Fatalf("recovered left = %q, want %q", got, wantLeft)
	}
	if got := keys(t, dr); got != wantRight {
		t.Fatalf("right shard changed by the left's recovery: %q, want %q", got, wantRight)
	}
	st, err := dl.Lookup(StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if st.(Status).Revision != left.store.Rev() {
		t.Fatalf("recovered revision %d, want %d", st.(Status).Revision, left.store.Rev())
	}
	// The applied index travels with the snapshot: a reopen reports it.
	if err := dl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, applied := openSM(t, dst, 1, mvcc.Span{End: []byte("m")}); applied != 8 {
		t.Fatalf("applied index after recovery and reopen = %d, want 8", applied)
	}
}

// TestMemberPeers: peer URLs are recorded (if_absent only when none are),
// listed with the members' attributes, reported as they apply and again
// when the store reopens; a record without URLs is refused. No revision is
// taken.
func TestMemberPeers(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	reported := map[uint64][]string{}
	cfg := Config{DB: db, OnPeers: func(id uint64, urls []string) { reported[id] = urls }}
	s := Factory(cfg)(1, 1).(*StateMachine)
	if _, err := s.Open(nil); err != nil {
		t.Fatal(err)
	}
	peers := func(id uint64, ifAbsent bool, urls ...string) *shardpb.Request {
		return &shardpb.Request{Op: &shardpb.Request_MemberPeers{MemberPeers: &shardpb.MemberPeers{Id: id, PeerUrls: urls, IfAbsent: ifAbsent}}}
	}
	resps := apply(t, s, 1,
		peers(7, true, "http://a:1"),
		peers(7, true, "http://b:1"), // some recorded: ignored
		peers(8, false, "http://c:1"),
		peers(8, false, "http://d:1"), // replaces
		peers(9, false),               // no URLs: refused
	)
	for i, want := range []bool{true, false, true, true} {
		if resps[i].GetMemberPeers() != want {
			t.Fatalf("response %d = %v, want recorded=%v", i, resps[i], want)
		}
	}
	if resps[4].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_BAD_REQUEST {
		t.Fatalf("a record without URLs: %v, want BAD_REQUEST", resps[4])
	}
	want := map[uint64][]string{7: {"http://a:1"}, 8: {"http://d:1"}}
	if fmt.Sprint(reported) != fmt.Sprint(want) {
		t.Fatalf("reported on apply %v, want %v", reported, want)
	}
	v, err := s.Lookup(MembersQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for id, urls := range want {
		if m := v.(map[uint64]*pb.Member)[id]; m == nil || fmt.Sprint(m.PeerURLs) != fmt.Sprint(urls) {
			t.Fatalf("member %d listed as %v, want peer URLs %v", id, m, urls)
		}
	}
	if st, _ := s.Lookup(StatusQuery{}); st.(Status).Revision != 1 {
		t.Fatalf("revision %d after recording peers, want 1 (none taken)", st.(Status).Revision)
	}
	reported = map[uint64][]string{}
	s2 := Factory(cfg)(1, 1).(*StateMachine)
	if _, err := s2.Open(nil); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(reported) != fmt.Sprint(want) {
		t.Fatalf("reported on open %v, want %v", reported, want)
	}
}

// TestClosedRevision: a command's closed revision makes the state machine
// refuse any write stamped at or below it — its own command's too (a batch
// stamped before the leader closed a revision without a log write, then
// proposed with it), and later ones even above the store's revision; it
// never goes back, and it survives a reopen.
func TestClosedRevision(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	s, _ := openSM(t, db, 1, mvcc.Span{})
	closeAt := func(idx uint64, closed int64, reqs ...*shardpb.Request) []*shardpb.Response {
		t.Helper()
		cmd, _ := proto.Marshal(&shardpb.Command{Requests: reqs, Closed: closed})
		out, err := s.Update([]sm.Entry{{Index: idx, Cmd: cmd}})
		if err != nil {
			t.Fatal(err)
		}
		var res shardpb.Result
		if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
			t.Fatal(err)
		}
		return res.Responses
	}
	r := closeAt(1, 10, putReq(t, "a", "1", 5), putReq(t, "a", "2", 5), putReq(t, "z", "1", 9))
	for i := range r {
		if r[i].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_STALE_STAMP {
			t.Fatalf("a write stamped below its own command's closed revision: %v", r[i])
		}
	}
	status := func() Status {
		v, err := s.Lookup(StatusQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return v.(Status)
	}
	if st := status(); st.Closed != 10 || st.Revision != 1 {
		t.Fatalf("status %+v, want closed 10 at revision 1", st)
	}
	r = apply(t, s, 2, putReq(t, "b", "1", 10), putReq(t, "c", "1", 11))
	if r[0].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_STALE_STAMP || r[1].GetError() != nil {
		t.Fatalf("stamps 10 and 11 with closed 10: %v", r)
	}
	closeAt(3, 7) // a lower closed revision changes nothing
	if st := status(); st.Closed != 10 {
		t.Fatalf("closed went back to %d", st.Closed)
	}
	s2, _ := openSM(t, db, 1, mvcc.Span{})
	v, _ := s2.Lookup(StatusQuery{})
	if st := v.(Status); st.Closed != 10 || st.Revision != 11 {
		t.Fatalf("after reopen %+v, want closed 10 at revision 11", st)
	}
}

// TestTermFence: once a command from term 5 applied, stamped writes
// proposed in an older term (or with none) are refused as stale, while
// unstamped requests still apply; the fence survives a reopen.
func TestTermFence(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	s, _ := openSM(t, db, 1, mvcc.Span{})
	inTerm := func(idx, term uint64, reqs ...*shardpb.Request) []*shardpb.Response {
		t.Helper()
		cmd, _ := proto.Marshal(&shardpb.Command{Requests: reqs, Term: term})
		out, err := s.Update([]sm.Entry{{Index: idx, Cmd: cmd}})
		if err != nil {
			t.Fatal(err)
		}
		var res shardpb.Result
		if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
			t.Fatal(err)
		}
		return res.Responses
	}
	if r := inTerm(1, 5, putReq(t, "a", "1", 2)); r[0].GetError() != nil {
		t.Fatal(r)
	}
	grant, _ := proto.Marshal(&pb.LeaseGrantRequest{ID: 9, TTL: 60})
	r := inTerm(2, 4, putReq(t, "b", "1", 3), &shardpb.Request{Op: &shardpb.Request_LeaseGrant{LeaseGrant: grant}})
	if r[0].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_STALE_STAMP || r[1].GetError() != nil {
		t.Fatalf("term 4 after term 5: %v", r)
	}
	if r := inTerm(3, 0, putReq(t, "c", "1", 4)); r[0].GetError().GetCode() != shardpb.ErrorCode_ERROR_CODE_STALE_STAMP {
		t.Fatalf("a stamped write without a term after term 5: %v", r)
	}
	if r := inTerm(4, 6, putReq(t, "d", "1", 5)); r[0].GetError() != nil {
		t.Fatalf("term 6: %v", r)
	}
	s2, _ := openSM(t, db, 1, mvcc.Span{})
	if v, _ := s2.Lookup(StatusQuery{}); v.(Status).Fence != 6 {
		t.Fatalf("fence after reopen %+v, want 6", v)
	}
}

// TestSplitProposedTwice: a split proposed again after it applied (its
// first answer lost to a timeout) is refused as outside the span, and the
// refusal, as it comes back from the state machine, matches the mvcc
// sentinel.
func TestSplitProposedTwice(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	s, _ := openSM(t, db, 1, mvcc.Span{})
	split := &shardpb.Request{Op: &shardpb.Request_Split{Split: &shardpb.SplitRange{Key: []byte("m"), Child: 2}}}
	if r := apply(t, s, 1, split); !r[0].GetSplit() {
		t.Fatalf("split refused: %v", r[0])
	}
	r := apply(t, s, 2, split)
	e := r[0].GetError()
	if e == nil {
		t.Fatalf("second split applied: %v", r[0])
	}
	if err := error(fromProto(e)); !errors.Is(err, mvcc.ErrOutsideSpan) || errors.Is(err, mvcc.ErrCompacted) {
		t.Fatalf("second split refused with %v (code %v), want a match of ErrOutsideSpan only", err, e.Code)
	}
}

// TestSplitInheritsAuthFence: a range split off one fenced at an auth
// revision refuses a write checked before it, as its parent does; the
// fence survives a reopen.
func TestSplitInheritsAuthFence(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	s, _ := openSM(t, db, 1, mvcc.Span{})
	fence := &shardpb.Request{Op: &shardpb.Request_AuthFence{AuthFence: &shardpb.AuthFence{Revision: 4, Enabled: true}}}
	split := &shardpb.Request{Op: &shardpb.Request_Split{Split: &shardpb.SplitRange{Key: []byte("m"), Child: 2}}}
	if r := apply(t, s, 1, fence, split); !r[0].GetAuthFence() || !r[1].GetSplit() {
		t.Fatalf("fence and split: %v", r)
	}
	for _, id := range []uint64{1, 2} {
		span := mvcc.Span{End: []byte("m")}
		if id == 2 {
			span = mvcc.Span{Start: []byte("m")}
		}
		sm, _ := openSM(t, db, id, span)
		put := putReq(t, string(span.Start)+"x", "1", 0)
		put.AuthInfo = &shardpb.AuthInfo{User: "alice", Revision: 3}
		r := apply(t, sm, 2, put)
		if e := r[0].GetError(); e == nil || e.Code != shardpb.ErrorCode_ERROR_CODE_AUTH {
			t.Fatalf("range %d: write checked at 3 after fence 4: %v", id, r[0])
		}
	}
}
