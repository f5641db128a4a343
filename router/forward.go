package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Forwarding in sharded mode: what only a range's leader may do (stamp a
// write, answer at a closed revision) or only the placement group's leader
// may do (hand out revisions) is sent to the member that leads, over the
// node-to-node service (internalpb.Node, served by internal.go on every
// member's peer port, peer.go). A refusal or failure there comes back in the
// response's Error field and is turned back into the Go error it was
// (decodeError): a state machine's refusal as *shard.Error, a refusal of
// keys outside the range as *shard.OutsideRangeError with the range's
// descriptor, "not the leader" as a reason to look again, a timeout
// there as shard.ErrTimeout or shard.ErrLeaderLost (etcd's "request timed
// out" and "request timed out, possibly due to previous leader failure",
// which reach the client as they are). gRPC statuses are only what the
// transport itself fails with.

// forwardRetry is the wait between tries while leadership is moving.
const forwardRetry = 10 * time.Millisecond

// errNotLeader is a range's member answering that it does not lead the
// range: the caller looks for the leader again.
var errNotLeader = errors.New("router: not the leader")

// errUnreachable is a call that failed in the transport before it could
// reach the member (wrapped with shard.ErrNoLeader): the member is down or
// restarting, and nothing was done there, so the caller may look for the
// leader again and retry whatever it was.
var errUnreachable = errors.New("router: member unreachable")

// errNoRange is a member answering that it has no started replica of the
// range (wrapped with shard.ErrNoLeader).
var errNoRange = errors.New("router: no replica of the range there")

// leaderHinted is a NOT_LEADER or NO_RANGE answer naming the member its
// answerer believes leads the range.
type leaderHinted struct {
	err    error
	leader uint64
}

func (e *leaderHinted) Error() string { return e.err.Error() }
func (e *leaderHinted) Unwrap() error { return e.err }

// hintOf is the leader a refusal named (0: none).
func hintOf(err error) uint64 {
	var h *leaderHinted
	if errors.As(err, &h) {
		return h.leader
	}
	return 0
}

// Replica is this member's replica of a range as forwarding uses it; the
// shard package's Replica implements it.
type Replica interface {
	Shard
	// ReadAt answers req at rev once the range's closed revision has
	// reached it (this replica leads).
	ReadAt(ctx context.Context, req *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error)
	// WaitClosed returns once the range's closed revision has reached rev
	// (this replica leads).
	WaitClosed(ctx context.Context, rev mvcc.Revision) error
	ShadowReads
	ReplicaCounters
}

// Local is this member's replica of one range, as the router reaches it
// (LocalRange makes it of a shard.Range).
type Local interface {
	// Descriptor is the range as this member has it now (a split applied
	// here replaces it).
	Descriptor() *placementpb.RangeDescriptor
	// Ready is closed once the replica is started (a split's new range
	// starts as the split applies).
	Ready() <-chan struct{}
	// Replica is the started replica; it is called only once Ready is
	// closed.
	Replica() Replica
}

// MemberOf names the member holding replica id of range r (the node's
// registry of replicas answers it; false: unknown). nil, and an unknown
// replica, mean the member whose id is the replica's: single-group mode's
// replicas and ranges founded before replica ids were allocated have
// their members' ids.
type MemberOf func(r shard.RangeID, id shard.ReplicaID) (placement.NodeID, bool)

// member is the member holding replica id of range r as m names it.
func (m MemberOf) member(r shard.RangeID, id shard.ReplicaID) placement.NodeID {
	if m != nil {
		if member, ok := m(r, id); ok {
			return member
		}
	}
	return placement.NodeID(id)
}

// Dial returns a connection to member's node-to-node service.
type Dial func(member placement.NodeID) (grpc.ClientConnInterface, error)

// Forwarder sends requests to the members that lead what they need, and
// serves the ranges of this member as the router uses them (RangeClient).
// It holds no mutable state of its own (the dialer caches connections).
type Forwarder struct {
	self     placement.NodeID
	dial     Dial
	memberOf MemberOf // set before use (SetMemberOf)
	// streams carry forwarded writes (forwardstream.go).
	streams *forwardStreams
}

// NewForwarder returns the forwarder of member self, reaching the others
// through dial.
func NewForwarder(self placement.NodeID, dial Dial) *Forwarder {
	return &Forwarder{self: self, dial: dial, streams: &forwardStreams{}}
}

// Close ends the forwarder's streams (writes waiting on them fail) and
// waits for their goroutines; the forwarder sends unary calls after.
func (f *Forwarder) Close() { f.streams.close() }

// SetMemberOf sets how the forwarder finds the member holding a range's
// replica (its leader's, to forward to); nil: the member whose id is the
// replica's. It must be called before the forwarder is used.
func (f *Forwarder) SetMemberOf(m MemberOf) { f.memberOf = m }

// Client returns a client of member's node-to-node service.
func (f *Forwarder) Client(member placement.NodeID) (internalpb.NodeClient, error) {
	conn, err := f.dial(member)
	if err != nil {
		return nil, err
	}
	return internalpb.NewNodeClient(conn), nil
}

// Revisions asks member's node, whose placement replica leads, for count
// revisions of the oracle: the first of them. Not leading is
// placement.ErrNotLeader.
func (f *Forwarder) Revisions(ctx context.Context, member placement.NodeID, count int64, above mvcc.Revision) (mvcc.Revision, error) {
	nc, err := f.Client(member)
	if err != nil {
		return 0, err
	}
	resp, err := nc.Revisions(ctx, &internalpb.RevisionsRequest{Count: count, Above: int64(above)})
	if err != nil {
		return 0, rpcError(err)
	}
	if err := decodeError(resp.Error, placement.ErrNotLeader); err != nil {
		return 0, err
	}
	return mvcc.Revision(resp.First), nil
}

// WriteTo proposes req to range id through member, which must lead it.
func (f *Forwarder) WriteTo(ctx context.Context, member placement.NodeID, id shard.RangeID, req *shardpb.Request) (*shardpb.Response, error) {
	nc, err := f.Client(member)
	if err != nil {
		return nil, err
	}
	return f.write(ctx, member, nc, id, req)
}

// CompactLog has member snapshot its replica of range id and drop its
// raft log up to the snapshot.
func (f *Forwarder) CompactLog(ctx context.Context, member placement.NodeID, id shard.RangeID) error {
	nc, err := f.Client(member)
	if err != nil {
		return err
	}
	resp, err := nc.CompactLog(ctx, &internalpb.CompactLogRequest{Range: uint64(id)})
	if err != nil {
		return rpcError(err)
	}
	return decodeError(resp.Error, errNotLeader)
}

// writeVia proposes req to range id through nc's member. A transport
// failure is errUnreachable only where gRPC never opened a stream for the
// call (no peer was reached: the request was certainly not sent, so it may
// be sent again); once it did, the member may have proposed the write
// before it failed, and the outcome is unknown (shard.ErrLeaderLost).
// A write the member never answered before ctx's deadline is
// shard.ErrLeaderLost too, as etcd answers a proposal whose leader went
// away: a leader that is up answers its own timeout before the deadline
// (answerBefore), so no answer at all means its member failed, hung or
// was cut off.
func writeVia(ctx context.Context, nc internalpb.NodeClient, id shard.RangeID, req *shardpb.Request) (*shardpb.Response, error) {
	var reached peer.Peer
	resp, err := nc.Write(ctx, &internalpb.WriteRequest{Range: uint64(id), Request: req}, grpc.Peer(&reached))
	return writeAnswer(ctx, id, resp, err, reached.Addr != nil)
}

// deadlinePassed reports whether ctx's deadline has passed, by the clock
// as well as by ctx.Err(): at the deadline the callee's gRPC server resets
// the stream, and the client reports that as DeadlineExceeded once the
// clock is past the deadline, which can be before ctx's own timer has run
// on a loaded machine.
func deadlinePassed(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// RangeClient is a range as the router uses it on this member: reads from
// the local replica, writes that take a revision and reads at a closed
// revision through the range's leader, here or on another member
// (RangeShard). A range this member holds no replica of (Forwarder.
// RemoteRange) is read through a member that holds one (the Read call:
// the leader hint's first, then the others the descriptor names) and
// written through its leader as the hint names it.
type RangeClient struct {
	f  *Forwarder
	l  Local // nil: no replica here
	id shard.RangeID
	// desc is a remote range's descriptor (the map's, RangeCache.PutMap).
	desc atomic.Pointer[placementpb.RangeDescriptor]
	// hint is the member last known to lead a remote range (0: unknown):
	// the map's leader hint, then NOT_LEADER answers'.
	hint atomic.Uint64
	// split: a remote range 1 was seen split (counting).
	split atomic.Bool
}

// Range returns the client of this member's replica l of a range.
func (f *Forwarder) Range(l Local) *RangeClient {
	return &RangeClient{f: f, l: l, id: shard.RangeID(l.Descriptor().Id)}
}

// RemoteRange returns the client of range d, which this member holds no
// replica of.
func (f *Forwarder) RemoteRange(d *placementpb.RangeDescriptor) *RangeClient {
	c := &RangeClient{f: f, id: shard.RangeID(d.Id)}
	c.setDescriptor(d)
	return c
}

// setDescriptor replaces a remote range's descriptor (the map's), taking
// its leader hint if it has one.
func (c *RangeClient) setDescriptor(d *placementpb.RangeDescriptor) {
	c.desc.Store(d)
	if d.Leader != 0 && c.hint.Load() == 0 {
		c.hint.Store(d.Leader)
	}
}

// Descriptor is the range as this member knows it: its replica's, else the
// map's.
func (c *RangeClient) Descriptor() *placementpb.RangeDescriptor {
	if c.l != nil {
		return c.l.Descriptor()
	}
	return c.desc.Load()
}

// counting reports, of a remote range 1, whether it still numbers its
// revisions itself: while the map has it spanning the whole key space,
// never again once the map showed it split (sticky).
func (c *RangeClient) counting() bool {
	if c.split.Load() {
		return false
	}
	d := c.Descriptor()
	if d == nil || len(d.Start) != 0 || len(d.End) != 0 {
		c.split.Store(true)
		return false
	}
	return true
}

// Remote reports whether this member holds no replica of the range.
func (c *RangeClient) Remote() bool { return c.l == nil }

// Range reads req from the local replica once it is started.
func (c *RangeClient) Range(ctx context.Context, req *pb.RangeRequest, linearizable bool) (*pb.RangeResponse, error) {
	if c.l == nil {
		data, err := proto.Marshal(req)
		if err != nil {
			return nil, err
		}
		out := &pb.RangeResponse{}
		err = c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_RangeRequest{RangeRequest: data}},
			func(resp *internalpb.ReadResponse) error { return proto.Unmarshal(resp.Response, out) })
		return out, err
	}
	return readLocal(ctx, c, func(r Replica) (*pb.RangeResponse, error) { return r.Range(ctx, req, linearizable) })
}

// ReadTxn reads a read-only txn from the local replica once it is started.
func (c *RangeClient) ReadTxn(ctx context.Context, req *pb.TxnRequest, floor mvcc.Revision, linearizable bool) (*pb.TxnResponse, error) {
	if c.l == nil {
		data, err := proto.Marshal(req)
		if err != nil {
			return nil, err
		}
		out := &pb.TxnResponse{}
		err = c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable,
			Query: &internalpb.ReadRequest_Txn{Txn: &internalpb.ReadTxn{Txn: data, Floor: int64(floor)}}},
			func(resp *internalpb.ReadResponse) error { return proto.Unmarshal(resp.Response, out) })
		return out, err
	}
	return readLocal(ctx, c, func(r Replica) (*pb.TxnResponse, error) { return r.ReadTxn(ctx, req, floor, linearizable) })
}

// Status reads the local replica's status once it is started.
func (c *RangeClient) Status(ctx context.Context, linearizable bool) (shard.Status, error) {
	if c.l == nil {
		var out shard.Status
		err := c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_Status{Status: &internalpb.StatusQuery{}}},
			func(resp *internalpb.ReadResponse) error {
				st := resp.Status
				out = shard.Status{Revision: mvcc.Revision(st.GetRevision()), CompactRevision: mvcc.Revision(st.GetCompactRevision()),
					AppliedIndex: st.GetAppliedIndex(), Closed: mvcc.Revision(st.GetClosed()), Fence: st.GetFence(), Counting: st.GetCounting()}
				return nil
			})
		return out, err
	}
	return readLocal(ctx, c, func(r Replica) (shard.Status, error) { return r.Status(ctx, linearizable) })
}

// Hash reads the local replica's hash at rev once it is started.
func (c *RangeClient) Hash(ctx context.Context, rev mvcc.Revision, linearizable bool) (shard.HashResult, error) {
	if c.l == nil {
		var out shard.HashResult
		err := c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_Hash{Hash: &internalpb.HashQuery{Revision: int64(rev)}}},
			func(resp *internalpb.ReadResponse) error {
				h := resp.Hash
				out = shard.HashResult{Hash: h.GetHash(), Revision: mvcc.Revision(h.GetRevision()), CompactRevision: mvcc.Revision(h.GetCompactRevision())}
				return nil
			})
		return out, err
	}
	return readLocal(ctx, c, func(r Replica) (shard.HashResult, error) { return r.Hash(ctx, rev, linearizable) })
}

// Alarms reads the local replica's alarms once it is started.
func (c *RangeClient) Alarms(ctx context.Context, linearizable bool) ([]*pb.AlarmMember, error) {
	if c.l == nil {
		out := &pb.AlarmResponse{}
		err := c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_Alarms{Alarms: &internalpb.AlarmsQuery{}}},
			func(resp *internalpb.ReadResponse) error { return proto.Unmarshal(resp.Response, out) })
		return out.Alarms, err
	}
	return readLocal(ctx, c, func(r Replica) ([]*pb.AlarmMember, error) { return r.Alarms(ctx, linearizable) })
}

// AuthState reads the range's encoded auth state (auth.State.Marshal) from
// a member holding it: what a member without range 1 checks callers by.
func (c *RangeClient) AuthState(ctx context.Context, linearizable bool) ([]byte, error) {
	var out []byte
	err := c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_Auth{Auth: &internalpb.AuthQuery{}}},
		func(resp *internalpb.ReadResponse) error { out = resp.Response; return nil })
	return out, err
}

// Registered reads, at a remote lease home, the ranges registered as
// holding lease id's keys.
func (c *RangeClient) Registered(ctx context.Context, id int64, linearizable bool) ([]shard.RangeID, error) {
	var out []shard.RangeID
	err := c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_Registered{Registered: &internalpb.LeaseQuery{Lease: id}}},
		func(resp *internalpb.ReadResponse) error {
			for _, r := range resp.Ranges {
				out = append(out, shard.RangeID(r))
			}
			return nil
		})
	return out, err
}

// ShadowKeys reads the keys a remote range holds of lease id, homed
// elsewhere.
func (c *RangeClient) ShadowKeys(ctx context.Context, id int64, linearizable bool) ([][]byte, error) {
	var out [][]byte
	err := c.remoteRead(ctx, &internalpb.ReadRequest{Linearizable: linearizable, Query: &internalpb.ReadRequest_ShadowKeys{ShadowKeys: &internalpb.LeaseQuery{Lease: id}}},
		func(resp *internalpb.ReadResponse) error { out = resp.Keys; return nil })
	return out, err
}

// holders lists the members to try for a remote range, the leader hint's
// first, then the others its descriptor names (voters before learners).
func (c *RangeClient) holders() []placement.NodeID {
	var out []placement.NodeID
	if h := placement.NodeID(c.hint.Load()); h != 0 && h != c.f.self {
		out = append(out, h)
	}
	d := c.Descriptor()
	if d == nil {
		return out
	}
	pairs := placement.Voters(d)
	for _, r := range placement.Pairs(d) {
		if r.Learner {
			pairs = append(pairs, r)
		}
	}
	for _, r := range pairs {
		if m := placement.NodeID(r.Member); m != c.f.self && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// hedgeAfter is how long a remote read waits on one holder before it asks
// the next one too (remoteRead).
var hedgeAfter = 500 * time.Millisecond

// readAnswer is a holder's answer to a remote read.
type readAnswer struct {
	member placement.NodeID
	resp   *internalpb.ReadResponse
	err    error
}

// remoteRead sends req (its range set here) to the members holding the
// range (holders), the next one as soon as one cannot answer, trying the
// round again while none can, until ctx ends; take reads a successful
// answer. A holder that has not answered within hedgeAfter is left to go
// on while the next one is asked too, and the first answer wins: a read
// is free of side effects, so asking twice is safe, and a holder that
// stalls — its member hung, or cut off from the range's leader so that
// its read index never comes — does not hold the read until ctx ends.
func (c *RangeClient) remoteRead(ctx context.Context, req *internalpb.ReadRequest, take func(*internalpb.ReadResponse) error) error {
	req.Range = uint64(c.id)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the asks still out
	answers := make(chan readAnswer)
	ask := func(m placement.NodeID) {
		a := readAnswer{member: m}
		var nc internalpb.NodeClient
		if nc, a.err = c.f.Client(m); a.err == nil {
			a.resp, a.err = nc.Read(ctx, req)
		}
		select {
		case answers <- a:
		case <-ctx.Done():
		}
	}
	var (
		last error              = fmt.Errorf("%w: range %d: no member holds it", shard.ErrNoLeader, c.id)
		busy                    = map[placement.NodeID]bool{} // asked, not answered
		todo []placement.NodeID                               // of this round
		// heard: some holder answered (last is its refusal), so a
		// re-ask still out when ctx ends does not hide what it said.
		heard bool
	)
	askNext := func() {
		if len(todo) == 0 {
			for _, m := range c.holders() {
				if !busy[m] {
					todo = append(todo, m)
				}
			}
		}
		if len(todo) > 0 {
			busy[todo[0]] = true
			go ask(todo[0])
			todo = todo[1:]
		}
	}
	// wait is how long until the next holder is asked: hedgeAfter while
	// one is asked, forwardRetry once none is (the round is over).
	wait := func() time.Duration {
		if len(busy) == 0 {
			return forwardRetry
		}
		return hedgeAfter
	}
	askNext()
	timer := time.NewTimer(wait())
	defer timer.Stop()
	for {
		select {
		case a := <-answers:
			delete(busy, a.member)
			heard = true
			done, err := c.takeRead(ctx, a, take)
			if done {
				if h := placement.NodeID(c.hint.Load()); err == nil && busy[h] {
					// The hinted member stalled: the one that answered
					// first next time (a write it does not lead is
					// told where the leader is).
					c.hint.CompareAndSwap(uint64(h), uint64(a.member))
				}
				return err
			}
			last = err
			if len(todo) > 0 {
				askNext() // the next holder of the round, at once
				timer.Reset(wait())
			} else if len(busy) == 0 {
				timer.Reset(wait())
			}
		case <-timer.C:
			askNext()
			timer.Reset(wait())
		case <-ctx.Done():
			switch {
			case len(busy) > 0 && !heard:
				return ctx.Err() // as a call cut short by ctx would
			case errors.Is(last, shard.ErrTimeout):
				return last // etcd's timeout, as the holder gave it
			case errors.Is(last, errNotLeader):
				last = shard.ErrNoLeader
			}
			return fmt.Errorf("%w: range %d: %v", shard.ErrNoLeader, c.id, last)
		}
	}
}

// takeRead reads a holder's answer to a remote read: done with take's
// error if it answered, or with its refusal, or ctx ended; otherwise
// (not done) why it could not, for the next holder to be asked.
func (c *RangeClient) takeRead(ctx context.Context, a readAnswer, take func(*internalpb.ReadResponse) error) (done bool, err error) {
	if a.err != nil {
		return ctx.Err() != nil, rpcError(a.err)
	}
	if a.resp.Error != nil {
		err := decodeError(a.resp.Error, errNotLeader)
		if l := hintOf(err); l != 0 {
			c.hint.Store(l)
		}
		if errors.Is(err, errNotLeader) || errors.Is(err, shard.ErrNoLeader) || errors.Is(err, shard.ErrTimeout) {
			return false, err
		}
		return true, c.outside(err)
	}
	return true, take(a.resp)
}

// readLocal runs read on c's local replica once it is started, attaching
// the range's descriptor to a refusal of keys outside it.
func readLocal[T any](ctx context.Context, c *RangeClient, read func(Replica) (T, error)) (T, error) {
	if err := c.Wait(ctx); err != nil {
		var zero T
		return zero, err
	}
	v, err := read(c.l.Replica())
	return v, c.outside(err)
}

// Leader is the range's leader as this member knows it (none while the
// replica is starting); of a remote range, the replica of the member its
// hint names (term 0).
func (c *RangeClient) Leader() (shard.ReplicaID, uint64, bool) {
	if c.l == nil {
		h, ok := c.LeaderMember()
		if !ok {
			return 0, 0, false
		}
		id, ok := placement.ReplicaOf(c.Descriptor(), h)
		return id, 0, ok
	}
	select {
	case <-c.l.Ready():
		return c.l.Replica().Leader()
	default:
		return 0, 0, false
	}
}

// LeaderMember is the member leading the range as this member knows it.
func (c *RangeClient) LeaderMember() (placement.NodeID, bool) {
	if c.l == nil {
		// The hint if the descriptor still names it (a move may have
		// taken the range off the member that led it), else the first
		// holder, which forwards what it does not lead.
		d := c.Descriptor()
		for _, m := range c.holders() {
			if _, ok := placement.ReplicaOf(d, m); ok {
				return m, true
			}
		}
		return 0, false
	}
	id, _, ok := c.Leader()
	if !ok {
		return 0, false
	}
	return c.f.memberOf.member(c.id, id), true
}

// Wait waits until the range's replica here is started (at once for a
// remote range).
func (c *RangeClient) Wait(ctx context.Context) error {
	if c.l == nil {
		return nil
	}
	select {
	case <-c.l.Ready():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: range %d is starting: %v", shard.ErrNoLeader, c.id, ctx.Err())
	}
}

// outside attaches the range's descriptor to a refusal of keys outside it.
func (c *RangeClient) outside(err error) error { return shard.WithRange(err, c.Descriptor()) }

// viaLeader runs local while this member leads the range and remote on
// the leader's member otherwise, trying again while leadership moves. A
// remote range's leader is its hint's member, then each other holder in
// turn (a NOT_LEADER answer naming the leader moves the hint there).
func (c *RangeClient) viaLeader(ctx context.Context, local func(Replica) error, remote func(placement.NodeID, internalpb.NodeClient) error) error {
	if c.l == nil {
		return c.viaHint(ctx, remote)
	}
	if err := c.Wait(ctx); err != nil {
		return err
	}
	r := c.l.Replica()
	for {
		leader, _, ok := r.Leader()
		var err error
		switch {
		case !ok:
			err = shard.ErrNoLeader
		case c.f.memberOf.member(c.id, leader) == c.f.self:
			if err = c.outside(local(r)); !errors.Is(err, shard.ErrNoLeader) {
				return err
			}
		default:
			var nc internalpb.NodeClient
			m := c.f.memberOf.member(c.id, leader)
			if nc, err = c.f.Client(m); err == nil {
				if err = remote(m, nc); !errors.Is(err, errNotLeader) && !errors.Is(err, errUnreachable) {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: range %d: %v", shard.ErrNoLeader, c.id, err)
		case <-time.After(forwardRetry):
		}
	}
}

// viaHint is viaLeader for a remote range.
func (c *RangeClient) viaHint(ctx context.Context, remote func(placement.NodeID, internalpb.NodeClient) error) error {
	var err error = shard.ErrNoLeader
	for {
		for _, m := range c.holders() {
			var nc internalpb.NodeClient
			if nc, err = c.f.Client(m); err != nil {
				continue
			}
			err = remote(m, nc)
			if errors.Is(err, errUnreachable) {
				c.hint.CompareAndSwap(uint64(m), 0) // down: others first next time
				continue
			}
			if !errors.Is(err, errNotLeader) && !errors.Is(err, errNoRange) {
				switch {
				case err == nil:
					c.hint.Store(uint64(m))
				case errors.Is(err, shard.ErrNoLeader), errors.Is(err, shard.ErrTimeout):
					c.hint.CompareAndSwap(uint64(m), 0) // the member failed: others first next time
				}
				return c.outside(err)
			}
			if l := hintOf(err); l != 0 && l != c.hint.Load() {
				c.hint.Store(l)
				break // a member named the leader: try it first
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: range %d: %v", shard.ErrNoLeader, c.id, err)
		case <-time.After(forwardRetry):
		}
	}
}

// Write proposes req: requests that take a revision through the range's
// leader, which stamps them, and compactions, which the leader's closed
// revision (carried by its proposals) lets reach past the range's last
// write; others (registrations, member records) from here, as raft
// carries them to the leader. While the range has no leader, or its
// leader's member cannot be reached (the request was not sent), it waits
// for one until ctx ends. A write whose leader failed once it had the
// request fails with shard.ErrLeaderLost (its outcome is unknown), after
// the range answers a linearizable read again — a new leader has committed
// in its term, so the write has either applied or never will.
func (c *RangeClient) Write(ctx context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	if err := c.Wait(ctx); err != nil {
		return nil, err
	}
	if c.l != nil && !shard.Stamps(req) && req.GetCompaction() == nil {
		out, err := c.l.Replica().Write(ctx, req)
		return out, c.outside(err)
	}
	var out *shardpb.Response
	err := c.viaLeader(ctx, func(r Replica) (err error) {
		out, err = r.Write(ctx, req)
		return err
	}, func(m placement.NodeID, nc internalpb.NodeClient) (err error) {
		out, err = c.f.write(ctx, m, nc, c.id, req)
		return err
	})
	if errors.Is(err, shard.ErrLeaderLost) {
		sctx, cancel := context.WithTimeout(ctx, settleTimeout)
		_, _ = c.Status(sctx, true)
		cancel()
	}
	return out, err
}

// settleTimeout bounds how long a write whose leader failed waits for the
// range to answer again before it fails (RangeClient.Write).
const settleTimeout = DefaultRequestTimeout

// ReadAt answers req at rev, through the range's leader.
func (c *RangeClient) ReadAt(ctx context.Context, req *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error) {
	var out *pb.RangeResponse
	err := c.viaLeader(ctx, func(r Replica) (err error) {
		out, err = r.ReadAt(ctx, req, rev)
		return err
	}, func(_ placement.NodeID, nc internalpb.NodeClient) error {
		data, err := proto.Marshal(req)
		if err != nil {
			return err
		}
		resp, err := nc.ReadAt(ctx, &internalpb.ReadAtRequest{Range: uint64(c.id), Request: data, Revision: int64(rev)})
		if err != nil {
			return rpcError(err)
		}
		if err := decodeError(resp.Error, errNotLeader); err != nil {
			return err
		}
		out = &pb.RangeResponse{}
		return proto.Unmarshal(resp.Response, out)
	})
	return out, err
}

// WaitClosed returns once the range's leader has closed rev.
func (c *RangeClient) WaitClosed(ctx context.Context, rev mvcc.Revision) error {
	return c.viaLeader(ctx, func(r Replica) error { return r.WaitClosed(ctx, rev) },
		func(_ placement.NodeID, nc internalpb.NodeClient) error {
			resp, err := nc.WaitClosed(ctx, &internalpb.WaitClosedRequest{Range: uint64(c.id), Revision: int64(rev)})
			if err != nil {
				return rpcError(err)
			}
			return decodeError(resp.Error, errNotLeader)
		})
}

// encodeError is err as the node-to-node service's responses carry it.
func encodeError(err error) *internalpb.Error {
	if err == nil {
		return nil
	}
	var (
		se *shard.Error
		or *shard.OutsideRangeError
	)
	switch {
	case errors.Is(err, shard.ErrLeaderLost):
		return &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_LEADER_LOST, Message: err.Error()}
	case errors.Is(err, shard.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		// A deadline there is the request's (the caller's, or the
		// member's answerBefore): etcd's timeout, as etcd answers a
		// proposal whose context ended.
		return &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_TIMEOUT, Message: err.Error()}
	case errors.Is(err, errNotLeader), errors.Is(err, shard.ErrNoLeader), errors.Is(err, placement.ErrNotLeader):
		return &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_NOT_LEADER, Message: err.Error()}
	case errors.As(err, &or):
		return &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_SHARD, Shard: or.Err.Code, Message: or.Err.Message,
			Range: or.Range}
	case errors.As(err, &se):
		return &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_SHARD, Shard: se.Code, Message: se.Message}
	}
	return &internalpb.Error{Message: err.Error()}
}

// decodeError turns a response's Error back into the error it was:
// notLeader for a member that does not lead, the state machine's refusal,
// a timeout there as shard.ErrTimeout or shard.ErrLeaderLost (etcd's two
// timeout errors, which the client sees as they are), and for anything
// else a member that could not serve (shard.ErrNoLeader: the client may
// try again later).
func decodeError(e *internalpb.Error, notLeader error) error {
	if e == nil {
		return nil
	}
	switch e.Code {
	case internalpb.ErrorCode_ERROR_CODE_NOT_LEADER:
		if e.Leader != 0 {
			return &leaderHinted{err: notLeader, leader: e.Leader}
		}
		return notLeader
	case internalpb.ErrorCode_ERROR_CODE_NO_RANGE:
		err := fmt.Errorf("%w: %w: %s", shard.ErrNoLeader, errNoRange, e.Message)
		if e.Leader != 0 {
			return &leaderHinted{err: err, leader: e.Leader}
		}
		return err
	case internalpb.ErrorCode_ERROR_CODE_SHARD:
		se := &shard.Error{Code: e.Shard, Message: e.Message}
		if e.Range != nil {
			return &shard.OutsideRangeError{Range: e.Range, Err: se}
		}
		return se
	case internalpb.ErrorCode_ERROR_CODE_LEADER_LOST:
		return fmt.Errorf("%w (there: %s)", shard.ErrLeaderLost, e.Message)
	case internalpb.ErrorCode_ERROR_CODE_TIMEOUT:
		return fmt.Errorf("%w (there: %s)", shard.ErrTimeout, e.Message)
	}
	return fmt.Errorf("%w: %s", shard.ErrNoLeader, e.Message)
}

// rpcError turns a failure of the transport (the member is down, the call
// timed out) into the caller's error: a deadline is the context's, the
// rest a member that could not serve — errUnreachable if the transport
// could not reach it (a write that may have reached it before it failed is
// writeVia's to tell).
func rpcError(err error) error {
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	case codes.Unavailable:
		return fmt.Errorf("%w: %w: %v", shard.ErrNoLeader, errUnreachable, err)
	}
	return fmt.Errorf("%w: %v", shard.ErrNoLeader, err)
}
