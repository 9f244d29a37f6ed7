// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// kernel is what State asks the kernel; tests replace it.
type kernel interface {
	// bridge returns the ifindex and IPv4 addresses of a bridge in the
	// calling thread's namespace, or an error matching errLinkNotFound.
	bridge(name string) (index int, addrs []netip.Prefix, err error)
	// hostVeth returns the host end, in the calling thread's namespace,
	// of the interface with mac (when mac is nil: the one holding addr)
	// in the network namespace of process pid, and the ifindex of its
	// master. An error matching errGone means the process or its
	// namespace went away.
	hostVeth(pid int, mac net.HardwareAddr, addr netip.Addr) (name string, master int, err error)
}

var (
	errGone         = errors.New("container process gone")
	errLinkNotFound = errors.New("link not found")
)

// netlinkKernel is the kernel through netlink.
type netlinkKernel struct{}

func (netlinkKernel) bridge(name string) (int, []netip.Prefix, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return 0, nil, fmt.Errorf("bridge %s: %w", name, errLinkNotFound)
		}
		return 0, nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	// Both families: a dual-stack network's IPv6 gateway is on the
	// bridge too.
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return 0, nil, fmt.Errorf("bridge %s: listing addresses: %w", name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return l.Attrs().Index, out, nil
}

func (netlinkKernel) hostVeth(pid int, mac net.HardwareAddr, addr netip.Addr) (string, int, error) {
	path := fmt.Sprintf("/proc/%d/ns/net", pid)
	ns, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return "", 0, errGone
		}
		return "", 0, fmt.Errorf("opening %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", 0, fmt.Errorf("netlink in the namespace of pid %d: %w", pid, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return "", 0, fmt.Errorf("listing links of pid %d: %w", pid, err)
	}
	// A container has an interface for each of its networks: the one of
	// this endpoint is found by its MAC, or without one (Docker did not
	// say) by its address, never by its name (eth0 is only the first).
	var inner netlink.Link
	for _, l := range links {
		if mac != nil {
			if l.Attrs().HardwareAddr.String() == mac.String() {
				inner = l
				break
			}
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return "", 0, fmt.Errorf("listing the addresses of %s of pid %d: %w", l.Attrs().Name, pid, err)
		}
		if slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.Equal(addr.AsSlice()) }) {
			inner = l
			break
		}
	}
	want := "address " + addr.String()
	if mac != nil {
		want = "MAC " + mac.String()
	}
	if inner == nil {
		return "", 0, fmt.Errorf("no interface with %s in the namespace of pid %d", want, pid)
	}
	ia := inner.Attrs()
	if inner.Type() != "veth" || ia.ParentIndex == 0 {
		return "", 0, fmt.Errorf("%s (%s) in the namespace of pid %d is a %s, not a veth", ia.Name, want, pid, inner.Type())
	}
	// ParentIndex (IFLA_LINK) of a veth is its peer's ifindex in the
	// peer's namespace, which must be ours.
	host, err := netlink.LinkByIndex(ia.ParentIndex)
	if err != nil {
		return "", 0, fmt.Errorf("the peer of %s (ifindex %d) is not in this network namespace (bpfnet must run in dockerd's): %w", ia.Name, ia.ParentIndex, err)
	}
	ha := host.Attrs()
	// Ifindexes are per namespace: check that what we found points back.
	if host.Type() != "veth" || ha.ParentIndex != ia.Index {
		return "", 0, fmt.Errorf("ifindex %d here (%s) is not the peer of %s in the namespace of pid %d (bpfnet must run in dockerd's network namespace)", ia.ParentIndex, ha.Name, ia.Name, pid)
	}
	return ha.Name, ha.MasterIndex, nil
}
