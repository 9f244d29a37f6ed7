// SPDX-License-Identifier: Apache-2.0

package rules

import (
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestPlanGatewayModes: the rules Docker 28 (iptables) and 29 (nftables)
// write for each gateway mode of a network with one published port
// (moby integration/network/bridge/{iptables,nftables}doc/generated:
// usernet-portmap.md, usernet-portmap-natunprot.md,
// usernet-portmap-routed.md, usernet-internal.md).
func TestPlanGatewayModes(t *testing.T) {
	withMode := func(m datapath.GatewayMode, internal bool) datapath.Network {
		n := network("net0", "br0", "172.30.0.0/24")
		n.GatewayMode = m
		if internal {
			n.Internal, n.Masquerade = true, false
		}
		return n
	}
	type chainWant struct {
		kind  ChainKind
		rules []string
	}
	cases := map[string]struct {
		net   datapath.Network
		ports []string
		want  []chainWant
	}{
		"nat": {withMode(datapath.GatewayNAT, false), []string{"8080:172.30.0.2:80"}, []chainWant{
			{NatLocal, []string{"DNAT: tcp/8080 dnat 172.30.0.2:80"}},
			{RawPrerouting, []string{"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.2/32 drop"}},
			{ForwardIn, []string{"ESTABLISHED: ct=established accept", "ICC: iif=br0 accept",
				"PUBLISHED: dst=172.30.0.2/32 tcp/80 accept", "UNPUBLISHED PORT DROP: drop"}},
			{PostroutingIn, []string{"MASQUERADE FROM HOST: src=local masquerade",
				"MASQ TO OWN PORT: src=172.30.0.2/32 dst=172.30.0.2/32 tcp/80 masquerade"}},
			{PostroutingOut, []string{"MASQUERADE: !oif=br0 src=172.30.0.0/24 masquerade"}},
		}},
		// No per-port ACCEPT, no direct-access drop, a default ACCEPT;
		// the NAT as in nat mode.
		"nat-unprotected": {withMode(datapath.GatewayNATUnprotected, false), []string{"8080:172.30.0.2:80"}, []chainWant{
			{NatLocal, []string{"DNAT: tcp/8080 dnat 172.30.0.2:80"}},
			{RawPrerouting, nil},
			{ForwardIn, []string{"ESTABLISHED: ct=established accept", "ICC: iif=br0 accept", "UNPROTECTED: accept"}},
			{PostroutingIn, []string{"MASQUERADE FROM HOST: src=local masquerade",
				"MASQ TO OWN PORT: src=172.30.0.2/32 dst=172.30.0.2/32 tcp/80 masquerade"}},
			{PostroutingOut, []string{"MASQUERADE: !oif=br0 src=172.30.0.0/24 masquerade"}},
		}},
		// No NAT at all (the host port is ignored), ICMP and the
		// container port accepted, the rest dropped.
		"routed": {withMode(datapath.GatewayRouted, false), []string{"8080:172.30.0.2:80"}, []chainWant{
			{NatLocal, nil},
			{RawPrerouting, nil},
			{ForwardIn, []string{"ESTABLISHED: ct=established accept", "ICMP: icmp accept", "ICC: iif=br0 accept",
				"PUBLISHED: dst=172.30.0.2/32 tcp/80 accept", "UNPUBLISHED PORT DROP: drop"}},
			{ForwardOut, []string{"ESTABLISHED: ct=established accept", "OUTGOING: accept"}},
			{PostroutingIn, nil},
			{PostroutingOut, nil},
		}},
		// Internal rules; the host is cut off by the bridge having no
		// address, which Docker writes no rule for.
		"isolated": {withMode(datapath.GatewayIsolated, true), nil, []chainWant{
			{ForwardIn, []string{"ESTABLISHED: ct=established accept", "INTERNAL NETWORK INGRESS: !iif=br0 drop", "ICC: accept"}},
			{ForwardOut, []string{"ESTABLISHED: ct=established accept", "INTERNAL NETWORK EGRESS: !oif=br0 drop"}},
			{PostroutingIn, nil},
			{PostroutingOut, nil},
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s := datapath.State{Networks: []datapath.Network{tc.net}, Ports: ports(t, tc.ports...)}
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			p, err := New(s)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				bridge := "br0"
				if w.kind == NatLocal || w.kind == RawPrerouting {
					bridge = ""
				}
				if got := showChain(p, w.kind, bridge); !slices.Equal(got, w.rules) {
					t.Errorf("chain %s:\n%s\nwant\n%s", w.kind, strings.Join(got, "\n"), strings.Join(w.rules, "\n"))
				}
			}
		})
	}
}

// TestPlanRoutedBetweenNetworks: a routed network is no isolation peer of
// the others into it (they are filtered by its port rules), and the
// answers of its containers cross back into the others; new flows from it
// into them stay isolated.
func TestPlanRoutedBetweenNetworks(t *testing.T) {
	nat0 := network("net0", "br0", "172.30.0.0/24")
	routed := network("net1", "br1", "172.30.1.0/24")
	routed.GatewayMode = datapath.GatewayRouted
	s := datapath.State{Networks: []datapath.Network{nat0, routed}, Ports: ports(t, "8080:172.30.1.2:80")}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		bridge string
		rules  []string
	}{
		{"br0", []string{"ROUTED ESTABLISHED: iif=br1 ct=established accept", "ISOLATION: iif=br1 drop",
			"ESTABLISHED: ct=established accept", "ICC: iif=br0 accept", "UNPUBLISHED PORT DROP: drop"}},
		{"br1", []string{"ESTABLISHED: ct=established accept", "ICMP: icmp accept", "ICC: iif=br1 accept",
			"PUBLISHED: dst=172.30.1.2/32 tcp/80 accept", "UNPUBLISHED PORT DROP: drop"}},
	} {
		if got := showChain(p, ForwardIn, w.bridge); !slices.Equal(got, w.rules) {
			t.Errorf("forward-in of %s:\n%s\nwant\n%s", w.bridge, strings.Join(got, "\n"), strings.Join(w.rules, "\n"))
		}
	}
}
