// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sort"
)

// PublishedPort is a published port as the datapath holds it.
type PublishedPort struct {
	Binding       PortBinding
	ContainerIP   netip.Addr
	ContainerPort uint16
	// Allow is the port's source allowlist; nil: open to every source.
	Allow []netip.Prefix
	// Routed: a container port of a routed network, reached at the
	// container's address; Binding is then RoutedBinding's (the
	// container address and port), one for all the bindings of the
	// port, and Allow the union of their lists (routedAllow).
	Routed bool
	// NAT64: a host IPv6 port of an IPv4 container (bpf/lib/nat64.h),
	// its clients seen from addresses of the NAT64 pool.
	NAT64 bool
}

// RoutedBinding is the binding under which the datapath counts the flows of
// a published container port of a routed network (PortConnections,
// PortDenied, Published): the container's address and port, where the
// outside reaches it, since such a network maps nothing on the host.
func RoutedBinding(m PortMapping) PortBinding {
	return PortBinding{Proto: m.Proto, HostIP: m.ContainerIP.Unmap(), HostPort: m.ContainerPort}
}

// BindingOf is the binding under which the datapath counts the flows of m,
// a mapping of s: its host binding, or on a routed network RoutedBinding.
func BindingOf(nets []Network, m PortMapping) PortBinding {
	if isRouted(nets, m) {
		return RoutedBinding(m)
	}
	ip := m.HostIP
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	return PortBinding{Proto: m.Proto, HostIP: ip.Unmap(), HostPort: m.HostPort}
}

// Published lists the published ports in the datapath, sorted.
func (d *EBPF) Published() ([]PublishedPort, error) {
	var out []PublishedPort
	var k bpfPortKey
	var v bpfPortTarget
	lists, err := d.allowOf()
	if err != nil {
		return nil, err
	}
	it := d.objs.Published.Iterate()
	for it.Next(&k, &v) {
		out = append(out, PublishedPort{
			Binding:       PortBinding{Proto: Proto(k.Proto), HostIP: addrFrom(k.Addr), HostPort: port16(k.Port)},
			ContainerIP:   addrFrom(v.Addr),
			ContainerPort: port16(v.Port),
			Allow:         lists[v.AllowId],
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading published ports: %w", err)
	}
	// (Pinned by a version whose routed_ports held the id alone: no lists.)
	if d.objs.RoutedPorts != nil && d.objs.RoutedPorts.ValueSize() == uint32(binary.Size(v)) {
		it = d.objs.RoutedPorts.Iterate()
		for it.Next(&k, &v) {
			out = append(out, PublishedPort{
				Binding:       PortBinding{Proto: Proto(k.Proto), HostIP: addrFrom(k.Addr), HostPort: port16(k.Port)},
				ContainerIP:   addrFrom(v.Addr),
				ContainerPort: port16(v.Port),
				Allow:         lists[v.AllowId],
				Routed:        true,
			})
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("reading routed ports: %w", err)
		}
	}
	nat64, err := d.nat64Ports()
	if err != nil {
		return nil, err
	}
	out = append(out, nat64...)
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Binding, out[j].Binding
		if a.HostPort != b.HostPort {
			return a.HostPort < b.HostPort
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.HostIP.Less(b.HostIP)
	})
	return out, nil
}

// EndpointInfo is a container endpoint as the datapath holds it.
type EndpointInfo struct {
	Addr          netip.Addr
	Ifindex       uint32
	BridgeIfindex uint32
	MAC           net.HardwareAddr
	// AllowForeignSource: it may send from addresses not its own.
	AllowForeignSource bool
}

// Endpoints lists the container endpoints in the datapath.
func (d *EBPF) Endpoints() ([]EndpointInfo, error) {
	var out []EndpointInfo
	var k uint32
	var v bpfEndpoint
	it := d.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out = append(out, EndpointInfo{Addr: addrFrom(k), Ifindex: v.Ifindex, BridgeIfindex: v.BridgeIfindex, MAC: net.HardwareAddr(v.Mac[:]),
			AllowForeignSource: v.EpFlags&epFForeignSrc != 0})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading endpoints: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}
