// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Peer is the container end of a bridge port, read from the container's
// own network namespace: what bpfnet needs when no container runtime
// tells it (standalone mode).
type Peer struct {
	HostVeth  string
	HostIndex int
	Addr      netip.Addr // first IPv4 address of the container end
	MAC       net.HardwareAddr
}

// nsDirs are where runtimes keep namespace handles: ip netns, Docker, and
// every process's own.
var nsGlobs = []string{"/run/netns/*", "/var/run/docker/netns/*", "/proc/[0-9]*/ns/net"}

// DiscoverPeers finds, for each veth port of bridge in the calling thread's
// namespace, the address and MAC of its other end. The other end's
// namespace is found by its namespace id (IFLA_LINK_NETNSID) among the
// namespaces of nsGlobs. Ports whose other end cannot be found, or has no
// IPv4 address, are left out.
func DiscoverPeers(bridge string) ([]Peer, error) {
	ports, err := BridgePorts(nil, bridge)
	if err != nil {
		return nil, err
	}
	if len(ports) == 0 {
		return nil, nil
	}
	byID, err := namespacesByID()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, h := range byID {
			h.Close()
		}
	}()
	var out []Peer
	for _, p := range ports {
		a := p.Attrs()
		h, ok := byID[a.NetNsID]
		if !ok {
			continue
		}
		peer, err := readPeer(h, a.ParentIndex)
		if err != nil {
			return nil, fmt.Errorf("reading the other end of %s: %w", a.Name, err)
		}
		if !peer.Addr.IsValid() {
			continue
		}
		peer.HostVeth = a.Name
		peer.HostIndex = a.Index
		out = append(out, peer)
	}
	return out, nil
}

func readPeer(ns netns.NsHandle, ifindex int) (Peer, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Peer{}, err
	}
	defer h.Close()
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return Peer{}, err
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return Peer{}, err
	}
	p := Peer{MAC: l.Attrs().HardwareAddr}
	if len(addrs) > 0 {
		p.Addr, _ = netip.AddrFromSlice(addrs[0].IP.To4())
	}
	return p, nil
}

// namespacesByID opens every namespace of nsGlobs that has an id in the
// calling thread's namespace, keyed by that id.
func namespacesByID() (map[int]netns.NsHandle, error) {
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	out := map[int]netns.NsHandle{}
	for _, g := range nsGlobs {
		paths, err := filepath.Glob(g)
		if err != nil {
			return nil, err
		}
		for _, path := range paths {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				continue // a process that went away, or no permission
			}
			var st unix.Stat_t
			if unix.Fstat(fd, &st) != nil || seen[ino{st.Dev, st.Ino}] {
				unix.Close(fd)
				continue
			}
			seen[ino{st.Dev, st.Ino}] = true
			id, err := netlink.GetNetNsIdByFd(fd)
			if err != nil || id < 0 {
				unix.Close(fd)
				continue
			}
			out[id] = netns.NsHandle(fd)
		}
	}
	return out, nil
}
