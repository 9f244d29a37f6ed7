// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"net/netip"
	"reflect"
	"slices"

	"github.com/bpfnet/bpfnet/datapath"
)

// binding is what a published port is known by on the host: a second
// mapping of the same binding replaces the first.
type binding struct {
	proto datapath.Proto
	ip    netip.Addr // the zero Addr for every address
	port  uint16
}

func bindingOf(m datapath.PortMapping) binding {
	b := binding{proto: m.Proto, port: m.HostPort}
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
		b.ip = m.HostIP
	}
	return b
}

// PortsDiff says whether want differs from have in the published ports
// only (the warnings, which no datapath reads, aside), and if so which
// mappings to unpublish (their binding is gone) and which to publish (new,
// or changed, its allowlist included). Unpublishing comes first: a port that moves between a
// specific address and every address must be free before it is taken.
func PortsDiff(have, want datapath.State) (unpublish, publish []datapath.PortMapping, ok bool) {
	a, b := have, want
	a.Ports, b.Ports, a.Warnings, b.Warnings = nil, nil, nil, nil
	if !reflect.DeepEqual(a, b) {
		return nil, nil, false
	}
	old := make(map[binding]datapath.PortMapping, len(have.Ports))
	for _, m := range have.Ports {
		old[bindingOf(m)] = m
	}
	keep := make(map[binding]bool, len(want.Ports))
	for _, m := range want.Ports {
		k := bindingOf(m)
		if keep[k] {
			return nil, nil, false // given twice: Apply says what is wrong
		}
		keep[k] = true
		// A changed allowlist is a change: the mapping is published
		// again with its new list.
		if o, had := old[k]; !had || !o.Equal(m) {
			publish = append(publish, m)
		}
	}
	for _, m := range have.Ports {
		if !keep[bindingOf(m)] {
			unpublish = append(unpublish, m)
		}
	}
	// A routed network's mappings publish container ports, not host
	// bindings (datapath.GatewayRouted): only Apply writes them.
	for _, m := range slices.Concat(unpublish, publish) {
		for _, n := range want.Networks {
			if n.GatewayMode == datapath.GatewayRouted && n.Subnet.Contains(m.ContainerIP) ||
				n.GatewayModeIPv6 == datapath.GatewayRouted && n.Subnet6.Contains(m.ContainerIP) {
				return nil, nil, false
			}
		}
	}
	return unpublish, publish, true
}
