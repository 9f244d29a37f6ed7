// SPDX-License-Identifier: Apache-2.0

package rules

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestPlanRoutedAllowlists: a routed network's container port gets one
// allowlist rule for all its bindings, matching new flows from outside the
// bridge to the container port (no DNAT there), with the union of their
// lists (prefixes another covers left out); a binding without a list
// opens the port, with no rule. A nat network's binding of the same host
// port keeps its own rule, before the routed ones.
func TestPlanRoutedAllowlists(t *testing.T) {
	routed := network("net1", "br1", "172.30.1.0/24")
	routed.GatewayMode = datapath.GatewayRouted
	s := datapath.State{Networks: []datapath.Network{network("net0", "br0", "172.30.0.0/24"), routed}, Ports: ports(t,
		// 80: the union of two lists.
		"8080:172.30.1.2:80,allow=10.0.0.0/24+192.0.2.7",
		"8081:172.30.1.2:80,allow=10.0.0.0/16",
		// 81: one binding without a list.
		"8082:172.30.1.2:81,allow=10.0.0.0/24",
		"8083:172.30.1.2:81",
		// 53/udp of another container, one list.
		"5353:172.30.1.3:53/udp,allow=198.51.100.0/24",
		// A nat network's binding of host port 8080 with a list.
		"8080:172.30.0.2:80,allow=203.0.113.0/24",
	)}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range p.Allowlists {
		m := r.Match
		got = append(got, fmt.Sprintf("%s seq=%d new=%v new-dnat=%v orig=%v:%d %s %s/%d dst=%s not-in=%v %s",
			r.Kind, r.Seq, m.New, m.NewDNAT, m.OrigDst, m.OrigDPort, show(Rule{Match: Match{InIface: m.InIface, NotInIface: m.NotInIface, OutIface: m.OutIface}}),
			m.Proto, m.DPort, m.Dst, m.SrcNotIn, r.Verdict))
	}
	want := []string{
		"PORT ALLOWLIST seq=6 new=false new-dnat=true orig=invalid Prefix:8080 : tcp/80 dst=172.30.0.2/32 not-in=[203.0.113.0/24] drop",
		"PORT ALLOWLIST seq=1 new=true new-dnat=false orig=invalid Prefix:0 : !iif=br1 oif=br1 tcp/80 dst=172.30.1.2/32 not-in=[10.0.0.0/16 192.0.2.7/32] drop",
		"PORT ALLOWLIST seq=5 new=true new-dnat=false orig=invalid Prefix:0 : !iif=br1 oif=br1 udp/53 dst=172.30.1.3/32 not-in=[198.51.100.0/24] drop",
	}
	if !slices.Equal(got, want) {
		t.Errorf("allowlist rules:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The container ports stay published, with or without a list.
	for _, port := range []string{"tcp/80", "tcp/81"} {
		if !slices.Contains(showChain(p, ForwardIn, "br1"), "PUBLISHED: dst=172.30.1.2/32 "+port+" accept") {
			t.Errorf("forward-in of br1 lacks %s:\n%s", port, strings.Join(showChain(p, ForwardIn, "br1"), "\n"))
		}
	}
}

// TestPlanIsolatedHostCutOff: an isolated network's bridge is cut off from
// the host both ways, in INPUT and OUTPUT; an internal network that is
// not isolated, and a nat one, are not (their positive twins).
func TestPlanIsolatedHostCutOff(t *testing.T) {
	isolated := network("iso", "brI", "172.30.2.0/24")
	isolated.Internal, isolated.Masquerade, isolated.GatewayMode = true, false, datapath.GatewayIsolated
	internal := network("int", "brN", "172.30.3.0/24")
	internal.Internal, internal.Masquerade = true, false
	s := datapath.State{Networks: []datapath.Network{network("net0", "br0", "172.30.0.0/24"), isolated, internal}}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range p.HostCutOff {
		got = append(got, show(r))
	}
	want := []string{"ISOLATED FROM HOST: iif=brI drop", "HOST TO ISOLATED: oif=brI drop"}
	if !slices.Equal(got, want) {
		t.Errorf("host cut-off:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
