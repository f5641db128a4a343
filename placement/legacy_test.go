package placement

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// The fixtures in testdata/legacy were written, before replica pairs, by
// TestWriteLegacyFixtures of commit c267978 ("placement: legacy
// fixtures"): log.pb, a command log (length-delimited Commands: a
// bootstrap of three founders, splits, leader hints, a member added to and
// one removed from every range, refusals); results.pb, each command's
// Result; state.pb, the state after the log; state-nofounders.pb, a state
// whose descriptors name no founders (maps older still).

// TestLoadLegacyState replays the legacy log and loads the legacy states
// with today's code: every result and the state come out as they did,
// plus each replica's pair (m, m) (and each founder's), and the allocation
// of new replica ids starts at 1, skipping the members' ids.
func TestLoadLegacyState(t *testing.T) {
	dir := filepath.Join("testdata", "legacy")
	log := readDelimited(t, filepath.Join(dir, "log.pb"), func() *placementpb.Command { return &placementpb.Command{} })
	results := readDelimited(t, filepath.Join(dir, "results.pb"), func() *placementpb.Result { return &placementpb.Result{} })
	if len(log) != len(results) || len(log) < 20 {
		t.Fatalf("%d commands, %d results", len(log), len(results))
	}
	replayed := NewTable()
	for i, c := range log {
		got := replayed.Apply(c)
		for _, d := range got.Ranges {
			stripLegacyPairs(t, d)
		}
		if !proto.Equal(got, results[i]) {
			t.Fatalf("command %d (%v) answers\n%v\nnot, as before,\n%v", i, c, got, results[i])
		}
	}
	want := readState(t, filepath.Join(dir, "state.pb"))
	if len(want.Ranges) != 6 || len(want.Nodes) != 2 {
		t.Fatalf("the legacy state holds %d ranges and %d nodes", len(want.Ranges), len(want.Nodes))
	}
	st := replayed.State()
	if st.NextReplicaId != 1 || len(st.Moves) != 0 {
		t.Fatalf("replayed: next replica id %d, moves %v", st.NextReplicaId, st.Moves)
	}
	strip := func(st *placementpb.State) *placementpb.State {
		st = proto.Clone(st).(*placementpb.State)
		for _, d := range st.Ranges {
			stripLegacyPairs(t, d)
		}
		st.NextReplicaId = 0
		return st
	}
	if got := strip(st); !proto.Equal(got, want) {
		t.Fatalf("replayed state\n%v\nnot, as before,\n%v", got, want)
	}

	// The old snapshot loads into the very state the replay made.
	loaded := NewTable()
	loaded.Load(want)
	if !proto.Equal(loaded.State(), st) {
		t.Fatalf("loaded state\n%v\nnot the replayed\n%v", loaded.State(), st)
	}

	// Older still: no founders. Pairs come from the replicas; founders
	// stay unnamed, read as the voters.
	old := readState(t, filepath.Join(dir, "state-nofounders.pb"))
	loaded.Load(old)
	for _, d := range loaded.Ranges() {
		if len(d.FounderSet) != 0 || len(d.Founders) != 0 {
			t.Fatalf("r%d names founders: %v", d.Id, d)
		}
		if fmt.Sprint(fmtPairs(Founders(d))) != fmtPairs(legacyPairs(d.Replicas)) {
			t.Fatalf("r%d's founders read as %s", d.Id, fmtPairs(Founders(d)))
		}
	}
	if got := strip(loaded.State()); !proto.Equal(got, old) {
		t.Fatalf("loaded state\n%v\nnot, as before,\n%v", got, old)
	}

	// On the replayed map, helpers answer member = replica id, and a
	// replica added now gets id 1: no member's id.
	d := replayed.byID[1]
	for _, m := range d.Replicas {
		if id, ok := ReplicaOf(d, NodeID(m)); !ok || uint64(id) != m {
			t.Fatalf("ReplicaOf(r1, %x) = %d, %t", m, id, ok)
		}
		if got, ok := MemberOf(d, ReplicaID(m)); !ok || uint64(got) != m {
			t.Fatalf("MemberOf(r1, %x) = %x, %t", m, got, ok)
		}
	}
	res := replayed.Apply(&placementpb.Command{Op: &placementpb.Command_AddReplica{AddReplica: &placementpb.AddReplica{Range: 1, Member: 7, Learner: true}}})
	if id, ok := ReplicaOf(res.Ranges[0], 7); res.Error != "" || !ok || id != 1 {
		t.Fatalf("add a replica on member 7: %v", res)
	}
}

// stripLegacyPairs checks that d's pairs are its replicas' and founders'
// (m, m) pairs, and clears them.
func stripLegacyPairs(t *testing.T, d *placementpb.RangeDescriptor) {
	t.Helper()
	if a, b := fmtPairs(d.ReplicaSet), fmtPairs(legacyPairs(d.Replicas)); a != b {
		t.Fatalf("r%d's pairs are %s, not %s", d.Id, a, b)
	}
	if a, b := fmtPairs(d.FounderSet), fmtPairs(legacyPairs(d.Founders)); a != b {
		t.Fatalf("r%d's founder pairs are %s, not %s", d.Id, a, b)
	}
	d.ReplicaSet, d.FounderSet = nil, nil
}

func readDelimited[M proto.Message](t *testing.T, path string, alloc func() M) []M {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(bytes.NewReader(data))
	var out []M
	for {
		m := alloc()
		if err := protodelim.UnmarshalFrom(r, m); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, m)
	}
}

func readState(t *testing.T, path string) *placementpb.State {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st placementpb.State
	if err := proto.Unmarshal(data, &st); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &st
}
