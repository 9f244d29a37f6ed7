// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"flag"
	"image/png"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	xfont "golang.org/x/image/font"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
)

var updateChart = flag.Bool("update", false, "rewrite docs/benchmarks.svg from docs/bench.json")

// docReport is the report of the last full run, kept in docs.
func docReport(t *testing.T) *Report {
	t.Helper()
	data, err := os.ReadFile("../docs/bench.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("docs/bench.json: %v", err)
	}
	return &r
}

// withMode is r with one more mode, extra, whose figures are those of
// like times f, and its ratio pair ebpf/extra: a report from a build
// with a mode this package may not list.
func withMode(r *Report, extra, like Mode, f float64) *Report {
	out := *r
	out.Runs = nil
	for _, run := range r.Runs {
		out.Runs = append(out.Runs, run)
		if run.Mode != like {
			continue
		}
		c := run
		c.Mode = extra
		c.Figures = map[string]float64{}
		for k, v := range run.Figures {
			c.Figures[k] = v * f
		}
		out.Runs = append(out.Runs, c)
	}
	out.Summary = nil
	for _, s := range r.Summary {
		c := s
		c.Stats = map[Mode]Stat{}
		for m, st := range s.Stats {
			c.Stats[m] = st
		}
		c.Ratios = map[string]float64{}
		for k, v := range s.Ratios {
			c.Ratios[k] = v
		}
		if st, ok := s.Stats[like]; ok {
			st.Median, st.Min, st.Max = st.Median*f, st.Min*f, st.Max*f
			c.Stats[extra] = st
			if ratio, ok := Ratio(s.Stats[ModeEBPF], st); ok {
				c.Ratios[string(ModeEBPF)+"/"+string(extra)] = ratio
			}
		}
		out.Summary = append(out.Summary, c)
	}
	return &out
}

// svgText is one text element of a chart: its box in points, y up.
type svgText struct {
	s                      string
	x0, x1, y0, y1         float64
	size                   float64
	bold                   bool
	transformed, unhandled bool
}

// chartTexts parses an SVG chart, failing on malformed XML, and returns
// its texts with their boxes computed from the chart's font metrics.
func chartTexts(t *testing.T, svg []byte) []svgText {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(svg))
	var (
		out   []svgText
		root  string
		cur   *svgText
		depth int
	)
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = el.Name.Local
			}
			if el.Name.Local == "g" {
				depth++
				for _, a := range el.Attr {
					// Only the canvas's own flip is expected: a rotated
					// or moved group would make the boxes below wrong.
					if a.Name.Local == "transform" && depth > 1 {
						t.Errorf("nested transform %q", a.Value)
					}
				}
			}
			if el.Name.Local != "text" {
				continue
			}
			cur = &svgText{}
			for _, a := range el.Attr {
				switch a.Name.Local {
				case "x":
					cur.x0, _ = strconv.ParseFloat(a.Value, 64)
				case "y":
					y, _ := strconv.ParseFloat(a.Value, 64)
					cur.y0 = -y
				case "transform":
					cur.transformed = a.Value != "scale(1, -1)"
				case "style":
					for _, kv := range strings.Split(a.Value, ";") {
						k, v, _ := strings.Cut(kv, ":")
						switch k {
						case "font-size":
							cur.size, _ = strconv.ParseFloat(strings.TrimSuffix(v, "px"), 64)
						case "font-weight":
							cur.bold = v == "bold"
						}
					}
				}
			}
		case xml.EndElement:
			if el.Name.Local == "g" {
				depth--
			}
			if el.Name.Local == "text" && cur != nil {
				out = append(out, *cur)
				cur = nil
			}
		case xml.CharData:
			if cur != nil {
				cur.s += string(el)
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	for i := range out {
		tx := &out[i]
		if tx.transformed {
			t.Errorf("text %q is rotated or moved: its box cannot be checked", tx.s)
		}
		sty := textStyle(vg.Length(tx.size), nil)
		if tx.bold {
			sty.Font.Weight = xfont.WeightBold
		}
		ext := sty.FontExtents()
		base := tx.y0
		tx.x1 = tx.x0 + float64(sty.Width(tx.s))
		tx.y0, tx.y1 = base-float64(ext.Descent), base+float64(ext.Ascent)
	}
	return out
}

func hasText(texts []svgText, s string) bool {
	for _, tx := range texts {
		if tx.s == s {
			return true
		}
	}
	return false
}

// overlaps are the pairs of texts whose boxes overlap, by a hair of
// slack for rounding.
func overlaps(texts []svgText) (out [][2]string) {
	const slack = 0.5
	for i := range texts {
		for j := i + 1; j < len(texts); j++ {
			a, c := texts[i], texts[j]
			if a.x0+slack < c.x1 && c.x0+slack < a.x1 && a.y0+slack < c.y1 && c.y0+slack < a.y1 {
				out = append(out, [2]string{a.s, c.s})
			}
		}
	}
	return out
}

// The overlap check finds texts drawn over each other, and passes texts
// side by side or one above the other.
func TestChartTextsOverlap(t *testing.T) {
	doc := func(texts ...string) []byte {
		return []byte(`<svg xmlns="http://www.w3.org/2000/svg"><g transform="scale(1, -1)">` +
			strings.Join(texts, "") + `</g></svg>`)
	}
	text := func(x, y float64, s string) string {
		return `<text x="` + strconv.FormatFloat(x, 'f', -1, 64) + `" y="` + strconv.FormatFloat(-y, 'f', -1, 64) +
			`" transform="scale(1, -1)" style="font-size:10px">` + s + `</text>`
	}
	over := chartTexts(t, doc(text(10, 100, "TCP_RR p99 latency"), text(40, 104, "ebpf 1.2x")))
	if got := overlaps(over); len(got) != 1 {
		t.Errorf("texts drawn over each other: overlaps %v, want one", got)
	}
	beside := chartTexts(t, doc(text(10, 100, "TCP_RR"), text(80, 100, "ebpf 1.2x"), text(10, 113, "TCP_CRR")))
	if got := overlaps(beside); len(got) != 0 {
		t.Errorf("texts side by side and one above the other: overlaps %v, want none", got)
	}
}

// checkChart asserts what every chart of r must hold.
func checkChart(t *testing.T, r *Report) {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	texts := chartTexts(t, b.Bytes())
	d := r.chartData()
	if len(d.modes) == 0 || len(d.ratios) == 0 || len(d.scale) == 0 || len(d.control) == 0 {
		t.Fatalf("chart data: %d modes, %d ratio rows, %d scaling series, %d control rows",
			len(d.modes), len(d.ratios), len(d.scale), len(d.control))
	}
	// Every mode of the run is in the legend, and every ratio pair
	// labels its points.
	for _, m := range r.reportModes() {
		if !hasText(texts, string(m)) {
			t.Errorf("no legend entry for mode %s", m)
		}
	}
	for _, p := range d.pairs {
		found := false
		for _, tx := range texts {
			found = found || strings.HasPrefix(tx.s, p.name+" ")
		}
		if !found {
			t.Errorf("no point labelled with ratio %s", p.name)
		}
	}
	// Every panel has its title.
	titles := []string{"Data plane: ratio of medians (linear; at 1x the two modes are equal)",
		"Control plane: time of one operation (log scale)"}
	for _, s := range d.scale {
		titles = append(titles, s.name+" ("+s.unit+") by other published ports")
	}
	for _, title := range titles {
		if !hasText(texts, title) {
			t.Errorf("no panel titled %q", title)
		}
	}
	// Every row has its full name.
	for _, s := range d.ratios {
		if !hasText(texts, rowName(s)) {
			t.Errorf("no row named %q", rowName(s))
		}
	}
	for _, s := range d.control {
		if !hasText(texts, s.Name) {
			t.Errorf("no row named %q", s.Name)
		}
	}
	// Nothing is cut: every text is inside the chart.
	w, h := r.ChartSize()
	for _, tx := range texts {
		if tx.x0 < 0 || tx.y0 < 0 || tx.x1 > float64(w) || tx.y1 > float64(h) {
			t.Errorf("text %q at [%.1f,%.1f]-[%.1f,%.1f] is outside the %.0fx%.0f chart",
				tx.s, tx.x0, tx.y0, tx.x1, tx.y1, float64(w), float64(h))
		}
	}
	// No two texts overlap.
	for _, o := range overlaps(texts) {
		t.Errorf("texts %q and %q overlap", o[0], o[1])
	}
	// Few tick labels on each value axis.
	plots := map[string]*plot.Plot{}
	var err error
	if plots["ratios"], err = d.ratioPlot(); err != nil {
		t.Fatal(err)
	}
	if plots["control"], err = d.controlPlot(); err != nil {
		t.Fatal(err)
	}
	for _, s := range d.scale {
		if plots[s.name], err = d.scalePlot(s); err != nil {
			t.Fatal(err)
		}
	}
	for name, p := range plots {
		for axis, a := range map[string]*plot.Axis{"x": &p.X, "y": &p.Y} {
			n := 0
			for _, tk := range a.Tick.Marker.Ticks(a.Min, a.Max) {
				if tk.Label != "" {
					n++
				}
			}
			if n < 2 || n > 12 {
				t.Errorf("%s panel: %d labelled ticks on the %s axis, want 2-12", name, n, axis)
			}
		}
	}
}

func TestChartDocReport(t *testing.T) {
	r := docReport(t)
	if got := len(r.reportModes()); got != 4 {
		t.Fatalf("docs/bench.json has %d modes, want 4", got)
	}
	checkChart(t, r)
}

func TestChartExtraMode(t *testing.T) {
	r := withMode(docReport(t), "nftables", ModeIptables, 1.1)
	modes := r.reportModes()
	if len(modes) != 5 || modes[4] != "nftables" {
		t.Fatalf("modes %v, want the four of docs/bench.json and nftables", modes)
	}
	d := r.chartData()
	if len(d.ctlMode) != 4 {
		t.Errorf("control-plane modes %v, want iptables, ebpf, ebpf-redirect, nftables", d.ctlMode)
	}
	if got := d.pairs[len(d.pairs)-1].name; got != "ebpf/nftables" {
		t.Errorf("last ratio pair %s, want ebpf/nftables", got)
	}
	checkChart(t, r)
	// The extra mode takes more room, not less.
	_, h4 := docReport(t).ChartSize()
	if _, h5 := r.ChartSize(); h5 <= h4 {
		t.Errorf("chart of 5 modes %.0f pt high, of 4 modes %.0f pt", float64(h5), float64(h4))
	}
}

func TestChartPNG(t *testing.T) {
	r := docReport(t)
	var b bytes.Buffer
	if err := r.WritePNG(&b); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatalf("PNG does not decode: %v", err)
	}
	w, h := r.ChartSize()
	wantW := int(math.Round(float64(w) / 72 * ChartDPI))
	wantH := int(math.Round(float64(h) / 72 * ChartDPI))
	if got := img.Bounds().Size(); got.X != wantW || got.Y != wantH {
		t.Errorf("PNG is %dx%d, want %dx%d", got.X, got.Y, wantW, wantH)
	}
}

// TestChartDocsUpToDate checks docs/benchmarks.svg is the chart of
// docs/bench.json; go test -run TestChartDocsUpToDate -update rewrites it.
func TestChartDocsUpToDate(t *testing.T) {
	var b bytes.Buffer
	if err := docReport(t).WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	const path = "../docs/benchmarks.svg"
	if *updateChart {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, b.Bytes()) {
		t.Errorf("%s is not the chart of docs/bench.json: run go test ./bench -run TestChartDocsUpToDate -update", path)
	}
}
