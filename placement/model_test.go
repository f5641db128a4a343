package placement

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// TestTableModel splits random ranges at random keys (stale generations and
// bad keys included) and checks after every step that the ranges tile the
// key space, that every key is looked up in the range that holds it, and
// that a snapshot round trip keeps the state.
func TestTableModel(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewPCG(seed, 0))
		tb := NewTable()
		tb.Apply(&placementpb.Command{Op: &placementpb.Command_Bootstrap{Bootstrap: &placementpb.Bootstrap{}}})
		for step := 0; step < 200; step++ {
			rs := tb.Ranges()
			d := rs[r.IntN(len(rs))]
			gen := d.Generation
			if r.IntN(10) == 0 {
				gen-- // stale
			}
			key := []byte(fmt.Sprintf("%03d", r.IntN(1000)))
			res := tb.Apply(&placementpb.Command{Op: &placementpb.Command_Split{Split: &placementpb.Split{Range: d.Id, Generation: gen, Key: key}}})
			inside := bytes.Compare(key, d.Start) > 0 && (len(d.End) == 0 || bytes.Compare(key, d.End) < 0)
			if ok := res.Error == ""; ok != (inside && gen == d.Generation) {
				t.Fatalf("seed %d step %d: split %v at %q gen %d: %q", seed, step, fmtRange(d), key, gen, res.Error)
			}
			rs = tb.Ranges()
			if len(rs[0].Start) != 0 || len(rs[len(rs)-1].End) != 0 {
				t.Fatalf("seed %d step %d: the ranges do not cover the key space: %s", seed, step, fmtRanges(rs))
			}
			for i := 1; i < len(rs); i++ {
				if !bytes.Equal(rs[i-1].End, rs[i].Start) {
					t.Fatalf("seed %d step %d: gap or overlap: %s", seed, step, fmtRanges(rs))
				}
			}
			probe := []byte(fmt.Sprintf("%03d", r.IntN(1000)))
			got := tb.Lookup(probe)
			if bytes.Compare(probe, got.Start) < 0 || (len(got.End) > 0 && bytes.Compare(probe, got.End) >= 0) {
				t.Fatalf("seed %d step %d: lookup(%q) = %s", seed, step, probe, fmtRange(got))
			}
		}
		other := NewTable()
		other.Load(tb.State())
		if a, b := fmtRanges(tb.Ranges()), fmtRanges(other.Ranges()); a != b {
			t.Fatalf("seed %d: snapshot round trip:\n%s\n%s", seed, a, b)
		}
	}
}
