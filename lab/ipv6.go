// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The lab builds IPv4 topologies; tests, the demo and the benchmark add
// IPv6 to them with these.

// AddAddr6 puts a/bits on dev of the namespace without duplicate address
// detection (nothing else on the lab's links has the address, and DAD
// would hold it tentative for a second).
func (n *Namespace) AddAddr6(dev string, a netip.Addr, bits int) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 128)}, Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("adding %s/%d to %s in %s: %w", a, bits, dev, n.Name, err)
	}
	return nil
}

// AddRoute6 routes dst (the default route when dst is the zero prefix)
// through gw on dev of the namespace.
func (n *Namespace) AddRoute6(dev string, dst netip.Prefix, gw netip.Addr) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if dst.IsValid() && dst.Bits() > 0 {
		r.Dst = &net.IPNet{IP: net.IP(dst.Addr().AsSlice()), Mask: net.CIDRMask(dst.Bits(), 128)}
	} else {
		r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("adding the IPv6 route to %v via %s in %s: %w", dst, gw, n.Name, err)
	}
	return nil
}
