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
	return PortBinding{Proto: m.Proto, HostIP: wildcardOf(m).Unmap(), HostPort: m.HostPort}
}

// Published lists the published ports in the datapath, IPv4 and IPv6,
// sorted.
func (d *EBPF) Published() ([]PublishedPort, error) {
	var out []PublishedPort
	lists, err := d.allowOf()
	if err != nil {
		return nil, err
	}
	// of is the entry of a port_target at k.
	of := func(k bpfPortKey, v bpfPortTarget, routed bool) PublishedPort {
		return PublishedPort{
			Binding:     PortBinding{Proto: Proto(k.Proto), HostIP: addrFrom(k.Addr), HostPort: port16(k.Port)},
			ContainerIP: addrFrom(v.Addr), ContainerPort: port16(v.Port), Allow: lists[v.AllowId], Routed: routed,
		}
	}
	ports, err := readMap[bpfPortKey, bpfPortTarget](d.objs.Published)
	if err != nil {
		return nil, fmt.Errorf("reading published ports: %w", err)
	}
	for k, v := range ports {
		out = append(out, of(k, v, false))
	}
	if d.objs.Published6 != nil { // (nil: pinned by a version without IPv6)
		ports6, err := readMap[bpfPort6Key, bpfPort6Target](d.objs.Published6)
		if err != nil {
			return nil, fmt.Errorf("reading IPv6 published ports: %w", err)
		}
		for k, v := range ports6 {
			out = append(out, PublishedPort{
				Binding:     PortBinding{Proto: Proto(k.Proto), HostIP: addr6From(k.Addr), HostPort: port16(k.Port)},
				ContainerIP: addr6From(v.Addr), ContainerPort: port16(v.Port), Allow: lists[v.AllowId],
			})
		}
	}
	// (Pinned by a version whose routed_ports held the id alone: no lists.)
	if d.objs.RoutedPorts != nil && d.objs.RoutedPorts.ValueSize() == uint32(binary.Size(bpfPortTarget{})) {
		routed, err := readMap[bpfPortKey, bpfPortTarget](d.objs.RoutedPorts)
		if err != nil {
			return nil, fmt.Errorf("reading routed ports: %w", err)
		}
		for k, v := range routed {
			out = append(out, of(k, v, true))
		}
	}
	if d.objs.RoutedPorts6 != nil {
		routed6, err := readMap[bpfPort6Key, bpfPort6Target](d.objs.RoutedPorts6)
		if err != nil {
			return nil, fmt.Errorf("reading IPv6 routed ports: %w", err)
		}
		for k, v := range routed6 {
			out = append(out, PublishedPort{
				Binding:     PortBinding{Proto: Proto(k.Proto), HostIP: addr6From(k.Addr), HostPort: port16(k.Port)},
				ContainerIP: addr6From(v.Addr), ContainerPort: port16(v.Port), Allow: lists[v.AllowId], Routed: true,
			})
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

// Endpoints lists the container endpoints in the datapath, IPv4 then
// IPv6 (a dual-stack container has one of each).
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
	if d.objs.Endpoints6 != nil {
		var k6 bpfIn6Key
		var v6 bpfEndpoint6
		it6 := d.objs.Endpoints6.Iterate()
		for it6.Next(&k6, &v6) {
			out = append(out, EndpointInfo{Addr: addr6From(k6.A), Ifindex: v6.Ep.Ifindex, BridgeIfindex: v6.Ep.BridgeIfindex,
				MAC: net.HardwareAddr(v6.Ep.Mac[:]), AllowForeignSource: v6.Ep.EpFlags&epFForeignSrc != 0})
		}
		if err := it6.Err(); err != nil {
			return nil, fmt.Errorf("reading IPv6 endpoints: %w", err)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}
