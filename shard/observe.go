package shard

import (
	"fmt"
	"strings"
	"time"

	protov1 "github.com/golang/protobuf/proto" //nolint:staticcheck // etcd's loggable requests print with its stable text format
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Observer is what a range reports for the node's metrics (Config.Observer);
// the node implements it with Prometheus types, so that this package
// imports none. Its methods run on dragonboat's apply goroutine and on the
// readers' and writers' goroutines: they must not block. Nil reports
// nothing.
type Observer interface {
	// Applied reports the etcd operations that one Update applied (every
	// entry of the batch), once its pebble batch is committed. Refused
	// requests count nothing.
	Applied(OpCounts)
	// Read reports the etcd operations of one read served by this
	// replica (a RangeQuery or a TxnQuery).
	Read(OpCounts)
	// Committed reports how long one Update's pebble commit took (without
	// fsync: the raft log is the durable record).
	Committed(time.Duration)
	// Synced reports how long one Sync (an fsync of pebble's WAL) took.
	Synced(time.Duration)
	// ProposalFailed reports a write that failed for a reason of the
	// group (no leader, timeout, the caller gone, the replica stopped),
	// not a refusal by the state machine.
	ProposalFailed()
	// Restamped reports a write refused as stale and stamped again
	// (sharded mode).
	Restamped()
	// Took reports how long the store work of one request took here:
	// applying one request of an entry (before its batch commits: a
	// refusal included) or serving one read (a RangeQuery or a TxnQuery).
	// It is called for every request, so it must be cheap; Timing's
	// methods, which decode the request, are for the slow ones (the node
	// logs those over --warning-apply-duration, as etcd's "apply request
	// took too long").
	Took(Timing)
	// LeaderTransferred reports a leader transfer this replica asked for
	// (Range.TransferLeader) that moved leadership; one that found the
	// target leading already is not reported.
	LeaderTransferred()
}

// Timing is one request's time, for Observer.Took, with what describes it
// in a log line the way etcd describes a slow apply: the request with its
// values replaced by their sizes, the response's size, the error.
type Timing struct {
	// Took is how long the request took.
	Took time.Duration

	// One of these is set: an applied request, or a read.
	applied  *shardpb.Request
	response *shardpb.Response
	rangeReq *pb.RangeRequest
	rangeRes *pb.RangeResponse
	txnReq   *pb.TxnRequest
	txnRes   *pb.TxnResponse
	err      error
}

// Prefix is etcd's prefix of the slow-request line: "read-only range "
// or "read-only txn " for a read, "" for an applied request.
func (t Timing) Prefix() string {
	switch {
	case t.rangeReq != nil:
		return "read-only range "
	case t.txnReq != nil:
		return "read-only txn "
	}
	return ""
}

// Request describes the request as etcd's loggable stringers do: a put's
// value (a txn's puts' too) appears as its size only.
func (t Timing) Request() string {
	switch {
	case t.rangeReq != nil:
		return protov1.CompactTextString(t.rangeReq)
	case t.txnReq != nil:
		return pb.NewLoggableTxnRequest(t.txnReq).String()
	case t.applied != nil:
		return describeRequest(t.applied)
	}
	return ""
}

// Response describes the answer as etcd does: its size (and, for reads,
// how many keys each range returned); "" for none (an error).
func (t Timing) Response() string {
	switch {
	case t.rangeRes != nil:
		return fmt.Sprintf("range_response_count:%d size:%d", len(t.rangeRes.Kvs), proto.Size(t.rangeRes))
	case t.txnRes != nil:
		var counts []string
		for _, r := range t.txnRes.Responses {
			if rr := r.GetResponseRange(); rr != nil {
				counts = append(counts, fmt.Sprintf("range_response_count:%d", len(rr.Kvs)))
			}
		}
		return fmt.Sprintf("responses:<%s> size:%d", strings.Join(counts, " "), proto.Size(t.txnRes))
	case t.response != nil && t.response.GetError() == nil:
		return fmt.Sprintf("size:%d", resultSize(t.response))
	}
	return ""
}

// Err is the request's error: a read's, or an applied request's refusal.
func (t Timing) Err() error {
	if e := t.response.GetError(); e != nil {
		return fromProto(e)
	}
	return t.err
}

// describeRequest is an applied request as etcd's InternalRaftStringer
// prints it (without the header Cairn has not): "put:<key:\"a\"
// value_size:1 >"; Cairn's own requests show their operation's name.
func describeRequest(r *shardpb.Request) string {
	var (
		m    proto.Message
		wire []byte
	)
	switch op := r.Op.(type) {
	case *shardpb.Request_Put:
		m, wire = new(pb.PutRequest), op.Put
	case *shardpb.Request_DeleteRange:
		m, wire = new(pb.DeleteRangeRequest), op.DeleteRange
	case *shardpb.Request_Txn:
		m, wire = new(pb.TxnRequest), op.Txn
	case *shardpb.Request_Compaction:
		m, wire = new(pb.CompactionRequest), op.Compaction
	case *shardpb.Request_LeaseGrant:
		m, wire = new(pb.LeaseGrantRequest), op.LeaseGrant
	case *shardpb.Request_LeaseRevoke:
		m, wire = new(pb.LeaseRevokeRequest), op.LeaseRevoke
	}
	name := oneofName(r.ProtoReflect(), "op")
	if m == nil || proto.Unmarshal(wire, m) != nil {
		return name + ":<>"
	}
	switch m := m.(type) {
	case *pb.PutRequest:
		return fmt.Sprintf("%s:<%s>", name, pb.NewLoggablePutRequest(m))
	case *pb.TxnRequest:
		return fmt.Sprintf("%s:<%s>", name, pb.NewLoggableTxnRequest(m))
	case *pb.LeaseGrantRequest:
		return fmt.Sprintf("%s:<ttl:%d-second id:%016x>", name, m.TTL, m.ID)
	case *pb.LeaseRevokeRequest:
		return fmt.Sprintf("%s:<id:%016x>", name, m.ID)
	}
	return fmt.Sprintf("%s:<%s>", name, protov1.CompactTextString(protov1.MessageV1(m)))
}

// oneofName is the name of the field set in m's oneof (none: "").
func oneofName(m protoreflect.Message, oneof protoreflect.Name) string {
	o := m.Descriptor().Oneofs().ByName(oneof)
	if o == nil {
		return ""
	}
	if f := m.WhichOneof(o); f != nil {
		return string(f.Name())
	}
	return ""
}

// resultSize is the size of the etcd response a shard response carries
// encoded (of the whole response if it carries none).
func resultSize(r *shardpb.Response) int {
	m := r.ProtoReflect()
	if f := m.WhichOneof(m.Descriptor().Oneofs().ByName("result")); f != nil && f.Kind() == protoreflect.BytesKind {
		return len(m.Get(f).Bytes())
	}
	return proto.Size(r)
}

// OpCounts counts etcd operations as etcd's mvcc metrics do
// (etcd_mvcc_{put,delete,range,txn}_total): a Put request or a put in a
// txn's branch taken is one put, a DeleteRange one delete, a Range one
// range; each compare of a txn is a range too (etcd reads the key); a Txn
// that runs more than one of these counts one txn. A lease revoke deletes
// each of its keys (one txn if more than one). The reads etcd makes for
// prev_kv are not counted. Splits counts the splits applied.
type OpCounts struct {
	Puts, Deletes, Ranges, Txns, Splits int
}

func (c *OpCounts) add(o OpCounts) {
	c.Puts += o.Puts
	c.Deletes += o.Deletes
	c.Ranges += o.Ranges
	c.Txns += o.Txns
	c.Splits += o.Splits
}

// txnCounts counts the operations of a txn as it ran: its compares and
// the operations of the branch resp says was taken, nested txns included.
func txnCounts(req *pb.TxnRequest, resp *pb.TxnResponse) OpCounts {
	var c OpCounts
	c.addTxn(req, resp)
	if c.Puts+c.Deletes+c.Ranges > 1 {
		c.Txns = 1
	}
	return c
}

func (c *OpCounts) addTxn(req *pb.TxnRequest, resp *pb.TxnResponse) {
	c.Ranges += len(req.GetCompare())
	ops := req.GetSuccess()
	if !resp.GetSucceeded() {
		ops = req.GetFailure()
	}
	for i, op := range ops {
		switch op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			c.Ranges++
		case *pb.RequestOp_RequestPut:
			c.Puts++
		case *pb.RequestOp_RequestDeleteRange:
			c.Deletes++
		case *pb.RequestOp_RequestTxn:
			var sub *pb.TxnResponse
			if rs := resp.GetResponses(); i < len(rs) {
				sub = rs[i].GetResponseTxn()
			}
			c.addTxn(op.GetRequestTxn(), sub)
		}
	}
}

// deleteCounts counts a revoke that deleted n keys.
func deleteCounts(n int) OpCounts {
	c := OpCounts{Deletes: n}
	if n > 1 {
		c.Txns = 1
	}
	return c
}
