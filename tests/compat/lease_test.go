package compat

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	flagLeaseSeed = flag.Int64("lease.seed", 0, "TestLeaseDifferential: run only this seed")
	flagLeaseSeqs = flag.Int("lease.seqs", seqs(30, 100), "TestLeaseDifferential: how many seeded sequences (30, or 100 with -tags cairn_long)")
)

// leaseSide is one server's view of a sequence: its lease ids by grant
// index (etcd and Cairn pick different ids for a grant without one).
type leaseSide struct {
	s   *server
	ids []int64
	// revs, for a sharded Cairn, maps its revisions to etcd's by step
	// (leaseRevs); nil: revisions print as they are.
	revs *leaseRevs
	// loose leaves out of answers the header revisions a sharded Cairn
	// gives differently by design (of answers that wrote nothing, and of
	// revokes, whose deletes in other ranges come at later revisions).
	loose bool
}

// r prints a revision of this server as etcd's for the same write.
func (l *leaseSide) r(rev int64) string {
	if l.revs == nil {
		return fmt.Sprint(rev)
	}
	return l.revs.etcd(rev)
}

// leaseRevs maps a sharded Cairn's revisions to etcd's: every revision
// Cairn gave during a step (between oracle revisions read before and after
// it) maps to etcd's revision after the same step — a revoke deletes the
// lease's keys in each range at its own revision, where etcd uses one.
type leaseRevs struct {
	his, etcds []int64 // step windows' upper ends (Cairn) and etcd's revision
	pending    int64   // etcd's revision after the step running now
}

func (m *leaseRevs) etcd(rev int64) string {
	i, _ := slices.BinarySearch(m.his, rev)
	if i == len(m.his) {
		return fmt.Sprint(m.pending)
	}
	if i == 0 && len(m.his) > 0 && rev <= m.his[0] && m.etcds[0] < 0 {
		return "before"
	}
	return fmt.Sprint(m.etcds[i])
}

// name maps a lease id back to its grant index, so that the two servers'
// answers compare.
func (l *leaseSide) name(id int64) string {
	if id == 0 {
		return "none"
	}
	if i := slices.Index(l.ids, id); i >= 0 {
		return fmt.Sprintf("L%d", i)
	}
	return fmt.Sprintf("unknown(%d)", id)
}

// TestLeaseDifferential runs seeded sequences of lease operations in
// lockstep against etcd and Cairn — grants (chosen ids, server-picked ids,
// duplicates, odd and too large TTLs), puts attaching keys (known, unknown
// and revoked leases, ignore_lease), txns comparing on LEASE, deletes,
// revokes, time-to-live with keys, the lease list, keepalives — and
// compares every answer, the keys with their leases after each step, and
// the events a watcher of the sequence's keys saw. Lease ids are compared
// by grant order; remaining TTLs, which depend on when each server was
// asked, only as alive (> 0), expired (0) or unknown (-1).
func TestLeaseDifferential(t *testing.T) {
	etcd, cairn := startPair(t)
	first, last := int64(1), int64(*flagLeaseSeqs)
	if *flagLeaseSeed != 0 {
		first, last = *flagLeaseSeed, *flagLeaseSeed
	}
	runLeaseSequences(t, etcd, cairn, first, last, false)
}

// runLeaseSequences runs TestLeaseDifferential's sequences first..last;
// with sharded, cairn is a sharded Cairn (see TestShardedLeaseDifferential).
func runLeaseSequences(t *testing.T, etcd, cairn *server, first, last int64, sharded bool) {
	for seed := first; seed <= last; seed++ {
		prefix := fmt.Sprintf("lease%03d/", seed)
		sides := []*leaseSide{{s: etcd, loose: sharded}, {s: cairn, loose: sharded}}
		if sharded {
			sides[1].revs = &leaseRevs{his: []int64{oracleRev(t, cairn)}, etcds: []int64{-1}}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		watches := make([]clientv3.WatchChan, 2)
		for i, sd := range sides {
			watches[i] = sd.s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithPrevKV())
		}
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		var trace []string
		for step := range 40 {
			op := leaseOp(r, prefix, seed, step)
			var answers []string
			for i, sd := range sides {
				if i == 1 && sd.revs != nil {
					sd.revs.pending = currentRev(t, etcd)
				}
				answers = append(answers, op.run(ctx, sd)+" | "+keysWithLeases(ctx, sd, prefix))
				if i == 1 && sd.revs != nil {
					sd.revs.his = append(sd.revs.his, oracleRev(t, cairn))
					sd.revs.etcds = append(sd.revs.etcds, sd.revs.pending)
				}
			}
			trace = append(trace, op.desc)
			if answers[0] != answers[1] {
				t.Fatalf("seed %d step %d: %s\netcd:  %s\ncairn: %s\ntrace:\n  %s", seed, step, op.desc, answers[0], answers[1], strings.Join(trace, "\n  "))
			}
		}
		// Every event both watchers saw, up to the last revision.
		var evs [2]string
		for i, sd := range sides {
			rev := currentRev(t, sd.s)
			if sd.revs != nil {
				rev = sd.revs.his[len(sd.revs.his)-1]
			}
			evs[i] = collectEvents(t, watches[i], rev, sd)
		}
		cancel()
		if evs[0] != evs[1] {
			t.Fatalf("seed %d: watch events differ\netcd:  %s\ncairn: %s", seed, evs[0], evs[1])
		}
		// Leave no leases behind for the next sequence.
		for _, sd := range sides {
			ls, err := sd.s.cli.Leases(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range ls.Leases {
				_, _ = sd.s.cli.Revoke(context.Background(), l.ID)
			}
		}
	}
}

type leaseStep struct {
	desc string
	run  func(ctx context.Context, sd *leaseSide) string
}

// leaseOp draws one operation.
func leaseOp(r *rand.Rand, prefix string, seed int64, step int) leaseStep {
	key := func() string { return prefix + string(rune('a'+r.IntN(5))) }
	// A lease by grant index, sometimes one that was never granted.
	pick := func(sd *leaseSide, n int) int64 {
		if n < 0 || n >= len(sd.ids) {
			return 424242
		}
		return sd.ids[n]
	}
	idx := r.IntN(6) - 1 // -1: unknown
	switch k := r.IntN(100); {
	case k < 25:
		// Short TTLs (0, negative, 1: raised to the minimum of 2s) could
		// expire mid-sequence at different moments on the two servers;
		// TestLeaseOddTTLs covers them.
		ttls := []int64{600, 600, 60, 9_000_000_001}
		ttl := ttls[r.IntN(len(ttls))]
		chosen := r.IntN(3) == 0
		id := seed*1000 + int64(r.IntN(4)) // duplicates on purpose
		return leaseStep{fmt.Sprintf("grant ttl=%d chosen=%v(%d)", ttl, chosen, id), func(ctx context.Context, sd *leaseSide) string {
			req := &pb.LeaseGrantRequest{TTL: ttl}
			if chosen {
				req.ID = id
			}
			resp, err := pb.NewLeaseClient(sd.s.cli.ActiveConnection()).LeaseGrant(ctx, req)
			if err != nil {
				return "error " + errText(err)
			}
			sd.ids = append(sd.ids, resp.ID)
			if sd.loose {
				return fmt.Sprintf("granted %s ttl=%d", sd.name(resp.ID), resp.TTL)
			}
			return fmt.Sprintf("granted %s ttl=%d rev=%d", sd.name(resp.ID), resp.TTL, resp.Header.Revision)
		}}
	case k < 55:
		k, ignore := key(), r.IntN(5) == 0
		return leaseStep{fmt.Sprintf("put %s lease=L%d ignore_lease=%v", k, idx, ignore), func(ctx context.Context, sd *leaseSide) string {
			opts := []clientv3.OpOption{clientv3.WithPrevKV()}
			if ignore {
				opts = append(opts, clientv3.WithIgnoreLease())
			} else {
				opts = append(opts, clientv3.WithLease(clientv3.LeaseID(pick(sd, idx))))
			}
			resp, err := sd.s.cli.Put(ctx, k, fmt.Sprint(step), opts...)
			if err != nil {
				return "error " + errText(err)
			}
			prev := "none"
			if resp.PrevKv != nil {
				prev = sd.name(resp.PrevKv.Lease)
			}
			return fmt.Sprintf("rev=%s prev lease=%s", sd.r(resp.Header.Revision), prev)
		}}
	case k < 62:
		k := key()
		return leaseStep{fmt.Sprintf("txn lease(%s)==L%d then put with it", k, idx), func(ctx context.Context, sd *leaseSide) string {
			id := pick(sd, idx)
			resp, err := sd.s.cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(k), "=", clientv3.LeaseID(id))).
				Then(clientv3.OpPut(k, "txn", clientv3.WithLease(clientv3.LeaseID(id)))).Else(clientv3.OpGet(k)).Commit()
			if err != nil {
				return "error " + errText(err)
			}
			if sd.loose && !resp.Succeeded {
				return "succeeded=false"
			}
			return fmt.Sprintf("succeeded=%v rev=%s", resp.Succeeded, sd.r(resp.Header.Revision))
		}}
	case k < 68:
		k := key()
		return leaseStep{"delete " + k, func(ctx context.Context, sd *leaseSide) string {
			resp, err := sd.s.cli.Delete(ctx, k)
			if err != nil {
				return "error " + errText(err)
			}
			if sd.loose && resp.Deleted == 0 {
				return "deleted=0"
			}
			return fmt.Sprintf("deleted=%d rev=%s", resp.Deleted, sd.r(resp.Header.Revision))
		}}
	case k < 78:
		return leaseStep{fmt.Sprintf("revoke L%d", idx), func(ctx context.Context, sd *leaseSide) string {
			resp, err := sd.s.cli.Revoke(ctx, clientv3.LeaseID(pick(sd, idx)))
			if err != nil {
				return "error " + errText(err)
			}
			if sd.loose {
				return "revoked"
			}
			return fmt.Sprintf("revoked rev=%d", resp.Header.Revision)
		}}
	case k < 90:
		withKeys := r.IntN(2) == 0
		return leaseStep{fmt.Sprintf("timetolive L%d keys=%v", idx, withKeys), func(ctx context.Context, sd *leaseSide) string {
			var opts []clientv3.LeaseOption
			if withKeys {
				opts = append(opts, clientv3.WithAttachedKeys())
			}
			resp, err := sd.s.cli.TimeToLive(ctx, clientv3.LeaseID(pick(sd, idx)), opts...)
			if err != nil {
				return "error " + errText(err)
			}
			var keys []string
			for _, k := range resp.Keys {
				keys = append(keys, string(k))
			}
			slices.Sort(keys) // etcd lists them in map order
			if sd.loose {
				return fmt.Sprintf("ttl=%s granted=%d keys=%v", ttlClass(resp.TTL), resp.GrantedTTL, keys)
			}
			return fmt.Sprintf("ttl=%s granted=%d keys=%v rev=%d", ttlClass(resp.TTL), resp.GrantedTTL, keys, resp.ResponseHeader.Revision)
		}}
	case k < 95:
		return leaseStep{"leases", func(ctx context.Context, sd *leaseSide) string {
			resp, err := sd.s.cli.Leases(ctx)
			if err != nil {
				return "error " + errText(err)
			}
			var names []string
			for _, l := range resp.Leases {
				names = append(names, sd.name(int64(l.ID)))
			}
			slices.Sort(names) // listed by expiry; equal TTLs tie by timing
			return fmt.Sprintf("leases=%v", names)
		}}
	default:
		return leaseStep{fmt.Sprintf("keepalive once L%d", idx), func(ctx context.Context, sd *leaseSide) string {
			resp, err := sd.s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(pick(sd, idx)))
			if err != nil {
				return "error " + errText(err)
			}
			return fmt.Sprintf("ttl=%s", ttlClass(resp.TTL))
		}}
	}
}

func ttlClass(ttl int64) string {
	switch {
	case ttl > 0:
		return "alive"
	case ttl == 0:
		return "0"
	}
	return fmt.Sprint(ttl)
}

// keysWithLeases lists the sequence's keys with their leases by grant index.
func keysWithLeases(ctx context.Context, sd *leaseSide, prefix string) string {
	resp, err := sd.s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return "error " + errText(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, fmt.Sprintf("%s@%s/%s", strings.TrimPrefix(string(kv.Key), prefix), sd.r(kv.ModRevision), sd.name(kv.Lease)))
	}
	return strings.Join(out, " ")
}

// collectEvents reads a watch until it has seen revision rev (a progress
// request marks the end), and renders the events.
func collectEvents(t *testing.T, ch clientv3.WatchChan, rev int64, sd *leaseSide) string {
	t.Helper()
	var out []string
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sd.s.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case resp, ok := <-ch:
			if !ok {
				t.Fatal("watch closed")
			}
			for _, ev := range resp.Events {
				s := fmt.Sprintf("%s %s@%s lease=%s", ev.Type, ev.Kv.Key, sd.r(ev.Kv.ModRevision), sd.name(ev.Kv.Lease))
				if ev.Type == mvccpb.DELETE && ev.PrevKv != nil {
					s += " prev lease=" + sd.name(ev.PrevKv.Lease)
				}
				out = append(out, s)
			}
			if resp.Header.Revision < rev && resp.IsProgressNotify() {
				// Not there yet (a sharded Cairn answers at the highest
				// revision its ranges have closed): ask again.
				if err := sd.s.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
					t.Fatal(err)
				}
			}
			if resp.Header.Revision >= rev && (resp.IsProgressNotify() || len(resp.Events) == 0) {
				// Within one revision (a revoke deleting several keys) etcd
				// orders events as its lease's key map iterates: compare
				// each revision's events as a set.
				slices.SortStableFunc(out, func(a, b string) int { return strings.Compare(revOf(a), revOf(b)) })
				return strings.Join(sortWithinRevision(out), "\n")
			}
		case <-ctx.Done():
			t.Fatalf("%s: watch did not reach revision %d", sd.s.name, rev)
		}
	}
}

// revOf returns the zero-padded revision of a rendered event.
func revOf(ev string) string {
	at := strings.LastIndex(strings.Fields(ev)[1], "@")
	return fmt.Sprintf("%020s", strings.Fields(ev)[1][at+1:])
}

// sortWithinRevision sorts each run of events of one revision.
func sortWithinRevision(evs []string) []string {
	for i := 0; i < len(evs); {
		j := i
		for j < len(evs) && revOf(evs[j]) == revOf(evs[i]) {
			j++
		}
		slices.Sort(evs[i:j])
		i = j
	}
	return evs
}

// TestLeaseOddTTLs: TTLs below the minimum (0, negative, 1) are raised to
// it, a too large one is refused, and such leases are revoked at once, the
// same on both servers.
func TestLeaseOddTTLs(t *testing.T) {
	etcd, cairn := startPair(t)
	for _, ttl := range []int64{0, -5, 1, 2, 3, 9_000_000_000, 9_000_000_001} {
		var got []string
		for _, s := range []*server{etcd, cairn} {
			resp, err := pb.NewLeaseClient(s.cli.ActiveConnection()).LeaseGrant(context.Background(), &pb.LeaseGrantRequest{TTL: ttl})
			if err != nil {
				got = append(got, "error "+errText(err))
				continue
			}
			got = append(got, fmt.Sprintf("ttl=%d", resp.TTL))
			if _, err := s.cli.Revoke(context.Background(), clientv3.LeaseID(resp.ID)); err != nil {
				t.Fatal(err)
			}
		}
		if got[0] != got[1] {
			t.Errorf("grant ttl=%d: etcd %s, cairn %s", ttl, got[0], got[1])
		}
	}
}
