package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writeCharts draws throughput.png (grouped bars: scenario × system) and one
// latency-<scenario>.png per scenario (percentile curves, one per system) into
// dir, and returns their file names.
func writeCharts(dir string, r *results) ([]string, error) {
	var names []string

	// Throughput.
	var scs []scenario
	for _, sc := range r.scenarios {
		if !sc.latencyBound && sc.memoryKeys == 0 && !sc.scaleOut && len(r.runs[sc.name]) > 0 {
			scs = append(scs, sc)
		}
	}
	if len(scs) > 0 {
		p := plot.New()
		p.Title.Text = "Throughput (median over rounds)"
		p.Y.Label.Text = "requests/s"
		w := vg.Points(60 / float64(len(r.systems)))
		for i, s := range r.systems {
			vals := make(plotter.Values, len(scs))
			for j, sc := range scs {
				v := 0.0
				if has(r, sc.name, s.name) {
					v = median(r.rps(sc.name, s.name))
				}
				if math.IsNaN(v) {
					v = 0
				}
				vals[j] = v
			}
			bars, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return nil, err
			}
			bars.LineStyle.Width = vg.Length(0)
			bars.Color = plotutil.Color(i)
			bars.Offset = w * vg.Length(float64(i)-float64(len(r.systems)-1)/2)
			p.Add(bars)
			p.Legend.Add(s.name, bars)
		}
		p.Legend.Top = true
		p.Y.Max *= 1.2 // room for the legend
		var labels []string
		for _, sc := range scs {
			labels = append(labels, sc.name)
		}
		p.NominalX(labels...)
		if err := p.Save(vg.Length(140+110*len(scs)), 9*vg.Centimeter, filepath.Join(dir, "throughput.png")); err != nil {
			return nil, err
		}
		names = append(names, "throughput.png")
	}

	// Latency percentiles.
	for _, sc := range r.scenarios {
		if len(r.runs[sc.name]) == 0 || sc.scaleOut {
			continue
		}
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s: latency percentiles (median over rounds)", sc.name)
		p.Y.Label.Text = "ms (log scale)"
		p.X.Label.Text = "percentile"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = ticks125{}
		qs := []float64{10, 25, 50, 75, 90, 95, 99, 99.9}
		var labels []string
		for _, q := range qs {
			labels = append(labels, fmt.Sprintf("p%g", q))
		}
		lines := 0
		for i, s := range r.systems {
			if !has(r, sc.name, s.name) {
				continue
			}
			var xys plotter.XYs
			for j, q := range qs {
				v := median(r.pct(sc.name, s.name, q)) * 1000
				if math.IsNaN(v) || v <= 0 {
					continue
				}
				xys = append(xys, plotter.XY{X: float64(j), Y: v})
			}
			if len(xys) == 0 {
				continue
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
			pts.Shape = plotutil.Shape(i)
			p.Add(l, pts)
			p.Legend.Add(s.name, l, pts)
			lines++
		}
		if lines == 0 {
			continue
		}
		p.Legend.Top = true
		p.Legend.Left = true
		p.NominalX(labels...)
		name := fmt.Sprintf("latency-%s.png", sc.name)
		if err := p.Save(16*vg.Centimeter, 9*vg.Centimeter, filepath.Join(dir, name)); err != nil {
			return nil, err
		}
		names = append(names, name)
	}

	// Memory: peak RSS against the number of keys, a line per system.
	var mem []scenario
	for _, sc := range r.scenarios {
		if sc.memoryKeys > 0 && len(r.runs[sc.name]) > 0 {
			mem = append(mem, sc)
		}
	}
	if len(mem) > 0 {
		p := plot.New()
		p.Title.Text = "Server peak RSS after loading N keys"
		p.X.Label.Text = "keys"
		p.Y.Label.Text = "MiB"
		lines := 0
		for i, s := range r.systems {
			var xys plotter.XYs
			for _, sc := range mem {
				if v := medianRSS(r, sc.name, s.name); v > 0 {
					xys = append(xys, plotter.XY{X: float64(sc.memoryKeys), Y: v})
				}
			}
			if len(xys) == 0 {
				continue
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
			pts.Shape = plotutil.Shape(i)
			p.Add(l, pts)
			p.Legend.Add(s.name, l, pts)
			lines++
		}
		if lines > 0 {
			p.Legend.Top = true
			p.Legend.Left = true
			if err := p.Save(16*vg.Centimeter, 9*vg.Centimeter, filepath.Join(dir, "memory.png")); err != nil {
				return nil, err
			}
			names = append(names, "memory.png")
		}
	}

	// Scale-out: throughput against members, a line per mode and step.
	for _, sc := range r.scenarios {
		if !sc.scaleOut || len(r.runs[sc.name]) == 0 {
			continue
		}
		name, err := scaleOutChart(dir, r, sc)
		if err != nil {
			return nil, err
		}
		if name != "" {
			names = append(names, name)
		}
	}
	return names, nil
}

// scaleOutChart draws scale-out.png: put and range throughput against the
// number of members, for sharded and single-group mode; "" if nothing ran.
func scaleOutChart(dir string, r *results, sc scenario) (string, error) {
	p := plot.New()
	p.Title.Text = "Scale-out, members capped at a CPU share"
	p.X.Label.Text = "members"
	p.Y.Label.Text = "requests/s"
	rows := scaleOutRows(r, sc.name)
	var ticks []plot.Tick
	for _, s := range rows {
		_, n, _ := scaleOutSystem(s)
		if !slices.ContainsFunc(ticks, func(t plot.Tick) bool { return t.Value == float64(n) }) {
			ticks = append(ticks, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
		}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	lines := 0
	for _, l := range []struct {
		sharded, rng bool
		label        string
	}{{true, false, "sharded put"}, {true, true, "sharded range"}, {false, false, "single-group put"}, {false, true, "single-group range"}} {
		var xys plotter.XYs
		for _, s := range rows {
			sharded, n, _ := scaleOutSystem(s)
			if sharded != l.sharded {
				continue
			}
			if v := median(r.scaleOutFigure(sc.name, s, l.rng, 0)); !math.IsNaN(v) {
				xys = append(xys, plotter.XY{X: float64(n), Y: v})
			}
		}
		if len(xys) == 0 {
			continue
		}
		line, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return "", err
		}
		line.Color, pts.Color = plotutil.Color(lines), plotutil.Color(lines)
		pts.Shape = plotutil.Shape(lines)
		if l.rng {
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(line, pts)
		p.Legend.Add(l.label, line, pts)
		lines++
	}
	if lines == 0 {
		return "", nil
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.X.Min, p.Y.Min = 0, 0
	p.X.Max++
	p.Y.Max *= 1.3 // room for the legend
	if err := p.Save(16*vg.Centimeter, 9*vg.Centimeter, filepath.Join(dir, "scale-out.png")); err != nil {
		return "", err
	}
	return "scale-out.png", nil
}

// ticks125 marks 1, 2 and 5 times each power of ten: plot.LogTicks labels
// only the powers, which leaves a one-decade latency chart with one label.
type ticks125 struct{}

func (ticks125) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	if min <= 0 || max <= min {
		return ts
	}
	for e := math.Floor(math.Log10(min)); math.Pow(10, e) <= max; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= min && v <= max {
				ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ts
}
