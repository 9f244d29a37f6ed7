// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Proto is an IP protocol number of a published port.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp", "":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp or udp)", s)
}

// PortMapping is one published port, as `docker run -p` makes it.
type PortMapping struct {
	Proto Proto
	// HostIP is the host address the port is bound to; the zero Addr or
	// 0.0.0.0 means every host address.
	HostIP        netip.Addr
	HostPort      uint16
	ContainerIP   netip.Addr
	ContainerPort uint16
	// Container names the container, for display and metrics.
	Container string
	// Allow lists the sources that may open new flows to the port (the
	// container label bpfnet.allow, --publish ...,allow=); nil or empty
	// leaves it open to every source. Established flows are not judged
	// again when it changes. The host's own connections are not judged
	// at all: the host is trusted, as in Docker. IPv4 prefixes only.
	Allow []netip.Prefix
}

func (m PortMapping) String() string {
	host := ""
	if m.HostIP.IsValid() && (!m.HostIP.IsUnspecified() || m.IsNAT64()) {
		host = BracketAddr(m.HostIP) + ":"
	}
	s := fmt.Sprintf("%s%d->%s:%d/%s", host, m.HostPort, BracketAddr(m.ContainerIP), m.ContainerPort, m.Proto)
	if len(m.Allow) > 0 {
		s += " allow=" + FormatAllow(m.Allow)
	}
	return s
}

// BracketAddr writes an address as it stands before a port: an IPv6
// one in brackets ([fd00::2]), an IPv4 one bare.
func BracketAddr(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// Equal tells whether m and o are the same mapping, their allowlists
// compared as given (PortMapping holds a slice, so == does not compile).
func (m PortMapping) Equal(o PortMapping) bool {
	return m.Proto == o.Proto && m.HostIP == o.HostIP && m.HostPort == o.HostPort &&
		m.ContainerIP == o.ContainerIP && m.ContainerPort == o.ContainerPort &&
		m.Container == o.Container && slices.Equal(m.Allow, o.Allow)
}

// ParseAllow parses a source allowlist: IPv4 and IPv6 CIDR prefixes (a
// bare address is a /32 or a /128) separated by sep. An empty list, an
// empty item, an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104: which
// family it would let in is unclear) or one with a zone is an error, so
// that a mistyped list never leaves a port open. A port's list applies to
// the sources of the port's family: a list of IPv4 prefixes only keeps an
// IPv6 port closed, and the other way round.
func ParseAllow(s string, sep string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty allowlist")
	}
	var out []netip.Prefix
	for _, item := range strings.Split(s, sep) {
		item = strings.TrimSpace(item)
		p, err := netip.ParsePrefix(item)
		if err != nil {
			a, aerr := netip.ParseAddr(item)
			if aerr != nil {
				return nil, fmt.Errorf("allowlist item %q is not a CIDR prefix or an address", item)
			}
			if a.Zone() != "" {
				// PrefixFrom would drop it silently.
				return nil, fmt.Errorf("allowlist item %q: a prefix with a zone", item)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err := checkAllowPrefix(p); err != nil {
			return nil, fmt.Errorf("allowlist item %q: %w", item, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// FormatAllow writes a list as ParseAllow reads it with sep ",".
func FormatAllow(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// canonAllow is a list in one form: masked, sorted, without duplicates.
func canonAllow(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Masked()
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// Network is a bridge network whose containers the datapath serves.
type Network struct {
	Name    string
	Bridge  string // the bridge device
	Subnet  netip.Prefix
	Gateway netip.Addr // the bridge's address in Subnet
	// Subnet6 and Gateway6 are the network's IPv6 prefix and the bridge's
	// address in it, for a dual-stack network (docker network create
	// --ipv6); the zero Prefix is an IPv4-only network.
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
	// Masquerade translates traffic from Subnet leaving through an uplink;
	// without it, that traffic leaves with the containers' addresses (and
	// their answers are let back in).
	Masquerade bool
	// NoICC keeps the network's containers from reaching each other, as
	// Docker's com.docker.network.bridge.enable_icc=false does; they still
	// reach the gateway, the host and, masqueraded, the outside.
	NoICC bool
	// Internal cuts the network off: nothing leaves Subnet (but for the
	// host's own addresses) and nothing from outside it enters, as with
	// docker network create --internal. An internal network is not
	// masqueraded and has no published ports.
	Internal bool
	// TrustedHostInterfaces are host interfaces that may reach the
	// published container ports of the network's containers by their
	// addresses, as Docker 28's
	// com.docker.network.bridge.trusted_host_interfaces: packets to a
	// container's address from any interface but the bridge are dropped
	// (reason "direct_access"; from an uplink, "not_published"), and so
	// are those from a trusted one to an unpublished port. A trusted
	// uplink is trusted as any other interface. An interface that does
	// not exist yet is trusted once it does and the state is applied
	// again. The names are
	// colon-separated, as in Docker's option, so that a Network stays
	// comparable; Trusted splits them.
	TrustedHostInterfaces string
	// HostIPv4 is the host address the network's masqueraded traffic
	// leaves with, as Docker's com.docker.network.host_ipv4 (SNAT
	// --to-source); the zero Addr is the uplink's address. It must be one
	// of the host's addresses (State.HostAddrs).
	HostIPv4 netip.Addr
	// HostIPv6 is HostIPv4's twin for the network's IPv6 egress
	// (com.docker.network.host_ipv6); the zero Addr is the uplink's
	// IPv6 address.
	HostIPv6 netip.Addr
	// GatewayMode is the network's IPv4 gateway mode, Docker 28's
	// com.docker.network.bridge.gateway_mode_ipv4 (the zero value is
	// GatewayNAT): routed turns Masquerade off and publishes container
	// ports instead of host ports, isolated needs Internal.
	GatewayMode GatewayMode
	// GatewayModeIPv6 is com.docker.network.bridge.gateway_mode_ipv6,
	// the gateway mode of Subnet6's traffic; isolated, as for IPv4,
	// needs Internal.
	GatewayModeIPv6 GatewayMode
}

// GatewayMode is how a network reaches and is reached from the outside,
// as Docker 28's bridge driver has it (moby libnetwork/drivers/bridge,
// gwMode).
type GatewayMode uint8

const (
	// GatewayNAT (Docker's "nat", the default): published ports are
	// DNATed from the host, egress is masqueraded, and nothing from the
	// outside reaches a container address.
	GatewayNAT GatewayMode = iota
	// GatewayNATUnprotected ("nat-unprotected"): the same NAT, but every
	// port of a container is reachable from the outside by its address.
	GatewayNATUnprotected
	// GatewayRouted ("routed"): no NAT. Egress keeps the container's
	// address; the host port of a published port is ignored and the
	// container port (with ICMP) is reachable by the container's address,
	// nothing else.
	GatewayRouted
	// GatewayIsolated ("isolated"): an internal network whose bridge has
	// no address: nothing gets in or out, the host included; its
	// containers reach each other.
	GatewayIsolated
)

var gatewayModeNames = [...]string{
	GatewayNAT:            "nat",
	GatewayNATUnprotected: "nat-unprotected",
	GatewayRouted:         "routed",
	GatewayIsolated:       "isolated",
}

func (m GatewayMode) String() string {
	if int(m) < len(gatewayModeNames) {
		return gatewayModeNames[m]
	}
	return "gateway-mode-" + strconv.Itoa(int(m))
}

// ParseGatewayMode parses Docker's names of gateway modes; "" is nat.
func ParseGatewayMode(s string) (GatewayMode, error) {
	if s == "" {
		return GatewayNAT, nil
	}
	for m, name := range gatewayModeNames {
		if s == name {
			return GatewayMode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown gateway mode %q (want nat, nat-unprotected, routed or isolated)", s)
}

// masquerades tells whether traffic from n to the outside is masqueraded:
// Masquerade asks for it, and a routed or internal network has no NAT.
func (n Network) masquerades() bool {
	return n.Masquerade && !n.Internal && n.GatewayMode != GatewayRouted
}

// Endpoint is a container's interface on a network.
type Endpoint struct {
	Container   string // name, for display and metrics
	ContainerID string // the runtime's full id; "" without a runtime
	Network     string // Network.Name
	Addr        netip.Addr
	// Addr6 is the container's IPv6 address on a dual-stack network,
	// in Network.Subnet6; the zero Addr when it has none.
	Addr6    netip.Addr
	MAC      net.HardwareAddr // the container's eth0
	HostVeth string           // the host end of its veth pair
	// AllowForeignSource lets the container send from addresses that are
	// not Addr, for a container that routes for others; off, such packets
	// are dropped (reason "spoofed"). Its packets are judged by its
	// network either way.
	AllowForeignSource bool
	// Labels are the runtime's labels of the container (Docker Compose's
	// com.docker.compose.project and .service among them).
	Labels map[string]string
}

// Uplink is an interface towards the outside.
type Uplink struct {
	Name string
	// Addr is the address masqueraded traffic leaves with; the zero Addr
	// means the interface's first IPv4 address.
	Addr netip.Addr
	// Addr6 is Addr's twin for IPv6: the zero Addr means the
	// interface's first global IPv6 address.
	Addr6 netip.Addr
}

// State is what the datapath is asked to do.
type State struct {
	Networks  []Network
	Endpoints []Endpoint
	Uplinks   []Uplink
	Ports     []PortMapping
	// HostAddrs are the addresses that wildcard ports answer on and that
	// hairpin traffic recognises as the host; nil means every non-loopback
	// IPv4 address of the namespace.
	HostAddrs []netip.Addr
	// PendingVeths are bridge ports whose container the source does not
	// know yet (a veth appears before the runtime reports its container):
	// they get the programs, and counters, at once.
	PendingVeths []string
	// CgroupEndpoints are containers' interfaces that no veth of their own
	// carries (--network host, macvlan, ipvlan): their traffic is counted
	// by cgroup skb programs on the container's cgroup (cgroup.go).
	CgroupEndpoints []CgroupEndpoint
	// Shared are containers in another container's network namespace
	// (--network container:<owner>): their traffic is the owner's.
	Shared []SharedNetns
	// NoNetwork are containers without a network (--network none).
	NoNetwork []NoNetwork
	// Warnings say what the state's source left out, and why (a
	// container's port binding that cannot be honoured): the daemon logs
	// them and `bpfnet status` shows them; the datapaths ignore them.
	Warnings []string
	// AllowDirectRouting turns the protection of container addresses from
	// direct access (Network.TrustedHostInterfaces) off for every
	// network, as dockerd --allow-direct-routing does: every interface,
	// the uplinks included, reaches the published container ports by the
	// containers' addresses; unpublished ports stay closed, as Docker's
	// filter table keeps them.
	AllowDirectRouting bool
}

// Validate checks the state for contradictions before anything is applied.
func (s *State) Validate() error {
	nets := map[string]Network{}
	for _, n := range s.Networks {
		if n.Name == "" || n.Bridge == "" {
			return fmt.Errorf("network %q: name and bridge are required", n.Name)
		}
		if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() {
			return fmt.Errorf("network %s: subnet %s is not an IPv4 prefix", n.Name, n.Subnet)
		}
		if n.Subnet6.IsValid() && (!n.Subnet6.Addr().Is6() || n.Subnet6.Addr().Is4In6()) {
			return fmt.Errorf("network %s: subnet6 %s is not an IPv6 prefix", n.Name, n.Subnet6)
		}
		if n.Gateway6.IsValid() && !n.Subnet6.Contains(n.Gateway6) {
			return fmt.Errorf("network %s: IPv6 gateway %s is outside %s", n.Name, n.Gateway6, n.Subnet6)
		}
		if _, dup := nets[n.Name]; dup {
			return fmt.Errorf("network %s: defined twice", n.Name)
		}
		if n.Internal && n.Masquerade {
			return fmt.Errorf("network %s: an internal network cannot be masqueraded", n.Name)
		}
		if err := n.validateDirect(); err != nil {
			return err
		}
		if int(n.GatewayMode) >= len(gatewayModeNames) || int(n.GatewayModeIPv6) >= len(gatewayModeNames) {
			return fmt.Errorf("network %s: unknown gateway mode %s", n.Name, n.GatewayMode)
		}
		if (n.GatewayMode == GatewayIsolated || n.GatewayModeIPv6 == GatewayIsolated) && !n.Internal {
			// As Docker 28: "gateway mode 'isolated' can only be used
			// for an internal network".
			return fmt.Errorf("network %s: gateway mode isolated needs an internal network", n.Name)
		}
		nets[n.Name] = n
	}
	addrs := map[netip.Addr]bool{}
	for _, e := range s.Endpoints {
		n, ok := nets[e.Network]
		if !ok {
			return fmt.Errorf("endpoint %s: unknown network %q", e.Container, e.Network)
		}
		if !n.Subnet.Contains(e.Addr) {
			return fmt.Errorf("endpoint %s: address %s is outside %s", e.Container, e.Addr, n.Subnet)
		}
		if addrs[e.Addr] {
			return fmt.Errorf("endpoint %s: address %s used twice", e.Container, e.Addr)
		}
		addrs[e.Addr] = true
		if e.Addr6.IsValid() {
			if !n.Subnet6.IsValid() || !n.Subnet6.Contains(e.Addr6) {
				return fmt.Errorf("endpoint %s: IPv6 address %s is outside the network's IPv6 subnet %s", e.Container, e.Addr6, n.Subnet6)
			}
			if addrs[e.Addr6] {
				return fmt.Errorf("endpoint %s: address %s used twice", e.Container, e.Addr6)
			}
			addrs[e.Addr6] = true
		}
		if e.HostVeth == "" {
			return fmt.Errorf("endpoint %s: host veth is required", e.Container)
		}
	}
	taken := make(portTable, len(s.Ports))
	for _, m := range s.Ports {
		if err := taken.add(s.Networks, m); err != nil {
			return err
		}
	}
	for _, u := range s.Uplinks {
		if u.Name == "" {
			return fmt.Errorf("uplink without a name")
		}
	}
	if err := CheckHostIPv4(s.Networks, s.HostAddrs); err != nil {
		return err
	}
	return s.validateModes()
}

// Trusted are the names of TrustedHostInterfaces.
func (n Network) Trusted() []string {
	var out []string
	for _, name := range strings.Split(n.TrustedHostInterfaces, ":") {
		if name != "" {
			out = append(out, name)
		}
	}
	return out
}

// validateDirect checks the trusted interfaces and the host address of n.
func (n Network) validateDirect() error {
	for _, name := range n.Trusted() {
		if len(name) >= 16 || strings.ContainsAny(name, " /") {
			return fmt.Errorf("network %s: trusted host interface %q is not an interface name", n.Name, name)
		}
	}
	if n.HostIPv4.IsValid() && (!n.HostIPv4.Is4() || n.HostIPv4.IsUnspecified()) {
		return fmt.Errorf("network %s: host_ipv4 %s is not an IPv4 host address", n.Name, n.HostIPv4)
	}
	if n.HostIPv6.IsValid() && (!n.HostIPv6.Is6() || n.HostIPv6.Is4In6() || n.HostIPv6.IsUnspecified() || n.HostIPv6.IsLinkLocalUnicast()) {
		return fmt.Errorf("network %s: host_ipv6 %s is not a global IPv6 host address", n.Name, n.HostIPv6)
	}
	return nil
}

// CheckHostIPv4 refuses a network whose HostIPv4 is none of hostAddrs:
// its traffic would leave with an address whose answers never come back
// to the host (Docker installs its SNAT --to-source rule as given, and
// such a network's traffic is lost; bpfnet says so instead). A nil
// hostAddrs (every address of the host, which the datapath lists itself)
// checks nothing here.
func CheckHostIPv4(nets []Network, hostAddrs []netip.Addr) error {
	if hostAddrs == nil {
		return nil
	}
	for _, n := range nets {
		if n.HostIPv4.IsValid() && !slices.Contains(hostAddrs, n.HostIPv4) {
			return fmt.Errorf("network %s: host_ipv4 %s is not an address of this host", n.Name, n.HostIPv4)
		}
		if n.HostIPv6.IsValid() && !slices.Contains(hostAddrs, n.HostIPv6) {
			return fmt.Errorf("network %s: host_ipv6 %s is not an address of this host", n.Name, n.HostIPv6)
		}
	}
	return nil
}

// portTable holds the host ports accepted so far, by protocol and port.
type portTable map[protoPort][]PortMapping

type protoPort struct {
	proto Proto
	port  uint16
}

// add checks m against the networks and the ports taken before it, and
// takes its host port when it can be served.
func (t portTable) add(nets []Network, m PortMapping) error {
	if m.Proto != TCP && m.Proto != UDP {
		return fmt.Errorf("port %s: protocol must be tcp or udp", m)
	}
	v6 := m.ContainerIP.Is6() && !m.ContainerIP.Is4In6()
	routed := false
	if n, ok := networkOf(nets, m.ContainerIP); ok {
		if v6 {
			routed = n.GatewayModeIPv6 == GatewayRouted
		} else if m.ContainerIP.Is4() {
			routed = n.GatewayMode == GatewayRouted
		}
	}
	if (m.HostPort == 0 && !routed) || m.ContainerPort == 0 {
		return fmt.Errorf("port %s: port 0 cannot be published", m)
	}
	if !m.ContainerIP.Is4() && (!m.ContainerIP.Is6() || m.ContainerIP.Is4In6() || m.ContainerIP.Zone() != "") {
		return fmt.Errorf("port %s: container address must be IPv4 or IPv6", m)
	}
	if err := checkAllow(m); err != nil {
		return err
	}
	n, ok := networkOf(nets, m.ContainerIP)
	if !ok {
		// Without a network the datapath would translate towards an
		// address off the host.
		return fmt.Errorf("port %s: container address %s is in none of the networks", m, m.ContainerIP)
	}
	if n.Internal {
		return fmt.Errorf("port %s: network %s is internal and cannot publish ports", m, n.Name)
	}
	if m.IsNAT64() {
		if err := checkNAT64Mapping(n, m); err != nil {
			return err
		}
	}
	if routed {
		// Docker maps nothing on the host for a routed network: the
		// host port is ignored (moby's routed port mapper), so it takes
		// none, and the container port is what is published.
		return nil
	}
	hip := wildcardOf(m)
	if hip.Is4In6() || hip.Zone() != "" {
		return fmt.Errorf("port %s: host address must be IPv4 or IPv6, without a zone", m)
	}
	if hip.Is4() != m.ContainerIP.Is4() && !m.IsNAT64() {
		return fmt.Errorf("port %s: host address %s and container address %s are of different families", m, hip, m.ContainerIP)
	}
	// A binding to every address takes the port on each address of its
	// family, so a wildcard and a specific binding of one port and
	// protocol collide, as in Docker: moby's port allocator
	// (libnetwork/portallocator/portallocator.go, RequestPortsInRange)
	// wants a port requested on 0.0.0.0 free in every address's map, and
	// one requested on an address free on that address and on 0.0.0.0.
	// 0.0.0.0 and :: are two bindings (Docker publishes -p 8080:80 on
	// both) and do not collide.
	k := protoPort{m.Proto, m.HostPort}
	for _, o := range t[k] {
		ohip := wildcardOf(o)
		switch {
		case ohip.Is4() != hip.Is4():
		case ohip == hip:
			return fmt.Errorf("port %s: %w by %s", m, ErrPortTaken, o)
		case ohip.IsUnspecified() || hip.IsUnspecified():
			return fmt.Errorf("port %s: %w by %s (a port on %s takes it on every address)", m, ErrPortTaken, o, unspecifiedOf(hip))
		}
	}
	t[k] = append(t[k], m)
	return nil
}

// wildcardOf is the host address of m, the zero Addr read as the
// wildcard of the container address's family.
func wildcardOf(m PortMapping) netip.Addr {
	if m.HostIP.IsValid() {
		return m.HostIP
	}
	return unspecifiedOf(m.ContainerIP)
}

// unspecifiedOf is 0.0.0.0 for an IPv4 address, :: for an IPv6 one.
func unspecifiedOf(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// checkAllow checks the allowlist of a mapping: IPv4 and IPv6 prefixes
// (ParseAllow).
func checkAllow(m PortMapping) error {
	for _, p := range m.Allow {
		if err := checkAllowPrefix(p); err != nil {
			return fmt.Errorf("port %s: allowlist entry %s: %w", m, p, err)
		}
	}
	return nil
}

// checkAllowPrefix refuses what an allowlist may not hold: an invalid
// prefix, an IPv4-mapped IPv6 one, one with a zone.
func checkAllowPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not a valid prefix")
	case p.Addr().Is4In6():
		return errors.New("an IPv4-mapped IPv6 prefix: write the IPv4 prefix")
	case p.Addr().Zone() != "":
		return errors.New("a prefix with a zone")
	}
	return nil
}

// SkipUnservablePorts removes the published ports Validate would refuse,
// each judged against the networks and the ports kept before it, and
// says why for each one removed. A runtime's state goes through it, so
// that one container's binding that cannot be honoured leaves the rest
// working.
func (s *State) SkipUnservablePorts() []string {
	var warnings []string
	taken := make(portTable, len(s.Ports))
	kept := s.Ports[:0:0]
	for _, m := range s.Ports {
		if err := taken.add(s.Networks, m); err != nil {
			who := m.Container
			if who == "" {
				who = m.ContainerIP.String()
			}
			warnings = append(warnings, fmt.Sprintf("container %s: %v", who, err))
			continue
		}
		kept = append(kept, m)
	}
	s.Ports = kept
	return warnings
}

// Datapath makes the kernel do what a State asks. The ebpf and iptables
// implementations are driven the same way by the daemon, the benchmark,
// the demo and the tests.
type Datapath interface {
	// Name is "ebpf" or "iptables".
	Name() string
	// Apply makes the datapath match s. It validates s first and changes
	// nothing when s is invalid.
	Apply(ctx context.Context, s State) error
	// Close releases the process's handles and leaves the datapath working.
	Close() error
	// Remove tears the whole datapath down.
	Remove() error
}

// ParsePublish parses a published port the way `bpfnet run --publish`
// takes it: Docker's -p syntax with the container's address,
// [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp],
// IPv6 addresses in brackets as Docker writes them
// ([::]:8080:[fd00::2]:80), then options after commas, as in Docker's
// --mount: allow=CIDR[+CIDR...] is the port's source allowlist
// (PortMapping.Allow, IPv4 and IPv6 prefixes).
// A range gives one mapping per port; both ranges must have one length,
// or the container side a single port. The host and container addresses
// are of one family, but for an IPv6 host address of an IPv4 container
// (NAT64: [::]:8080:172.17.0.2:80, bpf/lib/nat64.h); without a host
// address, an IPv6 container's port is published on [::].
func ParsePublish(spec string) ([]PortMapping, error) {
	bad := func(format string, a ...any) ([]PortMapping, error) {
		return nil, fmt.Errorf("invalid --publish %q: %s", spec, fmt.Sprintf(format, a...))
	}
	spec0, opts, hasOpts := strings.Cut(spec, ",")
	var allow []netip.Prefix
	if hasOpts {
		for _, o := range strings.Split(opts, ",") {
			key, val, _ := strings.Cut(o, "=")
			switch key {
			case "allow":
				if allow != nil {
					return bad("allow= given twice")
				}
				var err error
				if allow, err = ParseAllow(val, "+"); err != nil {
					return bad("%v", err)
				}
			default:
				return bad("unknown option %q (want allow=CIDR[+CIDR...])", o)
			}
		}
	}
	rest, protoStr, _ := strings.Cut(spec0, "/")
	proto, err := ParseProto(protoStr)
	if err != nil {
		return bad("%v", err)
	}
	parts, err := splitPublish(rest)
	if err != nil {
		return bad("%v", err)
	}
	var hostIP netip.Addr
	switch len(parts) {
	case 3:
	case 4:
		if hostIP, err = parsePublishAddr(parts[0]); err != nil {
			return bad("host address: %v", err)
		}
		parts = parts[1:]
	default:
		return bad("want [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/proto], IPv6 addresses in brackets")
	}
	hlo, hhi, err := parseRange(parts[0])
	if err != nil {
		return bad("host port: %v", err)
	}
	cip, err := parsePublishAddr(parts[1])
	if err != nil {
		return bad("container address: %v", err)
	}
	if hostIP.IsValid() && hostIP.Is4() && !cip.Is4() {
		return bad("host address %s and container address %s are of different families", hostIP, cip)
	}
	if !hostIP.IsValid() && cip.Is6() {
		hostIP = netip.IPv6Unspecified()
	}
	clo, chi, err := parseRange(parts[2])
	if err != nil {
		return bad("container port: %v", err)
	}
	if chi-clo != 0 && chi-clo != hhi-hlo {
		return bad("host range %d-%d and container range %d-%d differ in length", hlo, hhi, clo, chi)
	}
	var out []PortMapping
	for p := hlo; ; p++ {
		cp := clo
		if chi != clo {
			cp = clo + (p - hlo)
		}
		out = append(out, PortMapping{Proto: proto, HostIP: hostIP, HostPort: p, ContainerIP: cip, ContainerPort: cp, Allow: allow})
		if p == hhi {
			break
		}
	}
	return out, nil
}

// splitPublish splits a --publish spec at its colons, keeping an
// address in brackets whole (without its brackets, which stay on it as
// the mark of an IPv6 address: "[fd00::2]").
func splitPublish(s string) ([]string, error) {
	var parts []string
	for {
		if strings.HasPrefix(s, "[") {
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return nil, fmt.Errorf("%q has no closing bracket", s)
			}
			field := s[:end+1]
			if strings.Contains(field[1:], "[") {
				return nil, fmt.Errorf("%q: a bracket opens inside brackets", field)
			}
			s = s[end+1:]
			if s != "" && s[0] != ':' {
				return nil, fmt.Errorf("%q: a colon must follow the closing bracket", field+s)
			}
			parts = append(parts, field)
			if s == "" {
				return parts, nil
			}
			s = s[1:]
			continue
		}
		field, next, more := strings.Cut(s, ":")
		if strings.ContainsAny(field, "[]") {
			return nil, fmt.Errorf("stray bracket in %q", field)
		}
		parts = append(parts, field)
		if !more {
			return parts, nil
		}
		s = next
	}
}

// parsePublishAddr parses an address of a --publish spec: IPv4 bare,
// IPv6 in brackets, without a zone (a published port is on every link,
// and Docker refuses zones alike).
func parsePublishAddr(s string) (netip.Addr, error) {
	inner, bracketed := strings.CutPrefix(s, "[")
	if bracketed {
		inner = strings.TrimSuffix(inner, "]")
	}
	a, err := netip.ParseAddr(inner)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	case a.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%s: zone ids are not supported", s)
	case bracketed && (a.Is4() || a.Is4In6()):
		return netip.Addr{}, fmt.Errorf("%s: only IPv6 addresses go in brackets, and not IPv4-mapped ones", s)
	case !bracketed && a.Is6():
		return netip.Addr{}, fmt.Errorf("IPv6 address %s must be in brackets ([%s])", s, s)
	}
	return a, nil
}

func parseRange(s string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	l, err := strconv.ParseUint(a, 10, 16)
	if err != nil || l == 0 {
		return 0, 0, fmt.Errorf("%q is not a port (1-65535)", a)
	}
	h := l
	if isRange {
		h, err = strconv.ParseUint(b, 10, 16)
		if err != nil || h == 0 {
			return 0, 0, fmt.Errorf("%q is not a port (1-65535)", b)
		}
		if h < l {
			return 0, 0, fmt.Errorf("range %s is reversed", s)
		}
	}
	return uint16(l), uint16(h), nil
}

// networkOf returns the network an address of either family belongs to.
func networkOf(nets []Network, a netip.Addr) (Network, bool) {
	i := slices.IndexFunc(nets, func(n Network) bool { return n.Subnet.Contains(a) || n.Subnet6.Contains(a) })
	if i < 0 {
		return Network{}, false
	}
	return nets[i], true
}
