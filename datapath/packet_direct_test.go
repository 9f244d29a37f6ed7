// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of the protection of container addresses from direct
// access (bpf/lib/direct.h): to_container judges a packet by the
// interface it last arrived on (__sk_buff.ingress_ifindex, which
// BPF_PROG_RUN takes from the context), and of the host address a
// network's masquerade leaves with (net_info.host_addr, host_ipv4).

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// viaIngress names the interface a packet arrived on: a device of the
// test namespace, "host" for a packet the host sent (ifindex 0) or "lo".
func (e *packetEnv) ingressIndex(in string) uint32 {
	e.t.Helper()
	switch in {
	case "host":
		return 0
	case "lo":
		return 1
	}
	idx, ok := e.idx[in]
	if !ok {
		e.t.Fatalf("no interface %q in the test namespace", in)
	}
	return idx
}

// toContainerFrom runs to_container on the host veth veth with a packet
// that arrived on the interface in.
func (e *packetEnv) toContainerFrom(veth, in string, frame []byte) (uint32, []byte) {
	e.t.Helper()
	opts := ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256),
		Context: skbContext{Ifindex: e.idx[veth], IngressIfindex: e.ingressIndex(in)},
	}
	var ret uint32
	var err error
	e.ns.do(func() { ret, err = e.objs.ToContainer.Run(&opts) })
	if err != nil {
		e.t.Fatalf("running to_container on %s from %s: %v", veth, in, err)
	}
	return ret, opts.DataOut
}

// trust lets the interface in reach port of container address a.
func (e *packetEnv) trust(in string, proto uint8, a netip.Addr, port uint16) {
	e.put(e.objs.DirectTrusted, bpfTrustedKey{Ifindex: e.ingressIndex(in), Addr: be32(a), Port: be16(port), Proto: proto}, uint32(1))
}

// TestPacketDirectAccess: a packet to a container's address passes
// to_container from the container's bridge, a port of it, the host, an
// uplink, and from a trusted interface to a published container port; from
// any other interface (a second NIC, another network's bridge or veth) it
// is dropped and counted as direct_access. --allow-direct-routing trusts
// every interface with the published container ports; networks without
// masquerade are not protected.
func TestPacketDirectAccess(t *testing.T) {
	outside := netip.MustParseAddr("10.99.0.5") // behind other0, not an uplink
	type want struct {
		verdict uint32
		direct  uint64 // direct_access drops counted
	}
	pass, drop := want{TC_ACT_OK, 0}, want{TC_ACT_SHOT, 1}
	// allowDirect programs --allow-direct-routing as Apply does, with
	// ctrA:80/tcp published.
	allowDirect := func(e *packetEnv) {
		e.setNetFlags(net1, netFMasq|netFDirectOpen)
		e.trust("host", uint8(pTCP), ctrA, 80)
	}
	cases := []struct {
		name  string
		setup func(e *packetEnv)
		veth  string
		in    string
		p     testPacket
		want  want
	}{
		{name: "second NIC to a container", veth: "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: drop},
		{name: "second NIC, udp", veth: "vetha", in: "other0", p: udpPacket(outside, 40000, ctrA, 53), want: drop},
		{name: "second NIC, echo", veth: "vetha", in: "other0", p: echoPacket(outside, ctrA, 7), want: drop},
		{name: "second NIC to an address of the network without endpoint", veth: "vetha", in: "other0", p: tcpPacket(outside, 40000, net1Unused, 80), want: drop},
		{name: "its bridge", veth: "vetha", in: "br0", p: tcpPacket(outside, 40000, ctrA, 80), want: pass},
		{name: "a port of its bridge", veth: "vetha", in: "vethb", p: tcpPacket(ctrB, 40000, ctrA, 80), want: pass},
		{name: "its own veth (a turn)", veth: "vetha", in: "vetha", p: tcpPacket(ctrA, 40000, ctrA, 80), want: pass},
		{name: "the host", veth: "vetha", in: "host", p: tcpPacket(gwIP, 40000, ctrA, 80), want: pass},
		{name: "loopback", veth: "vetha", in: "lo", p: tcpPacket(gwIP, 40000, ctrA, 80), want: pass},
		{name: "an uplink, judged by from_netdev", veth: "vetha", in: "up0", p: tcpPacket(remoteIP, 40000, ctrA, 80), want: pass},
		{name: "an interface that is not an uplink", veth: "vetha", in: "up1", p: tcpPacket(remoteIP, 40000, ctrA, 80), want: drop},
		{name: "another network's bridge", veth: "vetha", in: "br1", p: tcpPacket(ctrC, 40000, ctrA, 80), want: drop},
		{name: "another network's veth", veth: "vetha", in: "vethc", p: tcpPacket(ctrC, 40000, ctrA, 80), want: drop},
		{
			name: "another network's bridge, a tracked flow",
			setup: func(e *packetEnv) {
				// The entry of the answers of a hairpin from ctrC that
				// from_container translated to ctrA:80.
				e.put(e.objs.Ct4, ctKey(uint8(pTCP), ctrA, 80, ctrC, 40000),
					bpfCtEntry{Nsaddr: be32(hostIP), Ndaddr: be32(ctrC), Nsport: be16(8080), Ndport: be16(40000), Expires: ^uint64(0)})
			},
			veth: "vetha", in: "br1", p: tcpPacket(ctrC, 40000, ctrA, 80), want: pass,
		},
		{
			name: "another network's bridge, an expired flow",
			setup: func(e *packetEnv) {
				e.put(e.objs.Ct4, ctKey(uint8(pTCP), ctrA, 80, ctrC, 40000),
					bpfCtEntry{Nsaddr: be32(hostIP), Ndaddr: be32(ctrC), Nsport: be16(8080), Ndport: be16(40000), Expires: 1})
			},
			veth: "vetha", in: "br1", p: tcpPacket(ctrC, 40000, ctrA, 80), want: drop,
		},
		{
			name:  "trusted interface to a published container port",
			setup: func(e *packetEnv) { e.trust("other0", uint8(pTCP), ctrA, 80) },
			veth:  "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: pass,
		},
		{
			name:  "trusted interface to an unpublished port",
			setup: func(e *packetEnv) { e.trust("other0", uint8(pTCP), ctrA, 80) },
			veth:  "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 81), want: drop,
		},
		{
			name:  "trusted interface, the port published for udp only",
			setup: func(e *packetEnv) { e.trust("other0", uint8(pUDP), ctrA, 80) },
			veth:  "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: drop,
		},
		{
			name:  "trusted interface to another container's published port",
			setup: func(e *packetEnv) { e.trust("other0", uint8(pTCP), ctrB, 80) },
			veth:  "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: drop,
		},
		{
			name:  "another interface than the trusted one",
			setup: func(e *packetEnv) { e.trust("other0", uint8(pTCP), ctrA, 80) },
			veth:  "vetha", in: "up1", p: tcpPacket(outside, 40000, ctrA, 80), want: drop,
		},
		// --allow-direct-routing: every interface is trusted (entries
		// of ifindex 0) with the published container ports, and only
		// with them, as Docker's filter table still drops the rest.
		{name: "allow-direct-routing, a published port", setup: allowDirect, veth: "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: pass},
		{name: "allow-direct-routing, another interface", setup: allowDirect, veth: "vetha", in: "up1", p: tcpPacket(outside, 40000, ctrA, 80), want: pass},
		{name: "allow-direct-routing, another network's bridge", setup: allowDirect, veth: "vetha", in: "br1", p: tcpPacket(ctrC, 40000, ctrA, 80), want: pass},
		{name: "allow-direct-routing, an unpublished port", setup: allowDirect, veth: "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 81), want: drop},
		{name: "allow-direct-routing, echo", setup: allowDirect, veth: "vetha", in: "other0", p: echoPacket(outside, ctrA, 7), want: drop},
		{
			name:  "an entry of every interface without allow-direct-routing",
			setup: func(e *packetEnv) { e.trust("host", uint8(pTCP), ctrA, 80) },
			veth:  "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: drop,
		},
		{name: "a network without masquerade", veth: "vethc", in: "other0", p: tcpPacket(outside, 40000, ctrC, 80), want: pass},
		{
			name:  "an internal network (judged by its own rules)",
			setup: func(e *packetEnv) { e.setNetFlags(net1, netFInternal) },
			veth:  "vetha", in: "other0", p: tcpPacket(outside, 40000, ctrA, 80), want: pass,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			if c.setup != nil {
				c.setup(e)
			}
			in := c.p.frame()
			v, out := e.toContainerFrom(c.veth, c.in, in)
			expectVerdict(t, v, c.want.verdict)
			if got := e.drops()[DropDirectAccess]; got != c.want.direct {
				t.Errorf("direct_access drops %d, want %d", got, c.want.direct)
			}
			if c.want.verdict == TC_ACT_OK {
				d := decode(t, out)
				sp, dp := c.p.sport, c.p.dport
				if c.p.proto == pICMP {
					sp, dp = d.ports()
				}
				expectTuple(t, d, c.p.src, sp, c.p.dst, dp)
			}
			// Nothing else is dropped for it.
			for r, n := range e.drops() {
				if DropReason(r) != DropDirectAccess && n != 0 {
					t.Errorf("%s drops %d, want 0", DropReason(r), n)
				}
			}
		})
	}
}

// TestPacketDirectAccessCounters: to_container counts a dropped packet as
// received by the veth, as it counts every packet it sees, and the drop
// once per packet.
func TestPacketDirectAccessCounters(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	outside := netip.MustParseAddr("10.99.0.5")
	for i := 0; i < 3; i++ {
		v, _ := e.toContainerFrom("vetha", "other0", tcpPacket(outside, uint16(40000+i), ctrA, 80).frame())
		expectVerdict(t, v, TC_ACT_SHOT)
	}
	v, _ := e.toContainerFrom("vetha", "br0", tcpPacket(outside, 40010, ctrA, 80).frame())
	expectVerdict(t, v, TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropDirectAccess: 3})
	if tr := e.traffic("vetha"); tr.RxPackets != 4 {
		t.Errorf("vetha received %d packets, want 4", tr.RxPackets)
	}
}

// TestPacketMasqHostAddr: a network with a host address of its own
// (host_ipv4) leaves with it instead of the uplink's, and the answers to
// that address come back translated to the container; another network
// still leaves with the uplink's address.
func TestPacketMasqHostAddr(t *testing.T) {
	for _, proto := range []layers.IPProtocol{pTCP, pUDP, pICMP} {
		t.Run(proto.String(), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			k := bpfNetKey{Prefixlen: 16, Addr: be32(net1.Addr())}
			e.put(e.objs.Nets, k, bpfNetInfo{Flags: netFMasq, NetId: 1, HostAddr: be32(hostIP2)})
			sport, dport := uint16(40000), uint16(443)
			if proto == pICMP {
				sport, dport = 0x4d2, 0
			}
			v, out := e.toNetdev(flowPacket(proto, ctrA, sport, remoteIP, dport).fromCtr(macA, gwMAC).frame())
			expectVerdict(t, v, TC_ACT_OK)
			checkFrame(t, out)
			d := decode(t, out)
			gs, gd := d.ports()
			if d.src() != hostIP2 || d.dst() != remoteIP || gs != sport || gd != dport {
				t.Fatalf("left as %s:%d -> %s:%d, want %s:%d -> %s:%d", d.src(), gs, d.dst(), gd, hostIP2, sport, remoteIP, dport)
			}
			e.expectCT(ctKey(uint8(proto), remoteIP, dport, hostIP2, sport),
				ctWant{remoteIP, ctrA, dport, sport, atFromNetdev | flagReply, atToNetdev, KindSNAT, e.idx["vetha"]})

			v, out = e.fromNetdev(replyPacket(proto, remoteIP, dport, hostIP2, sport).frame())
			expectVerdict(t, v, TC_ACT_REDIRECT)
			checkFrame(t, out)
			expectTuple(t, decode(t, out), remoteIP, dport, ctrA, sport)

			// The uplink's address answers nothing of that flow.
			v, _ = e.fromNetdev(replyPacket(proto, remoteIP, dport, hostIP, sport).frame())
			expectVerdict(t, v, TC_ACT_OK)
			if n := len(e.ct()); n != 2 {
				t.Errorf("%d conntrack entries, want the flow's 2:\n%s", n, e.ctDump())
			}

			// A network without a host address of its own: the uplink's.
			e.setNetFlags(net2, netFMasq)
			v, out = e.toNetdev(flowPacket(proto, ctrC, sport, remoteIP, dport).fromCtr(macC, gw2MAC).frame())
			expectVerdict(t, v, TC_ACT_OK)
			if d := decode(t, out); d.src() != hostIP {
				t.Errorf("other network left from %s, want the uplink's %s", d.src(), hostIP)
			}
		})
	}
}

// TestPacketDirectTrustedUplink: an uplink that is a trusted interface of
// the network (or every interface, with --allow-direct-routing) reaches a
// published container port by the container's address: the flow is
// tracked untranslated, unassured as a published port's, and its answer
// leaves through to_netdev untouched instead of masqueraded. An
// unpublished port, or an uplink that is not trusted, is dropped as
// not_published, as before.
func TestPacketDirectTrustedUplink(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(e *packetEnv)
		dport   uint16
		trusted bool
	}{
		{name: "not trusted", setup: func(e *packetEnv) {}, dport: 80},
		{name: "trusted, published port", setup: func(e *packetEnv) { e.trust("up0", uint8(pTCP), ctrA, 80) }, dport: 80, trusted: true},
		{name: "trusted, unpublished port", setup: func(e *packetEnv) { e.trust("up0", uint8(pTCP), ctrA, 80) }, dport: 81},
		{name: "another uplink trusted", setup: func(e *packetEnv) { e.trust("up1", uint8(pTCP), ctrA, 80) }, dport: 80},
		{name: "allow-direct-routing", setup: func(e *packetEnv) {
			e.setNetFlags(net1, netFMasq|netFDirectOpen)
			e.trust("host", uint8(pTCP), ctrA, 80)
		}, dport: 80, trusted: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			c.setup(e)
			v, out := e.fromNetdev(tcpPacket(remoteIP, 40000, ctrA, c.dport).frame())
			if !c.trusted {
				expectVerdict(t, v, TC_ACT_SHOT)
				e.expectDrops(map[DropReason]uint64{DropNotPublished: 1})
				if n := len(e.ctTable(e.objs.Ct4Syn)) + len(e.ct()); n != 0 {
					t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
				}
				return
			}
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			checkFrame(t, out)
			expectTuple(t, d, remoteIP, 40000, ctrA, c.dport)
			e.expectDrops(map[DropReason]uint64{})
			syn := e.ctTable(e.objs.Ct4Syn)
			if _, ok := syn[ctKey(uint8(pTCP), remoteIP, 40000, ctrA, c.dport)]; !ok || len(syn) != 2 {
				t.Fatalf("ct4_syn holds %d entries, want the flow's 2 (unassured):\n%s", len(syn), e.ctDump())
			}
			// The container's answer leaves with its own address.
			r := replyPacket(pTCP, ctrA, c.dport, remoteIP, 40000).fromCtr(macA, gwMAC)
			r.syn = true
			v, out = e.toNetdev(r.frame())
			expectVerdict(t, v, TC_ACT_OK)
			expectTuple(t, decode(t, out), ctrA, c.dport, remoteIP, 40000)
			if n := e.event(EventCTNewSNAT); n != 0 {
				t.Errorf("ct_new_snat = %d, want 0: the answer was masqueraded", n)
			}
		})
	}
}
