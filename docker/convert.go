// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"cmp"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
)

// LabelAllowForeignSource is the container label that lets a container
// send from addresses that are not its own (one that routes for others):
// "true" sets datapath.Endpoint.AllowForeignSource on its endpoints.
const LabelAllowForeignSource = "bpfnet.allow-foreign-source"

// LabelNAT64 "true" on a container without an IPv6 address makes its
// IPv6 bindings (Docker's `::` half of `-p 8080:80`) NAT64 mappings of its
// IPv4 address (datapath.PortMapping.IsNAT64), which Docker without its
// userland proxy does not serve at all; without it they are left to
// docker-proxy, as before. Only on nat and nat-unprotected networks.
const LabelNAT64 = "bpfnet.nat64"

// The container labels of published ports' source allowlists
// (datapath.PortMapping.Allow): LabelAllow=CIDR[,CIDR...] for every
// published port of the container, LabelAllowPort+"<hostPort>/<proto>"
// (bpfnet.allow.8080/tcp; the protocol defaults to tcp) for one host
// port, which wins over LabelAllow. A label whose list does not parse
// fails closed: the ports it covers are not published at all, and the
// error is logged.
const (
	LabelAllow     = "bpfnet.allow"
	LabelAllowPort = "bpfnet.allow."
)

// portKey is a PortMapping as a map key, its allowlist as text.
type portKey struct {
	proto               datapath.Proto
	hostIP, containerIP netip.Addr
	hostPort, cport     uint16
	container, allow    string
}

func keyOf(m datapath.PortMapping) portKey {
	return portKey{m.Proto, m.HostIP, m.ContainerIP, m.HostPort, m.ContainerPort, m.Container, datapath.FormatAllow(m.Allow)}
}

// bridgeNet is a network of the snapshot with what build needs of it.
type bridgeNet struct {
	Network
	ifindex int
	warn6   string // why its IPv6 half is left out, if it is
}

// build turns Docker's networks and inspected containers into a
// Snapshot, asking k for the bridges and veths.
func build(k kernel, log *slog.Logger, defaultMasq bool, nets []network.Summary, ctrs []container.InspectResponse) (Snapshot, error) {
	var snap Snapshot
	byID := map[string]*bridgeNet{}
	byName := map[string]*bridgeNet{}
	candidates, missing := 0, 0
	slices.SortFunc(nets, func(a, b network.Summary) int { return cmp.Compare(a.Name, b.Name) })
	for _, n := range nets {
		bn, ok, err := convertNetwork(k, defaultMasq, n)
		if !ok {
			if err != nil {
				log.Warn("docker network left out", "network", n.Name, "error", err)
			}
			continue
		}
		candidates++
		if err != nil {
			if errors.Is(err, errLinkNotFound) {
				missing++
			}
			log.Warn("docker network left out", "network", n.Name, "error", err)
			continue
		}
		if bn.warn6 != "" {
			log.Warn("docker network's IPv6 left out", "network", n.Name, "reason", bn.warn6)
		}
		byID[n.ID] = bn
		byName[n.Name] = bn
		snap.Networks = append(snap.Networks, bn.Network)
	}
	if candidates > 0 && missing == candidates {
		return Snapshot{}, errNoBridge
	}

	slices.SortFunc(ctrs, func(a, b container.InspectResponse) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	usedAddr := map[netip.Addr]string{}
	var ports []datapath.PortMapping
	seenPort := map[portKey]bool{}
	for _, c := range ctrs {
		eps, cports := convertContainer(k, log, byID, byName, c)
		for _, e := range eps {
			if other, dup := usedAddr[e.Addr]; dup {
				log.Warn("docker endpoint left out: address already used", "container", e.Container, "network", e.Network, "addr", e.Addr, "by", other)
				continue
			}
			if other, dup := usedAddr[e.Addr6]; dup && e.Addr6.IsValid() {
				log.Warn("docker endpoint left out: IPv6 address already used", "container", e.Container, "network", e.Network, "addr", e.Addr6, "by", other)
				continue
			}
			usedAddr[e.Addr] = e.Container
			if e.Addr6.IsValid() {
				usedAddr[e.Addr6] = e.Container
			}
			snap.Endpoints = append(snap.Endpoints, e)
		}
		for _, m := range cports {
			if !seenPort[keyOf(m)] {
				seenPort[keyOf(m)] = true
				ports = append(ports, m)
			}
		}
	}
	// The datapath's own rules decide which bindings can be served
	// (a host port taken twice, a wildcard and a specific address on one
	// port): the first container, by name, keeps it.
	st := datapath.State{Ports: ports}
	for _, n := range snap.Networks {
		st.Networks = append(st.Networks, n.Network)
	}
	for _, w := range st.SkipUnservablePorts() {
		log.Warn("docker port left out", "reason", w)
		snap.Warnings = append(snap.Warnings, w)
	}
	snap.Ports = st.Ports
	snap.Modes = convertModes(k, log, byID, byName, ctrs)
	slices.SortFunc(snap.Ports, func(a, b datapath.PortMapping) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostPort, b.HostPort), a.HostIP.Compare(b.HostIP))
	})
	return snap, nil
}

// convertNetwork maps a Docker network. ok is false for networks bpfnet
// does not serve (other drivers, no IPv4 subnet), err is set when a
// network it should serve cannot be. A network with IPv6 gets its IPv6
// subnet and gateway too (an IPv6-only one, Docker 28's
// --ipv4=false, is not served).
func convertNetwork(k kernel, defaultMasq bool, n network.Summary) (_ *bridgeNet, ok bool, _ error) {
	if n.Driver != "bridge" {
		return nil, false, nil
	}
	var subnet netip.Prefix
	var gw netip.Addr
	for _, c := range n.IPAM.Config {
		p, err := netip.ParsePrefix(c.Subnet)
		if err != nil || !p.Addr().Is4() {
			continue
		}
		subnet = p.Masked()
		gw = parseAddr(c.Gateway)
		break
	}
	if !subnet.IsValid() {
		return nil, false, nil
	}
	// A network created with --ipv6 (the default bridge with dockerd's
	// "ipv6": true and "fixed-cidr-v6") has an IPAM config of each
	// family; without EnableIPv6 an IPv6 config is not used by Docker.
	var subnet6 netip.Prefix
	var gw6 netip.Addr
	for _, c := range n.IPAM.Config {
		p, err := netip.ParsePrefix(c.Subnet)
		if !n.EnableIPv6 || err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
			continue
		}
		subnet6 = p.Masked()
		gw6 = parseAddr(c.Gateway)
		break
	}
	gwMode, err := datapath.ParseGatewayMode(n.Options[optGatewayModeIPv4])
	if err != nil {
		return nil, true, errors.New(optGatewayModeIPv4 + ": " + err.Error())
	}
	gwMode6, err := datapath.ParseGatewayMode(n.Options[optGatewayModeIPv6])
	if err != nil {
		return nil, true, errors.New(optGatewayModeIPv6 + ": " + err.Error())
	}
	if gwMode == datapath.GatewayIsolated && !n.Internal {
		// Docker 28 refuses to create such a network ("gateway mode
		// 'isolated' can only be used for an internal network"); one
		// made by an older dockerd, which keeps the option as it is,
		// is left out rather than served with the host open.
		return nil, true, errors.New(optGatewayModeIPv4 + "=isolated needs an internal network (docker network create --internal)")
	}
	bridge := n.Options[optBridgeName]
	if bridge == "" {
		if len(n.ID) < 12 {
			return nil, false, errors.New("network id " + strconv.Quote(n.ID) + " too short to name its bridge")
		}
		bridge = "br-" + n.ID[:12]
	}
	idx, addrs, err := k.bridge(bridge)
	if err != nil {
		return nil, true, err
	}
	if !gw.IsValid() || !gw.Is4() {
		// IPAM lists no gateway when a network is created with --subnet
		// only; the bridge has it.
		gw = netip.Addr{}
		for _, a := range addrs {
			if subnet.Contains(a.Addr()) {
				gw = a.Addr()
				break
			}
		}
	}
	if gwMode == datapath.GatewayIsolated {
		// Docker 28 gives an isolated network's bridge no address
		// (GetSkipGwAlloc): whatever the IPAM says, there is no gateway
		// the containers may reach.
		gw = netip.Addr{}
	} else if !gw.IsValid() || !subnet.Contains(gw) {
		return nil, true, errors.New("no gateway in " + subnet.String() + " (none in IPAM, none on bridge " + bridge + ")")
	}
	if subnet6.IsValid() && (!gw6.IsValid() || !subnet6.Contains(gw6)) {
		// Docker puts the first address of the subnet on the bridge
		// when IPAM names none; the bridge has it.
		gw6 = netip.Addr{}
		for _, a := range addrs {
			if subnet6.Contains(a.Addr()) {
				gw6 = a.Addr()
				break
			}
		}
	}
	var warn6 string
	if gwMode6 == datapath.GatewayIsolated {
		gw6 = netip.Addr{}
	} else if subnet6.IsValid() && !gw6.IsValid() {
		// Its IPv4 half is served still.
		warn6 = "no IPv6 gateway in " + subnet6.String() + " (none in IPAM, none on bridge " + bridge + "): served without IPv6"
		subnet6 = netip.Prefix{}
	}
	def := n.Options[optDefaultBridge] == "true"
	masq := n.Options[optMasquerade] != "false"
	if def {
		masq = defaultMasq
	}
	if n.Internal {
		masq = false
	}
	icc := n.Options[optICC] != "false"
	var hostIPv4 netip.Addr
	if v := n.Options[optHostIPv4]; v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return nil, true, errors.New(optHostIPv4 + " " + strconv.Quote(v) + " is not an IPv4 address")
		}
		hostIPv4 = a
	}
	var hostIPv6 netip.Addr
	if v := n.Options[optHostIPv6]; v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is6() || a.Is4In6() {
			return nil, true, errors.New(optHostIPv6 + " " + strconv.Quote(v) + " is not an IPv6 address")
		}
		hostIPv6 = a
	}
	return &bridgeNet{
		Network: Network{
			Network: datapath.Network{
				Name:       n.Name,
				Bridge:     bridge,
				Subnet:     subnet,
				Gateway:    gw,
				Subnet6:    subnet6,
				Gateway6:   gw6,
				Masquerade: masq,
				// Docker's isolation settings, which the datapath
				// enforces.
				NoICC:                 !icc,
				Internal:              n.Internal,
				TrustedHostInterfaces: n.Options[optTrustedIfaces],
				HostIPv4:              hostIPv4,
				HostIPv6:              hostIPv6,
				GatewayMode:           gwMode,
				GatewayModeIPv6:       gwMode6,
			},
			ID:       n.ID,
			Default:  def,
			Internal: n.Internal,
			ICC:      icc,
		},
		ifindex: idx,
		warn6:   warn6,
	}, true, nil
}

// convertContainer maps a running container's interfaces on the networks
// served and its published ports.
func convertContainer(k kernel, log *slog.Logger, byID, byName map[string]*bridgeNet, c container.InspectResponse) ([]datapath.Endpoint, []datapath.PortMapping) {
	if c.ContainerJSONBase == nil || c.State == nil || !c.State.Running || c.State.Pid <= 0 || c.NetworkSettings == nil {
		return nil, nil
	}
	name := strings.TrimPrefix(c.Name, "/")
	var labels map[string]string
	if c.Config != nil && len(c.Config.Labels) > 0 {
		labels = maps.Clone(c.Config.Labels)
	}
	foreign := false
	if v, ok := labels[LabelAllowForeignSource]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			log.Warn("container label ignored: not a boolean", "container", name, "label", LabelAllowForeignSource, "value", v)
		}
		foreign = b
	}
	type attached struct {
		net   *bridgeNet
		es    *network.EndpointSettings
		addr  netip.Addr
		addr6 netip.Addr // on a dual-stack network; the zero Addr if none
	}
	var att []attached
	for netName, es := range c.NetworkSettings.Networks {
		if es == nil {
			continue
		}
		n := byID[es.NetworkID]
		if n == nil {
			n = byName[netName]
		}
		if n == nil {
			continue // not a network served, or left out
		}
		addr := parseAddr(es.IPAddress)
		if !addr.Is4() || !n.Subnet.Contains(addr) {
			if es.IPAddress != "" {
				log.Warn("docker endpoint left out: address outside the network", "container", name, "network", n.Name, "addr", es.IPAddress, "subnet", n.Subnet)
			}
			continue
		}
		var addr6 netip.Addr
		if es.GlobalIPv6Address != "" {
			a := parseAddr(es.GlobalIPv6Address)
			if a.Is6() && n.Subnet6.Contains(a) {
				addr6 = a
			} else {
				log.Warn("docker endpoint's IPv6 address left out: outside the network's IPv6 subnet", "container", name, "network", n.Name, "addr", es.GlobalIPv6Address, "subnet6", n.Subnet6)
			}
		}
		att = append(att, attached{n, es, addr, addr6})
	}
	// Docker's order of a container's endpoints: the one that gets the
	// default gateway and the published ports comes first.
	slices.SortFunc(att, func(a, b attached) int {
		if a.es.GwPriority != b.es.GwPriority {
			return cmp.Compare(b.es.GwPriority, a.es.GwPriority)
		}
		if a.net.Internal != b.net.Internal {
			if a.net.Internal {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.net.Name, b.net.Name)
	})

	var eps []datapath.Endpoint
	resolved := map[string]bool{}
	for _, a := range att {
		var mac net.HardwareAddr
		if a.es.MacAddress != "" {
			m, err := net.ParseMAC(a.es.MacAddress)
			if err != nil {
				log.Warn("docker endpoint left out: bad MAC", "container", name, "network", a.net.Name, "mac", a.es.MacAddress)
				continue
			}
			mac = m
		}
		veth, master, err := k.hostVeth(c.State.Pid, mac, a.addr)
		if errors.Is(err, errGone) {
			return nil, nil // it died since it was inspected
		}
		if err != nil {
			log.Warn("docker endpoint left out", "container", name, "network", a.net.Name, "error", err)
			continue
		}
		if master != a.net.ifindex {
			log.Warn("docker endpoint left out: its veth is not on the network's bridge", "container", name, "network", a.net.Name, "veth", veth, "bridge", a.net.Bridge)
			continue
		}
		eps = append(eps, datapath.Endpoint{
			Container:   name,
			ContainerID: c.ID,
			Network:     a.net.Name,
			Addr:        a.addr,
			Addr6:       a.addr6,
			MAC:         mac,
			HostVeth:    veth,
			Labels:      labels,

			AllowForeignSource: foreign,
		})
		resolved[a.net.Name] = true
	}

	if len(att) == 0 || att[0].net.Internal || !resolved[att[0].net.Name] {
		// Docker publishes no ports on internal networks; ports to an
		// endpoint left out would lead nowhere.
		return eps, nil
	}
	target, target6 := att[0].addr, att[0].addr6
	var ports []datapath.PortMapping
	seen := map[portKey]bool{}
	usedLabels := map[string]bool{}
	cports := slices.Sorted(maps.Keys(c.NetworkSettings.Ports))
	for _, cp := range cports {
		proto, err := datapath.ParseProto(cp.Proto())
		if err != nil {
			continue // sctp
		}
		cport := cp.Int()
		if cport <= 0 || cport > 65535 {
			continue
		}
		for _, b := range c.NetworkSettings.Ports[cp] {
			// The host addresses of the binding: an empty HostIP is
			// every address of both families, as Docker publishes it
			// on a network with IPv6 (0.0.0.0 and ::).
			var hips []netip.Addr
			switch b.HostIP {
			case "":
				hips = []netip.Addr{{}, netip.IPv6Unspecified()}
			default:
				hip, err := netip.ParseAddr(b.HostIP)
				if err != nil || hip.Zone() != "" || hip.Is4In6() {
					continue
				}
				if hip.Is4() && hip.IsUnspecified() {
					hip = netip.Addr{}
				}
				hips = []netip.Addr{hip}
			}
			hport, err := strconv.ParseUint(b.HostPort, 10, 16)
			if err != nil || hport == 0 {
				continue
			}
			for _, hip := range hips {
				cip := target
				if hip.Is6() {
					// An IPv6 binding of a container without an IPv6
					// address is Docker's userland proxy's (it
					// forwards to the IPv4 address, losing the
					// client's): nothing the datapath translates.
					switch {
					case target6.IsValid():
						cip = target6
					case labels[LabelNAT64] == "true" && target.IsValid() &&
						(att[0].net.GatewayMode == datapath.GatewayNAT || att[0].net.GatewayMode == datapath.GatewayNATUnprotected):
						// Translated in the datapath instead,
						// the client's address kept (in the NAT64
						// pool's form).
					default:
						continue
					}
				}
				if m, ok := portMapping(log, name, labels, usedLabels, att[0].net, proto, hip, uint16(hport), cip, uint16(cport)); ok && !seen[keyOf(m)] {
					seen[keyOf(m)] = true
					ports = append(ports, m)
				}
			}
		}
	}
	for _, l := range slices.Sorted(maps.Keys(labels)) {
		if strings.HasPrefix(l, LabelAllowPort) && !usedLabels[l] {
			log.Warn("container label ignored: it names no published host port (want "+LabelAllowPort+"<hostPort>/<proto>)", "container", name, "label", l)
		}
	}
	return eps, ports
}

// portMapping is one published port of container name towards cip, from
// one of its bindings: ok is false when its allowlist label does not
// parse, so that the port stays closed.
func portMapping(log *slog.Logger, name string, labels map[string]string, usedLabels map[string]bool, n *bridgeNet,
	proto datapath.Proto, hip netip.Addr, hport uint16, cip netip.Addr, cport uint16) (_ datapath.PortMapping, ok bool) {
	allow, label, err := allowFor(labels, hport, proto)
	usedLabels[label] = true
	if err != nil {
		log.Error("docker port not published: its allowlist label is invalid, so the port stays closed rather than open to all",
			"container", name, "host_port", hport, "protocol", proto.String(), "label", label, "value", labels[label], "error", err)
		return datapath.PortMapping{}, false
	}
	if (cip.Is4() && n.GatewayMode == datapath.GatewayRouted) || (cip.Is6() && n.GatewayModeIPv6 == datapath.GatewayRouted) {
		// Docker 28 maps nothing on the host for a routed network (its
		// routed port mapper ignores the host port), in either family
		// (gateway_mode_ipv4, gateway_mode_ipv6): the binding publishes
		// the container port.
		hip, hport = netip.Addr{}, 0
	}
	return datapath.PortMapping{
		Proto: proto, HostIP: hip, HostPort: hport,
		ContainerIP: cip, ContainerPort: cport, Container: name,
		Allow: allow,
	}, true
}

// allowFor is the allowlist of a container's published host port from its
// labels: the port's own label first, then the container's. label names
// the label it came from ("" for none, and a nil list: open to all).
func allowFor(labels map[string]string, hostPort uint16, proto datapath.Proto) (_ []netip.Prefix, label string, _ error) {
	port := strconv.Itoa(int(hostPort))
	for _, l := range []string{LabelAllowPort + port + "/" + proto.String(), LabelAllowPort + port, LabelAllow} {
		if l == LabelAllowPort+port && proto != datapath.TCP {
			continue // no protocol means tcp, as in docker run -p
		}
		v, ok := labels[l]
		if !ok {
			continue
		}
		ps, err := datapath.ParseAllow(v, ",")
		return ps, l, err
	}
	return nil, "", nil
}
