package mvcc

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/prototext"
)

// leaseSet is a LeaseChecker over a fixed set of lease ids.
type leaseSet map[int64]bool

func (l leaseSet) LeaseExists(id int64) bool { return l[id] }

// testLeases exist in every test store.
var testLeases = leaseSet{5: true, 7: true}

func openTestDB(t testing.TB) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("", PebbleOptions(&pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func openTestStore(t testing.TB, db *pebble.DB, span Span) *Store {
	t.Helper()
	s, err := Open(db, Options{ID: 1, Span: span, Leases: testLeases})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDataDriven runs the scripts in testdata/. Commands:
//
//	put k= v= [lease=] [prev] [ignore-value] [ignore-lease] [stamp=]
//	del k= [end=] [prev] [stamp=]
//	get k= [end=] [rev=] [limit=] [sort=target] [order=] [keys-only] [count-only]
//	    [min-mod=] [max-mod=] [min-create=] [max-create=]
//	txn [stamp=]      (input: a TxnRequest in protobuf text format)
//	compact rev=
//	events            (the change events of the writes since the last "events")
//	reopen            (drop the Store and open it again from pebble)
//	dump [meta]       (every version and event record; with meta, the ids of
//	                   the stores with internal records)
//
// Stores sharing the pebble (store 1 is the one the commands act on until
// use says otherwise; all share one EventLog):
//
//	split key= child=       (SplitOff at key into a new store child, committed)
//	use id=                 (act on store id)
//	drop id= [chunk=]       (DropSpan of store id's span, then SweepEvents of
//	                         it in chunks of chunk records, the other stores
//	                         owning their spans)
//	history [from=] [to=]   (Store.Events of the store acted on)
//	absorb right=           (Absorb of store right by the store acted on,
//	                         committed; prints the span, revisions and
//	                         whether the store is resized)
//	stat                    (the store acted on: span, revisions, resized)
//	merged-into id=         (MergedInto of store id)
//
// A key or end of "\0" means the byte 0. Every write is its own committed batch.
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		db := openTestDB(t)
		log := NewEventLog(db)
		open := func(id uint64) *Store {
			s, err := Open(db, Options{ID: id, Leases: testLeases, EventLog: log})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s := open(1)
		stores := map[uint64]*Store{1: s}
		var events []*mvccpb.Event
		write := func(fn func(b *Batch) (string, error)) string {
			b := s.NewBatch()
			defer b.Close()
			out, err := fn(b)
			if err != nil {
				return "error: " + err.Error() + "\n"
			}
			events = append(events, b.TakeEvents()...)
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			return out
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			a := args{t: t, d: d}
			switch d.Cmd {
			case "put":
				r := &pb.PutRequest{Key: a.bytes("k"), Value: a.bytes("v"), Lease: a.int("lease"),
					PrevKv: a.flag("prev"), IgnoreValue: a.flag("ignore-value"), IgnoreLease: a.flag("ignore-lease")}
				return write(func(b *Batch) (string, error) {
					resp, err := b.Put(r, Revision(a.int("stamp")))
					if err != nil {
						return "", err
					}
					out := fmt.Sprintf("rev=%d\n", resp.Header.Revision)
					if resp.PrevKv != nil {
						out += "prev: " + fmtKV(resp.PrevKv) + "\n"
					}
					return out, nil
				})
			case "del":
				r := &pb.DeleteRangeRequest{Key: a.bytes("k"), RangeEnd: a.bytes("end"), PrevKv: a.flag("prev")}
				return write(func(b *Batch) (string, error) {
					resp, err := b.DeleteRange(r, Revision(a.int("stamp")))
					if err != nil {
						return "", err
					}
					out := fmt.Sprintf("deleted=%d rev=%d\n", resp.Deleted, resp.Header.Revision)
					for _, kv := range resp.PrevKvs {
						out += "prev: " + fmtKV(kv) + "\n"
					}
					return out, nil
				})
			case "get":
				r := &pb.RangeRequest{Key: a.bytes("k"), RangeEnd: a.bytes("end"), Revision: a.int("rev"), Limit: a.int("limit"),
					KeysOnly: a.flag("keys-only"), CountOnly: a.flag("count-only"),
					MinModRevision: a.int("min-mod"), MaxModRevision: a.int("max-mod"),
					MinCreateRevision: a.int("min-create"), MaxCreateRevision: a.int("max-create")}
				if d.HasArg("sort") {
					r.SortTarget = pb.RangeRequest_SortTarget(enumArg(a, "sort", pb.RangeRequest_SortTarget_value))
				}
				if d.HasArg("order") {
					r.SortOrder = pb.RangeRequest_SortOrder(enumArg(a, "order", pb.RangeRequest_SortOrder_value))
				}
				if err := ValidateRange(r); err != nil {
					return "error: " + err.Error() + "\n"
				}
				resp, err := s.Range(r)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				return fmtRange(resp)
			case "txn":
				var r pb.TxnRequest
				if err := prototext.Unmarshal([]byte(d.Input), &r); err != nil {
					d.Fatalf(t, "bad txn: %v", err)
				}
				if err := ValidateTxn(&r, 128); err != nil {
					return "error: " + err.Error() + "\n"
				}
				if IsTxnReadOnly(&r) && !d.HasArg("stamp") {
					resp, err := s.ReadTxn(&r)
					if err != nil {
						return "error: " + err.Error() + "\n"
					}
					return "read-only\n" + fmtTxn(resp, "")
				}
				return write(func(b *Batch) (string, error) {
					resp, err := b.Txn(&r, Revision(a.int("stamp")))
					if err != nil {
						return "", err
					}
					return fmtTxn(resp, ""), nil
				})
			case "read-txn":
				// A txn served as a read whatever its branches hold
				// (Store.ReadTxn): the branch its compares take decides.
				var r pb.TxnRequest
				if err := prototext.Unmarshal([]byte(d.Input), &r); err != nil {
					d.Fatalf(t, "bad txn: %v", err)
				}
				resp, err := s.ReadTxn(&r)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				return fmtTxn(resp, "")
			case "compact":
				return write(func(b *Batch) (string, error) {
					resp, err := b.Compact(Revision(a.int("rev")))
					if err != nil {
						return "", err
					}
					return fmt.Sprintf("rev=%d compact=%d\n", resp.Header.Revision, b.compact), nil
				})
			case "events":
				var sb strings.Builder
				for _, ev := range events {
					fmt.Fprintf(&sb, "%s %s", ev.Type, fmtKV(ev.Kv))
					if ev.PrevKv != nil {
						fmt.Fprintf(&sb, " (prev %s)", fmtKV(ev.PrevKv))
					}
					sb.WriteString("\n")
				}
				events = nil
				return sb.String()
			case "reopen":
				s = open(s.opts.ID)
				stores[s.opts.ID] = s
				return fmt.Sprintf("rev=%d compact=%d\n", s.Rev(), s.CompactRev())
			case "dump":
				out := dumpStore(t, db)
				if a.flag("meta") {
					ids, err := StoreIDs(db)
					if err != nil {
						t.Fatal(err)
					}
					out += fmt.Sprintf("stores %v\n", ids)
				}
				return out
			case "split":
				child := uint64(a.int("child"))
				out := write(func(b *Batch) (string, error) {
					sp, err := b.SplitOff(a.bytes("key"), child)
					if err != nil {
						return "", err
					}
					return fmt.Sprintf("child %s\n", fmtSpan(sp)), nil
				})
				if !strings.HasPrefix(out, "error") {
					stores[child] = open(child)
					out += fmt.Sprintf("parent %s\n", fmtSpan(s.Span()))
				}
				return out
			case "use":
				id := uint64(a.int("id"))
				if stores[id] == nil {
					d.Fatalf(t, "no store %d", id)
				}
				s = stores[id]
				return fmt.Sprintf("store %d %s rev=%d compact=%d\n", id, fmtSpan(s.Span()), s.Rev(), s.CompactRev())
			case "drop":
				id := uint64(a.int("id"))
				dropped := stores[id]
				if dropped == nil {
					d.Fatalf(t, "no store %d", id)
				}
				delete(stores, id)
				span := dropped.Span()
				b := db.NewBatch()
				if err := DropSpan(b, id, span); err != nil {
					t.Fatal(err)
				}
				if err := b.Commit(pebble.Sync); err != nil {
					t.Fatal(err)
				}
				b.Close()
				owned := func(key []byte) bool {
					for _, o := range stores {
						if o.Span().Contains(key) {
							return true
						}
					}
					return false
				}
				chunk := int(a.int("chunk"))
				if chunk == 0 {
					chunk = 10000
				}
				chunks := 0
				for from, more := Revision(0), true; more; chunks++ {
					var err error
					if from, more, err = SweepEvents(db, log, span, owned, from, chunk); err != nil {
						t.Fatal(err)
					}
				}
				return fmt.Sprintf("dropped store %d %s in %d chunks\n", id, fmtSpan(span), chunks)
			case "absorb":
				out := write(func(b *Batch) (string, error) {
					_, err := b.Absorb(uint64(a.int("right")))
					return "", err
				})
				if out != "" {
					return out
				}
				return fmtStat(s)
			case "stat":
				return fmtStat(s)
			case "merged-into":
				into, ok, err := MergedInto(db, uint64(a.int("id")))
				switch {
				case err != nil:
					return "error: " + err.Error() + "\n"
				case !ok:
					return "no\n"
				}
				return fmt.Sprintf("store %d\n", into)
			case "history":
				to := Revision(a.int("to"))
				if !d.HasArg("to") {
					to = s.Rev()
				}
				var sb strings.Builder
				if err := s.Events(Revision(a.int("from")), to, func(rev Revision, evs []*mvccpb.Event) bool {
					for _, ev := range evs {
						fmt.Fprintf(&sb, "%d: %s %s\n", rev, ev.Type, fmtKV(ev.Kv))
					}
					return true
				}); err != nil {
					return "error: " + err.Error() + "\n"
				}
				return sb.String()
			default:
				d.Fatalf(t, "unknown command %s", d.Cmd)
				return ""
			}
		})
	})
}

func fmtStat(s *Store) string {
	return fmt.Sprintf("store %d %s rev=%d compact=%d resized=%t\n", s.opts.ID, fmtSpan(s.Span()), s.Rev(), s.CompactRev(), s.Resized())
}

func fmtSpan(sp Span) string {
	end := "∞"
	if sp.End != nil {
		end = fmtKey(sp.End)
	}
	return fmt.Sprintf("[%s,%s)", fmtKey(sp.Start), end)
}

type args struct {
	t *testing.T
	d *datadriven.TestData
}

func (a args) str(name string) string {
	var s string
	if a.d.HasArg(name) {
		a.d.ScanArgs(a.t, name, &s)
	}
	return s
}

func (a args) bytes(name string) []byte {
	if !a.d.HasArg(name) {
		return nil
	}
	return []byte(strings.ReplaceAll(a.str(name), `\0`, "\x00"))
}

func (a args) int(name string) int64 {
	if !a.d.HasArg(name) {
		return 0
	}
	n, err := strconv.ParseInt(a.str(name), 10, 64)
	if err != nil {
		a.d.Fatalf(a.t, "%s: %v", name, err)
	}
	return n
}

// enumArg reads an enum by name, or by number (to test invalid values).
func enumArg(a args, name string, values map[string]int32) int32 {
	if v, ok := values[strings.ToUpper(a.str(name))]; ok {
		return v
	}
	return int32(a.int(name))
}

func (a args) flag(name string) bool { return a.d.HasArg(name) }

func fmtKey(k []byte) string {
	s := strconv.Quote(string(k))
	s = s[1 : len(s)-1]
	return strings.ReplaceAll(s, `\x00`, `\0`)
}

func fmtKV(kv *mvccpb.KeyValue) string {
	if kv.CreateRevision == 0 && kv.Version == 0 && kv.Value == nil { // a tombstone in an event
		return fmt.Sprintf("%s mod=%d", fmtKey(kv.Key), kv.ModRevision)
	}
	s := fmt.Sprintf("%s=%s create=%d mod=%d ver=%d", fmtKey(kv.Key), fmtKey(kv.Value), kv.CreateRevision, kv.ModRevision, kv.Version)
	if kv.Lease != 0 {
		s += fmt.Sprintf(" lease=%d", kv.Lease)
	}
	return s
}

func fmtRange(resp *pb.RangeResponse) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "rev=%d count=%d more=%t\n", resp.Header.Revision, resp.Count, resp.More)
	for _, kv := range resp.Kvs {
		sb.WriteString(fmtKV(kv) + "\n")
	}
	return sb.String()
}

func fmtTxn(resp *pb.TxnResponse, indent string) string {
	var sb strings.Builder
	rev := ""
	if resp.Header.Revision != 0 {
		rev = fmt.Sprintf(" rev=%d", resp.Header.Revision)
	}
	fmt.Fprintf(&sb, "%ssucceeded=%t%s\n", indent, resp.Succeeded, rev)
	for _, op := range resp.Responses {
		switch r := op.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			for _, line := range strings.Split(strings.TrimSuffix(fmtRange(r.ResponseRange), "\n"), "\n") {
				fmt.Fprintf(&sb, "%s  get: %s\n", indent, line)
			}
		case *pb.ResponseOp_ResponsePut:
			fmt.Fprintf(&sb, "%s  put: rev=%d", indent, r.ResponsePut.Header.Revision)
			if r.ResponsePut.PrevKv != nil {
				fmt.Fprintf(&sb, " prev: %s", fmtKV(r.ResponsePut.PrevKv))
			}
			sb.WriteString("\n")
		case *pb.ResponseOp_ResponseDeleteRange:
			fmt.Fprintf(&sb, "%s  del: deleted=%d rev=%d\n", indent, r.ResponseDeleteRange.Deleted, r.ResponseDeleteRange.Header.Revision)
			for _, kv := range r.ResponseDeleteRange.PrevKvs {
				fmt.Fprintf(&sb, "%s    prev: %s\n", indent, fmtKV(kv))
			}
		case *pb.ResponseOp_ResponseTxn:
			fmt.Fprintf(&sb, "%s  txn:\n", indent)
			sb.WriteString(fmtTxn(r.ResponseTxn, indent+"    "))
		}
	}
	return sb.String()
}

// dumpStore prints every record in pebble, decoded: what compaction left.
func dumpStore(t *testing.T, db *pebble.DB) string {
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var sb strings.Builder
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		switch k[0] {
		case kindVersion:
			_, key, rev, err := decodeVersionKey(k)
			if err != nil {
				t.Fatal(err)
			}
			v, err := decodeVersion(key, rev, it.Value())
			if err != nil {
				t.Fatal(err)
			}
			if v.tombstone {
				fmt.Fprintf(&sb, "version %s@%d tombstone\n", fmtKey(key), rev)
			} else {
				fmt.Fprintf(&sb, "version %s@%d = %s\n", fmtKey(key), rev, fmtKey(v.value))
			}
		case kindEvent:
			rev, _ := decodeEventKey(k)
			es, err := decodeEvents(it.Value())
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, e := range es {
				keys = append(keys, fmtKey(e.key))
			}
			fmt.Fprintf(&sb, "event %d: %s\n", rev, strings.Join(keys, " "))
		}
	}
	return sb.String()
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{})              {}
func (quietLogger) Errorf(string, ...interface{})             {}
func (quietLogger) Fatalf(format string, args ...interface{}) { panic(fmt.Sprintf(format, args...)) }
