// SPDX-License-Identifier: Apache-2.0

package datapath

// The IPv6 half of the protection of container addresses from direct
// access and of the routed gateway mode, with real IPv6 traffic in the
// lab: directConfig's namespaces get IPv6 on every link, x1 behind a veth
// that is not an uplink, x0 behind the uplink.

import (
	"net/netip"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// Addresses of the IPv6 side of directConfig.
var (
	direct6Gw    = netip.MustParseAddr("fd00:31::1")
	direct6C0    = netip.MustParseAddr("fd00:31::2")
	direct6C1    = netip.MustParseAddr("fd00:31::3")
	direct6Sub   = netip.MustParsePrefix("fd00:31::/64")
	direct6Up    = netip.MustParseAddr("2001:db8:232::1") // the host on the uplink
	direct6X0    = netip.MustParseAddr("2001:db8:232::2")
	direct6Other = netip.MustParseAddr("2001:db8:233::1") // the host on the plain veth
	direct6X1    = netip.MustParseAddr("2001:db8:233::2")
)

// TestLabIPv6DirectAccess, against every datapath: from a namespace routed in through a veth that
// is not an uplink, a container's IPv6 address is dropped (direct_access)
// while the host, the container's neighbour and the published host port
// from the uplink reach it; as a trusted host interface that veth reaches
// the published container port and not an unpublished one; with
// --allow-direct-routing the same holds without the trust. On a routed
// IPv6 network the published container port answers the uplink's
// namespace by the container's address, with its own address seen, and
// an unpublished one is dropped (not_published). On an internal network
// isolated in IPv6 only, the host and its containers do not reach each
// other by IPv6 (by IPv4 they do), while its containers reach each other.
func TestLabIPv6DirectAccess(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { labIPv6DirectAccess(t, mode) })
	}
}

func labIPv6DirectAccess(t *testing.T, mode string) {
	ports := []PortMapping{
		{Proto: TCP, HostPort: 8080, ContainerIP: netip.MustParseAddr(directC0), ContainerPort: 80},
		{Proto: TCP, HostPort: 8080, ContainerIP: direct6C0, ContainerPort: 80},
	}
	m := startMode(t, mode, directConfig(), "8080:"+directC0+":80")
	topo := m.topo
	c0, c1 := topo.Containers[0], topo.Containers[1]
	x0, x1 := topo.Externals[0], topo.Externals[1]
	steps := []func() error{
		func() error { return topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1") },
		func() error { return topo.Host.AddAddr6(topo.Bridges[0].Name, direct6Gw, 64) },
		func() error { return topo.Host.AddAddr6(x0.Uplink, direct6Up, 64) },
		func() error { return topo.Host.AddAddr6(x1.Uplink, direct6Other, 64) },
		func() error { return x0.Namespace.AddAddr6("eth0", direct6X0, 64) },
		func() error { return x1.Namespace.AddAddr6("eth0", direct6X1, 64) },
		func() error { return topo.Host.AddRoute6(x0.Uplink, netip.Prefix{}, direct6X0) },
		// Both reach the containers' prefix through the host.
		func() error { return x0.Namespace.AddRoute6("eth0", direct6Sub, direct6Up) },
		func() error { return x1.Namespace.AddRoute6("eth0", direct6Sub, direct6Other) },
	}
	for i, c := range []*lab.Container{c0, c1} {
		a := []netip.Addr{direct6C0, direct6C1}[i]
		steps = append(steps,
			func() error { return c.Namespace.AddAddr6("eth0", a, 64) },
			func() error { return c.Namespace.AddRoute6("eth0", netip.Prefix{}, direct6Gw) })
	}
	for _, st := range steps {
		if err := st(); err != nil {
			t.Fatalf("adding IPv6 to the lab: %v", err)
		}
	}
	applyPorts := func(what string, ports []PortMapping, edit func(s *State)) {
		t.Helper()
		err := m.applyWith(ports, func(s *State) {
			s.Networks[0].Subnet6, s.Networks[0].Gateway6 = direct6Sub, direct6Gw
			for i := range s.Endpoints {
				switch s.Endpoints[i].HostVeth {
				case c0.HostVeth:
					s.Endpoints[i].Addr6 = direct6C0
				case c1.HostVeth:
					s.Endpoints[i].Addr6 = direct6C1
				}
			}
			edit(s)
		})
		if err != nil {
			t.Fatalf("applying %s: %v", what, err)
		}
	}
	apply := func(what string, edit func(s *State)) { t.Helper(); applyPorts(what, ports, edit) }
	dropped := m.dropped
	reaches := func(ns *lab.Namespace, addr string, want netip.Addr, msg string) {
		t.Helper()
		if got := tcpExchange(t, ns, addr, 1000); got != want.String() {
			t.Errorf("%s: %s saw the client as %s, want %s", msg, addr, got, want)
		}
	}
	at := func(a netip.Addr, port string) string { return "[" + a.String() + "]:" + port }
	echoTCP(t, &c0.Namespace, "[::]:80")
	echoTCP(t, &c0.Namespace, "[::]:81")

	t.Run("protected", func(t *testing.T) {
		apply("the lab's state", func(*State) {})
		// The twins first (which also resolve the neighbours on the
		// way): the host, the neighbour and the published host port
		// from the uplink reach c0, x1 the host's address on its link.
		if _, err := topo.Host.Greeting(at(direct6C0, "81")); err != nil {
			t.Errorf("the host does not reach [%s]:81: %v", direct6C0, err)
		}
		reaches(&c1.Namespace, at(direct6C0, "81"), direct6C1, "the neighbour")
		reaches(&x0.Namespace, at(direct6Up, "8080"), direct6X0, "the published port from the uplink")
		mustPing(t, &x1.Namespace, direct6Other.String(), true, "x1 to the host")
		mustBeDropped(t, dropped, &x1.Namespace, at(direct6C0, "80"), DropDirectAccess, "a published container port from a plain veth")
		mustBeDropped(t, dropped, &x1.Namespace, at(direct6C0, "81"), DropDirectAccess, "an unpublished container port from a plain veth")
		mustBeDropped(t, dropped, &x0.Namespace, at(direct6C0, "80"), DropNotPublished, "a published container port from the uplink")
	})
	t.Run("trusted", func(t *testing.T) {
		apply("a trusted host interface", func(s *State) { s.Networks[0].TrustedHostInterfaces = x1.Uplink })
		reaches(&x1.Namespace, at(direct6C0, "80"), direct6X1, "the published container port from the trusted veth")
		mustBeDropped(t, dropped, &x1.Namespace, at(direct6C0, "81"), DropDirectAccess, "an unpublished container port from the trusted veth")
	})
	t.Run("trusted_uplink", func(t *testing.T) {
		apply("a trusted uplink", func(s *State) { s.Networks[0].TrustedHostInterfaces = x0.Uplink })
		reaches(&x0.Namespace, at(direct6C0, "80"), direct6X0, "the published container port from the trusted uplink")
		mustBeDropped(t, dropped, &x0.Namespace, at(direct6C0, "81"), DropNotPublished, "an unpublished container port from the trusted uplink")
	})
	t.Run("allow_direct_routing", func(t *testing.T) {
		apply("--allow-direct-routing", func(s *State) { s.AllowDirectRouting = true })
		reaches(&x1.Namespace, at(direct6C0, "80"), direct6X1, "the published container port with --allow-direct-routing")
		mustBeDropped(t, dropped, &x1.Namespace, at(direct6C0, "81"), DropDirectAccess, "an unpublished container port with --allow-direct-routing")
		apply("the lab's state", func(*State) {})
		mustBeDropped(t, dropped, &x1.Namespace, at(direct6C0, "80"), DropDirectAccess, "a published container port from a plain veth, protected again")
	})
	t.Run("routed", func(t *testing.T) {
		apply("gateway_mode_ipv6=routed", func(s *State) { s.Networks[0].GatewayModeIPv6 = GatewayRouted })
		reaches(&x0.Namespace, at(direct6C0, "80"), direct6X0, "the published container port of a routed network")
		mustBeDropped(t, dropped, &x0.Namespace, at(direct6C0, "81"), DropNotPublished, "an unpublished container port of a routed network")
		reaches(&x1.Namespace, at(direct6C0, "80"), direct6X1, "the published container port of a routed network from a plain veth")
		mustBeDropped(t, dropped, &x1.Namespace, at(direct6C0, "81"), DropNotPublished, "an unpublished container port of a routed network from a plain veth")
		// Egress keeps the container's address.
		echoTCP(t, &x0.Namespace, "[::]:9000")
		reaches(&c0.Namespace, at(direct6X0, "9000"), direct6C0, "egress of a routed network")
	})
	t.Run("isolated", func(t *testing.T) {
		// An internal network, isolated in IPv6 only: the host is cut
		// off from its IPv6 addresses, not from its IPv4 ones.
		for _, mode6 := range []GatewayMode{GatewayNAT, GatewayIsolated} {
			isolated := mode6 == GatewayIsolated
			applyPorts("an internal network, gateway_mode_ipv6="+mode6.String(), nil, func(s *State) {
				s.Networks[0].Internal, s.Networks[0].Masquerade, s.Networks[0].GatewayModeIPv6 = true, false, mode6
			})
			what := mode6.String() + ": "
			mustPing(t, &c0.Namespace, direct6C1.String(), true, what+"c0 to c1")
			mustPing(t, &c1.Namespace, direct6C0.String(), true, what+"c1 to c0")
			m.mustPingFromHost(t, direct6C0.String(), !isolated, what+"host to c0's IPv6 address")
			mustPing(t, &c0.Namespace, direct6Gw.String(), !isolated, what+"c0 to its IPv6 gateway")
			mustPing(t, &c0.Namespace, direct6Up.String(), !isolated, what+"c0 to the host's uplink IPv6 address")
			// IPv4 is only internal: the host is still there.
			m.mustPingFromHost(t, directC0, true, what+"host to c0's IPv4 address")
			mustPing(t, &c0.Namespace, topo.Bridges[0].Gateway.String(), true, what+"c0 to its IPv4 gateway")
		}
		if _, ok := m.dp.(*EBPF); ok {
			if n := m.dropped(t, DropInternal); n == 0 {
				t.Errorf("no drop counted as internal")
			}
		}
	})
}
