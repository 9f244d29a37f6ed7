// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
)

// direct6State: three dual-stack networks, IPv4 nat on each; net0 nat in
// IPv6 too with a trusted host interface, net1 routed in IPv6, iso
// internal and isolated in IPv6.
func direct6State(t *testing.T) datapath.State {
	t.Helper()
	n := func(name, br string, i int) datapath.Network {
		return datapath.Network{Name: name, Bridge: br, Masquerade: true,
			Subnet:   netip.MustParsePrefix("172.30." + string(rune('0'+i)) + ".0/24"),
			Gateway:  netip.MustParseAddr("172.30." + string(rune('0'+i)) + ".1"),
			Subnet6:  netip.MustParsePrefix("fd00:3" + string(rune('0'+i)) + "::/64"),
			Gateway6: netip.MustParseAddr("fd00:3" + string(rune('0'+i)) + "::1")}
	}
	net0, net1, iso := n("net0", "br0", 0), n("net1", "br1", 1), n("iso", "brI", 2)
	net0.TrustedHostInterfaces = "eth1"
	net1.GatewayModeIPv6 = datapath.GatewayRouted
	iso.Internal, iso.Masquerade, iso.GatewayModeIPv6 = true, false, datapath.GatewayIsolated
	s := datapath.State{Networks: []datapath.Network{net0, net1, iso},
		Ports: publish(t, "8080:172.30.0.2:80", "[::]:8080:[fd00:30::2]:80", "[::]:8081:[fd00:31::2]:81")}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestIp6tablesDirectAccessAndGatewayModes: the ip6tables tables of
// direct6State are Docker 28's with ip6tables=true: the raw table's drop
// of direct access to net0's IPv6 container after the trusted interface's
// ACCEPT (none with --allow-direct-routing), the routed IPv6 network's
// container port and ICMPv6 accepted with no DNAT and no raw drop, and
// the isolated IPv6 network cut off from the host in INPUT and OUTPUT,
// its internal drops those of Docker's IPv6 rules (not of what is bridged
// between its containers);
// the IPv4 tables, where iso is only internal, cut off nothing.
func TestIp6tablesDirectAccessAndGatewayModes(t *testing.T) {
	o := Options{}.withDefaults()
	lines := func(s datapath.State, fam rules.Family) map[string][]string {
		t.Helper()
		ts, err := o.familyTables(s, fam)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]string{}
		for name, tb := range ts {
			for _, r := range tb.builtin {
				out[name] = append(out[name], r.chain+" "+r.spec)
			}
			for _, r := range tb.rules {
				out[name] = append(out[name], r.chain+" "+r.spec)
			}
		}
		return out
	}
	has := func(got []string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("no rule %q in\n%s", w, strings.Join(got, "\n"))
			}
		}
	}
	hasNone := func(got []string, sub ...string) {
		t.Helper()
		for _, g := range got {
			for _, s := range sub {
				if strings.Contains(g, s) {
					t.Errorf("rule %q holds %q", g, s)
				}
			}
		}
	}
	s := direct6State(t)
	v6 := lines(s, rules.IPv6)
	wantRaw := []string{
		"PREROUTING -d fd00:30::2/128 -i eth1 -m comment --comment bpfnet -j ACCEPT",
		"PREROUTING -d fd00:30::2/128 ! -i br0 -m comment --comment bpfnet -j DROP",
	}
	if !slices.Equal(v6["raw"], wantRaw) {
		t.Errorf("ip6 raw:\n%s\nwant\n%s", strings.Join(v6["raw"], "\n"), strings.Join(wantRaw, "\n"))
	}
	has(v6["filter"],
		"BPFNET-DOCKER -d fd00:31::2/128 ! -i br1 -o br1 -p tcp -m tcp --dport 81 -j ACCEPT",
		"BPFNET-DOCKER -o br1 -p ipv6-icmp -j ACCEPT",
		"BPFNET-DOCKER ! -i br1 -o br1 -j DROP",
		"INPUT -i brI -m comment --comment bpfnet -j DROP",
		"OUTPUT -o brI -m comment --comment bpfnet -j DROP")
	// The internal network's drops spare what is bridged between its
	// containers (Neighbour Discovery, link-local), as Docker's IPv6
	// rules do; the IPv4 ones keep their form.
	has(v6["filter"],
		"BPFNET-ISOLATION-STAGE-1 ! -s fd00:32::/64 ! -i brI -o brI -j DROP",
		"BPFNET-ISOLATION-STAGE-1 ! -d fd00:32::/64 -i brI ! -o brI -j DROP")
	// The routed port is no host port: no DNAT, no hairpin masquerade.
	hasNone(v6["nat"], "fd00:31::2")
	has(v6["nat"], "BPFNET-DOCKER ! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:30::2]:80")

	// IPv4: iso is internal, not isolated; net1 nat.
	v4 := lines(s, rules.IPv4)
	hasNone(v4["filter"], "INPUT -i brI", "OUTPUT -o brI", "-p icmp -j ACCEPT")
	hasNone(v4["raw"], "fd00:")
	has(v4["filter"],
		"BPFNET-ISOLATION-STAGE-1 ! -s 172.30.2.0/24 -o brI -j DROP",
		"BPFNET-ISOLATION-STAGE-1 ! -d 172.30.2.0/24 -i brI -j DROP")

	// --allow-direct-routing: no raw drop; the filter table still lets
	// only the published container port in.
	s.AllowDirectRouting = true
	v6 = lines(s, rules.IPv6)
	if len(v6["raw"]) != 0 {
		t.Errorf("ip6 raw with --allow-direct-routing:\n%s\nwant it empty", strings.Join(v6["raw"], "\n"))
	}
	has(v6["filter"], "BPFNET-DOCKER -d fd00:30::2/128 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -j ACCEPT", "BPFNET-DOCKER ! -i br0 -o br0 -j DROP")
}
