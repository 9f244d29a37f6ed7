// SPDX-License-Identifier: Apache-2.0

package datapath

// Docker 28's protection of container addresses from direct access, and
// the source address of a network's masquerade, with real traffic in the
// lab, against every datapath: an extra namespace routed to the host
// through a plain veth that is not an uplink (a second NIC, a VPN, a
// namespace of another tool) tries the containers' addresses.

import (
	"context"
	"net/netip"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// Addresses of directConfig.
const (
	directC0    = "172.30.0.2"
	directC1    = "172.30.0.3"
	directUp    = "10.231.0.1" // the host on the uplink
	directOther = "10.231.1.1" // the host on the plain veth
	directSNAT  = "10.231.0.9" // a second host address on the uplink: host_ipv4
)

// directConfig: one bridge with two containers; x0 behind the uplink (the
// default route), x1 behind a veth that is not an uplink.
func directConfig() lab.Config {
	return lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}},
		Containers: []lab.ContainerConfig{{Addr: directC0}, {Addr: directC1}},
		Externals: []lab.ExternalConfig{
			{Subnet: "10.231.0.0/24", HostAddr: directUp},
			{Subnet: "10.231.1.0/24", HostAddr: directOther},
		},
	}
}

// applyWith gives the datapath the lab's state with ports, changed by edit.
func (m *modeLab) applyWith(ports []PortMapping, edit func(s *State)) error {
	return m.topo.Host.Do(func() error {
		s, err := discoverLab(m.topo, ports)
		if err != nil {
			return err
		}
		edit(&s)
		return m.dp.Apply(context.Background(), s)
	})
}

// TestLabDirectAccess: from a namespace routed in through a veth that is
// not an uplink, a container's address is dropped (direct_access) while
// the host and the container's neighbour reach it; once that veth is a
// trusted host interface of the network, the published container port
// answers and an unpublished one stays closed; with --allow-direct-routing
// the same holds without the trust. A network with host_ipv4 leaves with
// that address, one with enable_ip_masquerade=false with the container's.
func TestLabDirectAccess(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			ports := publish(t, "8080:"+directC0+":80")
			m := startMode(t, mode, directConfig(), "8080:"+directC0+":80")
			c0, c1 := m.topo.Containers[0], m.topo.Containers[1]
			x0, x1 := m.topo.Externals[0], m.topo.Externals[1]
			if c0.Addr.String() != directC0 || x1.HostAddr.String() != directOther {
				t.Fatalf("lab addresses %s %s, want those of directConfig", c0.Addr, x1.HostAddr)
			}
			echoTCP(t, &c0.Namespace, directC0+":80")
			echoTCP(t, &c0.Namespace, directC0+":81")
			echoTCP(t, &x0.Namespace, x0.Addr.String()+":9000")
			sub := m.topo.Bridges[0].Subnet.String()
			for _, x := range []*lab.External{x0, x1} {
				if _, err := x.Run(context.Background(), "ip", "route", "add", sub, "via", x.HostAddr.String()); err != nil {
					t.Fatal(err)
				}
			}
			set := func(what string, edit func(s *State)) {
				t.Helper()
				if err := m.applyWith(ports, edit); err != nil {
					t.Fatalf("applying %s: %v", what, err)
				}
			}
			reaches := func(ns *lab.Namespace, addr, want, msg string) {
				t.Helper()
				if got := tcpExchange(t, ns, addr, 1000); got != want {
					t.Errorf("%s: %s saw the client as %s, want %s", msg, addr, got, want)
				}
			}
			x1Addr := x1.Addr.String()

			t.Run("protected", func(t *testing.T) {
				set("the lab's state", func(*State) {})
				mustBeDropped(t, m.dropped, &x1.Namespace, directC0+":80", DropDirectAccess, "a published container port from a plain veth")
				mustBeDropped(t, m.dropped, &x1.Namespace, directC0+":81", DropDirectAccess, "an unpublished container port from a plain veth")
				// The twins: the host, the neighbour on the bridge and the
				// published host port from the uplink all reach c0.
				if _, err := m.topo.Host.Greeting(directC0 + ":81"); err != nil {
					t.Errorf("the host does not reach %s:81: %v", directC0, err)
				}
				reaches(&c1.Namespace, directC0+":81", directC1, "the neighbour")
				reaches(&x0.Namespace, directUp+":8080", x0.Addr.String(), "the published port from the uplink")
				reaches(&c0.Namespace, x0.Addr.String()+":9000", directUp, "masquerade")
			})
			t.Run("trusted", func(t *testing.T) {
				set("a trusted host interface", func(s *State) { s.Networks[0].TrustedHostInterfaces = "nosuchif0:" + x1.Uplink })
				reaches(&x1.Namespace, directC0+":80", x1Addr, "the published container port from the trusted veth")
				mustBeDropped(t, m.dropped, &x1.Namespace, directC0+":81", DropDirectAccess, "an unpublished container port from the trusted veth")
			})
			t.Run("trusted_uplink", func(t *testing.T) {
				// From an uplink, direct access stays not_published
				// unless the uplink is trusted too.
				mustBeDropped(t, m.dropped, &x0.Namespace, directC0+":80", DropNotPublished, "a published container port from the uplink")
				set("a trusted uplink", func(s *State) { s.Networks[0].TrustedHostInterfaces = x0.Uplink })
				reaches(&x0.Namespace, directC0+":80", x0.Addr.String(), "the published container port from the trusted uplink")
				mustBeDropped(t, m.dropped, &x0.Namespace, directC0+":81", DropNotPublished, "an unpublished container port from the trusted uplink")
				reaches(&x0.Namespace, directUp+":8080", x0.Addr.String(), "the published host port from the trusted uplink")
			})
			t.Run("allow_direct_routing", func(t *testing.T) {
				set("--allow-direct-routing", func(s *State) { s.AllowDirectRouting = true })
				reaches(&x1.Namespace, directC0+":80", x1Addr, "the published container port with --allow-direct-routing")
				mustBeDropped(t, m.dropped, &x1.Namespace, directC0+":81", DropDirectAccess, "an unpublished container port with --allow-direct-routing")
				reaches(&x0.Namespace, directC0+":80", x0.Addr.String(), "the published container port from the uplink with --allow-direct-routing")
				mustBeDropped(t, m.dropped, &x0.Namespace, directC0+":81", DropNotPublished, "an unpublished container port from the uplink with --allow-direct-routing")
				// Back to protected: the drop comes back.
				set("the lab's state", func(*State) {})
				mustBeDropped(t, m.dropped, &x1.Namespace, directC0+":80", DropDirectAccess, "a published container port from a plain veth, protected again")
			})
			t.Run("host_ipv4", func(t *testing.T) {
				if _, err := m.topo.Host.Run(context.Background(), "ip", "addr", "add", directSNAT+"/24", "dev", x0.Uplink); err != nil {
					t.Fatal(err)
				}
				set("host_ipv4", func(s *State) { s.Networks[0].HostIPv4 = netip.MustParseAddr(directSNAT) })
				reaches(&c0.Namespace, x0.Addr.String()+":9000", directSNAT, "masquerade with host_ipv4")
				reaches(&x0.Namespace, directUp+":8080", x0.Addr.String(), "the published port with host_ipv4")
				// An address that is not the host's is refused, and the
				// state before stays.
				err := m.applyWith(ports, func(s *State) { s.Networks[0].HostIPv4 = netip.MustParseAddr("10.231.0.77") })
				if err == nil {
					t.Error("host_ipv4 10.231.0.77, not a host address: applied")
				}
				reaches(&c0.Namespace, x0.Addr.String()+":9000", directSNAT, "masquerade after the refused state")
			})
			t.Run("masquerade_off", func(t *testing.T) {
				set("enable_ip_masquerade=false", func(s *State) { s.Networks[0].Masquerade = false })
				reaches(&c0.Namespace, x0.Addr.String()+":9000", directC0, "without masquerade")
				set("the lab's state", func(*State) {})
				reaches(&c0.Namespace, x0.Addr.String()+":9000", directUp, "masquerade on again")
			})
		})
	}
}

// TestHostIPv4Validate: a host_ipv4 that is not among the state's host
// addresses, or not IPv4, is refused, as is a trusted interface name that
// no interface can have.
func TestHostIPv4Validate(t *testing.T) {
	n := Network{Name: "n", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true}
	n.HostIPv4 = netip.MustParseAddr("192.0.2.9")
	s := State{Networks: []Network{n}, HostAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.9")}}
	if err := s.Validate(); err != nil {
		t.Errorf("host_ipv4 a host address: %v", err)
	}
	s.HostAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	if err := s.Validate(); err == nil {
		t.Error("host_ipv4 not a host address: valid")
	}
	s.HostAddrs = nil
	s.Networks[0].HostIPv4 = netip.MustParseAddr("2001:db8::1")
	if err := s.Validate(); err == nil {
		t.Error("host_ipv4 IPv6: valid")
	}
	s.Networks[0].HostIPv4 = netip.Addr{}
	s.Networks[0].TrustedHostInterfaces = "eth1::wg0"
	if err := s.Validate(); err != nil {
		t.Errorf("trusted eth1::wg0: %v", err)
	}
	if got := s.Networks[0].Trusted(); len(got) != 2 || got[0] != "eth1" || got[1] != "wg0" {
		t.Errorf("Trusted() = %q, want [eth1 wg0]", got)
	}
	s.Networks[0].TrustedHostInterfaces = "a-name-longer-than-15"
	if err := s.Validate(); err == nil {
		t.Error("a trusted interface name of 21 bytes: valid")
	}
}
