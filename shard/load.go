package shard

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// A range's load as its replica client sees it, for splits by load
// (placement.Scheduler's load key): the client counts the requests it
// serves (Replica.Proposed, Replica.Reads) and keeps a uniform sample of
// the keys they touched (one key a request, so each request weighs the
// same) since the sample was last taken (Replica.TakeKeySample). The
// caller that takes the sample every window turns it into a load key
// (LoadKey): the sampled key with about half the sampled requests before
// it.
//
//	requests: get a, put b, get b, get b, put c, get d   (6, all sampled)
//	sample:   a b b b c d
//	LoadKey:  c  (3 requests before it, 3 from it on; "b" would leave 1
//	          before it)
//
// A request's key is its first: a Range's or DeleteRange's start, a
// Put's key, a Txn's first compare's key (else its first op's). Requests
// with no key (lease grants, compactions, ...) are counted but not
// sampled.

// sampleSize bounds the keys a sample keeps (reservoir sampling: each
// request of the window is in it with probability sampleSize/requests).
const sampleSize = 128

// keySample is a reservoir of request keys (Vitter's algorithm R). Adding
// a key allocates only when the key enters the sample and is longer than
// the slot's buffer it replaces.
type keySample struct {
	mu sync.Mutex
	// seen counts the keys offered since the last take; keys holds
	// min(seen, sampleSize) of them, each offered key equally likely.
	// Invariant: len(keys) == min(seen, sampleSize).
	seen uint64   // REQUIRES: mu
	keys [][]byte // REQUIRES: mu
	rng  *rand.Rand
}

func newKeySample(seed uint64) *keySample {
	return &keySample{rng: rand.New(rand.NewPCG(seed, 0x6c6f61645f6b6579))}
}

// add offers key (copied if it is kept); a nil or empty key is not
// sampled.
func (s *keySample) add(key []byte) {
	if len(key) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen++
	if len(s.keys) < sampleSize {
		s.keys = append(s.keys, bytes.Clone(key))
		return
	}
	if j := s.rng.Uint64N(s.seen); j < sampleSize {
		s.keys[j] = append(s.keys[j][:0], key...)
	}
}

// take returns the sample, sorted, and starts a new one.
func (s *keySample) take() [][]byte {
	s.mu.Lock()
	keys := s.keys
	s.keys, s.seen = nil, 0 // a cold range's sample stays small
	s.mu.Unlock()
	slices.SortFunc(keys, bytes.Compare)
	return keys
}

// LoadKey is the key of sample (sorted, as Replica.TakeKeySample returns
// it) that divides the sampled requests on [start, end) (an empty end:
// no bound) most evenly: about half of them touched keys before it. It
// lies strictly inside the span. nil if the sample cannot tell: fewer
// than two distinct keys in the span (all the load on one key cannot be
// divided by a split).
func LoadKey(sample [][]byte, start, end []byte) []byte {
	lo, _ := slices.BinarySearchFunc(sample, start, bytes.Compare)
	hi := len(sample)
	if len(end) > 0 {
		hi, _ = slices.BinarySearchFunc(sample, end, bytes.Compare)
	}
	in := sample[lo:hi]
	var (
		best    []byte
		bestGap = len(in) + 1
	)
	for i := 1; i < len(in); i++ {
		if bytes.Equal(in[i], in[i-1]) {
			continue
		}
		// Splitting at in[i] puts i sampled requests left, the rest right.
		gap := len(in) - 2*i
		if gap < 0 {
			gap = -gap
		}
		if gap < bestGap {
			best, bestGap = in[i], gap
		}
	}
	return bytes.Clone(best)
}

// writeKey is the first key write req touches (nil: none), read from its
// encoded request without decoding it (no allocation).
func writeKey(req *shardpb.Request) []byte {
	switch op := req.GetOp().(type) {
	case *shardpb.Request_Put:
		return field(op.Put, 1) // PutRequest.key
	case *shardpb.Request_DeleteRange:
		return field(op.DeleteRange, 1) // DeleteRangeRequest.key
	case *shardpb.Request_Txn:
		return txnKey(op.Txn, 0)
	}
	return nil
}

// txnKey is the first key of an encoded TxnRequest: its first compare's
// (Compare.key, field 3), else its first op's in success (2), then
// failure (3). depth bounds nested txns.
func txnKey(b []byte, depth int) []byte {
	if depth > 4 {
		return nil
	}
	if c := field(b, 1); c != nil {
		if k := field(c, 3); k != nil {
			return k
		}
	}
	for _, branch := range []protowire.Number{2, 3} {
		op := field(b, branch)
		if op == nil {
			continue
		}
		// RequestOp: request_range 1, request_put 2, request_delete_range
		// 3 (each with key 1), request_txn 4.
		for _, n := range []protowire.Number{1, 2, 3} {
			if m := field(op, n); m != nil {
				return field(m, 1)
			}
		}
		if t := field(op, 4); t != nil {
			return txnKey(t, depth+1)
		}
	}
	return nil
}

// field is the first length-delimited field num of the encoded message b
// (a sub-slice of b), nil if there is none or b does not parse.
func field(b []byte, num protowire.Number) []byte {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return nil
			}
			if v == nil {
				v = []byte{}
			}
			return v
		}
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			return nil
		}
		b = b[l:]
	}
	return nil
}

// txnReadKey is the first key of a read-only txn, as txnKey.
func txnReadKey(req *pb.TxnRequest) []byte {
	if len(req.GetCompare()) > 0 {
		return req.Compare[0].GetKey()
	}
	for _, ops := range [][]*pb.RequestOp{req.GetSuccess(), req.GetFailure()} {
		if len(ops) == 0 {
			continue
		}
		switch op := ops[0].GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			return op.RequestRange.GetKey()
		case *pb.RequestOp_RequestPut:
			return op.RequestPut.GetKey()
		case *pb.RequestOp_RequestDeleteRange:
			return op.RequestDeleteRange.GetKey()
		case *pb.RequestOp_RequestTxn:
			return txnReadKey(op.RequestTxn)
		}
	}
	return nil
}
