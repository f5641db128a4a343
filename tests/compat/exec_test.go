package compat

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
)

// opTimeout bounds one request; a server that does not answer fails the op
// with a deadline error rather than hanging the test.
const opTimeout = 20 * time.Second

// answer is a server's answer to one op: a response or an error.
type answer struct {
	resp proto.Message // nil when err is set; headers normalised
	err  string        // "<grpc code>: <message>" as the server sent it; "" on success
}

func (a answer) String() string {
	if a.err != "" {
		return "error " + a.err
	}
	return strings.TrimSpace(prototext.MarshalOptions{Multiline: true, Indent: "  "}.Format(shorten(a.resp)))
}

func (a answer) equal(b answer) bool {
	if a.err != "" || b.err != "" {
		return a.err == b.err
	}
	return proto.Equal(a.resp, b.resp)
}

// diff shows how b differs from a, field by field.
func (a answer) diff(b answer) string {
	if a.err != "" || b.err != "" {
		return fmt.Sprintf("-%s\n+%s", a, b)
	}
	if d := cmp.Diff(shorten(a.resp), shorten(b.resp), protocmp.Transform()); d != "" {
		return d
	}
	return "(the difference is past the printed prefix of a long value)"
}

// run sends o to s through clientv3 and returns s's answer.
func run(s *server, o op) answer {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s.wire.take()
	if s.linearize {
		o = linearized(o)
	}
	resp, err := send(ctx, s.cli, o)
	wireErr := s.wire.take()
	if err != nil {
		if wireErr != nil {
			err = wireErr
		}
		return answer{err: errText(err)}
	}
	normalize(resp.ProtoReflect())
	return answer{resp: resp}
}

// linearized is o with every read in it linearizable.
func linearized(o op) op {
	switch r := o.req.(type) {
	case *pb.RangeRequest:
		r = proto.Clone(r).(*pb.RangeRequest)
		r.Serializable = false
		o.req = r
	case *pb.TxnRequest:
		r = proto.Clone(r).(*pb.TxnRequest)
		linearizeTxn(r)
		o.req = r
	}
	return o
}

func linearizeTxn(r *pb.TxnRequest) {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch x := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				x.RequestRange.Serializable = false
			case *pb.RequestOp_RequestTxn:
				linearizeTxn(x.RequestTxn)
			}
		}
	}
}

func send(ctx context.Context, cli *clientv3.Client, o op) (proto.Message, error) {
	switch o.kind {
	case kindGet:
		r := o.req.(*pb.RangeRequest)
		resp, err := cli.Get(ctx, string(r.Key), rangeOpts(r)...)
		return (*pb.RangeResponse)(resp), err
	case kindGetStream:
		r := o.req.(*pb.RangeRequest)
		ch, err := cli.GetStream(ctx, string(r.Key), rangeOpts(r)...)
		if err != nil {
			return nil, err
		}
		resp, err := clientv3.GetStreamToGetResponse(ch)
		return (*pb.RangeResponse)(resp), err
	case kindPut:
		r := o.req.(*pb.PutRequest)
		resp, err := cli.Do(ctx, putOp(r))
		return (*pb.PutResponse)(resp.Put()), err
	case kindDelete:
		r := o.req.(*pb.DeleteRangeRequest)
		resp, err := cli.Do(ctx, deleteOp(r))
		return (*pb.DeleteRangeResponse)(resp.Del()), err
	case kindTxn:
		r := o.req.(*pb.TxnRequest)
		resp, err := cli.Txn(ctx).If(cmps(r.Compare)...).Then(ops(r.Success)...).Else(ops(r.Failure)...).Commit()
		return (*pb.TxnResponse)(resp), err
	case kindCompact:
		r := o.req.(*pb.CompactionRequest)
		var opts []clientv3.CompactOption
		if r.Physical {
			opts = append(opts, clientv3.WithCompactPhysical())
		}
		resp, err := cli.Compact(ctx, r.Revision, opts...)
		return (*pb.CompactionResponse)(resp), err
	case kindRawRange:
		return pb.NewKVClient(cli.ActiveConnection()).Range(ctx, o.req.(*pb.RangeRequest))
	case kindRawTxn:
		return pb.NewKVClient(cli.ActiveConnection()).Txn(ctx, o.req.(*pb.TxnRequest))
	}
	panic(fmt.Sprintf("compat: unknown op kind %d", o.kind))
}

// rangeOpts are the clientv3 options that make r. The generator builds the
// range end itself, so WithRange stands for WithPrefix and WithFromKey.
func rangeOpts(r *pb.RangeRequest) []clientv3.OpOption {
	var opts []clientv3.OpOption
	if len(r.RangeEnd) > 0 {
		opts = append(opts, clientv3.WithRange(string(r.RangeEnd)))
	}
	if r.Limit != 0 {
		opts = append(opts, clientv3.WithLimit(r.Limit))
	}
	if r.Revision != 0 {
		opts = append(opts, clientv3.WithRev(r.Revision))
	}
	if r.SortTarget != 0 || r.SortOrder != 0 {
		opts = append(opts, clientv3.WithSort(clientv3.SortTarget(r.SortTarget), clientv3.SortOrder(r.SortOrder)))
	}
	if r.Serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	if r.KeysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if r.CountOnly {
		opts = append(opts, clientv3.WithCountOnly())
	}
	if r.MinModRevision != 0 {
		opts = append(opts, clientv3.WithMinModRev(r.MinModRevision))
	}
	if r.MaxModRevision != 0 {
		opts = append(opts, clientv3.WithMaxModRev(r.MaxModRevision))
	}
	if r.MinCreateRevision != 0 {
		opts = append(opts, clientv3.WithMinCreateRev(r.MinCreateRevision))
	}
	if r.MaxCreateRevision != 0 {
		opts = append(opts, clientv3.WithMaxCreateRev(r.MaxCreateRevision))
	}
	return opts
}

func putOp(r *pb.PutRequest) clientv3.Op {
	var opts []clientv3.OpOption
	if r.Lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(r.Lease)))
	}
	if r.PrevKv {
		opts = append(opts, clientv3.WithPrevKV())
	}
	if r.IgnoreValue {
		opts = append(opts, clientv3.WithIgnoreValue())
	}
	if r.IgnoreLease {
		opts = append(opts, clientv3.WithIgnoreLease())
	}
	return clientv3.OpPut(string(r.Key), string(r.Value), opts...)
}

func deleteOp(r *pb.DeleteRangeRequest) clientv3.Op {
	var opts []clientv3.OpOption
	if len(r.RangeEnd) > 0 {
		opts = append(opts, clientv3.WithRange(string(r.RangeEnd)))
	}
	if r.PrevKv {
		opts = append(opts, clientv3.WithPrevKV())
	}
	return clientv3.OpDelete(string(r.Key), opts...)
}

func cmps(cs []*pb.Compare) []clientv3.Cmp {
	var out []clientv3.Cmp
	for _, c := range cs {
		out = append(out, clientv3.FromCompare(c))
	}
	return out
}

func ops(rs []*pb.RequestOp) []clientv3.Op {
	var out []clientv3.Op
	for _, r := range rs {
		switch x := r.Request.(type) {
		case *pb.RequestOp_RequestRange:
			out = append(out, clientv3.OpGet(string(x.RequestRange.Key), rangeOpts(x.RequestRange)...))
		case *pb.RequestOp_RequestPut:
			out = append(out, putOp(x.RequestPut))
		case *pb.RequestOp_RequestDeleteRange:
			out = append(out, deleteOp(x.RequestDeleteRange))
		case *pb.RequestOp_RequestTxn:
			t := x.RequestTxn
			out = append(out, clientv3.OpTxn(cmps(t.Compare), ops(t.Success), ops(t.Failure)))
		}
	}
	return out
}

// errText is an error as the server sent it: gRPC code and message.
func errText(err error) string {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return fmt.Sprintf("%v: %s", ee.Code(), ee.Error())
	}
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%v: %s", s.Code(), s.Message())
	}
	return "client: " + err.Error()
}

// normalize zeroes what names the server in every response header, nested
// txn responses included: cluster id, member id and raft term.
func normalize(m protoreflect.Message) {
	if h, ok := m.Interface().(*pb.ResponseHeader); ok {
		h.ClusterId, h.MemberId, h.RaftTerm = 0, 0, 0
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				normalize(l.Get(i).Message())
			}
		case fd.Message() != nil:
			normalize(v.Message())
		}
		return true
	})
}

// headerOf returns a response's header, nil if it has none.
func headerOf(m proto.Message) *pb.ResponseHeader {
	if h, ok := m.(interface{ GetHeader() *pb.ResponseHeader }); ok {
		return h.GetHeader()
	}
	return nil
}
