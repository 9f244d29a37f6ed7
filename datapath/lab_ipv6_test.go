// SPDX-License-Identifier: Apache-2.0

package datapath

// A dual-stack network in the lab, with real traffic: an IPv4 and an IPv6
// published port answering in the same run with the client's address
// kept, IPv6 egress masqueraded to the uplink's address, ping -6. The lab
// package builds IPv4 topologies; the IPv6 addresses and routes are added
// here.

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

var (
	labHost6  = netip.MustParseAddr("2001:db8:231::1") // the host's uplink
	labExt6   = netip.MustParseAddr("2001:db8:231::2") // the external namespace
	labGw6    = netip.MustParseAddr("fd00:30::1")      // the bridge
	labCtr6   = []netip.Addr{netip.MustParseAddr("fd00:30::2"), netip.MustParseAddr("fd00:30::3")}
	labSub6   = netip.MustParsePrefix("fd00:30::/64")
	labUplnk6 = netip.MustParsePrefix("2001:db8:231::/64")
)

// dualStackLab is a lab of one bridge with two containers and one
// external namespace, IPv6 added on every link, and the datapath running
// with the state's IPv6 half filled in and ports published on both
// families.
func dualStackLab(t *testing.T, ports []PortMapping) (*labDatapath, *lab.External) {
	t.Helper()
	return dualStackLabWith(t, lab.Config{Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 0}}}, ports, Options{})
}

// labExt6Of is the IPv6 address of external i (labExt6 for the first) and
// labHost6Of the host's on its uplink: each external has a /64 of its own,
// 2001:db8:231::/64, 2001:db8:232::/64 and so on.
func labExt6Of(i int) netip.Addr  { return lab6Addr(i, 2) }
func labHost6Of(i int) netip.Addr { return lab6Addr(i, 1) }

func lab6Addr(i int, last byte) netip.Addr {
	a := labHost6.As16()
	a[5] += byte(i)
	a[15] = last
	return netip.AddrFrom16(a)
}

// dualStackLabWith is dualStackLab on the topology of cfg (one bridge),
// with the datapath's options (the pin path is the lab's): every external
// gets its uplink's /64 (labExt6Of, labHost6Of), and each uplink is one of
// the state's.
func dualStackLabWith(t *testing.T, cfg lab.Config, ports []PortMapping, opts Options) (*labDatapath, *lab.External) {
	t.Helper()
	l := newLabDatapath(t, cfg)
	topo := l.topo
	ext := topo.Externals[0]
	steps := []func() error{
		func() error { return topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1") },
		func() error { return topo.Host.AddAddr6(ext.Uplink, labHost6, 64) },
		func() error { return topo.Host.AddAddr6(topo.Bridges[0].Name, labGw6, 64) },
		func() error { return ext.Namespace.AddAddr6("eth0", labExt6, 64) },
		// Only for the negative: with a route to the containers, a
		// packet straight to one reaches the host, which must refuse it.
		func() error { return ext.Namespace.AddRoute6("eth0", labSub6, labHost6) },
		func() error { return topo.Host.AddRoute6(ext.Uplink, netip.Prefix{}, labExt6) },
	}
	for i, c := range topo.Containers {
		steps = append(steps,
			func() error { return c.Namespace.AddAddr6("eth0", labCtr6[i], 64) },
			func() error { return c.Namespace.AddRoute6("eth0", netip.Prefix{}, labGw6) })
	}
	for i, x := range topo.Externals[1:] {
		steps = append(steps,
			func() error { return topo.Host.AddAddr6(x.Uplink, labHost6Of(i+1), 64) },
			func() error { return x.Namespace.AddAddr6("eth0", labExt6Of(i+1), 64) })
	}
	for _, st := range steps {
		if err := st(); err != nil {
			t.Fatalf("adding IPv6 to the lab: %v", err)
		}
	}
	err := topo.Host.Do(func() error {
		s, err := labState6(topo, ports)
		if err != nil {
			return err
		}
		opts.PinPath = l.pin
		dp, err := NewEBPF(opts)
		if err != nil {
			return err
		}
		l.dp = dp
		return dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("starting datapath: %v", err)
	}
	return l, ext
}

// labState6 is the state of a dualStackLabWith topology with ports
// published, read in the host's namespace.
func labState6(topo *lab.Topology, ports []PortMapping) (State, error) {
	s, err := discoverLab(topo, ports)
	if err != nil {
		return s, err
	}
	s.Networks[0].Subnet6, s.Networks[0].Gateway6 = labSub6, labGw6
	// The uplinks of the externals but the first are no default route.
	for _, x := range topo.Externals[1:] {
		s.Uplinks = append(s.Uplinks, Uplink{Name: x.Uplink})
	}
	for i := range s.Endpoints {
		for j, c := range topo.Containers {
			if s.Endpoints[i].HostVeth == c.HostVeth {
				s.Endpoints[i].Addr6 = labCtr6[j]
			}
		}
	}
	return s, nil
}

// TestLabIPv6DualStack: on one dual-stack network, the IPv4 and the IPv6
// published port of a container answer in the same run, each with the
// client's own address; straight to the container's IPv6 address is
// refused (its twin, through the published port, gets in); hairpin from
// the other container and from itself; the container's IPv6 egress reaches the outside with the uplink's address,
// TCP and ping -6 alike, and the flows show in ct6. Through the stack and
// with the fast path (bpfnet run's default), whose redirects must have
// carried the traffic.
func TestLabIPv6DualStack(t *testing.T) {
	lab.RequireTools(t, "busybox")
	t.Run("stack", func(t *testing.T) { testLabIPv6DualStack(t, false) })
	t.Run("fast_path", func(t *testing.T) { testLabIPv6DualStack(t, true) })
}

func testLabIPv6DualStack(t *testing.T, fast bool) {
	c4 := netip.MustParseAddr("172.30.0.2")
	ports := []PortMapping{
		{Proto: TCP, HostPort: 8080, ContainerIP: c4, ContainerPort: 80},
		{Proto: TCP, HostPort: 8080, ContainerIP: labCtr6[0], ContainerPort: 80},
	}
	l, ext := dualStackLabWith(t, lab.Config{Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 0}}}, ports, Options{FastPath: fast})
	c0 := l.topo.Containers[0]
	if got := c0.Addr.String(); got != c4.String() {
		t.Fatalf("container 0 has %s, the test publishes %s", got, c4)
	}
	echoTCP(t, &c0.Namespace, "[::]:80")

	for _, c := range []struct{ dial, client string }{
		{"10.231.0.1:8080", ext.Addr.String()},
		{"[" + labHost6.String() + "]:8080", labExt6.String()},
	} {
		var got string
		var err error
		for try := 0; try < 20; try++ {
			if got, err = ext.Greeting(c.dial); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("published port %s: %v", c.dial, err)
		}
		// The container's IPv4 listener sees IPv4 clients as
		// themselves, its [::] listener maps them, ::ffff:a.b.c.d.
		if strings.TrimPrefix(got, "::ffff:") != c.client {
			t.Errorf("published port %s: the container saw the client as %s, want %s", c.dial, got, c.client)
		}
	}
	before := l.drops(t)[DropNotPublished]
	if _, err := ext.Greeting("[" + labCtr6[0].String() + "]:80"); err == nil {
		t.Errorf("straight to the container's IPv6 address from the outside: answered, want refused")
	}
	if after := l.drops(t)[DropNotPublished]; after <= before {
		t.Errorf("not_published drops %d -> %d: the direct packet was not the datapath's to refuse", before, after)
	}

	// Egress: the external server sees the uplink's IPv6 address.
	echoTCP(t, &ext.Namespace, "[::]:9000")
	got, err := c0.Greeting("[" + labExt6.String() + "]:9000")
	if err != nil {
		t.Fatalf("container IPv6 egress: %v", err)
	}
	if got != labHost6.String() {
		t.Errorf("the outside saw the container's IPv6 flow from %s, want the uplink's %s", got, labHost6)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c0.Command(ctx, "busybox", "ping", "-6", "-c", "1", "-W", "2", labExt6.String()).CombinedOutput()
	if err != nil {
		t.Errorf("ping -6 %s from the container: %v\n%s", labExt6, err, out)
	}
	// Its twin: the external's ping of the container's address, which
	// no flow claims, is refused.
	out, err = ext.Command(ctx, "busybox", "ping", "-6", "-c", "1", "-W", "1", labCtr6[0].String()).CombinedOutput()
	if err == nil {
		t.Errorf("ping -6 of the container from the outside answered:\n%s", out)
	}

	// Hairpin: the other container through the host's IPv6 published
	// port, seen with its own address; the container to itself, seen
	// from the gateway.
	c1 := l.topo.Containers[1]
	for _, c := range []struct {
		from *lab.Container
		want netip.Addr
	}{{c1, labCtr6[1]}, {c0, labGw6}} {
		got, err := c.from.Greeting("[" + labHost6.String() + "]:8080")
		if err != nil {
			t.Errorf("hairpin from %s: %v", c.from.Name, err)
			continue
		}
		if got != c.want.String() {
			t.Errorf("hairpin from %s: the container saw %s, want %s", c.from.Name, got, c.want)
		}
	}
	// Its twin: a port not published on the host's address is refused.
	if _, err := c1.Greeting("[" + labHost6.String() + "]:8090"); err == nil {
		t.Errorf("an unpublished host port answered the container")
	}

	ct := mustRead(t, l.dp.Conntrack)
	var dnat, snat, echo bool
	for _, e := range ct {
		switch {
		case e.Kind == KindDNAT && !e.Reply && e.Key.Dst.Addr() == labHost6 && e.Translated.Dst.Addr() == labCtr6[0]:
			dnat = true
		case e.Kind == KindSNAT && !e.Reply && e.Key.Src.Addr() == labCtr6[0] && e.Key.Proto == 6:
			snat = true
		case e.Kind == KindSNAT && !e.Reply && e.Key.Src.Addr() == labCtr6[0] && e.Key.Proto == 58:
			echo = true
		}
	}
	if !dnat || !snat || !echo {
		t.Errorf("ct6 entries: published %v, masqueraded TCP %v, echo %v; want all", dnat, snat, echo)
	}
	ev := mustRead(t, l.dp.Events)
	peer, neigh := ev[EventRedirectPeer], ev[EventRedirectNeigh]
	if fast && (peer == 0 || neigh == 0) {
		t.Errorf("fast path: redirect_peer %d, redirect_neigh %d; want both used", peer, neigh)
	}
	if !fast && peer+neigh != 0 {
		t.Errorf("through the stack: redirect_peer %d, redirect_neigh %d; want none", peer, neigh)
	}
}
