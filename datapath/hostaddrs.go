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
