package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// shardedModel is what a single group would hold after the same puts and
// deletes: the live key-values by key.
type shardedModel map[string]*mvccpb.KeyValue

func (m shardedModel) put(key, value string, rev int64) {
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), ModRevision: rev, CreateRevision: rev, Version: 1}
	if old := m[key]; old != nil {
		kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
	}
	m[key] = kv
}

// answer is etcd's answer to a range over [key, end) of the model, sorted
// as asked, cut to limit.
func (m shardedModel) answer(key, end string, limit int64, byMod bool, descend bool) (kvs []*mvccpb.KeyValue, count int64) {
	for k, kv := range m {
		if k >= key && (end == "\x00" || k < end) {
			kvs = append(kvs, kv)
		}
	}
	slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int {
		c := strings.Compare(string(a.Key), string(b.Key))
		if byMod {
			c = int(a.ModRevision - b.ModRevision)
		}
		if descend {
			c = -c
		}
		return c
	})
	count = int64(len(kvs))
	if limit > 0 && int64(len(kvs)) > limit {
		kvs = kvs[:limit]
	}
	return kvs, count
}

// TestShardedKV: on a node whose key space is four ranges, writes in every
// range get unique, increasing revisions; a range over several ranges is
// one snapshot answered as a single group would (sort, limit, count, more,
// an older revision); writes across ranges, with --cross-range-writes=false,
// are refused and change nothing (txn_cross_test.go runs them, the
// default); compaction reaches every range; and all of it survives a
// restart.
func TestShardedKV(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("c", "h", "p"),
		nodetest.Edit(func(c *node.Config) { c.RefuseCrossRangeWrites = true }))
	cli := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	model := shardedModel{}
	rng := rand.New(rand.NewPCG(1, 2))
	var last int64
	var mid int64
	var midModel shardedModel
	for i := range 120 {
		key := fmt.Sprintf("%c%d", 'a'+rng.IntN(20), rng.IntN(4))
		resp, err := cli.Put(ctx, key, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev := resp.Header.Revision
		if rev <= last {
			t.Fatalf("put %d (%s) at revision %d, after one at %d", i, key, rev, last)
		}
		last = rev
		model.put(key, fmt.Sprint(i), rev)
		if i == 60 {
			mid, midModel = rev, shardedModel{}
			for k, v := range model {
				midModel[k] = v
			}
		}
	}

	check := func(m shardedModel, at int64, key, end string, limit int64, byMod, descend bool) {
		t.Helper()
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit), clientv3.WithRev(at)}
		target, order := clientv3.SortByKey, clientv3.SortAscend
		if byMod {
			target = clientv3.SortByModRevision
		}
		if descend {
			order = clientv3.SortDescend
		}
		if byMod || descend {
			opts = append(opts, clientv3.WithSort(target, order))
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			t.Fatalf("get [%q, %q) at %d: %v", key, end, at, err)
		}
		want, count := m.answer(key, end, limit, byMod, descend)
		if resp.Count != count || len(resp.Kvs) != len(want) || resp.More != (int64(len(want)) < count) {
			t.Fatalf("get [%q, %q) at %d limit %d: count %d, %d kvs, more %v; want count %d, %d kvs",
				key, end, at, limit, resp.Count, len(resp.Kvs), resp.More, count, len(want))
		}
		for i, kv := range resp.Kvs {
			w := want[i]
			if string(kv.Key) != string(w.Key) || string(kv.Value) != string(w.Value) || kv.ModRevision != w.ModRevision ||
				kv.CreateRevision != w.CreateRevision || kv.Version != w.Version {
				t.Fatalf("get [%q, %q) at %d: kv %d is %v, want %v", key, end, at, i, kv, w)
			}
		}
		// A read over several ranges is a snapshot at a fresh revision;
		// one range's answer carries that range's revision.
		if multi := strings.Compare(key, "c") < 0 && (end == "\x00" || end > "c"); at == 0 && multi && resp.Header.Revision < last {
			t.Fatalf("header revision %d below the last write %d", resp.Header.Revision, last)
		}
	}
	for _, c := range []struct {
		key, end       string
		limit          int64
		byMod, descend bool
	}{
		{"\x00", "\x00", 0, false, false},
		{"a", "z", 7, false, false},
		{"b", "q", 5, true, true},
		{"d", "g", 0, false, true}, // one range
		{"g", "i", 3, true, false},
		{"c", "h", 0, false, false}, // exactly one range's span
	} {
		check(model, 0, c.key, c.end, c.limit, c.byMod, c.descend)
		check(midModel, mid, c.key, c.end, c.limit, c.byMod, c.descend)
	}

	// Writes across ranges are refused and change nothing.
	if _, err := cli.Delete(ctx, "a", clientv3.WithRange("z")); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "spans ranges") {
		t.Fatalf("delete across ranges: %v", err)
	}
	txn := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("a0"), ">", 0)).Then(clientv3.OpPut("z0", "x"))
	if _, err := txn.Commit(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("txn across ranges: %v", err)
	}
	check(model, 0, "\x00", "\x00", 0, false, false)
	// Within one range they are served.
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision("d9"), "=", 0)).
		Then(clientv3.OpPut("d9", "new"), clientv3.OpGet("e", clientv3.WithPrefix())).Commit()
	if err != nil || !tr.Succeeded {
		t.Fatalf("txn in one range: %v %v", tr, err)
	}
	model.put("d9", "new", tr.Header.Revision)
	dr, err := cli.Delete(ctx, "h", clientv3.WithRange("i"))
	if err != nil {
		t.Fatal(err)
	}
	var gone int64
	for k := range model {
		if k >= "h" && k < "i" {
			delete(model, k)
			gone++
		}
	}
	if dr.Deleted != gone {
		t.Fatalf("deleted %d keys in [h, i), want %d", dr.Deleted, gone)
	}
	last = dr.Header.Revision
	check(model, 0, "\x00", "\x00", 0, false, false)

	// A future revision is refused; compaction reaches every range.
	now, err := cli.Get(ctx, "a0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "a", clientv3.WithRange("z"), clientv3.WithRev(now.Header.Revision+1000)); err == nil ||
		err.Error() != rpctypes.ErrFutureRev.Error() {
		t.Fatalf("get at a future revision: %v", err)
	}
	if _, err := cli.Compact(ctx, mid); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "d", "i", "q"} {
		if _, err := cli.Get(ctx, k, clientv3.WithPrefix(), clientv3.WithRev(mid-1)); err == nil ||
			err.Error() != rpctypes.ErrCompacted.Error() {
			t.Fatalf("get %q at %d after compaction at %d: %v", k, mid-1, mid, err)
		}
	}
	check(midModel, mid, "\x00", "\x00", 0, false, false)

	// A restart keeps everything, and revisions go on above.
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	cl.RestartWith(0, func(c *node.Config) { c.InitialSplitKeys = [][]byte{[]byte("ignored")} })
	cli = cl.Client(0)
	check(model, 0, "\x00", "\x00", 0, false, false)
	resp, err := cli.Put(ctx, "q1", "after")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision <= last {
		t.Fatalf("put after restart at %d, not above %d", resp.Header.Revision, last)
	}
}

// TestShardedIdleRangesClose: the closed revision of ranges nobody writes
// to keeps rising to the writes elsewhere (the side channel) — to the
// oracle's current value, which closing does not move — and an idle
// range's raft log does not grow while it does.
func TestShardedIdleRangesClose(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"))
	n, cli := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last int64
	for i := range 3 {
		resp, err := cli.Put(ctx, fmt.Sprint("a", i), "v") // range 1 only
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	// Range 2 is idle: it closes at range 1's writes...
	waitClosed := func(at int64) {
		t.Helper()
		nodetest.WaitFor(ctx, t, func() error {
			if closed := int64(n.Closed(2)); closed < at {
				return fmt.Errorf("range 2 closed at %d, short of %d", closed, at)
			}
			return nil
		})
	}
	waitClosed(last)
	before, err := n.AppliedIndex(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	// ...and keeps closing, as the oracle moves on with writes, without
	// log writes.
	for range 5 {
		resp, err := cli.Put(ctx, "a", "v")
		if err != nil {
			t.Fatal(err)
		}
		waitClosed(resp.Header.Revision)
	}
	// Closing moved no revision: the next write takes the one after.
	resp, err := cli.Put(ctx, "a", "v")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := resp.Header.Revision, int64(n.Closed(2))+1; got != want {
		t.Fatalf("a write after idle closing at %d took revision %d, want %d", want-1, got, want)
	}
	after, err := n.AppliedIndex(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("idle range 2 applied entries %d..%d while it closed", before, after)
	}
}

// TestShardedRangesEndpoint: /cairn/ranges lists the ranges in key order
// with their spans, leader and the writes routed to each.
func TestShardedRangesEndpoint(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("b", "m"))
	n, cli := cl.Node(0), cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range []string{"c", "d", "x"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Get(n.ClientURLs()[0] + "/cairn/ranges")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []node.RangeInfo
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		start, end string
		writes     uint64
	}{{"", "b", 0}, {"b", "m", 2}, {"m", "", 1}}
	if len(got) != len(want) {
		t.Fatalf("ranges %+v", got)
	}
	for i, w := range want {
		g := got[i]
		if g.ID != uint64(i+1) || g.Start != w.start || g.End != w.end || g.Writes != w.writes || g.Keys != int64(w.writes) ||
			g.Leader == 0 || len(g.Replicas) != 1 {
			t.Errorf("range %d: %+v, want [%q, %q) with %d writes and keys and a leader", i+1, g, w.start, w.end, w.writes)
		}
	}
	// The picture of the same map.
	page, err := http.Get(n.ClientURLs()[0] + "/cairn/ranges.html")
	if err != nil {
		t.Fatal(err)
	}
	defer page.Body.Close()
	body, _ := io.ReadAll(page.Body)
	if page.StatusCode != http.StatusOK || !strings.Contains(string(body), "3 ranges") || !strings.Contains(string(body), `title="range 2 [&#34;b&#34;, &#34;m&#34;)"`) {
		t.Fatalf("range map page: %s\n%s", page.Status, body)
	}
}
