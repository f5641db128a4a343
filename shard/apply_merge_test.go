package shard

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Merges in the apply scripts (testdata/apply_merge.txt). Any directive
// given shard=N runs against the state machine of range N, split off
// earlier on the same pebble (opened when first named, then kept with its
// own raft index); without it, against range 1. Requests:
//
//	freeze merge= left=
//	thaw merge=
//	merge-commit merge= right= start= [end=] [gen=] [closed=]
//	merge-abort merge=

// otherRange is a range split off in a script, run by shard= directives.
type otherRange struct {
	s     *StateMachine
	index uint64
	span  mvcc.Span
}

// runOn runs d against range shard=N: the harness's state machine,
// index and span are swapped for N's while it runs.
func (h *applyHarness) runOn(t *testing.T, d *datadriven.TestData) string {
	var id uint64
	d.ScanArgs(t, "shard", &id)
	o, ok := h.others[id]
	if !ok {
		span, ok := h.children[id]
		if !ok {
			d.Fatalf(t, "no range %d split off", id)
		}
		cfg := h.cfg
		cfg.Span = span
		s := Factory(cfg)(id, 1).(*StateMachine)
		applied, err := s.Open(nil)
		if err != nil {
			t.Fatal(err)
		}
		o = &otherRange{s: s, index: applied, span: span}
		h.others[id] = o
	}
	s, index, span := h.s, h.index, h.span
	h.s, h.index, h.span = o.s, o.index, o.span
	defer func() {
		o.index, o.span = h.index, h.span
		h.s, h.index, h.span = s, index, span
	}()
	d.CmdArgs = without(d.CmdArgs, "shard")
	return h.run(t, d)
}

func without(args []datadriven.CmdArg, key string) []datadriven.CmdArg {
	var out []datadriven.CmdArg
	for _, a := range args {
		if a.Key != key {
			out = append(out, a)
		}
	}
	return out
}

// buildMergeRequest builds the merge request of an apply line.
func buildMergeRequest(a reqArgs, r *shardpb.Request, cmd string) bool {
	m := uint64(a.int("merge"))
	switch cmd {
	case "freeze":
		r.Op = &shardpb.Request_MergeFreeze{MergeFreeze: &shardpb.MergeFreeze{Merge: m, Left: uint64(a.int("left"))}}
	case "thaw":
		r.Op = &shardpb.Request_MergeThaw{MergeThaw: &shardpb.MergeThaw{Merge: m}}
	case "merge-commit":
		r.Op = &shardpb.Request_MergeCommit{MergeCommit: &shardpb.MergeCommit{Merge: m, Right: uint64(a.int("right")),
			RightStart: a.bytes("start"), RightEnd: a.bytes("end"), Generation: uint64(a.int("gen")), Closed: a.int("closed")}}
	case "merge-abort":
		r.Op = &shardpb.Request_MergeAbort{MergeAbort: &shardpb.MergeAbort{Merge: m}}
	default:
		return false
	}
	return true
}

// fmtMergeResponse prints a merge request's outcome.
func fmtMergeResponse(r *shardpb.Response) (string, bool) {
	o, ok := r.Result.(*shardpb.Response_MergeOutcome)
	if !ok {
		return "", false
	}
	switch {
	case o.MergeOutcome.Committed:
		return "merge committed", true
	case o.MergeOutcome.Aborted:
		return "merge aborted", true
	}
	return fmt.Sprintf("merge frozen index=%d", o.MergeOutcome.FreezeIndex), true
}
