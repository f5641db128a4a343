package lease

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

var (
	modelSeed  = flag.Uint64("model.seed", 0, "run only this seed of TestModel")
	modelSeeds = flag.Int("model.seeds", 50, "number of seeds TestModel runs")
)

// mLease is a lease of the naive model.
type mLease struct {
	ttl, remaining int64
	expiry         time.Time
	deadline       time.Time // when Expired hands it out (next)
	ckptAt         time.Time
	scheduled      bool // has a checkpoint scheduled
	keys           map[string]bool
}

// model is the naive lessor: a map of leases, scanned in full for every
// question; no heaps, no pebble.
type model struct {
	opts    Options
	primary bool
	leases  map[ID]*mLease
}

func (m *model) start(le *mLease, expiry, now time.Time) {
	le.expiry, le.deadline = expiry, expiry
	le.scheduled = seconds(le.ttl) > m.opts.CheckpointInterval
	le.ckptAt = now.Add(m.opts.CheckpointInterval)
}

func (m *model) grant(id ID, ttl int64, now time.Time) (Lease, error) {
	switch {
	case id == 0:
		return Lease{}, ErrLeaseNotFound
	case ttl > MaxTTL:
		return Lease{}, ErrLeaseTTLTooLarge
	case m.leases[id] != nil:
		return Lease{}, ErrLeaseExists
	}
	le := &mLease{ttl: max(ttl, m.opts.MinTTL), keys: map[string]bool{}}
	m.leases[id] = le
	if m.primary {
		m.start(le, now.Add(seconds(le.ttl)), now)
	}
	return Lease{ID: id, TTL: le.ttl}, nil
}

func (m *model) sortedKeys(le *mLease) [][]byte {
	var out [][]byte
	for k := range le.keys {
		out = append(out, []byte(k))
	}
	sort.Slice(out, func(i, j int) bool { return string(out[i]) < string(out[j]) })
	return out
}

func (m *model) revoke(id ID) ([][]byte, error) {
	le := m.leases[id]
	if le == nil {
		return nil, ErrLeaseNotFound
	}
	delete(m.leases, id)
	return m.sortedKeys(le), nil
}

func (m *model) attach(id ID, keys [][]byte, on bool) error {
	le := m.leases[id]
	if le == nil {
		return ErrLeaseNotFound
	}
	for _, k := range keys {
		if on {
			le.keys[string(k)] = true
		} else {
			delete(le.keys, string(k))
		}
	}
	return nil
}

func (m *model) checkpoint(id ID, rem int64) {
	if le := m.leases[id]; le != nil {
		le.remaining = max(rem, 0)
	}
}

func (m *model) renew(id ID, now time.Time) (int64, bool, error) {
	if !m.primary {
		return 0, false, ErrNotPrimary
	}
	le := m.leases[id]
	switch {
	case le == nil:
		return 0, false, ErrLeaseNotFound
	case !now.Before(le.expiry):
		return 0, false, ErrLeaseExpired
	}
	le.expiry, le.deadline = now.Add(seconds(le.ttl)), now.Add(seconds(le.ttl))
	return le.ttl, le.remaining > 0, nil
}

func (m *model) timeToLive(id ID, now time.Time) (Status, error) {
	if !m.primary {
		return Status{}, ErrNotPrimary
	}
	le := m.leases[id]
	if le == nil {
		return Status{}, ErrLeaseNotFound
	}
	ttl := int64(0)
	if d := le.expiry.Sub(now); d > 0 {
		ttl = int64(d / time.Second)
	}
	return Status{ID: id, GrantedTTL: le.ttl, TTL: ttl, Keys: m.sortedKeys(le)}, nil
}

// first returns the id whose time (by at) is smallest among those ok, at
// or before now; ties by id.
func (m *model) first(now time.Time, ok func(*mLease) bool, at func(*mLease) time.Time) (ID, bool) {
	var best ID
	found := false
	for id, le := range m.leases {
		if !ok(le) || at(le).After(now) {
			continue
		}
		if !found || at(le).Before(at(m.leases[best])) || (at(le).Equal(at(m.leases[best])) && id < best) {
			best, found = id, true
		}
	}
	return best, found
}

func (m *model) expired(now time.Time, limit int) []ID {
	if !m.primary {
		return nil
	}
	var out []ID
	for limit <= 0 || len(out) < limit {
		id, ok := m.first(now, func(*mLease) bool { return true }, func(le *mLease) time.Time { return le.deadline })
		if !ok {
			break
		}
		out = append(out, id)
		m.leases[id].deadline = now.Add(m.opts.RetryInterval)
	}
	return out
}

func (m *model) dueCheckpoints(now time.Time, limit int) []Checkpoint {
	if !m.primary {
		return nil
	}
	var out []Checkpoint
	for limit <= 0 || len(out) < limit {
		id, ok := m.first(now, func(le *mLease) bool { return le.scheduled }, func(le *mLease) time.Time { return le.ckptAt })
		if !ok {
			break
		}
		le := m.leases[id]
		if !now.Before(le.expiry) {
			le.scheduled = false
			continue
		}
		le.ckptAt = now.Add(m.opts.CheckpointInterval)
		d := le.expiry.Sub(now)
		if rem := int64((d + time.Second - 1) / time.Second); rem < le.ttl {
			out = append(out, Checkpoint{ID: id, RemainingTTL: rem})
		}
	}
	return out
}

func (m *model) promote(now time.Time, extend time.Duration) {
	m.primary = true
	for _, le := range m.leases {
		eff := le.ttl
		if le.remaining > 0 {
			eff = le.remaining
		}
		m.start(le, now.Add(extend+seconds(eff)), now)
	}
}

func (m *model) demote() {
	m.primary = false
	for _, le := range m.leases {
		le.scheduled = false
	}
}

func (m *model) list() []Lease {
	var out []Lease
	for id, le := range m.leases {
		out = append(out, Lease{ID: id, TTL: le.ttl, RemainingTTL: le.remaining})
	}
	slices.SortFunc(out, func(a, b Lease) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// TestModel runs random operations against the Lessor and the naive model
// and compares every answer. Operations are grouped into batches of one to
// four (as a raft apply groups entries); reopens happen between batches.
// Replay a failure with -model.seed=N.
func TestModel(t *testing.T) {
	seeds := []uint64{}
	if *modelSeed != 0 {
		seeds = append(seeds, *modelSeed)
	} else {
		for i := 1; i <= *modelSeeds; i++ {
			seeds = append(seeds, uint64(i))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed, 400) })
	}
}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed))
	opts := Options{ID: 3, MinTTL: 2, CheckpointInterval: 4 * time.Second, RetryInterval: 2 * time.Second}
	db := openTestDB(t)
	l, err := Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	m := &model{opts: opts, leases: map[ID]*mLease{}}
	now := epoch
	var trace []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: %s\ntrace:\n%s", seed, fmt.Sprintf(format, args...), strings.Join(trace, "\n"))
	}
	check := func(what string, got, want any) {
		t.Helper()
		if g, w := fmt.Sprintf("%v", got), fmt.Sprintf("%v", want); g != w {
			fail("%s: got %s, want %s", what, g, w)
		}
	}
	sameErr := func(what string, got, want error) {
		t.Helper()
		if (got == nil) != (want == nil) || (want != nil && !errors.Is(got, want)) {
			fail("%s: got error %v, want %v", what, got, want)
		}
	}
	randID := func() ID { return ID(rng.IntN(8) - 1) } // -1..6: 0 is refused
	randKeys := func() [][]byte {
		var ks [][]byte
		for range 1 + rng.IntN(3) {
			ks = append(ks, []byte{"abcdef"[rng.IntN(6)]})
		}
		return ks
	}
	for step := 0; step < steps; {
		b := db.NewIndexedBatch()
		for n := 1 + rng.IntN(4); n > 0 && step < steps; n-- {
			step++
			switch op := rng.IntN(100); {
			case op < 14:
				id, ttl := randID(), int64(rng.IntN(12))-1
				if rng.IntN(20) == 0 {
					ttl = MaxTTL + int64(rng.IntN(2))
				}
				trace = append(trace, fmt.Sprintf("grant %d ttl=%d", id, ttl))
				got, err := l.Grant(b, id, ttl, now)
				want, werr := m.grant(id, ttl, now)
				sameErr("grant", err, werr)
				check("grant", got, want)
			case op < 22:
				id := randID()
				trace = append(trace, fmt.Sprintf("revoke %d", id))
				got, err := l.Revoke(b, id)
				want, werr := m.revoke(id)
				sameErr("revoke", err, werr)
				check("revoke keys", fmtKeys(got), fmtKeys(want))
			case op < 34:
				id, keys, on := randID(), randKeys(), rng.IntN(3) > 0
				trace = append(trace, fmt.Sprintf("attach=%t %d %s", on, id, fmtKeys(keys)))
				var err error
				if on {
					err = l.Attach(b, id, keys)
				} else {
					err = l.Detach(b, id, keys)
				}
				sameErr("attach", err, m.attach(id, keys, on))
			case op < 48:
				id := randID()
				trace = append(trace, fmt.Sprintf("renew %d", id))
				ttl, clear, err := l.Renew(id, now)
				wttl, wclear, werr := m.renew(id, now)
				sameErr("renew", err, werr)
				check("renew", []any{ttl, clear}, []any{wttl, wclear})
				if clear && rng.IntN(4) > 0 { // the clear proposal usually applies
					trace = append(trace, fmt.Sprintf("checkpoint %d 0", id))
					if err := l.Checkpoint(b, id, 0); err != nil {
						t.Fatal(err)
					}
					m.checkpoint(id, 0)
				}
			case op < 56:
				id := randID()
				trace = append(trace, fmt.Sprintf("ttl %d", id))
				got, err := l.TimeToLive(id, now, true)
				want, werr := m.timeToLive(id, now)
				sameErr("ttl", err, werr)
				if werr == nil {
					// Keys are read from pebble as committed.
					want.Keys = nil
					got.Keys = nil
				}
				check("ttl", got, want)
			case op < 70:
				d := time.Duration(rng.IntN(12)) * 250 * time.Millisecond
				now = now.Add(d)
				trace = append(trace, fmt.Sprintf("advance %s → %s", d, now.Sub(epoch)))
			case op < 78:
				limit := rng.IntN(4)
				trace = append(trace, fmt.Sprintf("expired max=%d", limit))
				got, want := l.Expired(now, limit), m.expired(now, limit)
				check("expired", got, want)
				for _, id := range got { // most revokes apply; some are lost
					if rng.IntN(3) > 0 {
						trace = append(trace, fmt.Sprintf("revoke %d", id))
						keys, err := l.Revoke(b, id)
						wkeys, werr := m.revoke(id)
						sameErr("revoke expired", err, werr)
						check("revoke expired keys", fmtKeys(keys), fmtKeys(wkeys))
					}
				}
			case op < 86:
				limit := rng.IntN(4)
				trace = append(trace, fmt.Sprintf("checkpoints max=%d", limit))
				got, want := l.DueCheckpoints(now, limit), m.dueCheckpoints(now, limit)
				check("checkpoints", got, want)
				for _, cp := range got {
					if rng.IntN(4) > 0 {
						if err := l.Checkpoint(b, cp.ID, cp.RemainingTTL); err != nil {
							t.Fatal(err)
						}
						m.checkpoint(cp.ID, cp.RemainingTTL)
					}
				}
			case op < 91:
				extend := time.Duration(rng.IntN(3)) * 500 * time.Millisecond
				trace = append(trace, fmt.Sprintf("promote extend=%s", extend))
				l.Promote(now, extend)
				m.promote(now, extend)
			case op < 95:
				trace = append(trace, "demote")
				l.Demote()
				m.demote()
			default:
				id := randID()
				check("exists", l.LeaseExists(int64(id)), m.leases[id] != nil)
			}
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
		// The order (by expiry on the primary) is the data-driven tests'
		// subject; here the set is.
		got := l.Leases()
		slices.SortFunc(got, func(a, b Lease) int { return cmp.Compare(a.ID, b.ID) })
		check("leases", got, m.list())
		check("primary", l.IsPrimary(), m.primary)
		// Attached keys, as committed.
		if m.primary {
			for id := range m.leases {
				st, err := l.TimeToLive(id, now, true)
				if err != nil {
					fail("ttl %d: %v", id, err)
				}
				check(fmt.Sprintf("keys of %d", id), fmtKeys(st.Keys), fmtKeys(m.sortedKeys(m.leases[id])))
			}
		}
		if rng.IntN(15) == 0 {
			trace = append(trace, "reopen")
			if l, err = Open(db, opts); err != nil {
				t.Fatal(err)
			}
			m.demote()
			check("leases after reopen", l.Leases(), m.list())
		}
	}
}
