package placement

import (
	"errors"
	"testing"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestPeerRegistry: a replica resolves to its member's recorded peer
// address, else its seed; an unknown one is an error; connections are
// keyed by address and stream.
func TestPeerRegistry(t *testing.T) {
	r := NewPeerRegistry()
	if _, err := r.Create("", 4, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Resolve(1, 7); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("an unknown replica resolved: %v", err)
	}
	r.Seed(7, "127.0.0.1:2380")
	addr, key, err := r.Resolve(6, 7)
	if err != nil || addr != "127.0.0.1:2380" || key != "127.0.0.1:2380-2" {
		t.Fatalf("seeded: %q %q %v", addr, key, err)
	}
	r.Record(7, []string{"http://127.0.0.1:3380", "http://127.0.0.1:4380"})
	r.Record(7, []string{"not a url at all::"})
	if addr, _, _ := r.Resolve(1, 7); addr != "127.0.0.1:3380" {
		t.Fatalf("recorded URLs do not win over the seed: %q", addr)
	}
	if got := MemberTarget(0x0102030405060708); got != "01020304-0506-0708-0000-000000000000" {
		t.Fatalf("MemberTarget = %q", got)
	}
}

// TestPeerRegistryReplicas: a replica resolves to the member its target
// named, per shard, until dragonboat removes it (or the whole shard);
// targets that name no member (a sender's random NodeHost id) change
// nothing; with nothing added, MemberOf, else replica id = member id.
func TestPeerRegistryReplicas(t *testing.T) {
	const (
		a, b, c = NodeID(0xa1), NodeID(0xb2), NodeID(0xc3)
		s1, s2  = 5, 6
	)
	r := NewPeerRegistry()
	for id, addr := range map[NodeID]string{a: "10.0.0.1:2380", b: "10.0.0.2:2380", c: "10.0.0.3:2380"} {
		r.Seed(id, addr)
	}
	type step struct {
		do      func()
		shard   uint64
		replica uint64
		want    string // "" = ErrUnknownPeer
	}
	steps := []step{
		// Legacy: nothing added, replica id = member id.
		{shard: s1, replica: uint64(b), want: "10.0.0.2:2380"},
		{shard: s1, replica: 21},
		// Added: per (shard, replica).
		{do: func() { r.Add(s1, 21, MemberTarget(c)) }, shard: s1, replica: 21, want: "10.0.0.3:2380"},
		{shard: s2, replica: 21},
		{do: func() { r.Add(s2, 21, MemberTarget(a)) }, shard: s2, replica: 21, want: "10.0.0.1:2380"},
		{shard: s1, replica: 21, want: "10.0.0.3:2380"},
		// An added replica whose id is another member's id still resolves
		// to the member its target named.
		{do: func() { r.Add(s1, uint64(a), MemberTarget(b)) }, shard: s1, replica: uint64(a), want: "10.0.0.2:2380"},
		// A random NodeHost id (version 4 UUID) names no member.
		{do: func() { r.Add(s1, 21, "3f2b8c1e-9d4a-4e7b-8c2d-1a2b3c4d5e6f") }, shard: s1, replica: 21, want: "10.0.0.3:2380"},
		{do: func() { r.Add(s1, 22, "not a target") }, shard: s1, replica: 22},
		// A later target wins.
		{do: func() { r.Add(s1, 21, MemberTarget(b)) }, shard: s1, replica: 21, want: "10.0.0.2:2380"},
		// Remove forgets one replica of one shard: back to the legacy rule.
		{do: func() { r.Remove(s1, uint64(a)) }, shard: s1, replica: uint64(a), want: "10.0.0.1:2380"},
		{do: func() { r.Remove(s1, 21) }, shard: s1, replica: 21},
		{shard: s2, replica: 21, want: "10.0.0.1:2380"},
		// RemoveShard forgets every replica of that shard only.
		{do: func() { r.Add(s1, 23, MemberTarget(c)); r.RemoveShard(s2) }, shard: s2, replica: 21},
		{shard: s1, replica: 23, want: "10.0.0.3:2380"},
		// MemberOf answers for replicas nothing was added for, before the
		// legacy rule; an added replica does not ask it.
		{do: func() {
			r.SetMemberOf(func(shard, replica uint64) (NodeID, bool) {
				if shard == s2 && replica != 21 {
					return b, true
				}
				return 0, false
			})
		}, shard: s2, replica: 24, want: "10.0.0.2:2380"},
		{shard: s2, replica: uint64(a), want: "10.0.0.2:2380"},
		{shard: s1, replica: uint64(a), want: "10.0.0.1:2380"},
		{do: func() { r.Add(s2, 24, MemberTarget(c)) }, shard: s2, replica: 24, want: "10.0.0.3:2380"},
		{do: func() { r.SetMemberOf(nil) }, shard: s2, replica: 25},
		// A recorded peer URL of the member wins over its seed.
		{do: func() { r.Record(c, []string{"http://10.0.1.3:2380"}) }, shard: s1, replica: 23, want: "10.0.1.3:2380"},
	}
	for i, st := range steps {
		if st.do != nil {
			st.do()
		}
		addr, _, err := r.Resolve(st.shard, st.replica)
		switch {
		case st.want == "" && !errors.Is(err, ErrUnknownPeer):
			t.Fatalf("step %d: replica %d of shard %d resolved to %q (%v), want unknown", i, st.replica, st.shard, addr, err)
		case st.want != "" && (err != nil || addr != st.want):
			t.Fatalf("step %d: replica %d of shard %d resolved to %q (%v), want %q", i, st.replica, st.shard, addr, err, st.want)
		}
	}
	if addr, ok := r.MemberAddr(c); !ok || addr != "10.0.1.3:2380" {
		t.Fatalf("MemberAddr(c) = %q %v", addr, ok)
	}
	if _, ok := r.MemberAddr(0xd4); ok {
		t.Fatal("an unknown member has an address")
	}
}

// TestParseMemberTarget: the inverse of MemberTarget for every member id
// shape, and nothing else parses.
func TestParseMemberTarget(t *testing.T) {
	for _, id := range []NodeID{1, 0xa1, 0x0102030405060708, 0xffffffffffffffff, 0x8e3b9f1c2d4a5b6e} {
		if got, ok := ParseMemberTarget(MemberTarget(id)); !ok || got != id {
			t.Fatalf("ParseMemberTarget(MemberTarget(%x)) = %x %v", uint64(id), uint64(got), ok)
		}
	}
	for _, s := range []string{
		"", "00000000-0000-0000-0000-000000000000", // member 0
		"3f2b8c1e-9d4a-4e7b-8c2d-1a2b3c4d5e6f", // a random NodeHost id
		"01020304-0506-0708-0000-000000000001",
		"0102030405060708-0000-000000000000",
		"0102030g-0506-0708-0000-000000000000",
		"01020304_0506-0708-0000-000000000000",
		"127.0.0.1:2380",
	} {
		if id, ok := ParseMemberTarget(s); ok {
			t.Fatalf("ParseMemberTarget(%q) = %x, want none", s, uint64(id))
		}
	}
}

// TestPeerRegistryMember: Member names the member Resolve dials: an added
// target's, else MemberOf's, else the member whose id the replica has.
func TestPeerRegistryMember(t *testing.T) {
	r := NewPeerRegistry()
	r.Add(5, 21, MemberTarget(0xa1))
	r.SetMemberOf(func(shard, replica uint64) (NodeID, bool) { return 0xb2, shard == 5 && replica == 22 })
	for _, c := range []struct {
		shard, replica uint64
		want           NodeID
	}{{5, 21, 0xa1}, {5, 22, 0xb2}, {6, 22, 22}, {5, 0xc3, 0xc3}} {
		if got := r.Member(c.shard, c.replica); got != c.want {
			t.Fatalf("Member(%d, %d) = %x, want %x", c.shard, c.replica, uint64(got), uint64(c.want))
		}
	}
}

// TestReplicaMemberQuery: the state machine names the member holding a
// replica of a range, under an allocated id or (a legacy descriptor) the
// member's own; 0 for a replica or range the map does not name.
func TestReplicaMemberQuery(t *testing.T) {
	s := NewStateMachine(1, 1).(*StateMachine)
	apply := func(c *placementpb.Command) {
		t.Helper()
		data, _ := proto.Marshal(c)
		if _, err := s.Update(sm.Entry{Cmd: data}); err != nil {
			t.Fatal(err)
		}
	}
	apply(&placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{
		Replicas: []uint64{0xa1, 0xb2}, SplitKeys: [][]byte{[]byte("m")}}}})
	apply(&placementpb.Command{Op: &placementpb.Command_AddReplica{AddReplica: &placementpb.AddReplica{Range: 2, Member: 0xc3, Learner: true}}})
	st, _ := s.Lookup(StateQuery{})
	added, ok := ReplicaOf(st.(*placementpb.State).Ranges[1], 0xc3)
	if !ok {
		t.Fatal("add_replica named no replica")
	}
	for _, c := range []struct {
		r    RangeID
		id   ReplicaID
		want NodeID
	}{{1, 0xa1, 0xa1}, {2, 0xb2, 0xb2}, {2, added, 0xc3}, {1, added, 0}, {3, 0xa1, 0}} {
		v, err := s.Lookup(ReplicaMemberQuery{Range: c.r, Replica: c.id})
		if err != nil || v.(NodeID) != c.want {
			t.Fatalf("replica %d of range %d: %v %v, want %x", c.id, c.r, v, err, uint64(c.want))
		}
	}
}
