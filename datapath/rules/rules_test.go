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
	if r.Verdict == SNAT {
		v += " " + r.To.Addr().String()
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
	trusted := br0
	trusted.TrustedHostInterfaces = "eth1:tun0"
	hostIP := br0
	hostIP.HostIPv4 = netip.MustParseAddr("192.0.2.9")
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
		// allowDirect is --allow-direct-routing.
		allowDirect bool
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
		// Docker 28's trusted_host_interfaces: accepted in raw before the
		// drop, per container address; the filter rules still let only
		// the published ports in.
		{name: "trusted host interfaces", networks: []datapath.Network{trusted}, ports: []string{"8080:172.30.0.2:80", "8081:172.30.0.2:81", "8082:172.30.0.3:80"}, want: []chainWant{
			{RawPrerouting, "", []string{
				"ACCEPT DIRECT ACCESS: iif=eth1 dst=172.30.0.2/32 accept",
				"ACCEPT DIRECT ACCESS: iif=tun0 dst=172.30.0.2/32 accept",
				"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.2/32 drop",
				"ACCEPT DIRECT ACCESS: iif=eth1 dst=172.30.0.3/32 accept",
				"ACCEPT DIRECT ACCESS: iif=tun0 dst=172.30.0.3/32 accept",
				"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.3/32 drop"}},
			{ForwardIn, "br0", []string{"ESTABLISHED: ct=established accept", "ICC: iif=br0 accept",
				"PUBLISHED: dst=172.30.0.2/32 tcp/80 accept", "PUBLISHED: dst=172.30.0.2/32 tcp/81 accept",
				"PUBLISHED: dst=172.30.0.3/32 tcp/80 accept", "UNPUBLISHED PORT DROP: drop"}},
		}},
		// The twin of the first case: without trusted interfaces, the
		// drop alone.
		{name: "no trusted host interfaces", networks: []datapath.Network{br0}, ports: []string{"8080:172.30.0.2:80"}, want: []chainWant{
			{RawPrerouting, "", []string{"DROP DIRECT ACCESS: !iif=br0 dst=172.30.0.2/32 drop"}},
		}},
		// dockerd --allow-direct-routing: no raw drops of direct access
		// (the trusted interfaces need no exception), the loopback drop
		// stays, and so does the filtering of unpublished ports.
		{name: "allow direct routing", networks: []datapath.Network{trusted}, allowDirect: true, loopback: true,
			ports: []string{"8080:172.30.0.2:80", "127.0.0.1:8081:172.30.0.3:80"}, want: []chainWant{
				{RawPrerouting, "", []string{"DROP REMOTE LOOPBACK: !iif=lo dst=127.0.0.1/32 tcp/8081 drop"}},
				{ForwardIn, "br0", []string{"ESTABLISHED: ct=established accept", "ICC: iif=br0 accept",
					"PUBLISHED: dst=172.30.0.2/32 tcp/80 accept", "PUBLISHED: dst=172.30.0.3/32 tcp/80 accept", "UNPUBLISHED PORT DROP: drop"}},
			}},
		// com.docker.network.host_ipv4: SNAT to that address instead of
		// MASQUERADE; the other networks keep masquerading.
		{name: "host_ipv4", networks: []datapath.Network{hostIP, br1}, want: []chainWant{
			{PostroutingOut, "br0", []string{"MASQUERADE: !oif=br0 src=172.30.0.0/24 snat 192.0.2.9"}},
			{PostroutingOut, "br1", []string{"MASQUERADE: !oif=br1 src=172.30.1.0/24 masquerade"}},
		}},
		// enable_ip_masquerade=false: no source NAT, host_ipv4 or not.
		{name: "masquerade off with host_ipv4", networks: []datapath.Network{func() datapath.Network { n := hostIP; n.Masquerade = false; return n }()}, want: []chainWant{
			{PostroutingOut, "br0", nil},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := datapath.State{Networks: tc.networks, Ports: ports(t, tc.ports...), AllowDirectRouting: tc.allowDirect}
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

// TestPlanAllowlists: each port with a source allowlist gets one rule,
// matching its own host port before DNAT (two host ports to one container
// port keep their lists apart) and its host address when it has one; a
// port without a list gets none.
func TestPlanAllowlists(t *testing.T) {
	s := datapath.State{Networks: []datapath.Network{network("net0", "br0", "172.30.0.0/24")}, Ports: ports(t,
		"8080:172.30.0.9:80,allow=198.51.100.7+192.0.2.0/24+192.0.2.1/24",
		"10.0.0.1:8081:172.30.0.9:80/tcp,allow=203.0.113.0/24",
		"8082:172.30.0.9:80")}
	p, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range p.Allowlists {
		m := r.Match
		got = append(got, fmt.Sprintf("%s seq=%d new-dnat=%v orig=%v:%d %s/%d dst=%s not-in=%v %s",
			r.Kind, r.Seq, m.NewDNAT, m.OrigDst, m.OrigDPort, m.Proto, m.DPort, m.Dst, m.SrcNotIn, r.Verdict))
	}
	want := []string{
		"PORT ALLOWLIST seq=1 new-dnat=true orig=invalid Prefix:8080 tcp/80 dst=172.30.0.9/32 not-in=[192.0.2.0/24 198.51.100.7/32] drop",
		"PORT ALLOWLIST seq=2 new-dnat=true orig=10.0.0.1/32:8081 tcp/80 dst=172.30.0.9/32 not-in=[203.0.113.0/24] drop",
	}
	if !slices.Equal(got, want) {
		t.Errorf("allowlist rules:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
