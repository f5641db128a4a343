package shard_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

const (
	placementShard = 100
	dataShard      = 7
)

// stampedShard runs, on one real NodeHost, a placement group with its
// revision oracle and a data shard, and returns both.
func stampedShard(t *testing.T) (*dragonboat.NodeHost, *placement.Allocator) {
	t.Helper()
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
	addr := testport.Addr(t)
	nh, err := dragonboat.NewNodeHost(dbconfig.NodeHostConfig{
		NodeHostDir:    filepath.Join(t.TempDir(), "raft"),
		RTTMillisecond: 5,
		RaftAddress:    addr,
		Expert:         dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig()},
	})
	if err != nil {
		t.Fatal(err)
	}
	members := map[uint64]dragonboat.Target{1: addr}
	cfg := dbconfig.Config{ReplicaID: 1, HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true}
	cfg.ShardID = placementShard
	if err := nh.StartReplica(members, false, placement.NewStateMachine, cfg); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open("db", mvcc.PebbleOptions(&pebble.Options{FS: vfs.NewMem()}))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ShardID = dataShard
	if err := nh.StartOnDiskReplica(members, false, shard.Factory(shard.Config{DB: db}), cfg); err != nil {
		t.Fatal(err)
	}
	alloc := placement.NewAllocator(nh, placementShard, 1, 64)
	t.Cleanup(func() { alloc.Close(); nh.Close(); db.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for _, id := range []uint64{placementShard, dataShard} {
		for {
			if _, _, ok, err := nh.GetLeaderID(id); err == nil && ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no leaders within 20s")
			}
			time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	return nh, alloc
}

func put(ctx context.Context, r *shard.Replica, key string) (int64, error) {
	data, _ := proto.Marshal(&pb.PutRequest{Key: []byte(key), Value: []byte("v")})
	resp, err := r.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Put{Put: data}})
	if err != nil {
		return 0, err
	}
	var pr pb.PutResponse
	if err := proto.Unmarshal(resp.GetPut(), &pr); err != nil {
		return 0, err
	}
	return pr.Header.Revision, nil
}

// TestStampedWrites: writes through two stamping replica clients of one
// shard (two proposers, as across a leader change) all commit, at oracle
// revisions — unique, increasing for each writer, above what the oracle had
// handed out before — and the store ends at the newest of them.
func TestStampedWrites(t *testing.T) {
	nh, alloc := stampedShard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	before, err := alloc.Revisions(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	clients := []*shard.Replica{shard.NewStampingReplica(nh, dataShard, 1, alloc, nil), shard.NewStampingReplica(nh, dataShard, 1, alloc, nil)}
	for _, c := range clients {
		t.Cleanup(c.Close)
	}
	var (
		mu   sync.Mutex
		revs []int64
		wg   sync.WaitGroup
	)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev int64
			for i := range 40 {
				rev, err := put(ctx, clients[w%2], fmt.Sprintf("w%02d/%02d", w, i))
				if err != nil {
					t.Error(err)
					return
				}
				if rev <= prev {
					t.Errorf("writer %d: revision %d after %d", w, rev, prev)
				}
				prev = rev
				mu.Lock()
				revs = append(revs, rev)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
	for i, rev := range revs {
		if rev <= int64(before)+999 {
			t.Fatalf("revision %d is not from the oracle (it had handed out up to %d)", rev, int64(before)+999)
		}
		if i > 0 && rev == revs[i-1] {
			t.Fatalf("revision %d acknowledged twice", rev)
		}
	}
	st, err := clients[0].Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := int64(st.Revision); got != revs[len(revs)-1] {
		t.Fatalf("store at revision %d, want the newest acknowledged %d", got, revs[len(revs)-1])
	}
	t.Logf("%d writes, %d restamped", len(revs), clients[0].Restamped()+clients[1].Restamped())
}

// racingStamper hands out real oracle revisions, but the first time it is
// asked, another proposer slips a write stamped with a newer revision into
// the log first, so the batch it stamped arrives stale.
type racingStamper struct {
	alloc *placement.Allocator
	other *shard.Replica // a plain client: its put is proposed with the stamp given
	once  sync.Once
}

func (s *racingStamper) Current(ctx context.Context) (mvcc.Revision, error) {
	return s.alloc.Current(ctx)
}

func (s *racingStamper) Revisions(ctx context.Context, n int64) (mvcc.Revision, error) {
	first, err := s.alloc.Revisions(ctx, n)
	if err != nil {
		return 0, err
	}
	var raceErr error
	s.once.Do(func() {
		newer, err := s.alloc.Revisions(ctx, 1)
		if err != nil {
			raceErr = err
			return
		}
		data, _ := proto.Marshal(&pb.PutRequest{Key: []byte("racer"), Value: []byte("v")})
		_, raceErr = s.other.Write(ctx, &shardpb.Request{Stamp: int64(newer), Op: &shardpb.Request_Put{Put: data}})
	})
	return first, raceErr
}

// TestStaleStampRestamped: a write whose stamp reached the log behind a
// newer one is refused by the state machine, stamped again and committed;
// its caller sees only the success, at a revision above the newer stamp.
func TestStaleStampRestamped(t *testing.T) {
	nh, alloc := stampedShard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	plain := shard.NewReplica(nh, dataShard)
	t.Cleanup(plain.Close)
	c := shard.NewStampingReplica(nh, dataShard, 1, &racingStamper{alloc: alloc, other: plain}, nil)
	t.Cleanup(c.Close)
	rev, err := put(ctx, c, "k")
	if err != nil {
		t.Fatal(err)
	}
	if c.Restamped() != 1 {
		t.Fatalf("%d writes restamped, want 1", c.Restamped())
	}
	got, err := c.Range(ctx, &pb.RangeRequest{Key: []byte("racer")}, true)
	if err != nil {
		t.Fatal(err)
	}
	kvs := got.Kvs
	if len(kvs) != 1 || kvs[0].ModRevision >= rev {
		t.Fatalf("the racing write %v should precede the restamped one at %d", kvs, rev)
	}
}

// TestClosedRevisionAdvances: the closed revision a stamping client
// proposes rides in the log with its writes: the shard's closed revision
// stays below every write still to come and reaches past each one that
// completed once the next batch carries it.
func TestClosedRevisionAdvances(t *testing.T) {
	nh, alloc := stampedShard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := shard.NewStampingReplica(nh, dataShard, 1, alloc, nil)
	t.Cleanup(c.Close)
	var last int64
	for i := range 20 {
		rev, err := put(ctx, c, fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.Status(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		// The entry that carried rev closed just below it; the one before
		// closed past the previous write.
		if int64(st.Closed) >= rev || int64(st.Closed) < last {
			t.Fatalf("write %d at %d: shard closed at %d (previous write at %d)", i, rev, st.Closed, last)
		}
		if c.Closed() != st.Closed {
			t.Fatalf("client proposed closed %d, shard applied %d", c.Closed(), st.Closed)
		}
		last = rev
	}
}

// TestAdvanceIdle: with no writes in flight, the leader's client closes the
// shard up to the oracle's current value without writing to the log (after
// one command fencing its term in) and without consuming a revision: an
// idle shard closes at the last write, advancing again leaves it there, and
// the next write takes the very next revision. A client on a replica that
// does not lead refuses to stamp.
func TestAdvanceIdle(t *testing.T) {
	nh, alloc := stampedShard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := shard.NewStampingReplica(nh, dataShard, 1, alloc, nil)
	t.Cleanup(c.Close)
	rev, err := put(ctx, c, "a")
	if err != nil {
		t.Fatal(err)
	}
	closed, err := c.AdvanceIdle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int64(closed) != rev {
		t.Fatalf("idle shard closed at %d, want the last write's revision %d (the oracle's current value)", closed, rev)
	}
	st, err := c.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	applied := st.AppliedIndex
	again, err := c.AdvanceIdle(ctx)
	if err != nil || again != closed {
		t.Fatalf("second advance with no write between: %d, %v (first %d); want it unmoved", again, err, closed)
	}
	if st, _ := c.Status(ctx, true); st.AppliedIndex != applied {
		t.Fatalf("an idle advance wrote to the log (applied index %d → %d)", applied, st.AppliedIndex)
	}
	next, err := put(ctx, c, "b")
	if err != nil {
		t.Fatal(err)
	}
	if next != int64(again)+1 {
		t.Fatalf("write at %d after closing at %d: want the next revision (closing consumed none, and stays below writes)", next, again)
	}

	notLeader := shard.NewStampingReplica(nh, dataShard, 2, alloc, nil) // replica 2 does not exist, let alone lead
	t.Cleanup(notLeader.Close)
	if _, err := put(ctx, notLeader, "c"); !errors.Is(err, shard.ErrNoLeader) {
		t.Fatalf("a write stamped off the leader: %v, want ErrNoLeader", err)
	}
}

// TestReadAt: a read at an oracle revision R newer than every write of the
// shard waits for the closed revision to reach R and then sees every write
// below R and none above it; a compaction at R is accepted though the
// shard wrote nothing that recent, and a read below it is then refused.
func TestReadAt(t *testing.T) {
	nh, alloc := stampedShard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := shard.NewStampingReplica(nh, dataShard, 1, alloc, nil)
	t.Cleanup(c.Close)
	first, err := put(ctx, c, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := put(ctx, c, "b"); err != nil {
		t.Fatal(err)
	}
	r, err := alloc.Revisions(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	later, err := put(ctx, c, "c")
	if err != nil {
		t.Fatal(err)
	}
	if later <= int64(r) {
		t.Fatalf("a write after R=%d got revision %d", r, later)
	}
	all := &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z")}
	resp, err := c.ReadAt(ctx, all, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 2 || resp.Count != 2 || string(resp.Kvs[1].Key) != "b" {
		t.Fatalf("read at %d: %v", r, resp.Kvs)
	}
	// A fresh R above every write: the shard is idle, AdvanceIdle closes it.
	r2, err := alloc.Revisions(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err = c.ReadAt(ctx, all, r2); err != nil || resp.Count != 3 {
		t.Fatalf("read at %d: %v %v", r2, resp, err)
	}
	if c.Closed() < r2 {
		t.Fatalf("closed %d after a read at %d", c.Closed(), r2)
	}
	data, _ := proto.Marshal(&pb.CompactionRequest{Revision: int64(r2)})
	if _, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: data}}); err != nil {
		t.Fatalf("compaction at the closed revision %d (last write %d): %v", r2, later, err)
	}
	var se *shard.Error
	if _, err := c.ReadAt(ctx, all, mvcc.Revision(first)); !errors.As(err, &se) || se.Code != shardpb.ErrorCode_ERROR_CODE_COMPACTED {
		t.Fatalf("read at %d after compaction at %d: %v", first, r2, err)
	}
	// A plain read's header carries the shard's current revision: the
	// closed one, past its last write.
	v, err := c.Range(ctx, all, true)
	if err != nil {
		t.Fatal(err)
	}
	if h := v.Header.Revision; h < int64(r2) {
		t.Fatalf("header revision %d below the closed revision %d", h, r2)
	}
}
