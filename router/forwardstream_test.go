package router

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// callCounter counts the node-to-node calls a server was made, by method.
type callCounter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *callCounter) add(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[method]++
}

func (c *callCounter) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[method]
}

// serveCounted serves srv as member id's node-to-node service, counting
// its calls, and returns a dialer reaching it.
func serveCounted(t *testing.T, id placement.NodeID, srv internalpb.NodeServer, opts ...grpc.ServerOption) (Dial, *callCounter) {
	t.Helper()
	counts := &callCounter{}
	l := bufconn.Listen(1 << 20)
	g := grpc.NewServer(append(opts,
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			counts.add(info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(s any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			counts.add(info.FullMethod)
			return h(s, ss)
		}))...)
	internalpb.RegisterNodeServer(g, srv)
	return serveOn(t, id, l, g), counts
}

// preForward is a member that predates the Forward stream.
type preForward struct{ *internalServer }

func (preForward) Forward(internalpb.Node_ForwardServer) error {
	return status.Error(codes.Unimplemented, "unknown method Forward")
}

// TestForwardStream: writes that member 1 forwards to range 5's leader,
// member 2, travel on one Forward stream, however many and however
// concurrent, with no Write call; to a member that predates the stream
// they travel as Write calls, each answered. Either way every write gets
// its answer.
func TestForwardStream(t *testing.T) {
	d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 1, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 1, Id: 1}, {Member: 2, Id: 2}}}
	for _, tc := range []struct {
		name           string
		old            bool
		streams, calls int // Forward streams and Write calls member 2 serves
	}{
		{name: "stream", streams: 1},
		{name: "member without the stream", old: true, streams: 1, calls: 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 2})}}
			var srv internalpb.NodeServer = &internalServer{self: 2, m: m2, srv: New(Config{MemberID: 2})}
			if tc.old {
				srv = preForward{srv.(*internalServer)}
			}
			dial, counts := serveCounted(t, 2, srv)
			f := NewForwarder(1, dial)
			t.Cleanup(f.Close)
			clients := []*RangeClient{f.Range(newFakeLocal(d, &fakeReplica{leader: 2})), f.RemoteRange(d)}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, 40)
			for i := range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := clients[i%2].Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: []byte{0}}})
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if got := counts.get(internalpb.Node_Forward_FullMethodName); got != tc.streams {
				t.Errorf("member 2 served %d Forward streams, want %d", got, tc.streams)
			}
			if got := counts.get(internalpb.Node_Write_FullMethodName); got != tc.calls {
				t.Errorf("member 2 served %d Write calls, want %d", got, tc.calls)
			}
		})
	}
}

// TestForwardStreamCancel: a forwarded write whose caller gives up ends
// at the leader too (its context there ends, as a Write call's would),
// and the caller gets what the call gave: a cancel is the member failing
// to serve (no leader), a deadline the leader's loss; a write waiting
// meanwhile on the same stream is answered.
func TestForwardStreamCancel(t *testing.T) {
	ended := make(chan error, 2)
	entered := make(chan struct{}, 3)
	release := make(chan struct{})
	d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 1, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 1, Id: 1}, {Member: 2, Id: 2}}}
	hold := func(ctx context.Context) error {
		entered <- struct{}{}
		select {
		case <-ctx.Done():
			ended <- ctx.Err()
			return ctx.Err()
		case <-release:
			return nil
		}
	}
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 2, hold: hold})}}
	dial, counts := serveCounted(t, 2, &internalServer{self: 2, m: m2, srv: New(Config{MemberID: 2})})
	f := NewForwarder(1, dial)
	t.Cleanup(f.Close)
	c := f.Range(newFakeLocal(d, &fakeReplica{leader: 2}))
	write := func(ctx context.Context) error {
		_, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: []byte{0}}})
		return err
	}

	// One waits while the others give up.
	waiting := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		waiting <- write(ctx)
	}()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- write(ctx) }()
	deadline := time.After(10 * time.Second)
	for range 2 { // both writes are being proposed at member 2
		select {
		case <-entered:
		case <-deadline:
			t.Fatal("the writes never reached member 2's replica")
		}
	}
	cancel()
	err := <-done
	if !errors.Is(err, shard.ErrNoLeader) || errors.Is(err, shard.ErrLeaderLost) {
		t.Errorf("cancelled write: %v, want %v", err, shard.ErrNoLeader)
	}
	select {
	case e := <-ended:
		if !errors.Is(e, context.Canceled) {
			t.Errorf("the cancelled write's context at the leader ended with %v, want %v", e, context.Canceled)
		}
	case <-deadline:
		t.Fatal("the cancelled write's context at the leader never ended")
	}

	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = write(dctx)
	dcancel()
	if !errors.Is(err, shard.ErrTimeout) && !errors.Is(err, shard.ErrLeaderLost) {
		t.Errorf("write past its deadline: %v, want %v or %v", err, shard.ErrTimeout, shard.ErrLeaderLost)
	}
	if st := status.Convert(toGRPC(err)); st.Code() != codes.Unavailable ||
		(st.Message() != status.Convert(rpctypes.ErrGRPCTimeout).Message() && st.Message() != status.Convert(rpctypes.ErrGRPCTimeoutDueToLeaderFail).Message()) {
		t.Errorf("write past its deadline: the client gets %v %q", st.Code(), st.Message())
	}

	close(release)
	if err := <-waiting; err != nil {
		t.Errorf("the write left waiting: %v", err)
	}
	if got := counts.get(internalpb.Node_Write_FullMethodName); got != 0 {
		t.Errorf("member 2 served %d Write calls, want 0", got)
	}
}

// TestForwardStreamLargeWrites: writes near the request limit, forwarded
// together, each fit the peer port's message limit as a call would: the
// stream never puts more of them in one message than that takes.
func TestForwardStreamLargeWrites(t *testing.T) {
	d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 1, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 1, Id: 1}, {Member: 2, Id: 2}}}
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 2})}}
	srv := New(Config{MemberID: 2})
	dial, counts := serveCounted(t, 2, &internalServer{self: 2, m: m2, srv: srv},
		grpc.MaxRecvMsgSize(DefaultMaxRequestBytes+grpcOverheadBytes))
	f := NewForwarder(1, dial)
	t.Cleanup(f.Close)
	c := f.Range(newFakeLocal(d, &fakeReplica{leader: 2}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	big := make([]byte, DefaultMaxRequestBytes-1024)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: big}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := counts.get(internalpb.Node_Forward_FullMethodName); got != 1 {
		t.Errorf("member 2 served %d Forward streams, want 1", got)
	}
}
