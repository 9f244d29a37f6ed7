// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/loader"
)

// Program names, as the loader pins and lists them.
const (
	ProgFromNetdev    = "from_netdev"
	ProgToNetdev      = "to_netdev"
	ProgFromContainer = "from_container"
	ProgToContainer   = "to_container"
)

// Options are the settings of the eBPF datapath, fixed at load time.
type Options struct {
	// PinPath is the bpffs folder of this datapath's state; "" keeps
	// nothing pinned (packet tests).
	PinPath string
	// FastPath redirects translated packets around the bridge, routing
	// and netfilter.
	FastPath bool
	// RedirectOnly turns NAT and tracking off and keeps only the fast-path
	// redirects and counters: the ceiling of the design, which the
	// benchmark's ebpf-redirect mode measures with the external host
	// addressing containers directly. Needs FastPath.
	RedirectOnly bool
	// NATPortMin and NATPortMax bound the masquerade source ports
	// (default DefaultNATPortMin-DefaultNATPortMax).
	NATPortMin, NATPortMax uint16
	// CTSize is the capacity of the connection-tracking table (default
	// DefaultCTSize entries, two per flow).
	CTSize uint32
	// HalfOpenSize is the capacity of the table of unassured flows
	// (ct4_syn: published-port flows whose client has not answered the
	// container yet, the whole of a SYN flood); default CTSize/8.
	HalfOpenSize uint32
	// Timeouts of connection-tracking entries; zero values take defaults.
	// HalfOpenTimeout is the life of an unassured flow after its last
	// packet (default 10s).
	TCPSynTimeout, TCPEstablishedTimeout, TCPCloseTimeout, UDPTimeout, ICMPTimeout, HalfOpenTimeout time.Duration
	// AttachMode chooses tcx or the legacy clsact path.
	AttachMode loader.Mode
	// HostSockets serves published ports to the host's own processes
	// (docker-proxy's job) with cgroup sock_addr programs, for the sockets
	// of the namespace Apply runs in; it needs a pin path.
	HostSockets bool
	// CgroupPath is the cgroup v2 folder of those programs; "" is the
	// root (DefaultCgroupPath).
	CgroupPath string
	// NAT64Pool is the IPv4 range the clients of NAT64 ports (a host
	// IPv6 port of an IPv4 container, bpf/lib/nat64.h) appear from;
	// the zero Prefix is DefaultNAT64Pool.
	NAT64Pool netip.Prefix

	// mutateSpec lets tests break or change the programs before loading.
	mutateSpec func(*ebpf.CollectionSpec)
	// attachHook lets tests fail, or change the kernel, right before each
	// program is attached.
	attachHook func(ifname, prog string) error
}

// Defaults of the datapath's settings: what a zero field of Options takes,
// and the defaults of bpfnet run's flags. The C side has none of its own:
// the loader sets every field of CONFIG (bpf/lib/config.h).
const (
	DefaultNATPortMin            = 32768
	DefaultNATPortMax            = 65535
	DefaultCTSize                = 262144
	DefaultTCPSynTimeout         = time.Minute
	DefaultTCPEstablishedTimeout = 6 * time.Hour
	DefaultTCPCloseTimeout       = 10 * time.Second
	DefaultUDPTimeout            = time.Minute
	DefaultICMPTimeout           = 30 * time.Second
	DefaultHalfOpenTimeout       = 10 * time.Second
)

// config is the CONFIG of bpf/lib/config.h for o, defaults filled in.
func (o *Options) config() bpfConfig {
	d := func(v, def time.Duration) uint64 {
		if v <= 0 {
			v = def
		}
		return uint64(v.Nanoseconds())
	}
	c := bpfConfig{
		NatPortMin:      o.NATPortMin,
		NatPortMax:      o.NATPortMax,
		TcpSynTimeout:   d(o.TCPSynTimeout, DefaultTCPSynTimeout),
		TcpEstTimeout:   d(o.TCPEstablishedTimeout, DefaultTCPEstablishedTimeout),
		TcpCloseTimeout: d(o.TCPCloseTimeout, DefaultTCPCloseTimeout),
		UdpTimeout:      d(o.UDPTimeout, DefaultUDPTimeout),
		IcmpTimeout:     d(o.ICMPTimeout, DefaultICMPTimeout),
		HalfOpenTimeout: d(o.HalfOpenTimeout, DefaultHalfOpenTimeout),
	}
	if o.FastPath {
		c.FastPath = 1
	}
	if o.RedirectOnly {
		c.RedirectOnly = 1
	}
	if c.NatPortMin == 0 {
		c.NatPortMin = DefaultNATPortMin
	}
	if c.NatPortMax == 0 {
		c.NatPortMax = DefaultNATPortMax
	}
	c.Nat64Pool, c.Nat64Mask = nat64Config(o.nat64Pool())
	return c
}

// halfOpenSize is the capacity of ct4_syn for a ct4 of ctSize entries.
func (o *Options) halfOpenSize(ctSize uint32) uint32 {
	if o.HalfOpenSize != 0 {
		return o.HalfOpenSize
	}
	return max(ctSize/8, minHalfOpenSize)
}

// minHalfOpenSize keeps the default table of unassured flows big enough
// for the handshakes of a small ct4.
const minHalfOpenSize = 128

// VerifierError is returned when the kernel rejects a program. Its message
// ends with the last lines of the verifier log; Log has all of it.
type VerifierError struct {
	Program string
	Err     *ebpf.VerifierError
}

func (e *VerifierError) Error() string {
	return fmt.Sprintf("verifier rejected %s: %-20v", e.Program, e.Err)
}

func (e *VerifierError) Unwrap() error { return e.Err }

// Log is the whole verifier log.
func (e *VerifierError) Log() []string { return e.Err.Log }

// EBPF is the eBPF implementation of Datapath.
type EBPF struct {
	opts Options
	objs bpfObjects
	// attached holds the interfaces this datapath put programs on, by name.
	attached map[string]attachedDev
	// sock holds the host-socket programs, started by the first Apply.
	sock *Sock
	// applied is what the last successful Apply wrote, so the next one
	// writes only the difference.
	applied *resolved
	// cg holds the cgroup skb programs (cgroup.go), loaded when needed.
	cg cgroupSkb
}

type attachedDev struct {
	ifindex int
	uplink  bool
}

var _ Datapath = (*EBPF)(nil)

// Spec returns the datapath's collection with the settings of opts, not
// loaded.
func Spec(opts Options) (*ebpf.CollectionSpec, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("reading the datapath object: %w", err)
	}
	if err := spec.Variables["CONFIG"].Set(opts.config()); err != nil {
		return nil, fmt.Errorf("setting the datapath configuration: %w", err)
	}
	spec.Maps["ct4"].MaxEntries = DefaultCTSize
	if opts.CTSize != 0 {
		spec.Maps["ct4"].MaxEntries = opts.CTSize
	}
	spec.Maps["ct4_syn"].MaxEntries = opts.halfOpenSize(spec.Maps["ct4"].MaxEntries)
	// IPv6 flows get a table of their own, as big as ct4.
	spec.Maps["ct6"].MaxEntries = spec.Maps["ct4"].MaxEntries
	spec.Maps["ct6_syn"].MaxEntries = spec.Maps["ct4_syn"].MaxEntries
	if opts.mutateSpec != nil {
		opts.mutateSpec(spec)
	}
	if opts.PinPath == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	return spec, nil
}

// NewEBPF loads the programs and opens (or creates and pins) the state
// maps. Nothing is attached until Apply.
func NewEBPF(opts Options) (*EBPF, error) {
	if c := opts.config(); c.NatPortMax < c.NatPortMin {
		return nil, fmt.Errorf("NAT port range %d-%d is reversed", c.NatPortMin, c.NatPortMax)
	}
	if err := CheckNAT64Pool(opts.nat64Pool()); err != nil {
		return nil, err
	}
	spec, err := Spec(opts)
	if err != nil {
		return nil, err
	}
	var co ebpf.CollectionOptions
	if opts.PinPath != "" {
		if err := CheckBPFFS(opts.PinPath); err != nil {
			return nil, err
		}
		dir := loader.GlobalsDir(opts.PinPath)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating pin folder: %w", err)
		}
		co.Maps.PinPath = dir
		if err := migratePins(spec, dir); err != nil {
			return nil, err
		}
	}
	d := &EBPF{opts: opts, attached: map[string]attachedDev{}}
	if err := spec.LoadAndAssign(&d.objs, &co); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, &VerifierError{Program: "datapath", Err: ve}
		}
		return nil, fmt.Errorf("loading the datapath: %w", err)
	}
	return d, nil
}

func (d *EBPF) Name() string { return "ebpf" }

// Programs gives the loaded programs by name, for tests and the loader.
func (d *EBPF) Programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		ProgFromNetdev:    d.objs.FromNetdev,
		ProgToNetdev:      d.objs.ToNetdev,
		ProgFromContainer: d.objs.FromContainer,
		ProgToContainer:   d.objs.ToContainer,
	}
}

// Close releases the file descriptors; pinned maps and links stay and keep
// forwarding.
func (d *EBPF) Close() error { return errors.Join(d.sock.Close(), d.cg.close(), d.objs.Close()) }

// Remove detaches every program and removes the pins.
func (d *EBPF) Remove() error {
	var errs []error
	errs = append(errs, d.cg.remove(d.opts.PinPath))
	errs = append(errs, d.sock.Remove())
	d.sock = nil
	if d.opts.PinPath != "" {
		if err := loader.DetachAll(d.opts.PinPath); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(d.opts.PinPath); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", d.opts.PinPath, err))
		}
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

type progAt struct {
	name string
	dir  loader.Direction
}

func progsFor(uplink bool) []progAt {
	if uplink {
		return []progAt{{ProgFromNetdev, loader.Ingress}, {ProgToNetdev, loader.Egress}}
	}
	return []progAt{{ProgFromContainer, loader.Ingress}, {ProgToContainer, loader.Egress}}
}

// Flags of a network in the nets and endpoints maps (enum net_flags in
// bpf/lib/maps.h).
const (
	netFMasq     = bpfNetFlagsNET_F_MASQ
	netFNoICC    = bpfNetFlagsNET_F_NO_ICC
	netFInternal = bpfNetFlagsNET_F_INTERNAL
	// netFDirectOpen is --allow-direct-routing (State.AllowDirectRouting).
	netFDirectOpen = bpfNetFlagsNET_F_DIRECT_OPEN
	// Gateway modes (bpf/lib/gwmode.h).
	netFUnprotected = bpfNetFlagsNET_F_UNPROTECTED
	netFRouted      = bpfNetFlagsNET_F_ROUTED
	netFIsolated    = bpfNetFlagsNET_F_ISOLATED
)

func netFlags(n Network) bpfNetFlags {
	var f bpfNetFlags
	if n.masquerades() {
		f |= netFMasq
	}
	if n.NoICC {
		f |= netFNoICC
	}
	if n.Internal {
		f |= netFInternal
	}
	switch n.GatewayMode {
	case GatewayNATUnprotected:
		f |= netFUnprotected
	case GatewayRouted:
		f |= netFRouted
	case GatewayIsolated:
		f |= netFIsolated | netFInternal
	}
	return f
}

// Flags of an endpoint (bpfEndpoint.EpFlags, enum ep_flags in
// bpf/lib/maps.h).
const epFForeignSrc = bpfEpFlagsEP_F_FOREIGN_SRC

// resolved is a State with every name looked up in the kernel.
type resolved struct {
	ports     map[bpfPortKey]bpfPortTarget
	endpoints map[uint32]bpfEndpoint
	// veths holds the same endpoints by the ifindex of their host veth,
	// and the pending veths with address 0.
	veths     map[uint32]bpfEndpoint
	hostAddrs map[uint32]uint32
	uplinks   map[uint32]bpfUplink
	nets      map[bpfNetKey]bpfNetInfo
	devs      map[string]attachedDev
	// trusted are the published container ports the trusted interfaces
	// of their networks may reach directly (lib/direct.h).
	trusted map[bpfTrustedKey]uint32
	// routedPorts are the published container ports of routed networks
	// (routed_ports, bpf/lib/gwmode.h), one for all the bindings of a
	// container port.
	routedPorts map[bpfPortKey]bpfPortTarget
	// trusted6 and routedPorts6 are trusted and routedPorts for IPv6
	// container addresses (direct_trusted6, routed_ports6).
	trusted6     map[bpfTrusted6Key]uint32
	routedPorts6 map[bpfPort6Key]bpfPort6Target
	// specific counts the bindings of ports to a specific host address,
	// by protocol and port (ports.go); nil until needed.
	specific map[bpfPortKey]int
	// specific6 is specific's twin for ports6.
	specific6 map[bpfPort6Key]int
	// allow holds the source allowlists that ports name (allow.go).
	allow *allowLists

	// The IPv6 twins of ports, endpoints, hostAddrs, uplinks and nets
	// (bpf/lib/maps6.h).
	ports6     map[bpfPort6Key]bpfPort6Target
	endpoints6 map[bpfIn6Key]bpfEndpoint6
	hostAddrs6 map[bpfIn6Key]uint32
	uplinks6   map[uint32]bpfUplink6
	nets6      map[bpfNet6Key]bpfNet6Info
}

func (d *EBPF) resolve(s State) (*resolved, error) {
	r := &resolved{
		ports:     map[bpfPortKey]bpfPortTarget{},
		endpoints: map[uint32]bpfEndpoint{},
		veths:     map[uint32]bpfEndpoint{},
		hostAddrs: map[uint32]uint32{},
		uplinks:   map[uint32]bpfUplink{},
		nets:      map[bpfNetKey]bpfNetInfo{},
		devs:      map[string]attachedDev{},
		trusted:   map[bpfTrustedKey]uint32{},

		routedPorts: map[bpfPortKey]bpfPortTarget{},

		trusted6:     map[bpfTrusted6Key]uint32{},
		routedPorts6: map[bpfPort6Key]bpfPort6Target{},

		ports6:     map[bpfPort6Key]bpfPort6Target{},
		endpoints6: map[bpfIn6Key]bpfEndpoint6{},
		hostAddrs6: map[bpfIn6Key]uint32{},
		uplinks6:   map[uint32]bpfUplink6{},
		nets6:      map[bpfNet6Key]bpfNet6Info{},
	}
	// open is set on every network with --allow-direct-routing.
	var open bpfNetFlags
	if s.AllowDirectRouting {
		open = netFDirectOpen
	}
	type bridge struct {
		ifindex int
		mac     net.HardwareAddr
		net     Network
		id      uint32
	}
	// endpointOn is the entry of a veth on b, before anything is known
	// of the container behind it.
	endpointOn := func(b bridge, ifindex int) bpfEndpoint {
		ep := bpfEndpoint{
			Ifindex:       uint32(ifindex),
			BridgeIfindex: uint32(b.ifindex),
			GwAddr:        be32(b.net.Gateway),
			NetId:         b.id,
			Flags:         netFlags(b.net) | open,
		}
		copy(ep.GwMac[:], b.mac)
		return ep
	}
	bridges := map[string]bridge{}
	bridgeByIndex := map[int]bridge{}
	for _, n := range s.Networks {
		l, err := netlink.LinkByName(n.Bridge)
		if err != nil {
			return nil, fmt.Errorf("network %s: bridge %s: %w", n.Name, n.Bridge, err)
		}
		// A network's id is its bridge's ifindex: it stays the same from
		// one Apply to the next, which programs nets and endpoints one
		// entry at a time, so the isolation of networks never sees the
		// ids of two states mixed. (Docker isolates by bridge too.)
		b := bridge{ifindex: l.Attrs().Index, mac: l.Attrs().HardwareAddr, net: n, id: uint32(l.Attrs().Index)}
		bridges[n.Name] = b
		bridgeByIndex[b.ifindex] = b
		info := bpfNetInfo{NetId: b.id, Flags: netFlags(n) | open, HostAddr: be32(n.HostIPv4)}
		r.nets[bpfNetKey{Prefixlen: uint32(n.Subnet.Bits()), Addr: be32(n.Subnet.Masked().Addr())}] = info
		if n.Subnet6.IsValid() {
			n6 := n
			n6.GatewayMode = n.GatewayModeIPv6
			r.nets6[bpfNet6Key{Prefixlen: uint32(n.Subnet6.Bits()), Addr: be128(n.Subnet6.Masked().Addr())}] =
				bpfNet6Info{NetId: b.id, Flags: netFlags(n6) | open, HostAddr: be128(n.HostIPv6)}
		}
	}
	// A container on several networks is one sender: it answers by the
	// routes it has, from the address of one network out of the veth of
	// another. Its endpoints share a container id, the lowest ifindex of
	// its host veths (one veth is one container's, so no two containers
	// share it), and from_container accepts on each of its veths the
	// address of any of them. An endpoint with neither a container id nor
	// a name is a container of its own.
	links := make([]netlink.Link, len(s.Endpoints))
	ctrIDs := map[string]uint32{}
	ctrKey := func(e Endpoint) string { return cmp.Or(e.ContainerID, e.Container) }
	for i, e := range s.Endpoints {
		l, err := netlink.LinkByName(e.HostVeth)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: host veth %s: %w", e.Container, e.HostVeth, err)
		}
		links[i] = l
		if k := ctrKey(e); k != "" {
			if id, ok := ctrIDs[k]; !ok || uint32(l.Attrs().Index) < id {
				ctrIDs[k] = uint32(l.Attrs().Index)
			}
		}
	}
	for i, e := range s.Endpoints {
		b := bridges[e.Network]
		l := links[i]
		ep := endpointOn(b, l.Attrs().Index)
		ep.Addr = be32(e.Addr)
		ep.CtrId = ctrIDs[ctrKey(e)]
		if ep.CtrId == 0 {
			ep.CtrId = ep.Ifindex
		}
		if e.AllowForeignSource {
			ep.EpFlags |= epFForeignSrc
		}
		copy(ep.Mac[:], e.MAC)
		// The sender is the interface: from_container knows a packet's
		// endpoint by the veth it came from, so one veth is one endpoint.
		if other, dup := r.veths[ep.Ifindex]; dup {
			return nil, fmt.Errorf("endpoint %s: host veth %s already carries %s", e.Container, e.HostVeth, addrFrom(other.Addr))
		}
		r.endpoints[ep.Addr] = ep
		r.veths[ep.Ifindex] = ep
		if e.Addr6.IsValid() {
			r.endpoints6[bpfIn6Key{A: be128(e.Addr6)}] = bpfEndpoint6{Ep: ep, Gw6: be128(b.net.Gateway6)}
		}
		r.devs[e.HostVeth] = attachedDev{ifindex: l.Attrs().Index}
	}
	for _, name := range s.PendingVeths {
		if _, known := r.devs[name]; known {
			continue
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			continue // gone already: the next Apply forgets it
		}
		r.devs[name] = attachedDev{ifindex: l.Attrs().Index}
		// Its container is not known yet: it may send from any address
		// of the network of its bridge. A veth on no bridge of ours has
		// no entry, and what it sends is dropped.
		if b, ok := bridgeByIndex[l.Attrs().MasterIndex]; ok {
			r.veths[uint32(l.Attrs().Index)] = endpointOn(b, l.Attrs().Index)
		}
	}
	for _, u := range s.Uplinks {
		l, err := netlink.LinkByName(u.Name)
		if err != nil {
			return nil, fmt.Errorf("uplink %s: %w", u.Name, err)
		}
		addr := u.Addr
		if !addr.IsValid() {
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return nil, fmt.Errorf("uplink %s: listing addresses: %w", u.Name, err)
			}
			if len(addrs) == 0 {
				return nil, fmt.Errorf("uplink %s has no IPv4 address to masquerade with", u.Name)
			}
			addr, _ = netip.AddrFromSlice(addrs[0].IP.To4())
		}
		r.uplinks[uint32(l.Attrs().Index)] = bpfUplink{Addr: be32(addr)}
		addr6 := u.Addr6
		if !addr6.IsValid() {
			addr6, err = firstGlobal6(l)
			if err != nil {
				return nil, fmt.Errorf("uplink %s: %w", u.Name, err)
			}
		}
		if addr6.IsValid() {
			// An uplink without a global IPv6 address has no entry:
			// IPv6 leaves it unmasqueraded.
			r.uplinks6[uint32(l.Attrs().Index)] = bpfUplink6{Addr: be128(addr6)}
		}
		r.devs[u.Name] = attachedDev{ifindex: l.Attrs().Index, uplink: true}
	}
	hostAddrs := s.HostAddrs
	if hostAddrs == nil {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("listing host addresses: %w", err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if ok && !ip.IsLoopback() {
				hostAddrs = append(hostAddrs, ip)
			}
		}
	}
	if s.HostAddrs == nil {
		more, err := hostAddrs6()
		if err != nil {
			return nil, err
		}
		hostAddrs = append(hostAddrs, more...)
	}
	for _, a := range hostAddrs {
		if a.Is6() && !a.Is4In6() {
			r.hostAddrs6[bpfIn6Key{A: be128(a)}] = 1
			continue
		}
		r.hostAddrs[be32(a)] = 1
	}
	if err := CheckHostIPv4(s.Networks, hostAddrs); err != nil {
		return nil, err
	}
	{
		addrs := hostAddrs
		for _, u := range r.uplinks {
			addrs = append(addrs, addrFrom(u.Addr))
		}
		if err := checkNAT64Overlap(d.opts.nat64Pool(), s, addrs); err != nil {
			return nil, err
		}
	}
	if err := r.resolveTrusted(s); err != nil {
		return nil, err
	}
	for i, m := range s.Ports {
		if m.ContainerIP.Is6() || m.IsNAT64() {
			if n, _ := networkOf(s.Networks, m.ContainerIP); !m.IsNAT64() && n.GatewayModeIPv6 == GatewayRouted {
				// As for IPv4: no host port, the container port open
				// by the container's IPv6 address.
				k := bpfPort6Key{Addr: be128(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}
				if _, ok := r.routedPorts6[k]; !ok {
					// Its allowlist's id comes with assignAllow.
					r.routedPorts6[k] = bpfPort6Target{Addr: k.Addr, Port: k.Port, Id: uint32(i + 1)}
				}
				continue
			}
			// Its allowlist's id comes with assignAllow.
			r.ports6[port6Key(m)] = bpfPort6Target{Addr: be128(m.ContainerIP), Port: be16(m.ContainerPort), Id: uint32(i + 1)}
			continue
		}
		if n, _ := networkOf(s.Networks, m.ContainerIP); n.GatewayMode == GatewayRouted {
			// No host port: the container port is open to the
			// outside by the container's address. Its bindings
			// share the entry, under the first one's id.
			k := bpfPortKey{Addr: be32(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}
			if _, ok := r.routedPorts[k]; !ok {
				r.routedPorts[k] = bpfPortTarget{Addr: k.Addr, Port: k.Port, Id: uint32(i + 1)}
			}
			continue
		}
		k := bpfPortKey{Port: be16(m.HostPort), Proto: uint8(m.Proto)}
		if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
			k.Addr = be32(m.HostIP)
		}
		r.ports[k] = bpfPortTarget{Addr: be32(m.ContainerIP), Port: be16(m.ContainerPort), Id: uint32(i + 1)}
	}
	return r, nil
}

// resolveTrusted fills r.trusted: each published container port of a
// network with trusted interfaces, once for each of those interfaces that
// exists (one that does not yet is trusted by the Apply after it appears).
// With AllowDirectRouting every interface is trusted: each published
// container port has one entry, of ifindex 0.
func (r *resolved) resolveTrusted(s State) error {
	// trust adds the entry of ifindex for m, in the map of its family.
	trust := func(ifindex int, m PortMapping) {
		if m.ContainerIP.Is6() && !m.ContainerIP.Is4In6() {
			r.trusted6[bpfTrusted6Key{Ifindex: uint32(ifindex), Addr: be128(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}] = 1
			return
		}
		r.trusted[bpfTrustedKey{Ifindex: uint32(ifindex), Addr: be32(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}] = 1
	}
	if s.AllowDirectRouting {
		for _, m := range s.Ports {
			trust(0, m)
		}
		return nil
	}
	ifindexes := map[string]int{}
	for _, n := range s.Networks {
		for _, name := range n.Trusted() {
			if _, done := ifindexes[name]; done {
				continue
			}
			l, err := netlink.LinkByName(name)
			if err != nil {
				var nf netlink.LinkNotFoundError
				if errors.As(err, &nf) {
					ifindexes[name] = 0
					continue
				}
				return fmt.Errorf("network %s: trusted host interface %s: %w", n.Name, name, err)
			}
			ifindexes[name] = l.Attrs().Index
		}
	}
	for _, m := range s.Ports {
		n, ok := networkOf(s.Networks, m.ContainerIP)
		if !ok {
			continue
		}
		for _, name := range n.Trusted() {
			if idx := ifindexes[name]; idx != 0 {
				trust(idx, m)
			}
		}
	}
	return nil
}

// Apply makes the maps and attachments match s. An invalid s, or one that
// names an interface that does not exist, changes nothing; a failure while
// writing the maps or attaching the programs puts back what was written
// and attached, so the datapath is either the old state or the new one. Only what changed since the last Apply is
// written: publishing one port is one map update however many there are.
func (d *EBPF) Apply(ctx context.Context, s State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	r, err := d.resolve(s)
	if err != nil {
		return err
	}
	prev := d.applied
	first := prev == nil
	if first {
		// A new process on pinned maps: what is there is the old state.
		if prev, err = d.readApplied(); err != nil {
			return err
		}
	}
	r.allow = d.assignAllow(prev.allow, s, r.ports, r.routedPorts, r.ports6, r.routedPorts6)
	// Flows of mappings whose container moved or went away are dropped,
	// so the next packet of such a flow finds the new mapping at once.
	// A changed allowlist drops none: it judges new flows only.
	var gone []bpfPortTarget
	for k, v := range prev.ports {
		if nv, ok := r.ports[k]; !ok || nv.Addr != v.Addr || nv.Port != v.Port {
			gone = append(gone, v)
		}
	}

	var gone6 []bpfPort6Target
	for k, v := range prev.ports6 {
		if nv, ok := r.ports6[k]; !ok || nv.Addr != v.Addr || nv.Port != v.Port {
			gone6 = append(gone6, v)
		}
	}

	var undo undoLog
	steps := []struct {
		what string
		fn   func() error
	}{
		{"networks", func() error { return syncMap(&undo, d.objs.Nets, prev.nets, r.nets) }},
		{"endpoints", func() error { return syncMap(&undo, d.objs.Endpoints, prev.endpoints, r.endpoints) }},
		{"veths", func() error { return syncMap(&undo, d.objs.Veths, prev.veths, r.veths) }},
		{"uplinks", func() error { return syncMap(&undo, d.objs.Uplinks, prev.uplinks, r.uplinks) }},
		{"host addresses", func() error { return syncMap(&undo, d.objs.HostAddrs, prev.hostAddrs, r.hostAddrs) }},
		{"allowlists", func() error { return d.syncAllowAdd(&undo, prev.allow, r.allow) }},
		{"published ports", func() error { return syncMap(&undo, d.objs.Published, prev.ports, r.ports) }},
		{"routed ports", func() error { return syncMap(&undo, d.objs.RoutedPorts, prev.routedPorts, r.routedPorts) }},
		{"trusted interfaces", func() error { return syncMap(&undo, d.objs.DirectTrusted, prev.trusted, r.trusted) }},
		{"IPv6 networks", func() error { return syncMap(&undo, d.objs.Nets6, prev.nets6, r.nets6) }},
		{"IPv6 endpoints", func() error { return syncMap(&undo, d.objs.Endpoints6, prev.endpoints6, r.endpoints6) }},
		{"IPv6 uplinks", func() error { return syncMap(&undo, d.objs.Uplinks6, prev.uplinks6, r.uplinks6) }},
		{"IPv6 host addresses", func() error { return syncMap(&undo, d.objs.HostAddrs6, prev.hostAddrs6, r.hostAddrs6) }},
		{"IPv6 published ports", func() error { return syncMap(&undo, d.objs.Published6, prev.ports6, r.ports6) }},
		// After every port map: no mapping of either family names them.
		{"old allowlists", func() error { return d.syncAllowDelete(&undo, prev.allow, r.allow) }},
		{"IPv6 routed ports", func() error { return syncMap(&undo, d.objs.RoutedPorts6, prev.routedPorts6, r.routedPorts6) }},
		{"IPv6 trusted interfaces", func() error { return syncMap(&undo, d.objs.DirectTrusted6, prev.trusted6, r.trusted6) }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			return errors.Join(fmt.Errorf("programming %s: %w", st.what, err), undo.run())
		}
	}
	if err := d.attach(r.devs, first); err != nil {
		return errors.Join(err, undo.run())
	}
	d.applied = r
	if len(gone) > 0 {
		if _, err := d.flushBackends(gone); err != nil {
			return err
		}
	}
	if len(gone6) > 0 {
		if _, err := d.flushBackends6(gone6); err != nil {
			return err
		}
	}
	if err := d.applyCgroups(s); err != nil {
		return err
	}
	if d.opts.HostSockets && d.sock == nil {
		if d.opts.PinPath == "" {
			return errors.New("host sockets need a pin path")
		}
		sock, err := d.StartSock(SockOptions{CgroupPath: d.opts.CgroupPath})
		if err != nil {
			return fmt.Errorf("host sockets: %w", err)
		}
		d.sock = sock
	}
	return d.dropStaleCounters(prev, r, first)
}

// readApplied reads the maps a previous process programmed.
func (d *EBPF) readApplied() (*resolved, error) {
	r := &resolved{}
	var err error
	if r.ports, err = readMap[bpfPortKey, bpfPortTarget](d.objs.Published); err != nil {
		return nil, fmt.Errorf("reading published ports: %w", err)
	}
	if r.endpoints, err = readMap[uint32, bpfEndpoint](d.objs.Endpoints); err != nil {
		return nil, fmt.Errorf("reading endpoints: %w", err)
	}
	if r.veths, err = readMap[uint32, bpfEndpoint](d.objs.Veths); err != nil {
		return nil, fmt.Errorf("reading veths: %w", err)
	}
	if r.hostAddrs, err = readMap[uint32, uint32](d.objs.HostAddrs); err != nil {
		return nil, fmt.Errorf("reading host addresses: %w", err)
	}
	if r.uplinks, err = readMap[uint32, bpfUplink](d.objs.Uplinks); err != nil {
		return nil, fmt.Errorf("reading uplinks: %w", err)
	}
	if r.nets, err = readMap[bpfNetKey, bpfNetInfo](d.objs.Nets); err != nil {
		return nil, fmt.Errorf("reading networks: %w", err)
	}
	if r.allow, err = readAllowLists(d.objs.PortAllow, d.objs.PortAllow6); err != nil {
		return nil, err
	}
	if r.trusted, err = readMap[bpfTrustedKey, uint32](d.objs.DirectTrusted); err != nil {
		return nil, fmt.Errorf("reading trusted interfaces: %w", err)
	}
	if r.routedPorts, err = readMap[bpfPortKey, bpfPortTarget](d.objs.RoutedPorts); err != nil {
		return nil, fmt.Errorf("reading routed ports: %w", err)
	}
	if r.ports6, err = readMap[bpfPort6Key, bpfPort6Target](d.objs.Published6); err != nil {
		return nil, fmt.Errorf("reading IPv6 published ports: %w", err)
	}
	if r.endpoints6, err = readMap[bpfIn6Key, bpfEndpoint6](d.objs.Endpoints6); err != nil {
		return nil, fmt.Errorf("reading IPv6 endpoints: %w", err)
	}
	if r.hostAddrs6, err = readMap[bpfIn6Key, uint32](d.objs.HostAddrs6); err != nil {
		return nil, fmt.Errorf("reading IPv6 host addresses: %w", err)
	}
	if r.uplinks6, err = readMap[uint32, bpfUplink6](d.objs.Uplinks6); err != nil {
		return nil, fmt.Errorf("reading IPv6 uplinks: %w", err)
	}
	if r.nets6, err = readMap[bpfNet6Key, bpfNet6Info](d.objs.Nets6); err != nil {
		return nil, fmt.Errorf("reading IPv6 networks: %w", err)
	}
	if r.trusted6, err = readMap[bpfTrusted6Key, uint32](d.objs.DirectTrusted6); err != nil {
		return nil, fmt.Errorf("reading IPv6 trusted interfaces: %w", err)
	}
	if r.routedPorts6, err = readMap[bpfPort6Key, bpfPort6Target](d.objs.RoutedPorts6); err != nil {
		return nil, fmt.Errorf("reading IPv6 routed ports: %w", err)
	}
	r.allow.refs = allowRefs(r.ports, r.routedPorts)
	addAllowRefs6(r.allow.refs, r.ports6)
	addAllowRefs6(r.allow.refs, r.routedPorts6)
	return r, nil
}

func readMap[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// undoLog holds the inverse of every map write of an Apply.
type undoLog []func() error

func (u *undoLog) run() error {
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		if err := (*u)[i](); err != nil {
			errs = append(errs, err)
		}
	}
	*u = nil
	if len(errs) > 0 {
		return fmt.Errorf("putting the previous state back: %w", errors.Join(errs...))
	}
	return nil
}

// syncMap turns m from have into want, logging how to undo each write.
func syncMap[K comparable, V comparable](undo *undoLog, m *ebpf.Map, have, want map[K]V) error {
	if err := syncMapPart(undo, m, have, want); err != nil {
		return err
	}
	for k, old := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := ignoreMissing(m.Delete(k)); err != nil {
			return err
		}
		*undo = append(*undo, func() error { return m.Put(k, old) })
	}
	return nil
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// dropStaleCounters forgets the counters of veths and published ports that
// are gone, so churn never fills the counter maps. The first Apply of a
// process scans the maps; later ones drop only what they removed.
func (d *EBPF) dropStaleCounters(prev, r *resolved, first bool) error {
	live := map[uint32]bool{}
	for _, ep := range r.endpoints {
		live[ep.Ifindex] = true
	}
	for _, dev := range r.devs {
		live[uint32(dev.ifindex)] = true
	}
	var staleIfs []uint32
	var stalePorts []bpfPortKey
	var stalePorts6 []bpfPort6Key
	if first {
		var ifk uint32
		var vals []bpfTraffic
		it := d.objs.IfStats.Iterate()
		for it.Next(&ifk, &vals) {
			if !live[ifk] {
				staleIfs = append(staleIfs, ifk)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("reading traffic counters: %w", err)
		}
		for _, m := range []*ebpf.Map{d.objs.PortConns, d.objs.PortDenied} {
			var pk bpfPortKey
			var counts []uint64
			pit := m.Iterate()
			for pit.Next(&pk, &counts) {
				_, nat := r.ports[pk]
				_, routed := r.routedPorts[pk]
				if !nat && !routed {
					stalePorts = append(stalePorts, pk)
				}
			}
			if err := pit.Err(); err != nil {
				return fmt.Errorf("reading port counters: %w", err)
			}
		}
		for _, m := range []*ebpf.Map{d.objs.PortConns6, d.objs.PortDenied6} {
			var pk bpfPort6Key
			var counts []uint64
			pit := m.Iterate()
			for pit.Next(&pk, &counts) {
				if _, ok := r.ports6[pk]; !ok {
					stalePorts6 = append(stalePorts6, pk)
				}
			}
			if err := pit.Err(); err != nil {
				return fmt.Errorf("reading IPv6 port counters: %w", err)
			}
		}
	} else {
		for _, dev := range prev.devs {
			if !live[uint32(dev.ifindex)] {
				staleIfs = append(staleIfs, uint32(dev.ifindex))
			}
		}
		for _, ep := range prev.endpoints {
			if !live[ep.Ifindex] {
				staleIfs = append(staleIfs, ep.Ifindex)
			}
		}
		for k := range prev.ports {
			if _, ok := r.ports[k]; !ok {
				stalePorts = append(stalePorts, k)
			}
		}
		for k := range prev.routedPorts {
			if _, ok := r.routedPorts[k]; !ok {
				stalePorts = append(stalePorts, k)
			}
		}
		for k := range prev.ports6 {
			if _, ok := r.ports6[k]; !ok {
				stalePorts6 = append(stalePorts6, k)
			}
		}
	}
	for _, k := range staleIfs {
		if err := ignoreMissing(d.objs.IfStats.Delete(k)); err != nil {
			return fmt.Errorf("dropping counters of ifindex %d: %w", k, err)
		}
	}
	for _, k := range stalePorts {
		if err := d.deletePortCounters(k); err != nil {
			return err
		}
	}
	for _, k := range stalePorts6 {
		if err := d.deletePort6Counters(k); err != nil {
			return err
		}
	}
	return nil
}

// attach puts the programs on new interfaces and takes them off those that
// left. The first Apply of a process attaches everywhere: that replaces a
// previous process's programs with this one's, in place. It is all or
// nothing: when one attachment fails (the interface vanished since
// resolve, the kernel refused), every attachment it changed is put back
// as it was, with the program that ran there before, and so is
// d.attached.
func (d *EBPF) attach(devs map[string]attachedDev, all bool) (err error) {
	if d.opts.PinPath == "" {
		if len(devs) > 0 {
			return errors.New("attaching needs a pin path")
		}
		return nil
	}
	var atts []loader.Attachment
	if all {
		// What a previous process attached, so what is gone gets detached.
		if atts, err = loader.List(d.opts.PinPath); err != nil {
			return err
		}
		for _, a := range atts {
			if _, ok := d.attached[a.Interface]; !ok {
				d.attached[a.Interface] = attachedDev{ifindex: a.Ifindex, uplink: a.Program == ProgFromNetdev || a.Program == ProgToNetdev}
			}
		}
	}
	var toAttach, toDetach []string
	for name, dev := range devs {
		if old, ok := d.attached[name]; !ok || all || old != dev {
			toAttach = append(toAttach, name)
		}
	}
	for name := range d.attached {
		if _, ok := devs[name]; !ok {
			toDetach = append(toDetach, name)
		}
	}
	if len(toAttach) == 0 && len(toDetach) == 0 {
		return nil
	}

	// What runs where now, to put back on failure.
	type hook struct {
		ifname, prog string
		dir          loader.Direction
	}
	before := map[hook]loader.Attachment{}
	if !all {
		if atts, err = loader.List(d.opts.PinPath); err != nil {
			return err
		}
	}
	for _, a := range atts {
		before[hook{a.Interface, a.Program, a.Direction}] = a
	}
	prevAttached := maps.Clone(d.attached)
	var undo undoLog
	// The programs replaced or detached are held until the end: one that
	// nothing else references would be freed the moment its link moves
	// on, and could not be put back.
	var held []*ebpf.Program
	defer func() {
		if err != nil {
			err = errors.Join(err, undo.run())
			d.attached = prevAttached
		}
		for _, p := range held {
			p.Close()
		}
	}()
	// remember logs how to put the hook back as it is now.
	remember := func(h hook) error {
		old, had := before[h]
		if !had || old.ProgramID == 0 || old.Ifindex == 0 {
			undo = append(undo, func() error { return loader.Detach(d.opts.PinPath, h.ifname, h.dir, h.prog) })
			return nil
		}
		prog, err := ebpf.NewProgramFromID(old.ProgramID)
		if err != nil {
			return fmt.Errorf("holding the program of %s on %s %s: %w", h.prog, h.ifname, h.dir, err)
		}
		held = append(held, prog)
		undo = append(undo, func() error {
			_, err := loader.Attach(d.opts.PinPath, prog, h.prog, h.ifname, old.Ifindex, h.dir, old.Mode)
			if errors.Is(err, loader.ErrInterfaceNotFound) {
				return nil // gone meanwhile: the kernel dropped its programs
			}
			return err
		})
		return nil
	}

	// Those that left first, then those that joined; a failure in either
	// puts both back.
	for _, name := range toDetach {
		dev := d.attached[name]
		for _, p := range progsFor(dev.uplink) {
			if err := remember(hook{name, p.name, p.dir}); err != nil {
				return err
			}
			if err := loader.Detach(d.opts.PinPath, name, p.dir, p.name); err != nil {
				return err
			}
		}
		delete(d.attached, name)
	}
	progs := d.Programs()
	for _, name := range toAttach {
		dev := devs[name]
		for _, p := range progsFor(dev.uplink) {
			if err := remember(hook{name, p.name, p.dir}); err != nil {
				return err
			}
			if d.opts.attachHook != nil {
				if err := d.opts.attachHook(name, p.name); err != nil {
					return fmt.Errorf("attaching %s to %s %s: %w", p.name, name, p.dir, err)
				}
			}
			if _, err := loader.Attach(d.opts.PinPath, progs[p.name], p.name, name, dev.ifindex, p.dir, d.opts.AttachMode); err != nil {
				return err
			}
		}
		d.attached[name] = dev
	}
	return nil
}

// ErrNotRunning is returned by OpenPinned when nothing is pinned at the
// path.
var ErrNotRunning = errors.New("no bpfnet datapath pinned there")

// OpenPinned opens the state maps of a running datapath, for the operator
// commands. Programs are not loaded; Apply and Remove are not available.
func OpenPinned(pinPath string) (*EBPF, error) {
	dir := loader.GlobalsDir(pinPath)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%s: %w", pinPath, ErrNotRunning)
	}
	d := &EBPF{opts: Options{PinPath: pinPath}, attached: map[string]attachedDev{}}
	spec, err := loadBpf()
	if err != nil {
		return nil, err
	}
	maps := map[string]**ebpf.Map{
		"ct4": &d.objs.Ct4, "ct4_syn": &d.objs.Ct4Syn, "drops": &d.objs.Drops, "endpoints": &d.objs.Endpoints, "events": &d.objs.Events,
		"host_addrs": &d.objs.HostAddrs, "if_stats": &d.objs.IfStats, "nets": &d.objs.Nets,
		"port_conns": &d.objs.PortConns, "published": &d.objs.Published, "uplinks": &d.objs.Uplinks,
		"port_allow": &d.objs.PortAllow, "port_denied": &d.objs.PortDenied,
		"direct_trusted": &d.objs.DirectTrusted, "routed_ports": &d.objs.RoutedPorts,
		"ct6": &d.objs.Ct6, "published6": &d.objs.Published6, "host_addrs6": &d.objs.HostAddrs6,
		"endpoints6": &d.objs.Endpoints6, "uplinks6": &d.objs.Uplinks6, "nets6": &d.objs.Nets6,
		"ct6_syn": &d.objs.Ct6Syn, "port_allow6": &d.objs.PortAllow6, "port_denied6": &d.objs.PortDenied6,
		"port_conns6":     &d.objs.PortConns6,
		"direct_trusted6": &d.objs.DirectTrusted6, "routed_ports6": &d.objs.RoutedPorts6,
		"nat64_fwd": &d.objs.Nat64Fwd, "nat64_rev": &d.objs.Nat64Rev,
	}
	for name, dst := range maps {
		if spec.Maps[name].Pinning != ebpf.PinByName {
			continue
		}
		m, err := ebpf.LoadPinnedMap(loader.GlobalPin(pinPath, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if (transientMaps[name] || optionalPins[name]) && errors.Is(err, os.ErrNotExist) {
			// Pinned by a version without it.
			continue
		}
		if err != nil {
			d.objs.Close()
			return nil, fmt.Errorf("opening pinned map %s: %w", name, err)
		}
		*dst = m
	}
	return d, nil
}

// counterMaps only count: when a new version changes their layout, the
// pinned ones are dropped and the counts start again.
var counterMaps = map[string]bool{"drops": true, "events": true, "if_stats": true, "port_conns": true, "port_denied": true,
	"port_conns6": true, "port_denied6": true}

// optionalPins are maps that an older version did not pin: a reader of
// such a version's pins (OpenPinned) goes without them.
var optionalPins = map[string]bool{
	"port_allow": true, "port_denied": true, "direct_trusted": true, "routed_ports": true,
	"ct6": true, "published6": true, "host_addrs6": true, "endpoints6": true, "uplinks6": true, "nets6": true,
	"ct6_syn": true, "port_allow6": true, "port_denied6": true, "port_conns6": true,
	"direct_trusted6": true, "routed_ports6": true,
	"nat64_fwd": true, "nat64_rev": true,
}

// rebuiltMaps are written whole from the State by every first Apply of a
// process: when a new version changes their layout, the pinned ones are
// replaced and that Apply fills them. The programs attached until then
// keep the maps they were loaded with. Every other pinned map (ct4) is
// state that would be lost, so a layout change there is an error.
var rebuiltMaps = map[string]bool{
	"endpoints": true, "veths": true, "nets": true, "published": true, "host_addrs": true, "uplinks": true,
	"port_allow": true, "direct_trusted": true, "routed_ports": true,
	"published6": true, "host_addrs6": true, "endpoints6": true, "uplinks6": true, "nets6": true,
	"port_allow6":     true,
	"direct_trusted6": true, "routed_ports6": true,
}

// transientMaps hold state that is rebuilt by itself: a new layout (a new
// --ct-half-open-size) replaces the pinned one. Unassured flows lost that
// way are made again by the client's next packet.
var transientMaps = map[string]bool{"ct4_syn": true, "ct6_syn": true}

// migratePins checks the pinned maps in dir against spec before loading.
// Nothing is replaced unless every map can be kept or replaced: a refusal
// leaves the pins as they were.
func migratePins(spec *ebpf.CollectionSpec, dir string) error {
	type stale struct {
		name, path string
		reason     error
	}
	var replace []stale
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("opening pinned map %s: %w", path, err)
		}
		incompatible := ms.Compatible(m)
		m.Close()
		if incompatible == nil {
			continue
		}
		if !counterMaps[name] && !rebuiltMaps[name] && !transientMaps[name] {
			return fmt.Errorf("pinned map %s has another layout than this version's (%v): its state cannot be kept; "+
				"run `bpfnet down` or use another --pin-path to start afresh", path, incompatible)
		}
		replace = append(replace, stale{name, path, incompatible})
	}
	for _, st := range replace {
		if counterMaps[st.name] {
			slog.Warn("counter map changed layout; its counts start again", "map", st.name, "reason", st.reason.Error())
		} else if transientMaps[st.name] {
			slog.Info("replacing pinned map of another layout", "map", st.name, "reason", st.reason.Error())
		} else {
			slog.Warn("map changed layout; replaced, the state fills it again", "map", st.name, "reason", st.reason.Error())
		}
		if err := os.Remove(st.path); err != nil {
			return fmt.Errorf("replacing pinned map %s: %w", st.path, err)
		}
	}
	return nil
}
