package router

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
)

func memStore(t *testing.T, span mvcc.Span) *mvcc.Store {
	t.Helper()
	db, err := pebble.Open("db", mvcc.PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := mvcc.Open(db, mvcc.Options{ID: 1, Span: span})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{})  {}
func (quietLogger) Errorf(string, ...interface{}) {}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf(format, args...))
}

func TestClipRange(t *testing.T) {
	for _, c := range []struct {
		key, end, start, spanEnd string
		nilSpanEnd               bool
		lo, hi                   string
		ok                       bool
	}{
		{key: "b", start: "a", spanEnd: "c", lo: "b", ok: true},
		{key: "c", start: "a", spanEnd: "c"},
		{key: "a", end: "z", start: "c", spanEnd: "h", lo: "c", hi: "h", ok: true},
		{key: "d", end: "f", start: "c", spanEnd: "h", lo: "d", hi: "f", ok: true},
		{key: "a", end: "c", start: "c", spanEnd: "h"},
		{key: "h", end: "z", start: "c", spanEnd: "h"},
		{key: "a", end: "\x00", start: "c", spanEnd: "h", lo: "c", hi: "h", ok: true},
		{key: "a", end: "\x00", start: "p", nilSpanEnd: true, lo: "p", hi: "\x00", ok: true},
		{key: "q", end: "r", start: "p", nilSpanEnd: true, lo: "q", hi: "r", ok: true},
		{key: "\x00", end: "\x00", start: "", spanEnd: "c", lo: "\x00", hi: "c", ok: true},
	} {
		var end []byte
		if !c.nilSpanEnd {
			end = []byte(c.spanEnd)
		}
		var re []byte
		if c.end != "" {
			re = []byte(c.end)
		}
		lo, hi, ok := clipRange([]byte(c.key), re, []byte(c.start), end)
		if ok != c.ok || (ok && (string(lo) != c.lo || string(hi) != c.hi)) {
			t.Errorf("clip [%q,%q) to [%q,%q): %q %q %v, want %q %q %v", c.key, c.end, c.start, c.spanEnd, lo, hi, ok, c.lo, c.hi, c.ok)
		}
	}
}

// TestMergeRangeModel: the same writes go to one store holding every key
// and to four stores splitting the key space; every random Range answered
// by merging the four stores' answers to partRange must equal the single
// store's answer (which the differential tests hold equal to etcd's).
func TestMergeRangeModel(t *testing.T) {
	splits := [][]byte{nil, []byte("c"), []byte("h"), []byte("p")}
	for seed := int64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewSource(seed))
		whole := memStore(t, mvcc.Span{})
		var parts []*mvcc.Store
		var spans []mvcc.Span
		for i, s := range splits {
			sp := mvcc.Span{Start: s}
			if i+1 < len(splits) {
				sp.End = splits[i+1]
			}
			spans = append(spans, sp)
			parts = append(parts, memStore(t, sp))
		}
		key := func() []byte { return []byte{byte('a' + r.Intn(20)), byte('a' + r.Intn(3))} }
		stamp := mvcc.Revision(1)
		for i := 0; i < 150; i++ {
			stamp++
			k := key()
			put := &pb.PutRequest{Key: k, Value: []byte(fmt.Sprintf("v%d", r.Intn(5)))}
			stores := []*mvcc.Store{whole}
			for j, sp := range spans {
				if sp.Contains(k) {
					stores = append(stores, parts[j])
				}
			}
			del := r.Intn(6) == 0
			for _, s := range stores {
				b := s.NewBatch()
				var err error
				if del {
					_, err = b.DeleteRange(&pb.DeleteRangeRequest{Key: k}, stamp)
				} else {
					_, err = b.Put(put, stamp)
				}
				if err == nil {
					err = b.Commit()
				}
				b.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		minRev := whole.Rev()
		for _, p := range parts {
			minRev = min(minRev, p.Rev())
		}

		for q := 0; q < 300; q++ {
			req := &pb.RangeRequest{Key: key()}
			switch r.Intn(4) {
			case 0: // one key
			case 1:
				req.RangeEnd = []byte{0}
			default:
				req.RangeEnd = key()
				if string(req.RangeEnd) <= string(req.Key) {
					req.Key, req.RangeEnd = []byte("a"), []byte("t")
				}
			}
			if r.Intn(2) == 0 {
				req.Limit = int64(r.Intn(6))
			}
			req.SortOrder = pb.RangeRequest_SortOrder(r.Intn(3))
			req.SortTarget = pb.RangeRequest_SortTarget(r.Intn(5))
			req.KeysOnly = r.Intn(4) == 0
			req.CountOnly = r.Intn(8) == 0
			if r.Intn(4) == 0 {
				req.MinModRevision = int64(r.Intn(int(minRev)))
			}
			if r.Intn(4) == 0 {
				req.MaxCreateRevision = int64(r.Intn(int(minRev)))
			}
			partRev := int64(0)
			if r.Intn(3) == 0 {
				req.Revision = 1 + int64(r.Intn(int(minRev)))
				partRev = req.Revision
			}
			want, err := whole.Range(req)
			if err != nil {
				t.Fatal(err)
			}
			var answers []*pb.RangeResponse
			for j, sp := range spans {
				p := partRange(req, sp.Start, sp.End, partRev)
				if p == nil {
					continue
				}
				a, err := parts[j].Range(p)
				if err != nil {
					t.Fatalf("seed %d: part %d refused %v: %v", seed, j, p, err)
				}
				answers = append(answers, a)
			}
			got := mergeRange(req, answers, want.Header.Revision)
			if !proto.Equal(got, want) {
				t.Fatalf("seed %d: %v\nmerged: %v\nwhole:  %v", seed, req, got, want)
			}
		}
	}
}
