package lease

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// The lessor's records in pebble, in Cairn's internal key space (mvcc's
// kinds are 'k', 'e' and 'm'; no etcd request can name a key of kind 'l'):
//
//	'l' store(8) 'r' id(8)       lease record: varint(ttl) varint(remaining)
//	'l' store(8) 'a' id(8) key   attachment: key (raw bytes) is attached to id; empty value
//
// store is the store id (the shard id), big-endian. id is the lease id with
// its sign bit flipped, big-endian, so records sort by id as a signed
// number. The key of an attachment follows the fixed-width id unescaped:
// every attachment of lease id shares the prefix 'l' store 'a' id, so
// Revoke and TimeToLive find a lease's keys with one prefix scan, in key
// order.
//
//	grant 7 ttl=10, attach a b to 7, checkpoint 7 remaining=4
//	→ l <1> r <7> = 10 4 | l <1> a <7> a | l <1> a <7> b
//
// There is no key → lease index: the key's version record in mvcc carries
// its lease, and the shard derives attach and detach from the events of
// each write.
const (
	kindLease = 'l'

	subRecord = 'r'
	subAttach = 'a'
)

// storePrefix returns 'l' store: the prefix of every record of store.
func storePrefix(store uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, 1+8+1+8+16), kindLease), store)
}

// RecordBounds returns [lo, hi): the pebble keys of every lessor record of
// store, for the shard to copy into its snapshots and clear before a
// restore.
func RecordBounds(store uint64) (lo, hi []byte) {
	lo = binary.BigEndian.AppendUint64([]byte{kindLease}, store)
	hi = binary.BigEndian.AppendUint64([]byte{kindLease}, store+1)
	if store == ^uint64(0) {
		hi = []byte{kindLease + 1}
	}
	return lo, hi
}

// DropStore writes into b the deletion of every lessor record of store —
// lease records, attachments and shadows — for a member dropping its
// replica of the store's range (in the batch that drops the range's other
// data). The store's lessor must not be in use; other stores' records stay.
func DropStore(b *pebble.Batch, store uint64) error {
	lo, hi := RecordBounds(store)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return fmt.Errorf("lease: drop the records of store %d: %w", store, err)
	}
	return nil
}

func appendID(dst []byte, id ID) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(id)^(1<<63))
}

func decodeID(b []byte) ID { return ID(binary.BigEndian.Uint64(b) ^ (1 << 63)) }

// recordKey returns the key of lease id's record.
func recordKey(store uint64, id ID) []byte {
	return appendID(append(storePrefix(store), subRecord), id)
}

// recordBounds bounds every lease record of store.
func recordBounds(store uint64) (lo, hi []byte) {
	return append(storePrefix(store), subRecord), append(storePrefix(store), subRecord+1)
}

// attachPrefix returns the common prefix of lease id's attachments.
func attachPrefix(store uint64, id ID) []byte {
	return appendID(append(storePrefix(store), subAttach), id)
}

// attachBounds bounds the attachments of lease id.
func attachBounds(store uint64, id ID) (lo, hi []byte) {
	lo = attachPrefix(store, id)
	if id == ID(1<<63-1) { // the last id: the bound is the next sub-kind
		return lo, append(storePrefix(store), subAttach+1)
	}
	return lo, attachPrefix(store, id+1)
}

func attachKey(store uint64, id ID, key []byte) []byte {
	return append(attachPrefix(store, id), key...)
}

// record is the persisted part of a lease.
type record struct {
	ttl       int64
	remaining int64
}

func encodeRecord(r record) []byte {
	out := make([]byte, 0, 2*binary.MaxVarintLen64)
	out = binary.AppendVarint(out, r.ttl)
	return binary.AppendVarint(out, r.remaining)
}

func decodeRecord(data []byte) (record, error) {
	ttl, n := binary.Varint(data)
	if n <= 0 {
		return record{}, fmt.Errorf("lease: corrupt lease record %x", data)
	}
	remaining, m := binary.Varint(data[n:])
	if m <= 0 || n+m != len(data) {
		return record{}, fmt.Errorf("lease: corrupt lease record %x", data)
	}
	return record{ttl: ttl, remaining: remaining}, nil
}

// decodeRecordKey returns the lease id of a record key of store.
func decodeRecordKey(store uint64, k []byte) (ID, error) {
	p := append(storePrefix(store), subRecord)
	if len(k) != len(p)+8 || string(k[:len(p)]) != string(p) {
		return 0, fmt.Errorf("lease: malformed lease record key %x", k)
	}
	return decodeID(k[len(p):]), nil
}
