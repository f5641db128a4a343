package shard

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/cairn-kv/cairn/mvcc"
)

// Replica records say which replicas this member holds, in its pebble, out
// of every etcd request's reach and of every snapshot and image (mvcc and
// lease write only their own kinds into those; 'r' is neither):
//
//	'r' range(8) replica(8) → flags(1) uvarint(len(start)) start (0 | 1 end)
//	flags: bit 0 learner, bits 1–2 the drop phase
//
// range and replica are big-endian, so a range's records sort together.
// They are keyed by replica too: a range may come back to this member
// under a new replica id while the drop of its old replica still sweeps.
//
//	start r4 as replica 9 [g,p)   → r 4 9 = 0 g 1 p
//	drop it (marked)              → r 4 9 = 2 g 1 p
//	its data batch committed      → r 4 9 = 4 g 1 p
//	its sweep done                → (deleted)
const kindReplica = 'r'

// DropPhase is how far the drop of a replica's data has gone.
type DropPhase uint8

const (
	// NotDropping: the replica is this member's to run.
	NotDropping DropPhase = iota
	// DropMarked: the replica is being dropped; its raft data, its store's
	// records and its lessor's may all remain.
	DropMarked
	// DropSweeping: its raft data and records are gone (one batch with
	// this phase); entries of its keys may remain in the event log.
	DropSweeping
)

// ReplicaRecord is this member's record of one replica it holds or is
// dropping.
type ReplicaRecord struct {
	Range   RangeID
	Replica ReplicaID
	Learner bool
	Drop    DropPhase
	// Span is the range's span when the record was written; a split
	// applied here since is recorded by the store (mvcc.StoredSpan).
	Span mvcc.Span
}

// Dropping reports whether the replica is being dropped: it must not start.
func (r ReplicaRecord) Dropping() bool { return r.Drop != NotDropping }

func replicaKey(id RangeID, replica ReplicaID) []byte {
	k := binary.BigEndian.AppendUint64([]byte{kindReplica}, uint64(id))
	return binary.BigEndian.AppendUint64(k, uint64(replica))
}

func encodeReplicaRecord(r ReplicaRecord) []byte {
	flags := byte(r.Drop) << 1
	if r.Learner {
		flags |= 1
	}
	out := binary.AppendUvarint([]byte{flags}, uint64(len(r.Span.Start)))
	out = append(out, r.Span.Start...)
	if r.Span.End == nil {
		return append(out, 0)
	}
	return append(append(out, 1), r.Span.End...)
}

func decodeReplicaRecord(k, v []byte) (ReplicaRecord, error) {
	bad := fmt.Errorf("shard: corrupt replica record %x = %x", k, v)
	if len(k) != 17 || k[0] != kindReplica || len(v) < 2 {
		return ReplicaRecord{}, bad
	}
	r := ReplicaRecord{Range: RangeID(binary.BigEndian.Uint64(k[1:9])), Replica: ReplicaID(binary.BigEndian.Uint64(k[9:])),
		Learner: v[0]&1 == 1, Drop: DropPhase(v[0] >> 1)}
	if r.Drop > DropSweeping {
		return ReplicaRecord{}, bad
	}
	n, m := binary.Uvarint(v[1:])
	rest := v[1:]
	if m <= 0 || uint64(len(rest)-m) < n+1 {
		return ReplicaRecord{}, bad
	}
	r.Span.Start = append([]byte{}, rest[m:m+int(n)]...)
	switch end := rest[m+int(n):]; end[0] {
	case 0:
		if len(end) != 1 {
			return ReplicaRecord{}, bad
		}
	case 1:
		r.Span.End = append([]byte{}, end[1:]...)
	default:
		return ReplicaRecord{}, bad
	}
	return r, nil
}

// WriteRecord writes rec, durably (before the replica it names starts, or
// as its drop moves on).
func WriteRecord(db *pebble.DB, rec ReplicaRecord) error {
	if err := db.Set(replicaKey(rec.Range, rec.Replica), encodeReplicaRecord(rec), pebble.Sync); err != nil {
		return fmt.Errorf("shard: write the record of replica %d of range %d: %w", rec.Replica, rec.Range, err)
	}
	return nil
}

// Records returns every replica record in r, by range then replica.
func Records(r pebble.Reader) ([]ReplicaRecord, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{kindReplica}, UpperBound: []byte{kindReplica + 1}})
	if err != nil {
		return nil, fmt.Errorf("shard: read replica records: %w", err)
	}
	var out []ReplicaRecord
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return nil, fmt.Errorf("shard: read replica records: %w", err)
		}
		rec, err := decodeReplicaRecord(it.Key(), v)
		if err != nil {
			it.Close()
			return nil, err
		}
		out = append(out, rec)
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("shard: read replica records: %w", err)
	}
	return out, nil
}

// ErrNoReplica is returned for a replica this member has no record of.
var ErrNoReplica = errors.New("shard: no such replica here")

// MarkDropping records, durably, that replica of range id is being dropped
// (DropMarked; a record further on stays as it is) and returns the record.
func MarkDropping(db *pebble.DB, id RangeID, replica ReplicaID) (ReplicaRecord, error) {
	k := replicaKey(id, replica)
	v, closer, err := db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return ReplicaRecord{}, fmt.Errorf("%w: replica %d of range %d", ErrNoReplica, replica, id)
	}
	if err != nil {
		return ReplicaRecord{}, fmt.Errorf("shard: read the record of replica %d of range %d: %w", replica, id, err)
	}
	rec, err := decodeReplicaRecord(k, v)
	closer.Close()
	if err != nil || rec.Dropping() {
		return rec, err
	}
	rec.Drop = DropMarked
	return rec, WriteRecord(db, rec)
}
