// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of the sender check of from_container: a container's
// endpoint is the one of the veth its packet arrived on, and a packet
// whose source address is not that endpoint's is dropped (reason
// "spoofed") whatever its destination and whatever path it would take.
// The topology is packet_helpers_test.go's: A and B on net1 (br0), C on
// net2 (br1).

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// noNetIP is in no container network and is no host address.
var noNetIP = netip.MustParseAddr("10.250.0.2")

// spoofDst is a destination of the probes, with the verdict and drop of a
// sender's packet from its own address.
type spoofDst struct {
	name string
	addr netip.Addr
	port uint16
	// own is what a packet from the sender's own address gets with the
	// fast path on and off; ownDrop its drop reason when shot.
	ownFast, ownSlow uint32
	ownDrop          DropReason
	// redirect is the event of the fast path's redirect: into a
	// container's namespace or out of the uplink.
	redirect Event
}

// sender is a container of the topology and the frames it sends.
type sender struct {
	name string
	veth string
	addr netip.Addr
	mark func(testPacket) testPacket
}

var (
	senderA = sender{"A", "vetha", ctrA, fromA}
	senderB = sender{"B", "vethb", ctrB, fromB}
	senderC = sender{"C", "vethc", ctrC, fromC}
)

// spoofProbes are the frames of one source address and destination: each
// protocol, and an ICMP error about a flow of the destination's.
func spoofProbes(s sender, src netip.Addr, d spoofDst) map[string][]byte {
	out := map[string][]byte{}
	for _, proto := range isoProtos {
		out[proto.String()] = s.mark(flowPacket(proto, src, 40000, d.addr, d.port)).frame()
	}
	quote := udpPacket(d.addr, d.port, src, 40000).datagram()
	out["icmp error"] = s.mark(icmpError(src, d.addr, 3, 3, 0, quote)).frame()
	return out
}

// probeSpoofed runs a frame that must be dropped as spoofed: shot,
// unchanged, the spoofed counter up by exactly one and nothing else
// counted, no flow created.
func (e *packetEnv) probeSpoofed(t *testing.T, what, veth string, in []byte) {
	t.Helper()
	before := e.drops()
	ct := len(e.ct())
	v, out := e.fromContainer(veth, in)
	if v != TC_ACT_SHOT {
		t.Errorf("%s: verdict %s, want TC_ACT_SHOT", what, verdictName(v))
	} else {
		expectUnchanged(t, in, out[:len(in)])
	}
	for i, n := range e.drops() {
		want := before[i]
		if DropReason(i) == DropSpoofed {
			want++
		}
		if n != want {
			t.Errorf("%s: drops[%s] = %d, want %d", what, DropReason(i), n, want)
		}
	}
	if n := len(e.ct()); n != ct {
		t.Errorf("%s: %d conntrack entries, want %d", what, n, ct)
	}
}

// probeVerdict runs a frame that must get verdict want; when it is shot,
// reason is the one drop counter that rises (by one).
func (e *packetEnv) probeVerdict(t *testing.T, what, veth string, in []byte, want uint32, reason DropReason) {
	t.Helper()
	before := e.drops()
	v, _ := e.fromContainer(veth, in)
	if v != want {
		t.Errorf("%s: verdict %s, want %s", what, verdictName(v), verdictName(want))
	}
	for i, n := range e.drops() {
		w := before[i]
		if want == TC_ACT_SHOT && DropReason(i) == reason {
			w++
		}
		if n != w {
			t.Errorf("%s: drops[%s] = %d, want %d", what, DropReason(i), n, w)
		}
	}
}

// TestPacketSpoofedSource: a container that forges the address of a
// container of its network, of one of another network, or an address in
// no network, reaches nothing: not another container, not the host, not
// the outside, not a published port; ICMP errors included. The same
// frames from its own address get the verdicts of the isolation rules.
func TestPacketSpoofedSource(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrB, 80, 1)
		e.publish(uint8(pUDP), netip.Addr{}, 8080, ctrB, 80, 2)
		cases := []struct {
			s      sender
			forged []netip.Addr
			dsts   []spoofDst
		}{
			{
				s:      senderA,
				forged: []netip.Addr{ctrB, ctrC, noNetIP, net1Unused},
				dsts: []spoofDst{
					{name: "B, same network", addr: ctrB, port: 80, ownFast: TC_ACT_REDIRECT, ownSlow: TC_ACT_OK, ownDrop: 0, redirect: EventRedirectPeer},
					{name: "C, other network", addr: ctrC, port: 80, ownFast: TC_ACT_SHOT, ownSlow: TC_ACT_SHOT, ownDrop: DropIsolation, redirect: 0},
					{name: "the gateway", addr: gwIP, port: 22, ownFast: TC_ACT_OK, ownSlow: TC_ACT_OK, ownDrop: 0, redirect: 0},
					{name: "a host address", addr: hostIP, port: 22, ownFast: TC_ACT_OK, ownSlow: TC_ACT_OK, ownDrop: 0, redirect: 0},
					{name: "the outside", addr: remoteIP, port: 443, ownFast: TC_ACT_REDIRECT, ownSlow: TC_ACT_OK, ownDrop: 0, redirect: EventRedirectNeigh},
				},
			},
			{
				s:      senderC,
				forged: []netip.Addr{ctrA, ctrB, noNetIP},
				dsts: []spoofDst{
					{name: "A, other network", addr: ctrA, port: 80, ownFast: TC_ACT_SHOT, ownSlow: TC_ACT_SHOT, ownDrop: DropIsolation, redirect: 0},
					{name: "its gateway", addr: gw2IP, port: 22, ownFast: TC_ACT_OK, ownSlow: TC_ACT_OK, ownDrop: 0, redirect: 0},
					{name: "the outside", addr: remoteIP, port: 443, ownFast: TC_ACT_REDIRECT, ownSlow: TC_ACT_OK, ownDrop: 0, redirect: EventRedirectNeigh},
				},
			},
		}
		for _, c := range cases {
			for _, d := range c.dsts {
				for _, src := range c.forged {
					for kind, in := range spoofProbes(c.s, src, d) {
						e.probeSpoofed(t, fmt.Sprintf("%s forging %s to %s, %s", c.s.name, src, d.name, kind), c.s.veth, in)
					}
				}
				// The twin: the same sender from its own address. ICMP
				// errors about no flow are judged like any packet.
				for kind, in := range spoofProbes(c.s, c.s.addr, d) {
					want := d.ownSlow
					if fast {
						want = d.ownFast
					}
					what := fmt.Sprintf("%s from its own address to %s, %s", c.s.name, d.name, kind)
					before := e.events()
					e.probeVerdict(t, what, c.s.veth, in, want, d.ownDrop)
					if want == TC_ACT_REDIRECT {
						if n := e.events()[d.redirect] - before[d.redirect]; n != 1 {
							t.Errorf("%s: %s counted %d times, want 1", what, d.redirect, n)
						}
					}
				}
			}
		}

		// A published port (a hairpin): forged, it creates no flow.
		for _, proto := range []layers.IPProtocol{pTCP, pUDP} {
			for _, src := range []netip.Addr{ctrC, noNetIP} {
				e.probeSpoofed(t, fmt.Sprintf("A forging %s to a published port, %v", src, proto), "vetha",
					fromA(flowPacket(proto, src, 40001, hostIP, 8080)).frame())
			}
			want := uint32(TC_ACT_OK)
			if fast {
				want = TC_ACT_REDIRECT
			}
			e.probeVerdict(t, fmt.Sprintf("A to a published port, %v", proto), "vetha",
				fromA(flowPacket(proto, ctrA, 40001, hostIP, 8080)).frame(), want, 0)
		}
		if n := e.event(EventCTNewHairpin); n != 2 {
			t.Errorf("%d hairpin flows, want the 2 of A's own address", n)
		}
	})
}

// TestPacketSpoofedTrackedFlow: a forged packet is dropped even when its
// tuple is a live flow's, on the fast path out (forward_out) as on the
// hairpin path; the flow's own container keeps using it.
func TestPacketSpoofedTrackedFlow(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrA, 80, 7)
		v, _ := e.fromNetdev(flowPacket(pTCP, remoteIP, 40001, hostIP, 8080).frame())
		if fast {
			expectVerdict(t, v, TC_ACT_REDIRECT)
		} else {
			expectVerdict(t, v, TC_ACT_OK)
		}
		replyKey := ctKey(uint8(pTCP), ctrA, 80, remoteIP, 40001)
		before, ok := e.ctLookup(replyKey)
		if !ok {
			t.Fatalf("no reply entry after the request")
		}
		answer := replyPacket(pTCP, ctrA, 80, remoteIP, 40001)
		e.probeSpoofed(t, "B sending A's answer", "vethb", answer.fromCtr(macB, gwMAC).frame())
		e.probeSpoofed(t, "C sending A's answer", "vethc", answer.fromCtr(macC, gw2MAC).frame())
		evBefore := e.event(EventRedirectNeigh)
		want := uint32(TC_ACT_OK)
		if fast {
			want = TC_ACT_REDIRECT
		}
		e.probeVerdict(t, "A sending its answer", "vetha", answer.fromCtr(macA, gwMAC).frame(), want, 0)
		if fast {
			if n := e.event(EventRedirectNeigh) - evBefore; n != 1 {
				t.Errorf("redirect_neigh counted %d times, want 1", n)
			}
		}
		if after, _ := e.ctLookup(replyKey); after != before {
			t.Errorf("the forged answers changed the flow's entry: %+v, was %+v", after, before)
		}

		// A hairpin flow of A to B's published port: B cannot send into
		// it as A.
		e.publish(uint8(pUDP), netip.Addr{}, 5353, ctrB, 53, 8)
		e.probeVerdict(t, "A to B's port", "vetha", fromA(udpPacket(ctrA, 40002, hostIP, 5353)).frame(), want, 0)
		e.probeSpoofed(t, "C continuing A's hairpin flow", "vethc", fromC(udpPacket(ctrA, 40002, hostIP, 5353)).frame())
		e.probeVerdict(t, "A continuing its hairpin flow", "vetha", fromA(udpPacket(ctrA, 40002, hostIP, 5353)).frame(), want, 0)
	})
}

// arpFrame is an ARP request from mac for target.
func arpFrame(t testing.TB, mac []byte, sender, target netip.Addr) []byte {
	t.Helper()
	arp := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: mac, SourceProtAddress: sender.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: target.AsSlice(),
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, arp); err != nil {
		t.Fatal(err)
	}
	return ethFrame(mac, layers.EthernetBroadcast, layers.EthernetTypeARP, buf.Bytes())
}

// TestPacketSpoofedPendingVeth: a veth whose container the runtime has not
// reported yet sends from any address of its bridge's network, judged by
// that network; any other source is dropped. A veth the datapath does not
// know at all sends nothing but what is not IPv4.
func TestPacketSpoofedPendingVeth(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		// vethb as Apply programs a pending veth on br0: no address,
		// net1's network, and not a destination.
		if err := e.objs.Endpoints.Delete(be32(ctrB)); err != nil {
			t.Fatal(err)
		}
		e.put(e.objs.Veths, e.idx["vethb"], bpfEndpoint{Ifindex: e.idx["vethb"], BridgeIfindex: e.idx["br0"], GwAddr: be32(gwIP), NetId: 1})
		redirect := uint32(TC_ACT_OK)
		if fast {
			redirect = TC_ACT_REDIRECT
		}
		for _, src := range []netip.Addr{ctrB, net1Unused} {
			e.probeVerdict(t, fmt.Sprintf("pending from %s to A", src), "vethb", fromB(udpPacket(src, 40000, ctrA, 53)).frame(), redirect, 0)
			e.probeVerdict(t, fmt.Sprintf("pending from %s to the outside", src), "vethb", fromB(udpPacket(src, 40000, remoteIP, 53)).frame(), redirect, 0)
			e.probeVerdict(t, fmt.Sprintf("pending from %s to the gateway", src), "vethb", fromB(echoPacket(src, gwIP, 1)).frame(), TC_ACT_OK, 0)
			// Judged by its veth's network: net1, not net2.
			e.probeVerdict(t, fmt.Sprintf("pending from %s to C", src), "vethb", fromB(udpPacket(src, 40000, ctrC, 53)).frame(), TC_ACT_SHOT, DropIsolation)
		}
		for _, src := range []netip.Addr{ctrC, net2Unused, noNetIP, hostIP, netip.IPv4Unspecified()} {
			for _, d := range []netip.Addr{ctrA, ctrC, gwIP, remoteIP} {
				e.probeSpoofed(t, fmt.Sprintf("pending forging %s to %s", src, d), "vethb", fromB(udpPacket(src, 40000, d, 53)).frame())
			}
		}

		// A veth with no entry: fail closed, even with the address of a
		// container of the bridge.
		if err := e.objs.Veths.Delete(e.idx["vethb"]); err != nil {
			t.Fatal(err)
		}
		for _, src := range []netip.Addr{ctrB, net1Unused} {
			e.probeSpoofed(t, fmt.Sprintf("unknown veth from %s to A", src), "vethb", fromB(udpPacket(src, 40000, ctrA, 53)).frame())
			e.probeSpoofed(t, fmt.Sprintf("unknown veth from %s to the gateway", src), "vethb", fromB(tcpPacket(src, 40000, gwIP, 22)).frame())
		}
		// Not IPv4: passed as before, from a known veth or not.
		for _, s := range []sender{senderA, senderB} {
			in := arpFrame(t, macB, ctrB, gwIP)
			v, out := e.fromContainer(s.veth, in)
			expectVerdict(t, v, TC_ACT_OK)
			expectUnchanged(t, in, out[:len(in)])
		}
		e.expectDrops(map[DropReason]uint64{
			DropSpoofed:   5*4 + 2*2,
			DropIsolation: 2,
		})
	})
}

// TestPacketForeignSourceAllowed: with the per-endpoint exception, a
// container sends from any address, judged by its interface's network:
// isolation still holds, the rest passes.
func TestPacketForeignSourceAllowed(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		var ep bpfEndpoint
		if err := e.objs.Veths.Lookup(e.idx["vetha"], &ep); err != nil {
			t.Fatal(err)
		}
		ep.EpFlags |= epFForeignSrc
		e.put(e.objs.Veths, e.idx["vetha"], ep)
		e.put(e.objs.Endpoints, be32(ctrA), ep)
		redirect := uint32(TC_ACT_OK)
		if fast {
			redirect = TC_ACT_REDIRECT
		}
		for _, src := range []netip.Addr{ctrC, noNetIP, net1Unused} {
			e.probeVerdict(t, fmt.Sprintf("A routing for %s to B", src), "vetha", fromA(udpPacket(src, 40000, ctrB, 53)).frame(), redirect, 0)
			e.probeVerdict(t, fmt.Sprintf("A routing for %s to the outside", src), "vetha", fromA(tcpPacket(src, 40000, remoteIP, 443)).frame(), redirect, 0)
			e.probeVerdict(t, fmt.Sprintf("A routing for %s to a host address", src), "vetha", fromA(tcpPacket(src, 40000, hostIP, 22)).frame(), TC_ACT_OK, 0)
			// A's network is net1 whatever the source: C stays isolated,
			// even from C's own address.
			e.probeVerdict(t, fmt.Sprintf("A routing for %s to C", src), "vetha", fromA(udpPacket(src, 40000, ctrC, 53)).frame(), TC_ACT_SHOT, DropIsolation)
		}
		// B has no exception.
		e.probeSpoofed(t, "B forging C's address to A", "vethb", fromB(udpPacket(ctrC, 40000, ctrA, 53)).frame())
		e.expectDrops(map[DropReason]uint64{DropIsolation: 3, DropSpoofed: 1})
	})
}

// TestPacketSameContainerSource: a container on two networks (A's and C's
// endpoints here, one container id) answers by its routes, from the
// address of one network out of the veth of the other, and is judged by
// the network of that veth; another container (B) still may not send from
// those addresses, and an endpoint without a container id shares nothing.
func TestPacketSameContainerSource(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		setCtr := func(veth string, a netip.Addr, id uint32) {
			var ep bpfEndpoint
			if err := e.objs.Veths.Lookup(e.idx[veth], &ep); err != nil {
				t.Fatal(err)
			}
			ep.CtrId = id
			e.put(e.objs.Veths, e.idx[veth], ep)
			e.put(e.objs.Endpoints, be32(a), ep)
		}
		setCtr("vetha", ctrA, 7)
		setCtr("vethc", ctrC, 7)
		redirect := uint32(TC_ACT_OK)
		if fast {
			redirect = TC_ACT_REDIRECT
		}
		e.probeVerdict(t, "A's address out of C's veth to the outside", "vethc", fromC(tcpPacket(ctrA, 40000, remoteIP, 443)).frame(), redirect, 0)
		e.probeVerdict(t, "C's address out of A's veth to B", "vetha", fromA(udpPacket(ctrC, 40000, ctrB, 53)).frame(), redirect, 0)
		// Judged by the veth's network: out of C's veth (net2), B (net1)
		// is another network's, whatever the source.
		e.probeVerdict(t, "A's address out of C's veth to B", "vethc", fromC(udpPacket(ctrA, 40000, ctrB, 53)).frame(), TC_ACT_SHOT, DropIsolation)
		// B is another container; with no container id, neither is B one
		// of A's.
		e.probeSpoofed(t, "B sending from A's address", "vethb", fromB(udpPacket(ctrA, 40000, remoteIP, 53)).frame())
		e.probeSpoofed(t, "B sending from C's address", "vethb", fromB(udpPacket(ctrC, 40000, ctrA, 53)).frame())
		setCtr("vethb", ctrB, 8)
		e.probeSpoofed(t, "B (another container id) sending from A's address", "vethb", fromB(udpPacket(ctrA, 40000, remoteIP, 53)).frame())
		e.probeVerdict(t, "B from its own address", "vethb", fromB(udpPacket(ctrB, 40000, remoteIP, 53)).frame(), redirect, 0)
		e.expectDrops(map[DropReason]uint64{DropIsolation: 1, DropSpoofed: 3})
	})
}
