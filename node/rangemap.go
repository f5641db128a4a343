package node

import (
	"fmt"
	"html/template"
	"net/http"
)

// rangeMapPage draws the range map (GET /cairn/ranges.html): the key space
// as a bar cut into the ranges, each as wide as its share of the keys (at
// least a sliver), coloured by its leader, with a table below.
var rangeMapPage = template.Must(template.New("ranges").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Cairn range map</title>
<style>
body{font-family:sans-serif;margin:2em}
.bar{display:flex;height:4em;border:1px solid #333}
.r{border-right:1px solid #fff;overflow:hidden;font-size:.8em;padding:.2em;color:#fff;min-width:2.5em}
table{border-collapse:collapse;margin-top:1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
</style></head><body>
<h1>Range map</h1>
<p>{{len .}} ranges, as this member sees them; width: share of the keys, colour: leader.</p>
<div class="bar">{{range .}}<div class="r" style="flex:{{.Weight}};background:{{.Colour}}" title="range {{.ID}} [{{.Start}}, {{.End}})">{{.ID}}</div>{{end}}</div>
<table><tr><th>range</th><th>start</th><th>end</th><th>gen</th><th>leader</th><th>keys</th><th>revision</th><th>closed</th><th>writes</th><th>watchers</th></tr>
{{range .}}<tr><td>{{.ID}}</td><td>{{.Start}}</td><td>{{.End}}</td><td>{{.Generation}}</td><td style="color:{{.Colour}}">{{.Leader}}</td><td>{{.Keys}}</td><td>{{.Revision}}</td><td>{{.Closed}}</td><td>{{.Writes}}</td><td>{{.Watchers}}</td></tr>
{{end}}</table></body></html>
`))

// rangeBox is one range as the page draws it.
type rangeBox struct {
	RangeInfo
	Start, End, Leader, Colour string
	Weight                     float64
}

func (n *Node) serveRangeMap(w http.ResponseWriter, _ *http.Request) {
	infos := n.Ranges()
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
		boxes[i] = b
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = rangeMapPage.Execute(w, boxes)
}
