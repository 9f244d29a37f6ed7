// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
)

// Network modes of containers that have no veth of their own on a bridge,
// as CgroupEndpoint.Mode and the status records name them.
const (
	// ModeHost is --network host: the container uses the host's network
	// namespace.
	ModeHost = "host"
	// ModeMacvlan and ModeIpvlan are networks of Docker's macvlan and
	// ipvlan drivers: the container's device hangs off a parent interface.
	ModeMacvlan = "macvlan"
	ModeIpvlan  = "ipvlan"
	// ModeContainer is --network container:<owner> (SharedNetns).
	ModeContainer = "container"
	// ModeNone is --network none (NoNetwork).
	ModeNone = "none"
)

// CgroupEndpoint is a container's interface that no veth of its own
// carries, whose traffic cgroup skb programs on the container's cgroup
// count (bpf/cgroup_skb.c).
type CgroupEndpoint struct {
	Container   string // name, for display and metrics
	ContainerID string // the runtime's full id
	// Mode is ModeHost, ModeMacvlan or ModeIpvlan.
	Mode string
	// Network is the runtime's network: "host", or the name of the
	// macvlan or ipvlan network.
	Network string
	// Interface is the container's device on Network, in the container's
	// network namespace, and Ifindex its index there. In host mode they
	// are "" and 0: every interface of the host but loopback counts.
	Interface string
	Ifindex   int
	// Addr is the container's address on Network; the zero Addr in host
	// mode.
	Addr netip.Addr
	// CgroupPath is the container's cgroup v2 folder, absolute
	// (/sys/fs/cgroup/unified/docker/<id>). A container with several
	// endpoints has one cgroup.
	CgroupPath string
	// Labels are the runtime's labels of the container.
	Labels map[string]string
}

// SharedNetns is a container in another container's network namespace
// (--network container:<owner>). Its packets are the owner's: on the
// owner's veth, or, when the owner's traffic is counted by cgroup (host
// mode, macvlan), in the owner's account, for which the programs are
// attached to its own cgroup too.
type SharedNetns struct {
	Container   string
	ContainerID string
	Owner       string // the owner's name
	OwnerID     string // the owner's full id
	// CgroupPath is the container's own cgroup v2 folder; "" when unknown
	// (then its packets are counted only when the owner has a veth).
	CgroupPath string
	Labels     map[string]string
}

// NoNetwork is a container without a network (--network none): it has
// only loopback and nothing to count.
type NoNetwork struct {
	Container   string
	ContainerID string
	Labels      map[string]string
}

// containerIDRe is what a container id must look like to name its pins
// (bpffs refuses '.', and '/' would make folders).
var containerIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

func validCgroupPath(p string) bool {
	return path.IsAbs(p) && path.Clean(p) == p && p != "/"
}

// validateModes checks CgroupEndpoints, Shared and NoNetwork.
func (s *State) validateModes() error {
	type ctr struct {
		name, cgroup, mode string
	}
	ctrs := map[string]*ctr{}
	cgroups := map[string]string{} // cgroup path -> container id
	claim := func(id, cgroup string) error {
		if cgroup == "" {
			return nil
		}
		if other, ok := cgroups[cgroup]; ok && other != id {
			return fmt.Errorf("cgroup %s is both container %s's and %s's", cgroup, other, id)
		}
		cgroups[cgroup] = id
		return nil
	}
	type ifkey struct {
		id      string
		ifindex int
	}
	ifs := map[ifkey]bool{}
	for _, e := range s.CgroupEndpoints {
		if e.Container == "" || !containerIDRe.MatchString(e.ContainerID) {
			return fmt.Errorf("cgroup endpoint %q (id %q): a name and an id of [A-Za-z0-9_-] are required", e.Container, e.ContainerID)
		}
		if !validCgroupPath(e.CgroupPath) {
			return fmt.Errorf("cgroup endpoint %s: cgroup %q is not an absolute, clean path below /", e.Container, e.CgroupPath)
		}
		switch e.Mode {
		case ModeHost:
			if e.Ifindex != 0 || e.Interface != "" {
				return fmt.Errorf("cgroup endpoint %s: host mode counts every interface; interface %q (ifindex %d) given", e.Container, e.Interface, e.Ifindex)
			}
		case ModeMacvlan, ModeIpvlan:
			if e.Ifindex <= 0 || e.Interface == "" {
				return fmt.Errorf("cgroup endpoint %s on %s: the container's %s device and its ifindex are required", e.Container, e.Network, e.Mode)
			}
		default:
			return fmt.Errorf("cgroup endpoint %s: unknown mode %q (want host, macvlan or ipvlan)", e.Container, e.Mode)
		}
		c := ctrs[e.ContainerID]
		if c == nil {
			c = &ctr{name: e.Container, cgroup: e.CgroupPath, mode: e.Mode}
			ctrs[e.ContainerID] = c
		} else {
			if c.name != e.Container || c.cgroup != e.CgroupPath {
				return fmt.Errorf("cgroup endpoint %s: container %s has two names or cgroups (%s %s, %s %s)", e.Container, e.ContainerID, c.name, c.cgroup, e.Container, e.CgroupPath)
			}
			if c.mode == ModeHost || e.Mode == ModeHost {
				return fmt.Errorf("cgroup endpoint %s: a host-mode container has no other network", e.Container)
			}
		}
		k := ifkey{e.ContainerID, e.Ifindex}
		if ifs[k] {
			return fmt.Errorf("cgroup endpoint %s: interface %d listed twice", e.Container, e.Ifindex)
		}
		ifs[k] = true
		if err := claim(e.ContainerID, e.CgroupPath); err != nil {
			return err
		}
	}
	others := map[string]string{}
	for _, sh := range s.Shared {
		if sh.Container == "" || !containerIDRe.MatchString(sh.ContainerID) || !containerIDRe.MatchString(sh.OwnerID) {
			return fmt.Errorf("shared container %q (id %q, owner %q): a name, an id and the owner's id of [A-Za-z0-9_-] are required", sh.Container, sh.ContainerID, sh.OwnerID)
		}
		if sh.OwnerID == sh.ContainerID {
			return fmt.Errorf("shared container %s: owner of its own network", sh.Container)
		}
		if sh.CgroupPath != "" && !validCgroupPath(sh.CgroupPath) {
			return fmt.Errorf("shared container %s: cgroup %q is not an absolute, clean path below /", sh.Container, sh.CgroupPath)
		}
		if _, dup := ctrs[sh.ContainerID]; dup {
			return fmt.Errorf("shared container %s also has cgroup endpoints", sh.Container)
		}
		if _, dup := others[sh.ContainerID]; dup {
			return fmt.Errorf("shared container %s listed twice", sh.Container)
		}
		others[sh.ContainerID] = ModeContainer
		if err := claim(sh.ContainerID, sh.CgroupPath); err != nil {
			return err
		}
	}
	for _, n := range s.NoNetwork {
		if n.Container == "" || !containerIDRe.MatchString(n.ContainerID) {
			return fmt.Errorf("container without network %q (id %q): a name and an id of [A-Za-z0-9_-] are required", n.Container, n.ContainerID)
		}
		if _, dup := ctrs[n.ContainerID]; dup {
			return fmt.Errorf("container %s: without network, yet it has cgroup endpoints", n.Container)
		}
		if _, dup := others[n.ContainerID]; dup {
			return fmt.Errorf("container %s listed twice among shared and networkless containers", n.Container)
		}
		others[n.ContainerID] = ModeNone
	}
	return nil
}
