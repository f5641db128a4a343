package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Online split (sharded mode), in place (NOTES-dragonboat.md "Splitting a
// range"): SplitRange records the split in the placement group's range
// map, which names the new range, then proposes it to the range itself.
// Every replica of the range applies it at the same index: its store and
// lessor hand the keys from the split key on to the new range at one
// revision — the data stays where it is — and the node then starts its
// replica of the new range with the same members (onSplit). Requests
// routed by the old map are refused by the range and routed again;
// watches move their watchers to the new range from the revision after
// everything they were sent.

// SplitRange splits the range holding key at key, while it serves, and
// returns the two ranges the split made.
func (n *Node) SplitRange(ctx context.Context, key []byte) ([]*placementpb.RangeDescriptor, error) {
	if n.merger == nil {
		return nil, router.Refuse(router.ErrPrecondition, "cairn: splitting needs sharded mode (this cluster runs with --single-group)")
	}
	if len(key) == 0 {
		return nil, router.Refuse(router.ErrInvalid, "cairn: the split key is empty")
	}
	var parent *shard.Range
	for _, rr := range n.rangeSet.Routing() {
		d := rr.Descriptor()
		if bytes.Compare(key, d.Start) >= 0 && (len(d.End) == 0 || bytes.Compare(key, d.End) < 0) {
			parent = rr
		}
	}
	if parent == nil {
		return nil, router.Refuse(router.ErrNotFound, "cairn: no range holds %q", key)
	}
	d := parent.Descriptor()
	if bytes.Equal(d.Start, key) {
		return nil, router.Refuse(router.ErrPrecondition, "cairn: range %d already starts at %q", d.Id, key)
	}
	// The map may hold this very split already (an earlier call cut short
	// before the range applied it, or a first try of this proposal that
	// committed but answered too late): RecordSplit answers it, and it is
	// finished here.
	left, right, err := n.placement.RecordSplit(ctx, placement.RangeID(d.Id), d.Generation, key)
	if err != nil {
		return nil, router.Refuse(router.ErrPrecondition, "cairn: split range %d at %q: %w", d.Id, key, err)
	}
	made := []*placementpb.RangeDescriptor{left, right}
	child := right.Id
	if n.hooks.splitCutShort.Load() {
		return made, nil
	}
	for {
		// While the range elects a leader (one of its members is down,
		// say) the proposal times out; proposed again after one that did
		// apply, the range refuses it as outside its span. A range that
		// counts its revisions refuses a split whose oracle revision it
		// has passed meanwhile: it is asked for again.
		req, err := n.splitRequest(ctx, parent, right)
		if err == nil {
			_, err = n.routes.Client(parent.ID()).Write(ctx, req)
		}
		if err == nil || errors.Is(err, mvcc.ErrOutsideSpan) {
			break
		}
		if !errors.Is(err, shard.ErrTimeout) && !errors.Is(err, shard.ErrNoLeader) && !errors.Is(err, shard.ErrBusy) &&
			!errors.Is(err, mvcc.ErrStaleStamp) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(forwardRetry):
		}
	}
	if n.hooks.splitNoStart.Load() {
		return made, nil
	}
	if rr := n.rangeSet.Get(shard.RangeID(child), false); rr != nil {
		if err := n.routes.Client(rr.ID()).Wait(ctx); err != nil {
			return nil, err
		}
	}
	return made, nil
}

// splitMargin is how far above a counting range's revision the oracle
// revision of its split is taken: room for the writes the range counts
// until the split applies (more, and the split is asked for again).
const splitMargin = oracleWindow

// splitRequest is the proposal to holder, the range it splits off, that
// makes range d, as the range map names it. A range that still counts its
// revisions (a cluster of one range, DESIGN.md "Keys, values, revisions")
// is given an oracle revision above its own, so that the oracle, which
// numbers every write after the split, is past every revision counted
// before it.
func (n *Node) splitRequest(ctx context.Context, holder *shard.Range, d *placementpb.RangeDescriptor) (*shardpb.Request, error) {
	split := &shardpb.SplitRange{Key: d.Start, Child: d.Id, Founders: d.Founders}
	req := &shardpb.Request{Op: &shardpb.Request_Split{Split: split}}
	if sm := holder.StateMachine(); sm == nil || !sm.Counting() {
		return req, nil
	}
	st, err := n.routes.Client(holder.ID()).Status(ctx, true)
	if err != nil {
		return nil, err
	}
	if st.Counting {
		above, err := n.oracle.RevisionsAbove(ctx, 1, st.Revision+splitMargin)
		if err != nil {
			return nil, err
		}
		split.Above = int64(above)
	}
	return req, nil
}

// onSplit runs on the apply goroutine of parent's replica as a split
// applies there: the new range child holds span, its history up to rev
// included. It takes the new range into the range set and the watches,
// and starts its replica.
func (n *Node) onSplit(parent *shard.Range, child uint64, span mvcc.Span, rev mvcc.Revision, founders []uint64) {
	pd := parent.Descriptor()
	if len(founders) == 0 {
		founders = pd.Replicas
	}
	cd := &placementpb.RangeDescriptor{Id: child, Start: slices.Clone(span.Start), End: slices.Clone(span.End),
		Generation: pd.Generation + 1, Replicas: slices.Clone(founders), Parent: pd.Id, Founders: slices.Clone(founders)}
	rr := n.addSplitRange(parent, cd, rev)
	if rr == nil {
		// Started already from the range map (a member added while the
		// split was under way joins the new range, and gets it as a
		// snapshot).
		return
	}
	if n.hooks.splitNoStart.Load() {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.startRange(rr, true, false); err != nil {
			n.log.Error("start a split's new range", "range", child, "error", err)
			return
		}
		n.wg.Add(1)
		go n.registerShadows(rr)
	}()
}

// addSplitRange records here that range cd split off parent: parent's
// descriptor ends where cd starts, and cd's replica (not started, its hub
// at rev) follows it in the range set, parent's watchers of its keys moved
// to it. It returns nil if cd is in the range set already.
func (n *Node) addSplitRange(parent *shard.Range, cd *placementpb.RangeDescriptor, rev mvcc.Revision) *shard.Range {
	rr := n.rangeSet.Split(parent, n.newRange(cd, rev))
	if rr == nil {
		n.routes.PutRanges(parent)
		return nil
	}
	n.routes.PutRanges(parent, rr)
	if n.merger != nil {
		n.merger.Split(parent.Hub(), cd.Start, watch.Part{Hub: rr.Hub(), Kick: rr.WantClosed})
	}
	return rr
}

// registerShadows registers a split's new range at the home of every lease
// it holds keys of (the split made their shadows here), and revokes here
// those the home no longer has: the home then revokes the keys here too,
// or they are gone already.
func (n *Node) registerShadows(rr *shard.Range) {
	defer n.wg.Done()
	sm := rr.StateMachine()
	for deadline := time.Now().Add(10 * time.Second); sm == nil || sm.Lessor() == nil; sm = rr.StateMachine() {
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-n.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	id := uint64(rr.ID())
	for _, l := range sm.Lessor().Shadows() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.routes.Client(singleShardID).Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseRegister{
			LeaseRegister: &shardpb.LeaseShard{Lease: int64(l), Shard: id}}})
		var se *shard.Error
		if errors.As(err, &se) && se.Code == shardpb.ErrorCode_ERROR_CODE_LEASE_NOT_FOUND {
			gen := n.first.AppliedIndex()
			_, err = n.routes.Client(rr.ID()).Write(ctx, &shardpb.Request{Op: &shardpb.Request_ShadowRevoke{
				ShadowRevoke: &shardpb.ShadowLease{Lease: int64(l), Generation: gen}}})
		}
		cancel()
		if err != nil {
			n.log.Warn("register a lease's keys in a split's new range", "range", id, "lease", int64(l), "error", err)
		}
	}
}

// followSplits finishes the splits shard.LocalRanges found the range map ahead
// of (unsplit), then, each time a range here is restored from a snapshot,
// those the range map holds and this node does not run: a member cut off
// while a range split, and sent a snapshot of the range taken after the
// split, never applies the split itself.
func (n *Node) followSplits(unsplit []*placementpb.RangeDescriptor) {
	defer n.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	n.finishSplits(ctx, unsplit)
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.missed:
		}
		st, err := n.placement.State(ctx)
		if err != nil {
			continue
		}
		var missed []*placementpb.RangeDescriptor
		local := n.rangeSet.Routing()
		for _, d := range st.Ranges {
			if d.Parent != 0 && slices.Contains(shard.FoundersOf(d), n.memberID) && slices.Contains(d.Replicas, n.memberID) &&
				!slices.ContainsFunc(local, func(rr *shard.Range) bool { return uint64(rr.ID()) == d.Id }) {
				missed = append(missed, d)
			}
		}
		n.finishSplits(ctx, missed)
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
func (n *Node) finishSplits(ctx context.Context, pending []*placementpb.RangeDescriptor) {
	slices.SortFunc(pending, func(a, b *placementpb.RangeDescriptor) int { return cmp.Compare(a.Id, b.Id) })
	for _, d := range pending {
		for {
			// The holder is the range before d's start: a range joined
			// late may end short of where its parent did (it split again
			// meanwhile), and what follows it joins next.
			var holder *shard.Range
			done := false
			for _, rr := range n.rangeSet.Routing() {
				rd := rr.Descriptor()
				switch {
				case rd.Id == d.Id:
					done = true
				case bytes.Compare(rd.Start, d.Start) < 0:
					holder = rr
				}
			}
			if done {
				break
			}
			if holder != nil && n.splitElsewhere(holder, d) {
				if err := n.joinLateSplit(ctx, holder, d); err != nil {
					n.log.Warn("join a range split off while this member was away", "range", d.Id, "error", err)
				} else {
					continue
				}
			} else if holder != nil {
				wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
				req, err := n.splitRequest(wctx, holder, d)
				if err == nil {
					_, err = n.routes.Client(holder.ID()).Write(wctx, req)
				}
				wcancel()
				if err != nil && !errors.Is(err, mvcc.ErrOutsideSpan) {
					n.log.Warn("propose a split again", "range", d.Id, "error", err)
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
func (n *Node) splitElsewhere(holder *shard.Range, d *placementpb.RangeDescriptor) bool {
	sp, ok, err := n.rangeSet.StoredSpan(holder.ID())
	return err == nil && ok && !sp.Contains(d.Start)
}

// joinLateSplit starts this member's replica of range d, split off holder
// while this member was away (splitElsewhere). The member is among d's
// founders, but d's data came to the others from the split, not from d's
// raft log, so replaying that log here would miss it: every other replica
// of d compacts its log (after one empty entry, so each has something to
// snapshot) and this member joins d, to be sent a snapshot.
func (n *Node) joinLateSplit(ctx context.Context, holder *shard.Range, d *placementpb.RangeDescriptor) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	empty, _ := proto.Marshal(&pb.LeaseCheckpointRequest{})
	req := &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: empty}}
	var others []uint64
	for _, m := range d.Replicas {
		if m != n.memberID {
			others = append(others, m)
		}
	}
	written := false
	for _, m := range others { // the one leading d takes it
		// A refusal by the range is an answer of its leader too.
		var se *shard.Error
		if _, err := n.fwd.WriteTo(ctx, placement.NodeID(m), shard.RangeID(d.Id), req); err == nil || errors.As(err, &se) {
			written = true
			break
		}
	}
	if !written {
		return fmt.Errorf("no replica of range %d took a write", d.Id)
	}
	for _, m := range others {
		if err := n.fwd.CompactLog(ctx, placement.NodeID(m), shard.RangeID(d.Id)); err != nil {
			return err
		}
	}
	rr := n.addSplitRange(holder, proto.Clone(d).(*placementpb.RangeDescriptor), holder.Hub().Rev())
	if rr == nil {
		return nil // in the range set already
	}
	if err := n.startRange(rr, false, true); err != nil {
		return fmt.Errorf("start range %d: %w", d.Id, err)
	}
	n.log.Info("joined a range split off while this member was away", "range", d.Id, "parent", holder.ID(), "key", string(d.Start))
	return nil
}
