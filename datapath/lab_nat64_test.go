// SPDX-License-Identifier: Apache-2.0

package datapath

// NAT64 in the lab, with real traffic: an external namespace connects over
// IPv6 to the host's published port of an IPv4-only container.

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// TestLabNAT64: [::]:8080 published to an IPv4-only container's port 80
// (and [host6]:5353/udp to its port 53); the external namespace's IPv6
// connection gets the container's answer,
// the container sees the client as an address of the NAT64 pool, and
// Conntrack lists the flow both ways. Its twin: the container's port 81,
// which it serves but nothing publishes, is refused on the host's IPv6
// address.
// Through the stack and with the fast path.
func TestLabNAT64(t *testing.T) {
	t.Run("stack", func(t *testing.T) { testLabNAT64(t, false) })
	t.Run("fast_path", func(t *testing.T) { testLabNAT64(t, true) })
}

func testLabNAT64(t *testing.T, fast bool) {
	l := newLabDatapath(t, lab.Config{Containers: []lab.ContainerConfig{{Bridge: 0}}})
	topo := l.topo
	ext := topo.Externals[0]
	c0 := topo.Containers[0]
	c4 := addrOf(c0.Addr)
	for _, st := range []func() error{
		func() error { return topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1") },
		func() error { return topo.Host.AddAddr6(ext.Uplink, labHost6, 64) },
		func() error { return ext.Namespace.AddAddr6("eth0", labExt6, 64) },
	} {
		if err := st(); err != nil {
			t.Fatalf("adding IPv6 to the lab: %v", err)
		}
	}
	ports := []PortMapping{
		{Proto: TCP, HostIP: netip.IPv6Unspecified(), HostPort: 8080, ContainerIP: c4, ContainerPort: 80},
		{Proto: UDP, HostIP: labHost6, HostPort: 5353, ContainerIP: c4, ContainerPort: 53},
	}
	err := topo.Host.Do(func() error {
		s, err := discoverLab(topo, ports)
		if err != nil {
			return err
		}
		dp, err := NewEBPF(Options{PinPath: l.pin, FastPath: fast})
		if err != nil {
			return err
		}
		l.dp = dp
		return dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("starting datapath: %v", err)
	}
	echoTCP(t, &c0.Namespace, "0.0.0.0:80")
	echoTCP(t, &c0.Namespace, "0.0.0.0:81")
	echoUDP(t, &c0.Namespace, "0.0.0.0:53")

	dial := "[" + labHost6.String() + "]:8080"
	var got string
	for try := 0; try < 20; try++ {
		if got, err = ext.Greeting(dial); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("NAT64 port %s: %v (drops %v)", dial, err, l.drops(t))
	}
	seen, perr := netip.ParseAddr(got)
	if perr != nil || !DefaultNAT64Pool.Contains(seen) {
		t.Fatalf("the container saw the IPv6 client as %q, want an address of %s", got, DefaultNAT64Pool)
	}

	// UDP, on the host address: the answer carries its checksum over.
	if got := udpExchange(t, &ext.Namespace, "["+labHost6.String()+"]:5353", "nat64 over udp"); got != seen.String() {
		t.Errorf("the container saw the UDP client as %s, the TCP one as %s (one pool address a client)", got, seen)
	}
	// bpfnet ports: both mappings, marked.
	var listed int
	for _, p := range mustRead(t, l.dp.Published) {
		if p.NAT64 && p.ContainerIP == c4 && p.Binding.HostIP.Is6() {
			listed++
		}
	}
	if listed != 2 {
		t.Errorf("Published lists %d NAT64 mappings, want 2: %v", listed, mustRead(t, l.dp.Published))
	}

	var orig, reply bool
	for _, e := range mustRead(t, l.dp.Conntrack) {
		if e.Kind != KindNAT64 {
			continue
		}
		if !e.Reply && e.Key.Src.Addr() == labExt6 && e.Key.Dst == netip.AddrPortFrom(labHost6, 8080) &&
			e.Translated.Src.Addr() == seen && e.Translated.Dst == netip.AddrPortFrom(c4, 80) {
			orig = true
		}
		if e.Reply && e.Key.Src == netip.AddrPortFrom(c4, 80) && e.Translated.Dst.Addr() == labExt6 {
			reply = true
		}
	}
	if !orig || !reply {
		t.Errorf("Conntrack has the NAT64 flow %v, its answer %v: %v", orig, reply, mustRead(t, l.dp.Conntrack))
	}
	ev := l.events(t)
	if ev[EventCTNewNAT64] == 0 || ev[EventRedirectPeer] == 0 {
		t.Errorf("new NAT64 flows %d, redirects into the container %d: want some of each", ev[EventCTNewNAT64], ev[EventRedirectPeer])
	}
	// With the fast path, the answers went straight to the uplink.
	if fast && ev[EventRedirectNeigh] == 0 {
		t.Errorf("fast path: no answer redirected to the uplink")
	}

	// The twin: a port the container serves (81) but nothing publishes,
	// refused (the host has no socket there), never translated.
	if got, err := ext.Greeting("[" + labHost6.String() + "]:81"); err == nil {
		t.Errorf("an unpublished port answered over IPv6: %q", got)
	}
}
