package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// fakeReplica is a range's replica that answers every request with err
// (or an empty answer), led by leader; with hold, writes and range reads
// answer what hold returns instead, once it does.
type fakeReplica struct {
	leader shard.ReplicaID
	err    error
	hold   func(ctx context.Context) error
}

func (r *fakeReplica) Registered(context.Context, int64, bool) ([]shard.RangeID, error) {
	return nil, r.err
}
func (r *fakeReplica) ShadowKeys(context.Context, int64, bool) ([][]byte, error) { return nil, r.err }
func (r *fakeReplica) Closed() mvcc.Revision                                     { return 0 }
func (r *fakeReplica) Proposed() uint64                                          { return 0 }

func (r *fakeReplica) Write(ctx context.Context, _ *shardpb.Request) (*shardpb.Response, error) {
	if r.hold != nil {
		if err := r.hold(ctx); err != nil {
			return nil, err
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return &shardpb.Response{}, nil
}

func (r *fakeReplica) Range(ctx context.Context, _ *pb.RangeRequest, _ bool) (*pb.RangeResponse, error) {
	if r.hold != nil {
		if err := r.hold(ctx); err != nil {
			return nil, err
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return &pb.RangeResponse{}, nil
}

func (r *fakeReplica) ReadTxn(context.Context, *pb.TxnRequest, mvcc.Revision, bool) (*pb.TxnResponse, error) {
	if r.err != nil {
		return nil, r.err
	}
	return &pb.TxnResponse{}, nil
}

func (r *fakeReplica) Status(context.Context, bool) (shard.Status, error) {
	return shard.Status{}, r.err
}

func (r *fakeReplica) Hash(context.Context, mvcc.Revision, bool) (shard.HashResult, error) {
	return shard.HashResult{}, r.err
}

func (r *fakeReplica) Alarms(context.Context, bool) ([]*pb.AlarmMember, error) { return nil, r.err }

func (r *fakeReplica) Leader() (shard.ReplicaID, uint64, bool) { return r.leader, 1, r.leader != 0 }

func (r *fakeReplica) ReadAt(context.Context, *pb.RangeRequest, mvcc.Revision) (*pb.RangeResponse, error) {
	if r.err != nil {
		return nil, r.err
	}
	return &pb.RangeResponse{Count: 7}, nil
}

func (r *fakeReplica) WaitClosed(context.Context, mvcc.Revision) error { return r.err }

// fakeLocal is a started replica of range d.
type fakeLocal struct {
	d     *placementpb.RangeDescriptor
	r     *fakeReplica
	ready chan struct{}
}

func newFakeLocal(d *placementpb.RangeDescriptor, r *fakeReplica) *fakeLocal {
	l := &fakeLocal{d: d, r: r, ready: make(chan struct{})}
	close(l.ready)
	return l
}

func (l *fakeLocal) Descriptor() *placementpb.RangeDescriptor { return l.d }
func (l *fakeLocal) Ready() <-chan struct{}                   { return l.ready }
func (l *fakeLocal) Replica() Replica                         { return l.r }

// fakeMember is a member's side of the node-to-node service.
type fakeMember struct {
	ranges   map[shard.RangeID]Local
	revErr   error
	splitErr error
}

func (m *fakeMember) Range(id shard.RangeID) Local {
	if l, ok := m.ranges[id]; ok {
		return l
	}
	return nil
}

func (m *fakeMember) Revisions(context.Context, int64, mvcc.Revision) (mvcc.Revision, error) {
	return 100, m.revErr
}
func (m *fakeMember) Published(*internalpb.ClosedRequest) {}
func (m *fakeMember) Kick(shard.RangeID, mvcc.Revision)   {}
func (m *fakeMember) SplitRange(context.Context, []byte) ([]*placementpb.RangeDescriptor, error) {
	return nil, m.splitErr
}
func (m *fakeMember) CompactLog(context.Context, shard.RangeID) error      { return nil }
func (m *fakeMember) RemoveMember(context.Context, uint64) error           { return nil }
func (m *fakeMember) UpdateMember(context.Context, uint64, []string) error { return nil }

// serveMember serves m as member id's node-to-node service in process and
// returns a dialer reaching it (and nothing else).
func serveMember(t *testing.T, id placement.NodeID, m Member) Dial {
	t.Helper()
	return serveMemberOf(t, id, m, nil)
}

// serveMemberOf is serveMember with the member's MemberOf.
func serveMemberOf(t *testing.T, id placement.NodeID, m Member, memberOf MemberOf) Dial {
	t.Helper()
	return serveMemberWith(t, Config{MemberID: id, MemberOf: memberOf}, m)
}

// serveMemberWith is serveMember with the member's router configured as cfg.
func serveMemberWith(t *testing.T, cfg Config, m Member) Dial {
	t.Helper()
	id := cfg.MemberID
	l := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	New(cfg).RegisterInternal(g, m)
	return serveOn(t, id, l, g)
}

// serveOn serves g on l and returns a dialer reaching it as member id (and
// nothing else).
func serveOn(t *testing.T, id placement.NodeID, l *bufconn.Listener, g *grpc.Server) Dial {
	t.Helper()
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///member", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return func(member placement.NodeID) (grpc.ClientConnInterface, error) {
		if member != id {
			return nil, errors.New("no such member")
		}
		return conn, nil
	}
}

// TestForwardErrors: a request forwarded from member 1 to range 5's leader,
// member 2, comes back with the error the leader's replica gave, typed,
// and toGRPC makes of it the status a client gets had the leader been
// local.
func TestForwardErrors(t *testing.T) {
	now := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), End: []byte("t"), Generation: 3}
	noLeader := status.Convert(rpctypes.ErrGRPCNoLeader).Message()
	outside := &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_OUTSIDE_RANGE, Message: "mvcc: key outside the store's span"}
	for _, tc := range []struct {
		name     string
		leader   error // the leader's replica's answer
		missing  bool  // member 2 has no replica of range 5
		want     error // errors.Is on what member 1 gets
		moved    bool
		grpcCode codes.Code
		grpcMsg  string
	}{
		{name: "ok"},
		{name: "compacted", leader: &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_COMPACTED, Message: "mvcc: compacted"},
			want: mvcc.ErrCompacted, grpcCode: codes.OutOfRange, grpcMsg: status.Convert(rpctypes.ErrGRPCCompacted).Message()},
		{name: "outside range", leader: outside, want: mvcc.ErrOutsideSpan, moved: true,
			grpcCode: codes.Unavailable, grpcMsg: "etcdserver: mvcc: key outside the store's span"},
		{name: "bad request", leader: &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_BAD_REQUEST, Message: "shard: bad"},
			grpcCode: codes.InvalidArgument, grpcMsg: "etcdserver: shard: bad"},
		{name: "other failure", leader: errors.New("disk on fire"), want: shard.ErrNoLeader,
			grpcCode: codes.Unavailable, grpcMsg: noLeader},
		{name: "timeout there", leader: shard.ErrTimeout, want: shard.ErrTimeout,
			grpcCode: codes.Unavailable, grpcMsg: status.Convert(rpctypes.ErrGRPCTimeout).Message()},
		{name: "leader lost there", leader: fmt.Errorf("%w (%w)", shard.ErrLeaderLost, context.DeadlineExceeded), want: shard.ErrLeaderLost,
			grpcCode: codes.Unavailable, grpcMsg: status.Convert(rpctypes.ErrGRPCTimeoutDueToLeaderFail).Message()},
		{name: "no replica there", missing: true, want: shard.ErrNoLeader,
			grpcCode: codes.Unavailable, grpcMsg: noLeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m2 := &fakeMember{ranges: map[shard.RangeID]Local{}}
			if !tc.missing {
				m2.ranges[5] = newFakeLocal(now, &fakeReplica{leader: 2, err: tc.leader})
			}
			f := NewForwarder(1, serveMember(t, 2, m2))
			// Member 1's replica has the range as it was before a split.
			was := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 2}
			c := f.Range(newFakeLocal(was, &fakeReplica{leader: 2}))
			calls := map[string]func(ctx context.Context) error{
				"write": func(ctx context.Context) error {
					_, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: []byte{0}}})
					return err
				},
				"read at": func(ctx context.Context) error {
					resp, err := c.ReadAt(ctx, &pb.RangeRequest{Key: []byte("n")}, 9)
					if err == nil && resp.Count != 7 {
						t.Errorf("read at answered %v", resp)
					}
					return err
				},
			}
			for name, call := range calls {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				err := call(ctx)
				cancel()
				if tc.want == nil && tc.grpcCode == codes.OK && tc.leader == nil {
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					continue
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("%s: got %v, want %v", name, err, tc.want)
				}
				if got := moved(err); got != tc.moved {
					t.Errorf("%s: moved(%v) = %v, want %v", name, err, got, tc.moved)
				}
				st := toGRPC(err)
				if got := moved(st); got != tc.moved {
					t.Errorf("%s: moved(toGRPC(%v)) = %v, want %v", name, err, got, tc.moved)
				}
				if s := status.Convert(st); s.Code() != tc.grpcCode || s.Message() != tc.grpcMsg {
					t.Errorf("%s: status %v %q, want %v %q", name, s.Code(), s.Message(), tc.grpcCode, tc.grpcMsg)
				}
				var o *shard.OutsideRangeError
				if errors.As(err, &o) && (o.Range.Generation != now.Generation || string(o.Range.End) != "t") {
					t.Errorf("%s: refused by range %v, want the leader's %v", name, o.Range, now)
				}
			}
		})
	}
}

// TestForwardLocalOutside: a range led here refusing keys outside it
// answers with this member's descriptor of it.
func TestForwardLocalOutside(t *testing.T) {
	d := &placementpb.RangeDescriptor{Id: 3, Start: []byte("a"), End: []byte("c"), Generation: 4}
	f := NewForwarder(1, func(placement.NodeID) (grpc.ClientConnInterface, error) { return nil, errors.New("no peers") })
	c := f.Range(newFakeLocal(d, &fakeReplica{leader: 1,
		err: &shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_OUTSIDE_RANGE, Message: "outside"}}))
	for _, err := range []error{
		func() error { _, err := c.Range(context.Background(), &pb.RangeRequest{}, true); return err }(),
		func() error { _, err := c.ReadTxn(context.Background(), &pb.TxnRequest{}, 0, true); return err }(),
		func() error { _, err := c.Status(context.Background(), true); return err }(),
		func() error { _, err := c.Hash(context.Background(), 0, false); return err }(),
		func() error { _, err := c.Alarms(context.Background(), false); return err }(),
		func() error { _, err := c.ReadAt(context.Background(), &pb.RangeRequest{}, 1); return err }(),
		func() error {
			_, err := c.Write(context.Background(), &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: []byte{0}}})
			return err
		}(),
	} {
		var o *shard.OutsideRangeError
		if !errors.As(err, &o) || o.Range != d || !moved(toGRPC(err)) {
			t.Errorf("got %v, want range %v's refusal of keys outside it", err, d)
		}
	}
}

// TestForwardOracle: the oracle's leader answering that it no longer leads
// is placement.ErrNotLeader to the caller.
func TestForwardOracle(t *testing.T) {
	m := &fakeMember{}
	f := NewForwarder(1, serveMember(t, 2, m))
	ctx := context.Background()
	if first, err := f.Revisions(ctx, 2, 3, 0); err != nil || first != 100 {
		t.Fatalf("Revisions = %d, %v", first, err)
	}
	m.revErr = placement.ErrNotLeader
	if _, err := f.Revisions(ctx, 2, 3, 0); !errors.Is(err, placement.ErrNotLeader) {
		t.Fatalf("Revisions: %v, want placement.ErrNotLeader", err)
	}
	if _, err := f.Revisions(ctx, 3, 3, 0); err == nil {
		t.Fatalf("Revisions of an unknown member: %v", err)
	}
}

// TestSplitRangeStatus: `cairn range split` gets the status of the node's
// refusal, code and message as before statuses left the node.
func TestSplitRangeStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{Refuse(ErrInvalid, "cairn: the split key is empty"), codes.InvalidArgument, "cairn: the split key is empty"},
		{Refuse(ErrNotFound, "cairn: no range holds %q", "k"), codes.NotFound, `cairn: no range holds "k"`},
		{Refuse(ErrPrecondition, "cairn: split range %d at %q: %w", 2, "k", placement.ErrReconfiguring),
			codes.FailedPrecondition, `cairn: split range 2 at "k": ` + placement.ErrReconfiguring.Error()},
		{shard.ErrNoLeader, codes.FailedPrecondition, "cairn: not the leader"},
		{&shard.Error{Code: shardpb.ErrorCode_ERROR_CODE_NO_SPACE, Message: "full"}, codes.Aborted, "16:full"},
		{errors.New("node: odd"), codes.Unavailable, "node: odd"},
	} {
		f := NewForwarder(1, serveMember(t, 2, &fakeMember{splitErr: tc.err}))
		nc, err := f.Client(2)
		if err != nil {
			t.Fatal(err)
		}
		_, err = nc.SplitRange(context.Background(), &internalpb.SplitRangeRequest{Key: []byte("k")})
		if s := status.Convert(err); s.Code() != tc.code || s.Message() != tc.msg {
			t.Errorf("%v: status %v %q, want %v %q", tc.err, s.Code(), s.Message(), tc.code, tc.msg)
		}
	}
}

// TestForwardNotLeader: a member that does not lead the range is asked
// again until the caller gives up, which then has no leader (or ran out
// of time on the wire).
func TestForwardNotLeader(t *testing.T) {
	d := &placementpb.RangeDescriptor{Id: 5, Generation: 1}
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 2, err: shard.ErrNoLeader})}}
	calls := 0
	dial := serveMember(t, 2, m2)
	f := NewForwarder(1, func(id placement.NodeID) (grpc.ClientConnInterface, error) { calls++; return dial(id) })
	c := f.Range(newFakeLocal(d, &fakeReplica{leader: 2}))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.WaitClosed(ctx, 3)
	if !errors.Is(err, shard.ErrNoLeader) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitClosed: %v, want no leader", err)
	}
	if calls < 2 {
		t.Fatalf("asked the member %d times, want it asked again", calls)
	}
}

// TestForwardMemberOf: a range's leader is found at the member MemberOf
// names for its replica id, here and at the leader (which checks it
// leads); without it, replica id 12 would be member 12's, reached nowhere.
func TestForwardMemberOf(t *testing.T) {
	d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m")}
	memberOf := func(r shard.RangeID, id shard.ReplicaID) (placement.NodeID, bool) {
		return 2, r == 5 && id == 12
	}
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 12})}}
	dial := serveMemberOf(t, 2, m2, memberOf)
	read := func(f *Forwarder) error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		resp, err := f.Range(newFakeLocal(d, &fakeReplica{leader: 12})).ReadAt(ctx, &pb.RangeRequest{Key: []byte("n")}, 9)
		if err == nil && resp.Count != 7 {
			t.Errorf("read at answered %v", resp)
		}
		return err
	}
	f := NewForwarder(1, dial)
	f.SetMemberOf(memberOf)
	if err := read(f); err != nil {
		t.Fatalf("read at, forwarded to replica 12's member 2: %v", err)
	}
	if err := read(NewForwarder(1, dial)); !errors.Is(err, shard.ErrNoLeader) {
		t.Fatalf("read at without MemberOf: %v, want no leader (member 12 unknown)", err)
	}
}

// TestRemoteRange: member 1 holds no replica of range 5 (on members 2 and
// 3, led by 3, the map's hint naming 2). Reads are answered by the hinted
// member; a write goes to member 2 first, whose NOT_LEADER answer names 3,
// and is retried there, which the hint then names; a member without the
// range (NO_RANGE) is passed over for the next holder.
func TestRemoteRange(t *testing.T) {
	d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 2, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 2, Id: 20}, {Member: 3, Id: 30}}}
	memberOf := func(_ shard.RangeID, id shard.ReplicaID) (placement.NodeID, bool) {
		return placement.NodeID(id / 10), true
	}
	led := func() *fakeReplica { return &fakeReplica{leader: 30} }
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, led())}}
	m3 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, led()), 6: newFakeLocal(&placementpb.RangeDescriptor{Id: 6}, led())}}
	dial2, dial3 := serveMemberOf(t, 2, m2, memberOf), serveMemberOf(t, 3, m3, memberOf)
	dial := func(m placement.NodeID) (grpc.ClientConnInterface, error) {
		if m == 2 {
			return dial2(m)
		}
		return dial3(m)
	}
	f := NewForwarder(1, dial)
	f.SetMemberOf(memberOf)
	rc := f.RemoteRange(d)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := rc.Range(ctx, &pb.RangeRequest{Key: []byte("p")}, true); err != nil {
		t.Fatalf("remote range read: %v", err)
	}
	if _, err := rc.Status(ctx, false); err != nil {
		t.Fatalf("remote status: %v", err)
	}
	if m, _ := rc.LeaderMember(); m != 2 {
		t.Fatalf("a read moved the hint to %d", m)
	}
	if _, err := rc.Write(ctx, &shardpb.Request{}); err != nil {
		t.Fatalf("remote write: %v", err)
	}
	if m, ok := rc.LeaderMember(); !ok || m != 3 {
		t.Fatalf("hint %d after a NOT_LEADER naming 3", m)
	}
	if resp, err := rc.ReadAt(ctx, &pb.RangeRequest{Key: []byte("p")}, 9); err != nil || resp.Count != 7 {
		t.Fatalf("remote read at a revision: %v %v", resp, err)
	}
	// Range 6 is on member 3 alone; the map's hint names member 2.
	rc6 := f.RemoteRange(&placementpb.RangeDescriptor{Id: 6, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 2, Id: 20}, {Member: 3, Id: 30}}})
	if _, err := rc6.Hash(ctx, 0, true); err != nil {
		t.Fatalf("remote hash past a member without the range: %v", err)
	}
	// Nobody holds range 7: the read fails once ctx ends.
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	rc7 := f.RemoteRange(&placementpb.RangeDescriptor{Id: 7, ReplicaSet: []*placementpb.Replica{{Member: 2, Id: 20}}})
	if _, err := rc7.Alarms(short, false); !errors.Is(err, shard.ErrNoLeader) {
		t.Fatalf("a read of a range no member serves: %v", err)
	}
}

// TestForwardWriteTimeouts: a write forwarded to the range's leader that
// cannot commit there comes back as etcd's timeout errors, not as "no
// leader" or the caller's deadline: the leader's member answers before
// the caller's deadline with its own timeout (the write's outcome
// unknown: "request timed out"), or its leader-failure error if it lost
// the lead meanwhile; a leader's member that never answers (hung, cut
// off) is a leader failure. Both for a range held here (its leader
// elsewhere) and a remote one.
func TestForwardWriteTimeouts(t *testing.T) {
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	for _, tc := range []struct {
		name string
		hold func(ctx context.Context) error
		want error
		msg  error // the client's status
	}{
		{name: "leader up, not committing",
			hold: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() },
			want: shard.ErrTimeout, msg: rpctypes.ErrGRPCTimeout},
		{name: "leader deposed while waiting",
			hold: func(ctx context.Context) error {
				<-ctx.Done()
				return fmt.Errorf("%w (%w)", shard.ErrLeaderLost, ctx.Err())
			},
			want: shard.ErrLeaderLost, msg: rpctypes.ErrGRPCTimeoutDueToLeaderFail},
		{name: "leader hung",
			hold: func(context.Context) error { <-stuck; return nil },
			want: shard.ErrLeaderLost, msg: rpctypes.ErrGRPCTimeoutDueToLeaderFail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 1, Leader: 2,
				ReplicaSet: []*placementpb.Replica{{Member: 1, Id: 1}, {Member: 2, Id: 2}}}
			m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 2, hold: tc.hold})}}
			f := NewForwarder(1, serveMember(t, 2, m2))
			for name, c := range map[string]*RangeClient{
				"held here": f.Range(newFakeLocal(d, &fakeReplica{leader: 2})),
				"remote":    f.RemoteRange(d),
			} {
				// The leader's member answers answerBefore's margin (a
				// tenth of this) before the deadline: 200 ms for its answer
				// to come back on a loaded machine (CI ran this at 500 ms, a
				// 50 ms margin, and the answer lost the race once).
				const timeout = 2 * time.Second
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				start := time.Now()
				_, err := c.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Compaction{Compaction: []byte{0}}})
				took := time.Since(start)
				cancel()
				if !errors.Is(err, tc.want) || (tc.want == shard.ErrTimeout && errors.Is(err, shard.ErrLeaderLost)) {
					t.Errorf("%s: %v, want %v", name, err, tc.want)
				}
				if st, want := status.Convert(toGRPC(err)), status.Convert(tc.msg); st.Code() != want.Code() || st.Message() != want.Message() {
					t.Errorf("%s: the client gets %v %q, want %v %q", name, st.Code(), st.Message(), want.Code(), want.Message())
				}
				if took > timeout+500*time.Millisecond {
					t.Errorf("%s: answered after %v, past the deadline of %v", name, took, timeout)
				}
			}
		})
	}
}

// TestRemoteReadHedged: a read of a remote range whose hinted holder
// (member 2) does not answer — its member hung, or cut off from the
// range's leader — is asked of the next holder (member 3) too after
// hedgeAfter, answers from there well before the caller's deadline, and
// the hint moves off the stalled member.
func TestRemoteReadHedged(t *testing.T) {
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	d := &placementpb.RangeDescriptor{Id: 5, Start: []byte("m"), Generation: 2, Leader: 2,
		ReplicaSet: []*placementpb.Replica{{Member: 2, Id: 2}, {Member: 3, Id: 3}}}
	hung := &fakeReplica{leader: 2, hold: func(ctx context.Context) error {
		select {
		case <-stuck:
		case <-ctx.Done():
		}
		return ctx.Err()
	}}
	m2 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, hung)}}
	m3 := &fakeMember{ranges: map[shard.RangeID]Local{5: newFakeLocal(d, &fakeReplica{leader: 3})}}
	dial2, dial3 := serveMember(t, 2, m2), serveMember(t, 3, m3)
	f := NewForwarder(1, func(m placement.NodeID) (grpc.ClientConnInterface, error) {
		if m == 2 {
			return dial2(m)
		}
		return dial3(m)
	})
	rc := f.RemoteRange(d)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := rc.Range(ctx, &pb.RangeRequest{Key: []byte("p")}, true); err != nil {
		t.Fatalf("remote read with its hinted holder stalled: %v", err)
	}
	if took := time.Since(start); took < hedgeAfter || took > hedgeAfter+2*time.Second {
		t.Fatalf("answered after %v, want about hedgeAfter (%v)", took, hedgeAfter)
	}
	if h := rc.hint.Load(); h != 3 {
		t.Fatalf("hint %d after member 2 stalled a read that member 3 answered", h)
	}
	// The next read goes to member 3 first and answers at once.
	start = time.Now()
	if _, err := rc.Range(ctx, &pb.RangeRequest{Key: []byte("p")}, true); err != nil || time.Since(start) >= hedgeAfter {
		t.Fatalf("second read: %v after %v", err, time.Since(start))
	}
}
