// SPDX-License-Identifier: Apache-2.0

package docker

// Containers that have no veth of their own on a bridge network served:
//
//   - --network host: counted by the cgroup skb programs on the
//     container's cgroup (every interface but loopback); no NAT, no port
//     to publish;
//   - macvlan and ipvlan networks: counted the same way, on the container's
//     device of that network only. tc on the parent would not do: the
//     parent sees all its children's traffic mixed, and child-to-child
//     traffic never touches it; tc inside each container's namespace would,
//     but would follow every namespace's devices. The socket's cgroup says
//     whose a packet is wherever it goes. bpfnet does no NAT for them (their
//     subnets are not among the masqueraded bridge networks);
//   - --network container:<owner>: the container's packets are its owner's,
//     on the owner's veth or in the owner's cgroup account (then the
//     programs are attached to this container's cgroup too, counting for
//     the owner); it is listed as sharing the owner's network;
//   - --network none: listed, nothing to count.
//
// The cgroup of a container is the "0::" line of /proc/<pid>/cgroup below
// the cgroup v2 root (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
// system): <cgroup-parent>/<id> with Docker's cgroupfs driver,
// system.slice/docker-<id>.scope with systemd. A path without the
// container's id is not the container's own (a runtime that does not
// place it in the v2 hierarchy): such a container is left out, since its
// cgroup holds other processes too.

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/docker/docker/api/types/container"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/bpfnet/bpfnet/datapath"
)

// Modes are the containers of a snapshot without a veth on a served
// bridge network (see datapath.State).
type Modes struct {
	CgroupEndpoints []datapath.CgroupEndpoint
	Shared          []datapath.SharedNetns
	NoNetwork       []datapath.NoNetwork
}

// modeKernel is what the modes need of the kernel besides kernel; a
// kernel that does not have it gets no cgroup endpoints.
type modeKernel interface {
	// cgroup returns the absolute cgroup v2 folder of process pid, or an
	// error matching errGone.
	cgroup(pid int) (string, error)
	// device returns the interface that has addr in the network namespace
	// of process pid: its name, ifindex there and link type ("macvlan",
	// "ipvlan", "veth"...).
	device(pid int, addr netip.Addr) (name string, index int, kind string, err error)
}

func (netlinkKernel) cgroup(pid int) (string, error) {
	p, err := datapath.ProcessCgroup("", pid)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return "", errGone
	}
	return p, err
}

func (netlinkKernel) device(pid int, addr netip.Addr) (string, int, string, error) {
	path := fmt.Sprintf("/proc/%d/ns/net", pid)
	ns, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return "", 0, "", errGone
		}
		return "", 0, "", fmt.Errorf("opening %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", 0, "", fmt.Errorf("netlink in the namespace of pid %d: %w", pid, err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", 0, "", fmt.Errorf("listing addresses of pid %d: %w", pid, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
			l, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", 0, "", fmt.Errorf("interface %d of pid %d: %w", a.LinkIndex, pid, err)
			}
			return l.Attrs().Name, l.Attrs().Index, l.Type(), nil
		}
	}
	return "", 0, "", fmt.Errorf("no interface with %s in the namespace of pid %d", addr, pid)
}

// idRe is what datapath.State takes as a container id.
var idRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// ownCgroup checks that cgroup is container id's own.
func ownCgroup(cgroup, id string) error {
	if !strings.Contains(cgroup, id) {
		return fmt.Errorf("cgroup %s is not the container's own (no %s in it)", cgroup, id)
	}
	return nil
}

// convertModes finds, among the running containers, those in host mode,
// on macvlan or ipvlan networks, sharing another's network namespace, or
// without a network. byID and byName are the bridge networks served (their
// endpoints are the TC datapath's).
func convertModes(k kernel, log *slog.Logger, byID, byName map[string]*bridgeNet, ctrs []container.InspectResponse) Modes {
	var m Modes
	mk, _ := k.(modeKernel)
	names := map[string]string{} // id -> name of the running containers
	for _, c := range ctrs {
		if c.ContainerJSONBase != nil {
			names[c.ID] = strings.TrimPrefix(c.Name, "/")
		}
	}
	cgroups := map[string]string{} // cgroup -> container name
	cgroupOf := func(name, id string, pid int) (string, error) {
		if mk == nil {
			return "", errors.New("no cgroup lookup in this kernel")
		}
		cg, err := mk.cgroup(pid)
		if err != nil {
			return "", err
		}
		if err := ownCgroup(cg, id); err != nil {
			return "", err
		}
		if other, dup := cgroups[cg]; dup {
			return "", fmt.Errorf("cgroup %s is %s's too", cg, other)
		}
		cgroups[cg] = name
		return cg, nil
	}
	for _, c := range ctrs {
		if c.ContainerJSONBase == nil || c.State == nil || !c.State.Running || c.State.Pid <= 0 || c.HostConfig == nil {
			continue
		}
		name := strings.TrimPrefix(c.Name, "/")
		var labels map[string]string
		if c.Config != nil && len(c.Config.Labels) > 0 {
			labels = maps.Clone(c.Config.Labels)
		}
		mode := c.HostConfig.NetworkMode
		switch {
		case mode.IsHost():
			cg, err := cgroupOf(name, c.ID, c.State.Pid)
			if err != nil {
				if !errors.Is(err, errGone) {
					log.Warn("docker host-mode container left out", "container", name, "error", err)
				}
				continue
			}
			m.CgroupEndpoints = append(m.CgroupEndpoints, datapath.CgroupEndpoint{
				Container: name, ContainerID: c.ID, Mode: datapath.ModeHost, Network: "host",
				CgroupPath: cg, Labels: labels,
			})
		case mode.IsNone():
			m.NoNetwork = append(m.NoNetwork, datapath.NoNetwork{Container: name, ContainerID: c.ID, Labels: labels})
		case mode.IsContainer():
			owner := mode.ConnectedContainer()
			ownerName, ok := names[owner]
			if !ok {
				// A name, or an owner that is not running.
				for id, n := range names {
					if n == owner {
						owner, ownerName, ok = id, n, true
					}
				}
			}
			if !ok {
				ownerName = owner
				if len(ownerName) > 12 {
					ownerName = ownerName[:12]
				}
			}
			if !idRe.MatchString(owner) {
				log.Warn("docker container sharing a network namespace left out: owner unknown", "container", name, "owner", owner)
				continue
			}
			sh := datapath.SharedNetns{Container: name, ContainerID: c.ID, Owner: ownerName, OwnerID: owner, Labels: labels}
			if cg, err := cgroupOf(name, c.ID, c.State.Pid); err == nil {
				sh.CgroupPath = cg
			} else if !errors.Is(err, errGone) {
				log.Warn("docker container sharing a network namespace: its own packets will not be counted if its owner's are counted by cgroup", "container", name, "owner", ownerName, "error", err)
			}
			m.Shared = append(m.Shared, sh)
		default:
			eps := macvlanEndpoints(mk, log, byID, byName, c, name)
			if len(eps) == 0 {
				continue
			}
			cg, err := cgroupOf(name, c.ID, c.State.Pid)
			if err != nil {
				if !errors.Is(err, errGone) {
					log.Warn("docker macvlan/ipvlan endpoints left out", "container", name, "error", err)
				}
				continue
			}
			for i := range eps {
				eps[i].CgroupPath, eps[i].Labels = cg, labels
			}
			m.CgroupEndpoints = append(m.CgroupEndpoints, eps...)
		}
	}
	// A container sharing the namespace of one that is not running any
	// more is still listed (its namespace lives on); one that names an
	// unknown owner too.
	return m
}

// macvlanEndpoints returns a container's interfaces on the networks that
// are not bridges served whose device, in the container's namespace, is a
// macvlan or an ipvlan.
func macvlanEndpoints(mk modeKernel, log *slog.Logger, byID, byName map[string]*bridgeNet, c container.InspectResponse, name string) []datapath.CgroupEndpoint {
	if c.NetworkSettings == nil || mk == nil {
		return nil
	}
	var out []datapath.CgroupEndpoint
	seen := map[int]bool{}
	for _, netName := range slices.Sorted(maps.Keys(c.NetworkSettings.Networks)) {
		es := c.NetworkSettings.Networks[netName]
		if es == nil || byID[es.NetworkID] != nil || byName[netName] != nil {
			continue // a bridge network served: the TC datapath's
		}
		addr := parseAddr(es.IPAddress)
		if !addr.Is4() {
			continue
		}
		dev, idx, kind, err := mk.device(c.State.Pid, addr)
		if errors.Is(err, errGone) {
			return nil
		}
		if err != nil {
			log.Warn("docker endpoint left out", "container", name, "network", netName, "error", err)
			continue
		}
		if kind != datapath.ModeMacvlan && kind != datapath.ModeIpvlan {
			continue // a bridge left out, or another driver's veth
		}
		if seen[idx] {
			continue
		}
		seen[idx] = true
		out = append(out, datapath.CgroupEndpoint{
			Container: name, ContainerID: c.ID, Mode: kind, Network: netName,
			Interface: dev, Ifindex: idx, Addr: addr,
		})
	}
	return out
}
