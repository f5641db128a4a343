package mvcc

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Events calls fn with the change events of each revision in [from, to]
// that wrote keys of this store, in revision order and, within a revision,
// in write order, until fn returns false. Events are as Batch.TakeEvents
// makes them (PrevKv set when the previous version is still stored). It
// refuses a from below the compacted revision with ErrCompacted; the
// compacted revision itself can still be read (its events are kept).
func (s *Store) Events(from, to Revision, fn func(rev Revision, evs []*mvccpb.Event) bool) error {
	if from < s.CompactRev() {
		return ErrCompacted
	}
	if to > s.Rev() {
		to = s.Rev()
	}
	if from > to {
		return nil
	}
	log, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(max(from, 0)), UpperBound: eventKey(to + 1)})
	if err != nil {
		return err
	}
	defer log.Close()
	vers, err := s.db.NewIter(&pebble.IterOptions{LowerBound: versionsStart, UpperBound: versionsEnd})
	if err != nil {
		return err
	}
	defer vers.Close()
	for log.First(); log.Valid(); log.Next() {
		rev, err := decodeEventKey(log.Key())
		if err != nil {
			return err
		}
		val, err := log.ValueAndErr()
		if err != nil {
			return err
		}
		es, err := decodeEvents(val)
		if err != nil {
			return err
		}
		var evs []*mvccpb.Event
		for _, e := range es {
			if !s.Span().Contains(e.key) {
				continue
			}
			ev, err := eventAt(vers, e, rev)
			if err != nil {
				return err
			}
			evs = append(evs, ev)
		}
		if len(evs) > 0 && !fn(rev, evs) {
			return nil
		}
	}
	return log.Error()
}

// eventAt rebuilds the event of entry e at rev from the version records:
// the version at rev and, below it, the previous live version if stored.
func eventAt(it *pebble.Iterator, e eventEntry, rev Revision) (*mvccpb.Event, error) {
	p := keyPrefix(e.key)
	ev := &mvccpb.Event{Type: mvccpb.PUT}
	if e.del {
		ev.Type = mvccpb.DELETE
		ev.Kv = &mvccpb.KeyValue{Key: e.key, ModRevision: int64(rev)}
	}
	found := it.SeekGE(versionKey(e.key, rev))
	if found && bytes.HasPrefix(it.Key(), p) && len(it.Key()) == len(p)+8 &&
		Revision(^binary.BigEndian.Uint64(it.Key()[len(p):])) == rev {
		if !e.del {
			v, err := it.ValueAndErr()
			if err != nil {
				return nil, err
			}
			ver, err := decodeVersion(e.key, rev, v)
			if err != nil {
				return nil, err
			}
			ev.Kv = ver.kv()
		}
		found = it.Next()
	} else if !e.del {
		return nil, fmt.Errorf("mvcc: event log names %q@%d but its version is gone", e.key, rev)
	}
	if found && bytes.HasPrefix(it.Key(), p) && len(it.Key()) == len(p)+8 {
		prevRev := Revision(^binary.BigEndian.Uint64(it.Key()[len(p):]))
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		prev, err := decodeVersion(e.key, prevRev, v)
		if err != nil {
			return nil, err
		}
		if !prev.tombstone {
			ev.PrevKv = prev.kv()
		}
	}
	return ev, it.Error()
}
