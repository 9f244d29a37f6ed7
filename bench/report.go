// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"encoding/json"
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
