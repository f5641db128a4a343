package robustness

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/tests/v3/robustness/model"
)

// The sparse model: linearizability of an etcd client history where
// revisions come from one oracle (sharded mode). Revisions are unique and
// grow in real time across the cluster, but they are not dense: the
// revision after 7 may be 12. etcd's model gives every write the last
// revision + 1, so it rejects every such history; this one orders the
// operations by the revisions they report instead:
//
//   - a write that changes something gets a revision above every revision
//     linearized before it (not exactly one above);
//   - a read, or a write that changes nothing (a txn whose compare failed,
//     a delete of an absent key), reports a revision at or above the last
//     one linearized, and sees exactly the writes at or below it;
//   - a lease revoke ends the lease; the keys attached to it are deleted
//     range by range, each range at a revision of its own, by writes the
//     checker adds to the history (revokeDeletions);
//   - a request that failed may have taken effect or not; if it did, at a
//     revision the caller does not know. The checker gives such a request
//     the revisions it could have had (hints: where the cluster's history
//     shows its effect) and the model tries each and "not at all".
//
// The state is the key-value map with each key's mod revision, version and
// lease, the live leases, the last revision linearized and the compacted
// revision.

// sparseState is one state of the store; it is never changed in place.
type sparseState struct {
	rev     int64 // the last revision linearized
	compact int64
	kvs     map[string]model.ValueRevision
	leaseOf map[string]int64 // key → lease it is attached to (absent: none)
	leases  map[int64]bool
}

func freshSparseState() sparseState {
	return sparseState{rev: 1, compact: 0, kvs: map[string]model.ValueRevision{}, leaseOf: map[string]int64{}, leases: map[int64]bool{}}
}

func (s sparseState) equal(o sparseState) bool {
	return s.rev == o.rev && s.compact == o.compact && maps.Equal(s.kvs, o.kvs) && maps.Equal(s.leaseOf, o.leaseOf) && maps.Equal(s.leases, o.leases)
}

func (s sparseState) clone() sparseState {
	return sparseState{rev: s.rev, compact: s.compact, kvs: maps.Clone(s.kvs), leaseOf: maps.Clone(s.leaseOf), leases: maps.Clone(s.leases)}
}

func (s sparseState) String() string {
	keys := slices.Sorted(maps.Keys(s.kvs))
	var b strings.Builder
	fmt.Fprintf(&b, "rev %d compact %d {", s.rev, s.compact)
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		v := s.kvs[k]
		fmt.Fprintf(&b, "%s=%s@%d/v%d", k, describeValue(v.Value), v.ModRevision, v.Version)
		if l, ok := s.leaseOf[k]; ok {
			fmt.Fprintf(&b, "/lease %d", l)
		}
	}
	fmt.Fprintf(&b, "} leases %v", slices.Sorted(maps.Keys(s.leases)))
	return b.String()
}

func describeValue(v model.ValueOrHash) string {
	if v.Hash != 0 {
		return fmt.Sprintf("hash:%d", v.Hash)
	}
	return fmt.Sprintf("%q", v.Value)
}

// sparseInput is one operation's input for the sparse model: the request
// and, for a request that failed, the revisions at which it may have
// taken effect.
type sparseInput struct {
	req model.EtcdRequest
	// hints are the revisions a failed request may have been applied at
	// (ascending); ignored for a request that succeeded.
	hints []int64
}

// sparseModel is the porcupine model of the sparse revisions.
func sparseModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{freshSparseState()} },
		Step: func(st, in, out any) []any {
			return sparseStep(st.(sparseState), in.(sparseInput), out.(model.MaybeEtcdResponse))
		},
		Equal: func(a, b any) bool { return a.(sparseState).equal(b.(sparseState)) },
		DescribeOperation: func(in, out any) string {
			return describeSparse(in.(sparseInput), out.(model.MaybeEtcdResponse))
		},
		DescribeState: func(st any) string { return st.(sparseState).String() },
	}
	return nm.ToModel()
}

func describeSparse(in sparseInput, out model.MaybeEtcdResponse) string {
	req := fmt.Sprintf("%s", in.req.Type)
	switch in.req.Type {
	case model.Range:
		req = fmt.Sprintf("range(%q..%q rev %d limit %d)", in.req.Range.Start, in.req.Range.End, in.req.Range.Revision, in.req.Range.Limit)
	case model.Txn:
		var ops []string
		for _, c := range in.req.Txn.Conditions {
			ops = append(ops, fmt.Sprintf("if %s mod=%d ver=%d", c.Key, c.ExpectedRevision, c.ExpectedVersion))
		}
		for _, op := range in.req.Txn.OperationsOnSuccess {
			ops = append(ops, describeOp(op))
		}
		if len(in.req.Txn.OperationsOnFailure) > 0 {
			ops = append(ops, "else")
			for _, op := range in.req.Txn.OperationsOnFailure {
				ops = append(ops, describeOp(op))
			}
		}
		req = "txn(" + strings.Join(ops, "; ") + ")"
	case model.LeaseGrant:
		req = fmt.Sprintf("leaseGrant(%d)", in.req.LeaseGrant.LeaseID)
	case model.LeaseRevoke:
		req = fmt.Sprintf("leaseRevoke(%d)", in.req.LeaseRevoke.LeaseID)
	case model.Compact:
		req = fmt.Sprintf("compact(%d)", in.req.Compact.Revision)
	}
	if out.Error != "" {
		return fmt.Sprintf("%s -> error %q (may be applied at %v)", req, out.Error, in.hints)
	}
	if out.ClientError != "" {
		return fmt.Sprintf("%s -> %q, rev %d", req, out.ClientError, out.Revision)
	}
	return fmt.Sprintf("%s -> rev %d %s", req, out.Revision, describeResult(out.EtcdResponse))
}

func describeOp(op model.EtcdOperation) string {
	switch op.Type {
	case model.PutOperation:
		s := fmt.Sprintf("put %s=%s", op.Put.Key, describeValue(op.Put.Value))
		if op.Put.LeaseID != 0 {
			s += fmt.Sprintf(" lease %d", op.Put.LeaseID)
		}
		return s
	case model.DeleteOperation:
		return "delete " + op.Delete.Key
	default:
		return fmt.Sprintf("range %q..%q", op.Range.Start, op.Range.End)
	}
}

func describeResult(r model.EtcdResponse) string {
	switch {
	case r.Range != nil:
		return describeRange(*r.Range)
	case r.Txn != nil:
		var parts []string
		if r.Txn.Failure {
			parts = append(parts, "failure")
		}
		for _, res := range r.Txn.Results {
			switch {
			case res.Deleted != 0:
				parts = append(parts, fmt.Sprintf("deleted %d", res.Deleted))
			case res.KVs != nil:
				parts = append(parts, describeRange(res.RangeResponse))
			default:
				parts = append(parts, "ok")
			}
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return ""
}

func describeRange(r model.RangeResponse) string {
	var kvs []string
	for _, kv := range r.KVs {
		kvs = append(kvs, fmt.Sprintf("%s=%s@%d/v%d", kv.Key, describeValue(kv.Value), kv.ModRevision, kv.Version))
	}
	return fmt.Sprintf("{%s} count %d", strings.Join(kvs, " "), r.Count)
}

// Errors the store answers that the model predicts.
const (
	errCompacted = "mvcc: required revision has been compacted"
	errFutureRev = "mvcc: required revision is a future revision"
)

// sparseStep returns the states the store may be in after in answered
// out in state s; none if it cannot answer so.
func sparseStep(s sparseState, in sparseInput, out model.MaybeEtcdResponse) []any {
	req := in.req
	if out.Error != "" {
		// Unknown outcome: not applied at all, or applied at one of the
		// hinted revisions.
		next := []any{s}
		if t, ok := s.effect(req); ok && !t.changesKV {
			// It changes leases or the compacted revision only: no
			// revision to place it at.
			next = append(next, t.state)
		} else if ok {
			for _, h := range in.hints {
				if h > s.rev {
					st := t.at(h)
					next = append(next, st)
				}
			}
		}
		return next
	}
	switch req.Type {
	case model.Range:
		return s.stepRange(req.Range, out)
	case model.Txn, model.LeaseRevoke:
		t, ok := s.effect(req)
		if !ok {
			return nil
		}
		if out.ClientError != "" {
			return nil // the model knows no such refusal of a txn
		}
		if req.Type == model.Txn {
			if out.Txn == nil || !reflect.DeepEqual(*out.Txn, t.txn) {
				return nil
			}
		}
		if req.Type == model.LeaseRevoke {
			// Cairn answers a revoke with no revision of its own (1).
			return []any{t.state}
		}
		if t.changesKV {
			if out.Revision <= s.rev {
				return nil // a write must get a revision above every one before it
			}
			return []any{t.at(out.Revision)}
		}
		if out.Revision < s.rev {
			return nil
		}
		st := t.state
		st.rev = out.Revision
		return []any{st}
	case model.LeaseGrant:
		t, _ := s.effect(req)
		return []any{t.state}
	case model.Compact:
		switch out.ClientError {
		case "":
			st := s.clone()
			st.compact = max(st.compact, req.Compact.Revision)
			return []any{st}
		case errCompacted:
			if req.Compact.Revision <= s.compact {
				return []any{s}
			}
			return nil
		case errFutureRev:
			return []any{s}
		}
		return nil
	case model.Defragment:
		return []any{s}
	}
	panic(fmt.Sprintf("sparse model: unknown request %v", req.Type))
}

func (s sparseState) stepRange(r *model.RangeRequest, out model.MaybeEtcdResponse) []any {
	if r.Revision != 0 {
		// A read at an old revision: its answer is checked against the
		// persisted history (checkSerializable); here only its place.
		switch out.ClientError {
		case "":
		case errCompacted:
			if r.Revision <= s.compact {
				return []any{s}
			}
			return nil
		case errFutureRev:
			if r.Revision > s.rev {
				return []any{s}
			}
			return nil
		default:
			return nil
		}
		if out.Revision < s.rev || r.Revision > out.Revision {
			return nil
		}
		st := s
		st.rev = out.Revision
		return []any{st}
	}
	if out.ClientError != "" || out.Range == nil || out.Revision < s.rev {
		return nil
	}
	want := s.getRange(r.RangeOptions)
	if !reflect.DeepEqual(want, *out.Range) {
		return nil
	}
	st := s
	st.rev = out.Revision
	return []any{st}
}

// getRange answers a read of the current state as etcd would.
func (s sparseState) getRange(o model.RangeOptions) model.RangeResponse {
	resp := model.RangeResponse{KVs: []model.KeyValue{}}
	if o.End == "" {
		if v, ok := s.kvs[o.Start]; ok {
			resp.KVs = append(resp.KVs, model.KeyValue{Key: o.Start, ValueRevision: v})
			resp.Count = 1
		}
		return resp
	}
	for k, v := range s.kvs {
		if k >= o.Start && k < o.End {
			kv := model.KeyValue{Key: k, ValueRevision: v}
			if o.KeysOnly {
				kv.Value = model.ValueOrHash{}
			}
			resp.KVs = append(resp.KVs, kv)
		}
	}
	sort.Slice(resp.KVs, func(i, j int) bool { return resp.KVs[i].Key < resp.KVs[j].Key })
	resp.Count = int64(len(resp.KVs))
	if o.Limit != 0 && resp.Count > o.Limit {
		resp.KVs = resp.KVs[:o.Limit]
	}
	return resp
}

// transition is what a request does to a state, before it is given a
// revision.
type transition struct {
	state     sparseState // rev and the new mod revisions not set yet
	changesKV bool
	written   []string // keys put, their ModRevision to be set by at
	txn       model.TxnResponse
}

// at gives the transition's writes revision rev.
func (t transition) at(rev int64) sparseState {
	st := t.state.clone()
	for _, k := range t.written {
		v := st.kvs[k]
		v.ModRevision = rev
		st.kvs[k] = v
	}
	st.rev = rev
	return st
}

// effect applies req to s; ok is false for a request the model cannot
// apply (none today but the unknown).
func (s sparseState) effect(req model.EtcdRequest) (transition, bool) {
	switch req.Type {
	case model.Txn:
		st := s.clone()
		failure := false
		for _, c := range req.Txn.Conditions {
			v := st.kvs[c.Key] // zero if absent
			if c.ExpectedVersion > 0 {
				if v.Version != c.ExpectedVersion {
					failure = true
					break
				}
			} else if v.ModRevision != c.ExpectedRevision {
				failure = true
				break
			}
		}
		ops := req.Txn.OperationsOnSuccess
		if failure {
			ops = req.Txn.OperationsOnFailure
		}
		t := transition{txn: model.TxnResponse{Failure: failure, Results: make([]model.EtcdOperationResult, len(ops))}}
		for i, op := range ops {
			switch op.Type {
			case model.RangeOperation:
				t.txn.Results[i] = model.EtcdOperationResult{RangeResponse: st.getRange(op.Range)}
			case model.PutOperation:
				if op.Put.LeaseID != 0 && !st.leases[op.Put.LeaseID] {
					continue // etcd's model: a put with a missing lease does nothing
				}
				ver := st.kvs[op.Put.Key].Version + 1
				st.kvs[op.Put.Key] = model.ValueRevision{Value: op.Put.Value, Version: ver}
				if op.Put.LeaseID != 0 {
					st.leaseOf[op.Put.Key] = op.Put.LeaseID
				} else {
					delete(st.leaseOf, op.Put.Key)
				}
				if !slices.Contains(t.written, op.Put.Key) {
					t.written = append(t.written, op.Put.Key)
				}
				t.changesKV = true
			case model.DeleteOperation:
				if _, ok := st.kvs[op.Delete.Key]; ok {
					delete(st.kvs, op.Delete.Key)
					delete(st.leaseOf, op.Delete.Key)
					t.written = slices.DeleteFunc(t.written, func(k string) bool { return k == op.Delete.Key })
					t.txn.Results[i].Deleted = 1
					t.changesKV = true
				}
			}
		}
		t.state = st
		return t, true
	case model.LeaseGrant:
		st := s.clone()
		if req.LeaseGrant.LeaseID != 0 {
			st.leases[req.LeaseGrant.LeaseID] = true
		}
		return transition{state: st}, true
	case model.LeaseRevoke:
		// Sharded mode revokes a lease at its home, then deletes its keys
		// in each range at the range's own revision (DESIGN.md, leases):
		// the revoke here ends the lease; the deletions are writes of
		// their own (revokeDeletions), each a delete at one revision.
		st := s.clone()
		delete(st.leases, req.LeaseRevoke.LeaseID)
		return transition{state: st}, true
	case model.Compact:
		st := s.clone()
		st.compact = max(st.compact, req.Compact.Revision)
		return transition{state: st}, true
	case model.Range, model.Defragment:
		return transition{state: s}, true
	}
	return transition{}, false
}
