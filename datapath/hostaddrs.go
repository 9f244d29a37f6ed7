// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// CheckHostIPv4In is CheckHostIPv4 for the rule-based datapaths, which do
// not list the host's addresses themselves: with s.HostAddrs nil, the
// IPv4 addresses of the network namespace at nsPath ("" for the calling
// thread's) but loopback ones stand for them, as the eBPF datapath takes
// them; with a host_ipv6, its global IPv6 addresses too.
func CheckHostIPv4In(nsPath string, s State) error {
	if s.HostAddrs != nil {
		return CheckHostIPv4(s.Networks, s.HostAddrs)
	}
	need := false
	for _, n := range s.Networks {
		need = need || n.HostIPv4.IsValid() || n.HostIPv6.IsValid()
	}
	if !need {
		return nil
	}
	h := &netlink.Handle{}
	if nsPath != "" {
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			return fmt.Errorf("opening namespace %s: %w", nsPath, err)
		}
		defer ns.Close()
		if h, err = netlink.NewHandleAt(ns); err != nil {
			return fmt.Errorf("netlink in %s: %w", nsPath, err)
		}
		defer h.Close()
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing host addresses: %w", err)
	}
	host := []netip.Addr{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if ok && !ip.IsLoopback() && (ip.Is4() || !ip.IsLinkLocalUnicast()) {
			host = append(host, ip)
		}
	}
	return CheckHostIPv4(s.Networks, host)
}

// global6 tells whether a is an IPv6 address the datapath translates to
// or from: not IPv4, loopback, link-local or multicast.
func global6(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified()
}

// firstGlobal6 is the first global IPv6 address of l, the zero Addr if it
// has none.
func firstGlobal6(l netlink.Link) (netip.Addr, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing IPv6 addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && global6(ip) {
			return ip, nil
		}
	}
	return netip.Addr{}, nil
}

// hostAddrs6 lists the global IPv6 addresses of the namespace.
func hostAddrs6() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
	if err != nil {
		return nil, fmt.Errorf("listing host IPv6 addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && global6(ip) {
			out = append(out, ip)
		}
	}
	return out, nil
}
