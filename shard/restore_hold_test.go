package shard

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
)

// TestRestoreReportsHold: a replica restored from a snapshot of a range
// holding a lock tells its hub the restored store's revision and the
// lock's cap (Range.Start's onRestored, watch.Hub.Sync), and the lock
// caps its closed revision as on the replica the snapshot came from.
func TestRestoreReportsHold(t *testing.T) {
	span := mvcc.Span{Start: []byte("a"), End: []byte("z")}
	open := func(cfg Config) *StateMachine {
		s := Factory(cfg)(7, 1).(*StateMachine)
		if _, err := s.Open(nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open(Config{DB: openDB(t, vfs.NewMem()), Span: span, Sharded: true})
	apply(t, s, 1, putReq(t, "b", "1", 10))
	if r := apply(t, s, 2, &shardpb.Request{Op: &shardpb.Request_TxnPrepare{TxnPrepare: &shardpb.TxnPrepare{
		Id: 1, Spans: []*shardpb.KeySpan{{Key: []byte("a")}}, Cap: 12}}}); r[0].GetError() != nil {
		t.Fatalf("prepare: %v", r[0])
	}
	apply(t, s, 3, putReq(t, "c", "1", 20))

	snap, err := s.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.SaveSnapshot(snap, &buf, nil); err != nil {
		t.Fatal(err)
	}
	var gotRev, gotLimit mvcc.Revision
	other := open(Config{DB: openDB(t, vfs.NewMem()), Span: span, Sharded: true,
		onRestored: func(rev, limit mvcc.Revision) { gotRev, gotLimit = rev, limit }})
	if err := other.RecoverFromSnapshot(bytes.NewReader(buf.Bytes()), nil); err != nil {
		t.Fatal(err)
	}
	if gotRev != 20 || gotLimit != 12 || other.LockLimit() != 12 {
		t.Fatalf("restored: revision %d, limit %d (LockLimit %d); want 20, 12", gotRev, gotLimit, other.LockLimit())
	}
}
