package robustness

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/robustness/client"
	"go.etcd.io/etcd/tests/v3/robustness/model"
	"go.etcd.io/etcd/tests/v3/robustness/report"
	"go.uber.org/zap"
)

// The checker of sharded mode: etcd's validators read the persisted
// history as one dense sequence of revisions (a state per revision, the
// revision before an event being its revision - 1), and Cairn's journal
// does not say which range applied an entry or whether it was refused
// (a stale stamp), so neither fits a cluster of several ranges. Here:
//
//   - the persisted history is what a recorder saw: one watch on the whole
//     key space from revision 1, with previous values, opened before the
//     traffic; every revision in it must be explained by a client request
//     (one that answered with it, or one that failed and whose effect it
//     is), and every successful put must be in it at the revision it was
//     answered with;
//   - linearizability is checked with the sparse model (sparse_model_test.go),
//     a failed request given as hints the revisions the recorder shows its
//     effect at;
//   - watches are checked as etcd checks them — ordered, unique, atomic,
//     bookmarkable from a watch's own responses; reliable, resumable, the
//     create flag and previous values against the recorder's history, the
//     state before a revision being that after the revision before it in
//     the history (not revision - 1);
//   - reads at an old revision see the recorder's state at that revision.
//
// A refused cross-range write (etcd's FailedPrecondition, "spans ranges")
// is not an unknown outcome: it is checked to have changed nothing — left
// out of the history, anything it wrote would be a value nobody wrote.

// recorder watches the whole key space from revision 1 and keeps every
// event.
type recorder struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	events []*mvccpb.Event // in the order received
	last   int64           // the newest revision received (0: none yet)
	err    error
}

func startRecorder(endpoints []string) (*recorder, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &recorder{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer cli.Close()
		// A watch cut off from its leader (a partition) ends: the
		// recorder opens it again after the last revision it has; a
		// compaction past that loses history, and ends the recorder.
		for ctx.Err() == nil {
			r.mu.Lock()
			from := r.last + 1
			r.mu.Unlock()
			wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for resp := range cli.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV()) {
				r.mu.Lock()
				if resp.CompactRevision != 0 {
					r.err = fmt.Errorf("recorder: compacted at %d past revision %d", resp.CompactRevision, from)
					r.mu.Unlock()
					wcancel()
					return
				}
				for _, ev := range resp.Events {
					r.events = append(r.events, ev)
					r.last = max(r.last, ev.Kv.ModRevision)
				}
				r.mu.Unlock()
			}
			wcancel()
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return r, nil
}

// stopAt waits until the recorder has seen revision rev, then stops it.
func (r *recorder) stopAt(ctx context.Context, rev int64) ([]*mvccpb.Event, error) {
	defer func() { r.cancel(); <-r.done }()
	for {
		r.mu.Lock()
		last, err := r.last, r.err
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if last >= rev {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("recorder: saw revision %d, want %d: %w", last, rev, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events), nil
}

// sparseReplay is the persisted history: every revision at which
// something changed, its events and the state after it.
type sparseReplay struct {
	revs    []int64 // ascending
	events  [][]model.PersistedEvent
	prev    []map[string]model.ValueRevision // prev[i]: state after revs[i], i.e. before revs[i+1]
	lease   map[int64][]int64                // lease → revisions where a key of it was deleted
	leaseAt map[leaseKey]int64               // (revision, deleted key) → the lease it had
	puts    map[model.PutOptions][]int64     // (key, value) → revisions it was put at
	dels    map[string][]int64               // key → revisions it was deleted at
}

type leaseKey struct {
	rev int64
	key string
}

// newSparseReplay orders the recorder's events into revisions; it fails if
// the recorder's stream is not ordered or a revision's events are split.
func newSparseReplay(events []*mvccpb.Event) (*sparseReplay, error) {
	r := &sparseReplay{lease: map[int64][]int64{}, leaseAt: map[leaseKey]int64{}, puts: map[model.PutOptions][]int64{}, dels: map[string][]int64{}}
	state := map[string]model.ValueRevision{}
	for _, ev := range events {
		rev := ev.Kv.ModRevision
		n := len(r.revs)
		if n == 0 || r.revs[n-1] != rev {
			if n > 0 && rev < r.revs[n-1] {
				return nil, fmt.Errorf("recorder: revision %d after %d", rev, r.revs[n-1])
			}
			if n > 0 {
				r.prev[n-1] = cloneKVs(state)
			}
			r.revs = append(r.revs, rev)
			r.events = append(r.events, nil)
			r.prev = append(r.prev, nil)
			n++
		}
		key := string(ev.Kv.Key)
		_, existed := state[key]
		pe := model.PersistedEvent{Revision: rev, Event: model.Event{Key: key}}
		switch ev.Type {
		case mvccpb.PUT:
			pe.Type = model.PutOperation
			pe.Value = model.ToValueOrHash(string(ev.Kv.Value))
			pe.IsCreate = !existed
			state[key] = model.ValueRevision{Value: pe.Value, ModRevision: rev, Version: ev.Kv.Version}
			po := model.PutOptions{Key: key, Value: pe.Value}
			r.puts[po] = append(r.puts[po], rev)
		case mvccpb.DELETE:
			pe.Type = model.DeleteOperation
			if !existed {
				return nil, fmt.Errorf("recorder: delete of absent %q at %d", key, rev)
			}
			delete(state, key)
			r.dels[key] = append(r.dels[key], rev)
			if ev.PrevKv != nil && ev.PrevKv.Lease != 0 {
				r.lease[ev.PrevKv.Lease] = append(r.lease[ev.PrevKv.Lease], rev)
				r.leaseAt[leaseKey{rev, key}] = ev.PrevKv.Lease
			}
		}
		for _, e := range r.events[n-1] {
			if e.Key == key {
				return nil, fmt.Errorf("recorder: %q changed twice at revision %d", key, rev)
			}
		}
		r.events[n-1] = append(r.events[n-1], pe)
	}
	if n := len(r.revs); n > 0 {
		r.prev[n-1] = cloneKVs(state)
	}
	return r, nil
}

func cloneKVs(m map[string]model.ValueRevision) map[string]model.ValueRevision {
	out := make(map[string]model.ValueRevision, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// stateAt is the state after every revision at or below rev.
func (r *sparseReplay) stateAt(rev int64) map[string]model.ValueRevision {
	i := sort.Search(len(r.revs), func(i int) bool { return r.revs[i] > rev })
	if i == 0 {
		return map[string]model.ValueRevision{}
	}
	return r.prev[i-1]
}

// eventsFor are the events a watch of w would see, from its revision on.
func (r *sparseReplay) eventsFor(w model.WatchRequest) []model.PersistedEvent {
	var out []model.PersistedEvent
	for i, rev := range r.revs {
		if rev < w.Revision {
			continue
		}
		for _, e := range r.events[i] {
			if e.Match(w) {
				out = append(out, e)
			}
		}
	}
	return out
}

// sparseResult is the checker's verdict.
type sparseResult struct {
	model     porcupine.Model
	info      porcupine.LinearizationInfo
	lin       porcupine.CheckResult
	refused   int // cross-range writes refused, checked to change nothing
	dropped   int // failed writes the history shows no effect of
	hinted    int // failed writes the history shows an effect of
	linearErr error
	err       error
}

func (r sparseResult) Error() error { return errors.Join(r.linearErr, r.err) }

// spansRanges: the error of a write refused because its keys fall in
// several ranges.
func spansRanges(msg string) bool { return strings.Contains(msg, "spans ranges") }

// checkSparse checks a sharded cluster's client history against the
// recorder's.
func checkSparse(reports []report.ClientReport, recorded []*mvccpb.Event, timeout time.Duration) (res sparseResult) {
	res.model = sparseModel()
	replay, err := newSparseReplay(recorded)
	if err != nil {
		res.err = err
		return res
	}
	if err := checkClientsSequential(reports); err != nil {
		res.err = err
		return res
	}
	var ops []porcupine.Operation
	var stale []porcupine.Operation
	refusedPuts := map[model.PutOptions]bool{}
	explained := map[int64]int{} // revision → requests that answered with it or may have written at it
	for _, r := range reports {
		for _, op := range r.KeyValue {
			req := op.Input.(model.EtcdRequest)
			resp := op.Output.(model.MaybeEtcdResponse)
			if req.Type == model.Defragment || (req.IsRead() && resp.Error != "") {
				continue
			}
			if req.Type == model.Range && req.Range.Revision != 0 && resp.Error == "" {
				stale = append(stale, op)
			}
			if resp.Error != "" && spansRanges(resp.Error) {
				// Refused as a whole: left out, it must have no effect.
				res.refused++
				for _, o := range req.Txn.AllOperations() {
					if o.Type == model.PutOperation {
						refusedPuts[model.PutOptions{Key: o.Put.Key, Value: o.Put.Value}] = true
					}
				}
				continue
			}
			in := sparseInput{req: req}
			if resp.Error != "" {
				op.Return = math.MaxInt64
				switch req.Type {
				case model.Txn:
					in.hints = replay.hintsFor(req.Txn)
					if len(in.hints) == 0 {
						// No effect of it in the history: as if never sent.
						res.dropped++
						continue
					}
					res.hinted++
				}
			}
			if req.Type == model.LeaseRevoke {
				deletions := replay.revokeDeletions(op)
				for _, d := range deletions {
					explained[d.Input.(sparseInput).hints[0]]++
				}
				ops = append(ops, deletions...)
			}
			for _, h := range in.hints {
				explained[h]++
			}
			if resp.Error == "" && req.Type == model.Txn {
				explained[resp.Revision]++
				if err := replay.checkPuts(req, resp); err != nil && res.err == nil {
					res.err = err
				}
			}
			op.Input = in
			ops = append(ops, op)
		}
	}
	for po := range refusedPuts {
		if revs := replay.puts[po]; len(revs) > 0 {
			res.err = errors.Join(res.err, fmt.Errorf("a refused cross-range write put %s=%s, at revision %d", po.Key, describeValue(po.Value), revs[0]))
		}
	}
	for _, rev := range replay.revs {
		if explained[rev] == 0 {
			res.err = errors.Join(res.err, fmt.Errorf("the history changed %v at revision %d, which no request answered with or may have written at", replay.events[slices.Index(replay.revs, rev)], rev))
			break
		}
	}
	patchReturns(ops)
	res.lin, res.info = porcupine.CheckOperationsVerbose(res.model, ops, timeout)
	switch res.lin {
	case porcupine.Illegal:
		res.linearErr = fmt.Errorf("linearizable: the history is not linearizable under the sparse model; %s", stuckAt(ops, res.info))
		return res
	case porcupine.Unknown:
		res.linearErr = fmt.Errorf("linearizable: undecided in %v", timeout)
		return res
	}
	res.err = errors.Join(res.err, checkSparseWatch(reports, replay), checkStale(stale, replay))
	return res
}

// checkClientsSequential: porcupine needs each client's requests one
// after the other.
func checkClientsSequential(reports []report.ClientReport) error {
	for _, r := range reports {
		var last int64
		for _, op := range r.KeyValue {
			if op.Call <= last || op.Return <= op.Call {
				return fmt.Errorf("client %d: requests overlap at %d", op.ClientId, op.Call)
			}
			last = op.Return
		}
	}
	return nil
}

// revokeDeletions are the writes by which a lease revoke may have deleted
// the keys attached to its lease, one per revision the history shows them
// deleted at (one per range), each within the revoke's call and return
// (or with no return, if the revoke failed). Each is of unknown outcome,
// its one hint the revision: a client's delete of the key may be what
// deleted it then, and the revoke then found it gone.
func (r *sparseReplay) revokeDeletions(revoke porcupine.Operation) []porcupine.Operation {
	lease := revoke.Input.(model.EtcdRequest).LeaseRevoke.LeaseID
	ret := revoke.Return
	if revoke.Output.(model.MaybeEtcdResponse).Error != "" {
		ret = math.MaxInt64
	}
	var out []porcupine.Operation
	for _, rev := range slices.Compact(slices.Clone(r.lease[lease])) {
		txn := &model.TxnRequest{Conditions: []model.EtcdCondition{}, OperationsOnFailure: []model.EtcdOperation{}}
		for _, e := range r.events[slices.Index(r.revs, rev)] {
			if e.Type == model.DeleteOperation && r.leaseAt[leaseKey{rev, e.Key}] == lease {
				txn.OperationsOnSuccess = append(txn.OperationsOnSuccess, model.EtcdOperation{Type: model.DeleteOperation, Delete: model.DeleteOptions{Key: e.Key}})
			}
		}
		out = append(out, porcupine.Operation{ClientId: revoke.ClientId, Call: revoke.Call, Return: ret,
			Input:  sparseInput{req: model.EtcdRequest{Type: model.Txn, Txn: txn}, hints: []int64{rev}},
			Output: model.MaybeEtcdResponse{Error: fmt.Sprintf("deletion by the revoke of lease %d", lease)}})
	}
	return out
}

// hintsFor are the revisions at which the history shows an effect of txn:
// one of its puts, or a delete of a key it deletes.
func (r *sparseReplay) hintsFor(txn *model.TxnRequest) []int64 {
	var out []int64
	for _, o := range txn.AllOperations() {
		switch o.Type {
		case model.PutOperation:
			out = append(out, r.puts[model.PutOptions{Key: o.Put.Key, Value: o.Put.Value}]...)
		case model.DeleteOperation:
			out = append(out, r.dels[o.Delete.Key]...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkPuts: a txn that succeeded put its values at the revision it
// answered with, in the history (a put with a lease may be refused for the
// lease: only those without).
func (r *sparseReplay) checkPuts(req model.EtcdRequest, resp model.MaybeEtcdResponse) error {
	if req.Type != model.Txn || resp.Txn == nil {
		return nil
	}
	ops := req.Txn.OperationsOnSuccess
	if resp.Txn.Failure {
		ops = req.Txn.OperationsOnFailure
	}
	for _, o := range ops {
		if o.Type != model.PutOperation || o.Put.LeaseID != 0 {
			continue
		}
		if !slices.Contains(r.puts[model.PutOptions{Key: o.Put.Key, Value: o.Put.Value}], resp.Revision) {
			return fmt.Errorf("put %s=%s answered revision %d, the history has it at %v", o.Put.Key, describeValue(o.Put.Value), resp.Revision,
				r.puts[model.PutOptions{Key: o.Put.Key, Value: o.Put.Value}])
		}
	}
	return nil
}

// patchReturns ends a failed write, for the search, before the first
// request that answered with a revision above every revision it may have
// been applied at: in the sparse model operations are ordered by revision,
// so it is linearized before that one or, not applied, anywhere.
func patchReturns(ops []porcupine.Operation) {
	type answered struct{ rev, ret int64 }
	var known []answered
	for _, op := range ops {
		resp := op.Output.(model.MaybeEtcdResponse)
		req := op.Input.(sparseInput).req
		if resp.Error == "" && resp.ClientError == "" && (req.Type == model.Txn || req.Type == model.Range) {
			known = append(known, answered{resp.Revision, op.Return})
		}
	}
	for i, op := range ops {
		in := op.Input.(sparseInput)
		if op.Output.(model.MaybeEtcdResponse).Error == "" || len(in.hints) == 0 {
			continue
		}
		top := in.hints[len(in.hints)-1]
		for _, k := range known {
			if k.rev > top && k.ret > op.Call && k.ret < ops[i].Return {
				ops[i].Return = k.ret
			}
		}
	}
}

// checkSparseWatch checks every watch as etcd's validators do, against the
// sparse history.
func checkSparseWatch(reports []report.ClientReport, replay *sparseReplay) error {
	var errs []error
	fail := func(client int, w model.WatchOperation, format string, args ...any) {
		if len(errs) < 10 {
			errs = append(errs, fmt.Errorf("watch (client %d, %+v): %s", client, w.Request, fmt.Sprintf(format, args...)))
		}
	}
	for _, r := range reports {
		for _, w := range r.Watch {
			var last, lastProgress int64
			var prevRespLast int64
			seen := map[[2]any]bool{}
			var got []model.PersistedEvent
			for _, resp := range w.Responses {
				if len(resp.Events) > 0 && resp.Events[0].Revision == prevRespLast {
					fail(r.ClientID, w, "atomic: revision %d split over two responses", prevRespLast)
				}
				for _, ev := range resp.Events {
					if !ev.Match(w.Request) {
						fail(r.ClientID, w, "filter: event for %q", ev.Key)
					}
					if ev.Revision < last {
						fail(r.ClientID, w, "ordered: revision %d after %d", ev.Revision, last)
					}
					if ev.Revision <= lastProgress {
						fail(r.ClientID, w, "bookmarkable: event at %d after a progress notification at %d", ev.Revision, lastProgress)
					}
					k := [2]any{ev.Revision, ev.Key}
					if seen[k] {
						fail(r.ClientID, w, "unique: %q at %d twice", ev.Key, ev.Revision)
					}
					seen[k] = true
					last = ev.Revision
					before := replay.stateAt(ev.Revision - 1)
					prev, existed := before[ev.Key]
					if ev.IsCreate == existed {
						fail(r.ClientID, w, "create flag %v for %q at %d, existed before: %v", ev.IsCreate, ev.Key, ev.Revision, existed)
					}
					if w.Request.WithPrevKV && ev.PrevValue != nil && (!existed || *ev.PrevValue != prev) {
						fail(r.ClientID, w, "previous value of %q at %d: %+v, history %+v", ev.Key, ev.Revision, *ev.PrevValue, prev)
					}
					got = append(got, ev.PersistedEvent)
				}
				if len(resp.Events) > 0 {
					prevRespLast = resp.Events[len(resp.Events)-1].Revision
				}
				if resp.IsProgressNotify {
					if resp.Revision < lastProgress || resp.Revision < last {
						fail(r.ClientID, w, "bookmarkable: progress notification at %d after %d", resp.Revision, max(last, lastProgress))
					}
					lastProgress = resp.Revision
				}
			}
			// Reliable: every event of the history between the first and
			// the last revision the watch vouched for.
			first, lastRev := watchWindow(w)
			var want []model.PersistedEvent
			if first != 0 {
				for _, e := range replay.eventsFor(w.Request) {
					if e.Revision >= first && e.Revision <= lastRev {
						want = append(want, e)
					}
				}
			}
			if got == nil {
				got = []model.PersistedEvent{}
			}
			if want == nil {
				want = []model.PersistedEvent{}
			}
			if !reflect.DeepEqual(want, got) {
				fail(r.ClientID, w, "reliable: from %d to %d got %d events, the history has %d (first difference %s)", first, lastRev, len(got), len(want), firstDiff(want, got))
			}
			// Resumable: a watch from revision R starts with the first
			// event at or above R.
			if w.Request.Revision != 0 && len(got) > 0 {
				all := replay.eventsFor(w.Request)
				if len(all) > 0 && all[0] != got[0] {
					fail(r.ClientID, w, "resumable: first event %+v, the history's %+v", got[0], all[0])
				}
			}
		}
	}
	return errors.Join(errs...)
}

func firstDiff(want, got []model.PersistedEvent) string {
	for i := 0; i < min(len(want), len(got)); i++ {
		if want[i] != got[i] {
			return fmt.Sprintf("#%d: want %+v, got %+v", i, want[i], got[i])
		}
	}
	if len(want) > len(got) {
		return fmt.Sprintf("missing %+v", want[len(got)])
	}
	if len(got) > len(want) {
		return fmt.Sprintf("extra %+v", got[len(want)])
	}
	return "none"
}

// watchWindow is the revisions a watch vouches for having delivered every
// event of: from its start (or its first response) to its last event or
// progress notification.
func watchWindow(w model.WatchOperation) (first, last int64) {
	first = w.Request.Revision
	if first == 0 && len(w.Responses) > 0 {
		r := w.Responses[0]
		if r.IsProgressNotify {
			first = r.Revision + 1
		} else if len(r.Events) > 0 {
			first = r.Events[0].Revision
		}
	}
	for i := len(w.Responses) - 1; i >= 0; i-- {
		r := w.Responses[i]
		if r.IsProgressNotify {
			return first, r.Revision
		}
		if len(r.Events) > 0 {
			return first, r.Events[len(r.Events)-1].Revision
		}
	}
	return first, 0
}

// checkStale: a read at revision R answers the history's state at R.
func checkStale(ops []porcupine.Operation, replay *sparseReplay) error {
	var errs []error
	for _, op := range ops {
		req := op.Input.(model.EtcdRequest)
		resp := op.Output.(model.MaybeEtcdResponse)
		if resp.ClientError != "" || resp.Range == nil {
			continue
		}
		st := sparseState{kvs: replay.stateAt(req.Range.Revision)}
		if want := st.getRange(req.Range.RangeOptions); !reflect.DeepEqual(want, *resp.Range) {
			if len(errs) < 5 {
				errs = append(errs, fmt.Errorf("read of %q..%q at revision %d: got %s, the history has %s", req.Range.Start, req.Range.End,
					req.Range.Revision, describeRange(*resp.Range), describeRange(want)))
			}
		}
	}
	return errors.Join(errs...)
}

// recordedCompactions compacts every period, as etcd's compaction traffic
// does (through a recording client, at revisions that may be compacted
// already), but never above what the recorder has seen.
func recordedCompactions(ctx context.Context, wg *sync.WaitGroup, cs *client.ClientSet, endpoints []string, rec *recorder, period time.Duration, seed int64, finish <-chan struct{}) error {
	c, err := cs.NewClient(endpoints)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewSource(seed))
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer c.Close()
		var last int64 = 1
		for {
			select {
			case <-ctx.Done():
				return
			case <-finish:
				return
			case <-time.After(period):
			}
			rec.mu.Lock()
			seen := rec.last
			rec.mu.Unlock()
			if seen <= last {
				continue
			}
			// Now and then at or below the last one: compacted.
			rev := last + r.Int63n(seen-last+1)
			if r.Intn(5) == 0 {
				rev = last
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := c.Compact(cctx, rev)
			cancel()
			if err == nil {
				last = rev
			}
		}
	}()
	return nil
}

// stuckAt describes where the longest linearization found stopped: its
// last operations, the state they leave, and the operations that could
// not come next (those called before the earliest pending return).
func stuckAt(ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, l := range part {
			if len(l) > len(longest) {
				longest = l
			}
		}
	}
	var b strings.Builder
	st := freshSparseState()
	states := []any{st}
	for _, op := range longest {
		var next []any
		for _, s := range states {
			next = append(next, sparseStep(s.(sparseState), op.Input.(sparseInput), op.Output.(model.MaybeEtcdResponse))...)
		}
		states = next
	}
	fmt.Fprintf(&b, "the longest linearization (%d of %d operations) ends", len(longest), len(ops))
	for _, op := range longest[max(0, len(longest)-5):] {
		fmt.Fprintf(&b, "\n  [%d, %d] %s", op.Call, op.Return, describeSparse(op.Input.(sparseInput), op.Output.(model.MaybeEtcdResponse)))
	}
	for i, s := range states {
		if i < 3 {
			fmt.Fprintf(&b, "\n  state: %s", s.(sparseState))
		}
	}
	type id struct {
		call, ret int64
		desc      string
	}
	idOf := func(op porcupine.Operation) id {
		return id{op.Call, op.Return, describeSparse(op.Input.(sparseInput), op.Output.(model.MaybeEtcdResponse))}
	}
	done := map[id]bool{}
	for _, op := range longest {
		done[idOf(op)] = true
	}
	var pending []porcupine.Operation
	for _, op := range ops {
		if !done[idOf(op)] {
			pending = append(pending, op)
		}
	}
	slices.SortFunc(pending, func(a, b porcupine.Operation) int { return int(min(max(a.Return-b.Return, -1), 1)) })
	if len(pending) > 0 {
		minReturn := pending[0].Return
		b.WriteString("\n  and none of these can come next (the first must come before any called after it returned):")
		n := 0
		for _, op := range pending {
			if op.Call < minReturn && n < 10 {
				fmt.Fprintf(&b, "\n  [%d, %d] %s", op.Call, op.Return, idOf(op).desc)
				n++
			}
		}
	}
	return b.String()
}
