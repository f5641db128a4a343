package node_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// TestShardedMergeSimple: one member (and three), one range split at "m",
// then the two merged again, while clients write over both and a watch
// runs. No
// client sees an error; the watch sees every write once, in revision
// order; reads equal what was written; the map has one range again, and
// the member keeps nothing of the right range but its keys (now the left
// range's): no replica, record, raft data, store or lessor records.
func TestShardedMergeSimple(t *testing.T) {
	for _, size := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d-members", size), func(t *testing.T) { mergeSimple(t, size) })
	}
}

// mergeSimple is TestShardedMergeSimple on size members (the merge asked
// of the first, forwarded to the placement leader's member), with a lease
// kept alive whose keys lie in both ranges: they stay while it lives and
// all go when it is revoked after the merge.
func mergeSimple(t *testing.T, size int) {
	cl := nodetest.Start(t, size, nodetest.Sharded())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n, cli := cl.Node(0), cl.Client(0)
	gr, err := cl.Client(size-1).Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	ka, err := cl.Client(size-1).KeepAlive(ctx, gr.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	var from int64
	for _, k := range []string{"lease-a", "~lease-z"} {
		resp, err := cli.Put(ctx, k, "v", clientv3.WithLease(gr.ID))
		if err != nil {
			t.Fatal(err)
		}
		from = resp.Header.Revision + 1
	}
	watch := cli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(from))

	type write struct {
		key, val string
		rev      int64
	}
	var mu sync.Mutex
	var writes []write
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(writes)
	}
	waitWrites := func(n int) {
		nodetest.WaitFor(ctx, t, func() error {
			if count() >= n || t.Failed() {
				return nil
			}
			return errors.New("writes stalled")
		})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 2))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%c%c", 'a'+rnd.IntN(26), 'a'+rnd.IntN(26))
				if rnd.IntN(8) == 0 {
					if _, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
						t.Errorf("read over every range: %v", err)
						return
					}
					continue
				}
				val := fmt.Sprint(w, "-", i)
				resp, err := cli.Put(ctx, key, val)
				if err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				mu.Lock()
				writes = append(writes, write{key, val, resp.Header.Revision})
				mu.Unlock()
			}
		})
	}
	waitWrites(30)
	split, err := cl.Node(size-1).SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatalf("split at m: %v", err)
	}
	right := split[1]
	waitWrites(count() + 30)
	// Asked of a member that does not lead the placement group (if there
	// is one): forwarded to the one that does.
	asked := n
	for _, m := range cl.Nodes() {
		if m.PlacementLeader() != m.MemberID() {
			asked = m
		}
	}
	merged, err := asked.MergeLeft(ctx, split[0].Id)
	if err != nil {
		t.Fatalf("merge r%d into r%d: %v", right.Id, split[0].Id, err)
	}
	if len(merged.End) != 0 || merged.Generation <= max(split[0].Generation, right.Generation) {
		t.Fatalf("merged range %v, want [%q, ∞) above generation %d", merged, merged.Start, max(split[0].Generation, right.Generation))
	}
	waitWrites(count() + 30)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	ranges, err := n.RangeMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ranges) != 1 || ranges[0].Id != split[0].Id {
		t.Fatalf("the map after the merge: %v", ranges)
	}

	slices.SortFunc(writes, func(a, b write) int { return int(a.rev - b.rev) })
	last := writes[len(writes)-1].rev
	var seen []int64
	for len(seen) == 0 || seen[len(seen)-1] < last {
		select {
		case <-ctx.Done():
			t.Fatalf("the watch saw %d of %d writes", len(seen), len(writes))
		case wr := <-watch:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					t.Fatalf("unexpected event %v", ev)
				}
				seen = append(seen, ev.Kv.ModRevision)
			}
		}
	}
	var want []int64
	for _, w := range writes {
		want = append(want, w.rev)
	}
	if !slices.Equal(seen, want) {
		d := firstDiff(seen, want)
		t.Fatalf("the watch saw %d events, want %d (first difference at %d: saw %v, want %v)", len(seen), len(want), d,
			seen[max(0, d-2):min(len(seen), d+3)], want[max(0, d-2):min(len(want), d+3)])
	}
	model := map[string]string{"lease-a": "v", "~lease-z": "v"}
	for _, w := range writes {
		model[w.key] = w.val
	}
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	if fmt.Sprint(got) != fmt.Sprint(model) {
		t.Fatalf("reads %d keys, the model has %d:\n%v\n%v", len(got), len(model), got, model)
	}
	// The lease's keys, one from each range, go with it.
	if _, err := cl.Client(size-1).Revoke(ctx, gr.ID); err != nil {
		t.Fatal(err)
	}
	for i := range size {
		for _, k := range []string{"lease-a", "~lease-z"} {
			if resp, err := cl.Client(i).Get(ctx, k); err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("member %d: %s after its lease's revoke: %v (%v)", i, k, resp, err)
			}
		}
	}
	// Writes go on to both halves after the merge.
	for _, k := range []string{"a-after", "z-after"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatalf("put %s after the merge: %v", k, err)
		}
	}
	for _, n := range cl.Nodes() {
		mergedLeftNothing(t, n, right)
	}
	t.Logf("%d writes, up to revision %d; r%d merged into r%d g%d", len(writes), last, right.Id, merged.Id, merged.Generation)
}

// mergedLeftNothing waits until member n keeps nothing of right, a range
// merged away, but its keys (the absorbing range's now): no replica, no
// replica record, no raft data, no store or lessor records.
func mergedLeftNothing(t *testing.T, n *node.Node, right *placementpb.RangeDescriptor) {
	t.Helper()
	rid, ok := placement.ReplicaOf(right, placement.NodeID(n.MemberID()))
	if !ok {
		t.Fatalf("range %d's descriptor %v does not name member %x", right.Id, placement.Pairs(right), n.MemberID())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodetest.WaitFor(ctx, t, func() error {
		what := fmt.Sprintf("member %x, merged range %d (replica %d)", n.MemberID(), right.Id, rid)
		if r, runs := n.LocalReplicas()[right.Id]; runs {
			return fmt.Errorf("%s: runs replica %d", what, r)
		}
		recs, err := n.ReplicaRecords()
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if uint64(rec.Range) == right.Id {
				return fmt.Errorf("%s: record %+v", what, rec)
			}
		}
		if boot, snaps, err := n.RaftData(right.Id, uint64(rid)); err != nil || boot || len(snaps) != 0 {
			return fmt.Errorf("%s: raft data: bootstrap %v, snapshots %v (%v)", what, boot, snaps, err)
		}
		kinds, err := n.RangeData(right)
		if err != nil {
			return err
		}
		if kinds['m'] != 0 || kinds['l'] != 0 || kinds['r'] != 0 {
			return fmt.Errorf("%s: pebble holds %s of it", what, fmtKinds(kinds))
		}
		return nil
	})
}

// splitAtM splits cl's key space at "m" and moves the leadership of both
// halves to the member lead picks from li, the index of the placement
// leader's member (the merge driver's); it returns the halves, li and
// that member's index.
func splitAtM(ctx context.Context, t *testing.T, cl *nodetest.Cluster, lead func(li int) int) (left, right *placementpb.RangeDescriptor, li, at int) {
	t.Helper()
	split, err := cl.Node(0).SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatalf("split at m: %v", err)
	}
	nodetest.WaitFor(ctx, t, func() error {
		id := cl.Node(0).PlacementLeader()
		if id == 0 {
			return errors.New("no placement leader")
		}
		li = cl.MemberIndex(id)
		return nil
	})
	at = lead(li)
	for _, d := range split {
		nodetest.WaitFor(ctx, t, func() error {
			return cl.Node(at).TransferRangeLeader(ctx, shard.RangeID(d.Id), placement.NodeID(cl.Node(at).MemberID()))
		})
	}
	return split[0], split[1], li, at
}

// TestShardedMergeCutShort: three members; a merge stopped right after a
// step, as a crash of the placement leader's member there would stop it,
// and that member restarted, is finished by the next placement leader
// (MergeDriver.Resume); a writer running throughout through another
// member sees no error, every key reads as last written, both halves
// take writes, and no member keeps anything of the merged range but its
// keys.
func TestShardedMergeCutShort(t *testing.T) {
	for _, step := range []string{"begun", "frozen", "frozen-recorded", "committed", "recorded"} {
		t.Run(step, func(t *testing.T) {
			cl := nodetest.Start(t, 3, nodetest.Sharded())
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			// The ranges led elsewhere than on the member stopped: a write
			// in flight at a leader that stops has an unknown outcome, a
			// client error merges have nothing to do with.
			left, right, li, wi := splitAtM(ctx, t, cl, func(li int) int { return (li + 1) % cl.Size() })
			cli := cl.Client(wi)

			var mu sync.Mutex
			model := map[string]string{}
			writes := 0
			count := func() int {
				mu.Lock()
				defer mu.Unlock()
				return writes
			}
			waitWrites := func(n int) {
				nodetest.WaitFor(ctx, t, func() error {
					if count() >= n || t.Failed() {
						return nil
					}
					return errors.New("writes stalled")
				})
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					key := fmt.Sprintf("%c%02d", "az"[i%2], i%40)
					val := fmt.Sprint(i)
					if _, err := cli.Put(ctx, key, val); err != nil {
						t.Errorf("put %s: %v", key, err)
						return
					}
					mu.Lock()
					model[key] = val
					writes++
					mu.Unlock()
				}
			})
			waitWrites(20)
			restore := cl.Node(li).CutMergesShort(step)
			_, err := cl.Node(li).MergeLeft(ctx, left.Id)
			restore()
			if !errors.Is(err, placement.ErrCrashed) {
				t.Fatalf("merge cut short after %s: %v", step, err)
			}
			cl.Restart(li)
			nodetest.WaitFor(ctx, t, func() error {
				if t.Failed() {
					return nil
				}
				n := cl.Node((li + 1) % cl.Size())
				open, err := n.OpenMerges(ctx)
				if err != nil {
					return err
				}
				if len(open) != 0 {
					return fmt.Errorf("merges open: %v", open)
				}
				ranges, err := n.RangeMap(ctx)
				if err != nil {
					return err
				}
				if len(ranges) != 1 {
					return fmt.Errorf("ranges: %v", ranges)
				}
				return nil
			})
			waitWrites(count() + 20)
			close(stop)
			wg.Wait()
			if t.Failed() {
				return
			}
			for i := range cl.Size() {
				resp, err := cl.Client(i).Get(ctx, "", clientv3.WithPrefix())
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]string{}
				for _, kv := range resp.Kvs {
					got[string(kv.Key)] = string(kv.Value)
				}
				if fmt.Sprint(got) != fmt.Sprint(model) {
					t.Fatalf("member %d reads %v, the writes were %v", i, got, model)
				}
			}
			for i := range cl.Size() {
				for _, k := range []string{"a-after", "z-after"} {
					if _, err := cl.Client(i).Put(ctx, k, fmt.Sprint(i)); err != nil {
						t.Fatalf("member %d: put %s after the merge: %v", i, k, err)
					}
				}
			}
			for _, n := range cl.Nodes() {
				mergedLeftNothing(t, n, right)
			}
		})
	}
}

// TestShardedMergeMemberDown: three members; a member holding both
// ranges stops once the right range froze: the merge is undone after the
// driver's patience (the stopped replica never applies the freeze), and
// the right range serves again; the member back, a merge again succeeds
// and no member keeps anything of the merged range but its keys.
func TestShardedMergeMemberDown(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// Both ranges led by the driver's member: they keep their leader.
	left, right, li, _ := splitAtM(ctx, t, cl, func(li int) int { return li })
	down := (li + 1) % cl.Size()
	cli := cl.Client(li)
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}
	reached, release := cl.Node(li).HoldMergesAt("frozen")
	defer release()
	done := make(chan error, 1)
	go func() {
		_, err := cl.Node(li).MergeLeft(ctx, left.Id)
		done <- err
	}()
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the merge did not freeze the right range")
	}
	if err := cl.Stop(down); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-done; !errors.Is(err, placement.ErrMergeUndone) {
		t.Fatalf("merge with member %d down: %v, want it undone", down, err)
	}
	// The right range serves again: reads and writes of its keys.
	if _, err := cli.Put(ctx, "z", "thawed"); err != nil {
		t.Fatalf("put to the right range after the abort: %v", err)
	}
	if ranges, err := cl.Node(li).RangeMap(ctx); err != nil || len(ranges) != 2 {
		t.Fatalf("the map after the abort: %v (%v)", ranges, err)
	}
	cl.Restart(down)
	merged, err := cl.Node(li).MergeLeft(ctx, left.Id)
	if err != nil {
		t.Fatalf("merge with every member up: %v", err)
	}
	if len(merged.End) != 0 {
		t.Fatalf("merged range %v", merged)
	}
	for i := range cl.Size() {
		resp, err := cl.Client(i).Get(ctx, "", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(resp.Kvs); len(resp.Kvs) != 2 || string(resp.Kvs[0].Value) != "before" || string(resp.Kvs[1].Value) != "thawed" {
			t.Fatalf("member %d reads %s", i, got)
		}
	}
	for _, n := range cl.Nodes() {
		mergedLeftNothing(t, n, right)
	}
}

// TestShardedMergeThenSplit: a merge, then a split at the same key: the
// split makes a new range id (the merged-away one is never used again),
// generations only grow, and both halves read and take writes.
func TestShardedMergeThenSplit(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, cli := cl.Node(0), cl.Client(0)
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	first, err := n.SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	merged, err := n.MergeLeft(ctx, first[0].Id)
	if err != nil {
		t.Fatal(err)
	}
	again, err := n.SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatalf("split at m after the merge: %v", err)
	}
	if again[1].Id == first[1].Id || again[0].Id != merged.Id {
		t.Fatalf("split after the merge made %v, %v; the first split made r%d", again[0], again[1], first[1].Id)
	}
	if again[0].Generation <= merged.Generation || merged.Generation <= max(first[0].Generation, first[1].Generation) {
		t.Fatalf("generations: split %d %d, merged %d, split again %d %d", first[0].Generation, first[1].Generation,
			merged.Generation, again[0].Generation, again[1].Generation)
	}
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "2"); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 2 || string(resp.Kvs[0].Value) != "2" || string(resp.Kvs[1].Value) != "2" {
		t.Fatalf("reads %v", resp.Kvs)
	}
	// Merged again: the new right range goes the same way.
	if _, err := n.MergeLeft(ctx, again[0].Id); err != nil {
		t.Fatalf("merge again: %v", err)
	}
	mergedLeftNothing(t, n, first[1])
	mergedLeftNothing(t, n, again[1])
}

// TestMergeCallNeedsRoot: once auth is enabled, merging ranges is root's,
// as moving them is: a user without root is refused with etcd's
// permission denied; root's merge runs (and one of no range is NotFound).
func TestMergeCallNeedsRoot(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.Node(0).SplitRange(ctx, []byte("m")); err != nil {
		t.Fatal(err)
	}
	c := cl.Client(0)
	for _, step := range []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	as := func(user, pw string) internalpb.NodeClient {
		cli, err := clientv3.New(clientv3.Config{Endpoints: cl.URLs(), Username: user, Password: pw, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		return internalpb.NewNodeClient(cli.ActiveConnection())
	}
	alice, root := as("alice", "alicepw"), as("root", "rootpw")
	_, err := alice.MergeRange(ctx, &internalpb.MergeRangeRequest{Left: 1})
	if !errors.Is(rpctypes.Error(err), rpctypes.ErrPermissionDenied) {
		t.Errorf("alice's MergeRange: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	_, err = root.MergeRange(ctx, &internalpb.MergeRangeRequest{Left: 9})
	if status.Code(err) != codes.NotFound {
		t.Errorf("root's MergeRange of no range: %v, want NotFound", err)
	}
	resp, err := root.MergeRange(ctx, &internalpb.MergeRangeRequest{Left: 1})
	if err != nil || len(resp.Range.GetEnd()) != 0 {
		t.Fatalf("root's MergeRange: %v (%v)", resp, err)
	}
}

// TestSubsetMergeWatch: four members, three replicas per range; a member
// holding neither range (an outsider, served through feeds) watches every
// key while a holder writes on both sides of a split that is then merged:
// the watch sees every write once, in revision order, and the outsider
// reads what was written and writes to both halves after the merge.
func TestSubsetMergeWatch(t *testing.T) {
	cl := nodetest.Start(t, 4, nodetest.Sharded(), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	held := holders(t, cl, 1)
	split, err := cl.Node(held[0]).SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatalf("split at m: %v", err)
	}
	o := -1
	for i := range cl.Size() {
		if !slices.Contains(held, i) {
			o = i
		}
	}
	if o < 0 {
		t.Fatalf("every member holds range %d", split[0].Id)
	}
	wcli, ocli := cl.Client(held[0]), cl.Client(o)
	first, err := wcli.Put(ctx, "a-first", "0")
	if err != nil {
		t.Fatal(err)
	}
	watch := ocli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision+1))
	var revs []int64
	model := map[string]string{"a-first": "0"}
	put := func(i int) {
		key := fmt.Sprintf("%c%02d", "bz"[i%2], i%30)
		resp, err := wcli.Put(ctx, key, fmt.Sprint(i))
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		revs = append(revs, resp.Header.Revision)
		model[key] = fmt.Sprint(i)
	}
	done := make(chan error, 1)
	go func() {
		_, err := cl.Node(o).MergeLeft(ctx, split[0].Id)
		done <- err
	}()
	for i := 0; ; i++ {
		put(i)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("merge: %v", err)
			}
			for j := range 20 {
				put(i + 1 + j)
			}
		default:
			continue
		}
		break
	}
	var seen []int64
	for len(seen) < len(revs) {
		select {
		case <-ctx.Done():
			t.Fatalf("the outsider's watch saw %d of %d writes", len(seen), len(revs))
		case wr := <-watch:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range wr.Events {
				seen = append(seen, ev.Kv.ModRevision)
			}
		}
	}
	if !slices.Equal(seen, revs) {
		d := firstDiff(seen, revs)
		t.Fatalf("the outsider's watch saw %d events, want %d (first difference at %d: saw %v, want %v)", len(seen), len(revs), d,
			seen[max(0, d-2):min(len(seen), d+3)], revs[max(0, d-2):min(len(revs), d+3)])
	}
	resp, err := ocli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	if fmt.Sprint(got) != fmt.Sprint(model) {
		t.Fatalf("the outsider reads %v, the writes were %v", got, model)
	}
	for _, k := range []string{"a-after", "z-after"} {
		if _, err := ocli.Put(ctx, k, "v"); err != nil {
			t.Fatalf("the outsider's put %s after the merge: %v", k, err)
		}
	}
	for _, i := range held {
		mergedLeftNothing(t, cl.Node(i), split[1])
	}
}

// TestShardedMergeRepeated: three members; ranges split and merged again
// and again (at different keys, the merges asked of every member in turn)
// while clients write and read over all of them and a watch runs: no
// client error, every write seen once in revision order, reads equal the
// writes, and no member keeps anything of the ranges merged away.
func TestShardedMergeRepeated(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodes, clis := cl.Nodes(), cl.Clients()
	first, err := clis[0].Put(ctx, "first", "0")
	if err != nil {
		t.Fatal(err)
	}
	watch := clis[1].Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision+1))
	type write struct {
		key, val string
		rev      int64
	}
	var mu sync.Mutex
	var writes []write
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(writes)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 3))
			cli := clis[w]
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%c%c", 'a'+rnd.IntN(26), 'a'+rnd.IntN(26))
				if rnd.IntN(8) == 0 {
					if _, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
						t.Errorf("read over every range: %v", err)
						return
					}
					continue
				}
				val := fmt.Sprint(w, "-", i)
				resp, err := cli.Put(ctx, key, val)
				if err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				mu.Lock()
				writes = append(writes, write{key, val, resp.Header.Revision})
				mu.Unlock()
			}
		})
	}
	waitWrites := func(n int) {
		nodetest.WaitFor(ctx, t, func() error {
			if count() >= n || t.Failed() {
				return nil
			}
			return errors.New("writes stalled")
		})
	}
	var gone []*placementpb.RangeDescriptor
	for i, k := range []string{"m", "f", "t", "m"} {
		if t.Failed() {
			break
		}
		waitWrites(count() + 15)
		split, err := nodes[i%3].SplitRange(ctx, []byte(k))
		if err != nil {
			t.Fatalf("split at %s: %v", k, err)
		}
		waitWrites(count() + 15)
		if _, err := nodes[(i+1)%3].MergeLeft(ctx, split[0].Id); err != nil {
			t.Fatalf("merge r%d into r%d: %v", split[1].Id, split[0].Id, err)
		}
		gone = append(gone, split[1])
	}
	waitWrites(count() + 15)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.SortFunc(writes, func(a, b write) int { return int(a.rev - b.rev) })
	var want []int64
	model := map[string]string{"first": "0"}
	for _, w := range writes {
		want = append(want, w.rev)
		model[w.key] = w.val
	}
	var seen []int64
	for len(seen) < len(want) {
		select {
		case <-ctx.Done():
			t.Fatalf("the watch saw %d of %d writes", len(seen), len(want))
		case wr := <-watch:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range wr.Events {
				seen = append(seen, ev.Kv.ModRevision)
			}
		}
	}
	if !slices.Equal(seen, want) {
		d := firstDiff(seen, want)
		t.Fatalf("the watch saw %d events, want %d (first difference at %d: saw %v, want %v)", len(seen), len(want), d,
			seen[max(0, d-2):min(len(seen), d+3)], want[max(0, d-2):min(len(want), d+3)])
	}
	for i, cli := range clis {
		resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, kv := range resp.Kvs {
			got[string(kv.Key)] = string(kv.Value)
		}
		if fmt.Sprint(got) != fmt.Sprint(model) {
			t.Fatalf("member %d reads %d keys, the model has %d", i, len(got), len(model))
		}
	}
	for _, n := range nodes {
		for _, d := range gone {
			mergedLeftNothing(t, n, d)
		}
	}
	t.Logf("%d writes across %d splits and merges", len(writes), len(gone))
}
