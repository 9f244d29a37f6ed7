// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of IPv6 translations: published ports (DNAT and its
// reverse), tracked in ct6.

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// installTopology6 adds the IPv6 side of the test topology: host6 and
// host6b host addresses, up0 masquerading with host6, br0's network
// fd00:17::/64 (masqueraded) with containers A and B, br1's fd00:18::/64
// (not masqueraded) with C.
func (e *packetEnv) installTopology6() {
	for _, a := range []netip.Addr{host6, host6b, gw6, gw6C} {
		e.put(e.objs.HostAddrs6, bpfIn6Key{A: be128(a)}, uint32(1))
	}
	e.put(e.objs.Uplinks6, e.idx["up0"], bpfUplink6{Addr: be128(host6)})
	e.put(e.objs.Nets6, bpfNet6Key{Prefixlen: 64, Addr: be128(net6a.Addr())}, bpfNet6Info{Flags: netFMasq, NetId: 1})
	e.put(e.objs.Nets6, bpfNet6Key{Prefixlen: 64, Addr: be128(net6b.Addr())}, bpfNet6Info{Flags: 0, NetId: 2})
	for _, c := range []struct {
		a      netip.Addr
		veth   string
		bridge string
		gw     netip.Addr
		netID  uint32
	}{{ctrA6, "vetha", "br0", gw6, 1}, {ctrB6, "vethb", "br0", gw6, 1}, {ctrC6, "vethc", "br1", gw6C, 2}} {
		ep := bpfEndpoint6{Ep: bpfEndpoint{Ifindex: e.idx[c.veth], BridgeIfindex: e.idx[c.bridge], NetId: c.netID}, Gw6: be128(c.gw)}
		e.put(e.objs.Endpoints6, bpfIn6Key{A: be128(c.a)}, ep)
	}
}

// publish6 publishes hostAddr:hostPort (the zero Addr: ::) to
// target:port.
func (e *packetEnv) publish6(proto uint8, hostAddr netip.Addr, hostPort uint16, target netip.Addr, port uint16, id uint32) {
	e.put(e.objs.Published6, bpfPort6Key{Addr: be128(hostAddr), Port: be16(hostPort), Proto: proto}, bpfPort6Target{Addr: be128(target), Port: be16(port), Id: id})
}

func ct6Key(proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) bpfCt6Key {
	return bpfCt6Key{Saddr: be128(src), Daddr: be128(dst), Sport: be16(sport), Dport: be16(dport), Proto: proto}
}

func (e *packetEnv) ct6() map[bpfCt6Key]bpfCt6Entry {
	e.t.Helper()
	out, err := readMap[bpfCt6Key, bpfCt6Entry](e.objs.Ct6)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// expectTuple6 checks what parse6Frame read against a tuple.
func expectTuple6(t *testing.T, what string, got parsed6, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	t.Helper()
	if got.src != src || got.dst != dst || got.sport != sport || got.dport != dport {
		t.Errorf("%s: [%s]:%d -> [%s]:%d, want [%s]:%d -> [%s]:%d", what, got.src, got.sport, got.dst, got.dport, src, sport, dst, dport)
	}
}

// TestPacketIPv6Published: a published port on :: and one on a specific
// host IPv6 address, TCP and UDP, a range, each translated to its
// container with the client's address kept and checksums right, the
// answers translated back; a packet to the port on an address that is
// not the binding's, or not the host's, is left alone (the positive
// twins are the translated ones).
func TestPacketIPv6Published(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA6, 80, 1)
	e.publish6(udp, host6b, 8081, ctrB6, 81, 2)
	for i := uint16(0); i < 3; i++ {
		e.publish6(tcp, netip.Addr{}, 18000+i, ctrA6, 9000+i, 3+uint32(i))
	}

	// TCP on ::, to either host address.
	for _, dst := range []netip.Addr{host6, host6b} {
		v, out := e.fromNetdev(tcp6(client6, 40000, dst, 8080).frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, "SYN to "+dst.String(), parse6Frame(t, "SYN", out), client6, 40000, ctrA6, 80)
		if _, ok := e.ct6()[ct6Key(tcp, client6, 40000, dst, 8080)]; !ok {
			t.Fatalf("no ct6 entry for the SYN to %s", dst)
		}
		ans := tcp6(ctrA6, 80, client6, 40000)
		ans.ack = true
		v, out = e.toNetdev(ans.fromCtr(upMAC, routerMAC).frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, "SYN|ACK", parse6Frame(t, "SYN|ACK", out), dst, 8080, client6, 40000)
		// The flow is over before the next address takes its tuple.
		e.put(e.objs.Ct6, ct6Key(tcp, client6, 40000, dst, 8080), bpfCt6Entry{})
		e.put(e.objs.Ct6, ct6Key(tcp, ctrA6, 80, client6, 40000), bpfCt6Entry{})
	}

	// UDP on host6b only: translated there, not on host6.
	v, out := e.fromNetdev(udp6(client6, 5000, host6b, 8081).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "UDP to the binding", parse6Frame(t, "UDP", out), client6, 5000, ctrB6, 81)
	v, out = e.toNetdev(udp6(ctrB6, 81, client6, 5000).fromCtr(upMAC, routerMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "UDP answer", parse6Frame(t, "UDP answer", out), host6b, 8081, client6, 5000)
	in := udp6(client6, 5001, host6, 8081).frame()
	v, out = e.fromNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "UDP to another host address", parse6Frame(t, "UDP", out), client6, 5001, host6, 8081)

	// A range: each port to its own.
	for i := uint16(0); i < 3; i++ {
		v, out := e.fromNetdev(tcp6(client6, 41000+i, host6, 18000+i).frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, "range", parse6Frame(t, "range", out), client6, 41000+i, ctrA6, 9000+i)
	}

	// Not a host address: left alone.
	v, out = e.fromNetdev(tcp6(client6, 42000, remote6, 8080).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "not the host's", parse6Frame(t, "not the host's", out), client6, 42000, remote6, 8080)
	if n := e.event(EventCTNewDNAT); n != 6 {
		t.Errorf("%d new DNAT flows counted, want 6", n)
	}
	e.expectDrops(nil)
}

// TestPacketIPv6DirectAccess: from the outside straight to a container's
// IPv6 address on a nat network is dropped as not published; the same
// container port through its published port gets in (the positive twin),
// and on a network without NAT flags (br1's here is routed-less plain)
// nothing is refused.
func TestPacketIPv6DirectAccess(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA6, 80, 1)
	v, _ := e.fromNetdev(tcp6(client6, 40000, ctrA6, 80).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropNotPublished: 1})
	v, out := e.fromNetdev(tcp6(client6, 40000, host6, 8080).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "published", parse6Frame(t, "published", out), client6, 40000, ctrA6, 80)

	// Internal: dropped as internal.
	e.put(e.objs.Nets6, bpfNet6Key{Prefixlen: 64, Addr: be128(net6b.Addr())}, bpfNet6Info{Flags: netFInternal, NetId: 2})
	v, _ = e.fromNetdev(tcp6(client6, 40001, ctrC6, 80).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropNotPublished: 1, DropInternal: 1})
	// nat-unprotected: let in.
	e.put(e.objs.Nets6, bpfNet6Key{Prefixlen: 64, Addr: be128(net6b.Addr())}, bpfNet6Info{Flags: netFUnprotected | netFMasq, NetId: 2})
	v, _ = e.fromNetdev(tcp6(client6, 40002, ctrC6, 80).frame())
	expectVerdict(t, v, TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropNotPublished: 1, DropInternal: 1})
}

// TestPacketIPv6Fragments: the first fragment of a datagram to a published
// port is translated and recorded; its later fragments, which carry no
// ports, follow it by fragment identification and get the same address;
// a later fragment of an unseen datagram is left alone.
func TestPacketIPv6Fragments(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	udp := uint8(layers.IPProtocolUDP)
	e.publish6(udp, netip.Addr{}, 5353, ctrA6, 53, 1)

	first := udp6(client6, 6000, host6, 5353)
	first.ext = []v6Ext{extFrag(0, true, 0xabcd)}
	v, out := e.fromNetdev(first.frame())
	expectVerdict(t, v, TC_ACT_OK)
	got := parse6Frame(t, "first fragment", out)
	expectTuple6(t, "first fragment", got, client6, 6000, ctrA6, 53)

	later := udp6(client6, 0, host6, 0)
	later.ext = []v6Ext{extFrag(8, false, 0xabcd)}
	frame := later.frame()
	// A later fragment carries data, not a UDP header: the 8 bytes
	// gopacket wrote are payload here.
	v, out = e.fromNetdev(frame)
	expectVerdict(t, v, TC_ACT_OK)
	got = parse6Frame(t, "later fragment", out)
	if got.dst != ctrA6 || got.src != client6 {
		t.Errorf("later fragment: %s -> %s, want %s -> %s", got.src, got.dst, client6, ctrA6)
	}
	if string(out[14+48:len(frame)]) != string(frame[14+48:]) {
		t.Errorf("later fragment: its data changed")
	}

	other := udp6(client6, 0, host6, 0)
	other.ext = []v6Ext{extFrag(8, false, 0x1111)}
	v, out = e.fromNetdev(other.frame())
	expectVerdict(t, v, TC_ACT_OK)
	if got := parse6Frame(t, "unseen", out); got.dst != host6 {
		t.Errorf("later fragment of an unseen datagram went to %s", got.dst)
	}
	if n := e.event(EventFragTracked); n != 1 {
		t.Errorf("%d fragments tracked, want 1", n)
	}
}
