// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"slices"
	"strconv"
)

// Mode is one way of getting packets between the outside and a
// container.
type Mode string

const (
	// ModeRouting installs no datapath: the external host routes to the
	// container subnet through the host and talks to the container's
	// address. The ceiling.
	ModeRouting Mode = "routing"
	// ModeIptables is Docker's NAT in iptables rules, kernel only (no
	// userland proxy).
	ModeIptables Mode = "iptables"
	// ModeEBPF is bpfnet's eBPF datapath with the fast path, reached
	// through the published port on the host's address.
	ModeEBPF Mode = "ebpf"
	// ModeRedirect is the eBPF datapath with NAT and tracking off: only
	// the fast-path redirects; the external host addresses the container
	// as with routing. The ceiling of the eBPF design.
	ModeRedirect Mode = "ebpf-redirect"
	// ModeNftables is Docker 29's NAT with --firewall-backend=nftables:
	// the same rule plan as ModeIptables, as one nftables table.
	ModeNftables Mode = "nftables"
)

// Modes lists every mode in the order each run measures them.
var Modes = []Mode{ModeRouting, ModeIptables, ModeEBPF, ModeRedirect, ModeNftables}

// natModes are the modes with a datapath to program: the control-plane
// figures apply to them.
var natModes = []Mode{ModeIptables, ModeEBPF, ModeRedirect, ModeNftables}

// ruleModes are the modes made of firewall rules: the rules-per-port
// figures apply to them.
var ruleModes = []Mode{ModeIptables, ModeNftables}

// Scenario is one figure the benchmark reports.
type Scenario struct {
	Key  string `json:"key"`
	Name string `json:"name"`
	Unit string `json:"unit"`
	// LowerIsBetter is set for times, latencies and costs.
	LowerIsBetter bool `json:"lower_is_better,omitempty"`
	// Modes are the modes the figure applies to; empty means all.
	Modes []Mode `json:"modes,omitempty"`
}

// AppliesTo reports whether the scenario is measured in mode m.
func (s Scenario) AppliesTo(m Mode) bool {
	return len(s.Modes) == 0 || slices.Contains(s.Modes, m)
}

// Scenario keys.
const (
	KeyBulk1       = "tcp_bulk_1"
	KeyBulk4       = "tcp_bulk_4"
	KeyCPUPerGbit  = "cpu_s_per_gbit"
	KeyUDP         = "udp_64_pps"
	KeyRR          = "tcp_rr"
	KeyRRp50       = "tcp_rr_p50"
	KeyRRp99       = "tcp_rr_p99"
	KeyCRR         = "tcp_crr"
	KeyRR6         = "tcp_rr_ipv6"
	KeyCRR6        = "tcp_crr_ipv6"
	KeyEgressBulk  = "egress_bulk"
	KeyEgressCRR   = "egress_crr"
	KeyInstall     = "cp_install_10k"
	KeyRemoveAll   = "cp_remove_10k"
	KeyPublishOne  = "cp_publish_1"
	KeyRemoveOne   = "cp_remove_1"
	KeyRange       = "cp_range_10k"
	KeyMapBytes    = "mem_map_bytes_per_port"
	KeyMapMarginal = "mem_map_marginal_bytes_per_port"
	KeyRulesPort   = "mem_rules_per_port"
	KeyRuleBytes   = "mem_rule_text_bytes_per_port"
)

// ScalePorts are the numbers of other published ports the scaling
// figures are measured with.
var ScalePorts = []int{0, 100, 1000, 10000}

// ControlPorts is how many mappings the control-plane figures install.
const ControlPorts = 10000

// KeyScaleRR and KeyScaleCRR name the scaling figures with n other ports.
func KeyScaleRR(n int) string  { return "tcp_rr_ports_" + itoa(n) }
func KeyScaleCRR(n int) string { return "tcp_crr_ports_" + itoa(n) }

func itoa(n int) string { return strconv.Itoa(n) }

// Scenarios lists every figure, in the order of the table.
func Scenarios() []Scenario {
	s := []Scenario{
		{Key: KeyBulk1, Name: "TCP bulk, 1 stream", Unit: "Gbit/s"},
		{Key: KeyBulk4, Name: "TCP bulk, 4 streams", Unit: "Gbit/s"},
		{Key: KeyCPUPerGbit, Name: "CPU per Gbit, 1 stream (whole machine)", Unit: "s/Gbit", LowerIsBetter: true},
		{Key: KeyUDP, Name: "UDP 64 B delivered", Unit: "kpps"},
		{Key: KeyRR, Name: "TCP_RR", Unit: "trans/s"},
		{Key: KeyRRp50, Name: "TCP_RR p50 latency", Unit: "us", LowerIsBetter: true},
		{Key: KeyRRp99, Name: "TCP_RR p99 latency", Unit: "us", LowerIsBetter: true},
		{Key: KeyCRR, Name: "TCP_CRR", Unit: "conn/s"},
		{Key: KeyRR6, Name: "TCP_RR, IPv6", Unit: "trans/s"},
		{Key: KeyCRR6, Name: "TCP_CRR, IPv6", Unit: "conn/s"},
		{Key: KeyEgressBulk, Name: "egress (masquerade) bulk", Unit: "Gbit/s"},
		{Key: KeyEgressCRR, Name: "egress (masquerade) TCP_CRR", Unit: "conn/s"},
	}
	for _, n := range ScalePorts {
		s = append(s, Scenario{Key: KeyScaleRR(n), Name: "TCP_RR, " + itoa(n) + " other ports", Unit: "trans/s"})
	}
	for _, n := range ScalePorts {
		s = append(s, Scenario{Key: KeyScaleCRR(n), Name: "TCP_CRR, " + itoa(n) + " other ports", Unit: "conn/s"})
	}
	ebpfModes := []Mode{ModeEBPF, ModeRedirect}
	s = append(s,
		Scenario{Key: KeyInstall, Name: "install 10,000 mappings (1 Apply)", Unit: "ms", LowerIsBetter: true, Modes: natModes},
		Scenario{Key: KeyRemoveAll, Name: "remove 10,000 mappings (1 Apply)", Unit: "ms", LowerIsBetter: true, Modes: natModes},
		Scenario{Key: KeyPublishOne, Name: "publish 1 port, 10,000 published", Unit: "ms", LowerIsBetter: true, Modes: natModes},
		Scenario{Key: KeyRemoveOne, Name: "remove 1 port, 10,000 published", Unit: "ms", LowerIsBetter: true, Modes: natModes},
		Scenario{Key: KeyRange, Name: "publish a 10,000-port range (1 Apply)", Unit: "ms", LowerIsBetter: true, Modes: natModes},
		Scenario{Key: KeyMapBytes, Name: "published map memlock / entries at 10,000", Unit: "B/port", LowerIsBetter: true, Modes: ebpfModes},
		Scenario{Key: KeyMapMarginal, Name: "published map memlock, marginal", Unit: "B/port", LowerIsBetter: true, Modes: ebpfModes},
		Scenario{Key: KeyRulesPort, Name: "rules per port (iptables, nftables)", Unit: "rules/port", LowerIsBetter: true, Modes: ruleModes},
		Scenario{Key: KeyRuleBytes, Name: "iptables-save / nft list text per port", Unit: "B/port", LowerIsBetter: true, Modes: ruleModes},
	)
	return s
}

// Stat is the median, minimum and maximum of one figure over the runs.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Summarize gives the median, minimum and maximum of vs; the median of an
// even count is the mean of the middle two. It returns N == 0 for no
// values.
func Summarize(vs []float64) Stat {
	if len(vs) == 0 {
		return Stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[n-1], N: n}
}

// Ratio is a/b of two medians; ok is false when either is missing or b
// is zero.
func Ratio(a, b Stat) (r float64, ok bool) {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return 0, false
	}
	return a.Median / b.Median, true
}

// RatioPairs are the ratios the table and chart show: ebpf over each
// other mode.
var RatioPairs = [][2]Mode{{ModeEBPF, ModeIptables}, {ModeEBPF, ModeRouting}, {ModeEBPF, ModeRedirect}, {ModeEBPF, ModeNftables}}

// RatioName is how a ratio is keyed in the JSON and labelled.
func RatioName(p [2]Mode) string { return string(p[0]) + "/" + string(p[1]) }

// RunResult is one mode's figures in one run.
type RunResult struct {
	Run     int                `json:"run"`
	Mode    Mode               `json:"mode"`
	Figures map[string]float64 `json:"figures"`
	// Errors are the measurements that failed, by scenario key.
	Errors map[string]string `json:"errors,omitempty"`
	// Notes carry raw details (e.g. CRR failures) that are not figures.
	Notes map[string]string `json:"notes,omitempty"`
}

// ScenarioSummary is one scenario's statistics per mode and its ratios.
type ScenarioSummary struct {
	Scenario
	Stats  map[Mode]Stat      `json:"stats"`
	Ratios map[string]float64 `json:"ratios,omitempty"`
}

// Summary computes every scenario's statistics over the runs, and the
// ratios of medians.
func Summary(scen []Scenario, runs []RunResult) []ScenarioSummary {
	out := make([]ScenarioSummary, 0, len(scen))
	for _, sc := range scen {
		ss := ScenarioSummary{Scenario: sc, Stats: map[Mode]Stat{}, Ratios: map[string]float64{}}
		for _, m := range Modes {
			if !sc.AppliesTo(m) {
				continue
			}
			var vs []float64
			for _, r := range runs {
				if v, ok := r.Figures[sc.Key]; ok && r.Mode == m {
					vs = append(vs, v)
				}
			}
			if len(vs) > 0 {
				ss.Stats[m] = Summarize(vs)
			}
		}
		for _, p := range RatioPairs {
			if r, ok := Ratio(ss.Stats[p[0]], ss.Stats[p[1]]); ok {
				ss.Ratios[RatioName(p)] = r
			}
		}
		out = append(out, ss)
	}
	return out
}
