package placement

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// Members of the legacy fixtures: ids shaped like node.memberID's (sha1
// prefixes), founders a, b, c; d joins, c leaves.
const (
	legacyA = 0x8d3c1f0a22b4e917
	legacyB = 0x1e77a09c4f3b2d65
	legacyC = 0xc4015be3917a0f28
	legacyD = 0x52f9e6d1a0c38b74
)

// legacyLog is the command log of the fixtures: a bootstrap with three
// founders, splits (one stale, one while a member is being added),
// leader hints, a member added to and one removed from every range, node
// registration and the bound raised, as the placement group's log holds
// them before replica ids were allocated.
func legacyLog() []*placementpb.Command {
	boot := func(b *placementpb.Bootstrap) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: b}}
	}
	split := func(r, gen uint64, key string) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: r, Generation: gen, Key: []byte(key)}}}
	}
	change := func(r, add, remove uint64) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_ChangeReplicas{ChangeReplicas: &placementpb.ChangeReplicas{Range: r, Add: add, Remove: remove}}}
	}
	reconf := func(m uint64, done bool) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_Reconfigure{Reconfigure: &placementpb.Reconfigure{Member: m, Done: done}}}
	}
	leader := func(r, gen, m uint64) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_SetLeader{SetLeader: &placementpb.SetLeader{Range: r, Generation: gen, Leader: m}}}
	}
	node := func(id uint64, addr string) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_AddNode{AddNode: &placementpb.AddNode{Node: &placementpb.Node{Id: id, RaftAddress: addr, ClientUrls: []string{"http://" + addr}}}}}
	}
	raise := func(b int64) *placementpb.Command {
		return &placementpb.Command{Op: &placementpb.Command_RaiseBound{RaiseBound: &placementpb.RaiseBound{Bound: b}}}
	}
	log := []*placementpb.Command{
		boot(&placementpb.Bootstrap{SplitKeys: [][]byte{[]byte("g"), []byte("p")}, Replicas: []uint64{legacyA, legacyC, legacyB}, Bound: 7}),
		node(legacyA, "10.0.0.1:2380"),
		raise(5000),
		split(2, 1, "k"),
		split(2, 1, "l"), // stale
		leader(1, 1, legacyB),
		leader(4, 2, legacyC),
		reconf(legacyD, false),
		split(1, 1, "c"), // refused: reconfiguring
	}
	for r := uint64(1); r <= 4; r++ {
		log = append(log, change(r, legacyD, 0))
	}
	log = append(log, change(2, legacyD, 0), // already there
		change(9, legacyD, 0), // no such range
		reconf(legacyD, true),
		split(4, 2, "n"),
		leader(5, 3, legacyD),
		reconf(legacyC, false))
	for r := uint64(1); r <= 5; r++ {
		log = append(log, change(r, 0, legacyC))
	}
	log = append(log, reconf(legacyC, true),
		split(3, 1, "t"),
		boot(&placementpb.Bootstrap{Replicas: []uint64{legacyA}}), // refused
		raise(4000),
		node(legacyD, "10.0.0.4:2380"))
	return log
}

// TestWriteLegacyFixtures writes testdata/legacy with the code of its
// commit (before replica pairs): the command log, each command's result,
// the state after it, and a state from a map written before descriptors
// named their founders. Set CAIRN_WRITE_LEGACY_FIXTURES=1 to run it.
func TestWriteLegacyFixtures(t *testing.T) {
	if os.Getenv("CAIRN_WRITE_LEGACY_FIXTURES") != "1" {
		t.Skip("writes fixtures; set CAIRN_WRITE_LEGACY_FIXTURES=1")
	}
	dir := filepath.Join("testdata", "legacy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var logBuf, resBuf bytes.Buffer
	tb := NewTable()
	for _, c := range legacyLog() {
		if _, err := protodelim.MarshalTo(&logBuf, c); err != nil {
			t.Fatal(err)
		}
		if _, err := protodelim.MarshalTo(&resBuf, tb.Apply(c)); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, m proto.Message) {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "log.pb"), logBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.pb"), resBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	write("state.pb", tb.State())

	// A map from before founders were recorded: no descriptor names them.
	old := NewTable()
	old.Load(&placementpb.State{Ranges: []*placementpb.RangeDescriptor{
		{Id: 1, End: []byte("m"), Generation: 2, Replicas: []uint64{legacyA, legacyB}, Leader: legacyA},
		{Id: 2, Start: []byte("m"), Generation: 2, Replicas: []uint64{legacyA, legacyB}, Parent: 1},
	}, Nodes: []*placementpb.Node{{Id: legacyB, RaftAddress: "10.0.0.2:2380"}}, Bound: 900, NextRangeId: 3})
	write("state-nofounders.pb", old.State())
}
