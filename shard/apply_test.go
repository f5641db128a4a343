package shard

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// TestApply runs the scripts testdata/apply*.txt, the spec of what
// StateMachine.Update does with each request of a command. Directives:
//
//	open [start=] [end=]     a fresh state machine of shard 1 serving
//	     [sharded]           [start, end) on an empty pebble (each script
//	                         starts with one serving every key), a range of
//	                         sharded mode with sharded (Config.Sharded)
//	apply [term=] [closed=]  one entry of the requests in the input, one a
//	                         line (below), applied by one Update at the next
//	                         raft index; prints each request's outcome, then
//	                         what Update reported (on split, on hold, on
//	                         peers, on apply: the closed revision and events)
//	apply-raw hex=           an entry of these bytes
//	keys                     every key served: key=value@mod [lease=]
//	child id=                opens the range split off as id on the same
//	                         pebble: its keys, status, leases
//	leases                   the lessor's leases, shadows and their keys
//	status                   revision, compact and closed revision, fence,
//	                         applied index
//
// Requests; each may also take stamp= and shadow=(lease:generation, ...):
//
//	put k= [v=] [lease=] [prev] [ignore-value] [ignore-lease]
//	del k= [end=] [prev]
//	txn [if=(cmp, ...)] [then=(op, ...)] [else=(op, ...)]
//	    cmp: key=value (value equal) or key@version (version equal)
//	    op: put key value | del key [end] | get key [end] [order=N]
//	compact rev=
//	grant id= ttl=
//	revoke id=
//	checkpoint id= ttl=
//	alarm activate|deactivate member= [nospace]
//	register id= shard=
//	unregister id= shard=
//	shadow-revoke id= gen=
//	split [key=] [child=] [founders=(...)] [above=]
//	member id= [name=]
//	peers id= [urls=(...)] [if-absent]
//	hold target=
//	broken op=               a request of op (put, del, txn, compact, grant,
//	                         revoke, checkpoint, alarm or member) whose etcd
//	                         message does not decode
//	empty                    a request without an operation
//
// An error prints as its code (shardpb.ErrorCode without its prefix).
func TestApply(t *testing.T) {
	paths, err := filepath.Glob("testdata/apply*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			h := &applyHarness{t: t}
			h.open(mvcc.Span{}, false)
			datadriven.RunTest(t, path, h.run)
		})
	}
}

// applyClock is the lessor's clock in the scripts: grants and TTLs do not
// depend on when the test runs.
var applyClock = time.Unix(1_000_000, 0)

type applyHarness struct {
	t     *testing.T
	s     *StateMachine
	index uint64
	// span is the range's span: a split hands its end on.
	span mvcc.Span
	db   *pebble.DB
	// children are the spans of the ranges split off.
	children map[uint64]mvcc.Span
	// sharded is Config.Sharded of the range and its children.
	sharded bool
	// reported is what Update's callbacks said during the last apply.
	reported []string
	// cfg is the state machine's Config (restart, restore).
	cfg Config
	// others are the state machines of ranges split off, once a directive
	// named them (shard=; apply_merge_test.go).
	others map[uint64]*otherRange
}

func (h *applyHarness) open(span mvcc.Span, sharded bool) {
	db := openDB(h.t, vfs.NewMem())
	h.t.Cleanup(func() { db.Close() })
	now := func() time.Time { return applyClock }
	cfg := Config{DB: db, Span: span, Now: now, Sharded: sharded,
		OnApply: func(closed mvcc.Revision, events []*mvccpb.Event) {
			var evs []string
			for _, ev := range events {
				if ev.Type == mvccpb.DELETE {
					evs = append(evs, fmt.Sprintf("del %s@%d", ev.Kv.Key, ev.Kv.ModRevision))
				} else {
					evs = append(evs, "put "+fmtKv(ev.Kv))
				}
			}
			h.report("on apply: closed=%d events=(%s)", closed, strings.Join(evs, ", "))
		},
		OnSplit: func(child RangeID, span mvcc.Span, rev mvcc.Revision, refs []*shardpb.ReplicaRef) {
			var founders []ReplicaID
			for _, r := range refs {
				founders = append(founders, ReplicaID(r.Id))
			}
			h.span.End = span.Start
			h.children[uint64(child)] = span
			h.report("on split: child=%d span=[%s, %s) rev=%d founders=%v", child, span.Start, span.End, rev, founders)
		},
		OnHold: func(target ReplicaID, until time.Time, max time.Duration) {
			h.report("on hold: target=%d until=%s max=%s", target, until.Sub(applyClock), max)
		},
		OnPeers: func(id uint64, urls []string) { h.report("on peers: %d %v", id, urls) },
		OnMerge: func(right RangeID, span mvcc.Span, rev mvcc.Revision, gen uint64) {
			h.span = span
			h.report("on merge: right=%d span=%s rev=%d gen=%d", right, spanText(span), rev, gen)
		},
	}
	h.cfg = cfg
	h.s = Factory(cfg)(1, 1).(*StateMachine)
	if _, err := h.s.Open(nil); err != nil {
		h.t.Fatal(err)
	}
	h.index = 0
	h.reported = nil
	h.span = span
	h.sharded = sharded
	h.db = db
	h.children = map[uint64]mvcc.Span{}
	h.others = map[uint64]*otherRange{}
}

func (h *applyHarness) report(format string, args ...any) {
	h.reported = append(h.reported, fmt.Sprintf(format, args...))
}

func (h *applyHarness) run(t *testing.T, d *datadriven.TestData) string {
	if d.HasArg("shard") {
		return h.runOn(t, d)
	}
	switch d.Cmd {
	case "open":
		var start, end string
		d.MaybeScanArgs(t, "start", &start)
		d.MaybeScanArgs(t, "end", &end)
		span := mvcc.Span{}
		if start != "" {
			span.Start = []byte(start)
		}
		if end != "" {
			span.End = []byte(end)
		}
		h.open(span, d.HasArg("sharded"))
		return ""
	case "apply":
		c := &shardpb.Command{}
		d.MaybeScanArgs(t, "term", &c.Term)
		d.MaybeScanArgs(t, "closed", &c.Closed)
		for _, line := range strings.Split(d.Input, "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			cmd, args, err := datadriven.ParseLine(line)
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			c.Requests = append(c.Requests, buildRequest(t, d, cmd, args))
		}
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return h.update(data)
	case "apply-raw":
		var s string
		d.ScanArgs(t, "hex", &s)
		data, err := hex.DecodeString(s)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		return h.update(data)
	case "keys":
		return h.keys(h.s, h.span)
	case "child":
		var id uint64
		d.ScanArgs(t, "id", &id)
		span, ok := h.children[id]
		if !ok {
			d.Fatalf(t, "no child %d split off", id)
		}
		c := Factory(Config{DB: h.db, Span: span, Sharded: h.sharded})(id, 1).(*StateMachine)
		if _, err := c.Open(nil); err != nil {
			t.Fatal(err)
		}
		return h.keys(c, span) + h.status(c) + h.leases(c)
	case "leases":
		if out := h.leases(h.s); out != "" {
			return out
		}
		return "none\n"
	case "status":
		return h.status(h.s)
	default:
		if out, ok := h.runTxn(t, d); ok {
			return out
		}
		d.Fatalf(t, "unknown directive %q", d.Cmd)
		return ""
	}
}

// update applies one entry and prints its outcomes and the reports.
func (h *applyHarness) update(cmd []byte) string {
	h.index++
	h.reported = nil
	out, err := h.s.Update([]sm.Entry{{Index: h.index, Cmd: cmd}})
	if err != nil {
		return "update failed: " + err.Error() + "\n"
	}
	var res shardpb.Result
	if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
		h.t.Fatal(err)
	}
	if out[0].Result.Value != uint64(len(res.Responses)) {
		h.t.Fatalf("result value %d for %d responses", out[0].Result.Value, len(res.Responses))
	}
	var b strings.Builder
	for _, r := range res.Responses {
		b.WriteString(fmtResponse(h.t, r) + "\n")
	}
	for _, r := range h.reported {
		b.WriteString(r + "\n")
	}
	return b.String()
}

func (h *applyHarness) status(s *StateMachine) string {
	v, err := s.Lookup(StatusQuery{})
	if err != nil {
		h.t.Fatal(err)
	}
	st := v.(Status)
	counting := ""
	if st.Counting {
		counting = " counting"
	}
	if st.Locks > 0 {
		counting += fmt.Sprintf(" locks=%d lock-cap=%d", st.Locks, st.LockCap)
	}
	if st.Frozen {
		counting += fmt.Sprintf(" frozen=%d", st.Merge)
	}
	return fmt.Sprintf("rev=%d compact=%d closed=%d fence=%d applied=%d%s\n", st.Revision, st.CompactRevision, st.Closed, st.Fence, st.AppliedIndex, counting)
}

// keys lists every key s serves over span.
func (h *applyHarness) keys(s *StateMachine, span mvcc.Span) string {
	// A range may not read outside its span.
	start, end := span.Start, span.End
	if len(start) == 0 {
		start = []byte{0}
	}
	if end == nil {
		end = []byte{0}
	}
	v, err := s.Lookup(RangeQuery{Req: &pb.RangeRequest{Key: start, RangeEnd: end}})
	if e, ok := err.(*Error); ok {
		return "error " + strings.TrimPrefix(e.Code.String(), "ERROR_CODE_") + "\n"
	}
	if err != nil {
		h.t.Fatal(err)
	}
	var kvs []string
	for _, kv := range v.(*pb.RangeResponse).Kvs {
		kvs = append(kvs, fmtKv(kv))
	}
	if len(kvs) == 0 {
		return "none\n"
	}
	return strings.Join(kvs, " ") + "\n"
}

// leases lists s's leases with their attached keys and registrations,
// then its shadows with theirs.
func (h *applyHarness) leases(s *StateMachine) string {
	var b strings.Builder
	l := s.Lessor()
	if !l.IsPrimary() {
		// The primary's lessor answers with the keys attached to a lease.
		l.Promote(applyClock, 0)
	}
	for _, le := range l.Leases() {
		st, err := l.TimeToLive(le.ID, applyClock, true)
		if err != nil {
			h.t.Fatal(err)
		}
		v, err := s.Lookup(RegisteredQuery{ID: int64(le.ID)})
		if err != nil {
			h.t.Fatal(err)
		}
		fmt.Fprintf(&b, "lease %d ttl=%d remaining=%d keys=(%s)", le.ID, le.TTL, le.RemainingTTL, joinKeys(st.Keys))
		if reg := v.([]uint64); len(reg) > 0 {
			fmt.Fprintf(&b, " registered=%v", reg)
		}
		b.WriteString("\n")
	}
	for _, id := range l.Shadows() {
		v, err := s.Lookup(ShadowKeysQuery{ID: int64(id)})
		if err != nil {
			h.t.Fatal(err)
		}
		fmt.Fprintf(&b, "shadow %d keys=(%s)\n", id, joinKeys(v.([][]byte)))
	}
	return b.String()
}

func joinKeys(keys [][]byte) string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = string(k)
	}
	return strings.Join(s, " ")
}

func fmtKv(kv *mvccpb.KeyValue) string {
	s := fmt.Sprintf("%s=%s@%d", kv.Key, kv.Value, kv.ModRevision)
	if kv.Lease != 0 {
		s += fmt.Sprintf(" lease=%d", kv.Lease)
	}
	return s
}

// reqArgs reads a request line's arguments.
type reqArgs struct {
	t    *testing.T
	d    *datadriven.TestData
	args []datadriven.CmdArg
}

func (a reqArgs) has(key string) bool {
	for _, arg := range a.args {
		if arg.Key == key {
			return true
		}
	}
	return false
}

func (a reqArgs) vals(key string) []string {
	for _, arg := range a.args {
		if arg.Key == key {
			return arg.Vals
		}
	}
	return nil
}

func (a reqArgs) str(key string) string {
	if v := a.vals(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (a reqArgs) bytes(key string) []byte {
	if !a.has(key) {
		return nil
	}
	return []byte(a.str(key))
}

func (a reqArgs) int(key string) int64 {
	if !a.has(key) {
		return 0
	}
	n, err := strconv.ParseInt(a.str(key), 10, 64)
	if err != nil {
		a.d.Fatalf(a.t, "%s: %v", key, err)
	}
	return n
}

func (a reqArgs) uints(key string) []uint64 {
	var out []uint64
	for _, v := range a.vals(key) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			a.d.Fatalf(a.t, "%s: %v", key, err)
		}
		out = append(out, n)
	}
	return out
}

func (a reqArgs) marshal(m proto.Message) []byte {
	data, err := proto.Marshal(m)
	if err != nil {
		a.t.Fatal(err)
	}
	return data
}

// buildRequest builds the request of one input line of apply.
func buildRequest(t *testing.T, d *datadriven.TestData, cmd string, args []datadriven.CmdArg) *shardpb.Request {
	a := reqArgs{t: t, d: d, args: args}
	r := &shardpb.Request{Stamp: a.int("stamp")}
	for _, v := range a.vals("shadow") {
		id, gen, ok := strings.Cut(v, ":")
		l, err1 := strconv.ParseInt(id, 10, 64)
		g, err2 := strconv.ParseUint(gen, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			d.Fatalf(t, "shadow %q: want lease:generation", v)
		}
		r.ShadowLeases = append(r.ShadowLeases, &shardpb.ShadowLease{Lease: l, Generation: g})
	}
	if a.has("auth-rev") {
		r.AuthInfo = &shardpb.AuthInfo{User: a.str("auth-user"), Revision: uint64(a.int("auth-rev"))}
	}
	switch cmd {
	case "put":
		r.Op = &shardpb.Request_Put{Put: a.marshal(&pb.PutRequest{Key: a.bytes("k"), Value: a.bytes("v"), Lease: a.int("lease"),
			PrevKv: a.has("prev"), IgnoreValue: a.has("ignore-value"), IgnoreLease: a.has("ignore-lease")})}
	case "del":
		r.Op = &shardpb.Request_DeleteRange{DeleteRange: a.marshal(&pb.DeleteRangeRequest{Key: a.bytes("k"), RangeEnd: a.bytes("end"), PrevKv: a.has("prev")})}
	case "txn":
		r.Op = &shardpb.Request_Txn{Txn: a.marshal(buildTxn(a))}
	case "compact":
		r.Op = &shardpb.Request_Compaction{Compaction: a.marshal(&pb.CompactionRequest{Revision: a.int("rev")})}
	case "grant":
		r.Op = &shardpb.Request_LeaseGrant{LeaseGrant: a.marshal(&pb.LeaseGrantRequest{ID: a.int("id"), TTL: a.int("ttl")})}
	case "revoke":
		r.Op = &shardpb.Request_LeaseRevoke{LeaseRevoke: a.marshal(&pb.LeaseRevokeRequest{ID: a.int("id")})}
	case "checkpoint":
		r.Op = &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: a.marshal(&pb.LeaseCheckpointRequest{
			Checkpoints: []*pb.LeaseCheckpoint{{ID: a.int("id"), Remaining_TTL: a.int("ttl")}}})}
	case "alarm":
		req := &pb.AlarmRequest{MemberID: uint64(a.int("member"))}
		if a.has("activate") {
			req.Action = pb.AlarmRequest_ACTIVATE
		}
		if a.has("deactivate") {
			req.Action = pb.AlarmRequest_DEACTIVATE
		}
		if a.has("nospace") {
			req.Alarm = pb.AlarmType_NOSPACE
		}
		r.Op = &shardpb.Request_Alarm{Alarm: a.marshal(req)}
	case "register":
		r.Op = &shardpb.Request_LeaseRegister{LeaseRegister: &shardpb.LeaseShard{Lease: a.int("id"), Shard: uint64(a.int("shard"))}}
	case "unregister":
		r.Op = &shardpb.Request_LeaseUnregister{LeaseUnregister: &shardpb.LeaseShard{Lease: a.int("id"), Shard: uint64(a.int("shard"))}}
	case "shadow-revoke":
		r.Op = &shardpb.Request_ShadowRevoke{ShadowRevoke: &shardpb.ShadowLease{Lease: a.int("id"), Generation: uint64(a.int("gen"))}}
	case "split":
		r.Op = &shardpb.Request_Split{Split: &shardpb.SplitRange{Key: a.bytes("key"), Child: uint64(a.int("child")), Founders: a.uints("founders"), Above: int64(a.int("above"))}}
	case "member":
		r.Op = &shardpb.Request_MemberAttrs{MemberAttrs: a.marshal(&pb.Member{ID: uint64(a.int("id")), Name: a.str("name")})}
	case "peers":
		r.Op = &shardpb.Request_MemberPeers{MemberPeers: &shardpb.MemberPeers{Id: uint64(a.int("id")), PeerUrls: a.vals("urls"), IfAbsent: a.has("if-absent")}}
	case "hold":
		r.Op = &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{Target: uint64(a.int("target")),
			UntilUnixNano: applyClock.Add(time.Second).UnixNano(), MaxNanos: int64(2 * time.Second)}}
	case "broken":
		// The request of op=, its etcd message replaced by bytes that do
		// not decode.
		r = buildRequest(t, d, a.str("op"), nil)
		m := r.ProtoReflect()
		fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("op"))
		if fd == nil || fd.Kind() != protoreflect.BytesKind {
			d.Fatalf(t, "op %q carries no encoded etcd message", a.str("op"))
		}
		m.Set(fd, protoreflect.ValueOfBytes([]byte{0xff, 0xff, 0xff}))
	case "fence":
		r.Op = &shardpb.Request_AuthFence{AuthFence: &shardpb.AuthFence{Revision: uint64(a.int("rev")), Enabled: a.has("enabled")}}
	case "empty":
	default:
		if buildTxnRequest(a, r, cmd) || buildMergeRequest(a, r, cmd) {
			break
		}
		d.Fatalf(t, "unknown request %q", cmd)
	}
	return r
}

// buildTxn builds the TxnRequest of a txn line.
func buildTxn(a reqArgs) *pb.TxnRequest {
	r := &pb.TxnRequest{}
	for _, c := range a.vals("if") {
		if k, v, ok := strings.Cut(c, "="); ok {
			r.Compare = append(r.Compare, &pb.Compare{Key: []byte(k), Target: pb.Compare_VALUE, Result: pb.Compare_EQUAL,
				TargetUnion: &pb.Compare_Value{Value: []byte(v)}})
			continue
		}
		k, v, ok := strings.Cut(c, "@")
		ver, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			a.d.Fatalf(a.t, "compare %q: want key=value or key@version", c)
		}
		r.Compare = append(r.Compare, &pb.Compare{Key: []byte(k), Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL,
			TargetUnion: &pb.Compare_Version{Version: ver}})
	}
	r.Success = txnOps(a, a.vals("then"))
	r.Failure = txnOps(a, a.vals("else"))
	return r
}

func txnOps(a reqArgs, ops []string) []*pb.RequestOp {
	var out []*pb.RequestOp
	for _, op := range ops {
		var order int64
		var f []string
		for _, w := range strings.Fields(op) {
			if v, ok := strings.CutPrefix(w, "order="); ok {
				order, _ = strconv.ParseInt(v, 10, 32)
				continue
			}
			f = append(f, w)
		}
		arg := func(i int) []byte {
			if i < len(f) {
				return []byte(f[i])
			}
			return nil
		}
		switch f[0] {
		case "put":
			out = append(out, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: arg(1), Value: arg(2)}}})
		case "del":
			out = append(out, &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: arg(1), RangeEnd: arg(2)}}})
		case "get":
			out = append(out, &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: arg(1), RangeEnd: arg(2),
				SortOrder: pb.RangeRequest_SortOrder(order)}}})
		default:
			a.d.Fatalf(a.t, "txn op %q: want put, del or get", op)
		}
	}
	return out
}

// fmtResponse prints one request's outcome.
func fmtResponse(t *testing.T, r *shardpb.Response) string {
	// rev decodes an etcd response and returns its header's revision.
	rev := func(data []byte, m interface {
		proto.Message
		GetHeader() *pb.ResponseHeader
	}) int64 {
		if err := proto.Unmarshal(data, m); err != nil {
			t.Fatal(err)
		}
		return m.GetHeader().GetRevision()
	}
	switch res := r.Result.(type) {
	case *shardpb.Response_Error:
		return "error " + strings.TrimPrefix(res.Error.Code.String(), "ERROR_CODE_")
	case *shardpb.Response_Put:
		var p pb.PutResponse
		s := fmt.Sprintf("put rev=%d", rev(res.Put, &p))
		if p.PrevKv != nil {
			s += " prev=(" + fmtKv(p.PrevKv) + ")"
		}
		return s
	case *shardpb.Response_DeleteRange:
		var p pb.DeleteRangeResponse
		return fmt.Sprintf("del rev=%d deleted=%d", rev(res.DeleteRange, &p), p.Deleted) + fmtPrevs(p.PrevKvs)
	case *shardpb.Response_Txn:
		var p pb.TxnResponse
		return fmt.Sprintf("txn rev=%d %s", rev(res.Txn, &p), fmtTxn(&p))
	case *shardpb.Response_Compaction:
		return fmt.Sprintf("compact rev=%d", rev(res.Compaction, &pb.CompactionResponse{}))
	case *shardpb.Response_LeaseGrant:
		var p pb.LeaseGrantResponse
		return fmt.Sprintf("grant rev=%d id=%d ttl=%d", rev(res.LeaseGrant, &p), p.ID, p.TTL)
	case *shardpb.Response_LeaseRevoke:
		return fmt.Sprintf("revoke rev=%d", rev(res.LeaseRevoke, &pb.LeaseRevokeResponse{}))
	case *shardpb.Response_ShadowRevoke:
		return fmt.Sprintf("shadow-revoke rev=%d", rev(res.ShadowRevoke, &pb.LeaseRevokeResponse{}))
	case *shardpb.Response_LeaseCheckpoint:
		return fmt.Sprintf("checkpoint rev=%d", rev(res.LeaseCheckpoint, &pb.LeaseCheckpointResponse{}))
	case *shardpb.Response_Alarm:
		var p pb.AlarmResponse
		r := rev(res.Alarm, &p)
		var as []string
		for _, m := range p.Alarms {
			as = append(as, fmt.Sprintf("%d:%s", m.MemberID, m.Alarm))
		}
		return fmt.Sprintf("alarm rev=%d changed=(%s)", r, strings.Join(as, " "))
	case *shardpb.Response_LeaseRegistered:
		return fmt.Sprintf("registered index=%d", res.LeaseRegistered)
	case *shardpb.Response_LeaseShard:
		return fmt.Sprintf("unregistered %v", res.LeaseShard)
	case *shardpb.Response_Split:
		return fmt.Sprintf("split %v", res.Split)
	case *shardpb.Response_AuthFence:
		return fmt.Sprintf("fence %v", res.AuthFence)
	case *shardpb.Response_MemberAttrs:
		return fmt.Sprintf("member %v", res.MemberAttrs)
	case *shardpb.Response_MemberPeers:
		return fmt.Sprintf("peers recorded=%v", res.MemberPeers)
	case *shardpb.Response_TransferHold:
		return fmt.Sprintf("hold %v", res.TransferHold)
	default:
		if s, ok := fmtTxnResponse(t, r); ok {
			return s
		}
		if s, ok := fmtMergeResponse(r); ok {
			return s
		}
		t.Fatalf("unknown response %v", r)
		return ""
	}
}

// fmtTxn prints the branch a txn took and its ops' responses.
func fmtTxn(p *pb.TxnResponse) string {
	branch := "else"
	if p.Succeeded {
		branch = "then"
	}
	var ops []string
	for _, op := range p.Responses {
		switch o := op.Response.(type) {
		case *pb.ResponseOp_ResponsePut:
			ops = append(ops, "put")
		case *pb.ResponseOp_ResponseDeleteRange:
			ops = append(ops, fmt.Sprintf("del deleted=%d", o.ResponseDeleteRange.Deleted))
		case *pb.ResponseOp_ResponseRange:
			var kvs []string
			for _, kv := range o.ResponseRange.Kvs {
				kvs = append(kvs, fmtKv(kv))
			}
			ops = append(ops, "get "+strings.Join(kvs, " "))
		}
	}
	return fmt.Sprintf("%s (%s)", branch, strings.Join(ops, ", "))
}

func fmtPrevs(kvs []*mvccpb.KeyValue) string {
	var s []string
	for _, kv := range kvs {
		s = append(s, fmtKv(kv))
	}
	if len(s) == 0 {
		return ""
	}
	return " prev=(" + strings.Join(s, ", ") + ")"
}
