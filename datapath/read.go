// SPDX-License-Identifier: Apache-2.0

package datapath

import (
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
