package compat

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// missingLease is a lease id that exists on neither server: the differential
// run grants no leases, because etcd picks lease ids itself.
const missingLease = 7777

// maxTxnOps is the txn size limit both servers run with (etcd's default).
const maxTxnOps = 128

// opKind names what an op sends. Most kinds go through clientv3's KV API;
// kindRawRange and kindRawTxn send requests clientv3 refuses to build or
// cannot build (an invalid sort option, a txn op with no request) on the
// client's own connection.
type opKind int

const (
	kindGet opKind = iota
	kindGetStream
	kindPut
	kindDelete
	kindTxn
	kindCompact
	kindRawRange
	kindRawTxn
)

var kindNames = map[opKind]string{
	kindGet: "Get", kindGetStream: "GetStream", kindPut: "Put", kindDelete: "Delete",
	kindTxn: "Txn", kindCompact: "Compact", kindRawRange: "RawRange", kindRawTxn: "RawTxn",
}

// op is one request of a sequence, kept as the etcd protobuf request that
// goes on the wire so that a failure report shows exactly what was sent.
//
// Invariant: req's type matches kind (RangeRequest for the get kinds,
// PutRequest, DeleteRangeRequest, TxnRequest for both txn kinds,
// CompactionRequest).
type op struct {
	kind opKind
	req  proto.Message
}

func (o op) String() string {
	return kindNames[o.kind] + " {" + strings.TrimSpace(prototext.MarshalOptions{}.Format(shorten(o.req))) + "}"
}

// shorten returns a copy of m with long byte strings cut, for printing.
func shorten(m proto.Message) proto.Message {
	m = proto.Clone(m)
	shortenReflect(m.ProtoReflect())
	return m
}

func shortenReflect(m protoreflect.Message) {
	const keep = 64
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Message() != nil:
			for l, i := v.List(), 0; i < l.Len(); i++ {
				shortenReflect(l.Get(i).Message())
			}
		case fd.Message() != nil:
			shortenReflect(v.Message())
		case fd.Kind() == protoreflect.BytesKind && !fd.IsList() && len(v.Bytes()) > keep:
			b := v.Bytes()
			cut := fmt.Appendf(append([]byte{}, b[:keep]...), "...(%d bytes)", len(b))
			m.Set(fd, protoreflect.ValueOfBytes(cut))
		}
		return true
	})
}

// gen generates one sequence's operations. It knows the revisions only from
// etcd's answers (observe), so that both servers get the same requests.
type gen struct {
	r      *rand.Rand
	keys   []string // the sequence's keys plus a few keys every sequence shares
	bounds []string // extra range boundaries that are not keys
	values []string

	base       int64 // etcd's revision when the sequence started
	rev        int64 // etcd's latest revision
	compactRev int64 // etcd's compaction revision (0: never compacted)
}

func newGen(seed int64, rev, compactRev int64) *gen {
	return newGenIn(seed, rev, compactRev, fmt.Sprintf("s%03d/", seed))
}

// newGenIn is newGen with the sequence's keys under prefix p.
func newGenIn(seed int64, rev, compactRev int64, p string) *gen {
	r := rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
	g := &gen{
		r:          r,
		base:       rev,
		rev:        rev,
		compactRev: compactRev,
		values:     []string{"", "v", "v1", "v2", "w", "zzzz", "\x00bin\xff"},
	}
	for _, s := range []string{"", "a", "a\x00", "ab", "abc", "b", "ba", "c", "\xff"} {
		g.keys = append(g.keys, p+s)
	}
	g.keys = append(g.keys, "shared/x", "shared/y", "shared/z")
	g.bounds = []string{p + "aa", p + "bz", p + "\xff\xff", "shared/", "shared0", "s", "t"}
	return g
}

// observe records a successful answer's revision.
func (g *gen) observe(o op, resp proto.Message) {
	if h := headerOf(resp); h != nil && h.Revision > g.rev {
		g.rev = h.Revision
	}
	if c, ok := o.req.(*pb.CompactionRequest); ok {
		g.compactRev = c.Revision
	}
}

func (g *gen) pct(p int) bool { return g.r.IntN(100) < p }

func (g *gen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }

func (g *gen) key() string {
	if g.pct(2) {
		return "" // bad input: etcdserver: key is not provided
	}
	return g.pick(g.keys)
}

func (g *gen) value() string { return g.pick(g.values) }

// between returns a random revision in [lo, hi], or lo if hi < lo.
func (g *gen) between(lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + g.r.Int64N(hi-lo+1)
}

// pastRev returns a revision to read at or compact to: mostly one that
// exists, sometimes a compacted one or a future one.
func (g *gen) pastRev() int64 {
	switch n := g.r.IntN(100); {
	case n < 45:
		return g.between(max(1, g.compactRev), g.rev)
	case n < 65:
		return g.between(max(1, g.base-2), g.rev)
	case n < 75:
		return g.compactRev // the compaction revision itself is still readable
	case n < 85:
		return g.between(max(0, g.compactRev-3), max(0, g.compactRev-1)) // compacted
	case n < 95:
		return g.rev + 1 + g.r.Int64N(3) // future
	default:
		return -1 - g.r.Int64N(2) // negative: means "current" for a read
	}
}

// interval returns a key and range end: a single key, a prefix, [a, b) in
// either order, from a key, or everything.
func (g *gen) interval() (key, end string) {
	switch n := g.r.IntN(100); {
	case n < 40:
		return g.key(), ""
	case n < 60:
		k := g.key()
		if k == "" {
			return "", ""
		}
		if g.pct(30) {
			k = k[:len(k)-1] // prefix of a key, e.g. the sequence's "sNNN"
		}
		return k, clientv3.GetPrefixRangeEnd(k)
	case n < 80:
		all := append(append([]string{}, g.keys...), g.bounds...)
		return g.pick(all), g.pick(all) // sometimes end <= key: an empty range
	case n < 95:
		return g.key(), "\x00"
	default:
		return "\x00", "\x00"
	}
}

// rangeReq returns a random Range request. The sort fields are as clientv3
// sends them (it turns KEY/ASCEND into KEY/NONE).
func (g *gen) rangeReq(inTxn bool) *pb.RangeRequest {
	k, end := g.interval()
	r := &pb.RangeRequest{Key: []byte(k)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	if g.pct(40) {
		r.Limit = g.r.Int64N(5)
		if g.pct(5) {
			r.Limit = -1
		}
	}
	if g.pct(50) {
		r.SortTarget = pb.RangeRequest_SortTarget(g.r.IntN(5))
		r.SortOrder = pb.RangeRequest_SortOrder(g.r.IntN(3))
		if r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND {
			r.SortOrder = pb.RangeRequest_NONE
		}
	}
	r.KeysOnly = g.pct(20)
	r.CountOnly = g.pct(10)
	r.Serializable = g.pct(30)
	lo, hi := max(0, g.base-3), g.rev+2
	if g.pct(12) {
		r.MinModRevision = g.between(lo, hi)
	}
	if g.pct(12) {
		r.MaxModRevision = g.between(lo, hi)
	}
	if g.pct(12) {
		r.MinCreateRevision = g.between(lo, hi)
	}
	if g.pct(12) {
		r.MaxCreateRevision = g.between(lo, hi)
	}
	if g.pct(inTxnPct(inTxn, 25, 10)) {
		r.Revision = g.pastRev()
	}
	if inTxn && g.pct(1) {
		// clientv3 checks the sort option of a Get, not of a Get in a txn.
		r.SortTarget, r.SortOrder = pb.RangeRequest_SortTarget(5+g.r.IntN(3)), pb.RangeRequest_ASCEND
	}
	return r
}

func inTxnPct(inTxn bool, outside, inside int) int {
	if inTxn {
		return inside
	}
	return outside
}

func (g *gen) putReq() *pb.PutRequest {
	r := &pb.PutRequest{Key: []byte(g.key()), Value: []byte(g.value())}
	r.PrevKv = g.pct(50)
	if g.pct(10) {
		r.IgnoreValue = true
		if !g.pct(15) {
			r.Value = nil // else: etcdserver: value is provided
		}
	}
	if g.pct(10) {
		r.IgnoreLease = true
	}
	if g.pct(5) {
		r.Lease = missingLease // requested lease not found, or lease is provided
	}
	if g.pct(1) {
		// Over etcd's default 1.5 MiB request limit (request is too large),
		// or a large value that fits.
		size := 1600 * 1024
		if g.pct(50) {
			size = 100 * 1024
		}
		r.Value = []byte(strings.Repeat("x", size))
	}
	return r
}

// deleteReq returns a random DeleteRange request. Inside a txn a from-key
// delete is spelled with an explicit end instead: etcd's duplicate-key check
// misses a "\x00" range end, so it accepts a txn that deletes a key and puts
// it again, and a put with ignore_value or ignore_lease after such a delete
// crashes etcd's apply loop (index out of range in txn.put; etcd-io/etcd
// #22445, #22395, #22376).
func (g *gen) deleteReq(inTxn bool) *pb.DeleteRangeRequest {
	var k, end string
	if g.pct(50) {
		k = g.key()
	} else {
		k, end = g.interval()
		if k == "\x00" && end == "\x00" && !g.pct(20) {
			k, end = g.key(), "" // deleting everything is rare: it wipes shared history
		}
	}
	if inTxn && end == "\x00" {
		end = "\xff\xff\xff"
	}
	r := &pb.DeleteRangeRequest{Key: []byte(k), PrevKv: g.pct(50)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return r
}

var (
	compareTargets = []pb.Compare_CompareTarget{pb.Compare_VERSION, pb.Compare_CREATE, pb.Compare_MOD, pb.Compare_VALUE, pb.Compare_LEASE}
	compareResults = []pb.Compare_CompareResult{pb.Compare_EQUAL, pb.Compare_GREATER, pb.Compare_LESS, pb.Compare_NOT_EQUAL}
)

func (g *gen) compare() *pb.Compare {
	c := &pb.Compare{
		Key:    []byte(g.key()),
		Target: compareTargets[g.r.IntN(len(compareTargets))],
		Result: compareResults[g.r.IntN(len(compareResults))],
	}
	switch c.Target {
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: g.r.Int64N(4)}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: g.between(0, g.rev+1)}
		if g.pct(50) {
			c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: g.between(max(0, g.base-1), g.rev+1)}
		}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: g.between(0, g.rev+1)}
		if g.pct(50) {
			c.TargetUnion = &pb.Compare_ModRevision{ModRevision: g.between(max(0, g.base-1), g.rev+1)}
		}
	case pb.Compare_VALUE:
		c.TargetUnion = &pb.Compare_Value{Value: []byte(g.value())}
	case pb.Compare_LEASE:
		var l int64
		if g.pct(30) {
			l = missingLease
		}
		c.TargetUnion = &pb.Compare_Lease{Lease: l}
	}
	if g.pct(4) {
		// Odd compares etcd accepts: the value of another target (read as
		// zero), no value, an unknown target or an unknown result.
		switch g.r.IntN(4) {
		case 0:
			c.TargetUnion = &pb.Compare_Version{Version: g.r.Int64N(3)}
			if c.Target == pb.Compare_VERSION {
				c.TargetUnion = &pb.Compare_Value{Value: []byte(g.value())}
			}
		case 1:
			c.TargetUnion = nil
		case 2:
			c.Target = pb.Compare_CompareTarget(5 + g.r.IntN(2))
		case 3:
			c.Result = pb.Compare_CompareResult(4 + g.r.IntN(2))
		}
	}
	if len(c.Key) > 0 && g.pct(20) {
		if g.pct(50) {
			c.RangeEnd = []byte(clientv3.GetPrefixRangeEnd(string(c.Key)))
		} else {
			c.RangeEnd = []byte(g.pick(append(append([]string{"\x00"}, g.keys...), g.bounds...)))
		}
	}
	return c
}

func (g *gen) requestOp(depth int) *pb.RequestOp {
	switch n := g.r.IntN(100); {
	case n < 35:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: g.rangeReq(true)}}
	case n < 70:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: g.putReq()}}
	case n < 90 || depth >= 2:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: g.deleteReq(true)}}
	default:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: g.txnReq(depth + 1)}}
	}
}

func (g *gen) txnReq(depth int) *pb.TxnRequest {
	t := &pb.TxnRequest{}
	for i, n := 0, g.r.IntN(4); i < n; i++ {
		t.Compare = append(t.Compare, g.compare())
	}
	for i, n := 0, g.r.IntN(4); i < n; i++ {
		t.Success = append(t.Success, g.requestOp(depth))
	}
	for i, n := 0, g.r.IntN(4); i < n; i++ {
		t.Failure = append(t.Failure, g.requestOp(depth))
	}
	if depth == 0 && g.pct(2) {
		// At the limit, or one over: too many operations in txn request.
		t.Success = nil
		for i, n := 0, maxTxnOps+g.r.IntN(2); i < n; i++ {
			t.Success = append(t.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestRange{
				RequestRange: &pb.RangeRequest{Key: []byte(g.pick(g.keys))}}})
		}
	}
	return t
}

func (g *gen) compactReq() *pb.CompactionRequest {
	r := &pb.CompactionRequest{Physical: g.pct(30)}
	switch n := g.r.IntN(100); {
	case n < 60:
		r.Revision = g.between(max(1, g.compactRev+1), g.rev) // moves forward
	case n < 75:
		r.Revision = g.between(max(1, g.compactRev-2), g.compactRev) // already compacted
	case n < 90:
		r.Revision = g.rev + 1 + g.r.Int64N(2) // future
	default:
		r.Revision = g.rev // the current revision
	}
	return r
}

// next returns the sequence's next op, of a kind not in skip.
func (g *gen) next(skip map[opKind]bool) op {
	for {
		if o := g.draw(); !skip[o.kind] {
			return o
		}
	}
}

func (g *gen) draw() op {
	switch n := g.r.IntN(100); {
	case n < 25:
		return op{kindPut, g.putReq()}
	case n < 52:
		return op{kindGet, g.rangeReq(false)}
	case n < 56:
		r := g.rangeReq(false)
		if g.pct(70) {
			// RangeStream refuses custom orders and revision filters
			// (Unimplemented); keep most streams to what it serves.
			r.SortTarget, r.SortOrder = 0, 0
			r.MinModRevision, r.MaxModRevision, r.MinCreateRevision, r.MaxCreateRevision = 0, 0, 0, 0
		}
		return op{kindGetStream, r}
	case n < 68:
		return op{kindDelete, g.deleteReq(false)}
	case n < 92:
		return op{kindTxn, g.txnReq(0)}
	case n < 96:
		return op{kindCompact, g.compactReq()}
	case n < 97:
		// A txn op with no request in it: etcd refuses the txn (key not found).
		t := g.txnReq(0)
		empty := &pb.RequestOp{}
		if g.pct(50) {
			t.Success = slices.Insert(t.Success, g.r.IntN(len(t.Success)+1), empty)
		} else {
			t.Failure = slices.Insert(t.Failure, g.r.IntN(len(t.Failure)+1), empty)
		}
		return op{kindRawTxn, t}
	default:
		// An invalid sort target or order: clientv3 refuses to send it, so
		// this goes on the client's connection as it is.
		r := g.rangeReq(false)
		if g.pct(50) {
			r.SortTarget = pb.RangeRequest_SortTarget(5 + g.r.IntN(3))
		} else {
			r.SortOrder = pb.RangeRequest_SortOrder(3 + g.r.IntN(3))
		}
		return op{kindRawRange, r}
	}
}
