package mvcc

import (
	"encoding/binary"
	"fmt"
)

// The store's records in pebble. Every pebble key starts with a one-byte
// kind; user keys appear only escaped inside version records, so no etcd
// request can name any other record.
//
//	'k' esc(key) ^rev     version record: one per (key, revision) written
//	'e' rev               event log: the keys written at rev, in write order
//	'm' id name           internal records of store id (revisions, applied index)
//
// esc(key) escapes 0x00 as 0x00 0xff and ends with 0x00 0x01, so it keeps
// the order of user keys and no escaped key is a prefix of another. The
// revision is stored inverted (^rev, big-endian) so that, within one key,
// newer versions sort first: SeekGE('k' esc(key) ^R) lands on the newest
// version at or below R.
//
//	put a@2, put a@5, del a@9, put ab@3
//	→ k a\x00\x01 ^9 (tombstone) | k a\x00\x01 ^5 | k a\x00\x01 ^2 | k ab\x00\x01 ^3
const (
	kindVersion = 'k'
	kindEvent   = 'e'
	kindMeta    = 'm'
)

// versionPrefixEnd bounds all version records.
var (
	versionsStart = []byte{kindVersion}
	versionsEnd   = []byte{kindVersion + 1}
	eventsStart   = []byte{kindEvent}
	eventsEnd     = []byte{kindEvent + 1}
)

// appendEscaped appends esc(key), terminator included.
func appendEscaped(dst, key []byte) []byte {
	for _, c := range key {
		if c == 0 {
			dst = append(dst, 0, 0xff)
		} else {
			dst = append(dst, c)
		}
	}
	return append(dst, 0, 1)
}

// keyPrefix returns 'k' esc(key): the common prefix of key's versions.
func keyPrefix(key []byte) []byte {
	return appendEscaped(append(make([]byte, 0, len(key)+12), kindVersion), key)
}

// versionKey returns the record key of key's version at rev.
func versionKey(key []byte, rev Revision) []byte {
	return binary.BigEndian.AppendUint64(keyPrefix(key), ^uint64(rev))
}

// keyBound returns the pebble key below which lie exactly the versions of
// user keys smaller than key.
func keyBound(key []byte) []byte { return keyPrefix(key) }

// nextKeyBound returns the smallest pebble key above every version of the
// user key whose prefix is p (the terminator 0x00 0x01 becomes 0x00 0x02).
func nextKeyBound(p []byte) []byte {
	out := append([]byte(nil), p...)
	out[len(out)-1]++
	return out
}

// decodeVersionKey splits a version record key into its user key prefix
// ('k' esc(key)), the user key and the revision.
func decodeVersionKey(k []byte) (prefix, key []byte, rev Revision, err error) {
	if len(k) < 1+2+8 || k[0] != kindVersion {
		return nil, nil, 0, fmt.Errorf("mvcc: malformed version record key %q", k)
	}
	body := k[1 : len(k)-8]
	key = make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c != 0 {
			key = append(key, c)
			continue
		}
		if i+1 >= len(body) {
			break
		}
		switch body[i+1] {
		case 0xff:
			key = append(key, 0)
			i++
		case 1:
			if i+2 != len(body) {
				return nil, nil, 0, fmt.Errorf("mvcc: malformed version record key %q", k)
			}
			return k[:len(k)-8], key, Revision(^binary.BigEndian.Uint64(k[len(k)-8:])), nil
		}
	}
	return nil, nil, 0, fmt.Errorf("mvcc: malformed version record key %q", k)
}

// eventKey returns the event log key of rev.
func eventKey(rev Revision) []byte {
	return binary.BigEndian.AppendUint64([]byte{kindEvent}, uint64(rev))
}

func decodeEventKey(k []byte) (Revision, error) {
	if len(k) != 9 || k[0] != kindEvent {
		return 0, fmt.Errorf("mvcc: malformed event record key %q", k)
	}
	return Revision(binary.BigEndian.Uint64(k[1:])), nil
}

// metaPrefix returns 'm' id: the prefix of store id's internal records.
func metaPrefix(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{kindMeta}, id)
}

func metaKey(id uint64, name string) []byte {
	return append(metaPrefix(id), name...)
}

// version is one decoded version record.
//
// Invariant: a tombstone has no value, lease, create revision or version.
type version struct {
	key       []byte
	mod       Revision
	tombstone bool
	create    Revision
	ver       int64
	lease     int64
	value     []byte
}

const (
	tagTombstone = 0
	tagPut       = 1
)

// encodeVersion returns the record value of v: a tag byte, then for a put
// uvarint(create) uvarint(version) varint(lease) and the value bytes.
func encodeVersion(v *version) []byte {
	if v.tombstone {
		return []byte{tagTombstone}
	}
	out := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(v.value))
	out = append(out, tagPut)
	out = binary.AppendUvarint(out, uint64(v.create))
	out = binary.AppendUvarint(out, uint64(v.ver))
	out = binary.AppendVarint(out, v.lease)
	return append(out, v.value...)
}

// decodeVersion decodes a record; key and mod come from the record key.
// The value is copied: pebble's buffers do not outlive the iterator step.
func decodeVersion(key []byte, mod Revision, data []byte) (*version, error) {
	v := &version{key: key, mod: mod}
	if len(data) == 0 {
		return nil, fmt.Errorf("mvcc: empty version record for %q@%d", key, mod)
	}
	switch data[0] {
	case tagTombstone:
		v.tombstone = true
		return v, nil
	case tagPut:
	default:
		return nil, fmt.Errorf("mvcc: unknown version tag %d for %q@%d", data[0], key, mod)
	}
	p := data[1:]
	create, n := binary.Uvarint(p)
	if n <= 0 {
		return nil, fmt.Errorf("mvcc: corrupt version record for %q@%d", key, mod)
	}
	p = p[n:]
	ver, n := binary.Uvarint(p)
	if n <= 0 {
		return nil, fmt.Errorf("mvcc: corrupt version record for %q@%d", key, mod)
	}
	p = p[n:]
	lease, n := binary.Varint(p)
	if n <= 0 {
		return nil, fmt.Errorf("mvcc: corrupt version record for %q@%d", key, mod)
	}
	v.create, v.ver, v.lease = Revision(create), int64(ver), lease
	v.value = append([]byte(nil), p[n:]...)
	return v, nil
}

// eventEntry is one key written at a revision, in the event log: its
// position in the write (sub) and whether it was a delete, so the event
// survives compaction of its tombstone.
type eventEntry struct {
	sub int64
	key []byte
	del bool
}

// encodeEvents encodes an event log value: for each entry
// uvarint(sub<<1 | del) uvarint(len(key)) key.
func encodeEvents(es []eventEntry) []byte {
	var out []byte
	for _, e := range es {
		tag := uint64(e.sub) << 1
		if e.del {
			tag |= 1
		}
		out = binary.AppendUvarint(out, tag)
		out = binary.AppendUvarint(out, uint64(len(e.key)))
		out = append(out, e.key...)
	}
	return out
}

func decodeEvents(data []byte) ([]eventEntry, error) {
	var es []eventEntry
	for len(data) > 0 {
		sub, n := binary.Uvarint(data)
		if n <= 0 {
			return nil, fmt.Errorf("mvcc: corrupt event record")
		}
		data = data[n:]
		l, n := binary.Uvarint(data)
		if n <= 0 || uint64(len(data)-n) < l {
			return nil, fmt.Errorf("mvcc: corrupt event record")
		}
		data = data[n:]
		es = append(es, eventEntry{sub: int64(sub >> 1), del: sub&1 == 1, key: append([]byte(nil), data[:l]...)})
		data = data[l:]
	}
	return es, nil
}
