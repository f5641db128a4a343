package shard

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// The scripts' cross-range transaction requests (testdata/apply_txn.txt):
//
//	prepare id= [primary=] [pkey=] [spans=(a, b-d, e-)] [put=(k=v, ...)]
//	        [del=(k, a-c, ...)] [lease=] [read-rev=] [cap=] [reads=(span, ...)]
//	commit id= rev= [put=(...)] [del=(...)] [lease=]
//	abort id=
//	decide id= rev= [pkey=]
//	resolve id= [pkey=]
//	forget id=
//
// A span is a key (a), an interval (b-d: [b, d)) or every key from one on
// (e-); put= and del= are the intents (lease= the puts' lease).
//
// And directives:
//
//	locks                 the locks held: id, spans, cap, intents
//	record id=            transaction id's record here
//	read k= [end=] [rev=] a read through Lookup
//	read-txn [rev=] [if]  a read-only txn through Lookup: get a at rev,
//	                      with if comparing a's value
//	restart               the state machine reopened on the same pebble
//	restore               a fresh pebble restored from this state
//	                      machine's snapshot, which serves from now on
func buildTxnRequest(a reqArgs, r *shardpb.Request, cmd string) bool {
	id := uint64(a.int("id"))
	switch cmd {
	case "prepare":
		p := &shardpb.TxnPrepare{Id: id, PrimaryRange: uint64(a.int("primary")), PrimaryKey: a.bytes("pkey"),
			Intents: intentsArg(a), ReadRevision: a.int("read-rev"), Cap: a.int("cap")}
		for _, v := range a.vals("spans") {
			k, e := spanArg(v)
			p.Spans = append(p.Spans, &shardpb.KeySpan{Key: k, RangeEnd: e})
		}
		if a.has("reads") {
			rr := &pb.TxnRequest{}
			for _, v := range a.vals("reads") {
				k, e := spanArg(v)
				rr.Success = append(rr.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: k, RangeEnd: e}}})
			}
			p.Reads = a.marshal(rr)
		}
		r.Op = &shardpb.Request_TxnPrepare{TxnPrepare: p}
	case "commit":
		r.Op = &shardpb.Request_TxnCommit{TxnCommit: &shardpb.TxnCommit{Id: id, Revision: a.int("rev"), Intents: intentsArg(a)}}
	case "abort":
		r.Op = &shardpb.Request_TxnAbort{TxnAbort: &shardpb.TxnAbort{Id: id}}
	case "decide":
		r.Op = &shardpb.Request_TxnDecide{TxnDecide: &shardpb.TxnDecide{Id: id, Revision: a.int("rev"), PrimaryKey: a.bytes("pkey"),
			Writes: []*shardpb.TxnWrites{{Range: 1}}}}
	case "resolve":
		r.Op = &shardpb.Request_TxnResolve{TxnResolve: &shardpb.TxnResolve{Id: id, PrimaryKey: a.bytes("pkey")}}
	case "forget":
		r.Op = &shardpb.Request_TxnForget{TxnForget: &shardpb.TxnForget{Id: id}}
	default:
		return false
	}
	return true
}

// spanArg parses a script span into etcd's key and range_end.
func spanArg(v string) ([]byte, []byte) {
	k, e, ok := strings.Cut(v, "-")
	switch {
	case !ok:
		return []byte(v), nil
	case e == "":
		return []byte(k), []byte{0}
	default:
		return []byte(k), []byte(e)
	}
}

// intentsArg encodes put= and del= as intents (nil: none given).
func intentsArg(a reqArgs) []byte {
	if !a.has("put") && !a.has("del") {
		return nil
	}
	r := &pb.TxnRequest{}
	for _, v := range a.vals("put") {
		k, val, _ := strings.Cut(v, "=")
		r.Success = append(r.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(val), Lease: a.int("lease")}}})
	}
	for _, v := range a.vals("del") {
		k, e := spanArg(v)
		r.Success = append(r.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: k, RangeEnd: e}}})
	}
	return a.marshal(r)
}

func fmtSpan(s *shardpb.KeySpan) string {
	switch {
	case len(s.RangeEnd) == 0:
		return string(s.Key)
	case len(s.RangeEnd) == 1 && s.RangeEnd[0] == 0:
		return string(s.Key) + "-"
	default:
		return string(s.Key) + "-" + string(s.RangeEnd)
	}
}

func fmtTxnResponse(t *testing.T, r *shardpb.Response) (string, bool) {
	switch res := r.Result.(type) {
	case *shardpb.Response_TxnPrepared:
		s := fmt.Sprintf("prepared rev=%d cap=%d", res.TxnPrepared.Revision, res.TxnPrepared.Cap)
		if len(res.TxnPrepared.Reads) > 0 {
			var p pb.TxnResponse
			if err := proto.Unmarshal(res.TxnPrepared.Reads, &p); err != nil {
				t.Fatal(err)
			}
			s += fmt.Sprintf(" reads=(rev=%d %s)", p.Header.Revision, fmtTxn(&p))
		}
		return s, true
	case *shardpb.Response_TxnSettled:
		s := fmt.Sprintf("settled held=%v", res.TxnSettled.Held)
		if len(res.TxnSettled.Txn) > 0 {
			var p pb.TxnResponse
			if err := proto.Unmarshal(res.TxnSettled.Txn, &p); err != nil {
				t.Fatal(err)
			}
			s += fmt.Sprintf(" rev=%d %s", p.Header.Revision, fmtTxn(&p))
		}
		return s, true
	case *shardpb.Response_TxnRecord:
		return fmtRecord(res.TxnRecord), true
	case *shardpb.Response_TxnForgotten:
		return fmt.Sprintf("forgotten %v", res.TxnForgotten), true
	}
	return "", false
}

func fmtRecord(rec *shardpb.TxnRecord) string {
	s := fmt.Sprintf("record id=%d outcome=%s", rec.Id, strings.TrimPrefix(rec.Outcome.String(), "TXN_OUTCOME_"))
	if rec.Revision != 0 {
		s += fmt.Sprintf(" rev=%d", rec.Revision)
	}
	if len(rec.PrimaryKey) > 0 {
		s += fmt.Sprintf(" pkey=%s", rec.PrimaryKey)
	}
	return s
}

func (h *applyHarness) runTxn(t *testing.T, d *datadriven.TestData) (string, bool) {
	switch d.Cmd {
	case "locks":
		v, err := h.s.Lookup(LocksQuery{})
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range v.([]*shardpb.TxnLock) {
			var spans []string
			for _, s := range l.Spans {
				spans = append(spans, fmtSpan(s))
			}
			fmt.Fprintf(&b, "lock %d spans=(%s) cap=%d primary=%d/%s", l.Id, strings.Join(spans, ", "), l.Cap, l.PrimaryRange, l.PrimaryKey)
			if len(l.Intents) > 0 {
				var r pb.TxnRequest
				if err := proto.Unmarshal(l.Intents, &r); err != nil {
					t.Fatal(err)
				}
				var ops []string
				for _, op := range r.Success {
					if p := op.GetRequestPut(); p != nil {
						ops = append(ops, fmt.Sprintf("put %s=%s", p.Key, p.Value))
					} else {
						dr := op.GetRequestDeleteRange()
						ops = append(ops, "del "+fmtSpan(&shardpb.KeySpan{Key: dr.Key, RangeEnd: dr.RangeEnd}))
					}
				}
				fmt.Fprintf(&b, " intents=(%s)", strings.Join(ops, ", "))
			}
			b.WriteString("\n")
		}
		if b.Len() == 0 {
			return "none\n", true
		}
		return b.String(), true
	case "record":
		var id uint64
		d.ScanArgs(t, "id", &id)
		v, err := h.s.Lookup(TxnRecordQuery{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		return fmtRecord(v.(*shardpb.TxnRecord)) + "\n", true
	case "read":
		var k, end string
		var rev int64
		d.ScanArgs(t, "k", &k)
		d.MaybeScanArgs(t, "end", &end)
		d.MaybeScanArgs(t, "rev", &rev)
		req := &pb.RangeRequest{Key: []byte(k), Revision: rev}
		if end != "" {
			req.RangeEnd = []byte(end)
		}
		v, err := h.s.Lookup(RangeQuery{Req: req})
		if err != nil {
			if e, ok := err.(*Error); ok {
				return "error " + strings.TrimPrefix(e.Code.String(), "ERROR_CODE_") + "\n", true
			}
			t.Fatal(err)
		}
		rr := v.(*pb.RangeResponse)
		var kvs []string
		for _, kv := range rr.Kvs {
			kvs = append(kvs, fmtKv(kv))
		}
		return fmt.Sprintf("rev=%d (%s)\n", rr.Header.Revision, strings.Join(kvs, " ")), true
	case "read-txn":
		// A read-only txn getting a (at rev=), comparing a's value (if=a).
		var rev int64
		d.MaybeScanArgs(t, "rev", &rev)
		req := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), Revision: rev}}}}}
		if d.HasArg("if") {
			req.Compare = []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_VALUE, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Value{Value: []byte("1")}}}
		}
		v, err := h.s.Lookup(TxnQuery{Req: req})
		if err != nil {
			if e, ok := err.(*Error); ok {
				return "error " + strings.TrimPrefix(e.Code.String(), "ERROR_CODE_") + "\n", true
			}
			t.Fatal(err)
		}
		return fmtTxn(v.(*pb.TxnResponse)) + "\n", true
	case "restart":
		if err := h.s.Close(); err != nil {
			t.Fatal(err)
		}
		h.s = Factory(h.cfg)(1, 1).(*StateMachine)
		applied, err := h.s.Open(nil)
		if err != nil {
			t.Fatal(err)
		}
		h.index = applied
		return h.status(h.s), true
	case "restore":
		ctx, err := h.s.PrepareSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := h.s.SaveSnapshot(ctx, &buf, nil); err != nil {
			t.Fatal(err)
		}
		db := openDB(t, vfs.NewMem())
		t.Cleanup(func() { db.Close() })
		cfg := h.cfg
		cfg.DB = db
		s := Factory(cfg)(1, 2).(*StateMachine)
		if _, err := s.Open(nil); err != nil {
			t.Fatal(err)
		}
		if err := s.RecoverFromSnapshot(&buf, nil); err != nil {
			t.Fatal(err)
		}
		h.s, h.db, h.cfg = s, db, cfg
		return h.status(h.s), true
	}
	return "", false
}
