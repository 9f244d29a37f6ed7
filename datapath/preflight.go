// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PreflightOptions are what Preflight checks beyond the State.
type PreflightOptions struct {
	// PinPath is the bpffs folder the datapath will pin in; "" checks
	// none (packet tests, or a datapath that pins nothing).
	PinPath string
	// Masquerade are the CIDRs asked to be masqueraded (bpfnet run
	// --masquerade); none may cover an uplink's own address.
	Masquerade []netip.Prefix
}

// Preflight checks s against the kernel of the calling thread's namespace
// before anything is loaded, pinned or attached: Validate's checks, then
// that every bridge and host veth exists, that every uplink exists and
// has the IPv4 address masquerade leaves with, that neither a masqueraded
// network nor a --masquerade CIDR covers an uplink's own address, and
// that the pin path is on bpffs. It changes nothing. Callers run it
// before NewEBPF or NewIptables; Apply itself only validates, as the
// iptables datapath also programs states of namespaces the caller is not
// in.
func Preflight(s State, o PreflightOptions) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, n := range s.Networks {
		l, err := netlink.LinkByName(n.Bridge)
		if err != nil {
			return fmt.Errorf("network %s: bridge %s does not exist", n.Name, n.Bridge)
		}
		if l.Type() != "bridge" {
			return fmt.Errorf("network %s: %s is a %s device, not a bridge", n.Name, n.Bridge, l.Type())
		}
	}
	for _, e := range s.Endpoints {
		if _, err := netlink.LinkByName(e.HostVeth); err != nil {
			return fmt.Errorf("endpoint %s: host veth %s does not exist", e.Container, e.HostVeth)
		}
	}
	for _, u := range s.Uplinks {
		l, err := netlink.LinkByName(u.Name)
		if err != nil {
			return fmt.Errorf("uplink %s does not exist", u.Name)
		}
		own := []netip.Addr{}
		if u.Addr.IsValid() {
			own = append(own, u.Addr)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("uplink %s: listing addresses: %w", u.Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				own = append(own, ip)
			}
		}
		if len(own) == 0 {
			return fmt.Errorf("uplink %s has no IPv4 address to masquerade with", u.Name)
		}
		for _, a := range own {
			for _, p := range o.Masquerade {
				if p.Contains(a) {
					return fmt.Errorf("--masquerade %s covers the address %s of uplink %s: "+
						"the host's own traffic would be taken for a container's", p, a, u.Name)
				}
			}
			for _, n := range s.Networks {
				if n.Masquerade && n.Subnet.Contains(a) {
					return fmt.Errorf("network %s: masqueraded subnet %s covers the address %s of uplink %s", n.Name, n.Subnet, a, u.Name)
				}
			}
		}
	}
	if o.PinPath != "" {
		if err := CheckBPFFS(o.PinPath); err != nil {
			return err
		}
	}
	return nil
}

// CheckBPFFS checks that path, or its nearest existing parent when it does
// not exist yet, is on a bpf filesystem: pins and the records kept next to
// them can live nowhere else, and creating folders elsewhere first would
// leave them behind.
func CheckBPFFS(path string) error {
	dir, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("pin path %s: %w", path, err)
	}
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("pin path %s is not on bpffs (%s is on another filesystem; mount one with mount -t bpf bpf /sys/fs/bpf)", path, dir)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pin path %s: %s: %w", path, dir, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("pin path %s: no existing parent", path)
		}
		dir = parent
	}
}
