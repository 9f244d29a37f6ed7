// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of NAT64 (bpf/lib/nat64.h): a host IPv6 port published to
// an IPv4-only container.

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"
)

var (
	client6b = netip.MustParseAddr("2001:db8:99::8")
	nat64Net = DefaultNAT64Pool
)

func (e *packetEnv) nat64Fwd() map[bpfCt6Key]bpfNat64FwdEntry {
	e.t.Helper()
	out, err := readMap[bpfCt6Key, bpfNat64FwdEntry](e.objs.Nat64Fwd)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *packetEnv) nat64Rev() map[bpfCtKey]bpfNat64RevEntry {
	e.t.Helper()
	out, err := readMap[bpfCtKey, bpfNat64RevEntry](e.objs.Nat64Rev)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// nat64In sends p from the uplink and expects it in container A as IPv4:
// redirected into its namespace with its MACs, TTL one less, the IPv4
// header and L4 checksums right (checkFrame computes both from the bytes,
// the L4 one over the new pseudo-header), from a pool address with the
// client's port to dport. It returns the pool address.
func (e *packetEnv) nat64In(what string, p packet6, dport uint16) netip.Addr {
	e.t.Helper()
	v, out := e.fromNetdev(p.frame())
	expectVerdict(e.t, v, TC_ACT_REDIRECT)
	if binary.BigEndian.Uint16(out[12:]) != uint16(layers.EthernetTypeIPv4) {
		e.t.Fatalf("%s: ethertype %#04x, want IPv4", what, binary.BigEndian.Uint16(out[12:]))
	}
	checkFrame(e.t, out)
	d := decode(e.t, out)
	if !nat64Net.Contains(d.src()) || d.src() == nat64Net.Addr() {
		e.t.Fatalf("%s: source %s, want an address of the pool %s", what, d.src(), nat64Net)
	}
	expectTuple(e.t, d, d.src(), p.sport, ctrA, dport)
	expectMACs(e.t, d, gwMAC, macA)
	expectTTL(e.t, d, p.hlim-1)
	if int(d.ip.Length) != len(out)-14 || d.ip.Flags&layers.IPv4DontFragment == 0 {
		e.t.Errorf("%s: IPv4 length %d of %d bytes, flags %v", what, d.ip.Length, len(out)-14, d.ip.Flags)
	}
	return d.src()
}

// nat64Out sends container A's answer a from its veth and expects it out
// as IPv6 from hostAddr:hostPort to the client, the L4 checksum right
// over the IPv6 pseudo-header (parse6Frame computes it).
func (e *packetEnv) nat64Out(what string, a testPacket, hostAddr netip.Addr, hostPort uint16, client netip.Addr) parsed6 {
	e.t.Helper()
	v, out := e.fromContainer("vetha", a.fromCtr(macA, gwMAC).frame())
	expectVerdict(e.t, v, TC_ACT_OK)
	got := parse6Frame(e.t, what, out)
	expectTuple6(e.t, what, got, hostAddr, hostPort, client, a.dport)
	if got.hlim != a.ttl {
		e.t.Errorf("%s: hop limit %d, want %d (the stack spends the hop)", what, got.hlim, a.ttl)
	}
	if len(got.l4) != len(out)-14-40 {
		e.t.Errorf("%s: payload length %d of a %d-byte frame", what, len(got.l4), len(out))
	}
	return got
}

// TestPacketNAT64: TCP on [::]:8080 and UDP on host6b:8081 of IPv4-only
// container A, both directions translated with both checksums verified
// independently, two clients on two pool addresses, the flows recorded.
func TestPacketNAT64(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	e.publish6(udp, host6b, 8081, ctrA, 81, 2)

	pool1 := e.nat64In("SYN", tcp6(client6, 40000, host6, 8080), 80)
	syn := tcp6(client6b, 40000, host6, 8080)
	pool2 := e.nat64In("SYN of another client", syn, 80)
	if pool1 == pool2 {
		t.Errorf("clients %s and %s share pool address %s", client6, client6b, pool1)
	}
	// The next packet of a flow keeps its pool address.
	ack := tcp6(client6, 40000, host6, 8080)
	ack.syn, ack.ack = false, true
	if again := e.nat64In("ACK", ack, 80); again != pool1 {
		t.Errorf("the flow's ACK from %s, its SYN from %s", again, pool1)
	}

	synAck := tcpPacket(ctrA, 80, pool1, 40000)
	synAck.ack = true
	e.nat64Out("SYN|ACK", synAck, host6, 8080, client6)
	synAck.dst = pool2
	e.nat64Out("SYN|ACK to the other client", synAck, host6, 8080, client6b)

	pool3 := e.nat64In("UDP", udp6(client6, 5000, host6b, 8081), 81)
	if pool3 != pool1 {
		t.Errorf("client %s: UDP from %s, TCP from %s (one pool address a client while its tuples are free)", client6, pool3, pool1)
	}
	e.nat64Out("UDP answer", udpPacket(ctrA, 81, pool3, 5000), host6b, 8081, client6)

	fwd, rev := e.nat64Fwd(), e.nat64Rev()
	if len(fwd) != 3 || len(rev) != 3 {
		t.Errorf("%d forward and %d reverse NAT64 entries, want 3 each", len(fwd), len(rev))
	}
	f, ok := fwd[ct6Key(tcp, client6, 40000, host6, 8080)]
	if !ok || addrFrom(f.T4.Saddr) != pool1 || addrFrom(f.T4.Daddr) != ctrA || port16(f.T4.Dport) != 80 || f.Packets != 2 {
		t.Errorf("forward entry of the TCP flow: %+v, %v", f, ok)
	}
	r, ok := rev[ctKey(tcp, ctrA, 80, pool1, 40000)]
	if !ok || addr6From(r.T6.Saddr) != host6 || addr6From(r.T6.Daddr) != client6 || port16(r.T6.Sport) != 8080 || r.Packets != 1 {
		t.Errorf("reverse entry of the TCP flow: %+v, %v", r, ok)
	}
	// Conntrack lists both directions of each as nat64 flows.
	entries, err := (&EBPF{objs: e.objs}).Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	var orig, reply int
	for _, c := range entries {
		if c.Kind != KindNAT64 {
			continue
		}
		if c.Reply {
			reply++
			continue
		}
		orig++
		if c.Key.Src == netip.AddrPortFrom(client6, 40000) && c.Key.Proto == tcp &&
			(c.Key.Dst != netip.AddrPortFrom(host6, 8080) || c.Translated.Src != netip.AddrPortFrom(pool1, 40000) ||
				c.Translated.Dst != netip.AddrPortFrom(ctrA, 80) || c.Kind.String() != "nat64" || c.Expires <= 0) {
			t.Errorf("Conntrack's TCP NAT64 flow: %s %s as %s, expires %v", c.Kind, c.Key, c.Translated, c.Expires)
		}
	}
	if orig != 3 || reply != 3 {
		t.Errorf("Conntrack: %d NAT64 flows and %d answers, want 3 each", orig, reply)
	}
	if n := e.event(EventCTNewNAT64); n != 3 {
		t.Errorf("%d new NAT64 flows counted, want 3", n)
	}
	e.expectDrops(nil)
}

// TestPacketNAT64Refused: what NAT64 does not translate is dropped with
// DropNAT64 (or as malformed), never passed on half-translated, each
// beside its translated twin in the same setup: an unpublished port of
// the IPv4-only container, a short packet, extension headers, a first
// fragment, an answer without a UDP checksum or with IP options, a
// spent hop limit; anything to the pool that no flow claims goes on
// untranslated.
func TestPacketNAT64Refused(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	e.publish6(udp, netip.Addr{}, 8081, ctrA, 81, 2)

	// The positive twins: the published ports translate.
	pool := e.nat64In("published TCP", tcp6(client6, 40000, host6, 8080), 80)
	e.nat64In("published UDP", udp6(client6, 5000, host6, 8081), 81)

	// Unpublished: the host's (no container sees it), and from the
	// IPv4 side straight to the container, not published.
	in := tcp6(client6, 40001, host6, 9090).frame()
	v, out := e.fromNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, out)
	v, _ = e.fromNetdev(tcpPacket(clientIP, 40001, ctrA, 9090).frame())
	expectVerdict(t, v, TC_ACT_SHOT)

	// A short packet: the header claims more than the frame holds.
	short := tcp6(client6, 40002, host6, 8080).frame()
	short = short[:len(short)-10]
	v, _ = e.fromNetdev(short)
	expectVerdict(t, v, TC_ACT_SHOT)
	// A truncated TCP header.
	trunc := tcp6(client6, 40003, host6, 8080).frame()
	binary.BigEndian.PutUint16(trunc[14+4:], 12)
	v, _ = e.fromNetdev(trunc[:14+40+12])
	expectVerdict(t, v, TC_ACT_SHOT)

	// A destination options header, and a first fragment.
	withExt := tcp6(client6, 40004, host6, 8080)
	withExt.ext = []v6Ext{extOpts(60)}
	v, _ = e.fromNetdev(withExt.frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	first := udp6(client6, 5001, host6, 8081)
	first.ext = []v6Ext{extFrag(0, true, 7)}
	v, _ = e.fromNetdev(first.frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	// A hop limit of 1.
	spent := tcp6(client6, 40005, host6, 8080)
	spent.hlim = 1
	v, _ = e.fromNetdev(spent.frame())
	expectVerdict(t, v, TC_ACT_SHOT)

	// Answers: without a UDP checksum, with IP options; the twin with a
	// checksum goes out.
	noSum := udpPacket(ctrA, 81, pool, 5000)
	noSum.zeroUDPChecksum = true
	v, _ = e.fromContainer("vetha", noSum.fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	withOpts := tcpPacket(ctrA, 80, pool, 40000)
	withOpts.ack = true
	withOpts.options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	v, _ = e.fromContainer("vetha", withOpts.fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.nat64Out("UDP answer with a checksum", udpPacket(ctrA, 81, pool, 5000), host6, 8081, client6)

	// To the pool, no flow: untranslated, as before NAT64.
	in = udpPacket(ctrA, 81, pool, 5999).fromCtr(macA, gwMAC).frame()
	v, out = e.fromContainer("vetha", in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, out)

	e.expectDrops(map[DropReason]uint64{DropNotPublished: 1, DropMalformed: 2, DropNAT64: 5})
	if fwd := e.nat64Fwd(); len(fwd) != 2 {
		t.Errorf("%d NAT64 flows, want the 2 translated ones: %v", len(fwd), fwd)
	}
}

// TestNAT64PoolRoutes: in the packet tests' namespace, whose routes
// include one to 198.18.0.0/15 (and a default route, which never
// counts), the default pool is refused for a state with a NAT64 mapping;
// a pool apart from every route, and the default pool for a state
// without NAT64 mappings, are accepted.
func TestNAT64PoolRoutes(t *testing.T) {
	e := newPacketEnv(t, Options{})
	nat64 := PortMapping{Proto: TCP, HostIP: netip.IPv6Unspecified(), HostPort: 8080, ContainerIP: ctrA, ContainerPort: 80}
	s := State{Networks: []Network{{Name: "br", Bridge: "br0", Subnet: net1}}, Ports: []PortMapping{nat64}}
	var refused, apart, unused error
	e.ns.do(func() {
		refused = checkNAT64Overlap(DefaultNAT64Pool, s, nil)
		apart = checkNAT64Overlap(netip.MustParsePrefix("100.64.0.0/16"), s, nil)
		unused = checkNAT64Overlap(DefaultNAT64Pool, State{Networks: s.Networks}, nil)
	})
	if refused == nil || !strings.Contains(refused.Error(), "route to 198.18.0.0/15") {
		t.Errorf("the default pool beside a route to 198.18.0.0/15: %v, want refused", refused)
	}
	if apart != nil {
		t.Errorf("a pool apart from every route: %v", apart)
	}
	if unused != nil {
		t.Errorf("the pool of a state without NAT64: %v", unused)
	}
}

// TestPacketNAT64Hairpin: an IPv6 container's connection to a NAT64 port
// of the host is no hairpin (NAT64 is for clients from the outside): it
// goes to the host untranslated, and no flow is recorded. Its twin, an
// IPv6 published port of the same host address, is translated.
func TestPacketNAT64Hairpin(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	e.publish6(tcp, netip.Addr{}, 8090, ctrB6, 90, 2)

	in := tcp6(ctrA6, 41000, host6, 8080).fromCtr(macA, gwMAC).frame()
	v, out := e.fromContainer("vetha", in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, out)
	v, out = e.fromContainer("vetha", tcp6(ctrA6, 41001, host6, 8090).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "hairpin to an IPv6 port", parse6Frame(t, "hairpin", out), ctrA6, 41001, ctrB6, 90)
	if n := len(e.nat64Fwd()); n != 0 {
		t.Errorf("%d NAT64 flows from a container, want none", n)
	}
	e.expectDrops(nil)
}

// TestPacketNAT64SameTuple: one client, one source port, to the NAT64
// port on two host addresses: two flows whose IPv4 tuples would be the
// same on one pool address, so the second takes the next address, and
// each answer goes back from the host address its flow came to.
func TestPacketNAT64SameTuple(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	e.publish6(uint8(layers.IPProtocolTCP), netip.Addr{}, 8080, ctrA, 80, 1)
	p1 := e.nat64In("to host6", tcp6(client6, 40010, host6, 8080), 80)
	p2 := e.nat64In("to host6b", tcp6(client6, 40010, host6b, 8080), 80)
	if p1 == p2 {
		t.Fatalf("two live flows on one IPv4 tuple: %s:40010 -> %s:80", p1, ctrA)
	}
	for _, c := range []struct {
		pool, host netip.Addr
	}{{p1, host6}, {p2, host6b}} {
		a := tcpPacket(ctrA, 80, c.pool, 40010)
		a.ack = true
		e.nat64Out("answer from "+c.pool.String(), a, c.host, 8080, client6)
	}
	e.expectDrops(nil)
}

// TestPacketNAT64Allow: a NAT64 port's allowlist is judged on the IPv6
// client before any translation, as an IPv6 port's: a listed client is
// translated into the container, an unlisted one dropped as port_denied
// with no NAT64 flow made.
func TestPacketNAT64Allow(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.put(e.objs.Published6, bpfPort6Key{Port: be16(8080), Proto: tcp}, bpfPort6Target{Addr: be128(ctrA), Port: be16(80), Id: 1, AllowId: 7})
	e.allowListBoth(7, client6.String()+"/128", "10.0.0.0/8")

	e.nat64In("a listed client", tcp6(client6, 40000, host6, 8080), 80)
	v, _ := e.fromNetdev(tcp6(client6b, 40000, host6, 8080).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.dropsOnly(DropPortDenied, 1)
	if n := len(e.nat64Fwd()); n != 1 {
		t.Errorf("%d NAT64 flows, want the listed client's alone", n)
	}
}

// TestPacketNAT64Forgeries: what an attacker can try against a NAT64
// flow, each beside the same packet where it is allowed. An IPv4 packet
// from the uplink forging the flow's pool address and port to the same
// container port over IPv4 is dropped as spoofed (another pool source
// port, which no flow takes, is published as any); the flow's answer
// from another container's veth is dropped as spoofed (from its own
// container it is translated); a client's IPv6 UDP datagram without a
// checksum, invalid in IPv6, is not turned into an IPv4 one that needs
// none. A closed TCP flow opened again by a SYN is a new flow, and a
// client that only sends keeps the answers' half of its flow alive.
func TestPacketNAT64Forgeries(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	e.publish6(udp, netip.Addr{}, 8081, ctrA, 81, 2)
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 3)

	pool := e.nat64In("the client's SYN", tcp6(client6, 40000, host6, 8080), 80)
	v, _ := e.fromNetdev(tcpPacket(pool, 40000, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.dropsOnly(DropSpoofed, 1)
	v, out := e.fromNetdev(tcpPacket(pool, 40001, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), pool, 40001, ctrA, 80)

	answer := tcpPacket(ctrA, 80, pool, 40000)
	answer.ack = true
	v, _ = e.fromContainer("vethb", answer.fromCtr(macB, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.dropsOnly(DropSpoofed, 2)
	e.nat64Out("the answer from its own container", answer, host6, 8080, client6)

	noSum := udp6(client6, 5000, host6, 8081).frame()
	noSum[14+40+6], noSum[14+40+7] = 0, 0
	v, _ = e.fromNetdev(noSum)
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropSpoofed: 2, DropNAT64: 1})
	e.nat64In("a UDP datagram with its checksum", udp6(client6, 5000, host6, 8081), 81)

	// The client only sends: its answers' half, expired, is refreshed
	// by its next datagram, and the container's answer gets out.
	rk := ctKey(udp, ctrA, 81, pool, 5000)
	r, ok := e.nat64Rev()[rk]
	if !ok {
		t.Fatal("no reverse entry of the UDP flow")
	}
	r.Expires = 1
	e.put(e.objs.Nat64Rev, rk, r)
	e.nat64In("the client's next datagram", udp6(client6, 5000, host6, 8081), 81)
	if r := e.nat64Rev()[rk]; r.Expires <= 1 {
		t.Errorf("reverse entry expires at %d after the client's datagram, want refreshed", r.Expires)
	}
	e.nat64Out("the container's answer", udpPacket(ctrA, 81, pool, 5000), host6, 8081, client6)

	// FIN, then a SYN on the same tuple: a new flow, counted.
	fin := tcp6(client6, 40000, host6, 8080)
	fin.syn, fin.fin, fin.ack = false, true, true
	e.nat64In("FIN", fin, 80)
	before := e.event(EventCTNewNAT64)
	e.nat64In("SYN again", tcp6(client6, 40000, host6, 8080), 80)
	if n := e.event(EventCTNewNAT64); n != before+1 {
		t.Errorf("%d new NAT64 flows after the SYN that reopens a closed one, want %d", n, before+1)
	}
	f := e.nat64Fwd()[ct6Key(tcp, client6, 40000, host6, 8080)]
	if f.TcpSeen&0x05 != 0 { // FIN, RST
		t.Errorf("the reopened flow still has FIN or RST seen: %#x", f.TcpSeen)
	}
}
