// SPDX-License-Identifier: Apache-2.0

package rules

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// dualStack is network() with an IPv6 subnet, its gateway the first
// address.
func dualStack(name, bridge, subnet, subnet6 string) datapath.Network {
	n := network(name, bridge, subnet)
	p := netip.MustParsePrefix(subnet6)
	n.Subnet6, n.Gateway6 = p, p.Addr().Next()
	return n
}

// TestPlanIPv6 checks the IPv6 plan of a dual-stack state against
// Docker's ip6 docker-bridges table (moby nftabler golden files,
// hairpin=true): the same chains as IPv4 with IPv6 addresses, DNAT
// leaving link-local sources alone, no remote-loopback drop of ::1, and
// neither the IPv4-only network nor the IPv4 ports in it; the IPv4 plan
// of the same state has none of the IPv6 ports.
func TestPlanIPv6(t *testing.T) {
	ds := dualStack("ds", "br0", "172.30.0.0/24", "fd00:30::/64")
	other := dualStack("ds2", "br1", "172.30.1.0/24", "fd00:31::/64")
	v4only := network("v4", "br2", "172.30.2.0/24")
	s := datapath.State{
		Networks: []datapath.Network{ds, other, v4only},
		Ports: ports(t, "8080:172.30.0.2:80", "[::]:8080:[fd00:30::2]:80", "[::1]:8081:[fd00:30::2]:81/udp",
			"[::]:8082:[fd00:30::3]:82,allow=192.0.2.0/24", "9090:172.30.2.2:90"),
	}
	p, err := NewFamily(s, IPv6)
	if err != nil {
		t.Fatal(err)
	}
	if p.Family != IPv6 || !p.LoopbackPorts {
		t.Errorf("family %s loopback %v, want ipv6 and OUTPUT without the loopback exclusion", p.Family, p.LoopbackPorts)
	}
	var names []string
	for _, n := range p.Networks {
		names = append(names, n.Name+" "+n.Subnet.String())
	}
	if want := []string{"ds fd00:30::/64", "ds2 fd00:31::/64"}; !slices.Equal(names, want) {
		t.Errorf("networks %q, want %q", names, want)
	}
	for _, tc := range []struct {
		kind   ChainKind
		bridge string
		want   []string
	}{
		{NatLocal, "", []string{
			"DNAT: !src=fe80::/10 tcp/8080 dnat [fd00:30::2]:80",
			"DNAT: !src=fe80::/10 dst=::1/128 udp/8081 dnat [fd00:30::2]:81",
			"DNAT: !src=fe80::/10 tcp/8082 dnat [fd00:30::3]:82",
		}},
		{RawPrerouting, "", []string{
			"DROP DIRECT ACCESS: !iif=br0 dst=fd00:30::2/128 drop",
			"DROP DIRECT ACCESS: !iif=br0 dst=fd00:30::3/128 drop",
		}},
		{ForwardIn, "br0", []string{
			"ISOLATION: iif=br1 drop",
			"ESTABLISHED: ct=established accept",
			"ICC: iif=br0 accept",
			"PUBLISHED: dst=fd00:30::2/128 tcp/80 accept",
			"PUBLISHED: dst=fd00:30::2/128 udp/81 accept",
			"PUBLISHED: dst=fd00:30::3/128 tcp/82 accept",
			"UNPUBLISHED PORT DROP: drop",
		}},
		{PostroutingIn, "br0", []string{
			"MASQUERADE FROM HOST: src=local masquerade",
			"MASQ TO OWN PORT: src=fd00:30::2/128 dst=fd00:30::2/128 tcp/80 masquerade",
			"MASQ TO OWN PORT: src=fd00:30::2/128 dst=fd00:30::2/128 udp/81 masquerade",
			"MASQ TO OWN PORT: src=fd00:30::3/128 dst=fd00:30::3/128 tcp/82 masquerade",
		}},
		{PostroutingOut, "br0", []string{"MASQUERADE: !oif=br0 src=fd00:30::/64 masquerade"}},
		{ForwardIn, "br2", []string{"no chain"}},
	} {
		if got := showChain(p, tc.kind, tc.bridge); !slices.Equal(got, tc.want) {
			t.Errorf("%s %s:\n%s\nwant:\n%s", tc.kind, tc.bridge, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
	// The IPv4 allowlist of an IPv6 port keeps no IPv4 prefix: every
	// new IPv6 flow to it is dropped, as nothing of IPv6 is in it.
	if len(p.Allowlists) != 1 || len(p.Allowlists[0].Match.SrcNotIn) != 0 || p.Allowlists[0].Match.Dst != netip.MustParsePrefix("fd00:30::3/128") {
		t.Errorf("allowlists %+v, want one for [fd00:30::3]:82 with no prefix", p.Allowlists)
	}

	// The IPv4 plan of the same state: every network, the IPv4 ports
	// only, the loopback exclusion kept.
	p4, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := showChain(p4, NatLocal, ""), []string{"DNAT: tcp/8080 dnat 172.30.0.2:80", "DNAT: tcp/9090 dnat 172.30.2.2:90"}; !slices.Equal(got, want) {
		t.Errorf("IPv4 NatLocal %q, want %q", got, want)
	}
	if p4.Family != IPv4 || p4.LoopbackPorts || len(p4.Networks) != 3 || len(p4.Allowlists) != 0 {
		t.Errorf("IPv4 plan: family %s loopback %v networks %d allowlists %d", p4.Family, p4.LoopbackPorts, len(p4.Networks), len(p4.Allowlists))
	}

	// Gateway modes and host_ipv6 are the IPv6 ones.
	ds.GatewayMode, ds.GatewayModeIPv6 = datapath.GatewayNAT, datapath.GatewayRouted
	other.HostIPv4, other.HostIPv6 = netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("2001:db8::9")
	s.Networks = []datapath.Network{ds, other}
	s.Ports = ports(t, "[::]:8080:[fd00:30::2]:80")
	p, err = NewFamily(s, IPv6)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind   ChainKind
		bridge string
		want   []string
	}{
		{NatLocal, "", nil},
		{ForwardIn, "br0", []string{
			"ESTABLISHED: ct=established accept",
			"ICMP: icmp accept",
			"ICC: iif=br0 accept",
			"PUBLISHED: dst=fd00:30::2/128 tcp/80 accept",
			"UNPUBLISHED PORT DROP: drop",
		}},
		{PostroutingOut, "br0", nil},
		{PostroutingOut, "br1", []string{"MASQUERADE: !oif=br1 src=fd00:31::/64 snat 2001:db8::9"}},
	} {
		if got := showChain(p, tc.kind, tc.bridge); !slices.Equal(got, tc.want) {
			t.Errorf("routed/host_ipv6: %s %s:\n%s\nwant:\n%s", tc.kind, tc.bridge, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}
