// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// Addresses of the IPv6 half of the dual-stack lab (lab.Config is IPv4
// only: the test adds them).
const (
	v6Br0, v6C0           = "fd00:30::1", "fd00:30::2"
	v6Br1, v6C1           = "fd00:31::1", "fd00:31::2"
	v6HostAddr, v6ExtAddr = "fd00:99::1", "fd00:99::2"
)

// addIPv6 gives the lab of TestRulesLabIPv6 its IPv6 addresses and routes:
// each bridge its gateway, each container an address and a default route
// through it, the uplink and the external host an address each, and the
// external host a route to the first network through the host (for the
// direct-access probe; without masquerade the answers come back by it).
func addIPv6(t *testing.T, topo *lab.Topology) {
	t.Helper()
	ctx := context.Background()
	run := func(ns *lab.Namespace, args ...string) {
		t.Helper()
		if out, err := ns.Command(ctx, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v in %s: %v\n%s", args, ns.Name, err, out)
		}
	}
	ext := topo.Externals[0]
	run(topo.Host, "-6", "addr", "add", v6Br0+"/64", "dev", topo.Bridges[0].Name, "nodad")
	run(topo.Host, "-6", "addr", "add", v6Br1+"/64", "dev", topo.Bridges[1].Name, "nodad")
	run(topo.Host, "-6", "addr", "add", v6HostAddr+"/64", "dev", ext.Uplink, "nodad")
	for i, c := range topo.Containers {
		addr, gw := v6C0, v6Br0
		if i == 1 {
			addr, gw = v6C1, v6Br1
		}
		run(&c.Namespace, "-6", "addr", "add", addr+"/64", "dev", "eth0", "nodad")
		run(&c.Namespace, "-6", "route", "add", "default", "via", gw)
	}
	run(&ext.Namespace, "-6", "addr", "add", v6ExtAddr+"/64", "dev", "eth0", "nodad")
	run(&ext.Namespace, "-6", "route", "add", "fd00:30::/64", "via", v6HostAddr)
}

// dualStackState is the lab's state with the IPv6 halves of both
// networks and endpoints, and ports.
func dualStackState(t *testing.T, m *modeLab, masq bool, specs ...string) State {
	t.Helper()
	var s State
	err := m.topo.Host.Do(func() error {
		var err error
		s, err = discoverLab(m.topo, publish(t, specs...))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range s.Networks {
		n := &s.Networks[i]
		sub, gw := "fd00:30::/64", v6Br0
		if n.Bridge == m.topo.Bridges[1].Name {
			sub, gw = "fd00:31::/64", v6Br1
		}
		// Discover reads them from the bridge.
		if n.Subnet6 != netip.MustParsePrefix(sub) || n.Gateway6 != netip.MustParseAddr(gw) {
			t.Errorf("Discover: bridge %s has IPv6 %s %s, want %s %s", n.Bridge, n.Subnet6, n.Gateway6, sub, gw)
		}
		if n.Bridge == m.topo.Bridges[0].Name {
			n.Masquerade = masq
		}
	}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		a := v6C0
		if e.HostVeth == m.topo.Containers[1].HostVeth {
			a = v6C1
		}
		e.Addr6 = netip.MustParseAddr(a)
	}
	return s
}

// drops6 sums the packets matched by the comparator's IPv6 drop rules
// that stand for reason: isolation (ISOLATION-STAGE-2's DROP, the nft
// rules commented ISOLATION) or direct access (the raw PREROUTING DROPs).
func drops6(t *testing.T, m *modeLab, reason DropReason) uint64 {
	t.Helper()
	ctx := context.Background()
	switch m.dp.Name() {
	case "iptables":
		table, chain := "filter", "BPFNET-ISOLATION-STAGE-2"
		if reason == DropDirectAccess {
			table, chain = "raw", "PREROUTING"
		}
		out, err := m.topo.Host.Run(ctx, "ip6tables", "-t", table, "-L", chain, "-v", "-x", "-n")
		if err != nil {
			t.Fatalf("ip6tables -L %s: %v\n%s", chain, err, out)
		}
		var n uint64
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) > 2 && f[2] == "DROP" {
				v, _ := strconv.ParseUint(f[0], 10, 64)
				n += v
			}
		}
		return n
	case "nftables":
		comment := map[DropReason]string{DropIsolation: "ISOLATION", DropDirectAccess: "DROP DIRECT ACCESS"}[reason]
		out, err := m.topo.Host.Run(ctx, "nft", "list", "table", "ip6", "bpfnet-bridges")
		if err != nil {
			t.Fatalf("nft list table ip6: %v\n%s", err, out)
		}
		re := regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "` + comment + `"`)
		var n uint64
		for _, mm := range re.FindAllStringSubmatch(string(out), -1) {
			v, _ := strconv.ParseUint(mm[1], 10, 64)
			n += v
		}
		return n
	}
	t.Fatalf("no IPv6 drop counters for %s", m.dp.Name())
	return 0
}

// TestRulesLabIPv6: with each comparator (iptables through ip6tables,
// nftables' ip6 table), on a dual-stack lab: an IPv6 published port
// answers the external client with its address kept, while the
// container's address itself is dropped from outside (raw, DROP DIRECT
// ACCESS); IPv6 egress is masqueraded to the uplink's address, and leaves
// with the container's own once the network is not masqueraded; a
// container of the other IPv6 network is dropped by the isolation while
// the host reaches the same port. The IPv4 published port answers in the
// same run.
func TestRulesLabIPv6(t *testing.T) {
	for _, mode := range []string{modeIptables, modeNftables} {
		t.Run(mode, func(t *testing.T) { testRulesIPv6(t, mode) })
	}
}

func testRulesIPv6(t *testing.T, mode string) {
	requireRoot(t)
	lab.RequireTools(t, "ip6tables", "nft")
	cfg := lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}, {Subnet: "172.30.1.0/24"}},
		Containers: []lab.ContainerConfig{{Bridge: 0, Addr: "172.30.0.2"}, {Bridge: 1, Addr: "172.30.1.2"}},
		Externals:  []lab.ExternalConfig{{Subnet: "10.231.0.0/24", HostAddr: modeHost}},
	}
	m := startMode(t, mode, cfg)
	addIPv6(t, m.topo)
	c0, c1, ext := m.topo.Containers[0], m.topo.Containers[1], m.topo.Externals[0]
	ports := []string{"8080:172.30.0.2:80", "[::]:8080:[" + v6C0 + "]:80"}
	apply := func(masq bool) {
		t.Helper()
		if err := m.topo.Host.Do(func() error {
			return m.dp.Apply(context.Background(), dualStackState(t, m, masq, ports...))
		}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	apply(true)
	hp := func(a string, p int) string { return net.JoinHostPort(a, strconv.Itoa(p)) }
	echoTCP(t, &c0.Namespace, hp("::", 80)) // both families
	echoTCP(t, &c1.Namespace, hp("::", 80))
	echoTCP(t, &ext.Namespace, hp("::", 9000))

	// Published over IPv6, the client's address kept; over IPv4 too.
	if got := tcpExchange(t, &ext.Namespace, hp(v6HostAddr, 8080), 100000); got != v6ExtAddr {
		t.Errorf("[%s]:8080 from outside: the container saw %s, want the client %s", v6HostAddr, got, v6ExtAddr)
	}
	if got := tcpExchange(t, &ext.Namespace, hp(modeHost, 8080), 1000); got != ext.Addr.String() {
		t.Errorf("%s:8080 from outside: the container saw %s, want the client %s", modeHost, got, ext.Addr)
	}
	// The container's own address from outside: dropped before NAT.
	mustBeDropped(t, func(t *testing.T, r DropReason) uint64 { return drops6(t, m, r) },
		&ext.Namespace, hp(v6C0, 80), DropDirectAccess, "the container's IPv6 address from outside")

	// Egress: masqueraded to the uplink's IPv6 address.
	if got := tcpExchange(t, &c0.Namespace, hp(v6ExtAddr, 9000), 1000); got != v6HostAddr {
		t.Errorf("%s to the outside over IPv6: the server saw %s, want the host %s", c0.Name, got, v6HostAddr)
	}
	if got := tcpExchange(t, &c1.Namespace, hp(v6ExtAddr, 9000), 1000); got != v6HostAddr {
		// c1's network is masqueraded, and the outside has no route
		// back to it: only the masquerade brings the answer.
		t.Errorf("%s to the outside over IPv6: the server saw %s, want the host %s", c1.Name, got, v6HostAddr)
	}

	// Isolation between the two IPv6 networks: c1 publishes nothing, so
	// what drops c0's SYN to it is the isolation itself; the host
	// reaches the same port (its source is the bridge's address). The
	// other way, c0's published address is dropped first by the raw
	// table, as over IPv4.
	mustBeDropped(t, func(t *testing.T, r DropReason) uint64 { return drops6(t, m, r) },
		&c0.Namespace, hp(v6C1, 80), DropIsolation, "a container of the other IPv6 network")
	if got := tcpExchange(t, m.topo.Host, hp(v6C1, 80), 1000); got != v6Br1 {
		t.Errorf("the host to [%s]:80: the container saw %s, want %s", v6C1, got, v6Br1)
	}
	mustBeDropped(t, func(t *testing.T, r DropReason) uint64 { return drops6(t, m, r) },
		&c1.Namespace, hp(v6C0, 80), DropDirectAccess, "the other network's published container")
	if got := tcpExchange(t, m.topo.Host, hp(v6C0, 80), 1000); got != v6Br0 {
		t.Errorf("the host to [%s]:80: the container saw %s, want %s", v6C0, got, v6Br0)
	}

	// Not masqueraded: egress keeps the container's address (the
	// outside routes it back), the twin of the masqueraded probe.
	apply(false)
	if got := tcpExchange(t, &c0.Namespace, hp(v6ExtAddr, 9000), 1000); got != v6C0 {
		t.Errorf("%s to the outside, not masqueraded: the server saw %s, want %s", c0.Name, got, v6C0)
	}
}
