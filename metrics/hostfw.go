// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bpfnet/bpfnet/hostfw"
)

// HostFirewallCollector reports the daemon's last check of the host
// firewall (package hostfw): the rules in chains that forwarded packets
// pass, and whether the fast path takes translated packets around them.
// The check runs on the daemon's timer, not at scrape time: it runs
// external tools, too slow and too noisy for every scrape.
type HostFirewallCollector struct {
	last            func() (hostfw.Status, bool)
	rules, bypassed *prometheus.Desc
}

var _ prometheus.Collector = (*HostFirewallCollector)(nil)

// NewHostFirewallCollector reports what last returns; until it returns
// true (no check yet) there are no series.
func NewHostFirewallCollector(last func() (hostfw.Status, bool)) *HostFirewallCollector {
	name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
	return &HostFirewallCollector{
		last: last,
		rules: prometheus.NewDesc(name("host_firewall_rules"),
			"Rules found in a host firewall chain that forwarded packets pass: iptables' DOCKER-USER (without Docker's bare RETURN) and ufw's forward chains, nftables base chains at the forward hook (a chain that only drops by policy has 0).",
			[]string{"source", "table", "chain"}, nil),
		bypassed: prometheus.NewDesc(name("host_firewall_bypassed"),
			"1 when host firewall rules were found and the fast path takes translated packets around them (run with --fast-path=false to have them pass FORWARD).",
			nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *HostFirewallCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rules
	ch <- c.bypassed
}

// Collect implements prometheus.Collector.
func (c *HostFirewallCollector) Collect(ch chan<- prometheus.Metric) {
	s, ok := c.last()
	if !ok {
		return
	}
	for _, chain := range s.Chains {
		ch <- prometheus.MustNewConstMetric(c.rules, prometheus.GaugeValue, float64(chain.Rules), chain.Source, chain.Table, chain.Chain)
	}
	b := 0.0
	if s.Bypassed {
		b = 1
	}
	ch <- prometheus.MustNewConstMetric(c.bypassed, prometheus.GaugeValue, b)
}
