package router

import (
	"context"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// RangeInfo is one range as /cairn/ranges (and `cairn ranges`) shows it.
type RangeInfo struct {
	ID         uint64   `json:"id"`
	Start      string   `json:"start"`
	End        string   `json:"end"` // "" is the end of the key space
	Generation uint64   `json:"generation"`
	Replicas   []uint64 `json:"replicas"`
	Leader     uint64   `json:"leader"` // 0: none known
	Revision   int64    `json:"revision"`
	Closed     int64    `json:"closed"`
	Writes     uint64   `json:"writes"` // writes proposed through this node since it started
	Keys       int64    `json:"keys"`   // live keys, as this node's replica has them
	// Watchers are the watchers this node's clients have on the range
	// (identical watches share one: watch.Merger coalesces them).
	Watchers int `json:"watchers"`
	// ReplicaSet names each replica by its member and its id in the
	// range, as the map has them (omitted for ranges whose replica ids
	// are their members', and by members from before).
	ReplicaSet []ReplicaInfo `json:"replica_set,omitempty"`
	// Remote: this node holds no replica of the range; its figures come
	// from a member that does (Writes and Watchers are this node's).
	Remote bool `json:"remote,omitempty"`
}

// ReplicaInfo is one replica of a range: its member, its id in the range,
// and whether it is a learner (not yet voting).
type ReplicaInfo struct {
	Member  uint64 `json:"member"`
	ID      uint64 `json:"id"`
	Learner bool   `json:"learner,omitempty"`
}

// remoteInfoTimeout bounds the reads of a range held elsewhere that the
// range info makes.
const remoteInfoTimeout = time.Second

// ReplicaCounters is what the range info reads of a range's replica here
// (part of Replica).
type ReplicaCounters interface {
	// Closed is the range's closed revision as the replica knows it.
	Closed() mvcc.Revision
	// Proposed counts the writes proposed through the replica.
	Proposed() uint64
}

// Ranges returns this member's view of the range map (nil in single-group
// mode, whose static map is no range map placement keeps): every range,
// in key order, wherever it lives. Of a range here: leaders as this member
// knows them, revisions from its replica, replicas as raft has them here
// (Config.RangeMembers) or else as the descriptor names them. Of a range
// held elsewhere: its replicas and leader hint as the map has them, its
// revision and keys read from a member holding it. Replicas and leaders
// are named by their members (Config.MemberOf); ReplicaSet adds the
// replicas' ids.
func (s *Server) Ranges() []RangeInfo {
	if s.cfg.Ranges == nil || s.cfg.Ranges.static {
		return nil
	}
	var members map[uint64][]uint64
	if s.cfg.RangeMembers != nil {
		members = s.cfg.RangeMembers()
	}
	var out []RangeInfo
	for _, p := range s.cfg.Ranges.All() {
		e, ok := s.cfg.Ranges.started(p.ID)
		if !ok {
			if ri, ok := s.remoteInfo(p); ok {
				out = append(out, ri)
			}
			continue
		}
		d, r := e.Local.Descriptor(), e.Local.Replica()
		var replicas []uint64
		for _, id := range members[d.Id] {
			replicas = append(replicas, uint64(s.cfg.MemberOf.member(shard.RangeID(d.Id), shard.ReplicaID(id))))
		}
		slices.Sort(replicas)
		if len(replicas) == 0 {
			replicas = d.Replicas
		}
		ri := RangeInfo{ID: d.Id, Start: string(d.Start), End: string(d.End), Generation: d.Generation, Replicas: replicas,
			ReplicaSet: replicaSet(d)}
		ri.Closed, ri.Writes = int64(r.Closed()), r.Proposed()
		if e.Watches != nil {
			ri.Watchers = e.Watches.Watchers()
		}
		if leader, _, ok := r.Leader(); ok {
			ri.Leader = uint64(s.cfg.MemberOf.member(shard.RangeID(d.Id), leader))
		}
		if st, err := r.Status(context.Background(), false); err == nil {
			ri.Revision = int64(max(st.Revision, st.Closed, r.Closed()))
		}
		if v, err := r.Range(context.Background(), countAll(d), false); err == nil {
			ri.Keys = v.Count
		}
		out = append(out, ri)
	}
	return out
}

// remoteInfo is range p, held elsewhere, as the map names it, with its
// revision and keys read from a member holding it; false if p has a
// replica here (not started yet) or the cache has no descriptor of it.
func (s *Server) remoteInfo(p RangePart) (RangeInfo, bool) {
	rc, ok := p.Shard.(*RangeClient)
	if !ok || !rc.Remote() || rc.Descriptor() == nil {
		return RangeInfo{}, false // a replica here still starting: not shown yet
	}
	d := rc.Descriptor()
	ri := RangeInfo{ID: d.Id, Start: string(d.Start), End: string(d.End), Generation: d.Generation, Replicas: slices.Clone(d.Replicas),
		ReplicaSet: replicaSet(d), Remote: true}
	slices.Sort(ri.Replicas)
	if m, ok := rc.LeaderMember(); ok {
		ri.Leader = uint64(m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteInfoTimeout)
	defer cancel()
	if st, err := rc.Status(ctx, false); err == nil {
		ri.Revision, ri.Closed = int64(max(st.Revision, st.Closed)), int64(st.Closed)
	}
	if v, err := rc.Range(ctx, countAll(d), false); err == nil {
		ri.Keys = v.Count
	}
	return ri, true
}

// countAll counts range d's keys (serializable).
func countAll(d *placementpb.RangeDescriptor) *pb.RangeRequest {
	start, end := d.Start, d.End
	if len(end) == 0 {
		end = []byte{0}
	}
	if len(start) == 0 {
		start = []byte{0}
	}
	return &pb.RangeRequest{Key: start, RangeEnd: end, CountOnly: true, Serializable: true}
}

// replicaSet is d's replicas as the range info names them; nil for a
// descriptor from before replica ids were allocated (each replica's id is
// its member's: Replicas says it all).
func replicaSet(d *placementpb.RangeDescriptor) []ReplicaInfo {
	var out []ReplicaInfo
	for _, r := range d.GetReplicaSet() {
		out = append(out, ReplicaInfo{Member: r.Member, ID: r.Id, Learner: r.Learner})
	}
	return out
}

// serveRanges answers GET /cairn/ranges with the range map as JSON: all
// of it, or with the query parameters limit, start and sort a page of it
// and a summary (ServeRanges).
func (s *Server) serveRanges(w http.ResponseWriter, r *http.Request) {
	ServeRanges(w, r, s.Ranges)
}

// rangeMapDrawn is how many ranges the range map page draws unless its
// limit parameter says otherwise: one box and one row each, so a map of
// many thousand ranges stays a page a browser shows.
const rangeMapDrawn = 1000

// rangeMapPage draws the range map (GET /cairn/ranges.html): the key space
// as a bar cut into the ranges, each as wide as its share of the keys (at
// least a sliver), coloured by its leader, with a table below naming each
// range's replicas (member/replica id, learners marked, the leader's in
// bold and its colour); the summary of the whole map on top. It draws the first rangeMapDrawn
// ranges in key order, or the page its query parameters (as
// /cairn/ranges's) ask for, and says how many it left out.
var rangeMapPage = template.Must(template.New("ranges").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Cairn range map</title>
<style>
body{font-family:sans-serif;margin:2em}
.bar{display:flex;height:4em;border:1px solid #333}
.r{border-right:1px solid #fff;overflow:hidden;font-size:.8em;padding:.2em;color:#fff;min-width:2.5em}
table{border-collapse:collapse;margin-top:1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
td.replicas{text-align:left;white-space:nowrap}.leader{font-weight:bold}.learner{font-style:italic;color:#777}
</style></head><body>
<h1>Range map</h1>
<p class="summary">{{.Summary}}</p>
<p>{{len .Boxes}} ranges drawn, as this member sees them; width: share of the keys, colour: leader.</p>
{{if .More}}<p class="more">… {{.More}} more ranges not drawn (?limit=0 draws all, ?start=KEY from the range holding KEY).</p>
{{end}}<div class="bar">{{range .Boxes}}<div class="r" style="flex:{{.Weight}};background:{{.Colour}}" title="range {{.ID}} [{{.Start}}, {{.End}})">{{.ID}}</div>{{end}}</div>
<table><tr><th>range</th><th>start</th><th>end</th><th>gen</th><th>leader</th><th>replicas (member/id)</th><th>keys</th><th>revision</th><th>closed</th><th>writes</th><th>watchers</th></tr>
{{range .Boxes}}<tr><td>{{.ID}}</td><td>{{.Start}}</td><td>{{.End}}</td><td>{{.Generation}}</td><td style="color:{{.Colour}}">{{.Leader}}</td><td class="replicas">
{{- $c := .Colour}}{{range $i, $r := .Cells}}{{if $i}}, {{end}}{{if $r.Leader}}<span class="leader" style="color:{{$c}}">{{$r.Name}}</span>{{else}}{{$r.Name}}{{end}}{{if $r.Learner}} <span class="learner">(learner)</span>{{end}}{{end -}}
</td><td>{{.Keys}}</td><td>{{.Revision}}</td><td>{{.Closed}}</td><td>{{.Writes}}</td><td>{{.Watchers}}</td></tr>
{{end}}</table></body></html>
`))

// rangeBox is one range as the page draws it.
type rangeBox struct {
	RangeInfo
	Start, End, Leader, Colour string
	Weight                     float64
	Cells                      []replicaCell // the replicas column
}

// replicaCell is one replica in the page's replicas column.
type replicaCell struct {
	Name            string // member/replica id, in hex/decimal as `cairn ranges` has them
	Leader, Learner bool
}

// replicaCells are r's replicas as the page names them: from ReplicaSet,
// or, for a range whose replicas are named by their members alone (their
// ids are their members'), from Replicas.
func replicaCells(r RangeInfo) []replicaCell {
	var out []replicaCell
	if len(r.ReplicaSet) > 0 {
		for _, rep := range r.ReplicaSet {
			out = append(out, replicaCell{Name: fmt.Sprintf("%x/%d", rep.Member, rep.ID), Leader: r.Leader != 0 && rep.Member == r.Leader, Learner: rep.Learner})
		}
		return out
	}
	for _, m := range r.Replicas {
		out = append(out, replicaCell{Name: fmt.Sprintf("%x", m), Leader: r.Leader != 0 && m == r.Leader})
	}
	return out
}

// serveRangeMap answers GET /cairn/ranges.html with the range map drawn.
func (s *Server) serveRangeMap(w http.ResponseWriter, req *http.Request) {
	q, _, err := ParseRangeQuery(req.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !req.URL.Query().Has("limit") {
		q.Limit = rangeMapDrawn
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = drawRangeMap(w, PageRanges(s.Ranges(), q))
}

// drawRangeMap writes page as the range map page (rangeMapPage).
func drawRangeMap(w io.Writer, page RangePage) error {
	infos := page.Ranges
	var total int64
	for _, r := range infos {
		total += r.Keys
	}
	palette := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}
	colours := map[uint64]string{}
	boxes := make([]rangeBox, len(infos))
	for i, r := range infos {
		b := rangeBox{RangeInfo: r, Start: fmt.Sprintf("%q", r.Start), End: "∞", Leader: "none", Colour: "#999", Weight: 1}
		if r.End != "" {
			b.End = fmt.Sprintf("%q", r.End)
		}
		if r.Leader != 0 {
			b.Leader = fmt.Sprintf("%x", r.Leader)
			if _, ok := colours[r.Leader]; !ok {
				colours[r.Leader] = palette[len(colours)%len(palette)]
			}
			b.Colour = colours[r.Leader]
		}
		if total > 0 {
			b.Weight = max(float64(r.Keys)/float64(total)*100, 1)
		}
		b.Cells = replicaCells(r)
		boxes[i] = b
	}
	return rangeMapPage.Execute(w, struct {
		Summary RangeSummary
		Boxes   []rangeBox
		More    int
	}{page.Summary, boxes, page.More})
}
