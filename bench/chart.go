// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	xfont "golang.org/x/image/font"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The chart is drawn in panels, one under the other: the data-plane
// ratios on a linear axis around 1x, the scaling figures as lines over
// the number of other published ports, and the control-plane times on a
// log axis. Every mode and every ratio pair comes from the report, so a
// report with more modes draws as well.

// Chart layout, in points (1/72 in).
const (
	chartWidth   = vg.Length(900)
	chartMargin  = vg.Length(12)
	headerHeight = vg.Length(70)
	scaleHeight  = vg.Length(290)
	panelGap     = vg.Length(14)
	// panelFrame is a panel's height besides its rows: title, x ticks
	// and x label.
	panelFrame = vg.Length(64)
	// subrowHeight is the height of one mode's (or ratio's) line in a
	// row, rowPad the space between rows.
	subrowHeight = vg.Length(13)
	rowPad       = vg.Length(12)
	// ChartDPI is the resolution of WritePNG.
	ChartDPI = 96
)

// Font sizes.
const (
	titleSize = vg.Length(14)
	panelSize = vg.Length(12)
	tickSize  = vg.Length(10)
	labelSize = vg.Length(9)
)

// sans is the chart's typeface at size.
func sans(size vg.Length) font.Font {
	return font.Font{Typeface: "Liberation", Variant: "Sans", Size: size}
}

func textStyle(size vg.Length, c color.Color) text.Style {
	return text.Style{Color: c, Font: sans(size), Handler: plot.DefaultTextHandler, YAlign: draw.YCenter}
}

// modeColors are the colours of the modes the project knows; other modes
// take extraColors in order.
var modeColors = map[Mode]color.Color{
	ModeRouting:  rgb(0x66, 0x66, 0x66),
	ModeIptables: rgb(0xd9, 0x5f, 0x02),
	ModeEBPF:     rgb(0x1b, 0x9e, 0x77),
	ModeRedirect: rgb(0x75, 0x70, 0xb3),
	"nftables":   rgb(0xe7, 0x29, 0x8a),
}

var extraColors = []color.Color{
	rgb(0x1f, 0x78, 0xb4), rgb(0xa6, 0x76, 0x1d), rgb(0x66, 0xa6, 0x1e), rgb(0xe6, 0xab, 0x02),
}

func rgb(r, g, b uint8) color.Color { return color.RGBA{R: r, G: g, B: b, A: 0xff} }

var (
	gridColor = rgb(0xe4, 0xe4, 0xe4)
	rowColor  = rgb(0xc8, 0xc8, 0xc8)
	noteColor = rgb(0x55, 0x55, 0x55)
)

// chartData is what the chart shows, taken from a report.
type chartData struct {
	title   string
	modes   []Mode
	colors  map[Mode]color.Color
	pairs   []ratioPair
	ratios  []ScenarioSummary
	scale   []scaleSeries
	control []ScenarioSummary
	ctlMode []Mode
	runs    []RunResult
}

// ratioPair is one ratio of the report: num over den.
type ratioPair struct {
	name     string
	num, den Mode
}

// scaleSeries is one scaling figure over the number of other published
// ports.
type scaleSeries struct {
	name, unit string
	ns         []int
	rows       []ScenarioSummary
}

// reportModes are the modes a report has figures for: those of Modes
// first, in that order, then any other in order of appearance.
func (r *Report) reportModes() []Mode {
	seen := map[Mode]bool{}
	var other []Mode
	add := func(m Mode) {
		if m == "" || seen[m] {
			return
		}
		seen[m] = true
		if !slices.Contains(Modes, m) {
			other = append(other, m)
		}
	}
	for _, run := range r.Runs {
		add(run.Mode)
	}
	for _, s := range r.Summary {
		keys := make([]string, 0, len(s.Stats))
		for m := range s.Stats {
			keys = append(keys, string(m))
		}
		slices.Sort(keys)
		for _, m := range keys {
			add(Mode(m))
		}
	}
	var out []Mode
	for _, m := range Modes {
		if seen[m] {
			out = append(out, m)
		}
	}
	return append(out, other...)
}

// reportPairs are the ratios a report has: those of RatioPairs first, in
// that order, then the others by name.
func (r *Report) reportPairs() []ratioPair {
	seen := map[string]bool{}
	for _, s := range r.Summary {
		for k := range s.Ratios {
			seen[k] = true
		}
	}
	var out []ratioPair
	for _, p := range RatioPairs {
		if n := RatioName(p); seen[n] {
			out = append(out, ratioPair{name: n, num: p[0], den: p[1]})
			delete(seen, n)
		}
	}
	var rest []string
	for k := range seen {
		rest = append(rest, k)
	}
	slices.Sort(rest)
	for _, k := range rest {
		num, den, ok := strings.Cut(k, "/")
		if !ok {
			continue
		}
		out = append(out, ratioPair{name: k, num: Mode(num), den: Mode(den)})
	}
	return out
}

// scaleKey splits a scaling key such as tcp_rr_ports_100 into its figure
// (tcp_rr) and the number of other ports.
func scaleKey(key string) (figure string, n int, ok bool) {
	i := strings.LastIndex(key, "_ports_")
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(key[i+len("_ports_"):])
	if err != nil || n < 0 {
		return "", 0, false
	}
	return key[:i], n, true
}

// isMemoryKey reports figures of memory per port: the table shows them,
// the chart does not (they do not change between runs).
func isMemoryKey(key string) bool { return strings.HasPrefix(key, "mem_") }

// isControlKey reports the control-plane times.
func isControlKey(key string) bool { return strings.HasPrefix(key, "cp_") }

func (r *Report) chartData() *chartData {
	d := &chartData{modes: r.reportModes(), pairs: r.reportPairs(), colors: map[Mode]color.Color{}, runs: r.Runs}
	extra := 0
	for _, m := range d.modes {
		if c, ok := modeColors[m]; ok {
			d.colors[m] = c
			continue
		}
		d.colors[m] = extraColors[extra%len(extraColors)]
		extra++
	}
	runs := r.Settings.Runs
	d.title = "bpfnet bench"
	if runs > 0 {
		d.title += fmt.Sprintf(": median of %d runs, whiskers from the lowest to the highest run", runs)
	}
	if !r.Started.IsZero() {
		d.title += ", " + r.Started.UTC().Format("2006-01-02")
	}
	series := map[string]*scaleSeries{}
	var figs []string
	ctlModes := map[Mode]bool{}
	for _, s := range r.Summary {
		switch fig, n, ok := scaleKey(s.Key); {
		case isMemoryKey(s.Key):
		case ok:
			ss := series[fig]
			if ss == nil {
				name, _, _ := strings.Cut(s.Name, ",")
				ss = &scaleSeries{name: name, unit: s.Unit}
				series[fig] = ss
				figs = append(figs, fig)
			}
			ss.ns = append(ss.ns, n)
			ss.rows = append(ss.rows, s)
		case isControlKey(s.Key):
			if len(s.Stats) == 0 {
				continue
			}
			d.control = append(d.control, s)
			for m := range s.Stats {
				ctlModes[m] = true
			}
		case len(s.Ratios) > 0:
			d.ratios = append(d.ratios, s)
		}
	}
	for _, f := range figs {
		d.scale = append(d.scale, *series[f])
	}
	for _, m := range d.modes {
		if ctlModes[m] {
			d.ctlMode = append(d.ctlMode, m)
		}
	}
	return d
}

// runRatios are the lowest and highest ratio of pair p's figures key
// taken in the same run; ok is false without two such runs.
func (d *chartData) runRatios(key string, p ratioPair) (lo, hi float64, ok bool) {
	num, den := map[int]float64{}, map[int]float64{}
	for _, r := range d.runs {
		if v, has := r.Figures[key]; has {
			switch r.Mode {
			case p.num:
				num[r.Run] = v
			case p.den:
				den[r.Run] = v
			}
		}
	}
	lo, hi = math.Inf(1), math.Inf(-1)
	n := 0
	for run, a := range num {
		if b, has := den[run]; has && b != 0 {
			lo, hi = math.Min(lo, a/b), math.Max(hi, a/b)
			n++
		}
	}
	return lo, hi, n >= 2
}

// rowsHeight is the height of rows rows of sub subrows each.
func rowsHeight(rows, sub int) vg.Length {
	return vg.Length(rows) * (vg.Length(sub)*subrowHeight + rowPad)
}

func (d *chartData) ratioHeight() vg.Length {
	if len(d.ratios) == 0 || len(d.pairs) == 0 {
		return 0
	}
	return panelFrame + rowsHeight(len(d.ratios), len(d.pairs))
}

func (d *chartData) scaleHeight() vg.Length {
	if len(d.scale) == 0 {
		return 0
	}
	return scaleHeight
}

func (d *chartData) controlHeight() vg.Length {
	if len(d.control) == 0 {
		return 0
	}
	return panelFrame + rowsHeight(len(d.control), len(d.ctlMode))
}

func (d *chartData) size() (w, h vg.Length) {
	h = headerHeight + chartMargin
	for _, ph := range []vg.Length{d.ratioHeight(), d.scaleHeight(), d.controlHeight()} {
		if ph > 0 {
			h += ph + panelGap
		}
	}
	return chartWidth, h
}

// draw draws the whole chart on c, which has d.size().
func (d *chartData) draw(c draw.Canvas) error {
	c.SetColor(color.White)
	c.Fill(c.Rectangle.Path())
	top := c.Max.Y - chartMargin
	d.drawHeader(c, top)
	top -= headerHeight
	panel := func(h vg.Length) draw.Canvas {
		sub := draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{
			Min: vg.Point{X: c.Min.X + chartMargin, Y: top - h},
			Max: vg.Point{X: c.Max.X - chartMargin, Y: top},
		}}
		top -= h + panelGap
		return sub
	}
	if h := d.ratioHeight(); h > 0 {
		p, err := d.ratioPlot()
		if err != nil {
			return err
		}
		p.Draw(panel(h))
	}
	if h := d.scaleHeight(); h > 0 {
		pc := panel(h)
		w := (pc.Max.X - pc.Min.X) / vg.Length(len(d.scale))
		for i, s := range d.scale {
			p, err := d.scalePlot(s)
			if err != nil {
				return err
			}
			x0 := pc.Min.X + vg.Length(i)*w
			p.Draw(draw.Canvas{Canvas: pc.Canvas, Rectangle: vg.Rectangle{
				Min: vg.Point{X: x0, Y: pc.Min.Y},
				Max: vg.Point{X: x0 + w - panelGap/2, Y: pc.Max.Y},
			}})
		}
	}
	if h := d.controlHeight(); h > 0 {
		p, err := d.controlPlot()
		if err != nil {
			return err
		}
		p.Draw(panel(h))
	}
	return nil
}

// drawHeader writes the title and the legend of the modes.
func (d *chartData) drawHeader(c draw.Canvas, top vg.Length) {
	x := c.Min.X + chartMargin
	ts := textStyle(titleSize, color.Black)
	ts.Font.Weight = xfont.WeightBold
	c.FillText(ts, vg.Point{X: x, Y: top - 10}, d.title)
	ls := textStyle(tickSize+1, color.Black)
	y := top - 34
	c.FillText(ls, vg.Point{X: x, Y: y}, "modes:")
	x += ls.Width("modes:") + 10
	for _, m := range d.modes {
		col := d.colors[m]
		c.StrokeLine2(draw.LineStyle{Color: col, Width: 2}, x, y, x+18, y)
		c.DrawGlyph(draw.GlyphStyle{Color: col, Radius: 3, Shape: draw.CircleGlyph{}}, vg.Point{X: x + 9, Y: y})
		x += 22
		c.FillText(ls, vg.Point{X: x, Y: y}, string(m))
		x += ls.Width(string(m)) + 16
	}
	ns := textStyle(labelSize+1, noteColor)
	c.FillText(ns, vg.Point{X: c.Min.X + chartMargin, Y: top - 52},
		"A ratio a/b takes the colour of mode b. Memory per port is in the table only.")
}

// newPlot is a plot with the chart's fonts.
func newPlot(title string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = sans(panelSize)
	p.Title.TextStyle.Font.Weight = xfont.WeightBold
	p.Title.Padding = 6
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = sans(tickSize)
		a.Tick.Label.Font = sans(tickSize)
	}
	p.Legend.TextStyle.Font = sans(tickSize)
	return p
}

// rowTicks labels the rows of a panel, top row first, at y = n-1 ... 0.
func rowTicks(names []string) plot.Ticker {
	var t plot.ConstantTicks
	for i, n := range names {
		t = append(t, plot.Tick{Value: float64(len(names) - 1 - i), Label: n})
	}
	return t
}

// rowY is the y of subrow j of sub in row i of n (rows top first).
func rowY(i, n, j, sub int) float64 {
	d := 0.85 / float64(sub)
	return float64(n-1-i) + (float64(sub-1)/2-float64(j))*d
}

// addRowLines separates n rows with thin lines across [lo, hi].
func addRowLines(p *plot.Plot, n int, lo, hi float64) error {
	for i := 0; i < n-1; i++ {
		y := float64(i) + 0.5
		l, err := plotter.NewLine(plotter.XYs{{X: lo, Y: y}, {X: hi, Y: y}})
		if err != nil {
			return err
		}
		l.LineStyle = draw.LineStyle{Color: rowColor, Width: 0.5}
		p.Add(l)
	}
	return nil
}

// spans are points with a horizontal or vertical range: whiskers.
type spans []span

type span struct {
	x, y, lo, hi float64
	label        string
}

func (s spans) Len() int                        { return len(s) }
func (s spans) XY(i int) (float64, float64)     { return s[i].x, s[i].y }
func (s spans) XError(i int) (float64, float64) { return s[i].x - s[i].lo, s[i].hi - s[i].x }
func (s spans) YError(i int) (float64, float64) { return s[i].y - s[i].lo, s[i].hi - s[i].y }

// addSpans draws s as points with whiskers (horizontal or vertical) in col.
func addSpans(p *plot.Plot, s spans, col color.Color, horizontal bool) error {
	if len(s) == 0 {
		return nil
	}
	sc, err := plotter.NewScatter(s)
	if err != nil {
		return err
	}
	sc.GlyphStyle = draw.GlyphStyle{Color: col, Radius: 3, Shape: draw.CircleGlyph{}}
	if horizontal {
		eb, err := plotter.NewXErrorBars(s)
		if err != nil {
			return err
		}
		eb.LineStyle = draw.LineStyle{Color: col, Width: 1.2}
		eb.CapWidth = 6
		p.Add(eb)
	} else {
		eb, err := plotter.NewYErrorBars(s)
		if err != nil {
			return err
		}
		eb.LineStyle = draw.LineStyle{Color: col, Width: 1.2}
		eb.CapWidth = 6
		p.Add(eb)
	}
	p.Add(sc)
	return nil
}

// rowLabels writes each span's label beside its whisker: to the right,
// or to the left where the right has no room.
type rowLabels struct {
	spans  spans
	colors []color.Color
}

func (l rowLabels) Plot(c draw.Canvas, p *plot.Plot) {
	tx, ty := p.Transforms(&c)
	for i, s := range l.spans {
		sty := textStyle(labelSize, l.colors[i])
		w := sty.Width(s.label)
		pt := vg.Point{X: tx(s.hi) + 6, Y: ty(s.y)}
		if pt.X+w > c.Max.X {
			pt.X = tx(s.lo) - 6
			sty.XAlign = draw.XRight
		}
		c.FillText(sty, pt, s.label)
	}
}

// endLabels write labels at the right of points that share an x, moved
// apart vertically so that none overlaps another.
type endLabels struct {
	x      float64
	ys     []float64
	texts  []string
	colors []color.Color
}

func (l endLabels) Plot(c draw.Canvas, p *plot.Plot) {
	tx, ty := p.Transforms(&c)
	idx := make([]int, len(l.ys))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpFloat(l.ys[a], l.ys[b]) })
	sty := textStyle(labelSize, color.Black)
	gap := sty.FontExtents().Height + 1
	pos := make([]vg.Length, len(l.ys))
	for k, i := range idx {
		pos[i] = ty(l.ys[i])
		if k > 0 && pos[i] < pos[idx[k-1]]+gap {
			pos[i] = pos[idx[k-1]] + gap
		}
	}
	// Keep the top label inside the panel: shift the stack down.
	if n := len(idx); n > 0 {
		if over := pos[idx[n-1]] + gap/2 - c.Max.Y; over > 0 {
			for i := range pos {
				pos[i] -= over
			}
		}
	}
	for i, t := range l.texts {
		sty.Color = l.colors[i]
		c.FillText(sty, vg.Point{X: tx(l.x) + 8, Y: pos[i]}, t)
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ratioTicks are about six ticks at a round step, labelled with "x".
type ratioTicks struct{}

func (ratioTicks) Ticks(lo, hi float64) []plot.Tick {
	step := niceStep((hi - lo) / 6)
	var t []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+step/1e6; v += step {
		r := math.Round(v/step) * step
		t = append(t, plot.Tick{Value: r, Label: strconv.FormatFloat(r, 'f', -1, 64) + "x"})
	}
	return t
}

// niceStep rounds s up to 1, 2, 2.5 or 5 times a power of ten.
func niceStep(s float64) float64 {
	if s <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(s)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*e >= s {
			return m * e
		}
	}
	return 10 * e
}

func rowName(s ScenarioSummary) string {
	if s.LowerIsBetter {
		return s.Name + " (lower is better)"
	}
	return s.Name
}

func (d *chartData) ratioPlot() (*plot.Plot, error) {
	p := newPlot("Data plane: ratio of medians (linear; at 1x the two modes are equal)")
	p.X.Label.Text = "ratio; whiskers: lowest to highest ratio of the two modes' figures in one run"
	n := len(d.ratios)
	lo, hi := 1.0, 1.0
	byPair := make([]spans, len(d.pairs))
	for i, s := range d.ratios {
		for j, rp := range d.pairs {
			v, ok := s.Ratios[rp.name]
			if !ok {
				continue
			}
			sp := span{x: v, y: rowY(i, n, j, len(d.pairs)), lo: v, hi: v,
				label: fmt.Sprintf("%s %.2fx", rp.name, v)}
			if rlo, rhi, ok := d.runRatios(s.Key, rp); ok {
				sp.lo, sp.hi = math.Min(v, rlo), math.Max(v, rhi)
			} else if a, b := s.Stats[rp.num], s.Stats[rp.den]; a.N > 0 && b.N > 0 && b.Max > 0 && b.Min > 0 {
				sp.lo, sp.hi = math.Min(v, a.Min/b.Max), math.Max(v, a.Max/b.Min)
			}
			lo, hi = math.Min(lo, sp.lo), math.Max(hi, sp.hi)
			byPair[j] = append(byPair[j], sp)
		}
	}
	span := hi - lo
	lo, hi = lo-span*0.06, hi+span*0.06
	if err := addRowLines(p, n, lo, hi); err != nil {
		return nil, err
	}
	grid := plotter.NewGrid()
	grid.Horizontal.Width = 0
	grid.Vertical.Color = gridColor
	p.Add(grid)
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(n) - 0.5}})
	if err != nil {
		return nil, err
	}
	one.LineStyle = draw.LineStyle{Color: color.Black, Width: 1.2}
	p.Add(one)
	var labels rowLabels
	for j, rp := range d.pairs {
		col := d.colors[rp.den]
		if err := addSpans(p, byPair[j], col, true); err != nil {
			return nil, err
		}
		for _, s := range byPair[j] {
			labels.spans = append(labels.spans, s)
			labels.colors = append(labels.colors, col)
		}
	}
	p.Add(labels)
	p.X.Min, p.X.Max = lo, hi
	p.Y.Min, p.Y.Max = -0.5, float64(n)-0.5
	p.X.Tick.Marker = ratioTicks{}
	names := make([]string, n)
	for i, s := range d.ratios {
		names[i] = rowName(s)
	}
	p.Y.Tick.Marker = rowTicks(names)
	p.Y.Tick.Length = 0
	return p, nil
}

// kiloTicks label a linear axis from 0 in thousands ("20k").
type kiloTicks struct{}

func (kiloTicks) Ticks(lo, hi float64) []plot.Tick {
	step := niceStep((hi - lo) / 5)
	var t []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+step/1e6; v += step {
		t = append(t, plot.Tick{Value: v, Label: kilo(v)})
	}
	return t
}

// kilo prints v with about three significant digits, in thousands from
// 10,000 up.
func kilo(v float64) string {
	if math.Abs(v) >= 10000 {
		return strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func kiloLabel(v float64) string {
	if math.Abs(v) >= 10000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.3g", v)
}

func (d *chartData) scalePlot(s scaleSeries) (*plot.Plot, error) {
	p := newPlot(fmt.Sprintf("%s (%s) by other published ports", s.name, s.unit))
	p.X.Label.Text = "other published ports"
	order := make([]int, len(s.ns))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return s.ns[a] - s.ns[b] })
	grid := plotter.NewGrid()
	grid.Vertical.Width = 0
	grid.Horizontal.Color = gridColor
	p.Add(grid)
	hi := 0.0
	last := float64(len(order) - 1)
	var ends endLabels
	ends.x = last
	for _, m := range d.modes {
		var pts spans
		for k, i := range order {
			st, ok := s.rows[i].Stats[m]
			if !ok || st.N == 0 {
				continue
			}
			pts = append(pts, span{x: float64(k), y: st.Median, lo: st.Min, hi: st.Max})
			hi = math.Max(hi, st.Max)
		}
		if len(pts) == 0 {
			continue
		}
		col := d.colors[m]
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.LineStyle = draw.LineStyle{Color: col, Width: 1.5}
		p.Add(l)
		if err := addSpans(p, pts, col, false); err != nil {
			return nil, err
		}
		end := pts[len(pts)-1]
		ends.ys = append(ends.ys, end.y)
		ends.texts = append(ends.texts, fmt.Sprintf("%s %s", m, kiloLabel(end.y)))
		ends.colors = append(ends.colors, col)
	}
	p.Add(ends)
	var ticks plot.ConstantTicks
	for k, i := range order {
		ticks = append(ticks, plot.Tick{Value: float64(k), Label: strconv.Itoa(s.ns[i])})
	}
	p.X.Tick.Marker = ticks
	p.X.Min, p.X.Max = -0.25, last+1.1
	p.Y.Min, p.Y.Max = 0, hi*1.08
	if hi == 0 {
		p.Y.Max = 1
	}
	p.Y.Tick.Marker = kiloTicks{}
	return p, nil
}

// timeUnits are the units the control-plane times may come in, in
// seconds.
var timeUnits = map[string]float64{"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

// formatTime prints v (in unit) with about three significant digits in
// the unit that suits it; a unit that is not a time is kept.
func formatTime(v float64, unit string, digits int) string {
	f, ok := timeUnits[unit]
	if !ok {
		return strconv.FormatFloat(v, 'g', digits, 64) + " " + unit
	}
	s := v * f
	for _, u := range []struct {
		name string
		f    float64
	}{{"s", 1}, {"ms", 1e-3}, {"µs", 1e-6}} {
		if math.Abs(s) >= u.f*0.9995 {
			return strconv.FormatFloat(s/u.f, 'g', digits, 64) + " " + u.name
		}
	}
	return strconv.FormatFloat(s/1e-9, 'g', digits, 64) + " ns"
}

// logTicks mark the powers of ten, labelled with units.
type logTicks struct{ unit string }

func (t logTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Ceil(math.Log10(lo) - 1e-9); e <= math.Log10(hi)+1e-9; e++ {
		v := math.Pow(10, e)
		out = append(out, plot.Tick{Value: v, Label: formatTime(v, t.unit, 3)})
	}
	return out
}

func (d *chartData) controlPlot() (*plot.Plot, error) {
	unit := d.control[0].Unit
	p := newPlot("Control plane: time of one operation (log scale)")
	p.X.Label.Text = "time; whiskers: fastest to slowest run"
	n := len(d.control)
	lo, hi := math.Inf(1), math.Inf(-1)
	byMode := make([]spans, len(d.ctlMode))
	for i, s := range d.control {
		for j, m := range d.ctlMode {
			st, ok := s.Stats[m]
			if !ok || st.N == 0 || st.Min <= 0 {
				continue
			}
			byMode[j] = append(byMode[j], span{x: st.Median, y: rowY(i, n, j, len(d.ctlMode)),
				lo: st.Min, hi: st.Max, label: fmt.Sprintf("%s %s", m, formatTime(st.Median, s.Unit, 3))})
			lo, hi = math.Min(lo, st.Min), math.Max(hi, st.Max)
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 1, 10
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	// A decade of room on the right for the labels.
	hi = math.Pow(10, math.Ceil(math.Log10(hi*8)))
	if hi <= lo {
		hi = lo * 10
	}
	if err := addRowLines(p, n, lo, hi); err != nil {
		return nil, err
	}
	grid := plotter.NewGrid()
	grid.Horizontal.Width = 0
	grid.Vertical.Color = gridColor
	p.Add(grid)
	var labels rowLabels
	for j, m := range d.ctlMode {
		col := d.colors[m]
		if err := addSpans(p, byMode[j], col, true); err != nil {
			return nil, err
		}
		for _, s := range byMode[j] {
			labels.spans = append(labels.spans, s)
			labels.colors = append(labels.colors, col)
		}
	}
	p.Add(labels)
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = logTicks{unit: unit}
	p.X.Min, p.X.Max = lo, hi
	p.Y.Min, p.Y.Max = -0.5, float64(n)-0.5
	names := make([]string, n)
	for i, s := range d.control {
		names[i] = s.Name
	}
	p.Y.Tick.Marker = rowTicks(names)
	p.Y.Tick.Length = 0
	return p, nil
}

// svgFonts names fallbacks for the chart's typeface, which has the
// metrics of Arial: a viewer without Liberation Sans lays the text out
// the same.
var svgFonts = strings.NewReplacer("font-family:Liberation Sans;", "font-family:'Liberation Sans',Arial,Helvetica,sans-serif;")

// WriteSVG draws the chart as SVG.
func (r *Report) WriteSVG(w io.Writer) error {
	d := r.chartData()
	cw, ch := d.size()
	c := vgsvg.New(cw, ch)
	if err := d.draw(draw.New(c)); err != nil {
		return fmt.Errorf("drawing the chart: %w", err)
	}
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	if _, err := svgFonts.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	return nil
}

// WritePNG draws the chart as PNG at ChartDPI.
func (r *Report) WritePNG(w io.Writer) error {
	d := r.chartData()
	cw, ch := d.size()
	c := vgimg.NewWith(vgimg.UseWH(cw, ch), vgimg.UseDPI(ChartDPI))
	if err := d.draw(draw.New(c)); err != nil {
		return fmt.Errorf("drawing the chart: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(w); err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	return nil
}

// ChartSize is the size in points of the chart of r.
func (r *Report) ChartSize() (w, h vg.Length) { return r.chartData().size() }
