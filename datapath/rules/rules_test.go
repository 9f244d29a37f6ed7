// SPDX-License-Identifier: Apache-2.0

package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// show writes a rule on one line, its match fields in a fixed order.
func show(r Rule) string {
	var f []string
	not := func(b bool) string {
		if b {
			return "!"
		}
		return ""
	}
	m := r.Match
	if m.InIface != "" {
		f = append(f, not(m.NotInIface)+"iif="+m.InIface)
	}
	if m.OutIface != "" {
		f = append(f, not(m.NotOutIface)+"oif="+m.OutIface)
	}
	if m.Src.IsValid() {
		f = append(f, not(m.NotSrc)+"src="+m.Src.String())
	}
	if m.Dst.IsValid() {
		f = append(f, not(m.NotDst)+"dst="+m.Dst.String())
	}
	if m.SrcLocal {
		f = append(f, "src=local")
	}
	if m.ICMP {
		f = append(f, "icmp")
	}
	if m.Proto != 0 {
		f = append(f, fmt.Sprintf("%s/%d", m.Proto, m.DPort))
	}
	if m.Established {
		f = append(f, "ct=established")
	}
	v := string(r.Verdict)
	if r.Verdict == DNAT {
		v += " " + r.To.String()
	}
	return strings.TrimSpace(string(r.Kind) + ": " + strings.Join(append(f, v), " "))
}

// showChain is a chain's rules, one a line.
func showChain(p *Plan, kind ChainKind, bridge string) []string {
	c := p.Chain(kind, bridge)
	if c == nil {
		return []string{"no chain"}
	}
	var out []string
	for _, r := range c.Rules {
		out = append(out, show(r))
	}
	return out
}

func ports(t *testing.T, specs ...string) []datapath.PortMapping {
	t.Helper()
	var out []datapath.PortMapping
	for _, s := range specs {
		m, err := datapath.ParsePublish(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

func network(name, bridge, subnet string) datapath.Network {
	p := netip.MustParsePrefix(subnet)
	return datapath.Network{Name: name, Bridge: bridge, Subnet: p, Gateway: p.Addr().Next(), Masquerade: true}
}

func TestPlan(t *testing.T) {
	br0 := network("net0", "br0", "172.30.0.0/24")
	br1 := network("net1", "br1", "172.30.1.0/24")
	noICC := br0
	noICC.NoICC = true
	internal := network("int", "brI", "172.30.2.0/24")
	internal.Internal, internal.Masquerade = true, false
	routed := br0
	routed.Masquerade = false
	type chainWant struct {
		kind   ChainKind
		bridge string
		rules  []string
	}
	for _, tc := range []struct {
		name     string
		networks []datapath.Network
		ports    []string
		want     []chainWant
		loopback bool
	}{
		{name: "one bridge with a published port", networks: []datapath.Network{br0}, ports: []string{"8080:172.30.0.2:80"}, want: []chainWant{
			{NatLocal, "", []string{"DNAT: tcp/8080 dnat 172.30.0.2:80"}},
			{RawPrerouting, "", []string{"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.2/32 drop"}},
			{ForwardIn, "br0", []string{
				"ESTABLISHED: ct=established accept",
				"ICC: iif=br0 accept",
				"PUBLISHED: dst=172.30.0.2/32 tcp/80 accept",
				"UNPUBLISHED PORT DROP: drop"}},
			{ForwardOut, "br0", []string{"ESTABLISHED: ct=established accept", "OUTGOING: accept"}},
			{PostroutingOut, "br0", []string{"MASQUERADE: !oif=br0 src=172.30.0.0/24 masquerade"}},
		}},
		{name: "hairpin", networks: []datapath.Network{br0}, ports: []string{"8080:172.30.0.2:80", "8081:172.30.0.2:80", "5353:172.30.0.2:53/udp"}, want: []chainWant{
			{NatLocal, "", []string{"DNAT: tcp/8080 dnat 172.30.0.2:80", "DNAT: tcp/8081 dnat 172.30.0.2:80", "DNAT: udp/5353 dnat 172.30.0.2:53"}},
			// One container port behind two host ports: its rules once.
			{PostroutingIn, "br0", []string{
				"MASQUERADE FROM HOST: src=local masquerade",
				"MASQ TO OWN PORT: src=172.30.0.2/32 dst=172.30.0.2/32 tcp/80 masquerade",
				"MASQ TO OWN PORT: src=172.30.0.2/32 dst=172.30.0.2/32 udp/53 masquerade"}},
			{RawPrerouting, "", []string{"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.2/32 drop"}},
		}},
		{name: "two networks isolated", networks: []datapath.Network{br0, br1}, want: []chainWant{
			{ForwardIn, "br0", []string{"ISOLATION: iif=br1 drop", "ESTABLISHED: ct=established accept", "ICC: iif=br0 accept", "UNPUBLISHED PORT DROP: drop"}},
			{ForwardIn, "br1", []string{"ISOLATION: iif=br0 drop", "ESTABLISHED: ct=established accept", "ICC: iif=br1 accept", "UNPUBLISHED PORT DROP: drop"}},
			{RawPrerouting, "", nil},
		}},
		{name: "icc=false", networks: []datapath.Network{noICC}, want: []chainWant{
			{ForwardIn, "br0", []string{"ESTABLISHED: ct=established accept", "ICC: iif=br0 drop", "UNPUBLISHED PORT DROP: drop"}},
			{ForwardOut, "br0", []string{"ESTABLISHED: ct=established accept", "OUTGOING: accept"}},
		}},
		{name: "internal", networks: []datapath.Network{br0, internal}, want: []chainWant{
			// The internal network is no isolation peer: it drops all that is not its own.
			{ForwardIn, "br0", []string{"ESTABLISHED: ct=established accept", "ICC: iif=br0 accept", "UNPUBLISHED PORT DROP: drop"}},
			{ForwardIn, "brI", []string{"ESTABLISHED: ct=established accept", "INTERNAL NETWORK INGRESS: !iif=brI drop", "ICC: accept"}},
			{ForwardOut, "brI", []string{"ESTABLISHED: ct=established accept", "INTERNAL NETWORK EGRESS: !oif=brI drop"}},
			{PostroutingIn, "brI", nil},
			{PostroutingOut, "brI", nil},
		}},
		{name: "host-IP-bound port", networks: []datapath.Network{br0}, ports: []string{"10.0.0.1:8080:172.30.0.2:80", "127.0.0.1:8081:172.30.0.3:80"}, loopback: true, want: []chainWant{
			{NatLocal, "", []string{"DNAT: dst=10.0.0.1/32 tcp/8080 dnat 172.30.0.2:80", "DNAT: dst=127.0.0.1/32 tcp/8081 dnat 172.30.0.3:80"}},
			{RawPrerouting, "", []string{
				"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.2/32 drop",
				"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.3/32 drop",
				"DROP REMOTE LOOPBACK: !iif=lo dst=127.0.0.1/32 tcp/8081 drop"}},
		}},
		// A network that is not masqueraded is routed: its containers
		// are reachable at their addresses (their ports still filtered),
		// as with Docker's gateway mode "routed".
		{name: "direct access", networks: []datapath.Network{br0, br1, routed}[1:], ports: []string{"8080:172.30.0.2:80", "8081:172.30.1.2:80"}, want: []chainWant{
			{RawPrerouting, "", []string{"DROP DIRECT ACCESS: !iif=br1 dst=172.30.1.2/32 drop"}},
			{ForwardIn, "br0", []string{"ISOLATION: iif=br1 drop", "ESTABLISHED: ct=established accept", "ICC: iif=br0 accept",
				"PUBLISHED: dst=172.30.0.2/32 tcp/80 accept", "UNPUBLISHED PORT DROP: drop"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := datapath.State{Networks: tc.networks, Ports: ports(t, tc.ports...)}
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			p, err := New(s)
			if err != nil {
				t.Fatal(err)
			}
			if p.LoopbackPorts != tc.loopback {
				t.Errorf("LoopbackPorts %v, want %v", p.LoopbackPorts, tc.loopback)
			}
			if got := len(p.Chains); got != 2+4*len(tc.networks) {
				t.Errorf("%d chains, want %d", got, 2+4*len(tc.networks))
			}
			for _, w := range tc.want {
				if got := showChain(p, w.kind, w.bridge); !slices.Equal(got, w.rules) {
					t.Errorf("chain %s %s:\n%s\nwant\n%s", w.kind, w.bridge, strings.Join(got, "\n"), strings.Join(w.rules, "\n"))
				}
			}
		})
	}
}

func TestPlanRejectsPortOutsideNetworks(t *testing.T) {
	s := datapath.State{Networks: []datapath.Network{network("net0", "br0", "172.30.0.0/24")}, Ports: ports(t, "8080:10.9.9.9:80")}
	if _, err := New(s); err == nil {
		t.Error("a port to no network: no error")
	}
	s.Ports = ports(t, "8080:172.30.0.9:80")
	if _, err := New(s); err != nil {
		t.Errorf("a port in the network: %v", err)
	}
}
