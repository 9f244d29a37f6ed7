// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/loader"
)

// Discover builds the State of the calling thread's namespace without a
// container runtime: each bridge's subnet and gateway from its address,
// its IPv6 subnet and gateway from its first global IPv6 address, if it
// has one (a dual-stack network; link-local addresses are not one),
// the containers behind its ports from their own namespaces, and the
// uplinks (those of the default routes when none are named). Networks are
// masqueraded when one of masq overlaps them, or all when masq is empty.
// Ports are left for the caller.
func Discover(bridges, uplinks []string, masq []netip.Prefix) (State, error) {
	var s State
	used := make([]bool, len(masq))
	for _, br := range bridges {
		l, err := netlink.LinkByName(br)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return s, fmt.Errorf("bridge %s does not exist", br)
		}
		if err != nil {
			return s, fmt.Errorf("bridge %s: %w", br, err)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			return s, fmt.Errorf("bridge %s has no IPv4 address (its gateway)", br)
		}
		gw, _ := netip.AddrFromSlice(addrs[0].IP.To4())
		ones, _ := addrs[0].Mask.Size()
		n := Network{Name: br, Bridge: br, Subnet: netip.PrefixFrom(gw, ones).Masked(), Gateway: gw}
		if n.Subnet6, n.Gateway6, err = bridgeIPv6(l); err != nil {
			return s, fmt.Errorf("bridge %s: %w", br, err)
		}
		n.Masquerade = len(masq) == 0
		for i, m := range masq {
			if m.Masked().Overlaps(n.Subnet) {
				n.Masquerade, used[i] = true, true
			}
		}
		s.Networks = append(s.Networks, n)
		peers, err := loader.DiscoverPeers(br)
		if err != nil {
			return s, err
		}
		for _, p := range peers {
			s.Endpoints = append(s.Endpoints, Endpoint{
				Container: p.HostVeth, Network: br, Addr: p.Addr, MAC: p.MAC, HostVeth: p.HostVeth,
			})
		}
	}
	if err := s.AddPendingVeths(); err != nil {
		return s, err
	}
	for i, u := range used {
		if !u {
			return s, fmt.Errorf("masquerade %s covers none of the bridges' subnets", masq[i])
		}
	}
	if len(uplinks) == 0 {
		var err error
		if uplinks, err = DefaultUplinks(); err != nil {
			return s, err
		}
	}
	for _, u := range uplinks {
		s.Uplinks = append(s.Uplinks, Uplink{Name: u})
	}
	return s, nil
}

// bridgeIPv6 is the prefix and address of the bridge's first global
// IPv6 address, or zero values when it has none.
func bridgeIPv6(l netlink.Link) (netip.Prefix, netip.Addr, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("listing IPv6 addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Is4In6() || !ip.IsGlobalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		return netip.PrefixFrom(ip, ones).Masked(), ip, nil
	}
	return netip.Prefix{}, netip.Addr{}, nil
}

// AddPendingVeths lists in PendingVeths the veth ports of the networks'
// bridges that no endpoint names.
func (s *State) AddPendingVeths() error {
	known := map[string]bool{}
	for _, e := range s.Endpoints {
		known[e.HostVeth] = true
	}
	s.PendingVeths = s.PendingVeths[:0]
	for _, n := range s.Networks {
		ports, err := loader.BridgePorts(nil, n.Bridge)
		if err != nil {
			return err
		}
		for _, p := range ports {
			if name := p.Attrs().Name; !known[name] {
				s.PendingVeths = append(s.PendingVeths, name)
				known[name] = true
			}
		}
	}
	return nil
}

// DefaultUplinks names the interfaces of the calling thread's namespace
// that carry a default route.
func DefaultUplinks() ([]string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	var out []string
	seen := map[int]bool{}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil && !seen[r.LinkIndex] {
				seen[r.LinkIndex] = true
				out = append(out, l.Attrs().Name)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no uplink given and no default route to find one")
	}
	return out, nil
}
