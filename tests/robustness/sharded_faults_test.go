package robustness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/robustness/client"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-kv/cairn/proto/internalpb"
)

// Faults of sharded mode alone: they split and move ranges, and aim at the
// placement group's leader, which serves the revision oracle. Each needs
// a cluster past its splits (scenario.sharded); none needs a write that
// spans ranges.
//
//	split-range            an operator split (SplitRange on a client port) at
//	                       a key the traffic holds, while it runs
//	move-replica           an operator move (MoveRange) of a range's replica
//	                       off its leader's member to the member without one
//	                       (4 members, 3 replicas a range)
//	kill-placement-leader  kill -9 of the placement group's leader (the one
//	                       whose /metrics says cairn_placement_is_leader 1),
//	                       and restart
//	partition-range-leader a range's leader cut off from the placement
//	                       leader, and them alone (cluster.cut: each proxy
//	                       drops what the other member opens), for 2 s
//	kill-txn-coordinator   kill -9 of a member other than the placement
//	                       leader, and restart: the coordinator of the
//	                       cross-range writes its clients sent (the etcd
//	                       mix's multi-key txns and the traffic's deletes
//	                       span ranges), wherever each stood between
//	                       prepare and commit; the resolvers settle them.
//	                       The kill cannot be aimed between two steps
//	                       (that needs a hook in the binary: the node
//	                       tests' TestCrossRangeTxnCoordinatorKilled*
//	                       stop it at each one)
var shardedFaults = []fault{
	{name: "split-range", sizes: []int{1, 3, 4}, sharded: true, inject: func(ctx context.Context, c *cluster, _ *client.ClientSet, r *rand.Rand) error {
		return splitDuringTraffic(ctx, c, r)
	}},
	{name: "move-replica", sizes: []int{4}, sharded: true, inject: func(ctx context.Context, c *cluster, _ *client.ClientSet, r *rand.Rand) error {
		return moveDuringTraffic(ctx, c, r)
	}},
	{name: "kill-placement-leader", sizes: []int{3, 4}, sharded: true, inject: func(ctx context.Context, c *cluster, _ *client.ClientSet, _ *rand.Rand) error {
		p, err := c.placementLeader(ctx)
		if err != nil {
			return err
		}
		c.t.Logf("kill -9 of the placement leader %s", p.name)
		return killRestart(ctx, p)
	}},
	{name: "partition-range-leader", sizes: []int{3, 4}, sharded: true, inject: func(ctx context.Context, c *cluster, _ *client.ClientSet, r *rand.Rand) error {
		p, l, rangeID, err := c.rangeLeaderApart(ctx, r)
		if err != nil {
			return err
		}
		c.t.Logf("cut %s, leader of range %d, from %s, the placement leader", l.name, rangeID, p.name)
		c.cut(p, l)
		hold(ctx, 2*time.Second)
		c.heal()
		return nil
	}},
	{name: "kill-txn-coordinator", sizes: []int{3, 4}, sharded: true, inject: func(ctx context.Context, c *cluster, _ *client.ClientSet, r *rand.Rand) error {
		p, err := c.placementLeader(ctx)
		if err != nil {
			return err
		}
		m := pick(r, c.members, p)
		c.t.Logf("kill -9 of %s, coordinator of the cross-range writes sent to it", m.name)
		return killRestart(ctx, m)
	}},
}

// rangeInfo is what the faults read of a range in a member's /cairn/ranges
// (router.RangeInfo's JSON).
type rangeInfo struct {
	ID         uint64 `json:"id"`
	Start      string `json:"start"`
	End        string `json:"end"`
	Leader     uint64 `json:"leader"` // a member id; 0: none known
	ReplicaSet []struct {
		Member  uint64 `json:"member"`
		Learner bool   `json:"learner"`
	} `json:"replica_set"`
	Replicas []uint64 `json:"replicas"` // member ids, where ReplicaSet is left out
}

// holders are the members holding a voting replica of the range.
func (ri rangeInfo) holders() []uint64 {
	if len(ri.ReplicaSet) == 0 {
		return ri.Replicas
	}
	var out []uint64
	for _, rep := range ri.ReplicaSet {
		if !rep.Learner {
			out = append(out, rep.Member)
		}
	}
	return out
}

// ranges reads the range map as m sees it.
func (m *member) ranges(ctx context.Context) ([]rangeInfo, error) {
	var ranges []rangeInfo
	err := m.getJSON(ctx, "/cairn/ranges", func(body []byte) error { return json.Unmarshal(body, &ranges) })
	return ranges, err
}

// getJSON reads path on m's client URL and hands the body to decode.
func (m *member) getJSON(ctx context.Context, path string, decode func([]byte) error) error {
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, "http://"+m.endpoint()+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", m.name, path, resp.Status)
	}
	return decode(body)
}

// placementLeader returns the member whose /metrics says it leads the
// placement group, waiting (up to 30 s) until exactly one does.
func (c *cluster) placementLeader(ctx context.Context) (*member, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var leaders []*member
		for _, m := range c.members {
			err := m.getJSON(wctx, "/metrics", func(body []byte) error {
				if bytes.Contains(body, []byte("\ncairn_placement_is_leader 1\n")) {
					leaders = append(leaders, m)
				}
				return nil
			})
			_ = err // a member down or slow leads nothing we can use
		}
		if len(leaders) == 1 {
			return leaders[0], nil
		}
		select {
		case <-wctx.Done():
			return nil, fmt.Errorf("no single placement leader (%d members say they lead): %w", len(leaders), wctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// memberIDs maps each member's id to it.
func (c *cluster) memberIDs(ctx context.Context) (map[uint64]*member, error) {
	ids := map[uint64]*member{}
	for _, m := range c.members {
		var id uint64
		if err := retry(ctx, func(ctx context.Context) (err error) { id, err = m.memberID(ctx); return err }); err != nil {
			return nil, fmt.Errorf("%s: member id: %w", m.name, err)
		}
		ids[id] = m
	}
	return ids, nil
}

// idOf is m's id in ids (memberIDs).
func idOf(ids map[uint64]*member, m *member) uint64 {
	for id, o := range ids {
		if o == m {
			return id
		}
	}
	return 0
}

// operator makes an operator call (the node service on m's client port).
func (m *member) operator(ctx context.Context, timeout time.Duration, call func(context.Context, internalpb.NodeClient) error) error {
	conn, err := grpc.NewClient(m.endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return call(cctx, internalpb.NewNodeClient(conn))
}

// shuffled is c's members in an order drawn from r.
func (c *cluster) shuffled(r *rand.Rand) []*member {
	ms := slices.Clone(c.members)
	r.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
	return ms
}

// splitDuringTraffic splits, through SplitRange, the range holding a key
// the traffic has written, at that key (one that starts no range yet), so
// the traffic's key space gets one more boundary while it runs. A member
// that holds no replica of the range refuses (NotFound); another one is
// asked. A call cut short may have split all the same: a range starting at
// the key is what ends the fault.
func splitDuringTraffic(ctx context.Context, c *cluster, r *rand.Rand) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	var ranges []rangeInfo
	if err := retry(ctx, func(ctx context.Context) (err error) { ranges, err = c.members[0].ranges(ctx); return err }); err != nil {
		return err
	}
	starts := map[string]bool{}
	for _, ri := range ranges {
		starts[ri.Start] = true
	}
	var keys []string
	if err := retry(ctx, func(ctx context.Context) error {
		resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		keys = keys[:0]
		for _, kv := range resp.Kvs {
			if k := string(kv.Key); !starts[k] && !strings.HasPrefix(k, "robustness-") && k != "tombstone" {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return errors.New("no key to split at yet")
		}
		return nil
	}); err != nil {
		return err
	}
	key := keys[r.Intn(len(keys))]
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var errs []error
	for try := 0; ; try++ {
		for _, m := range c.shuffled(r) {
			var resp *internalpb.SplitRangeResponse
			err := m.operator(sctx, 30*time.Second, func(ctx context.Context, nc internalpb.NodeClient) (err error) {
				resp, err = nc.SplitRange(ctx, &internalpb.SplitRangeRequest{Key: []byte(key)})
				return err
			})
			if err == nil {
				if len(resp.Ranges) != 2 || string(resp.Ranges[1].Start) != key {
					return fmt.Errorf("split at %q through %s made %v", key, m.name, resp.Ranges)
				}
				c.t.Logf("split range %d at %q through %s: ranges %d and %d", resp.Ranges[0].Id, key, m.name, resp.Ranges[0].Id, resp.Ranges[1].Id)
				return nil
			}
			// A first try that applied but answered too late.
			if try > 0 && strings.Contains(err.Error(), "already starts at") {
				c.t.Logf("split at %q: a try cut short applied (%v)", key, errors.Join(errs...))
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", m.name, err))
		}
		select {
		case <-sctx.Done():
			return fmt.Errorf("split at %q: %w", key, errors.Join(errs...))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// moveDuringTraffic moves, through MoveRange, the replica on a range's
// leader's member to a member holding none, so the range gains a replica,
// changes leader and loses the old one while the traffic runs. A call cut
// short may have moved all the same, or been undone: the range map is
// read again before each try.
func moveDuringTraffic(ctx context.Context, c *cluster, r *rand.Rand) error {
	ids, err := c.memberIDs(ctx)
	if err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var rangeID, from, to uint64
	var errs []error
	for {
		var ranges []rangeInfo
		err := retry(mctx, func(ctx context.Context) (err error) {
			ranges, err = c.members[r.Intn(len(c.members))].ranges(ctx)
			return err
		})
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if rangeID == 0 {
			// The first pick: a range with a leader, and a member without
			// a replica of it.
			var cands []rangeInfo
			for _, ri := range ranges {
				if ids[ri.Leader] != nil && len(ri.holders()) < len(c.members) {
					cands = append(cands, ri)
				}
			}
			if len(cands) == 0 {
				errs = append(errs, fmt.Errorf("no range to move in %+v", ranges))
			} else {
				ri := cands[r.Intn(len(cands))]
				rangeID, from = ri.ID, ri.Leader
				for _, m := range c.shuffled(r) {
					if id := idOf(ids, m); !slices.Contains(ri.holders(), id) {
						to = id
					}
				}
			}
		} else {
			// A later try: a move that went through ends the fault.
			for _, ri := range ranges {
				if ri.ID == rangeID && slices.Contains(ri.holders(), to) && !slices.Contains(ri.holders(), from) {
					c.t.Logf("moved range %d from %s to %s by a try cut short (%v)", rangeID, ids[from].name, ids[to].name, errors.Join(errs...))
					return nil
				}
			}
		}
		if rangeID != 0 {
			m := c.members[r.Intn(len(c.members))]
			err := m.operator(mctx, time.Minute, func(ctx context.Context, nc internalpb.NodeClient) error {
				_, err := nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: rangeID, FromMember: from, ToMember: to})
				return err
			})
			if err == nil {
				c.t.Logf("moved range %d from %s (its leader) to %s through %s", rangeID, ids[from].name, ids[to].name, m.name)
				return nil
			}
			errs = append(errs, fmt.Errorf("move range %d %x → %x through %s: %w", rangeID, from, to, m.name, err))
		}
		select {
		case <-mctx.Done():
			return errors.Join(append(errs, mctx.Err())...)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rangeLeaderApart returns the placement group's leader and another
// member leading a range, as the placement leader's /cairn/ranges says.
// If the placement leader leads every range, a range holding both moves
// its leadership first (TransferRangeLeader) to another of its members.
func (c *cluster) rangeLeaderApart(ctx context.Context, r *rand.Rand) (placementLeader, rangeLeader *member, rangeID uint64, _ error) {
	ids, err := c.memberIDs(ctx)
	if err != nil {
		return nil, nil, 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	for {
		p, err := c.placementLeader(wctx)
		if err != nil {
			return nil, nil, 0, errors.Join(append(errs, err)...)
		}
		pid := idOf(ids, p)
		ranges, err := p.ranges(wctx)
		if err == nil {
			var apart, led []rangeInfo
			for _, ri := range ranges {
				switch {
				case ri.Leader == 0:
				case ri.Leader != pid && ids[ri.Leader] != nil:
					apart = append(apart, ri)
				case len(ri.holders()) > 1:
					led = append(led, ri)
				}
			}
			if len(apart) > 0 {
				ri := apart[r.Intn(len(apart))]
				return p, ids[ri.Leader], ri.ID, nil
			}
			if len(led) > 0 {
				ri := led[r.Intn(len(led))]
				var others []uint64
				for _, h := range ri.holders() {
					if h != pid {
						others = append(others, h)
					}
				}
				to := others[r.Intn(len(others))]
				c.t.Logf("the placement leader %s leads every range: range %d's leadership goes to %s", p.name, ri.ID, ids[to].name)
				err = p.operator(wctx, 5*time.Second, func(ctx context.Context, nc internalpb.NodeClient) error {
					_, err := nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: ri.ID, Member: to})
					return err
				})
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
		select {
		case <-wctx.Done():
			return nil, nil, 0, errors.Join(append(errs, wctx.Err())...)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
