package watch

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// TestDataDriven runs the scripts in testdata/: a real store written by
// the script, events fed to the hub by hand (so a script can commit
// revisions the hub has not heard of yet), catch-up rounds run by hand,
// and every queued response printed. Commands:
//
//	stream name=S [limit=N]            open a stream whose queue holds N
//	create stream=S key=K [end=E|prefix|from] [start=R] [id=N]
//	       [prev-kv] [noput] [nodelete] [progress]
//	cancel stream=S id=N
//	progress stream=S                  RequestProgress
//	close stream=S
//	put K=V ...                        one revision; fed to the hub
//	delete K ... | delete K end=E      one revision; fed to the hub
//	feed off|on                        off: commits are held back from
//	                                   the hub; on: the held ones are fed
//	compact rev=R
//	catchup [max=N]                    one Catchup round
//	pump                               Catchup until no work is left
//	tick                               ProgressTick
//	recv stream=S                      print and take the queued responses
//	groups                             every watcher: synced or unsynced
//
// The script merge runs over several ranges instead (runRangesScript).
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if filepath.Base(path) == "merge" { // over several ranges
			runRangesScript(t, path)
			return
		}
		f := newFixture(t)
		d := &driver{f: f, streams: map[string]*Stream{}, feed: true}
		datadriven.RunTest(t, path, d.run)
	})
}

type driver struct {
	f       *fixture
	streams map[string]*Stream
	feed    bool
	held    []*mvccpb.Event
}

func (d *driver) stream(td *datadriven.TestData) *Stream {
	var name string
	td.ScanArgs(d.f.t, "stream", &name)
	s := d.streams[name]
	if s == nil {
		d.f.t.Fatalf("%s: no stream %q", td.Pos, name)
	}
	return s
}

func (d *driver) run(t *testing.T, td *datadriven.TestData) string {
	f := d.f
	switch td.Cmd {
	case "stream":
		var name string
		limit := 100
		td.ScanArgs(t, "name", &name)
		td.MaybeScanArgs(t, "limit", &limit)
		d.streams[name] = f.hub.NewStream(limit)
		return ""
	case "create":
		req := &pb.WatchCreateRequest{}
		var key string
		td.ScanArgs(t, "key", &key)
		req.Key = []byte(key)
		for _, a := range td.CmdArgs {
			switch a.Key {
			case "end":
				req.RangeEnd = []byte(a.Vals[0])
			case "prefix":
				req.RangeEnd = append([]byte(key[:len(key)-1]), key[len(key)-1]+1)
			case "from":
				req.RangeEnd = []byte{0}
			case "start":
				req.StartRevision, _ = strconv.ParseInt(a.Vals[0], 10, 64)
			case "id":
				req.WatchId, _ = strconv.ParseInt(a.Vals[0], 10, 64)
			case "prev-kv":
				req.PrevKv = true
			case "noput":
				req.Filters = append(req.Filters, pb.WatchCreateRequest_NOPUT)
			case "nodelete":
				req.Filters = append(req.Filters, pb.WatchCreateRequest_NODELETE)
			case "progress":
				req.ProgressNotify = true
			}
		}
		d.stream(td).Create(req)
		return ""
	case "cancel":
		var id int64
		td.ScanArgs(t, "id", &id)
		if !d.stream(td).Cancel(ID(id)) {
			return "unknown watch id"
		}
		return ""
	case "progress":
		d.stream(td).RequestProgress()
		return ""
	case "close":
		d.stream(td).Close()
		return ""
	case "put", "delete":
		b := f.store.NewBatch()
		defer b.Close()
		// One txn: every write of the command lands in one revision.
		txn := &pb.TxnRequest{}
		if td.Cmd == "put" {
			for _, a := range td.CmdArgs {
				txn.Success = append(txn.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{
					RequestPut: &pb.PutRequest{Key: []byte(a.Key), Value: []byte(a.Vals[0])}}})
			}
		} else {
			var end string
			td.MaybeScanArgs(t, "end", &end)
			for _, a := range td.CmdArgs {
				if a.Key != "end" {
					txn.Success = append(txn.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{
						RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(a.Key), RangeEnd: []byte(end)}}})
				}
			}
		}
		if _, err := b.Txn(txn, 0); err != nil {
			return err.Error()
		}
		evs := b.TakeEvents()
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		if !d.feed {
			d.held = append(d.held, evs...)
			return fmt.Sprintf("rev=%d (held)", f.store.Rev())
		}
		f.hub.Notify(f.store.Rev(), evs)
		return fmt.Sprintf("rev=%d", f.store.Rev())
	case "feed":
		d.feed = td.CmdArgs[0].Key == "on"
		if d.feed {
			f.hub.Notify(f.store.Rev(), d.held)
			d.held = nil
		}
		return ""
	case "compact":
		var rev int64
		td.ScanArgs(t, "rev", &rev)
		b := f.store.NewBatch()
		defer b.Close()
		if _, err := b.Compact(mvcc.Revision(rev)); err != nil {
			return err.Error()
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		return ""
	case "catchup":
		max := 0
		td.MaybeScanArgs(t, "max", &max)
		more, err := f.hub.Catchup(f.store, max)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("more=%v", more)
	case "pump":
		f.pump()
		return ""
	case "tick":
		f.hub.ProgressTick()
		return ""
	case "recv":
		return d.recv(d.stream(td))
	case "groups":
		return d.groups()
	}
	t.Fatalf("%s: unknown command %q", td.Pos, td.Cmd)
	return ""
}

// recv takes what the stream has queued, without waiting.
func (d *driver) recv(s *Stream) string {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rs, err := s.Next(ctx)
	if err == context.Canceled {
		return "(nothing queued)"
	}
	if err != nil {
		return err.Error()
	}
	return formatResponses(rs)
}

// formatResponses prints responses as the scripts show them.
func formatResponses(rs []*pb.WatchResponse) string {
	if len(rs) == 0 {
		return "(nothing queued)"
	}
	// Responses of different watchers about one revision come in no
	// promised order (as in etcd); print each run of them by watch id.
	for i := 0; i < len(rs); {
		j := i + 1
		for j < len(rs) && len(rs[j].Events) > 0 && len(rs[i].Events) > 0 && rs[j].Header.Revision == rs[i].Header.Revision {
			j++
		}
		slices.SortStableFunc(rs[i:j], func(a, b *pb.WatchResponse) int { return int(a.WatchId - b.WatchId) })
		i = j
	}
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "id=%d rev=%d", r.WatchId, r.Header.Revision)
		switch {
		case r.Created && r.Canceled:
			fmt.Fprintf(&b, " refused %q", r.CancelReason)
		case r.Created:
			b.WriteString(" created")
		case r.Canceled:
			b.WriteString(" canceled")
			if r.CompactRevision != 0 {
				fmt.Fprintf(&b, " compact=%d", r.CompactRevision)
			}
		case len(r.Events) == 0:
			b.WriteString(" progress")
		}
		b.WriteString("\n")
		for _, e := range r.Events {
			kv := e.Kv
			if e.Type == mvccpb.DELETE {
				fmt.Fprintf(&b, "  DELETE %s mod=%d", kv.Key, kv.ModRevision)
			} else {
				fmt.Fprintf(&b, "  PUT %s=%s create=%d mod=%d ver=%d", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
			}
			if p := e.PrevKv; p != nil {
				fmt.Fprintf(&b, " prev=%s@%d", p.Value, p.ModRevision)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (d *driver) groups() string {
	h := d.f.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(d.streams))
	for n := range d.streams {
		names = append(names, n)
	}
	slices.Sort(names)
	var lines []string
	for _, n := range names {
		s := d.streams[n]
		ids := make([]ID, 0, len(s.watchers))
		for id := range s.watchers {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			w := s.watchers[id]
			group := "compacted away"
			if h.synced.has(w) {
				group = "synced"
			} else if _, ok := h.unsynced[w]; ok {
				group = "unsynced"
			}
			lines = append(lines, fmt.Sprintf("%s id=%d %s next=%d", n, id, group, w.next))
		}
		if len(s.queue) > 0 {
			lines = append(lines, fmt.Sprintf("%s queued=%d", n, len(s.queue)))
		}
	}
	lines = append(lines, fmt.Sprintf("hub rev=%d", h.rev))
	return strings.Join(lines, "\n")
}
