// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bpfnet/bpfnet/hostfw"
)

func TestHostFirewallCollector(t *testing.T) {
	report := hostfw.Report{Chains: []hostfw.Chain{
		{Source: hostfw.SourceIptablesNft, Table: "filter", Chain: "DOCKER-USER", Rules: 2},
		{Source: hostfw.SourceNftables, Table: "inet fw", Chain: "fwd", Policy: "drop"},
	}}
	names := []string{"bpfnet_host_firewall_rules", "bpfnet_host_firewall_bypassed"}
	const rules = `
# HELP bpfnet_host_firewall_rules Rules found in a host firewall chain that forwarded packets pass: iptables' DOCKER-USER (without Docker's bare RETURN) and ufw's forward chains, nftables base chains at the forward hook (a chain that only drops by policy has 0).
# TYPE bpfnet_host_firewall_rules gauge
bpfnet_host_firewall_rules{chain="DOCKER-USER",source="iptables-nft",table="filter"} 2
bpfnet_host_firewall_rules{chain="fwd",source="nftables",table="inet fw"} 0
`
	const bypassed = `
# HELP bpfnet_host_firewall_bypassed 1 when host firewall rules were found and the fast path takes translated packets around them (run with --fast-path=false to have them pass FORWARD).
# TYPE bpfnet_host_firewall_bypassed gauge
bpfnet_host_firewall_bypassed %d
`
	for _, tc := range []struct {
		name   string
		status hostfw.Status
		want   string
	}{
		{"fast_path", hostfw.NewStatus(report, time.Now(), true), rules + strings.Replace(bypassed, "%d", "1", 1)},
		{"slow_path", hostfw.NewStatus(report, time.Now(), false), rules + strings.Replace(bypassed, "%d", "0", 1)},
		{"nothing_found", hostfw.NewStatus(hostfw.Report{}, time.Now(), true), strings.Replace(bypassed, "%d", "0", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewHostFirewallCollector(func() (hostfw.Status, bool) { return tc.status, true })
			if err := testutil.CollectAndCompare(c, strings.NewReader(tc.want), names...); err != nil {
				t.Error(err)
			}
		})
	}
	// Before the first check there is nothing to say.
	c := NewHostFirewallCollector(func() (hostfw.Status, bool) { return hostfw.Status{}, false })
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("%d series before the first check, want none", n)
	}
}
