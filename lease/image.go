package lease

import (
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Image gathers the leases of several stores (a sharded node's ranges) for
// a whole-key-space image of one store (mvcc.Image): every lease is in its
// home store's records, re-keyed to the image's store; shadows, tombstones
// and registrations, which only tie stores together, are left out, and the
// attachments are made anew from the keys live in the image.
type Image struct {
	into    uint64
	records map[ID][]byte
}

// NewImage reads the lease records of stores from r (a pebble snapshot)
// for an image named for store into.
func NewImage(r reader, stores []uint64, into uint64) (*Image, error) {
	im := &Image{into: into, records: map[ID][]byte{}}
	for _, store := range stores {
		lo, hi := recordBounds(store)
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return nil, fmt.Errorf("lease: new iterator: %w", err)
		}
		for it.First(); it.Valid(); it.Next() {
			id, err := decodeRecordKey(store, it.Key())
			if err != nil {
				it.Close()
				return nil, err
			}
			v, err := it.ValueAndErr()
			if err == nil {
				_, err = decodeRecord(v)
			}
			if err != nil {
				it.Close()
				return nil, fmt.Errorf("lease %d of store %d: %w", id, store, err)
			}
			im.records[id] = append([]byte(nil), v...)
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("lease: scan the lease records of store %d: %w", store, err)
		}
	}
	return im, nil
}

// Attach returns the record attaching key to lease id in the image, and
// false if the image has no such lease (it was revoked).
func (im *Image) Attach(id int64, key []byte) ([]byte, bool) {
	if _, ok := im.records[ID(id)]; !ok {
		return nil, false
	}
	return attachKey(im.into, ID(id), key), true
}

// Carried writes the image's lease records with frame, by id.
func (im *Image) Carried(frame func(k, v []byte) error) error {
	ids := make([]ID, 0, len(im.records))
	for id := range im.records {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := frame(recordKey(im.into, id), im.records[id]); err != nil {
			return err
		}
	}
	return nil
}
