package shard

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

func sampleKeys(ks ...string) [][]byte {
	out := make([][]byte, len(ks))
	for i, k := range ks {
		out[i] = []byte(k)
	}
	return out
}

// TestKeySampleBoundedAndUniform: the sample keeps at most sampleSize
// keys, a key's share of the sample follows its share of the requests,
// and a take starts the next window empty.
func TestKeySampleBoundedAndUniform(t *testing.T) {
	s := newKeySample(1)
	if got := s.take(); len(got) != 0 {
		t.Fatalf("empty sample: %q", got)
	}
	for i := range 10 {
		s.add([]byte(fmt.Sprintf("k%d", i)))
	}
	s.add(nil) // not sampled
	if got := s.take(); !slices.EqualFunc(got, sampleKeys("k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"), bytes.Equal) {
		t.Fatalf("under sampleSize every key is kept, sorted: %q", got)
	}

	// 3 of 4 requests touch "hot", the rest spread over 1000 cold keys,
	// over many windows: "hot" holds about 3/4 of each sample.
	var hot, total int
	for w := range 20 {
		for i := range 4000 {
			if i%4 == 3 {
				s.add([]byte(fmt.Sprintf("cold/%03d", (w*1000+i)%1000)))
			} else {
				s.add([]byte("hot"))
			}
		}
		got := s.take()
		if len(got) != sampleSize {
			t.Fatalf("window %d: %d keys sampled, want %d", w, len(got), sampleSize)
		}
		if !slices.IsSortedFunc(got, bytes.Compare) {
			t.Fatalf("window %d: sample not sorted", w)
		}
		for _, k := range got {
			if string(k) == "hot" {
				hot++
			}
		}
		total += len(got)
	}
	if share := float64(hot) / float64(total); share < 0.70 || share > 0.80 {
		t.Fatalf("hot key's share of the samples: %.3f, want about 0.75", share)
	}
}

// TestKeySampleAddAllocatesNothing: once the sample is full, offering a
// key no longer than the ones kept allocates nothing.
func TestKeySampleAddAllocatesNothing(t *testing.T) {
	s := newKeySample(2)
	key := []byte("key/0000")
	for range sampleSize {
		s.add(key)
	}
	if a := testing.AllocsPerRun(1000, func() { s.add(key) }); a != 0 {
		t.Fatalf("add allocates %.1f times a call", a)
	}
	req := &shardpb.Request{Op: &shardpb.Request_Put{Put: mustMarshal(t, &pb.PutRequest{Key: key, Value: []byte("v")})}}
	if a := testing.AllocsPerRun(1000, func() { s.add(writeKey(req)) }); a != 0 {
		t.Fatalf("sampling a put allocates %.1f times a call", a)
	}
}

func TestLoadKey(t *testing.T) {
	for _, tc := range []struct {
		sample     [][]byte
		start, end string
		want       string // "": nil
	}{
		{sampleKeys(), "", "", ""},
		{sampleKeys("a"), "", "", ""},
		{sampleKeys("a", "a", "a", "a"), "", "", ""}, // one key: cannot divide
		{sampleKeys("a", "b"), "", "", "b"},
		{sampleKeys("a", "b", "c", "d"), "", "", "c"},
		{sampleKeys("a", "b", "b", "b", "c", "d"), "", "", "c"}, // 3 before c, 3 from it
		{sampleKeys("a", "a", "a", "a", "b"), "", "", "b"},      // the only key that divides
		// Only the keys on the span count; the key lies strictly inside.
		{sampleKeys("a", "m", "n", "o", "z"), "m", "z", "n"},
		{sampleKeys("a", "m", "m", "m", "n"), "m", "", "n"},
		{sampleKeys("a", "b", "c", "x", "y"), "x", "", "y"},
		{sampleKeys("a", "b", "c", "x", "y"), "c", "y", "x"},
		{sampleKeys("a", "b", "c"), "d", "", ""},
		// The sample's skew, not its keys' spread: 6 requests on hot/…,
		// 2 on cold keys.
		{sampleKeys("a", "hot/1", "hot/2", "hot/3", "hot/4", "hot/5", "hot/6", "z"), "", "", "hot/4"},
	} {
		got := LoadKey(tc.sample, []byte(tc.start), []byte(tc.end))
		if (got == nil) != (tc.want == "") || string(got) != tc.want {
			t.Errorf("LoadKey(%q, [%q, %q)) = %q, want %q", tc.sample, tc.start, tc.end, got, tc.want)
		}
	}
}

// TestRequestKeys: the key a request is sampled by, read from its
// encoding.
func TestRequestKeys(t *testing.T) {
	put := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k)}}}
	}
	rng := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k)}}}
	}
	txns := []struct {
		txn  *pb.TxnRequest
		want string
	}{
		{&pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("c")}}, Success: []*pb.RequestOp{put("s")}}, "c"},
		{&pb.TxnRequest{Success: []*pb.RequestOp{put("s"), put("t")}, Failure: []*pb.RequestOp{put("f")}}, "s"},
		{&pb.TxnRequest{Failure: []*pb.RequestOp{rng("f")}}, "f"},
		{&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{put("n")}}}}}}, "n"},
		{&pb.TxnRequest{}, ""},
	}
	for _, tc := range txns {
		req := &shardpb.Request{Op: &shardpb.Request_Txn{Txn: mustMarshal(t, tc.txn)}}
		if got := writeKey(req); string(got) != tc.want {
			t.Errorf("writeKey(txn %v) = %q, want %q", tc.txn, got, tc.want)
		}
		if got := txnReadKey(tc.txn); string(got) != tc.want {
			t.Errorf("txnReadKey(%v) = %q, want %q", tc.txn, got, tc.want)
		}
	}
	for _, tc := range []struct {
		req  *shardpb.Request
		want string
	}{
		{&shardpb.Request{Stamp: 7, Op: &shardpb.Request_Put{Put: mustMarshal(t, &pb.PutRequest{Key: []byte("p"), Value: []byte("v"), Lease: 3})}}, "p"},
		{&shardpb.Request{Op: &shardpb.Request_DeleteRange{DeleteRange: mustMarshal(t, &pb.DeleteRangeRequest{Key: []byte("d"), RangeEnd: []byte("e")})}}, "d"},
		{&shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: mustMarshal(t, &pb.CompactionRequest{Revision: 4})}}, ""},
		{&shardpb.Request{Op: &shardpb.Request_Put{Put: []byte{0xff, 0xff}}}, ""}, // does not parse
	} {
		if got := writeKey(tc.req); string(got) != tc.want {
			t.Errorf("writeKey(%v) = %q, want %q", tc.req, got, tc.want)
		}
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
