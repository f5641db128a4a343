package node_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/proto/electionpb"
	"github.com/cairn-kv/cairn/proto/etcdwirepb"
	"github.com/cairn-kv/cairn/proto/lockpb"
)

// TestLockWireFormat: Cairn's lock and election messages (proto/lockpb,
// proto/electionpb), which the router serves and the tests below call it
// with, encode and decode exactly as etcd's generated v3lockpb and
// v3electionpb types, so these tests see what a client built from etcd's
// v3lock.proto and v3election.proto sees. The bytes were produced by etcd
// v3.7.3's generated code (proto.Marshal) for the same field values.
func TestLockWireFormat(t *testing.T) {
	hdr := &etcdwirepb.ResponseHeader{ClusterId: 1, MemberId: 2, Revision: 3, RaftTerm: 4}
	lk := &electionpb.LeaderKey{Name: []byte("n"), Key: []byte("n/7"), Rev: 5, Lease: 7}
	kv := &etcdwirepb.KeyValue{Key: []byte("n/7"), CreateRevision: 5, ModRevision: 6, Version: 2, Value: []byte("v"), Lease: 7}
	for _, tc := range []struct {
		name string
		msg  proto.Message
		etcd string
	}{
		{"LockRequest", &lockpb.LockRequest{Name: []byte("n"), Lease: 7}, "0a016e1007"},
		{"LockResponse", &lockpb.LockResponse{Header: hdr, Key: []byte("n/7")}, "0a08080110021803200412036e2f37"},
		{"UnlockRequest", &lockpb.UnlockRequest{Key: []byte("n/7")}, "0a036e2f37"},
		{"UnlockResponse", &lockpb.UnlockResponse{Header: hdr}, "0a080801100218032004"},
		{"CampaignRequest", &electionpb.CampaignRequest{Name: []byte("n"), Lease: 7, Value: []byte("v")}, "0a016e10071a0176"},
		{"CampaignResponse", &electionpb.CampaignResponse{Header: hdr, Leader: lk}, "0a080801100218032004120c0a016e12036e2f3718052007"},
		{"LeaderRequest", &electionpb.LeaderRequest{Name: []byte("n")}, "0a016e"},
		{"LeaderResponse", &electionpb.LeaderResponse{Header: hdr, Kv: kv}, "0a08080110021803200412100a036e2f371005180620022a01763007"},
		{"ProclaimRequest", &electionpb.ProclaimRequest{Leader: lk, Value: []byte("v")}, "0a0c0a016e12036e2f3718052007120176"},
		{"ProclaimResponse", &electionpb.ProclaimResponse{Header: hdr}, "0a080801100218032004"},
		{"ResignRequest", &electionpb.ResignRequest{Leader: lk}, "0a0c0a016e12036e2f3718052007"},
		{"ResignResponse", &electionpb.ResignResponse{Header: hdr}, "0a080801100218032004"},
	} {
		got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc.msg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if hex.EncodeToString(got) != tc.etcd {
			t.Errorf("%s encodes as %x, etcd as %s", tc.name, got, tc.etcd)
		}
		want, _ := hex.DecodeString(tc.etcd)
		back := tc.msg.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(want, back); err != nil || !proto.Equal(back, tc.msg) {
			t.Errorf("%s: etcd's bytes decode as %v (%v), want %v", tc.name, back, err, tc.msg)
		}
	}
}

// wireConn dials the node's client port with plain gRPC, as a client
// generated from etcd's .proto files does.
func wireConn(t *testing.T, n *node.Node) *grpc.ClientConn {
	t.Helper()
	u := n.ClientURLs()[0]
	conn, err := grpc.NewClient(u[len("http://"):], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func lock(ctx context.Context, conn *grpc.ClientConn, name string, lease clientv3.LeaseID) (*lockpb.LockResponse, error) {
	resp := &lockpb.LockResponse{}
	return resp, conn.Invoke(ctx, "/v3lockpb.Lock/Lock", &lockpb.LockRequest{Name: []byte(name), Lease: int64(lease)}, resp)
}

func unlock(ctx context.Context, conn *grpc.ClientConn, key []byte) (*lockpb.UnlockResponse, error) {
	resp := &lockpb.UnlockResponse{}
	return resp, conn.Invoke(ctx, "/v3lockpb.Lock/Unlock", &lockpb.UnlockRequest{Key: key}, resp)
}

func campaign(ctx context.Context, conn *grpc.ClientConn, name string, lease clientv3.LeaseID, value string) (*electionpb.CampaignResponse, error) {
	resp := &electionpb.CampaignResponse{}
	req := &electionpb.CampaignRequest{Name: []byte(name), Lease: int64(lease), Value: []byte(value)}
	return resp, conn.Invoke(ctx, "/v3electionpb.Election/Campaign", req, resp)
}

func proclaim(ctx context.Context, conn *grpc.ClientConn, l *electionpb.LeaderKey, value string) error {
	return conn.Invoke(ctx, "/v3electionpb.Election/Proclaim", &electionpb.ProclaimRequest{Leader: l, Value: []byte(value)}, &electionpb.ProclaimResponse{})
}

func resign(ctx context.Context, conn *grpc.ClientConn, l *electionpb.LeaderKey) (*electionpb.ResignResponse, error) {
	resp := &electionpb.ResignResponse{}
	return resp, conn.Invoke(ctx, "/v3electionpb.Election/Resign", &electionpb.ResignRequest{Leader: l}, resp)
}

func leader(ctx context.Context, conn *grpc.ClientConn, name string) (*electionpb.LeaderResponse, error) {
	resp := &electionpb.LeaderResponse{}
	return resp, conn.Invoke(ctx, "/v3electionpb.Election/Leader", &electionpb.LeaderRequest{Name: []byte(name)}, resp)
}

// observe opens an Observe stream; next receives its next response.
func observe(ctx context.Context, conn *grpc.ClientConn, name string) (next func() (*electionpb.LeaderResponse, error), err error) {
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/v3electionpb.Election/Observe")
	if err != nil {
		return nil, err
	}
	if err := st.SendMsg(&electionpb.LeaderRequest{Name: []byte(name)}); err != nil {
		return nil, err
	}
	if err := st.CloseSend(); err != nil {
		return nil, err
	}
	return func() (*electionpb.LeaderResponse, error) {
		resp := &electionpb.LeaderResponse{}
		return resp, st.RecvMsg(resp)
	}, nil
}

// keysUnder counts the keys under prefix.
func keysUnder(t *testing.T, c *clientv3.Client, prefix string) []*mvccpb.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	return r.Kvs
}

func grant(t *testing.T, c *clientv3.Client, ttl int64) clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := c.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return g.ID
}

type lockResult struct {
	resp *lockpb.LockResponse
	err  error
}

// TestLockService: etcd's Lock service through its wire protocol: a
// second lease waits until the first unlocks, a lease that holds the lock
// gets its key again, a cancelled waiter deletes its key, and a lease that
// is gone (before, or while waiting) is refused with etcd's error and
// leaves no key.
func TestLockService(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	conn := wireConn(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	lease1, lease2 := grant(t, c, 60), grant(t, c, 60)
	l1, err := lock(ctx, conn, "foo", lease1)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("foo/%x", lease1); string(l1.Key) != want || l1.Header == nil || l1.Header.Revision == 0 || l1.Header.MemberId == 0 {
		t.Fatalf("lock: key %q header %v, want key %q and a filled header", l1.Key, l1.Header, want)
	}
	if kvs := keysUnder(t, c, "foo/"); len(kvs) != 1 || kvs[0].Lease != int64(lease1) || kvs[0].CreateRevision != l1.Header.Revision {
		t.Fatalf("after lock: %v, want one key on lease %x created at %d", kvs, lease1, l1.Header.Revision)
	}
	// The same lease again: one acquisition, the same key, at once.
	again, err := lock(ctx, conn, "foo", lease1)
	if err != nil || string(again.Key) != string(l1.Key) {
		t.Fatalf("relock with the holding lease: %v %v", again, err)
	}

	done := make(chan lockResult, 1)
	go func() {
		r, err := lock(ctx, conn, "foo", lease2)
		done <- lockResult{r, err}
	}()
	nodetest.Eventually(t, "the second lease waits", func() bool { return len(keysUnder(t, c, "foo/")) == 2 })
	select {
	case r := <-done:
		t.Fatalf("second lease locked while the first holds the lock: %v %v", r.resp, r.err)
	default:
	}
	if _, err := unlock(ctx, conn, l1.Key); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if want := fmt.Sprintf("foo/%x", lease2); string(r.resp.Key) != want || r.resp.Header.Revision <= l1.Header.Revision {
		t.Fatalf("second lock: key %q at %d, want %q after %d", r.resp.Key, r.resp.Header.Revision, want, l1.Header.Revision)
	}

	// A waiter whose request is cancelled deletes its key, and only its own.
	lease3 := grant(t, c, 60)
	wctx, wcancel := context.WithCancel(ctx)
	go func() {
		r, err := lock(wctx, conn, "foo", lease3)
		done <- lockResult{r, err}
	}()
	nodetest.Eventually(t, "the third lease waits", func() bool { return len(keysUnder(t, c, "foo/")) == 2 })
	wcancel()
	if r := <-done; status.Code(r.err) != codes.Canceled {
		t.Fatalf("cancelled waiter: %v %v", r.resp, r.err)
	}
	nodetest.Eventually(t, "the cancelled waiter's key is deleted", func() bool { return len(keysUnder(t, c, "foo/")) == 1 })
	if kvs := keysUnder(t, c, "foo/"); string(kvs[0].Key) != string(r.resp.Key) {
		t.Fatalf("after the cancel: %v, want only the holder %q", kvs, r.resp.Key)
	}

	// A lease revoked while its request waits: refused once the lock is
	// free, with no key left behind (etcd#11456).
	lease4 := grant(t, c, 60)
	go func() {
		r, err := lock(ctx, conn, "foo", lease4)
		done <- lockResult{r, err}
	}()
	nodetest.Eventually(t, "the fourth lease waits", func() bool { return len(keysUnder(t, c, "foo/")) == 2 })
	if _, err := c.Revoke(ctx, lease4); err != nil {
		t.Fatal(err)
	}
	if _, err := unlock(ctx, conn, r.resp.Key); err != nil {
		t.Fatal(err)
	}
	if r := <-done; !sameStatus(r.err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("lock whose lease was revoked while waiting: %v %v, want %v", r.resp, r.err, rpctypes.ErrGRPCLeaseNotFound)
	}
	if kvs := keysUnder(t, c, "foo/"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}

	// A lease already gone, or never granted.
	if _, err := lock(ctx, conn, "foo", lease4); !sameStatus(err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("lock with a revoked lease: %v", err)
	}
	if _, err := lock(ctx, conn, "foo", 12345); !sameStatus(err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("lock with an unknown lease: %v", err)
	}
	if kvs := keysUnder(t, c, "foo/"); len(kvs) != 0 {
		t.Fatalf("keys left by refused locks: %v", kvs)
	}
}

// TestLockLeaseExpiresWhileWaiting (etcd#11456): a waiter whose lease runs
// out (no keepalives) is refused with etcd's "requested lease not found"
// once the holder unlocks, instead of being told it holds the lock.
func TestLockLeaseExpiresWhileWaiting(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	conn := wireConn(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	holder, err := lock(ctx, conn, "exp", grant(t, c, 60))
	if err != nil {
		t.Fatal(err)
	}
	short := grant(t, c, 1)
	done := make(chan lockResult, 1)
	go func() {
		r, err := lock(ctx, conn, "exp", short)
		done <- lockResult{r, err}
	}()
	nodetest.Eventually(t, "the short lease expires", func() bool {
		ttl, err := c.TimeToLive(ctx, short)
		return err == nil && ttl.TTL == -1
	})
	if _, err := unlock(ctx, conn, holder.Key); err != nil {
		t.Fatal(err)
	}
	if r := <-done; !sameStatus(r.err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("lock whose lease expired while waiting: %v %v, want %v", r.resp, r.err, rpctypes.ErrGRPCLeaseNotFound)
	}
	if kvs := keysUnder(t, c, "exp/"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}
}

// TestLockServiceContention: workers on their own leases take the lock in
// turns through the Lock service; no two are ever inside at once, and a
// read-modify-write of a key inside loses no update.
func TestLockServiceContention(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	conn := wireConn(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	const workers, rounds = 6, 5
	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		lease := grant(t, c, 60)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				l, err := lock(ctx, conn, "contended", lease)
				if err != nil {
					errs <- err
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				err = incrementKey(ctx, c, "contended-counter")
				inside.Add(-1)
				if err != nil {
					errs <- err
					return
				}
				if _, err := unlock(ctx, conn, l.Key); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if o := overlaps.Load(); o != 0 {
		t.Fatalf("%d times a worker entered while another was inside", o)
	}
	if got := counterValue(t, c, "contended-counter"); got != workers*rounds {
		t.Fatalf("counter = %d, want %d", got, workers*rounds)
	}
}

// incrementKey reads key as a number and writes it back plus one, in two
// separate requests: only mutual exclusion keeps it from losing updates.
func incrementKey(ctx context.Context, c *clientv3.Client, key string) error {
	r, err := c.Get(ctx, key)
	if err != nil {
		return err
	}
	v := 0
	if len(r.Kvs) == 1 {
		if _, err := fmt.Sscan(string(r.Kvs[0].Value), &v); err != nil {
			return err
		}
	}
	_, err = c.Put(ctx, key, fmt.Sprint(v+1))
	return err
}

func counterValue(t *testing.T, c *clientv3.Client, key string) int {
	t.Helper()
	kvs := keysUnder(t, c, key)
	if len(kvs) != 1 {
		t.Fatalf("counter %q: %v", key, kvs)
	}
	v := 0
	if _, err := fmt.Sscan(string(kvs[0].Value), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLockWaiterOnClose: closing the node ends a waiting Lock with etcd's
// "server stopped" instead of holding the shutdown.
func TestLockWaiterOnClose(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	conn := wireConn(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if _, err := lock(ctx, conn, "close", grant(t, c, 60)); err != nil {
		t.Fatal(err)
	}
	done := make(chan lockResult, 1)
	lease := grant(t, c, 60)
	go func() {
		r, err := lock(ctx, conn, "close", lease)
		done <- lockResult{r, err}
	}()
	nodetest.Eventually(t, "the second lease waits", func() bool { return len(keysUnder(t, c, "close/")) == 2 })
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; !sameStatus(r.err, rpctypes.ErrGRPCStopped) {
		t.Fatalf("waiter on close: %v %v, want %v", r.resp, r.err, rpctypes.ErrGRPCStopped)
	}
}

// TestElectionService: etcd's Election service through its wire
// protocol: campaign, leader, observe, proclaim, resign, the next
// candidate taking over, and the refusals with etcd's errors.
func TestElectionService(t *testing.T) {
	cl := nodetest.Start(t, 1)
	n, c := cl.Node(0), cl.Client(0)
	conn := wireConn(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	noLeader := status.Error(codes.Unknown, "election: no leader")
	notLeader := status.Error(codes.Unknown, "election: not leader")
	missing := status.Error(codes.Unknown, `"leader" field must be provided`)

	if _, err := leader(ctx, conn, "el"); !sameStatus(err, noLeader) {
		t.Fatalf("leader of an empty election: %v", err)
	}
	next, err := observe(ctx, conn, "el")
	if err != nil {
		t.Fatal(err)
	}
	lease1, lease2 := grant(t, c, 60), grant(t, c, 60)
	c1, err := campaign(ctx, conn, "el", lease1, "a")
	if err != nil {
		t.Fatal(err)
	}
	l1 := c1.Leader
	if l1 == nil || string(l1.Name) != "el" || string(l1.Key) != fmt.Sprintf("el/%x", lease1) ||
		l1.Rev != c1.Header.Revision || l1.Lease != int64(lease1) {
		t.Fatalf("campaign: %v", c1)
	}
	expectLeader := func(what string, resp *electionpb.LeaderResponse, err error, key []byte, rev int64, value string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if resp.Kv == nil || string(resp.Kv.Key) != string(key) || resp.Kv.CreateRevision != rev ||
			string(resp.Kv.Value) != value || resp.Header == nil || resp.Header.Revision < resp.Kv.ModRevision {
			t.Fatalf("%s: %v, want key %q created at %d with value %q", what, resp, key, rev, value)
		}
	}
	o, err := next()
	expectLeader("observe", o, err, l1.Key, l1.Rev, "a")
	ld, err := leader(ctx, conn, "el")
	expectLeader("leader", ld, err, l1.Key, l1.Rev, "a")

	// A second candidate waits while the first leads.
	done := make(chan error, 1)
	var c2 *electionpb.CampaignResponse
	go func() {
		var err error
		c2, err = campaign(ctx, conn, "el", lease2, "b")
		done <- err
	}()
	nodetest.Eventually(t, "the second candidate waits", func() bool { return len(keysUnder(t, c, "el/")) == 2 })
	select {
	case err := <-done:
		t.Fatalf("second candidate elected while the first leads: %v", err)
	default:
	}

	if err := proclaim(ctx, conn, l1, "a2"); err != nil {
		t.Fatal(err)
	}
	o, err = next()
	expectLeader("observe after proclaim", o, err, l1.Key, l1.Rev, "a2")
	ld, err = leader(ctx, conn, "el")
	expectLeader("leader after proclaim", ld, err, l1.Key, l1.Rev, "a2")
	stale := &electionpb.LeaderKey{Name: l1.Name, Key: l1.Key, Rev: l1.Rev + 1000, Lease: l1.Lease}
	if err := proclaim(ctx, conn, stale, "x"); !sameStatus(err, notLeader) {
		t.Fatalf("proclaim by a key that does not lead: %v", err)
	}
	if err := proclaim(ctx, conn, nil, "x"); !sameStatus(err, missing) {
		t.Fatalf("proclaim without a leader key: %v", err)
	}
	if _, err := resign(ctx, conn, nil); !sameStatus(err, missing) {
		t.Fatalf("resign without a leader key: %v", err)
	}

	// The leader resigns: the second candidate leads and observers see it.
	if _, err := resign(ctx, conn, l1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l2 := c2.Leader
	if string(l2.Key) != fmt.Sprintf("el/%x", lease2) || l2.Lease != int64(lease2) || l2.Rev <= l1.Rev {
		t.Fatalf("second campaign: %v", c2)
	}
	o, err = next()
	expectLeader("observe after resign", o, err, l2.Key, l2.Rev, "b")
	if err := proclaim(ctx, conn, l1, "x"); !sameStatus(err, notLeader) {
		t.Fatalf("proclaim after resigning: %v", err)
	}
	// Resigning a key that no longer leads changes nothing.
	if _, err := resign(ctx, conn, l1); err != nil {
		t.Fatal(err)
	}
	ld, err = leader(ctx, conn, "el")
	expectLeader("leader after the first resigned", ld, err, l2.Key, l2.Rev, "b")

	if _, err := resign(ctx, conn, l2); err != nil {
		t.Fatal(err)
	}
	if _, err := leader(ctx, conn, "el"); !sameStatus(err, noLeader) {
		t.Fatalf("leader after every candidate resigned: %v", err)
	}

	// Refusals for a lease that is gone, before or while waiting.
	if _, err := c.Revoke(ctx, lease1); err != nil {
		t.Fatal(err)
	}
	if _, err := campaign(ctx, conn, "el", lease1, "z"); !sameStatus(err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("campaign with a revoked lease: %v", err)
	}
	c3, err := campaign(ctx, conn, "el", lease2, "b")
	if err != nil {
		t.Fatal(err)
	}
	lease4 := grant(t, c, 60)
	go func() {
		_, err := campaign(ctx, conn, "el", lease4, "d")
		done <- err
	}()
	nodetest.Eventually(t, "the fourth candidate waits", func() bool { return len(keysUnder(t, c, "el/")) == 2 })
	if _, err := c.Revoke(ctx, lease4); err != nil {
		t.Fatal(err)
	}
	if _, err := resign(ctx, conn, c3.Leader); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !sameStatus(err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("campaign whose lease was revoked while waiting: %v", err)
	}
	if kvs := keysUnder(t, c, "el/"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}
}
