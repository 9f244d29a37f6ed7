// SPDX-License-Identifier: Apache-2.0

package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
)

// TestRenderIPv6DirectAccessAndGatewayModes: the ip6 docker-bridges table
// of Docker 29: the raw prerouting chain accepts net0's trusted host
// interface before its drop of direct access to the IPv6 container (and
// holds nothing with --allow-direct-routing); a routed IPv6 network's
// container port is accepted into its bridge with no DNAT and no raw
// drop; an isolated IPv6 network is cut off from the host, which the ip
// table of the same state (internal only in IPv4) does not do.
func TestRenderIPv6DirectAccessAndGatewayModes(t *testing.T) {
	s := dualState(t, "8080:172.30.0.2:80", "[::]:8080:[fd00:30::2]:80", "[::]:8081:[fd00:31::2]:81")
	s.Networks[0].TrustedHostInterfaces = "eth1"
	s.Networks = append(s.Networks,
		datapath.Network{Name: "net1", Bridge: "br1", Masquerade: true,
			Subnet: netip.MustParsePrefix("172.30.1.0/24"), Gateway: netip.MustParseAddr("172.30.1.1"),
			Subnet6: netip.MustParsePrefix("fd00:31::/64"), Gateway6: netip.MustParseAddr("fd00:31::1"),
			GatewayModeIPv6: datapath.GatewayRouted},
		datapath.Network{Name: "iso", Bridge: "brI", Internal: true,
			Subnet: netip.MustParsePrefix("172.30.2.0/24"), Gateway: netip.MustParseAddr("172.30.2.1"),
			Subnet6: netip.MustParsePrefix("fd00:32::/64"), Gateway6: netip.MustParseAddr("fd00:32::1"),
			GatewayModeIPv6: datapath.GatewayIsolated})
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	chains := func(s datapath.State, fam rules.Family) map[string][]string {
		t.Helper()
		p, err := rules.NewFamily(s, fam)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := render(p)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]string{}
		for _, c := range rs.chains {
			out[c.name] = c.rules
		}
		return out
	}
	expect := func(got map[string][]string, chain string, want ...string) {
		t.Helper()
		if !slices.Equal(got[chain], want) {
			t.Errorf("%s:\n%s\nwant\n%s", chain, strings.Join(got[chain], "\n"), strings.Join(want, "\n"))
		}
	}
	v6 := chains(s, rules.IPv6)
	expect(v6, "raw-PREROUTING",
		`iifname "eth1" ip6 daddr fd00:30::2 counter accept comment "ACCEPT DIRECT ACCESS"`,
		`iifname != "br0" ip6 daddr fd00:30::2 counter drop comment "DROP DIRECT ACCESS"`)
	expect(v6, "nat-prerouting-and-output",
		`ip6 saddr != fe80::/10 tcp dport 8080 counter dnat to [fd00:30::2]:80 comment "DNAT"`)
	if !slices.Contains(v6["filter-forward-in__br1"], `ip6 daddr fd00:31::2 tcp dport 81 counter accept comment "PUBLISHED"`) ||
		!slices.Contains(v6["filter-forward-in__br1"], `meta l4proto ipv6-icmp counter accept comment "ICMP"`) {
		t.Errorf("filter-forward-in__br1 (routed) lacks its port or ICMPv6:\n%s", strings.Join(v6["filter-forward-in__br1"], "\n"))
	}
	expect(v6, cutOffInName, `iifname "brI" counter drop comment "ISOLATED FROM HOST"`)
	expect(v6, cutOffOutName, `oifname "brI" counter drop comment "HOST TO ISOLATED"`)

	v4 := chains(s, rules.IPv4)
	expect(v4, cutOffInName)
	expect(v4, cutOffOutName)

	s.AllowDirectRouting = true
	expect(chains(s, rules.IPv6), "raw-PREROUTING")
}
