package shard

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// startReplica runs a one-replica shard on a real NodeHost on 127.0.0.1 and
// waits for it to elect itself.
func startReplica(t *testing.T) (*Replica, *StateMachine) {
	t.Helper()
	return startReplicaWith(t, Config{Span: mvcc.Span{}})
}

// startReplicaWith is startReplica with the state machine's config (its DB
// is set here).
func startReplicaWith(t *testing.T, cfg Config) (*Replica, *StateMachine) {
	t.Helper()
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	nh, err := dragonboat.NewNodeHost(dbconfig.NodeHostConfig{
		NodeHostDir:    filepath.Join(t.TempDir(), "raft"),
		RTTMillisecond: 5,
		RaftAddress:    addr,
		Expert:         dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig()},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DB = openDB(t, vfs.NewMem())
	var machine *StateMachine
	factory := Factory(cfg)
	err = nh.StartOnDiskReplica(map[uint64]dragonboat.Target{1: addr}, false,
		func(shardID, replicaID uint64) sm.IOnDiskStateMachine {
			machine = factory(shardID, replicaID).(*StateMachine)
			return machine
		}, dbconfig.Config{ReplicaID: 1, ShardID: 7, HeartbeatRTT: 2, ElectionRTT: 20, CheckQuorum: true})
	if err != nil {
		t.Fatal(err)
	}
	r := NewReplica(nh, 7)
	t.Cleanup(func() { r.Close(); nh.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, ok := r.Leader(); ok {
			return r, machine
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader within 20s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// TestReplicaBatchesConcurrentWrites: concurrent writes through one Replica
// all commit, each at its own revision, in fewer raft entries than writes.
func TestReplicaBatchesConcurrentWrites(t *testing.T) {
	r, _ := startReplica(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := r.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 32, 20
	revs := make(chan int64, writers*each)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				data, _ := proto.Marshal(&pb.PutRequest{Key: []byte(fmt.Sprintf("w%02d/%02d", w, i)), Value: []byte("v")})
				resp, err := r.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Put{Put: data}})
				if err != nil {
					t.Error(err)
					return
				}
				var pr pb.PutResponse
				if err := proto.Unmarshal(resp.GetPut(), &pr); err != nil {
					t.Error(err, resp)
					return
				}
				revs <- pr.Header.Revision
			}
		}()
	}
	wg.Wait()
	close(revs)
	seen := map[int64]bool{}
	for rev := range revs {
		if seen[rev] {
			t.Fatalf("revision %d acknowledged twice", rev)
		}
		seen[rev] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d writes acknowledged, want %d", len(seen), writers*each)
	}
	a, err := r.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if int(a.Revision-b.Revision) != writers*each {
		t.Fatalf("revision moved by %d, want %d", a.Revision-b.Revision, writers*each)
	}
	entries := a.AppliedIndex - b.AppliedIndex
	if entries >= writers*each {
		t.Fatalf("%d writes took %d raft entries: not batched", writers*each, entries)
	}
	t.Logf("%d writes in %d raft entries", writers*each, entries)
	got, err := r.Range(ctx, &pb.RangeRequest{Key: []byte("w"), RangeEnd: []byte("x"), CountOnly: true}, true)
	if err != nil || got.Count != writers*each {
		t.Fatalf("linearizable count = %v, %v", got, err)
	}
}

// TestLookupAfterCloseAndDuringRecovery: a read after Close gets ErrClosed;
// reads racing a snapshot recovery see the old state or the new one, never
// a mix.
func TestLookupAfterCloseAndDuringRecovery(t *testing.T) {
	src := openDB(t, vfs.NewMem())
	from, _ := openSM(t, src, 1, mvcc.Span{})
	for i := 0; i < 50; i++ {
		apply(t, from, uint64(i+1), putReq(t, fmt.Sprintf("new%02d", i), "v", 0))
	}
	ctx, err := from.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := from.SaveSnapshot(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}

	s, _ := openSM(t, openDB(t, vfs.NewMem()), 1, mvcc.Span{})
	apply(t, s, 1, putReq(t, "old", "v", 0))
	oldKeys, newKeys := keys(t, s), keys(t, from)

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.RecoverFromSnapshot(pr, nil) }()
	data := buf.Bytes()
	for off := 0; off < len(data); off += 64 {
		if _, err := pw.Write(data[off:min(off+64, len(data))]); err != nil {
			t.Fatal(err)
		}
		if got := keys(t, s); got != oldKeys && got != newKeys {
			t.Fatalf("read during recovery saw a mix: %q", got)
		}
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := keys(t, s); got != newKeys {
		t.Fatalf("after recovery: %q, want %q", got, newKeys)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(StatusQuery{}); err != ErrClosed {
		t.Fatalf("lookup after close: %v, want ErrClosed", err)
	}
}

// TestReplicaHold: an applied TransferHold holds back writes through the
// replica client until its bound, or until its target is reported leading;
// a hold already past holds nothing.
func TestReplicaHold(t *testing.T) {
	var r *Replica
	holds := make(chan struct{}, 4)
	r, _ = startReplicaWith(t, Config{OnHold: func(target ReplicaID, until time.Time, max time.Duration) {
		r.Hold(target, until, max)
		holds <- struct{}{}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(key string) error {
		data, _ := proto.Marshal(&pb.PutRequest{Key: []byte(key), Value: []byte("v")})
		_, err := r.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Put{Put: data}})
		return err
	}
	hold := func(target uint64, until, max time.Duration) time.Time {
		t.Helper()
		_, err := r.Write(ctx, &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{
			Target: target, UntilUnixNano: time.Now().Add(until).UnixNano(), MaxNanos: int64(max)}}})
		if err != nil {
			t.Fatal(err)
		}
		<-holds
		d, _ := r.held()
		return time.Now().Add(d)
	}

	// A write waits out the hold: it completes no earlier than the bound,
	// the nearer of until and max.
	end := hold(2, time.Minute, 300*time.Millisecond)
	if time.Until(end) > 300*time.Millisecond {
		t.Fatalf("hold lasts until %v, beyond its 300ms bound", end)
	}
	if err := put("bounded"); err != nil {
		t.Fatal(err)
	}
	if time.Now().Before(end) {
		t.Fatalf("a write went through a hold %v before its end", time.Until(end))
	}
	end = hold(2, 200*time.Millisecond, time.Minute)
	if err := put("until"); err != nil {
		t.Fatal(err)
	}
	if time.Now().Before(end) {
		t.Fatalf("a write went through a hold %v before its end", time.Until(end))
	}

	// Held until the target leads: another leader does not end it.
	hold(2, time.Minute, time.Minute)
	r.LeaderChanged(3)
	r.LeaderChanged(0)
	if d, _ := r.held(); d <= 0 {
		t.Fatal("a hold for member 2 ended when another member led")
	}
	done := make(chan error, 1)
	go func() { done <- put("released") }()
	r.LeaderChanged(2)
	if d, _ := r.held(); d > 0 {
		t.Fatalf("the hold is still in force for %v after its target leads", d)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A hold in the past (a replayed entry) holds nothing.
	hold(2, -time.Second, time.Minute)
	if d, _ := r.held(); d > 0 {
		t.Fatalf("a past hold is in force for %v", d)
	}
}
