// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of the IPv6 fast path (bpf/lib/fast6.h): from the uplink
// straight into the container (redirect_peer), from the container
// straight out of the uplink (redirect_neigh), each with the hop limit
// decremented, and every packet the fast path must leave to the stack
// left to it, translated as before.

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	router6 = netip.MustParseAddr("2001:db8:1::fe")  // the default route's gateway, out of up0
	other6  = netip.MustParseAddr("2001:db8:77::5")  // routed out of other0
	bigMTU6 = netip.MustParseAddr("2001:db8:52::20") // routed out of up0 with a 9000-byte route MTU
)

// newPacketEnv6Fast is a packet environment with the IPv6 topology, MACs
// on container A's endpoint (the fast path writes them), and IPv6 routes
// in the test namespace for bpf_fib_lookup: the default out of up0, one
// out of other0, and one out of up0 whose locked MTU is above the
// device's.
func newPacketEnv6Fast(t *testing.T, opts Options) *packetEnv {
	e := newPacketEnv(t, opts)
	e.installTopology6()
	ep := bpfEndpoint6{Ep: bpfEndpoint{Ifindex: e.idx["vetha"], BridgeIfindex: e.idx["br0"], NetId: 1}, Gw6: be128(gw6)}
	copy(ep.Ep.Mac[:], macA)
	copy(ep.Ep.GwMac[:], gwMAC)
	e.put(e.objs.Endpoints6, bpfIn6Key{A: be128(ctrA6)}, ep)
	var err error
	e.ns.do(func() { err = setupTestNetns6(e.idx) })
	if err != nil {
		t.Fatalf("IPv6 in the test namespace: %v", err)
	}
	return e
}

func setupTestNetns6(idx map[string]uint32) error {
	for _, a := range []struct {
		dev    string
		prefix string
	}{{"up0", "2001:db8:1::1/64"}, {"other0", "2001:db8:76::1/64"}, {"br0", "fd00:17::1/64"}} {
		l, err := netlink.LinkByName(a.dev)
		if err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(a.prefix)
		if err != nil {
			return err
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
	}
	ip := func(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }
	routes := []netlink.Route{
		{Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: ip(router6), LinkIndex: int(idx["up0"])},
		{Dst: &net.IPNet{IP: ip(other6), Mask: net.CIDRMask(64, 128)}, Gw: net.ParseIP("2001:db8:76::fe"), LinkIndex: int(idx["other0"])},
		{Dst: &net.IPNet{IP: ip(bigMTU6), Mask: net.CIDRMask(64, 128)}, Gw: ip(router6), LinkIndex: int(idx["up0"]), MTU: 9000, MTULock: true},
	}
	for _, rt := range routes {
		if err := netlink.RouteAdd(&rt); err != nil {
			return err
		}
	}
	// /proc/sys/net is the namespace of the thread that opens it.
	return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
}

// TestPacketIPv6FastPathIn: a published port's packets from the uplink go
// straight into the container, translated, hop limit 63, the container's
// and its gateway's MACs on the frame, counted as the container's
// traffic; the same flow's packets that the stack must see (a hop-by-hop
// header, hop limit 1, a fragment) are translated and passed to it; and
// without the fast path every one is passed.
func TestPacketIPv6FastPathIn(t *testing.T) {
	tcp := uint8(layers.IPProtocolTCP)
	hbh := tcp6(client6, 40001, host6, 8080)
	hbh.ext = []v6Ext{extOpts(0)}
	hlim1 := tcp6(client6, 40002, host6, 8080)
	hlim1.hlim = 1
	frag := tcp6(client6, 40003, host6, 8080)
	frag.ext = []v6Ext{extFrag(0, true, 77)}
	cases := []struct {
		name string
		p    packet6
		fast bool // with the fast path on
	}{
		{"plain SYN", tcp6(client6, 40000, host6, 8080), true},
		{"hop-by-hop header", hbh, false},
		{"hop limit 1", hlim1, false},
		{"first fragment", frag, false},
	}
	for _, fastPath := range []bool{true, false} {
		e := newPacketEnv6Fast(t, Options{FastPath: fastPath})
		e.publish6(tcp, netip.Addr{}, 8080, ctrA6, 80, 1)
		for _, c := range cases {
			evBefore, rxBefore := e.event(EventRedirectPeer), e.traffic("vetha").RxPackets
			v, out := e.fromNetdev(c.p.frame())
			got := parse6Frame(t, c.name, out)
			expectTuple6(t, c.name, got, client6, c.p.sport, ctrA6, 80)
			redirected := fastPath && c.fast
			evWant, rxWant := evBefore, rxBefore
			if !redirected {
				expectVerdict(t, v, TC_ACT_OK)
				if got.hlim != c.p.hlim {
					t.Errorf("%s (fast path %v): hop limit %d, want %d (the stack decrements it)", c.name, fastPath, got.hlim, c.p.hlim)
				}
				if !bytes.Equal(out[:12], c.p.frame()[:12]) {
					t.Errorf("%s (fast path %v): MACs changed", c.name, fastPath)
				}
			} else {
				expectVerdict(t, v, TC_ACT_REDIRECT)
				if got.hlim != 63 {
					t.Errorf("%s: hop limit %d, want 63", c.name, got.hlim)
				}
				if !bytes.Equal(out[0:6], macA) || !bytes.Equal(out[6:12], gwMAC) {
					t.Errorf("%s: MACs %s -> %s, want %s -> %s", c.name, net.HardwareAddr(out[6:12]), net.HardwareAddr(out[0:6]), gwMAC, macA)
				}
				evWant, rxWant = evBefore+1, rxBefore+1
			}
			if n := e.event(EventRedirectPeer); n != evWant {
				t.Errorf("%s (fast path %v): redirect_peer %d, want %d", c.name, fastPath, n, evWant)
			}
			if n := e.traffic("vetha").RxPackets; n != rxWant {
				t.Errorf("%s (fast path %v): vetha received %d packets, want %d", c.name, fastPath, n, rxWant)
			}
		}
		e.expectDrops(nil)
	}
}

// TestPacketIPv6FastPathOut: what a container sends out of the host goes
// straight to the uplink, untranslated (to_netdev6 translates it there),
// hop limit 63: the answer of a published port and a new outgoing flow.
// Left to the stack: a route out of another interface, a packet too big
// for the uplink (the stack sends Packet Too Big) even on a route whose
// MTU would take it, hop limit 1, a hop-by-hop header, and what is for
// the host or another container.
func TestPacketIPv6FastPathOut(t *testing.T) {
	tcp := uint8(layers.IPProtocolTCP)
	e := newPacketEnv6Fast(t, Options{FastPath: true})
	e.publish6(tcp, netip.Addr{}, 8080, ctrA6, 80, 1)
	if v, _ := e.fromNetdev(tcp6(client6, 40000, host6, 8080).frame()); v != TC_ACT_REDIRECT {
		t.Fatalf("the published port's SYN: verdict %s, want TC_ACT_REDIRECT", verdictName(v))
	}
	answer := tcp6(ctrA6, 80, client6, 40000)
	answer.ack = true
	big := udp6(ctrA6, 5000, remote6, 53)
	big.payload = make([]byte, 1600)
	bigRoute := big
	bigRoute.dst = bigMTU6
	hlim1 := udp6(ctrA6, 5000, remote6, 53)
	hlim1.hlim = 1
	hbh := udp6(ctrA6, 5000, remote6, 53)
	hbh.ext = []v6Ext{extOpts(0)}
	cases := []struct {
		name string
		p    packet6
		fast bool
	}{
		{"published port's answer", answer, true},
		{"new flow out", tcp6(ctrA6, 41000, remote6, 443), true},
		{"fits the uplink, on the big route", udp6(ctrA6, 5000, bigMTU6, 53), true},
		{"route out of another interface", udp6(ctrA6, 5000, other6, 53), false},
		{"too big for the uplink", big, false},
		{"too big for the uplink, not for its route", bigRoute, false},
		{"hop limit 1", hlim1, false},
		{"hop-by-hop header", hbh, false},
		{"to the host", udp6(ctrA6, 5000, gw6, 53), false},
		{"to another container", udp6(ctrA6, 5000, ctrB6, 53), false},
	}
	for _, c := range cases {
		before := e.event(EventRedirectNeigh)
		in := c.p.fromCtr(macA, gwMAC).frame()
		v, out := e.fromContainer("vetha", in)
		if !c.fast {
			expectVerdict(t, v, TC_ACT_OK)
			expectUnchanged(t, in, out)
			if n := e.event(EventRedirectNeigh); n != before {
				t.Errorf("%s: redirect_neigh %d, want %d", c.name, n, before)
			}
			continue
		}
		expectVerdict(t, v, TC_ACT_REDIRECT)
		got := parse6Frame(t, c.name, out)
		expectTuple6(t, c.name, got, c.p.src, c.p.sport, c.p.dst, c.p.dport)
		if got.hlim != 63 {
			t.Errorf("%s: hop limit %d, want 63", c.name, got.hlim)
		}
		if n := e.event(EventRedirectNeigh); n != before+1 {
			t.Errorf("%s: redirect_neigh %d, want %d", c.name, n, before+1)
		}
	}
	e.expectDrops(nil)
}

// TestPacketIPv6RedirectOnly: the benchmark's ebpf-redirect mode does for
// IPv6 what it does for IPv4: no translation, no tracking, the container
// addressed directly from the uplink and redirected, and its packets out
// redirected to the uplink; an address no container has is the stack's.
func TestPacketIPv6RedirectOnly(t *testing.T) {
	e := newPacketEnv6Fast(t, Options{FastPath: true, RedirectOnly: true})
	in := tcp6(client6, 40000, ctrA6, 80)
	v, out := e.fromNetdev(in.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	got := parse6Frame(t, "to the container", out)
	expectTuple6(t, "to the container", got, client6, 40000, ctrA6, 80)
	if got.hlim != 63 || !bytes.Equal(out[0:6], macA) {
		t.Errorf("to the container: hop limit %d, destination MAC %s", got.hlim, net.HardwareAddr(out[0:6]))
	}
	notCtr := tcp6(client6, 40000, netip.MustParseAddr("fd00:17::99"), 80).frame()
	v, out = e.fromNetdev(notCtr)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, notCtr, out)

	back := tcp6(ctrA6, 80, client6, 40000)
	back.ack = true
	v, out = e.fromContainer("vetha", back.fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple6(t, "out of the uplink", parse6Frame(t, "out", out), ctrA6, 80, client6, 40000)
	if n := len(e.ct6()); n != 0 {
		t.Errorf("%d ct6 entries in redirect-only mode, want none", n)
	}
	e.expectDrops(nil)
}
