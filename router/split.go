package router

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Online split (sharded mode), in place (NOTES-dragonboat.md "Splitting a
// range"): SplitRange records the split in the placement group's range
// map, which names the new range, then proposes it to the range itself.
// Every replica of the range applies it at the same index: its store and
// lessor hand the keys from the split key on to the new range at one
// revision — the data stays where it is — and the member then starts its
// replica of the new range with the same members (OnSplit). Requests
// routed by the old map are refused by the range and routed again;
// watches move their watchers to the new range from the revision after
// everything they were sent.
//
// A split cut short by a stop (recorded in the map, not applied here) is
// proposed again at the next start, and a split this member missed while
// away — it came back with a snapshot of the range taken after the split —
// is joined (Follow).

// SplitMap is the range map as splits use it (placement.Client).
type SplitMap interface {
	// RecordSplit records that range r of generation gen splits at key
	// and returns the two ranges it makes (the same answer for a split
	// recorded already).
	RecordSplit(ctx context.Context, r placement.RangeID, gen uint64, key []byte) (left, right *placementpb.RangeDescriptor, err error)
	// State reads the range map.
	State(ctx context.Context) (*placementpb.State, error)
}

// SplitterConfig wires a Splitter.
type SplitterConfig struct {
	// Self is this member.
	Self placement.NodeID
	// Map is the placement group's range map.
	Map SplitMap
	// RevisionsAbove hands out count oracle revisions above above (the
	// first of them): a counting range's split takes one.
	RevisionsAbove func(ctx context.Context, count int64, above mvcc.Revision) (mvcc.Revision, error)
	// Margin is how far above a counting range's revision the oracle
	// revision of its split is taken: room for the writes the range
	// counts until the split applies (more, and the split is asked for
	// again).
	Margin mvcc.Revision
	// Ranges is this member's range cache: a split's ranges are put in,
	// and the splits go through their clients.
	Ranges *RangeCache
	// Local is this member's replicas of the ranges.
	Local *shard.Set
	// Forwarder reaches the other members (joining a split missed).
	Forwarder *Forwarder
	// Merger serves watches over the ranges: a split moves the parent's
	// watchers of its keys to the new range.
	Merger *watch.Merger
	// Home is the range every lease lives in (range 1).
	Home shard.RangeID
	// NewRange returns this member's replica of range d, not started, its
	// hub at rev.
	NewRange func(d *placementpb.RangeDescriptor, rev mvcc.Revision) *shard.Range
	// StartRange starts r's raft replica (shard.Set.Start's founders and
	// join).
	StartRange func(r *shard.Range, founders, join bool) error
	// Stop, once closed, ends what the splitter runs in the background.
	Stop <-chan struct{}
	// Log receives what goes wrong in the background; nil discards it.
	Log *slog.Logger
	// CutShort and NoStart, for tests, stop a split where a crash may
	// stop it: CutShort after the range map names the new range, before
	// the range splits; NoStart after the range split, before the new
	// range starts here. nil: never.
	CutShort, NoStart func() bool
}

// Splitter splits ranges (SplitRange), takes the splits that apply here
// into this member's ranges (OnSplit), and catches up on splits a stop
// or an absence left unfinished here (Follow).
//
// Concurrency: safe for concurrent use; it owns the goroutines that start
// a split's new range and register its leases' keys, and Follow's; Close
// waits for them once Stop is closed.
type Splitter struct {
	cfg SplitterConfig
	wg  sync.WaitGroup
	// missed (size 1: one signal stands for any number) is signalled when
	// a range here was restored from a snapshot (Recovered).
	missed chan struct{}
}

// NewSplitter returns a splitter; nothing runs until it is used.
func NewSplitter(cfg SplitterConfig) *Splitter {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Splitter{cfg: cfg, missed: make(chan struct{}, 1)}
}

// Close waits for the splitter's goroutines; Stop must be closed first.
func (s *Splitter) Close() { s.wg.Wait() }

func (s *Splitter) hook(f func() bool) bool { return f != nil && f() }

// SplitRange splits the range holding key at key, while it serves, and
// returns the two ranges the split made.
func (s *Splitter) SplitRange(ctx context.Context, key []byte) ([]*placementpb.RangeDescriptor, error) {
	if len(key) == 0 {
		return nil, Refuse(ErrInvalid, "cairn: the split key is empty")
	}
	var parent *shard.Range
	for _, r := range s.cfg.Local.Routing() {
		d := r.Descriptor()
		if bytes.Compare(key, d.Start) >= 0 && (len(d.End) == 0 || bytes.Compare(key, d.End) < 0) {
			parent = r
		}
	}
	if parent == nil {
		return nil, Refuse(ErrNotFound, "cairn: no range holds %q", key)
	}
	d := parent.Descriptor()
	if bytes.Equal(d.Start, key) {
		return nil, Refuse(ErrPrecondition, "cairn: range %d already starts at %q", d.Id, key)
	}
	// The map may hold this very split already (an earlier call cut short
	// before the range applied it, or a first try of this proposal that
	// committed but answered too late): RecordSplit answers it, and it is
	// finished here.
	left, right, err := s.cfg.Map.RecordSplit(ctx, placement.RangeID(d.Id), d.Generation, key)
	if err != nil {
		return nil, Refuse(ErrPrecondition, "cairn: split range %d at %q: %w", d.Id, key, err)
	}
	made := []*placementpb.RangeDescriptor{left, right}
	if s.hook(s.cfg.CutShort) {
		return made, nil
	}
	for {
		// While the range elects a leader (one of its members is down,
		// say) the proposal times out; proposed again after one that did
		// apply, the range refuses it as outside its span. A range that
		// counts its revisions refuses a split whose oracle revision it
		// has passed meanwhile: it is asked for again. A range holding a
		// cross-range transaction's lock refuses to split until the lock
		// is resolved (by its coordinator, or the resolver past its
		// deadline): the split waits.
		req, err := s.splitRequest(ctx, parent, right)
		if err == nil {
			_, err = s.cfg.Ranges.Client(parent.ID()).Write(ctx, req)
		}
		if err == nil || errors.Is(err, mvcc.ErrOutsideSpan) {
			break
		}
		if !errors.Is(err, shard.ErrTimeout) && !errors.Is(err, shard.ErrNoLeader) && !errors.Is(err, shard.ErrBusy) &&
			!errors.Is(err, mvcc.ErrStaleStamp) && !errors.Is(err, shard.ErrLocked) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(forwardRetry):
		}
	}
	if s.hook(s.cfg.NoStart) {
		return made, nil
	}
	if r := s.cfg.Local.Get(shard.RangeID(right.Id), false); r != nil {
		if err := s.cfg.Ranges.Client(r.ID()).Wait(ctx); err != nil {
			return nil, err
		}
	}
	return made, nil
}

// splitRequest is the proposal to holder, the range it splits off, that
// makes range d, as the range map names it. A range that still counts its
// revisions (a cluster of one range, DESIGN.md "Keys, values, revisions")
// is given an oracle revision above its own, so that the oracle, which
// numbers every write after the split, is past every revision counted
// before it.
func (s *Splitter) splitRequest(ctx context.Context, holder *shard.Range, d *placementpb.RangeDescriptor) (*shardpb.Request, error) {
	split := &shardpb.SplitRange{Key: d.Start, Child: d.Id, Founders: d.Founders}
	for _, p := range placement.Founders(d) {
		split.FounderReplicas = append(split.FounderReplicas, &shardpb.ReplicaRef{Member: p.Member, Id: p.Id, Learner: p.Learner})
	}
	req := &shardpb.Request{Op: &shardpb.Request_Split{Split: split}}
	if sm := holder.StateMachine(); sm == nil || !sm.Counting() {
		return req, nil
	}
	st, err := s.cfg.Ranges.Client(holder.ID()).Status(ctx, true)
	if err != nil {
		return nil, err
	}
	if st.Counting {
		above, err := s.cfg.RevisionsAbove(ctx, 1, st.Revision+s.cfg.Margin)
		if err != nil {
			return nil, err
		}
		split.Above = int64(above)
	}
	return req, nil
}

// OnSplit is shard.Config.OnSplit of parent, this member's replica of a
// range: it runs on parent's apply goroutine as a split applies there. The
// new range child holds span, its history up to rev included; founders are
// its replicas as the split names them (the range map's: the parent's
// pairs, under the same ids), or, if it names none, the replicas parent's
// descriptor names. It takes the new range into this member's ranges, the
// range cache and the watches, and starts its replica.
func (s *Splitter) OnSplit(parent *shard.Range, child shard.RangeID, span mvcc.Span, rev mvcc.Revision, founders []*shardpb.ReplicaRef) {
	pd := parent.Descriptor()
	var pairs []*placementpb.Replica
	if len(founders) > 0 {
		for _, f := range founders {
			pairs = append(pairs, &placementpb.Replica{Member: f.Member, Id: f.Id, Learner: f.Learner})
		}
	} else {
		for _, p := range placement.Pairs(pd) {
			pairs = append(pairs, proto.Clone(p).(*placementpb.Replica))
		}
	}
	var voters []uint64
	founderSet := make([]*placementpb.Replica, len(pairs))
	for i, p := range pairs {
		if !p.Learner {
			voters = append(voters, p.Member)
		}
		founderSet[i] = proto.Clone(p).(*placementpb.Replica)
	}
	cd := &placementpb.RangeDescriptor{Id: uint64(child), Start: slices.Clone(span.Start), End: slices.Clone(span.End),
		Generation: pd.Generation + 1, Replicas: voters, Parent: pd.Id, Founders: slices.Clone(voters),
		ReplicaSet: pairs, FounderSet: founderSet}
	r := s.addSplitRange(parent, cd, rev)
	if r == nil {
		// Started already from the range map (a member added while the
		// split was under way joins the new range, and gets it as a
		// snapshot).
		return
	}
	if s.hook(s.cfg.NoStart) {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.cfg.StartRange(r, true, false); err != nil {
			s.cfg.Log.Error("start a split's new range", "range", child, "error", err)
			return
		}
		s.wg.Add(1)
		go s.registerShadows(r)
	}()
}

// addSplitRange records here that range cd split off parent: parent's
// descriptor ends where cd starts, and cd's replica (not started, its hub
// at rev) follows it in this member's ranges and the range cache, parent's
// watchers of its keys moved to it. It returns nil if cd is here already.
func (s *Splitter) addSplitRange(parent *shard.Range, cd *placementpb.RangeDescriptor, rev mvcc.Revision) *shard.Range {
	r := s.cfg.Local.Split(parent, s.cfg.NewRange(cd, rev))
	if r == nil {
		s.cfg.Ranges.PutRanges(parent)
		return nil
	}
	s.cfg.Ranges.PutRanges(parent, r)
	if s.cfg.Merger != nil {
		s.cfg.Merger.Split(parent.Hub(), cd.Start, watch.Part{Hub: r.Hub(), Kick: r.WantClosed})
	}
	return r
}

// registerShadows registers a split's new range at the home of every lease
// it holds keys of (the split made their shadows here), and revokes here
// those the home no longer has: the home then revokes the keys here too,
// or they are gone already.
func (s *Splitter) registerShadows(r *shard.Range) {
	defer s.wg.Done()
	sm := r.StateMachine()
	for deadline := time.Now().Add(10 * time.Second); sm == nil || sm.Lessor() == nil; sm = r.StateMachine() {
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-s.cfg.Stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	id := uint64(r.ID())
	for _, l := range sm.Lessor().Shadows() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.cfg.Ranges.Client(s.cfg.Home).Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseRegister{
			LeaseRegister: &shardpb.LeaseShard{Lease: int64(l), Shard: id}}})
		var se *shard.Error
		if errors.As(err, &se) && se.Code == shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
			var gen uint64
			if home := s.cfg.Local.Get(s.cfg.Home, false); home != nil {
				gen = home.AppliedIndex()
			} else if st, serr := s.cfg.Ranges.Client(s.cfg.Home).Status(ctx, true); serr == nil {
				gen = st.AppliedIndex // the home is held elsewhere
			}
			_, err = s.cfg.Ranges.Client(r.ID()).Write(ctx, &shardpb.Request{Op: &shardpb.Request_ShadowRevoke{
				ShadowRevoke: &shardpb.ShadowLease{Lease: int64(l), Generation: gen}}})
		}
		cancel()
		if err != nil {
			s.cfg.Log.Warn("register a lease's keys in a split's new range", "range", id, "lease", int64(l), "error", err)
		}
	}
}

// Recovered is shard.Config.OnRecover: a range here was restored from a
// snapshot, and may have missed splits (Follow looks).
func (s *Splitter) Recovered() {
	select {
	case s.missed <- struct{}{}:
	default:
	}
}

// Follow starts finishing the splits shard.LocalRanges found the range
// map ahead of (unsplit), then, each time a range here is restored from a
// snapshot (Recovered), those the range map holds and this member does not
// run: a member cut off while a range split, and sent a snapshot of the
// range taken after the split, never applies the split itself. It runs
// until Stop is closed.
func (s *Splitter) Follow(unsplit []*placementpb.RangeDescriptor) {
	s.wg.Add(1)
	go s.follow(unsplit)
}

func (s *Splitter) follow(unsplit []*placementpb.RangeDescriptor) {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.cfg.Stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	self := uint64(s.cfg.Self)
	s.finishSplits(ctx, unsplit)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.missed:
		}
		st, err := s.cfg.Map.State(ctx)
		if err != nil {
			continue
		}
		var missed []*placementpb.RangeDescriptor
		local := s.cfg.Local.Routing()
		for _, d := range st.Ranges {
			if d.Parent != 0 && slices.Contains(shard.FoundersOf(d), self) && slices.Contains(d.Replicas, self) &&
				!slices.ContainsFunc(local, func(r *shard.Range) bool { return uint64(r.ID()) == d.Id }) {
				missed = append(missed, d)
			}
		}
		s.finishSplits(ctx, missed)
	}
}

// finishSplits makes pending, ranges of the range map split off a range
// here, run here, in the order they were made (range ids ascend with it),
// each waited for before the next. A split that has not applied here is
// proposed to the range holding its key here again; one that meanwhile
// applied (proposed before a stop, applied after) makes the range refuse
// the second proposal, which is fine. A split that applied on the other
// members while this one was away, and reached it only as a snapshot of
// the range taken after it (the range here no longer holds the key), is
// joined (joinLateSplit).
func (s *Splitter) finishSplits(ctx context.Context, pending []*placementpb.RangeDescriptor) {
	slices.SortFunc(pending, func(a, b *placementpb.RangeDescriptor) int { return cmp.Compare(a.Id, b.Id) })
	for _, d := range pending {
		for {
			// The holder is the range before d's start: a range joined
			// late may end short of where its parent did (it split again
			// meanwhile), and what follows it joins next.
			var holder *shard.Range
			done := false
			for _, r := range s.cfg.Local.Routing() {
				rd := r.Descriptor()
				switch {
				case rd.Id == d.Id:
					done = true
				case bytes.Compare(rd.Start, d.Start) < 0:
					holder = r
				}
			}
			if done {
				break
			}
			if holder != nil && s.splitElsewhere(holder, d) {
				if err := s.joinLateSplit(ctx, holder, d); err != nil {
					s.cfg.Log.Warn("join a range split off while this member was away", "range", d.Id, "error", err)
				} else {
					continue
				}
			} else if holder != nil {
				wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
				req, err := s.splitRequest(wctx, holder, d)
				if err == nil {
					_, err = s.cfg.Ranges.Client(holder.ID()).Write(wctx, req)
				}
				wcancel()
				if err != nil && !errors.Is(err, mvcc.ErrOutsideSpan) {
					s.cfg.Log.Warn("propose a split again", "range", d.Id, "error", err)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// splitElsewhere reports whether holder's replica here no longer holds
// d's start key in its store: a snapshot taken after d split off it
// replaced what it had, so the split will never apply here.
func (s *Splitter) splitElsewhere(holder *shard.Range, d *placementpb.RangeDescriptor) bool {
	sp, ok, err := s.cfg.Local.StoredSpan(holder.ID())
	return err == nil && ok && !sp.Contains(d.Start)
}

// joinLateSplit starts this member's replica of range d, split off holder
// while this member was away (splitElsewhere). The member is among d's
// founders, but d's data came to the others from the split, not from d's
// raft log, so replaying that log here would miss it: every other replica
// of d compacts its log (after one empty entry, so each has something to
// snapshot) and this member joins d, to be sent a snapshot.
func (s *Splitter) joinLateSplit(ctx context.Context, holder *shard.Range, d *placementpb.RangeDescriptor) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	empty, _ := proto.Marshal(&pb.LeaseCheckpointRequest{})
	req := &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: empty}}
	var others []placement.NodeID
	for _, m := range d.Replicas {
		if placement.NodeID(m) != s.cfg.Self {
			others = append(others, placement.NodeID(m))
		}
	}
	written := false
	for _, m := range others { // the one leading d takes it
		// A refusal by the range is an answer of its leader too.
		var se *shard.Error
		if _, err := s.cfg.Forwarder.WriteTo(ctx, m, shard.RangeID(d.Id), req); err == nil || errors.As(err, &se) {
			written = true
			break
		}
	}
	if !written {
		return fmt.Errorf("no replica of range %d took a write", d.Id)
	}
	for _, m := range others {
		if err := s.cfg.Forwarder.CompactLog(ctx, m, shard.RangeID(d.Id)); err != nil {
			return err
		}
	}
	r := s.addSplitRange(holder, proto.Clone(d).(*placementpb.RangeDescriptor), holder.Hub().Rev())
	if r == nil {
		return nil // here already
	}
	if err := s.cfg.StartRange(r, false, true); err != nil {
		return fmt.Errorf("start range %d: %w", d.Id, err)
	}
	s.cfg.Log.Info("joined a range split off while this member was away", "range", d.Id, "parent", holder.ID(), "key", string(d.Start))
	return nil
}
