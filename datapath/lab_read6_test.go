// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestLabReadIPv6: what the operator commands read of a dual-stack
// network: Published lists the IPv6 ports of published6 beside the IPv4
// ones, Endpoints the IPv6 endpoints beside the IPv4 ones (one of each
// per container, on the same veth), and FlushAddr of a container's IPv6
// address drops its ct6 flows and leaves the other container's.
func TestLabReadIPv6(t *testing.T) {
	c4 := netip.MustParseAddr("172.30.0.2")
	ports := []PortMapping{
		{Proto: TCP, HostPort: 8080, ContainerIP: c4, ContainerPort: 80},
		{Proto: TCP, HostPort: 8080, ContainerIP: labCtr6[0], ContainerPort: 80},
		{Proto: TCP, HostIP: labHost6, HostPort: 8081, ContainerIP: labCtr6[1], ContainerPort: 81},
	}
	l, ext := dualStackLab(t, ports)
	c0, c1 := l.topo.Containers[0], l.topo.Containers[1]

	pub := mustRead(t, l.dp.Published)
	has := func(hip netip.Addr, hp uint16, ctr netip.Addr, cp uint16) bool {
		return slices.ContainsFunc(pub, func(p PublishedPort) bool {
			return p.Binding.Proto == TCP && p.Binding.HostIP == hip && p.Binding.HostPort == hp && p.ContainerIP == ctr && p.ContainerPort == cp
		})
	}
	if len(pub) != 3 || !has(netip.IPv4Unspecified(), 8080, c4, 80) || !has(netip.IPv6Unspecified(), 8080, labCtr6[0], 80) ||
		!has(labHost6, 8081, labCtr6[1], 81) {
		t.Errorf("Published: %+v, want 0.0.0.0:8080 and [::]:8080 to container 0, [%s]:8081 to container 1", pub, labHost6)
	}
	eps := mustRead(t, l.dp.Endpoints)
	ifindex := map[netip.Addr]uint32{}
	for _, e := range eps {
		ifindex[e.Addr] = e.Ifindex
	}
	for i, c := range []netip.Addr{addrOf(c0.Addr), addrOf(c1.Addr)} {
		if len(eps) != 4 || ifindex[c] == 0 || ifindex[labCtr6[i]] != ifindex[c] {
			t.Errorf("Endpoints: %+v, want %s and %s on one veth", eps, c, labCtr6[i])
		}
	}

	// A flow of each container: a published-port connection to 0, the
	// egress of 1.
	echoTCP(t, &c0.Namespace, "[::]:80")
	echoTCP(t, &ext.Namespace, "[::]:9000")
	// (Retried while neighbour discovery settles, as in
	// TestLabIPv6DualStack.)
	greeting := func(ns interface{ Greeting(string) (string, error) }, addr string) error {
		var err error
		for try := 0; try < 20; try++ {
			if _, err = ns.Greeting(addr); err == nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return err
	}
	if err := greeting(ext, "["+labHost6.String()+"]:8080"); err != nil {
		t.Fatalf("the published IPv6 port: %v", err)
	}
	if err := greeting(c1, "["+labExt6.String()+"]:9000"); err != nil {
		t.Fatalf("container 1's IPv6 egress: %v", err)
	}
	flowsOf := func(a netip.Addr) int {
		n := 0
		for _, e := range mustRead(t, l.dp.Conntrack) {
			if e.Key.Src.Addr() == a || e.Key.Dst.Addr() == a || e.Translated.Src.Addr() == a || e.Translated.Dst.Addr() == a {
				n++
			}
		}
		return n
	}
	if flowsOf(labCtr6[0]) == 0 || flowsOf(labCtr6[1]) == 0 {
		t.Fatalf("flows of %s: %d, of %s: %d; want some of each", labCtr6[0], flowsOf(labCtr6[0]), labCtr6[1], flowsOf(labCtr6[1]))
	}
	n, err := l.dp.FlushAddr(labCtr6[0])
	if err != nil || n == 0 {
		t.Errorf("FlushAddr(%s): %d, %v; want its entries deleted", labCtr6[0], n, err)
	}
	if k := flowsOf(labCtr6[0]); k != 0 {
		t.Errorf("%d flows of %s left after FlushAddr", k, labCtr6[0])
	}
	if flowsOf(labCtr6[1]) == 0 {
		t.Errorf("FlushAddr(%s) dropped the flows of %s too", labCtr6[0], labCtr6[1])
	}
}

// TestLabReadIPv6Routed: on a routed IPv6 network a binding opens its
// container port by the container's address (routed_ports6), which
// Published lists as routed with its allowlist; back on a nat network the
// same binding is a host port again, with no routed entry left.
func TestLabReadIPv6Routed(t *testing.T) {
	allow := []netip.Prefix{netip.MustParsePrefix("2001:db8:99::/64")}
	ports := []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: labCtr6[0], ContainerPort: 80, Allow: allow}}
	l, _ := dualStackLab(t, ports)
	apply := func(mode GatewayMode) {
		t.Helper()
		err := l.topo.Host.Do(func() error {
			s, err := labState6(l.topo, ports)
			if err != nil {
				return err
			}
			s.Networks[0].GatewayModeIPv6 = mode
			return l.dp.Apply(context.Background(), s)
		})
		if err != nil {
			t.Fatalf("applying gateway_mode_ipv6=%s: %v", mode, err)
		}
	}
	for _, mode := range []GatewayMode{GatewayRouted, GatewayNAT} {
		apply(mode)
		pub := mustRead(t, l.dp.Published)
		if len(pub) != 1 {
			t.Fatalf("%s: Published %+v, want one port", mode, pub)
		}
		p := pub[0]
		routed := mode == GatewayRouted
		wantHost, wantPort := netip.IPv6Unspecified(), uint16(8080)
		if routed {
			wantHost, wantPort = labCtr6[0], 80
		}
		if p.Routed != routed || p.Binding.HostIP != wantHost || p.Binding.HostPort != wantPort || p.ContainerIP != labCtr6[0] ||
			!slices.Equal(p.Allow, allow) {
			t.Errorf("%s: Published %+v, want routed %v on [%s]:%d to [%s]:80 with the list %v", mode, p, routed, wantHost, wantPort, labCtr6[0], allow)
		}
	}
}
