package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// sameStatus reports whether err carries exactly want's gRPC code and message.
func sameStatus(err, want error) bool {
	g, w := status.Convert(err), status.Convert(want)
	return err != nil && g.Code() == w.Code() && g.Message() == w.Message()
}

// TestBadInput: each bad request gets etcd's code and message and changes
// nothing (same revision, same data).
func TestBadInput(t *testing.T) {
	c := nodetest.Start(t, 1).Client(0)
	kv := pb.NewKVClient(c.ActiveConnection())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 5; i++ {
		if _, err := c.Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Compact(ctx, 3); err != nil {
		t.Fatal(err)
	}
	snapshot := func() *pb.RangeResponse {
		t.Helper()
		r, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	before := snapshot()

	put := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("x")}}}
	}
	del := func(k, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte(end)}}}
	}
	many := make([]*pb.RequestOp, 129)
	for i := range many {
		many[i] = put(fmt.Sprintf("m%03d", i))
	}
	cases := []struct {
		name string
		call func() error
		want error
	}{
		{"put empty key", func() error { _, err := kv.Put(ctx, &pb.PutRequest{Value: []byte("v")}); return err }, rpctypes.ErrGRPCEmptyKey},
		{"range empty key", func() error { _, err := kv.Range(ctx, &pb.RangeRequest{}); return err }, rpctypes.ErrGRPCEmptyKey},
		{"delete empty key", func() error { _, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{}); return err }, rpctypes.ErrGRPCEmptyKey},
		{"oversized put", func() error {
			_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: make([]byte, 1536*1024+1)})
			return err
		}, rpctypes.ErrGRPCRequestTooLarge},
		{"too many ops", func() error { _, err := kv.Txn(ctx, &pb.TxnRequest{Success: many}); return err }, rpctypes.ErrGRPCTooManyOps},
		{"duplicate keys", func() error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("k1"), put("k1")}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"put inside deleted range", func() error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{del("k0", "k9"), put("k5")}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"range at compacted revision", func() error {
			_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("k1"), Revision: 2})
			return err
		}, rpctypes.ErrGRPCCompacted},
		{"range at future revision", func() error {
			_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("k1"), Revision: 1000})
			return err
		}, rpctypes.ErrGRPCFutureRev},
		{"compact compacted revision", func() error { _, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: 2}); return err }, rpctypes.ErrGRPCCompacted},
		{"compact future revision", func() error { _, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: 1000}); return err }, rpctypes.ErrGRPCFutureRev},
		{"txn range at future revision", func() error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("k1"), {Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k1"), Revision: 1000}}}}})
			return err
		}, rpctypes.ErrGRPCFutureRev},
		{"ignore_value on a missing key", func() error {
			_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})
			return err
		}, rpctypes.ErrGRPCKeyNotFound},
		{"value with ignore_value", func() error {
			_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k1"), Value: []byte("v"), IgnoreValue: true})
			return err
		}, rpctypes.ErrGRPCValueProvided},
		{"unknown lease", func() error { _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k1"), Lease: 42}); return err }, rpctypes.ErrGRPCLeaseNotFound},
		{"invalid sort order", func() error {
			_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("k1"), SortOrder: 7})
			return err
		}, rpctypes.ErrGRPCInvalidSortOption},
	}
	for _, tc := range cases {
		if err := tc.call(); !sameStatus(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	after := snapshot()
	if after.Header.Revision != before.Header.Revision || len(after.Kvs) != len(before.Kvs) {
		t.Fatalf("bad input changed the store: revision %d → %d, %d keys → %d",
			before.Header.Revision, after.Header.Revision, len(before.Kvs), len(after.Kvs))
	}
	for i := range after.Kvs {
		if string(after.Kvs[i].Key) != string(before.Kvs[i].Key) || after.Kvs[i].ModRevision != before.Kvs[i].ModRevision {
			t.Fatalf("bad input changed %q", after.Kvs[i].Key)
		}
	}
}

// TestRestartKeepsData: a cleanly closed node reopens with every key and
// its revision.
func TestRestartKeepsData(t *testing.T) {
	cl := nodetest.Start(t, 1)
	c := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last int64
	for i := 0; i < 50; i++ {
		r, err := c.Put(ctx, fmt.Sprintf("k%02d", i), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	c.Close()
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	cl.Restart(0)
	c = cl.Client(0)
	r, err := c.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 50 || r.Header.Revision != last {
		t.Fatalf("after restart: %d keys at revision %d, want 50 at %d", len(r.Kvs), r.Header.Revision, last)
	}
}

// TestStatusAndHealth: clients see an etcd version they accept, and /health
// answers as etcd's does.
func TestStatusAndHealth(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.Status(ctx, n.ClientURLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Version, "3.7.") || st.DbSize <= 0 || st.Leader == 0 || st.Leader != st.Header.MemberId {
		t.Fatalf("status = version %q db %d leader %x member %x", st.Version, st.DbSize, st.Leader, st.Header.MemberId)
	}
	ml, err := c.MemberList(ctx)
	if err != nil || len(ml.Members) != 1 || ml.Members[0].Name != "test" || ml.Members[0].ClientURLs[0] != n.ClientURLs()[0] {
		t.Fatalf("member list = %v, %v", ml, err)
	}
	resp, err := http.Get(n.ClientURLs()[0] + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"health":"true","reason":""}` {
		t.Fatalf("/health = %d %s", resp.StatusCode, body)
	}
}

// BenchmarkPut measures puts through the gRPC service with the real client,
// from as many concurrent clients as -cpu × GOMAXPROCS × 16 goroutines.
func BenchmarkPut(b *testing.B) {
	c := nodetest.Start(b, 1).Client(0)
	value := strings.Repeat("v", 256)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := c.Put(context.Background(), fmt.Sprintf("key-%d", i%10000), value); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRange measures single-key linearizable and serializable gets.
func BenchmarkRange(b *testing.B) {
	c := nodetest.Start(b, 1).Client(0)
	ctx := context.Background()
	for i := 0; i < 1000; i++ {
		if _, err := c.Put(ctx, fmt.Sprintf("key-%04d", i), "value"); err != nil {
			b.Fatal(err)
		}
	}
	for _, mode := range []struct {
		name string
		opts []clientv3.OpOption
	}{{"linearizable", nil}, {"serializable", []clientv3.OpOption{clientv3.WithSerializable()}}} {
		b.Run(mode.name, func(b *testing.B) {
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, err := c.Get(ctx, fmt.Sprintf("key-%04d", i%1000), mode.opts...); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// TestDebugEndpoints: /debug/vars (expvar, with memory statistics) is always
// served on the client URL, as etcd serves it; /debug/pprof/ only with
// EnablePprof (etcd's --enable-pprof).
func TestDebugEndpoints(t *testing.T) {
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	plain := nodetest.Start(t, 1).Node(0)
	if code, body := get(plain.ClientURLs()[0] + "/debug/vars"); code != 200 || !strings.Contains(body, `"memstats"`) {
		t.Fatalf("/debug/vars = %d %.200s", code, body)
	}
	if code, _ := get(plain.ClientURLs()[0] + "/debug/pprof/"); code != 404 {
		t.Fatalf("/debug/pprof/ without EnablePprof = %d, want 404", code)
	}
	n := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.Name, c.EnablePprof = "pprof", true })).Node(0)
	if code, body := get(n.ClientURLs()[0] + "/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Fatalf("/debug/pprof/heap = %d %.200s", code, body)
	}
}

// TestDebugJournal: with DebugJournal every applied entry is appended to
// the file; the acknowledged puts are there, in order, once restarts are
// deduplicated by raft index.
func TestDebugJournal(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "journal")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.Name, c.DebugJournal = "j", journal }))
	c := cl.Client(0)
	for i := 0; i < 5; i++ {
		if _, err := c.Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	_ = cl.Stop(0)
	cl.Restart(0)
	c = cl.Client(0)
	if _, err := c.Put(ctx, "k5", "v"); err != nil {
		t.Fatal(err)
	}
	_ = cl.Stop(0)
	f, err := os.Open(journal)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[uint64]bool{}
	var keys []string
	last := uint64(0)
	err = shard.ReadJournal(f, func(index uint64, cmd *shardpb.Command) error {
		if seen[index] {
			return nil
		}
		if index <= last {
			return fmt.Errorf("index %d after %d", index, last)
		}
		seen[index], last = true, index
		for _, r := range cmd.Requests {
			if p := r.GetPut(); p != nil {
				var put pb.PutRequest
				if err := proto.Unmarshal(p, &put); err != nil {
					return err
				}
				keys = append(keys, string(put.Key))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"k0", "k1", "k2", "k3", "k4", "k5"}; !slices.Equal(keys, want) {
		t.Fatalf("journal puts %v, want %v", keys, want)
	}
}
