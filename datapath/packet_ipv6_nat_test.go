// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of IPv6 translations: published ports (DNAT and its
// reverse), tracked in ct6.

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
	return e.ct6In(e.objs.Ct6)
}

// ct6In reads an IPv6 conntrack table whole (ct6 or ct6_syn).
func (e *packetEnv) ct6In(m *ebpf.Map) map[bpfCt6Key]bpfCt6Entry {
	e.t.Helper()
	out, err := readMap[bpfCt6Key, bpfCt6Entry](m)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// expectTuple6 checks what parse6Frame read against a tuple.
func expectTuple6(t testing.TB, what string, got parsed6, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
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
		// Unassured until the client answers: in ct6_syn.
		if _, ok := e.ct6In(e.objs.Ct6Syn)[ct6Key(tcp, client6, 40000, dst, 8080)]; !ok {
			t.Fatalf("no ct6_syn entry for the SYN to %s", dst)
		}
		ans := tcp6(ctrA6, 80, client6, 40000)
		ans.ack = true
		v, out = e.toNetdev(ans.fromCtr(upMAC, routerMAC).frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, "SYN|ACK", parse6Frame(t, "SYN|ACK", out), dst, 8080, client6, 40000)
		// The flow is over before the next address takes its tuple.
		e.put(e.objs.Ct6Syn, ct6Key(tcp, client6, 40000, dst, 8080), bpfCt6Entry{})
		e.put(e.objs.Ct6Syn, ct6Key(tcp, ctrA6, 80, client6, 40000), bpfCt6Entry{})
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

// addAddrs6 puts addresses on the test namespace's loopback (up), so
// that host sockets can bind them.
func (e *packetEnv) addAddrs6(addrs ...netip.Addr) {
	e.t.Helper()
	e.inNetns("IPv6 addresses on loopback", func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range addrs {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestPacketIPv6Masquerade: container IPv6 egress leaves with the
// uplink's IPv6 address, its own source port (or ICMPv6 echo identifier)
// kept when free, and its answers come back to the container; checksums
// are right both ways. A TCP segment of no flow is never masqueraded, and
// a network without masquerade leaves with its own address, tracked.
func TestPacketIPv6Masquerade(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	out := func(p packet6) []byte { return p.fromCtr(upMAC, routerMAC).frame() }

	for _, c := range []struct {
		name   string
		req    packet6
		answer packet6
		rport  uint16
	}{
		{"tcp", tcp6(ctrA6, 40000, remote6, 443), func() packet6 { p := tcp6(remote6, 443, host6, 40000); p.ack = true; return p }(), 443},
		{"udp", udp6(ctrA6, 40001, remote6, 53), udp6(remote6, 53, host6, 40001), 53},
	} {
		v, o := e.toNetdev(out(c.req))
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, c.name+" out", parse6Frame(t, c.name, o), host6, c.req.sport, remote6, c.rport)
		v, o = e.fromNetdev(c.answer.frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, c.name+" answer", parse6Frame(t, c.name+" answer", o), remote6, c.rport, ctrA6, c.req.sport)
	}
	// ICMPv6 echo by identifier.
	v, o := e.toNetdev(out(echo6(ctrA6, remote6, 77, false)))
	expectVerdict(t, v, TC_ACT_OK)
	got := parse6Frame(t, "echo", o)
	expectTuple6(t, "echo", got, host6, 77, remote6, 0)
	v, o = e.fromNetdev(echo6(remote6, host6, 77, true).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "echo reply", parse6Frame(t, "echo reply", o), remote6, 77, ctrA6, 0)

	// A second container on the same source port and destination gets
	// another port: never a tuple another flow holds.
	v, o = e.toNetdev(out(udp6(ctrB6, 40001, remote6, 53)))
	expectVerdict(t, v, TC_ACT_OK)
	got = parse6Frame(t, "udp clash", o)
	if got.src != host6 || got.sport == 40001 || got.sport < DefaultNATPortMin || got.sport > DefaultNATPortMax {
		t.Errorf("clashing flow left as [%s]:%d, want host6 and another port of the range", got.src, got.sport)
	}
	if n := e.event(EventCTNewSNAT); n != 4 {
		t.Errorf("%d new masqueraded flows, want 4", n)
	}

	// A host flow whose reply tuple the TCP flow holds ([remote6]:443 ->
	// [host6]:40000) gets a port of its own; one on a free port is left
	// alone.
	v, o = e.toNetdev(out(tcp6(host6, 40000, remote6, 443)))
	expectVerdict(t, v, TC_ACT_OK)
	if got := parse6Frame(t, "host remap", o); got.sport == 40000 || got.src != host6 {
		t.Errorf("the host flow left as [%s]:%d, want host6 and another port", got.src, got.sport)
	}
	if n := e.event(EventNATHostRemap); n != 1 {
		t.Errorf("%d host flows remapped, want 1", n)
	}
	v, o = e.toNetdev(out(tcp6(host6, 40500, remote6, 443)))
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "free host flow", parse6Frame(t, "free host flow", o), host6, 40500, remote6, 443)

	// TCP without SYN and without a flow: dropped, never masqueraded.
	mid := tcp6(ctrA6, 40100, remote6, 443)
	mid.syn, mid.ack = false, true
	v, _ = e.toNetdev(out(mid))
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropCTMiss: 1})

	// br1 does not masquerade: C leaves as itself, and its answer gets
	// in (tracked), where a packet of no flow straight to C would not.
	v, o = e.toNetdev(out(tcp6(ctrC6, 42000, remote6, 443)))
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "unmasqueraded", parse6Frame(t, "unmasqueraded", o), ctrC6, 42000, remote6, 443)
	if _, ok := e.ct6()[ct6Key(tcp, remote6, 443, ctrC6, 42000)]; !ok {
		t.Errorf("the unmasqueraded flow's answer has no ct6 entry")
	}
	ans := tcp6(remote6, 443, ctrC6, 42000)
	ans.ack = true
	v, _ = e.fromNetdev(ans.frame())
	expectVerdict(t, v, TC_ACT_OK)
	v, _ = e.fromNetdev(tcp6(remote6, 443, ctrC6, 42001).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropCTMiss: 1, DropNotPublished: 1})

	// host_ipv6: the network's own host address instead of the uplink's.
	e.put(e.objs.Nets6, bpfNet6Key{Prefixlen: 64, Addr: be128(net6a.Addr())}, bpfNet6Info{Flags: netFMasq, NetId: 1, HostAddr: be128(host6b)})
	v, o = e.toNetdev(out(udp6(ctrA6, 40600, remote6, 53)))
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "host_ipv6", parse6Frame(t, "host_ipv6", o), host6b, 40600, remote6, 53)
	v, o = e.fromNetdev(udp6(remote6, 53, host6b, 40600).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "host_ipv6 answer", parse6Frame(t, "host_ipv6 answer", o), remote6, 53, ctrA6, 40600)
	if _, ok := e.ct6()[ct6Key(udp, remote6, 53, host6b, 40600)]; !ok {
		t.Errorf("no reply entry on host6b")
	}
}

// TestPacketIPv6MasqueradeCollisions: a masqueraded IPv6 flow never takes
// a port a host socket uses, a published IPv6 port's, or one another flow
// holds: with a range of one port, the flow whose own port is taken gets
// that one, and the next one finds none and is dropped. Each refusal's
// twin (the free port) is taken.
func TestPacketIPv6MasqueradeCollisions(t *testing.T) {
	const spare = 41000
	e := newPacketEnv(t, Options{NATPortMin: spare, NATPortMax: spare})
	e.installTopology6()
	e.addAddrs6(host6, remote6)
	udp := uint8(layers.IPProtocolUDP)
	out := func(p packet6) []byte { return p.fromCtr(upMAC, routerMAC).frame() }

	// Free: kept.
	v, o := e.toNetdev(out(udp6(ctrA6, 40000, remote6, 53)))
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "free port", parse6Frame(t, "free", o), host6, 40000, remote6, 53)

	// A host socket on [host6]:40001 connected to [remote6]:53: the
	// container's flow from 40001 gets the spare port.
	e.inNetns("host UDP socket", func() error {
		c, err := net.DialUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(host6, 40001)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(remote6, 53)))
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return err
	})
	v, o = e.toNetdev(out(udp6(ctrA6, 40001, remote6, 53)))
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "host socket's port", parse6Frame(t, "host socket", o), host6, spare, remote6, 53)
	if e.event(EventNATHostSocket) == 0 {
		t.Errorf("the host socket's port was not refused as such")
	}

	// A published IPv6 port (on ::) is never a masquerade port: with the
	// spare port held too, the flow is dropped.
	e.publish6(udp, netip.Addr{}, 40002, ctrB6, 53, 1)
	v, _ = e.toNetdev(out(udp6(ctrA6, 40002, remote6, 53)))
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropNATExhausted: 1})
	// Its twin: port 40003, free, is kept.
	v, o = e.toNetdev(out(udp6(ctrA6, 40003, remote6, 53)))
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "free port 40003", parse6Frame(t, "free", o), host6, 40003, remote6, 53)

	// A host flow whose reply tuple a translation holds ([remote6]:53 ->
	// [host6]:40000, the first flow's) gets a port of its own.
	// the only spare port is held, so it cannot be remapped: dropped,
	// never sent on the held tuple.
	v, _ = e.toNetdev(out(udp6(host6, 40000, remote6, 53)))
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropNATExhausted: 2})
}

// TestPacketIPv6Spoofed: a container's IPv6 egress from its own address
// passes its veth; from another container's address, or from an address
// no endpoint has, it is dropped as spoofed.
func TestPacketIPv6Spoofed(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	e.installTopology()
	e.put(e.objs.Veths, e.idx["vetha"], bpfEndpoint{Ifindex: e.idx["vetha"], BridgeIfindex: e.idx["br0"], NetId: 1, Addr: be32(ctrA), CtrId: 1})
	e.put(e.objs.Endpoints6, bpfIn6Key{A: be128(ctrA6)}, bpfEndpoint6{Ep: bpfEndpoint{Ifindex: e.idx["vetha"], NetId: 1, CtrId: 1}})
	e.put(e.objs.Endpoints6, bpfIn6Key{A: be128(ctrB6)}, bpfEndpoint6{Ep: bpfEndpoint{Ifindex: e.idx["vethb"], NetId: 1, CtrId: 2}})
	v, _ := e.fromContainer("vetha", tcp6(ctrA6, 40000, remote6, 443).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	for _, src := range []netip.Addr{ctrB6, netip.MustParseAddr("fd00:17::99"), client6} {
		v, _ = e.fromContainer("vetha", tcp6(src, 40000, remote6, 443).fromCtr(macA, gwMAC).frame())
		expectVerdict(t, v, TC_ACT_SHOT)
	}
	e.expectDrops(map[DropReason]uint64{DropSpoofed: 3})
	// Neighbour Discovery from the veth is never judged.
	v, _ = e.fromContainer("vetha", nd6(ctrB6, gw6, 136).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
}

// setVethFlags sets the network flags of veth's endpoint (as Apply
// copies its network's).
func (e *packetEnv) setVethFlags(veth string, f bpfNetFlags) {
	e.t.Helper()
	var ep bpfEndpoint
	if err := e.objs.Veths.Lookup(e.idx[veth], &ep); err != nil {
		e.t.Fatal(err)
	}
	ep.Flags = f
	e.put(e.objs.Veths, e.idx[veth], ep)
}

// TestPacketIPv6Hairpin: a container to a published IPv6 port of the host
// reaches the target container with its own address kept, the answer
// comes back from the published address at the client's veth; to its own
// published port it comes from the gateway, and the answer to the gateway
// goes back through from_container. Checksums are right all along.
func TestPacketIPv6Hairpin(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrB6, 80, 1)
	e.publish6(tcp, netip.Addr{}, 8081, ctrA6, 81, 2)

	v, o := e.fromContainer("vetha", tcp6(ctrA6, 40000, host6, 8080).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "hairpin", parse6Frame(t, "hairpin", o), ctrA6, 40000, ctrB6, 80)
	ans := tcp6(ctrB6, 80, ctrA6, 40000)
	ans.ack = true
	// B answers A on the bridge: from_container passes it (a tracked
	// answer), to_container on A's veth puts the published address back.
	v, o = e.fromContainer("vethb", ans.fromCtr(macB, macA).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "answer at B's veth", parse6Frame(t, "answer", o), ctrB6, 80, ctrA6, 40000)
	v, o = e.toContainer("vetha", o[:len(ans.frame())])
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "answer into A", parse6Frame(t, "answer into A", o), host6, 8080, ctrA6, 40000)

	// To itself: from the gateway.
	v, o = e.fromContainer("vetha", tcp6(ctrA6, 40001, host6, 8081).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	got := parse6Frame(t, "hairpin to itself", o)
	if got.src != gw6 || got.dst != ctrA6 || got.dport != 81 {
		t.Fatalf("hairpin to itself: [%s]:%d -> [%s]:%d, want from %s to [%s]:81", got.src, got.sport, got.dst, got.dport, gw6, ctrA6)
	}
	self := tcp6(ctrA6, 81, gw6, got.sport)
	self.ack = true
	v, o = e.fromContainer("vetha", self.fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "answer to itself", parse6Frame(t, "answer to itself", o), host6, 8081, ctrA6, 40001)
	if n := e.event(EventCTNewHairpin); n != 2 {
		t.Errorf("%d hairpin flows, want 2", n)
	}
	e.expectDrops(nil)
}

// TestPacketIPv6Isolation: between the IPv6 addresses of two networks,
// dropped as isolation (the same container to its own network passes);
// with enable_icc=false, between containers of one network, dropped as
// icc (to the host it passes); from an internal network out, dropped as
// internal (inside it passes); a hairpin answer between networks is
// tracked and passes.
func TestPacketIPv6Isolation(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	send := func(dst netip.Addr) uint32 {
		v, _ := e.fromContainer("vetha", tcp6(ctrA6, 40000, dst, 80).fromCtr(macA, gwMAC).frame())
		return v
	}
	expectVerdict(t, send(ctrC6), TC_ACT_SHOT)
	expectVerdict(t, send(ctrB6), TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1})

	e.setVethFlags("vetha", netFMasq|netFNoICC)
	expectVerdict(t, send(ctrB6), TC_ACT_SHOT)
	expectVerdict(t, send(host6), TC_ACT_OK)
	expectVerdict(t, send(gw6), TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1, DropICC: 1})

	e.setVethFlags("vetha", netFInternal)
	expectVerdict(t, send(remote6), TC_ACT_SHOT)
	expectVerdict(t, send(ctrB6), TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1, DropICC: 1, DropInternal: 1})
	// An internal network's container may not reach another network's
	// published port either; its own network's it may.
	tcp := uint8(layers.IPProtocolTCP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrC6, 80, 1)
	e.publish6(tcp, netip.Addr{}, 8081, ctrB6, 80, 2)
	expectVerdict(t, func() uint32 {
		v, _ := e.fromContainer("vetha", tcp6(ctrA6, 40001, host6, 8080).fromCtr(macA, gwMAC).frame())
		return v
	}(), TC_ACT_SHOT)
	expectVerdict(t, func() uint32 {
		v, _ := e.fromContainer("vetha", tcp6(ctrA6, 40002, host6, 8081).fromCtr(macA, gwMAC).frame())
		return v
	}(), TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1, DropICC: 1, DropInternal: 2})

	// A hairpin from C (br1) to B's published port: B's answer to C
	// crosses networks, and passes as the answer of a tracked flow.
	v, _ := e.fromContainer("vethc", tcp6(ctrC6, 40003, host6, 8081).fromCtr(macC, gw2MAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	ans := tcp6(ctrB6, 80, ctrC6, 40003)
	ans.ack = true
	v, _ = e.fromContainer("vethb", ans.fromCtr(macB, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	e.expectDrops(map[DropReason]uint64{DropIsolation: 1, DropICC: 1, DropInternal: 2})
}

// icmp6Error is an ICMPv6 error from src to dst of type/code, rest the
// 32-bit field after the checksum (Packet Too Big's MTU), quoting quote.
func icmp6Error(src, dst netip.Addr, typ, code uint8, rest uint32, quote []byte) packet6 {
	p := base6(layers.IPProtocolICMPv6, src, 0, dst, 0)
	p.icmpType, p.icmpCode = typ, code
	p.icmpID, p.icmpSeq = uint16(rest>>16), uint16(rest)
	p.payload = quote
	return p
}

// checkQuote checks the tuple of the quote of an ICMPv6 error frame
// (whose own checksums parse6Frame checks), and the quoted L4 checksum
// when the quote is whole.
func checkQuote(t *testing.T, what string, frame []byte, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	t.Helper()
	outer := parse6Frame(t, what, frame)
	q := outer.l4[8:]
	var got parsed6
	got.src, _ = netip.AddrFromSlice(q[8:24])
	got.dst, _ = netip.AddrFromSlice(q[24:40])
	seg := q[40:]
	switch q[6] {
	case 6, 17:
		got.sport, got.dport = binary.BigEndian.Uint16(seg), binary.BigEndian.Uint16(seg[2:])
	case 58:
		got.sport = binary.BigEndian.Uint16(seg[4:])
	}
	expectTuple6(t, what+" quote", got, src, sport, dst, dport)
	if n := int(binary.BigEndian.Uint16(q[4:])); n == len(seg) {
		if s := l4Sum6(q[8:24], q[24:40], q[6], seg); s != 0xffff {
			t.Errorf("%s: bad quoted L4 checksum (sum %#04x)", what, s)
		}
	} else if q[6] == 6 {
		// Cut: the TCP checksum cannot be verified, but it must have
		// moved by what the addresses and ports did (checked by the
		// whole quotes of the other cases).
		t.Logf("%s: quote cut at %d of %d bytes", what, len(seg), n)
	}
}

// TestPacketIPv6ICMPErrors: an ICMPv6 error about a translated flow is
// translated with it: a Packet Too Big and a Time Exceeded about a
// masqueraded flow reach the container with the quote of its own packet,
// a container's Port Unreachable about a published port's datagram
// leaves with the published address; both checksums are right, the
// ICMPv6 one over the pseudo-header. An error about no flow is left
// alone.
func TestPacketIPv6ICMPErrors(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	udp := uint8(layers.IPProtocolUDP)
	out := func(p packet6) []byte { return p.fromCtr(upMAC, routerMAC).frame() }
	router6 := netip.MustParseAddr("2001:db8:1::fe")

	// A masqueraded TCP flow, and the quote of its packet as it left.
	req := tcp6(ctrA6, 40000, remote6, 443)
	req.payload = make([]byte, 1400)
	v, o := e.toNetdev(out(req))
	expectVerdict(t, v, TC_ACT_OK)
	sent := o[14 : 14+40+20+1400]
	ptb := icmp6Error(router6, host6, 2, 0, 1280, sent[:1232-8-40+40])
	v, o = e.fromNetdev(ptb.frame())
	expectVerdict(t, v, TC_ACT_OK)
	got := parse6Frame(t, "packet too big", o)
	if got.dst != ctrA6 || got.src != router6 {
		t.Errorf("packet too big: %s -> %s, want %s -> %s", got.src, got.dst, router6, ctrA6)
	}
	checkQuote(t, "packet too big", o[:len(ptb.frame())], ctrA6, 40000, remote6, 443)

	// Destination unreachable quoting a whole TCP SYN: its checksum,
	// past the 8 bytes every quote has, is translated too.
	v, o = e.toNetdev(out(tcp6(ctrA6, 40010, remote6, 443)))
	expectVerdict(t, v, TC_ACT_OK)
	syn := append([]byte(nil), o[14:14+40+20+len("bpfnet IPv6 packet test payload")]...)
	du := icmp6Error(router6, host6, 1, 1, 0, syn)
	v, o = e.fromNetdev(du.frame())
	expectVerdict(t, v, TC_ACT_OK)
	checkQuote(t, "destination unreachable", o[:len(du.frame())], ctrA6, 40010, remote6, 443)

	// Echo, time exceeded by a router, quoting 8 bytes of ICMPv6.
	v, o = e.toNetdev(out(echo6(ctrA6, remote6, 77, false)))
	expectVerdict(t, v, TC_ACT_OK)
	echoSent := append([]byte(nil), o[14:14+40+8+len("bpfnet IPv6 packet test payload")]...)
	te := icmp6Error(router6, host6, 3, 0, 0, echoSent)
	v, o = e.fromNetdev(te.frame())
	expectVerdict(t, v, TC_ACT_OK)
	checkQuote(t, "time exceeded", o[:len(te.frame())], ctrA6, 77, remote6, 0)

	// A published UDP port; the container answers a datagram with port
	// unreachable: it leaves from the published address, quoting it.
	e.publish6(udp, host6b, 8081, ctrB6, 81, 1)
	v, o = e.fromNetdev(udp6(client6, 5000, host6b, 8081).frame())
	expectVerdict(t, v, TC_ACT_OK)
	in := append([]byte(nil), o[14:14+40+8+len("bpfnet IPv6 packet test payload")]...)
	pu := icmp6Error(ctrB6, client6, 1, 4, 0, in)
	v, o = e.toNetdev(out(pu))
	expectVerdict(t, v, TC_ACT_OK)
	got = parse6Frame(t, "port unreachable", o)
	if got.src != host6b || got.dst != client6 {
		t.Errorf("port unreachable: %s -> %s, want %s -> %s", got.src, got.dst, host6b, client6)
	}
	checkQuote(t, "port unreachable", o[:len(pu.frame())], client6, 5000, host6b, 8081)

	// About no flow: untouched.
	stray := icmp6Error(router6, host6, 2, 0, 1280, udp6(host6, 9999, remote6, 53).datagram())
	frame := stray.frame()
	v, o = e.fromNetdev(frame)
	expectVerdict(t, v, TC_ACT_OK)
	if string(o[:len(frame)]) != string(frame) {
		t.Errorf("an error about no flow was changed")
	}
	e.expectDrops(nil)
}
