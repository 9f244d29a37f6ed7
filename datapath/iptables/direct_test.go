// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestIptablesDirectAccess: the raw table's drops of direct access with
// Docker 28's exceptions for trusted host interfaces (-i eth1 -j ACCEPT
// before the drop) and none at all with --allow-direct-routing, and the
// SNAT --to-source of a network with host_ipv4.
func TestIptablesDirectAccess(t *testing.T) {
	net0 := datapath.Network{Name: "net0", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true}
	net1 := datapath.Network{Name: "net1", Bridge: "br1", Subnet: netip.MustParsePrefix("172.30.1.0/24"), Gateway: netip.MustParseAddr("172.30.1.1"), Masquerade: true}
	trusted := net0
	trusted.TrustedHostInterfaces = "eth1:wg0"
	snat := net1
	snat.HostIPv4 = netip.MustParseAddr("192.0.2.9")
	raw := func(rs ...string) []string {
		for i, r := range rs {
			rs[i] = strings.Replace(r, " -j", " -m comment --comment bpfnet -j", 1)
		}
		return rs
	}
	for _, tc := range []struct {
		name        string
		nets        []datapath.Network
		allowDirect bool
		wantRaw     []string
		wantNat     []string // POSTROUTING rules of the subnets
	}{
		{name: "protected", nets: []datapath.Network{net0, net1}, wantRaw: raw(
			"PREROUTING -d 172.30.0.2/32 ! -i br0 -j DROP",
			"PREROUTING -d 172.30.1.2/32 ! -i br1 -j DROP"),
			wantNat: []string{
				"POSTROUTING -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE",
				"POSTROUTING -s 172.30.1.0/24 ! -o br1 -m comment --comment bpfnet -j MASQUERADE"}},
		{name: "trusted interfaces and host_ipv4", nets: []datapath.Network{trusted, snat}, wantRaw: raw(
			"PREROUTING -d 172.30.0.2/32 -i eth1 -j ACCEPT",
			"PREROUTING -d 172.30.0.2/32 -i wg0 -j ACCEPT",
			"PREROUTING -d 172.30.0.2/32 ! -i br0 -j DROP",
			"PREROUTING -d 172.30.1.2/32 ! -i br1 -j DROP"),
			wantNat: []string{
				"POSTROUTING -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE",
				"POSTROUTING -s 172.30.1.0/24 ! -o br1 -m comment --comment bpfnet -j SNAT --to-source 192.0.2.9"}},
		{name: "allow direct routing", nets: []datapath.Network{trusted, net1}, allowDirect: true, wantRaw: nil,
			wantNat: []string{
				"POSTROUTING -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE",
				"POSTROUTING -s 172.30.1.0/24 ! -o br1 -m comment --comment bpfnet -j MASQUERADE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := datapath.State{Networks: tc.nets, Ports: publish(t, "8080:172.30.0.2:80", "8081:172.30.1.2:80"), AllowDirectRouting: tc.allowDirect}
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			o := Options{}.withDefaults()
			tables, err := o.tables(s)
			if err != nil {
				t.Fatal(err)
			}
			var gotRaw, gotNat []string
			for _, r := range tables["raw"].builtin {
				gotRaw = append(gotRaw, r.chain+" "+r.spec)
			}
			for _, r := range tables["nat"].builtin {
				if r.chain == "POSTROUTING" && (strings.HasPrefix(r.spec, "-s 172.30.0.0/24") || strings.HasPrefix(r.spec, "-s 172.30.1.0/24")) {
					gotNat = append(gotNat, r.chain+" "+r.spec)
				}
			}
			if !slices.Equal(gotRaw, tc.wantRaw) {
				t.Errorf("raw:\n%s\nwant\n%s", strings.Join(gotRaw, "\n"), strings.Join(tc.wantRaw, "\n"))
			}
			if !slices.Equal(gotNat, tc.wantNat) {
				t.Errorf("nat:\n%s\nwant\n%s", strings.Join(gotNat, "\n"), strings.Join(tc.wantNat, "\n"))
			}
			// The published ports stay the only way in from a trusted
			// interface: the filter table's drop of the rest is there.
			if !slices.ContainsFunc(tables["filter"].rules, func(r ipRule) bool { return r.spec == "! -i br0 -o br0 -j DROP" }) {
				t.Error("filter: no drop of unpublished ports into br0")
			}
		})
	}
}

// TestIptablesRejectsTrustedName: a trusted interface name that cannot be
// an iptables argument is refused, a good one is not.
func TestIptablesRejectsTrustedName(t *testing.T) {
	n := datapath.Network{Name: "net0", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true}
	o := Options{}.withDefaults()
	n.TrustedHostInterfaces = "eth1"
	if _, err := o.tables(datapath.State{Networks: []datapath.Network{n}}); err != nil {
		t.Errorf("eth1: %v", err)
	}
	n.TrustedHostInterfaces = "eth1:-j"
	if _, err := o.tables(datapath.State{Networks: []datapath.Network{n}}); err == nil {
		t.Error("trusted interface \"-j\": no error")
	}
}
