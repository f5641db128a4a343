package placement

import (
	"errors"
	"testing"
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
