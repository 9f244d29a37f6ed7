// SPDX-License-Identifier: Apache-2.0

// Package lab builds a Docker-like network topology out of Linux network
// namespaces, for bpfnet's tests, demo and benchmark.
//
// What it builds (all names carry a short per-run prefix, see NewPrefix):
//
//   - a "host" namespace <prefix>-host standing in for the Docker host,
//     with net.ipv4.ip_forward=1 and lo up;
//   - bridges <prefix>-br0… in the host namespace, each owning an IPv4
//     subnet with the gateway (.1 by default) on the bridge;
//   - container namespaces <prefix>-c0…, each attached to a bridge with a
//     veth pair the way Docker does it: the pair is created in the host
//     namespace (host end <prefix>v<i>, enslaved to the bridge), the other
//     end is moved into the container and renamed eth0, gets an address of
//     the bridge subnet and a default route via the gateway;
//   - external namespaces <prefix>-x0… joined to the host namespace by an
//     uplink veth (<prefix>u<i> on the host side, eth0 outside). An external
//     namespace only knows its uplink subnet: it has no route to the
//     container subnets. The host namespace's default route points at the
//     first external namespace, which plays the Internet gateway.
//
// What it needs: root (CAP_SYS_ADMIN and CAP_NET_ADMIN), a writable /run,
// and nsenter(1) for Namespace.Command.
//
// What it does not do: it never changes the real host's network namespace
// (it only bind-mounts new namespaces under /run/netns and keeps a state
// record under /run/bpfnet-lab); it installs no NAT, iptables or eBPF — that
// is what the code under test is for; it is IPv4 only.
//
// Cleanup: Topology.Close (registered automatically by Setup) removes
// everything with the prefix; Sweep removes topologies whose creating
// process died without cleaning up, e.g. after `go test -timeout`.
package lab

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Config describes a topology. The zero value is valid: one bridge, no
// containers, one external namespace.
type Config struct {
	// Prefix names everything created; "" picks a fresh one with NewPrefix.
	Prefix string
	// Bridges in the host namespace; nil means one bridge on 172.30.0.0/24.
	Bridges []BridgeConfig
	// Containers attached to the bridges.
	Containers []ContainerConfig
	// Externals joined to the host by an uplink; nil means one on
	// 10.231.0.0/24.
	Externals []ExternalConfig
	// MTU of the bridges and of every veth; 0 keeps the kernel default.
	MTU int
}

// BridgeConfig describes a bridge. All fields are optional.
type BridgeConfig struct {
	// Name suffix: the bridge is called <prefix>-<Name>; default "br<i>".
	// The whole name must fit in 15 bytes.
	Name string
	// Subnet in CIDR form; default 172.30.<i>.0/24.
	Subnet string
	// Gateway address, put on the bridge; default the first host address.
	Gateway string
}

// ContainerConfig describes a container namespace.
type ContainerConfig struct {
	// Name suffix: the namespace is called <prefix>-<Name>; default "c<i>".
	Name string
	// Bridge is the index in Config.Bridges of the bridge to attach to.
	Bridge int
	// Addr in the bridge subnet; default the next free address from .2.
	Addr string
}

// ExternalConfig describes an external namespace and its uplink.
type ExternalConfig struct {
	// Name suffix: the namespace is called <prefix>-<Name>; default "x<i>".
	Name string
	// Subnet of the uplink in CIDR form; default 10.231.<i>.0/24.
	Subnet string
	// HostAddr is the host namespace's uplink address; default .1.
	HostAddr string
	// Addr is the external namespace's address; default .2.
	Addr string
}

// Topology is a built topology. All fields are read-only.
type Topology struct {
	Prefix     string
	Host       *Namespace
	Bridges    []*Bridge
	Containers []*Container
	Externals  []*External
}

// BridgeNames are the names of the topology's bridges, in order.
func (t *Topology) BridgeNames() []string {
	var names []string
	for _, b := range t.Bridges {
		names = append(names, b.Name)
	}
	return names
}

// Bridge is a bridge in the host namespace.
type Bridge struct {
	Name    string
	Index   int // ifindex in the host namespace
	Subnet  *net.IPNet
	Gateway net.IP
	// MAC is set explicitly at creation so that it does not change when
	// ports are added (a bridge with a kernel-chosen MAC takes the lowest
	// MAC of its ports).
	MAC net.HardwareAddr
}

// Container is a container namespace attached to a bridge.
type Container struct {
	Namespace
	Addr          net.IP           // address of eth0
	Bridge        *Bridge          // bridge it is attached to
	HostVeth      string           // host end of the veth, in the host namespace
	HostVethIndex int              // ifindex of HostVeth in the host namespace
	MAC           net.HardwareAddr // MAC of eth0
	Index         int              // ifindex of eth0 in the container namespace
}

// External is a namespace outside the host, reachable through an uplink.
type External struct {
	Namespace
	Addr        net.IP     // address of eth0 in the external namespace
	HostAddr    net.IP     // address of Uplink in the host namespace
	Subnet      *net.IPNet // uplink subnet
	Uplink      string     // host end of the uplink veth, in the host namespace
	UplinkIndex int        // ifindex of Uplink in the host namespace
}

// Setup builds a topology with New, fails the test if that fails, and
// registers Close with tb.Cleanup so that everything is removed even when
// the test fails.
func Setup(tb testing.TB, cfg Config) *Topology {
	tb.Helper()
	t, err := New(cfg)
	if err != nil {
		tb.Fatalf("building lab topology: %v", err)
	}
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("removing lab topology %s: %v", t.Prefix, err)
		}
	})
	return t
}

// New builds the topology described by cfg. It first removes any leftover
// with the same prefix. On error it removes whatever it had created.
func New(cfg Config) (_ *Topology, err error) {
	if cfg.Prefix != "" {
		// Validate before touching anything.
		if _, err := makePlan(cfg); err != nil {
			return nil, err
		}
		if err := Cleanup(cfg.Prefix); err != nil {
			return nil, fmt.Errorf("removing leftovers: %w", err)
		}
		if err := claimPrefix(cfg.Prefix); err != nil {
			return nil, err
		}
	} else if cfg.Prefix, err = claimNewPrefix(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := Cleanup(cfg.Prefix); cerr != nil {
				err = errors.Join(err, fmt.Errorf("removing partial topology: %w", cerr))
			}
		}
	}()
	p, err := makePlan(cfg)
	if err != nil {
		return nil, err
	}
	t, err := build(p)
	if err != nil {
		return nil, fmt.Errorf("building topology %s: %w", p.prefix, err)
	}
	return t, nil
}

// claimNewPrefix picks a prefix nobody uses and creates its state record.
// The record's atomic creation makes two concurrent runs that drew the
// same prefix fail over to another one.
func claimNewPrefix() (string, error) {
	var err error
	for range 20 {
		prefix := NewPrefix()
		if prefixInUse(prefix) {
			continue
		}
		if err = claimPrefix(prefix); err == nil {
			return prefix, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("finding an unused prefix: %w", err)
}

// Close removes everything with the topology's prefix. It is idempotent.
// Sockets still open in the namespaces keep them alive (anonymously) until
// they are closed.
func (t *Topology) Close() error {
	return Cleanup(t.Prefix)
}

// nsHandle is a namespace with an open netlink handle and fd.
type nsHandle struct {
	*netlink.Handle
	ns Namespace
	fd netns.NsHandle
}

func openNS(ns Namespace) (*nsHandle, error) {
	fd, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", ns.Name, err)
	}
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("creating netlink handle in namespace %s: %w", ns.Name, err)
	}
	return &nsHandle{Handle: h, ns: ns, fd: fd}, nil
}

func (h *nsHandle) close() {
	h.Handle.Close()
	h.fd.Close()
}

// newNS creates a namespace and brings its lo up.
func newNS(name string) (*nsHandle, error) {
	ns, err := createNamespace(name)
	if err != nil {
		return nil, err
	}
	h, err := openNS(ns)
	if err != nil {
		return nil, err
	}
	if err := h.setUp("lo"); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *nsHandle) setUp(name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s in namespace %s: %w", name, h.ns.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up in namespace %s: %w", name, h.ns.Name, err)
	}
	return nil
}

func (h *nsHandle) addAddr(name string, ip net.IP, subnet *net.IPNet) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s in namespace %s: %w", name, h.ns.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: subnet.Mask}}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("adding address %s to %s in namespace %s: %w", a.IPNet, name, h.ns.Name, err)
	}
	return nil
}

// vethInto creates a veth pair in the host namespace (hostName, tmpName),
// moves tmpName into dst and renames it eth0 there, as Docker does.
// It returns the host end and the moved end (as seen in dst).
func vethInto(host, dst *nsHandle, hostName, tmpName string, mtu int) (netlink.Link, netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	if err := host.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: tmpName}); err != nil {
		return nil, nil, fmt.Errorf("creating veth pair %s/%s: %w", hostName, tmpName, err)
	}
	peer, err := host.LinkByName(tmpName)
	if err != nil {
		return nil, nil, fmt.Errorf("finding veth peer %s: %w", tmpName, err)
	}
	if err := host.LinkSetNsFd(peer, int(dst.fd)); err != nil {
		return nil, nil, fmt.Errorf("moving %s into namespace %s: %w", tmpName, dst.ns.Name, err)
	}
	moved, err := dst.LinkByName(tmpName)
	if err != nil {
		return nil, nil, fmt.Errorf("finding %s in namespace %s: %w", tmpName, dst.ns.Name, err)
	}
	if err := dst.LinkSetName(moved, containerIfName); err != nil {
		return nil, nil, fmt.Errorf("renaming %s to %s in namespace %s: %w", tmpName, containerIfName, dst.ns.Name, err)
	}
	if moved, err = dst.LinkByName(containerIfName); err != nil {
		return nil, nil, fmt.Errorf("finding %s in namespace %s: %w", containerIfName, dst.ns.Name, err)
	}
	hostEnd, err := host.LinkByName(hostName)
	if err != nil {
		return nil, nil, fmt.Errorf("finding %s: %w", hostName, err)
	}
	return hostEnd, moved, nil
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("generating MAC address: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// buildHook, when set (by tests), is called at named points of build; an
// error it returns aborts the build as a kernel error would.
var buildHook func(stage string) error

func hook(stage string) error {
	if buildHook == nil {
		return nil
	}
	if err := buildHook(stage); err != nil {
		return fmt.Errorf("at %s: %w", stage, err)
	}
	return nil
}

// build creates the namespaces and links of p. Cleanup of partial results
// is the caller's job.
func build(p *plan) (*Topology, error) {
	t := &Topology{Prefix: p.prefix}

	host, err := newNS(p.host)
	if err != nil {
		return nil, err
	}
	defer host.close()
	hostNS := host.ns
	t.Host = &hostNS
	if err := t.Host.WriteSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}

	for _, bp := range p.bridges {
		mac, err := randomMAC()
		if err != nil {
			return nil, err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = bp.name
		attrs.MTU = p.mtu
		attrs.HardwareAddr = mac
		if err := host.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("creating bridge %s: %w", bp.name, err)
		}
		if err := host.addAddr(bp.name, bp.gateway, bp.subnet); err != nil {
			return nil, err
		}
		if err := host.setUp(bp.name); err != nil {
			return nil, err
		}
		l, err := host.LinkByName(bp.name)
		if err != nil {
			return nil, fmt.Errorf("finding bridge %s: %w", bp.name, err)
		}
		t.Bridges = append(t.Bridges, &Bridge{
			Name:    bp.name,
			Index:   l.Attrs().Index,
			Subnet:  bp.subnet,
			Gateway: bp.gateway,
			MAC:     l.Attrs().HardwareAddr,
		})
	}

	for _, ep := range p.externals {
		ext, err := newNS(ep.ns)
		if err != nil {
			return nil, err
		}
		e, err := buildExternal(host, ext, ep, p.mtu)
		ext.close()
		if err != nil {
			return nil, err
		}
		t.Externals = append(t.Externals, e)
	}
	if len(t.Externals) > 0 {
		gw := t.Externals[0]
		r := &netlink.Route{LinkIndex: gw.UplinkIndex, Gw: gw.Addr}
		if err := host.RouteAdd(r); err != nil {
			return nil, fmt.Errorf("adding default route via %s dev %s in host namespace: %w", gw.Addr, gw.Uplink, err)
		}
	}

	for _, cp := range p.containers {
		cns, err := newNS(cp.ns)
		if err != nil {
			return nil, err
		}
		c, err := buildContainer(host, cns, cp, t.Bridges[cp.bridge], p.mtu)
		cns.close()
		if err != nil {
			return nil, err
		}
		t.Containers = append(t.Containers, c)
		if err := hook("container " + c.Name); err != nil {
			return nil, err
		}
	}

	// Read the bridge MACs back now that all ports are attached, so that
	// what we report is what the kernel uses.
	for _, b := range t.Bridges {
		l, err := host.LinkByName(b.Name)
		if err != nil {
			return nil, fmt.Errorf("finding bridge %s: %w", b.Name, err)
		}
		b.MAC = l.Attrs().HardwareAddr
	}
	return t, nil
}

func buildExternal(host, ext *nsHandle, ep externalPlan, mtu int) (*External, error) {
	uplink, _, err := vethInto(host, ext, ep.uplink, ep.peerTmp, mtu)
	if err != nil {
		return nil, err
	}
	if err := ext.addAddr(containerIfName, ep.addr, ep.subnet); err != nil {
		return nil, err
	}
	if err := ext.setUp(containerIfName); err != nil {
		return nil, err
	}
	if err := host.addAddr(ep.uplink, ep.hostAddr, ep.subnet); err != nil {
		return nil, err
	}
	if err := host.setUp(ep.uplink); err != nil {
		return nil, err
	}
	return &External{
		Namespace:   ext.ns,
		Addr:        ep.addr,
		HostAddr:    ep.hostAddr,
		Subnet:      ep.subnet,
		Uplink:      ep.uplink,
		UplinkIndex: uplink.Attrs().Index,
	}, nil
}

func buildContainer(host, cns *nsHandle, cp containerPlan, br *Bridge, mtu int) (*Container, error) {
	hostEnd, eth0, err := vethInto(host, cns, cp.hostVeth, cp.peerTmp, mtu)
	if err != nil {
		return nil, err
	}
	if err := host.LinkSetMasterByIndex(hostEnd, br.Index); err != nil {
		return nil, fmt.Errorf("enslaving %s to bridge %s: %w", cp.hostVeth, br.Name, err)
	}
	if err := cns.addAddr(containerIfName, cp.addr, br.Subnet); err != nil {
		return nil, err
	}
	if err := cns.setUp(containerIfName); err != nil {
		return nil, err
	}
	r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: br.Gateway}
	if err := cns.RouteAdd(r); err != nil {
		return nil, fmt.Errorf("adding default route via %s in namespace %s: %w", br.Gateway, cns.ns.Name, err)
	}
	if err := host.setUp(cp.hostVeth); err != nil {
		return nil, err
	}
	return &Container{
		Namespace:     cns.ns,
		Addr:          cp.addr,
		Bridge:        br,
		HostVeth:      cp.hostVeth,
		HostVethIndex: hostEnd.Attrs().Index,
		MAC:           eth0.Attrs().HardwareAddr,
		Index:         eth0.Attrs().Index,
	}, nil
}
