package shard

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// fuzzNow is the fixed clock of the fuzzed state machines, so that two of
// them given the same commands grant identical leases.
var fuzzNow = time.Unix(1_700_000_000, 0)

func fuzzSM(t *testing.T) *StateMachine {
	t.Helper()
	db := openDB(t, vfs.NewMem())
	s := Factory(Config{DB: db, Now: func() time.Time { return fuzzNow }})(1, 1).(*StateMachine)
	if _, err := s.Open(nil); err != nil {
		t.Fatal(err)
	}
	// As the leader's replica, so that lease keys can be listed.
	s.Lessor().Promote(fuzzNow, 0)
	t.Cleanup(func() {
		s.Close()
		db.Close()
	})
	return s
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fuzzPrelude gives a fuzzed command something to act on: keys a, b and c
// (b attached to lease 7), two revisions of a, lease 7 itself.
func fuzzPrelude(t testing.TB) []byte {
	return marshal(t, &shardpb.Command{Requests: []*shardpb.Request{
		{Op: &shardpb.Request_LeaseGrant{LeaseGrant: marshal(t, &pb.LeaseGrantRequest{ID: 7, TTL: 60})}},
		{Stamp: 2, Op: &shardpb.Request_Put{Put: marshal(t, &pb.PutRequest{Key: []byte("a"), Value: []byte("1")})}},
		{Stamp: 3, Op: &shardpb.Request_Put{Put: marshal(t, &pb.PutRequest{Key: []byte("b"), Value: []byte("1"), Lease: 7})}},
		{Stamp: 4, Op: &shardpb.Request_Put{Put: marshal(t, &pb.PutRequest{Key: []byte("c"), Value: []byte("1")})}},
		{Stamp: 5, Op: &shardpb.Request_Put{Put: marshal(t, &pb.PutRequest{Key: []byte("a"), Value: []byte("2")})}},
	}})
}

// applyRaw applies one entry holding cmd and returns its responses. Update
// must not fail: only storage failures may, and the in-memory store has none.
func applyRaw(t *testing.T, s *StateMachine, idx uint64, cmd []byte) []*shardpb.Response {
	t.Helper()
	out, err := s.Update([]sm.Entry{{Index: idx, Cmd: cmd}})
	if err != nil {
		t.Fatalf("Update failed on a command (it must refuse it, not fail): %v", err)
	}
	var res shardpb.Result
	if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
		t.Fatalf("result does not decode: %v", err)
	}
	if out[0].Result.Value != uint64(len(res.Responses)) {
		t.Fatalf("result value %d for %d responses", out[0].Result.Value, len(res.Responses))
	}
	return res.Responses
}

// fuzzState fingerprints everything a command can change: the key-value
// history (HashKV), revision, compaction, leases with their keys, alarms
// and member attributes.
func fuzzState(t *testing.T, s *StateMachine) string {
	t.Helper()
	var b strings.Builder
	st, err := s.Lookup(StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.Lookup(HashQuery{})
	if err != nil {
		t.Fatal(err)
	}
	status := st.(Status)
	fmt.Fprintf(&b, "rev=%d compact=%d closed=%d fence=%d hash=%+v\n", status.Revision, status.CompactRevision, status.Closed, status.Fence, h)
	for _, l := range s.Lessor().Leases() {
		ttl, err := s.Lessor().TimeToLive(l.ID, fuzzNow, true)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "lease %+v keys %q\n", l, ttl.Keys)
	}
	al, err := s.Lookup(AlarmsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Lookup(MembersQuery{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "alarms %v members %v\n", al, m)
	return b.String()
}

// FuzzCommand feeds arbitrary bytes to the state machine as a raft entry.
// It must never fail or panic; an undecodable entry is refused as a whole;
// and every request it refuses changes nothing: a twin state machine given
// only the accepted requests ends in the same state with the same
// responses. A put afterwards still applies.
func FuzzCommand(f *testing.F) {
	seed := func(reqs ...*shardpb.Request) { f.Add(marshal(f, &shardpb.Command{Requests: reqs})) }
	seed(&shardpb.Request{Stamp: 6, Op: &shardpb.Request_Put{Put: marshal(f, &pb.PutRequest{Key: []byte("d"), Value: []byte("x"), PrevKv: true})}})
	seed(&shardpb.Request{Stamp: 6, Op: &shardpb.Request_Put{Put: marshal(f, &pb.PutRequest{Key: []byte("a"), IgnoreValue: true, Lease: 7})}},
		&shardpb.Request{Stamp: 2, Op: &shardpb.Request_Put{Put: marshal(f, &pb.PutRequest{Key: []byte("stale")})}})
	seed(&shardpb.Request{Stamp: 6, Op: &shardpb.Request_DeleteRange{DeleteRange: marshal(f, &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), PrevKv: true})}})
	seed(&shardpb.Request{Stamp: 6, Op: &shardpb.Request_Txn{Txn: marshal(f, &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Version{Version: 2}}},
		Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("t"), Value: []byte("1")}}},
			{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("c")}}},
			{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}}},
		},
		Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("t"), Value: []byte("1"), Lease: 99}}}},
	})}})
	seed(&shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: marshal(f, &pb.CompactionRequest{Revision: 3})}},
		&shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: marshal(f, &pb.CompactionRequest{Revision: 99})}})
	seed(&shardpb.Request{Op: &shardpb.Request_LeaseGrant{LeaseGrant: marshal(f, &pb.LeaseGrantRequest{ID: 7, TTL: 5})}},
		&shardpb.Request{Op: &shardpb.Request_LeaseGrant{LeaseGrant: marshal(f, &pb.LeaseGrantRequest{ID: 8, TTL: 1})}},
		&shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: marshal(f, &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: 7, Remaining_TTL: 30}, {ID: 9, Remaining_TTL: 1}}})}},
		&shardpb.Request{Stamp: 6, Op: &shardpb.Request_LeaseRevoke{LeaseRevoke: marshal(f, &pb.LeaseRevokeRequest{ID: 7})}})
	seed(&shardpb.Request{Op: &shardpb.Request_Alarm{Alarm: marshal(f, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 1, Alarm: pb.AlarmType_NOSPACE})}},
		&shardpb.Request{Stamp: 6, Op: &shardpb.Request_Put{Put: marshal(f, &pb.PutRequest{Key: []byte("e")})}},
		&shardpb.Request{Op: &shardpb.Request_MemberAttrs{MemberAttrs: marshal(f, &pb.Member{ID: 3, Name: "n"})}},
		&shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{Target: 2, UntilUnixNano: 1}}},
		&shardpb.Request{Op: &shardpb.Request_MemberPeers{MemberPeers: &shardpb.MemberPeers{Id: 3, PeerUrls: []string{"http://p:1"}, IfAbsent: true}}})
	seed(&shardpb.Request{Stamp: 6})
	f.Add([]byte{0x0a, 0x03, 0x12, 0x01})

	f.Fuzz(func(t *testing.T, data []byte) {
		prelude := fuzzPrelude(t)
		a, b := fuzzSM(t), fuzzSM(t)
		for _, s := range []*StateMachine{a, b} {
			for _, r := range applyRaw(t, s, 1, prelude) {
				if r.GetError() != nil {
					t.Fatalf("prelude refused: %v", r.GetError())
				}
			}
		}
		before := fuzzState(t, a)
		got := applyRaw(t, a, 2, data)

		var cmd shardpb.Command
		if err := proto.Unmarshal(data, &cmd); err != nil {
			if len(got) != 1 || got[0].GetError() == nil {
				t.Fatalf("undecodable command answered %v, want one refusal", got)
			}
			if after := fuzzState(t, a); after != before {
				t.Fatalf("an undecodable command changed the state:\n%s\nto\n%s", before, after)
			}
			return
		}
		if len(got) != len(cmd.Requests) {
			t.Fatalf("%d responses for %d requests", len(got), len(cmd.Requests))
		}
		var kept []*shardpb.Request
		var keptResp []*shardpb.Response
		for i, r := range got {
			if r == nil || r.Result == nil {
				t.Fatalf("request %d: empty response", i)
			}
			if r.GetError() == nil {
				kept = append(kept, cmd.Requests[i])
				keptResp = append(keptResp, r)
			}
		}
		twin := applyRaw(t, b, 2, marshal(t, &shardpb.Command{Requests: kept, Closed: cmd.Closed, Term: cmd.Term}))
		for i := range twin {
			if !proto.Equal(twin[i], keptResp[i]) {
				t.Fatalf("accepted request %d answered %v alone, %v beside the refused ones", i, twin[i], keptResp[i])
			}
		}
		if sa, sb := fuzzState(t, a), fuzzState(t, b); sa != sb {
			t.Fatalf("refused requests changed the state:\nwith them:\n%s\nwithout:\n%s", sa, sb)
		}

		// The state machine still applies: a put at a fresh stamp, above
		// the closed revision and in the newest term, lands (unless the
		// command raised the NOSPACE alarm, which refuses it).
		v, err := a.Lookup(StatusQuery{})
		if err != nil {
			t.Fatal(err)
		}
		st := v.(Status)
		next := int64(max(st.Revision, st.Closed)) + 1
		if next <= 0 {
			return // everything is closed: no stamp is above it
		}
		put := marshal(t, &shardpb.Command{Term: st.Fence, Requests: []*shardpb.Request{{Stamp: next, Op: &shardpb.Request_Put{Put: marshal(t, &pb.PutRequest{Key: []byte("after"), Value: []byte("x")})}}}})
		r := applyRaw(t, a, 3, put)
		if e := r[0].GetError(); e != nil && !(e.Code == shardpb.ErrorCode_ERROR_CODE_NO_SPACE && len(a.alarms.list(pb.AlarmType_NOSPACE)) > 0) {
			t.Fatalf("a put after the fuzzed command was refused: %v", e)
		}
	})
}
