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
// the containers behind its ports from their own namespaces, and the
// uplinks (those of the default routes when none are named). Networks are
// masqueraded when one of masq overlaps them, or all when masq is empty.
// Ports are left for the caller.
func Discover(bridges, uplinks []string, masq []netip.Prefix) (State, error) {
	var s State
	used := make([]bool, len(masq))
	for _, br := range bridges {
		l, err := netlink.LinkByName(br)
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
	for i, u := range used {
		if !u {
			return s, fmt.Errorf("masquerade %s covers none of the bridges' subnets", masq[i])
		}
	}
	if len(uplinks) == 0 {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return s, fmt.Errorf("listing routes: %w", err)
		}
		seen := map[int]bool{}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil && !seen[r.LinkIndex] {
					seen[r.LinkIndex] = true
					uplinks = append(uplinks, l.Attrs().Name)
				}
			}
		}
		if len(uplinks) == 0 {
			return s, errors.New("no uplink given and no default route to find one")
		}
	}
	for _, u := range uplinks {
		s.Uplinks = append(s.Uplinks, Uplink{Name: u})
	}
	return s, nil
}
