package bench

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything a benchmark produced: what --json writes.
type Report struct {
	Command  string    `json:"command"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Kernel   string    `json:"kernel"`
	CPU      string    `json:"cpu"`
	CPUs     int       `json:"cpus"`
	Settings Settings  `json:"settings"`
	// Notes say how to read figures that need it.
	Notes     []string          `json:"notes"`
	Scenarios []Scenario        `json:"scenarios"`
	Runs      []RunResult       `json:"runs"`
	Summary   []ScenarioSummary `json:"summary"`
}

// Settings are the knobs a report was made with.
type Settings struct {
	Runs          int     `json:"runs"`
	Quick         bool    `json:"quick"`
	DurationSec   float64 `json:"duration_s"`
	ScaleDuration float64 `json:"scale_duration_s"`
	BulkSeconds   int     `json:"bulk_s"`
	ClientCPU     int     `json:"client_cpu"`
	ServerCPU     int     `json:"server_cpu"`
	UDPSize       int     `json:"udp_payload_bytes"`
	// IdlePolling says idle CPUs polled during the run (a zero
	// /dev/cpu_dma_latency request) instead of entering idle states.
	IdlePolling bool `json:"idle_polling"`
	// Congestion is the TCP congestion control of the lab's endpoints.
	Congestion string `json:"congestion_control"`
	// FloodSYNs is the size of the SYN flood measurement, 0 without one.
	FloodSYNs int `json:"flood_syns,omitempty"`
}

// Notes on how the figures were taken, printed under the table and kept in
// the JSON.
var reportNotes = []string{
	"each figure: median of the runs [min-max]; modes interleaved run by run, each mode in a fresh namespace lab",
	"ratios are of medians, ebpf over the other mode; for rows marked (lower) a ratio below 1 favours ebpf",
	"CPU per Gbit counts busy jiffies of the whole machine (/proc/stat) during the 1-stream bulk run, divided by gigabits received",
	"iptables memory: rules and bytes of iptables-save text per port, not kernel memory; eBPF: memlock of the published map as the kernel reports it",
	"neither datapath runs a process per published port (no docker-proxy)",
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encoding the report: %w", err)
	}
	return nil
}

// formatValue prints a figure with about three significant digits.
func formatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	case a >= 1:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.4f", v)
	}
}

func formatStat(s Stat) string {
	if s.N == 0 {
		return "-"
	}
	if s.N == 1 {
		return formatValue(s.Median)
	}
	return fmt.Sprintf("%s [%s-%s]", formatValue(s.Median), formatValue(s.Min), formatValue(s.Max))
}

// WriteTable prints the summary: one row per scenario, the median [min-max]
// of each mode and the ratios.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := []string{"SCENARIO", "UNIT"}
	for _, m := range Modes {
		head = append(head, strings.ToUpper(string(m)))
	}
	for _, p := range RatioPairs {
		head = append(head, RatioName(p))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, s := range r.Summary {
		name := s.Name
		if s.LowerIsBetter {
			name += " (lower)"
		}
		row := []string{name, s.Unit}
		for _, m := range Modes {
			if !s.AppliesTo(m) {
				row = append(row, "n/a")
				continue
			}
			row = append(row, formatStat(s.Stats[m]))
		}
		for _, p := range RatioPairs {
			if v, ok := s.Ratios[RatioName(p)]; ok {
				row = append(row, fmt.Sprintf("%.2fx", v))
			} else {
				row = append(row, "-")
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing the table: %w", err)
	}
	fmt.Fprintln(w)
	for _, n := range r.Notes {
		fmt.Fprintln(w, "- "+n)
	}
	return nil
}

// SVG layout.
const (
	svgLeft, svgRight, svgTop = 70.0, 20.0, 60.0
	svgPlotH, svgLabelH       = 300.0, 170.0
	svgBarW, svgGap           = 12.0, 14.0
)

var svgColors = []string{"#d95f02", "#1b9e77", "#7570b3", "#e7298a"}

// WriteSVG draws the ratios as a bar chart: one group of bars per scenario
// (ebpf/iptables, ebpf/routing, ebpf/ebpf-redirect, ebpf/nftables), a log scale centred
// on 1x, and a line at 1x.
func (r *Report) WriteSVG(w io.Writer) error {
	var groups []ScenarioSummary
	for _, s := range r.Summary {
		if len(s.Ratios) > 0 {
			groups = append(groups, s)
		}
	}
	groupW := float64(len(RatioPairs))*svgBarW + svgGap
	width := svgLeft + svgRight + float64(len(groups))*groupW
	height := svgTop + svgPlotH + svgLabelH
	// The scale: log2 of the ratio, symmetric, at least 0.5x-2x.
	maxLog := 1.0
	for _, g := range groups {
		for _, v := range g.Ratios {
			if v > 0 {
				maxLog = math.Max(maxLog, math.Abs(math.Log2(v)))
			}
		}
	}
	maxLog = math.Ceil(maxLog)
	mid := svgTop + svgPlotH/2
	y := func(v float64) float64 { return mid - math.Log2(v)/maxLog*(svgPlotH/2) }

	var b strings.Builder
	esc := func(s string) string {
		var e strings.Builder
		xml.EscapeText(&e, []byte(s))
		return e.String()
	}
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" font-size="14" font-weight="bold">bpfnet bench: ebpf relative to the other modes (ratio of medians, log scale)</text>`+"\n", svgLeft)
	for i, p := range RatioPairs {
		x := svgLeft + float64(i)*150
		fmt.Fprintf(&b, `<rect x="%.0f" y="32" width="10" height="10" fill="%s"/><text x="%.0f" y="41">%s</text>`+"\n", x, svgColors[i], x+14, esc(RatioName(p)))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="54" fill="#555">rows marked ↓: lower is better, so a bar below 1x favours ebpf</text>`+"\n", svgLeft)
	// Grid: powers of two.
	for e := -maxLog; e <= maxLog; e++ {
		v := math.Pow(2, e)
		stroke, sw := "#ddd", 1.0
		if e == 0 {
			stroke, sw = "#000", 1.5
		}
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`+"\n", svgLeft, width-svgRight, y(v), y(v), stroke, sw)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%sx</text>`+"\n", svgLeft-6, y(v)+4, formatValue(v))
	}
	for gi, g := range groups {
		gx := svgLeft + float64(gi)*groupW + svgGap/2
		fmt.Fprintf(&b, `<g class="scenario" id="%s">`+"\n", esc(g.Key))
		label := g.Name
		if g.LowerIsBetter {
			label = "↓ " + label
		}
		fmt.Fprintf(&b, `<title>%s</title>`+"\n", esc(label))
		for i, p := range RatioPairs {
			v, ok := g.Ratios[RatioName(p)]
			if !ok || v <= 0 {
				continue
			}
			x := gx + float64(i)*svgBarW
			top, bot := math.Min(y(v), mid), math.Max(y(v), mid)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.2fx</title></rect>`+"\n",
				x, top, svgBarW-1, math.Max(bot-top, 0.5), svgColors[i], esc(g.Name), esc(RatioName(p)), v)
		}
		lx := gx + float64(len(RatioPairs))*svgBarW/2
		ly := svgTop + svgPlotH + 8
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" transform="rotate(60 %.1f %.1f)">%s</text>`+"\n", lx, ly, lx, ly, esc(label))
		fmt.Fprintf(&b, "</g>\n")
	}
	fmt.Fprintf(&b, "</svg>\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	return nil
}
