package lease

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Leases across shards (DESIGN.md "Leases", sharded mode). A lease lives
// in its home shard's lessor; keys in another shard S attach to it through
// S's lessor, which holds a shadow of the lease: no TTL and no expiry of
// its own, only the attachments, so that S can delete the keys when the
// home revokes the lease. The home records which shards hold keys of each
// lease (registrations); after a revoke they stay, pending, until each
// shard has dropped the shadow and left a tombstone that refuses late puts
// with the lease. Each registration has a generation (the home's raft
// index of it, increasing): a tombstone refuses the generations up to the
// one it revoked, so a lease granted again under the same id, registered
// anew, is not refused:
//
//	home: grant 7; register 7 in S (gen 40)  l home 'g' 7 S = ""
//	S:    put k lease=7@40 (shadow 7)        l S 's' 7 = 40, l S 'a' 7 k
//	home: revoke 7                           record gone; 'g' 7 S pending
//	S:    RevokeShadow 7 → [k] deleted       l S 't' 7 = 40 (tombstone)
//	S:    put j lease=7@40 (late)            refused: 7 is not a lease here
//	home: Unregister 7 S                     'g' 7 S = "d"
//	home: grant 7 again; register (gen 55)   S: put lease=7@55 makes a shadow
//
// The home refuses to grant an id again while a revoke of it is pending.
const (
	subShadow   = 's' // 'l' store 's' id: a shadow of a lease homed elsewhere
	subTomb     = 't' // 'l' store 't' id: a revoked shadow
	subRegister = 'g' // 'l' store 'g' id shard(8): shard holds keys of home lease id
)

// doneMark is the value of a registration whose shard has dropped the
// shadow.
var doneMark = []byte("d")

func shadowKey(store uint64, id ID) []byte {
	return appendID(append(storePrefix(store), subShadow), id)
}

func tombKey(store uint64, id ID) []byte {
	return appendID(append(storePrefix(store), subTomb), id)
}

func registerPrefix(store uint64, id ID) []byte {
	return appendID(append(storePrefix(store), subRegister), id)
}

func registerKey(store uint64, id ID, shard uint64) []byte {
	return binary.BigEndian.AppendUint64(registerPrefix(store, id), shard)
}

// subBounds bounds every record of one sub-kind of store.
func subBounds(store uint64, sub byte) (lo, hi []byte) {
	return append(storePrefix(store), sub), append(storePrefix(store), sub+1)
}

// scanIDs returns the ids of the records of one sub-kind, with the
// generations they hold.
func scanIDs(r reader, store uint64, sub byte) (map[ID]uint64, error) {
	lo, hi := subBounds(store, sub)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("lease: new iterator: %w", err)
	}
	defer it.Close()
	out := map[ID]uint64{}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		if len(it.Key()) != len(lo)+8 || len(v) != 8 {
			return nil, fmt.Errorf("lease: malformed record %x = %x", it.Key(), v)
		}
		out[decodeID(it.Key()[len(lo):])] = binary.BigEndian.Uint64(v)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("lease: scan records: %w", err)
	}
	return out, nil
}

// Shadow lets keys of this shard attach to lease id, homed in another
// shard that registered this one with generation gen (Register there): it
// makes a shadow of the lease unless there is one. A lease whose shadow
// this shard revoked at gen or later is refused with ErrLeaseNotFound (a
// late put with it), and nothing is written. A lease homed here needs no
// shadow.
func (l *Lessor) Shadow(b *pebble.Batch, id ID, gen uint64) error {
	if id == NoLease {
		return fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.mu.tombs[id]; ok && t >= gen {
		return fmt.Errorf("%w: %d (revoked)", ErrLeaseNotFound, id)
	}
	if _, ok := l.mu.leases[id]; ok {
		return nil
	}
	if g, ok := l.mu.shadows[id]; ok && g >= gen {
		return nil
	}
	if err := b.Set(shadowKey(l.opts.ID, id), binary.BigEndian.AppendUint64(nil, gen), nil); err != nil {
		return fmt.Errorf("lease: write shadow %d: %w", id, err)
	}
	l.mu.shadows[id] = gen
	return nil
}

// RevokeShadow drops the shadow of lease id and its attachments, leaves a
// tombstone that refuses registrations of it up to generation gen (the
// home's, as of the revoke), and returns the attached keys
// in key order for the caller to delete at one revision in the same batch
// (indexed). Without a shadow it only leaves the tombstone; revoking again
// is harmless.
func (l *Lessor) RevokeShadow(b *pebble.Batch, id ID, gen uint64) ([][]byte, error) {
	if !b.Indexed() {
		return nil, ErrBatchNotIndexed
	}
	l.mu.Lock()
	sgen, shadowed := l.mu.shadows[id]
	gen = max(gen, sgen, l.mu.tombs[id])
	l.mu.Unlock()
	var keys [][]byte
	if shadowed {
		lo, hi := attachBounds(l.opts.ID, id)
		var err error
		if keys, err = scanKeys(b, lo, hi); err != nil {
			return nil, err
		}
		for _, k := range keys {
			if err := b.Delete(append(lo[:len(lo):len(lo)], k...), nil); err != nil {
				return nil, fmt.Errorf("lease: detach %q from %d: %w", k, id, err)
			}
		}
		if err := b.Delete(shadowKey(l.opts.ID, id), nil); err != nil {
			return nil, fmt.Errorf("lease: delete shadow %d: %w", id, err)
		}
	}
	if err := b.Set(tombKey(l.opts.ID, id), binary.BigEndian.AppendUint64(nil, gen), nil); err != nil {
		return nil, fmt.Errorf("lease: write tombstone %d: %w", id, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.mu.shadows, id)
	l.mu.tombs[id] = gen
	return keys, nil
}

// ShadowKeys returns the keys attached to the shadow of lease id, as
// committed (for the home's TimeToLive with keys).
func (l *Lessor) ShadowKeys(id ID) ([][]byte, error) {
	l.mu.Lock()
	_, ok := l.mu.shadows[id]
	db := l.db
	l.mu.Unlock()
	if !ok {
		return nil, nil
	}
	lo, hi := attachBounds(l.opts.ID, id)
	return scanKeys(db, lo, hi)
}

// Register records, at lease id's home, that shard holds (or is about to
// hold) keys attached to it. Unknown or revoked id: ErrLeaseNotFound, and
// nothing is written. Registering again is harmless.
func (l *Lessor) Register(b *pebble.Batch, id ID, shard uint64) error {
	l.mu.Lock()
	_, ok := l.mu.leases[id]
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %d", ErrLeaseNotFound, id)
	}
	if err := b.Set(registerKey(l.opts.ID, id, shard), nil, nil); err != nil {
		return fmt.Errorf("lease: register %d in %d: %w", id, shard, err)
	}
	return nil
}

// Unregister marks shard's registration of lease id done once the shard
// has revoked its shadow (after the lease was revoked here).
func (l *Lessor) Unregister(b *pebble.Batch, id ID, shard uint64) error {
	if err := b.Set(registerKey(l.opts.ID, id, shard), doneMark, nil); err != nil {
		return fmt.Errorf("lease: unregister %d in %d: %w", id, shard, err)
	}
	return nil
}

// Registrations returns, from r (the DB or an indexed batch), the shards
// registered as holding keys of lease id whose registration is not done;
// pending reports that some of them are of a lease no longer granted (the
// id may not be granted again until its revoke is done everywhere).
func (l *Lessor) Registrations(r reader, id ID) (shards []uint64, pending bool, err error) {
	lo := registerPrefix(l.opts.ID, id)
	hi := registerPrefix(l.opts.ID, id+1)
	if id == ID(1<<63-1) {
		_, hi = subBounds(l.opts.ID, subRegister)
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, fmt.Errorf("lease: new iterator: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) != len(lo)+8 {
			return nil, false, fmt.Errorf("lease: malformed registration %x", it.Key())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, false, err
		}
		if len(v) == 0 {
			shards = append(shards, binary.BigEndian.Uint64(it.Key()[len(lo):]))
		}
	}
	return shards, len(shards) > 0 && !l.LeaseExists(int64(id)), it.Error()
}

// Registered returns the shards registered as holding keys of lease id
// whose registration is not done, as committed.
func (l *Lessor) Registered(id ID) ([]uint64, error) {
	l.mu.Lock()
	db := l.db
	l.mu.Unlock()
	shards, _, err := l.Registrations(db, id)
	return shards, err
}

// PendingRevokes returns the leases revoked here whose registered shards
// have not all revoked their shadows yet, with those shards, as committed.
func (l *Lessor) PendingRevokes() (map[ID][]uint64, error) {
	l.mu.Lock()
	db := l.db
	l.mu.Unlock()
	lo, hi := subBounds(l.opts.ID, subRegister)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("lease: new iterator: %w", err)
	}
	defer it.Close()
	out := map[ID][]uint64{}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != len(lo)+16 {
			return nil, fmt.Errorf("lease: malformed registration %x", k)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		id := decodeID(k[len(lo) : len(lo)+8])
		if len(v) != 0 || l.LeaseExists(int64(id)) {
			continue
		}
		out[id] = append(out[id], binary.BigEndian.Uint64(k[len(lo)+8:]))
	}
	return out, it.Error()
}

// SplitOff moves the attachments of keys in [key, end) (end nil: no end)
// to the lessor of child, a shard splitting off this one's keys from key
// on, in b (indexed): each lease with keys there — homed here or a shadow —
// becomes a shadow in child (generation 0 for a lease homed here, which the
// child registers at this home later; a shadow keeps its generation), and
// this shard's tombstones are copied, so late puts stay refused. It returns
// the leases child now holds keys of.
func (l *Lessor) SplitOff(b *pebble.Batch, key, end []byte, child uint64) ([]ID, error) {
	if !b.Indexed() {
		return nil, ErrBatchNotIndexed
	}
	lo, hi := subBounds(l.opts.ID, subAttach)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("lease: new iterator: %w", err)
	}
	type move struct {
		id  ID
		key []byte
	}
	var moves []move
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < len(lo)+8 {
			it.Close()
			return nil, fmt.Errorf("lease: malformed attachment %x", k)
		}
		uk := k[len(lo)+8:]
		if string(uk) < string(key) || (end != nil && string(uk) >= string(end)) {
			continue
		}
		moves = append(moves, move{decodeID(k[len(lo) : len(lo)+8]), append([]byte(nil), uk...)})
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []ID
	for _, m := range moves {
		if err := b.Delete(attachKey(l.opts.ID, m.id, m.key), nil); err != nil {
			return nil, err
		}
		if err := b.Set(attachKey(child, m.id, m.key), nil, nil); err != nil {
			return nil, err
		}
		if len(ids) == 0 || ids[len(ids)-1] != m.id {
			ids = append(ids, m.id)
			gen := l.mu.shadows[m.id] // 0 for a lease homed here
			if err := b.Set(shadowKey(child, m.id), binary.BigEndian.AppendUint64(nil, gen), nil); err != nil {
				return nil, err
			}
		}
	}
	for id, gen := range l.mu.tombs {
		if err := b.Set(tombKey(child, id), binary.BigEndian.AppendUint64(nil, gen), nil); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// Shadows lists the leases this shard holds shadows of.
func (l *Lessor) Shadows() []ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ID, 0, len(l.mu.shadows))
	for id := range l.mu.shadows {
		out = append(out, id)
	}
	return out
}

// Absorb makes this lessor hold the lessor records of store right, whose
// range this shard's range absorbs (mvcc.Batch.Absorb, docs/plan-merge.md),
// in b (indexed), the inverse of SplitOff: right's attachments are
// written again under this store; each lease right holds a shadow of
// becomes a shadow here, at the higher of the two generations, unless this
// lessor holds the lease itself (the home, range 1), whose attachments
// then are its own; right's tombstones are copied at the higher of the two
// generations. A lease revoked at the home whose shadow right had not
// revoked yet stays a shadow here, so the revoke that reaches this shard
// for right (RevokeShadow) finds its keys. right's records stay, for the
// caller to drop with its replica (DropStore). right must home no lease: a
// merge's right range never does (every lease lives in range 1, which is
// never absorbed); a store that does is refused and nothing is written.
// Cost: one write per attachment of right.
func (l *Lessor) Absorb(b *pebble.Batch, right uint64) error {
	if !b.Indexed() {
		return ErrBatchNotIndexed
	}
	if right == l.opts.ID {
		return fmt.Errorf("lease: store %d cannot absorb itself", right)
	}
	for _, sub := range []byte{subRecord, subRegister} {
		lo, hi := subBounds(right, sub)
		homed, err := scanKeys(b, lo, hi)
		if err != nil {
			return err
		}
		if len(homed) > 0 {
			return fmt.Errorf("lease: store %d homes lease %d: a range that homes leases is never absorbed", right, decodeID(homed[0][:8]))
		}
	}
	shadows, err := scanIDs(b, right, subShadow)
	if err != nil {
		return err
	}
	tombs, err := scanIDs(b, right, subTomb)
	if err != nil {
		return err
	}
	lo, hi := subBounds(right, subAttach)
	attached, err := scanKeys(b, lo, hi) // id(8) key
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range attached {
		if len(a) < 8 {
			return fmt.Errorf("lease: malformed attachment of store %d: %x", right, a)
		}
		id := decodeID(a[:8])
		if err := b.Set(attachKey(l.opts.ID, id, a[8:]), nil, nil); err != nil {
			return fmt.Errorf("lease: attach %q to %d: %w", a[8:], id, err)
		}
		if _, ok := shadows[id]; !ok {
			shadows[id] = 0 // keys with no shadow record: revocable all the same
		}
	}
	newShadows := map[ID]uint64{}
	for id, gen := range shadows {
		if _, own := l.mu.leases[id]; own {
			continue
		}
		if have, ok := l.mu.shadows[id]; ok && have >= gen {
			continue
		}
		if err := b.Set(shadowKey(l.opts.ID, id), binary.BigEndian.AppendUint64(nil, gen), nil); err != nil {
			return fmt.Errorf("lease: write shadow %d: %w", id, err)
		}
		newShadows[id] = gen
	}
	newTombs := map[ID]uint64{}
	for id, gen := range tombs {
		if have, ok := l.mu.tombs[id]; ok && have >= gen {
			continue
		}
		if err := b.Set(tombKey(l.opts.ID, id), binary.BigEndian.AppendUint64(nil, gen), nil); err != nil {
			return fmt.Errorf("lease: write tombstone %d: %w", id, err)
		}
		newTombs[id] = gen
	}
	// Memory follows only once every record is written (see doc.go on
	// failed writes).
	for id, gen := range newShadows {
		l.mu.shadows[id] = gen
	}
	for id, gen := range newTombs {
		l.mu.tombs[id] = gen
	}
	return nil
}
