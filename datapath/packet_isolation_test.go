// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of Docker's isolation of networks (bpf/lib/isolation.h):
// between networks, inside a network without inter-container
// communication, out of and into an internal network; and of a network
// without masquerade, whose traffic leaves untranslated. The topology is
// packet_helpers_test.go's: A and B on net1 (br0), C on net2 (br1, not
// masqueraded).

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

var (
	mdnsIP     = netip.MustParseAddr("224.0.0.251")
	bcastIP    = netip.MustParseAddr("255.255.255.255")
	net1Bcast  = netip.MustParseAddr("172.17.255.255")
	net1Unused = netip.MustParseAddr("172.17.0.50") // in net1, no endpoint
	net2Unused = netip.MustParseAddr("172.18.0.99") // in net2, no endpoint
)

// setNetFlags gives a test network the NET_F_* flags, in nets and in its
// endpoints, as Apply does.
func (e *packetEnv) setNetFlags(subnet netip.Prefix, flags bpfNetFlags) {
	e.t.Helper()
	k := bpfNetKey{Prefixlen: uint32(subnet.Bits()), Addr: be32(subnet.Addr())}
	var info bpfNetInfo
	if err := e.objs.Nets.Lookup(k, &info); err != nil {
		e.t.Fatalf("network %s: %v", subnet, err)
	}
	info.Flags = flags
	e.put(e.objs.Nets, k, info)
	eps := map[uint32]bpfEndpoint{}
	var a uint32
	var ep bpfEndpoint
	it := e.objs.Endpoints.Iterate()
	for it.Next(&a, &ep) {
		if subnet.Contains(addrFrom(a)) {
			ep.Flags = flags
			eps[a] = ep
		}
	}
	if err := it.Err(); err != nil {
		e.t.Fatal(err)
	}
	for a, ep := range eps {
		e.put(e.objs.Endpoints, a, ep)
		e.put(e.objs.Veths, ep.Ifindex, ep)
	}
}

// isoCase is a packet a container sends and the verdicts of
// from_container with the fast path on and off.
type isoCase struct {
	name       string
	veth       string
	p          testPacket
	frame      []byte // instead of p's
	fast, slow uint32
}

func (c isoCase) want(fast bool) uint32 {
	if fast {
		return c.fast
	}
	return c.slow
}

// runIso runs the cases and checks their verdicts; a dropped packet must
// not have been changed on the way.
func (e *packetEnv) runIso(t *testing.T, fast bool, cases []isoCase) {
	t.Helper()
	for _, c := range cases {
		in := c.frame
		if in == nil {
			in = c.p.frame()
		}
		v, out := e.fromContainer(c.veth, in)
		if want := c.want(fast); v != want {
			t.Errorf("%s: verdict %s, want %s", c.name, verdictName(v), verdictName(want))
		}
		if v == TC_ACT_SHOT {
			expectUnchanged(t, in, out[:len(in)])
		}
	}
}

// shot is a case dropped on both paths; through one passed on both
// (redirected by the fast path when redirect).
func shot(name, veth string, p testPacket) isoCase {
	return isoCase{name: name, veth: veth, p: p, fast: TC_ACT_SHOT, slow: TC_ACT_SHOT}
}

func through(name, veth string, p testPacket, redirect bool) isoCase {
	c := isoCase{name: name, veth: veth, p: p, fast: TC_ACT_OK, slow: TC_ACT_OK}
	if redirect {
		c.fast = TC_ACT_REDIRECT
	}
	return c
}

func fromA(p testPacket) testPacket { return p.fromCtr(macA, gwMAC) }
func fromB(p testPacket) testPacket { return p.fromCtr(macB, gwMAC) }
func fromC(p testPacket) testPacket { return p.fromCtr(macC, gw2MAC) }

var isoProtos = []layers.IPProtocol{pTCP, pUDP, pICMP}

// TestPacketIsolationBetweenNetworks: containers of two networks cannot
// reach each other, either way, whatever the protocol, whether the
// address is a container's or not; the other network's gateway (the host)
// and the outside stay reachable.
func TestPacketIsolationBetweenNetworks(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		var cases []isoCase
		for _, proto := range isoProtos {
			cases = append(cases,
				shot(fmt.Sprintf("%v A to C", proto), "vetha", fromA(flowPacket(proto, ctrA, 40000, ctrC, 80))),
				shot(fmt.Sprintf("%v C to A", proto), "vethc", fromC(flowPacket(proto, ctrC, 40000, ctrA, 80))),
				shot(fmt.Sprintf("%v answer of no flow, C to A", proto), "vethc", fromC(replyPacket(proto, ctrC, 80, ctrA, 40000))),
			)
		}
		unfragmented := udpPacket(ctrA, 40000, ctrC, 53)
		unfragmented.payload, unfragmented.df = make([]byte, 64), false
		frags := fragment(unfragmented.datagram(), 32)
		cases = append(cases,
			shot("to an address of net2 without a container", "vetha", fromA(udpPacket(ctrA, 40000, net2Unused, 53))),
			shot("to the broadcast address of net1, from C", "vethc", fromC(udpPacket(ctrC, 40000, net1Bcast, 53))),
			isoCase{name: "first fragment", veth: "vetha", frame: ethFrame(macA, gwMAC, layers.EthernetTypeIPv4, frags[0]), fast: TC_ACT_SHOT, slow: TC_ACT_SHOT},
			isoCase{name: "later fragment", veth: "vetha", frame: ethFrame(macA, gwMAC, layers.EthernetTypeIPv4, frags[1]), fast: TC_ACT_SHOT, slow: TC_ACT_SHOT},
			shot("ICMP error about no flow, C to A", "vethc", fromC(icmpError(ctrC, ctrA, 3, 3, 0, udpPacket(ctrA, 40001, ctrC, 53).datagram()))),
		)
		e.runIso(t, fast, cases)
		e.expectDrops(map[DropReason]uint64{DropIsolation: uint64(len(cases))})
		if n := len(e.ct()); n != 0 {
			t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
		}
		if tr := e.traffic("vethc"); tr.RxPackets != 0 {
			t.Errorf("vethc received %d packets, want none", tr.RxPackets)
		}

		// What stays open.
		e.runIso(t, fast, []isoCase{
			through("A to the gateway of net2 (the host)", "vetha", fromA(tcpPacket(ctrA, 40000, gw2IP, 22)), false),
			through("C to the gateway of net1 (the host)", "vethc", fromC(echoPacket(ctrC, gwIP, 7)), false),
			through("A to a host address", "vetha", fromA(tcpPacket(ctrA, 40000, hostIP, 22)), false),
			through("A to B, same network", "vetha", fromA(tcpPacket(ctrA, 40000, ctrB, 80)), true),
			through("A to the outside", "vetha", fromA(tcpPacket(ctrA, 40000, remoteIP, 443)), true),
			through("C to the outside", "vethc", fromC(udpPacket(ctrC, 40000, remoteIP, 53)), true),
			// Multicast and broadcast stay on their bridge: the stack's.
			through("A to a multicast group", "vetha", fromA(udpPacket(ctrA, 5353, mdnsIP, 5353)), false),
			through("C to the limited broadcast", "vethc", fromC(udpPacket(ctrC, 68, bcastIP, 67)), false),
		})
		e.expectDrops(map[DropReason]uint64{DropIsolation: uint64(len(cases))})
	})
}

// TestPacketIsolationExpiredFlow: only a live flow's answers cross
// networks.
func TestPacketIsolationExpiredFlow(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	// What a hairpin from A to a port of C leaves, long expired.
	k := ctKey(uint8(pUDP), ctrC, 53, ctrA, 40001)
	e.put(e.objs.Ct4, k, bpfCtEntry{Nsaddr: be32(hostIP), Ndaddr: be32(ctrA), Nsport: be16(5353), Ndport: be16(40001),
		Flags: atToContainer | flagReply, PeerFlags: atFromContainer, Kind: bpfCtKind(KindHairpin), Expires: 1})
	e.runIso(t, true, []isoCase{shot("answer of an expired flow", "vethc", fromC(udpPacket(ctrC, 53, ctrA, 40001)))})
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1})
}

// TestPacketIsolationRedirectOnly: the benchmark's redirect-only mode
// isolates networks too.
func TestPacketIsolationRedirectOnly(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true, RedirectOnly: true})
	e.runIso(t, true, []isoCase{
		shot("A to C", "vetha", fromA(udpPacket(ctrA, 40000, ctrC, 53))),
		through("A to B", "vetha", fromA(udpPacket(ctrA, 40000, ctrB, 53)), true),
	})
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1})
}

// TestPacketIsolationHairpin: a port published by a container of another
// network is open through the host's address (as to anyone), both ways:
// the flow, its answers and ICMP errors about it cross the networks,
// routed by the fast path. Nothing else does.
func TestPacketIsolationHairpin(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		tcp, udp := uint8(pTCP), uint8(pUDP)
		e.publish(tcp, netip.Addr{}, 8080, ctrC, 80, 1)
		e.publish(udp, netip.Addr{}, 5353, ctrC, 53, 2)

		// A to C's port, through the host.
		in := fromA(tcpPacket(ctrA, 40001, hostIP, 8080)).frame()
		v, out := e.fromContainer("vetha", in)
		d := decode(t, out)
		expectTuple(t, d, ctrA, 40001, ctrC, 80)
		checkFrame(t, out)
		if fast {
			expectVerdict(t, v, TC_ACT_REDIRECT)
			expectTTL(t, d, 63) // routed to the other bridge
			expectMACs(t, d, gw2MAC, macC)
			if tr := e.traffic("vethc"); tr.RxPackets != 1 {
				t.Errorf("vethc counters %+v, want 1 packet received", tr)
			}
		} else {
			expectVerdict(t, v, TC_ACT_OK)
			expectMACs(t, d, macA, gwMAC)
		}

		// C answers A.
		reply := fromC(replyPacket(pTCP, ctrC, 80, ctrA, 40001)).frame()
		v, out = e.fromContainer("vethc", reply)
		if fast {
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d = decode(t, out)
			expectTTL(t, d, 63)
			expectMACs(t, d, gwMAC, macA)
		} else {
			expectVerdict(t, v, TC_ACT_OK)
			expectUnchanged(t, reply, out)
			v, out = e.toContainer("vetha", out)
			expectVerdict(t, v, TC_ACT_OK)
			d = decode(t, out)
		}
		expectTuple(t, d, hostIP, 8080, ctrA, 40001)
		checkFrame(t, out)

		// UDP to a closed port of C: C's port-unreachable gets to A, about
		// the packet A sent.
		sent := fromA(udpPacket(ctrA, 40002, hostIP, 5353))
		_, got := e.fromContainer("vetha", sent.frame())
		expectTuple(t, decode(t, got), ctrA, 40002, ctrC, 53)
		icmpIn := fromC(icmpError(ctrC, ctrA, 3, 3, 0, got[14:])).frame()
		v, out = e.fromContainer("vethc", icmpIn)
		if fast {
			expectVerdict(t, v, TC_ACT_REDIRECT)
		} else {
			expectVerdict(t, v, TC_ACT_OK)
			expectUnchanged(t, icmpIn, out)
			v, out = e.toContainer("vetha", out)
			expectVerdict(t, v, TC_ACT_OK)
		}
		d = decode(t, out)
		checkFrame(t, out)
		if d.src() != hostIP || d.dst() != ctrA {
			t.Errorf("ICMP error %s -> %s, want %s -> %s", d.src(), d.dst(), hostIP, ctrA)
		}
		expectQuote(t, d, withTTL(sent.datagram(), got[14+8]))
		e.expectDrops(nil)

		// The flows open nothing else between A and C.
		e.runIso(t, fast, []isoCase{
			shot("C to A's port of the flow, from another port", "vethc", fromC(tcpPacket(ctrC, 81, ctrA, 40001))),
			shot("C to A, new flow", "vethc", fromC(tcpPacket(ctrC, 40000, ctrA, 80))),
			shot("A straight to C's port", "vetha", fromA(tcpPacket(ctrA, 40001, ctrC, 80))),
		})
		e.expectDrops(map[DropReason]uint64{DropIsolation: 3})
	})
}

// TestPacketNoICC: in a network without inter-container communication,
// containers cannot reach each other (nor their subnet's broadcast, nor
// multicast, which the bridge would give them), but reach the gateway,
// the host, published ports and, masqueraded, the outside.
func TestPacketNoICC(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		e.setNetFlags(net1, netFMasq|netFNoICC)
		var cases []isoCase
		for _, proto := range isoProtos {
			cases = append(cases,
				shot(fmt.Sprintf("%v A to B", proto), "vetha", fromA(flowPacket(proto, ctrA, 40000, ctrB, 80))),
				shot(fmt.Sprintf("%v B to A", proto), "vethb", fromB(flowPacket(proto, ctrB, 40000, ctrA, 80))),
			)
		}
		cases = append(cases,
			shot("A to an address of net1 without a container", "vetha", fromA(udpPacket(ctrA, 40000, net1Unused, 53))),
			shot("A to net1's broadcast", "vetha", fromA(udpPacket(ctrA, 40000, net1Bcast, 53))),
			shot("A to the limited broadcast", "vetha", fromA(udpPacket(ctrA, 68, bcastIP, 67))),
			shot("A to a multicast group", "vetha", fromA(udpPacket(ctrA, 5353, mdnsIP, 5353))),
		)
		e.runIso(t, fast, cases)
		e.expectDrops(map[DropReason]uint64{DropICC: uint64(len(cases))})
		if tr := e.traffic("vethb"); tr.RxPackets != 0 {
			t.Errorf("vethb received %d packets, want none", tr.RxPackets)
		}

		// Still open: the gateway, the host, the outside.
		e.runIso(t, fast, []isoCase{
			through("A to its gateway", "vetha", fromA(tcpPacket(ctrA, 40000, gwIP, 53)), false),
			through("A pings its gateway", "vetha", fromA(echoPacket(ctrA, gwIP, 9)), false),
			through("A to a host address", "vetha", fromA(tcpPacket(ctrA, 40000, hostIP, 22)), false),
			through("A to the outside", "vetha", fromA(tcpPacket(ctrA, 40000, remoteIP, 443)), true),
			// Another network is isolated all the same.
			shot("A to C", "vetha", fromA(tcpPacket(ctrA, 40000, ctrC, 80))),
		})
		e.expectDrops(map[DropReason]uint64{DropICC: uint64(len(cases)), DropIsolation: 1})
		// The way out is masqueraded.
		v, out := e.toNetdev(fromA(tcpPacket(ctrA, 40000, remoteIP, 443)).frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple(t, decode(t, out), hostIP, 40000, remoteIP, 443)

		// A port B publishes is closed to A too: Docker DNATs A's packet
		// to B and its "-i br -o br -j DROP" drops it (no userland proxy
		// carries it around), and so is A's own port, reached through the
		// host. Its twin: A reaches a port C publishes on another network,
		// and C's answers come back.
		e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrB, 80, 1)
		e.publish(uint8(pTCP), netip.Addr{}, 8081, ctrA, 80, 2)
		e.publish(uint8(pTCP), netip.Addr{}, 8082, ctrC, 80, 3)
		e.runIso(t, fast, []isoCase{
			shot("A to B's published port", "vetha", fromA(tcpPacket(ctrA, 40001, hostIP, 8080))),
			shot("A to its own published port", "vetha", fromA(tcpPacket(ctrA, 40002, hostIP, 8081))),
		})
		if tr := e.traffic("vethb"); tr.RxPackets != 0 {
			t.Errorf("vethb received %d packets, want none", tr.RxPackets)
		}
		e.expectDrops(map[DropReason]uint64{DropICC: uint64(len(cases)) + 2, DropIsolation: 1})
		v, out = e.fromContainer("vetha", fromA(tcpPacket(ctrA, 40003, hostIP, 8082)).frame())
		if want := (isoCase{fast: TC_ACT_REDIRECT, slow: TC_ACT_OK}).want(fast); v != want {
			t.Errorf("hairpin to C: verdict %s, want %s", verdictName(v), verdictName(want))
		}
		expectTuple(t, decode(t, out), ctrA, 40003, ctrC, 80)
		reply := fromC(replyPacket(pTCP, ctrC, 80, ctrA, 40003)).frame()
		v, out = e.fromContainer("vethc", reply)
		if fast {
			expectVerdict(t, v, TC_ACT_REDIRECT)
		} else {
			expectVerdict(t, v, TC_ACT_OK)
			_, out = e.toContainer("vetha", out)
		}
		expectTuple(t, decode(t, out), hostIP, 8082, ctrA, 40003)
		e.expectDrops(map[DropReason]uint64{DropICC: uint64(len(cases)) + 2, DropIsolation: 1})
	})
}

// TestPacketInternal: nothing leaves an internal network but for the
// host's own addresses (a published port of another network included),
// nothing from the outside enters it, nothing is masqueraded; inside it,
// traffic flows, unless inter-container communication is off too.
func TestPacketInternal(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		e := newPacketEnv(t, Options{FastPath: fast})
		e.setNetFlags(net1, netFInternal)
		e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrC, 80, 1)
		var out []isoCase
		for _, proto := range isoProtos {
			out = append(out, shot(fmt.Sprintf("%v A to the outside", proto), "vetha", fromA(flowPacket(proto, ctrA, 40000, remoteIP, 443))))
		}
		out = append(out,
			shot("A to an address on the uplink's subnet", "vetha", fromA(udpPacket(ctrA, 40000, notHostIP, 53))),
			shot("A to a published port of C, through the host", "vetha", fromA(tcpPacket(ctrA, 40001, hostIP, 8080))),
		)
		e.runIso(t, fast, out)
		between := []isoCase{
			shot("A to C", "vetha", fromA(tcpPacket(ctrA, 40000, ctrC, 80))),
			shot("C to A", "vethc", fromC(tcpPacket(ctrC, 40000, ctrA, 80))),
		}
		e.runIso(t, fast, between)
		e.expectDrops(map[DropReason]uint64{DropInternal: uint64(len(out)), DropIsolation: uint64(len(between))})
		if n := len(e.ct()); n != 0 {
			t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
		}

		e.runIso(t, fast, []isoCase{
			through("A to B", "vetha", fromA(tcpPacket(ctrA, 40000, ctrB, 80)), true),
			through("B pings A", "vethb", fromB(echoPacket(ctrB, ctrA, 3)), true),
			through("A to its gateway", "vetha", fromA(udpPacket(ctrA, 40000, gwIP, 53)), false),
			through("A to a host address", "vetha", fromA(tcpPacket(ctrA, 40000, hostIP, 22)), false),
			through("A to net1's broadcast", "vetha", fromA(udpPacket(ctrA, 40000, net1Bcast, 53)), false),
		})

		// From the outside, straight to A.
		v, _ := e.fromNetdev(tcpPacket(clientIP, 40000, ctrA, 80).frame())
		expectVerdict(t, v, TC_ACT_SHOT)
		// Should a packet of A's get to the uplink, it stays as it is.
		in := fromA(tcpPacket(ctrA, 40000, remoteIP, 443)).frame()
		v, got := e.toNetdev(in)
		expectVerdict(t, v, TC_ACT_OK)
		expectUnchanged(t, in, got)
		e.expectDrops(map[DropReason]uint64{DropInternal: uint64(len(out)) + 1, DropIsolation: uint64(len(between))})
		if n := len(e.ct()); n != 0 {
			t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
		}

		// Internal without inter-container communication.
		e.setNetFlags(net1, netFInternal|netFNoICC)
		e.runIso(t, fast, []isoCase{shot("A to B", "vetha", fromA(tcpPacket(ctrA, 40000, ctrB, 80)))})
		e.expectDrops(map[DropReason]uint64{DropInternal: uint64(len(out)) + 1, DropIsolation: uint64(len(between)), DropICC: 1})
	})
}

// TestPacketNoMasquerade: a network without masquerade sends its traffic
// out with the containers' own addresses, tracked so that the answers,
// and only they, come back in.
func TestPacketNoMasquerade(t *testing.T) {
	for _, proto := range isoProtos {
		t.Run(proto.String(), func(t *testing.T) {
			forBothPaths(t, func(t *testing.T, fast bool) {
				e := newPacketEnv(t, Options{FastPath: fast})
				p := proto
				sport, dport := uint16(40000), uint16(443)
				if p == pICMP {
					sport, dport = 0x4d2, 0
				}
				first := fromC(flowPacket(p, ctrC, sport, remoteIP, dport))
				in := first.frame()
				// The fast path sends it to the uplink, whose egress keeps
				// it as it is.
				v, out := e.fromContainer("vethc", in)
				if fast {
					expectVerdict(t, v, TC_ACT_REDIRECT)
					expectTTL(t, decode(t, out), 63)
				} else {
					expectVerdict(t, v, TC_ACT_OK)
					expectUnchanged(t, in, out)
				}
				v, out = e.toNetdev(in)
				expectVerdict(t, v, TC_ACT_OK)
				expectUnchanged(t, in, out)
				k := ctKey(uint8(p), ctrC, sport, remoteIP, dport)
				rk := ctKey(uint8(p), remoteIP, dport, ctrC, sport)
				e.expectCT(k, ctWant{ctrC, remoteIP, sport, dport, atToNetdev, atFromNetdev | flagReply, KindRouted, e.idx["vethc"]})
				e.expectCT(rk, ctWant{remoteIP, ctrC, dport, sport, atFromNetdev | flagReply, atToNetdev, KindRouted, e.idx["vethc"]})
				if n := len(e.ct()); n != 2 {
					t.Errorf("%d conntrack entries, want 2:\n%s", n, e.ctDump())
				}

				// The answer comes in, untranslated.
				ans := replyPacket(p, remoteIP, dport, ctrC, sport).frame()
				v, out = e.fromNetdev(ans)
				d := decode(t, out)
				expectTuple(t, d, remoteIP, dport, ctrC, sport)
				checkFrame(t, out)
				if fast {
					expectVerdict(t, v, TC_ACT_REDIRECT)
					expectTTL(t, d, 63)
					expectMACs(t, d, gw2MAC, macC)
				} else {
					expectVerdict(t, v, TC_ACT_OK)
					expectUnchanged(t, ans, out)
				}
				if re, _ := e.ctLookup(rk); re.Packets != 1 {
					t.Errorf("answer entry counted %d packets, want 1", re.Packets)
				}
				e.expectDrops(nil)

				// Something else from the outside to C is not let in.
				v, _ = e.fromNetdev(flowPacket(p, remoteIP, 40005, ctrC, 22).frame())
				expectVerdict(t, v, TC_ACT_SHOT)
				e.expectDrops(map[DropReason]uint64{DropNotPublished: 1})
			})
		})
	}
}

// TestPacketNoMasqueradeHeals: a TCP flow of a network without masquerade
// whose entries are gone (evicted, or from before a restart) gets them
// back from its next packet out: there is no translation to lose.
func TestPacketNoMasqueradeHeals(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	p := fromC(tcpPacket(ctrC, 40000, remoteIP, 443))
	p.syn, p.ack = false, true
	in := p.frame()
	v, out := e.toNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, out)
	if _, ok := e.ctLookup(ctKey(uint8(pTCP), remoteIP, 443, ctrC, 40000)); !ok {
		t.Errorf("no entry for the answers:\n%s", e.ctDump())
	}
	e.expectDrops(nil)
}
