package watch

import (
	"context"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// BenchmarkOneRangeStream: a client stream of 10 watches over one range,
// each write notified and its response taken, through a hub stream and
// through a merged stream (direct over one range, as single-group mode's):
// what single-group watches pay for taking sharded mode's path.
func BenchmarkOneRangeStream(b *testing.B) {
	type stream interface {
		Create(*pb.WatchCreateRequest) *pb.WatchResponse
		Next(context.Context) ([]*pb.WatchResponse, error)
		Close()
	}
	for _, kind := range []string{"hub", "merged"} {
		b.Run(kind, func(b *testing.B) {
			h := NewHub(1)
			var s stream = h.NewStream(128)
			if kind == "merged" {
				s = NewMerger().NewStream(128, func(key, end []byte) []Part {
					return []Part{{Hub: h, Key: key, RangeEnd: end}}
				})
			}
			defer s.Close()
			ctx := context.Background()
			keys := make([][]byte, 10)
			for i := range keys {
				keys[i] = []byte(fmt.Sprintf("k%d", i))
				s.Create(&pb.WatchCreateRequest{Key: keys[i]})
			}
			if _, err := s.Next(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rev := mvcc.Revision(i + 2)
				h.Notify(rev, []*mvccpb.Event{{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: keys[i%len(keys)], ModRevision: int64(rev)}}})
				if _, err := s.Next(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
