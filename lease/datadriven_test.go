package lease

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// epoch is time zero of the test clock; times print as offsets from it.
var epoch = time.Unix(1_000_000, 0)

func openTestDB(t testing.TB) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// testOptions are the options of every test lessor: a one-second minimum
// and a 10 s checkpoint interval keep the scripts short.
var testOptions = Options{ID: 1, MinTTL: 1, CheckpointInterval: 10 * time.Second, RetryInterval: 3 * time.Second}

func openTestLessor(t testing.TB, db *pebble.DB) *Lessor {
	t.Helper()
	l, err := Open(db, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestDataDriven runs the scripts in testdata/. The clock starts at 0 and
// moves only with "advance". Commands:
//
//	advance d=            (move the clock by a Go duration; prints it)
//	promote [extend=]     (become primary at the clock; extend defaults to 0)
//	demote
//	grant id= ttl=
//	revoke id=
//	attach id= keys=a,b,...
//	detach id= keys=a,b,...
//	checkpoint id= remaining=
//	renew id=
//	ttl id= [keys]        (TimeToLive at the clock)
//	exists id=
//	leases
//	expired [max=]
//	next                  (NextExpiry)
//	checkpoints [max=] [apply]  (due checkpoints; apply: apply them in one batch)
//	begin                 (later writes share one batch until "commit")
//	commit
//	reopen [min-ttl=]     (drop the lessor and open it again from pebble)
//	dump                  (every lessor record in pebble, decoded)
//
// Several lessors may share the pebble (sharded mode): store 1 is the one
// the commands act on until use says otherwise.
//
//	use id=               (act on the lessor of store id, opening it if new)
//	shadow id= gen=       (Shadow)
//	revoke-shadow id= gen=
//	register id= shard=
//	split key= [end=] child=  (SplitOff of [key, end) into store child)
//	absorb right=         (Absorb of store right's records)
//	state                 (the shadows and tombstones in memory, by id)
//
// Every write outside begin/commit is its own committed indexed batch.
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		db := openTestDB(t)
		l := openTestLessor(t, db)
		lessors := map[uint64]*Lessor{1: l}
		now := epoch
		var open *pebble.Batch
		write := func(fn func(b *pebble.Batch) (string, error)) string {
			b := open
			if b == nil {
				b = db.NewIndexedBatch()
				defer b.Close()
			}
			out, err := fn(b)
			if err != nil {
				return "error: " + err.Error() + "\n"
			}
			if open == nil {
				if err := b.Commit(pebble.NoSync); err != nil {
					t.Fatal(err)
				}
			}
			return out
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			a := args{t: t, d: d}
			id := ID(a.int("id"))
			switch d.Cmd {
			case "advance":
				now = now.Add(a.duration("d"))
				return fmt.Sprintf("t=%s\n", now.Sub(epoch))
			case "promote":
				l.Promote(now, a.duration("extend"))
				return ""
			case "demote":
				l.Demote()
				return ""
			case "grant":
				return write(func(b *pebble.Batch) (string, error) {
					le, err := l.Grant(b, id, a.int("ttl"), now)
					return fmt.Sprintf("lease %d ttl=%d\n", le.ID, le.TTL), err
				})
			case "revoke":
				return write(func(b *pebble.Batch) (string, error) {
					keys, err := l.Revoke(b, id)
					return fmt.Sprintf("revoked %d keys: %s\n", id, fmtKeys(keys)), err
				})
			case "attach":
				return write(func(b *pebble.Batch) (string, error) { return "", l.Attach(b, id, a.keys("keys")) })
			case "detach":
				return write(func(b *pebble.Batch) (string, error) { return "", l.Detach(b, id, a.keys("keys")) })
			case "checkpoint":
				return write(func(b *pebble.Batch) (string, error) { return "", l.Checkpoint(b, id, a.int("remaining")) })
			case "renew":
				ttl, clear, err := l.Renew(id, now)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				if clear {
					return fmt.Sprintf("ttl=%d clear-checkpoint\n", ttl)
				}
				return fmt.Sprintf("ttl=%d\n", ttl)
			case "ttl":
				st, err := l.TimeToLive(id, now, a.flag("keys"))
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				out := fmt.Sprintf("lease %d granted=%d ttl=%d", st.ID, st.GrantedTTL, st.TTL)
				if a.flag("keys") {
					out += " keys: " + fmtKeys(st.Keys)
				}
				return out + "\n"
			case "exists":
				return fmt.Sprintf("%t\n", l.LeaseExists(int64(id)))
			case "leases":
				var sb strings.Builder
				for _, le := range l.Leases() {
					sb.WriteString(fmtLease(le) + "\n")
				}
				if sb.Len() == 0 {
					return "none\n"
				}
				return sb.String()
			case "expired":
				ids := l.Expired(now, int(a.int("max")))
				if len(ids) == 0 {
					return "none\n"
				}
				var s []string
				for _, id := range ids {
					s = append(s, strconv.FormatInt(int64(id), 10))
				}
				return strings.Join(s, " ") + "\n"
			case "next":
				at, ok := l.NextExpiry()
				if !ok {
					return "none\n"
				}
				return fmt.Sprintf("t=%s\n", at.Sub(epoch))
			case "checkpoints":
				cps := l.DueCheckpoints(now, int(a.int("max")))
				if len(cps) == 0 {
					return "none\n"
				}
				var sb strings.Builder
				for _, cp := range cps {
					fmt.Fprintf(&sb, "%d remaining=%d\n", cp.ID, cp.RemainingTTL)
				}
				if a.flag("apply") {
					sb.WriteString(write(func(b *pebble.Batch) (string, error) {
						for _, cp := range cps {
							if err := l.Checkpoint(b, cp.ID, cp.RemainingTTL); err != nil {
								return "", err
							}
						}
						return "", nil
					}))
				}
				return sb.String()
			case "begin":
				if open != nil {
					d.Fatalf(t, "batch already open")
				}
				open = db.NewIndexedBatch()
				return ""
			case "commit":
				if open == nil {
					d.Fatalf(t, "no batch open")
				}
				if err := open.Commit(pebble.NoSync); err != nil {
					t.Fatal(err)
				}
				open.Close()
				open = nil
				return ""
			case "reopen":
				opts := testOptions
				opts.ID = l.opts.ID
				if d.HasArg("min-ttl") {
					opts.MinTTL = a.int("min-ttl")
				}
				var err error
				if l, err = Open(db, opts); err != nil {
					return "error: " + err.Error() + "\n"
				}
				lessors[opts.ID] = l
				return fmt.Sprintf("%d leases\n", l.Len())
			case "dump":
				return dumpRecords(t, db)
			case "use":
				store := uint64(a.int("id"))
				if lessors[store] == nil {
					opts := testOptions
					opts.ID = store
					var err error
					if lessors[store], err = Open(db, opts); err != nil {
						t.Fatal(err)
					}
				}
				l = lessors[store]
				return ""
			case "shadow":
				return write(func(b *pebble.Batch) (string, error) { return "", l.Shadow(b, id, uint64(a.int("gen"))) })
			case "revoke-shadow":
				return write(func(b *pebble.Batch) (string, error) {
					keys, err := l.RevokeShadow(b, id, uint64(a.int("gen")))
					return fmt.Sprintf("revoked shadow %d keys: %s\n", id, fmtKeys(keys)), err
				})
			case "register":
				return write(func(b *pebble.Batch) (string, error) { return "", l.Register(b, id, uint64(a.int("shard"))) })
			case "split":
				var end []byte
				if d.HasArg("end") {
					end = []byte(a.str("end"))
				}
				return write(func(b *pebble.Batch) (string, error) {
					ids, err := l.SplitOff(b, []byte(a.str("key")), end, uint64(a.int("child")))
					return fmt.Sprintf("child holds keys of %v\n", ids), err
				})
			case "absorb":
				return write(func(b *pebble.Batch) (string, error) { return "", l.Absorb(b, uint64(a.int("right"))) })
			case "state":
				l.mu.Lock()
				defer l.mu.Unlock()
				return fmt.Sprintf("shadows %s tombs %s\n", fmtGens(l.mu.shadows), fmtGens(l.mu.tombs))
			default:
				d.Fatalf(t, "unknown command %s", d.Cmd)
				return ""
			}
		})
		if open != nil {
			open.Close()
		}
	})
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

func (a args) duration(name string) time.Duration {
	if !a.d.HasArg(name) {
		return 0
	}
	d, err := time.ParseDuration(a.str(name))
	if err != nil {
		a.d.Fatalf(a.t, "%s: %v", name, err)
	}
	return d
}

func (a args) keys(name string) [][]byte {
	var out [][]byte
	for _, k := range strings.Split(a.str(name), ",") {
		if k != "" {
			out = append(out, []byte(strings.ReplaceAll(k, `\0`, "\x00")))
		}
	}
	return out
}

func (a args) flag(name string) bool { return a.d.HasArg(name) }

func fmtKeys(keys [][]byte) string {
	if len(keys) == 0 {
		return "(none)"
	}
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = fmtKey(k)
	}
	return strings.Join(s, " ")
}

// fmtKey quotes a key as Go does, showing the byte 0 as \0.
func fmtKey(k []byte) string {
	s := strconv.Quote(string(k))
	return strings.ReplaceAll(s[1:len(s)-1], `\x00`, `\0`)
}

func fmtLease(le Lease) string {
	s := fmt.Sprintf("%d ttl=%d", le.ID, le.TTL)
	if le.RemainingTTL != 0 {
		s += fmt.Sprintf(" remaining=%d", le.RemainingTTL)
	}
	return s
}

// dumpRecords prints every record in pebble, decoded.
func dumpRecords(t *testing.T, db *pebble.DB) string {
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var sb strings.Builder
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < 1+8+1+8 || k[0] != kindLease {
			fmt.Fprintf(&sb, "foreign %q\n", k)
			continue
		}
		store, id := binary.BigEndian.Uint64(k[1:9]), decodeID(k[10:18])
		switch k[9] {
		case subRecord:
			r, err := decodeRecord(it.Value())
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&sb, "store %d lease %d ttl=%d remaining=%d\n", store, id, r.ttl, r.remaining)
		case subAttach:
			fmt.Fprintf(&sb, "store %d attach %d %s\n", store, id, fmtKey(k[18:]))
		case subShadow:
			fmt.Fprintf(&sb, "store %d shadow %d gen=%d\n", store, id, binary.BigEndian.Uint64(it.Value()))
		case subTomb:
			fmt.Fprintf(&sb, "store %d tomb %d gen=%d\n", store, id, binary.BigEndian.Uint64(it.Value()))
		case subRegister:
			done := ""
			if len(it.Value()) > 0 {
				done = " done"
			}
			fmt.Fprintf(&sb, "store %d register %d in %d%s\n", store, id, binary.BigEndian.Uint64(k[18:]), done)
		default:
			t.Fatalf("unknown record %q", k)
		}
	}
	if sb.Len() == 0 {
		return "empty\n"
	}
	return sb.String()
}

// fmtGens prints ids with their generations, in id order: "[8@41 9@42]".
func fmtGens(m map[ID]uint64) string {
	ids := slices.Sorted(maps.Keys(m))
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprintf("%d@%d", id, m[id])
	}
	return "[" + strings.Join(out, " ") + "]"
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{})              {}
func (quietLogger) Errorf(string, ...interface{})             {}
func (quietLogger) Fatalf(format string, args ...interface{}) { panic(fmt.Sprintf(format, args...)) }
