// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/lab"
)

// The lab is dual stack: the IPv6 figures (TCP_RR and TCP_CRR, IPv6) run
// through the same modes as the IPv4 ones, over IPv6 addresses added to
// the lab's links (the lab package builds IPv4 topologies). Documentation
// prefixes, as the datapath's own lab tests use: the uplink in
// 2001:db8::/32, the container network in a ULA.
var (
	host6   = netip.MustParseAddr("2001:db8:231::1") // the host's uplink
	ext6    = netip.MustParseAddr("2001:db8:231::2") // the external host
	gw6     = netip.MustParseAddr("fd00:30::1")      // the bridge
	ctr6    = netip.MustParseAddr("fd00:30::2")      // the container
	subnet6 = netip.MustParsePrefix("fd00:30::/64")
)

// addIPv6 gives the lab's host, bridge, container and external host their
// IPv6 addresses and routes, the container a default route through the
// bridge, and (routed modes) the external host a route to the container
// network through the host's uplink.
func (e *env) addIPv6(routed bool) error {
	steps := []func() error{
		func() error { return e.topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1") },
		func() error { return addAddr6(e.topo.Host, e.ext.Uplink, host6) },
		func() error { return addAddr6(e.topo.Host, e.topo.Bridges[0].Name, gw6) },
		func() error { return addAddr6(&e.ext.Namespace, "eth0", ext6) },
		func() error { return addAddr6(&e.c.Namespace, "eth0", ctr6) },
		func() error { return addRoute6(&e.c.Namespace, "eth0", netip.Prefix{}, gw6) },
		func() error { return addRoute6(e.topo.Host, e.ext.Uplink, netip.Prefix{}, ext6) },
	}
	if routed {
		steps = append(steps, func() error { return addRoute6(&e.ext.Namespace, "eth0", subnet6, host6) })
	}
	for _, st := range steps {
		if err := st(); err != nil {
			return fmt.Errorf("adding IPv6 to the lab: %w", err)
		}
	}
	return nil
}

// addAddr6 puts a/64 on dev of ns without duplicate address detection
// (nothing else on the lab's links has the address, and DAD would hold
// it tentative for a second).
func addAddr6(ns *lab.Namespace, dev string, a netip.Addr) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, ns.Name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("adding %s to %s in %s: %w", a, dev, ns.Name, err)
	}
	return nil
}

// addRoute6 routes dst (the default route when dst is the zero prefix)
// through gw on dev of ns.
func addRoute6(ns *lab.Namespace, dev string, dst netip.Prefix, gw netip.Addr) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, ns.Name, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}
	if dst.IsValid() {
		r.Dst = &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 128)}
	} else {
		r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("adding the IPv6 route to %v via %s in %s: %w", dst, gw, ns.Name, err)
	}
	return nil
}
