// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of Docker 28's gateway modes (bpf/lib/gwmode.h): what the
// outside reaches by a container's address on a nat, nat-unprotected,
// routed and isolated network, what leaves it and with which source, and
// the host cut off from an isolated one. The topology is
// packet_helpers_test.go's, with net1 (A and B on br0) given each mode.

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// modeFlags are the NET_F_* flags Apply gives net1 in each mode
// (netFlags), masquerade asked for.
var modeFlags = map[GatewayMode]bpfNetFlags{
	GatewayNAT:            netFlags(Network{Masquerade: true}),
	GatewayNATUnprotected: netFlags(Network{Masquerade: true, GatewayMode: GatewayNATUnprotected}),
	GatewayRouted:         netFlags(Network{Masquerade: true, GatewayMode: GatewayRouted}),
	GatewayIsolated:       netFlags(Network{Internal: true, GatewayMode: GatewayIsolated}),
}

// routedPort opens a published container port of a routed network, as
// Apply does (routed_ports), open to every source.
func (e *packetEnv) routedPort(proto uint8, ctr netip.Addr, port uint16, id uint32) {
	e.routedPortAllow(proto, ctr, port, id, 0)
}

// routedPortAllow is routedPort behind the allowlist allowID (0: none).
func (e *packetEnv) routedPortAllow(proto uint8, ctr netip.Addr, port uint16, id, allowID uint32) {
	e.put(e.objs.RoutedPorts, bpfPortKey{Addr: be32(ctr), Port: be16(port), Proto: proto},
		bpfPortTarget{Addr: be32(ctr), Port: be16(port), Id: id, AllowId: allowID})
}

func TestNetFlagsOfGatewayModes(t *testing.T) {
	cases := map[string]struct {
		n    Network
		want bpfNetFlags
	}{
		"nat":                         {Network{Masquerade: true}, netFMasq},
		"nat without masquerade":      {Network{}, 0},
		"nat-unprotected":             {Network{Masquerade: true, GatewayMode: GatewayNATUnprotected}, netFMasq | netFUnprotected},
		"routed: never masqueraded":   {Network{Masquerade: true, GatewayMode: GatewayRouted}, netFRouted},
		"isolated: internal as well":  {Network{Internal: true, GatewayMode: GatewayIsolated}, netFInternal | netFIsolated},
		"internal, not isolated":      {Network{Internal: true}, netFInternal},
		"routed, no inter-container":  {Network{GatewayMode: GatewayRouted, NoICC: true}, netFRouted | netFNoICC},
		"unprotected, no masquerade ": {Network{GatewayMode: GatewayNATUnprotected}, netFUnprotected},
	}
	for name, c := range cases {
		if got := netFlags(c.n); got != c.want {
			t.Errorf("%s: flags %#x, want %#x", name, got, c.want)
		}
	}
}

// TestPacketGatewayModeFromOutside: packets from the outside straight to
// a container's address, in each mode. A routed network has A's tcp/80
// and udp/53 published; every drop has a case that passes on the same
// address or port in another mode.
func TestPacketGatewayModeFromOutside(t *testing.T) {
	type want struct {
		verdict uint32
		reason  DropReason
	}
	pass := want{verdict: TC_ACT_REDIRECT}
	notPublished := want{TC_ACT_SHOT, DropNotPublished}
	internal := want{TC_ACT_SHOT, DropInternal}
	tcp80, udp53 := tcpPacket(clientIP, 40001, ctrA, 80), udpPacket(clientIP, 40001, ctrA, 53)
	tcp22, udp54 := tcpPacket(clientIP, 40001, ctrA, 22), udpPacket(clientIP, 40001, ctrA, 54)
	echo := echoPacket(clientIP, ctrA, 7)
	toB80 := tcpPacket(clientIP, 40001, ctrB, 80)
	unreach := icmpError(clientIP, ctrA, 3, 3, 0, udpPacket(ctrA, 40009, clientIP, 53).datagram())
	cases := map[string]struct {
		mode GatewayMode
		p    testPacket
		want want
	}{
		// nat: Docker's DOCKER chain drops everything from outside.
		"nat, published container port": {GatewayNAT, tcp80, notPublished},
		"nat, unpublished port":         {GatewayNAT, tcp22, notPublished},
		"nat, ping":                     {GatewayNAT, echo, notPublished},
		// nat-unprotected: "! -i br -o br -j ACCEPT".
		"nat-unprotected, published container port": {GatewayNATUnprotected, tcp80, pass},
		"nat-unprotected, unpublished tcp port":     {GatewayNATUnprotected, tcp22, pass},
		"nat-unprotected, unpublished udp port":     {GatewayNATUnprotected, udp54, pass},
		"nat-unprotected, ping":                     {GatewayNATUnprotected, echo, pass},
		// routed: per published container port, ICMP, then DROP.
		"routed, published tcp port":                  {GatewayRouted, tcp80, pass},
		"routed, published udp port":                  {GatewayRouted, udp53, pass},
		"routed, unpublished tcp port":                {GatewayRouted, tcp22, notPublished},
		"routed, unpublished udp port":                {GatewayRouted, udp54, notPublished},
		"routed, port published by another container": {GatewayRouted, toB80, notPublished},
		"routed, ping":                                {GatewayRouted, echo, pass},
		"routed, ICMP error":                          {GatewayRouted, unreach, pass},
		// isolated: nothing.
		"isolated, port": {GatewayIsolated, tcp80, internal},
		"isolated, ping": {GatewayIsolated, echo, internal},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.setNetFlags(net1, modeFlags[c.mode])
			e.routedPort(uint8(pTCP), ctrA, 80, 1)
			e.routedPort(uint8(pUDP), ctrA, 53, 2)
			in := c.p.frame()
			v, out := e.fromNetdev(in)
			expectVerdict(t, v, c.want.verdict)
			if c.want.verdict == TC_ACT_SHOT {
				expectUnchanged(t, in, out)
				e.expectDrops(map[DropReason]uint64{c.want.reason: 1})
				if n := len(e.ct()) + len(e.ctTable(e.objs.Ct4Syn)); n != 0 {
					t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
				}
				return
			}
			// Untranslated, routed into the container.
			d := decode(t, out)
			checkFrame(t, out)
			expectTTL(t, d, 63)
			expectMACs(t, d, gwMAC, macA)
			if d.src() != clientIP || d.dst() != ctrA {
				t.Errorf("delivered %s -> %s, want %s -> %s", d.src(), d.dst(), clientIP, ctrA)
			}
			e.expectDrops(nil)
			if c.p.proto == pICMP && c.p.icmpType != 8 {
				// An ICMP error is no flow.
				if n := len(e.ctTable(e.objs.Ct4Syn)); n != 0 {
					t.Errorf("%d unassured entries for an ICMP error, want none:\n%s", n, e.ctDump())
				}
				return
			}
			if n := e.event(EventCTNewDirect); n != 1 {
				t.Errorf("ct_new_direct = %d, want 1", n)
			}
		})
	}
}

// TestPacketGatewayModeAnswers: the answers of a container reached
// directly leave as they are, on a nat-unprotected network too (where a
// flow of its own would be masqueraded: the positive twin below), and the
// flow's next packets find it.
func TestPacketGatewayModeAnswers(t *testing.T) {
	for _, mode := range []GatewayMode{GatewayNATUnprotected, GatewayRouted} {
		for _, proto := range []layers.IPProtocol{pTCP, pUDP, pICMP} {
			t.Run(mode.String()+"/"+proto.String(), func(t *testing.T) {
				e := newPacketEnv(t, Options{FastPath: true})
				e.setNetFlags(net1, modeFlags[mode])
				e.routedPort(uint8(proto), ctrA, 80, 1)
				sport, dport := uint16(40001), uint16(80)
				if proto == pICMP {
					sport, dport = 7, 0
				}
				v, _ := e.fromNetdev(flowPacket(proto, clientIP, sport, ctrA, dport).frame())
				expectVerdict(t, v, TC_ACT_REDIRECT)
				k := ctKey(uint8(proto), clientIP, sport, ctrA, dport)
				if got, ok := e.ctLookupIn(e.objs.Ct4Syn, k); !ok || FlowKind(got.Kind) != KindRouted {
					t.Fatalf("no unassured routed entry at %s:\n%s", ctKeyString(k), e.ctDump())
				}

				// The answer leaves the uplink untranslated.
				ans := replyPacket(proto, ctrA, dport, clientIP, sport).fromCtr(macA, gwMAC).frame()
				v, out := e.toNetdev(ans)
				expectVerdict(t, v, TC_ACT_OK)
				expectUnchanged(t, ans, out)
				e.expectDrops(nil)

				// Positive twin: a flow A opens itself is masqueraded
				// on a nat-unprotected network, untranslated on a
				// routed one.
				own := fromA(flowPacket(proto, ctrA, 41000, remoteIP, 443))
				if proto == pICMP {
					own = fromA(echoPacket(ctrA, remoteIP, 0x99))
				}
				v, out = e.toNetdev(own.frame())
				expectVerdict(t, v, TC_ACT_OK)
				src := decode(t, out).src()
				wantSrc := hostIP
				if mode == GatewayRouted {
					wantSrc = ctrA
				}
				if src != wantSrc {
					t.Errorf("A's own flow left from %s, want %s", src, wantSrc)
				}
			})
		}
	}
}

// TestPacketGatewayModeEgressSource: what the outside sees as the source
// of a container's flow in each mode that lets it out.
func TestPacketGatewayModeEgressSource(t *testing.T) {
	cases := map[string]struct {
		mode GatewayMode
		src  netip.Addr
	}{
		"nat":             {GatewayNAT, hostIP},
		"nat-unprotected": {GatewayNATUnprotected, hostIP},
		"routed":          {GatewayRouted, ctrA},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.setNetFlags(net1, modeFlags[c.mode])
			v, out := e.toNetdev(fromA(tcpPacket(ctrA, 40000, remoteIP, 443)).frame())
			expectVerdict(t, v, TC_ACT_OK)
			d := decode(t, out)
			checkFrame(t, out)
			if d.src() != c.src {
				t.Errorf("left from %s, want %s", d.src(), c.src)
			}
			kind := KindSNAT
			if c.mode == GatewayRouted {
				kind = KindRouted
			}
			if got, ok := e.ctLookup(ctKey(uint8(pTCP), ctrA, 40000, remoteIP, 443)); !ok || FlowKind(got.Kind) != kind {
				t.Errorf("flow not tracked as %s:\n%s", kind, e.ctDump())
			}
			e.expectDrops(nil)
		})
	}
}

// TestPacketGatewayModeIsolated: an isolated network's containers reach
// each other and nothing else, the host included (any of its addresses,
// the gateway's too), and the host does not reach them; an internal
// network that is not isolated lets the host in and out (the positive
// twins).
func TestPacketGatewayModeIsolated(t *testing.T) {
	type flow struct {
		name string
		out  bool // from_container on vetha; else to_container on vetha
		p    testPacket
	}
	flows := []flow{
		{"A to a host address", true, fromA(tcpPacket(ctrA, 40000, hostIP, 22))},
		{"A to the gateway", true, fromA(echoPacket(ctrA, gwIP, 3))},
		{"host address to A", false, tcpPacket(hostIP, 40000, ctrA, 80)},
		{"gateway to A", false, echoPacket(gwIP, ctrA, 4)},
		{"outside address to A", false, udpPacket(clientIP, 40000, ctrA, 53)},
	}
	run := func(e *packetEnv, f flow) uint32 {
		in := f.p.frame()
		if f.out {
			v, _ := e.fromContainer("vetha", in)
			return v
		}
		v, _ := e.toContainer("vetha", in)
		return v
	}
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.setNetFlags(net1, modeFlags[GatewayIsolated])
			expectVerdict(t, run(e, f), TC_ACT_SHOT)
			e.expectDrops(map[DropReason]uint64{DropInternal: 1})

			// Between its containers, both hooks let it through.
			v, _ := e.fromContainer("vetha", fromA(tcpPacket(ctrA, 40000, ctrB, 80)).frame())
			expectVerdict(t, v, TC_ACT_REDIRECT)
			v, _ = e.toContainer("vetha", fromB(tcpPacket(ctrB, 40000, ctrA, 80)).frame())
			expectVerdict(t, v, TC_ACT_OK)
			e.expectDrops(map[DropReason]uint64{DropInternal: 1})

			// Internal only: the host is inside. (From the outside
			// stays closed: from_netdev drops it, see above.)
			if f.p.src == clientIP {
				return
			}
			e.setNetFlags(net1, netFlags(Network{Internal: true}))
			expectVerdict(t, run(e, f), TC_ACT_OK)
			e.expectDrops(map[DropReason]uint64{DropInternal: 1})
		})
	}
}

// TestPacketGatewayModeRoutedFromOtherNetwork: a container of another
// network reaches a routed network's container as the outside does
// (Docker's ISOLATION-STAGE-1 "-o br -j RETURN"): on its published
// container ports and by ICMP, tracked so the answers cross back; nothing
// else, and the routed container opens nothing towards the other network.
// Not routed, the same packets are isolated (the positive twin).
func TestPacketGatewayModeRoutedFromOtherNetwork(t *testing.T) {
	for _, proto := range []layers.IPProtocol{pTCP, pUDP, pICMP} {
		t.Run(proto.String(), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			sport, dport := uint16(40001), uint16(80)
			if proto == pICMP {
				sport, dport = 9, 0
			}
			first := fromA(flowPacket(proto, ctrA, sport, ctrC, dport)).frame()
			answer := fromC(replyPacket(proto, ctrC, dport, ctrA, sport)).frame()

			// net2 not routed: isolated.
			v, _ := e.fromContainer("vetha", first)
			expectVerdict(t, v, TC_ACT_SHOT)
			e.expectDrops(map[DropReason]uint64{DropIsolation: 1})

			e.setNetFlags(net2, modeFlags[GatewayRouted])
			e.routedPort(uint8(proto), ctrC, 80, 1)
			v, out := e.fromContainer("vetha", first)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			if d := decode(t, out); d.src() != ctrA || d.dst() != ctrC {
				t.Errorf("delivered %s -> %s, want %s -> %s", d.src(), d.dst(), ctrA, ctrC)
			}
			k := ctKey(uint8(proto), ctrA, sport, ctrC, dport)
			e.expectCT(k, ctWant{ctrA, ctrC, sport, dport, atFromContainer, atFromContainer | flagReply, KindRouted, e.idx["vetha"]})
			v, out = e.fromContainer("vethc", answer)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			if d := decode(t, out); d.src() != ctrC || d.dst() != ctrA {
				t.Errorf("answer delivered %s -> %s, want %s -> %s", d.src(), d.dst(), ctrC, ctrA)
			}
			e.expectDrops(map[DropReason]uint64{DropIsolation: 1})

			// An unpublished port; a flow the routed container opens.
			if proto != pICMP {
				v, _ = e.fromContainer("vetha", fromA(flowPacket(proto, ctrA, sport, ctrC, 22)).frame())
				expectVerdict(t, v, TC_ACT_SHOT)
				e.expectDrops(map[DropReason]uint64{DropIsolation: 1, DropNotPublished: 1})
			}
			v, _ = e.fromContainer("vethc", fromC(flowPacket(proto, ctrC, 41000, ctrA, 80)).frame())
			expectVerdict(t, v, TC_ACT_SHOT)
			if n := e.drops()[DropIsolation]; n != 2 {
				t.Errorf("isolation drops %d, want 2", n)
			}
		})
	}
}

// TestPacketRoutedOtherInterface: a routed network's containers are
// reached from an interface that is neither an uplink nor their bridge (a
// second NIC) as from an uplink: on published container ports and by ICMP,
// nothing else (not_published, Docker's "! -i br -o br -j DROP"); from
// their own bridge, anything.
func TestPacketRoutedOtherInterface(t *testing.T) {
	outside := netip.MustParseAddr("10.99.0.5") // behind other0, not an uplink
	for _, c := range []struct {
		name, in string
		p        testPacket
		verdict  uint32
	}{
		{"a published container port", "other0", tcpPacket(outside, 40000, ctrC, 80), TC_ACT_OK},
		{"echo", "other0", echoPacket(outside, ctrC, 7), TC_ACT_OK},
		{"an unpublished port", "other0", tcpPacket(outside, 40000, ctrC, 81), TC_ACT_SHOT},
		{"the port published for udp only", "other0", tcpPacket(outside, 40000, ctrC, 53), TC_ACT_SHOT},
		{"an unpublished port from its bridge", "br1", tcpPacket(gw2IP, 40000, ctrC, 81), TC_ACT_OK},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.setNetFlags(net2, netFRouted)
			e.routedPort(uint8(pTCP), ctrC, 80, 1)
			e.routedPort(uint8(pUDP), ctrC, 53, 2)
			v, _ := e.toContainerFrom("vethc", c.in, c.p.frame())
			expectVerdict(t, v, c.verdict)
			want := map[DropReason]uint64{}
			if c.verdict == TC_ACT_SHOT {
				want[DropNotPublished] = 1
			}
			e.expectDrops(want)
		})
	}
}
