// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

func pm(proto datapath.Proto, host string, hostPort uint16, ctr string, port uint16) datapath.PortMapping {
	m := datapath.PortMapping{Proto: proto, HostPort: hostPort, ContainerIP: netip.MustParseAddr(ctr), ContainerPort: port}
	if host != "" {
		m.HostIP = netip.MustParseAddr(host)
	}
	return m
}

func baseState(ports ...datapath.PortMapping) datapath.State {
	return datapath.State{
		Networks:  []datapath.Network{{Name: "bridge", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1")}},
		Endpoints: []datapath.Endpoint{{Container: "web", Network: "bridge", Addr: netip.MustParseAddr("172.30.0.2"), HostVeth: "veth0"}},
		Uplinks:   []datapath.Uplink{{Name: "eth0"}},
		Ports:     ports,
	}
}

func TestPortsDiff(t *testing.T) {
	a80 := pm(datapath.TCP, "", 8080, "172.30.0.2", 80)
	a53 := pm(datapath.UDP, "", 5353, "172.30.0.2", 53)
	moved := pm(datapath.TCP, "", 8080, "172.30.0.3", 80)       // same binding, new container
	wild := pm(datapath.TCP, "0.0.0.0", 8080, "172.30.0.2", 80) // 0.0.0.0 is every address
	specific := pm(datapath.TCP, "10.0.0.1", 8080, "172.30.0.2", 80)
	allowed := a80 // the same binding with a source allowlist
	allowed.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	reallowed := a80 // and with another one
	reallowed.Allow = []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}
	for _, tc := range []struct {
		name       string
		have, want datapath.State
		unpub, pub []datapath.PortMapping
		ok         bool
	}{
		{name: "same", have: baseState(a80, a53), want: baseState(a53, a80), ok: true},
		{name: "publish one", have: baseState(a80), want: baseState(a80, a53), pub: []datapath.PortMapping{a53}, ok: true},
		{name: "remove one", have: baseState(a80, a53), want: baseState(a80), unpub: []datapath.PortMapping{a53}, ok: true},
		{name: "moved", have: baseState(a80), want: baseState(moved), pub: []datapath.PortMapping{moved}, ok: true},
		{name: "unspecified is wildcard", have: baseState(a80), want: baseState(wild), pub: []datapath.PortMapping{wild}, ok: true},
		{name: "to a specific address", have: baseState(a80), want: baseState(specific),
			unpub: []datapath.PortMapping{a80}, pub: []datapath.PortMapping{specific}, ok: true},
		{name: "renamed container", have: baseState(a80), want: func() datapath.State {
			m := a80
			m.Container = "web"
			return baseState(m)
		}(), pub: []datapath.PortMapping{func() datapath.PortMapping { m := a80; m.Container = "web"; return m }()}, ok: true},
		{name: "allowlist added", have: baseState(a80), want: baseState(allowed), pub: []datapath.PortMapping{allowed}, ok: true},
		{name: "allowlist changed", have: baseState(allowed), want: baseState(reallowed), pub: []datapath.PortMapping{reallowed}, ok: true},
		{name: "allowlist removed", have: baseState(allowed), want: baseState(a80), pub: []datapath.PortMapping{a80}, ok: true},
		{name: "allowlist same", have: baseState(allowed, a53), want: baseState(a53, allowed), ok: true},
		{name: "warnings only", have: baseState(a80), want: func() datapath.State {
			s := baseState(a80)
			s.Warnings = []string{"a binding left out"}
			return s
		}(), ok: true},
		{name: "twice", have: baseState(a80), want: baseState(a80, moved), ok: false},
		{name: "endpoint changed", have: baseState(a80), want: func() datapath.State {
			s := baseState(a80)
			s.Endpoints[0].Addr = netip.MustParseAddr("172.30.0.3")
			return s
		}(), ok: false},
		{name: "pending veth", have: baseState(a80), want: func() datapath.State {
			s := baseState(a80, a53)
			s.PendingVeths = []string{"veth1"}
			return s
		}(), ok: false},
		{name: "uplink changed", have: baseState(a80), want: func() datapath.State {
			s := baseState(a80)
			s.Uplinks = append(s.Uplinks, datapath.Uplink{Name: "eth1"})
			return s
		}(), ok: false},
	} {
		unpub, pub, ok := PortsDiff(tc.have, tc.want)
		if ok != tc.ok {
			t.Errorf("%s: incremental %v, want %v", tc.name, ok, tc.ok)
			continue
		}
		if !slices.EqualFunc(unpub, tc.unpub, datapath.PortMapping.Equal) || !slices.EqualFunc(pub, tc.pub, datapath.PortMapping.Equal) {
			t.Errorf("%s: unpublish %v publish %v, want %v and %v", tc.name, unpub, pub, tc.unpub, tc.pub)
		}
	}
}

// TestPortsDiffRouted: a routed network's mappings (container ports, no
// host binding) are never published incrementally; the nat network next
// to it still is.
func TestPortsDiffRouted(t *testing.T) {
	st := func(ports ...datapath.PortMapping) datapath.State {
		s := baseState(ports...)
		s.Networks = append(s.Networks, datapath.Network{Name: "routed", Bridge: "br1", Subnet: netip.MustParsePrefix("172.30.1.0/24"),
			Gateway: netip.MustParseAddr("172.30.1.1"), GatewayMode: datapath.GatewayRouted})
		return s
	}
	st6 := func(ports ...datapath.PortMapping) datapath.State {
		s := st(ports...)
		s.Networks[0].Subnet6 = netip.MustParsePrefix("fd00:30::/64")
		s.Networks[1].Subnet6, s.Networks[1].GatewayModeIPv6 = netip.MustParsePrefix("fd00:31::/64"), datapath.GatewayRouted
		return s
	}
	a80 := pm(datapath.TCP, "", 8080, "172.30.0.2", 80)
	r80 := pm(datapath.TCP, "", 0, "172.30.1.2", 80)
	a6 := pm(datapath.TCP, "::", 8080, "fd00:30::2", 80)
	r6 := pm(datapath.TCP, "", 0, "fd00:31::2", 80)
	for _, tc := range []struct {
		name       string
		have, want datapath.State
		ok         bool
	}{
		{"nat port published", st(r80), st(r80, a80), true},
		{"routed port published", st(a80), st(a80, r80), false},
		{"routed port removed", st(a80, r80), st(a80), false},
		{"IPv6 nat port published", st6(r6), st6(r6, a6), true},
		{"IPv6 routed port published", st6(a6), st6(a6, r6), false},
		{"IPv6 routed port removed", st6(a6, r6), st6(a6), false},
	} {
		if _, _, ok := PortsDiff(tc.have, tc.want); ok != tc.ok {
			t.Errorf("%s: incremental %v, want %v", tc.name, ok, tc.ok)
		}
	}
}
