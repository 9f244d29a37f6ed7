// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests: frames run through the TC programs with BPF_PROG_RUN, the
// output frames parsed back and their checksums verified independently,
// and the maps checked. Helpers are in packet_helpers_test.go.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

const (
	pTCP  = layers.IPProtocolTCP
	pUDP  = layers.IPProtocolUDP
	pICMP = layers.IPProtocolICMPv4
)

// flowPacket is the first packet of a flow of proto: a TCP SYN, a UDP
// datagram, or an echo request whose identifier is sport.
func flowPacket(proto layers.IPProtocol, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) testPacket {
	switch proto {
	case pTCP:
		return tcpPacket(src, sport, dst, dport)
	case pUDP:
		return udpPacket(src, sport, dst, dport)
	case pICMP:
		return echoPacket(src, dst, sport)
	}
	panic("protocol")
}

// replyPacket answers a flow: a SYN-ACK, a datagram, or an echo reply
// whose identifier is dport.
func replyPacket(proto layers.IPProtocol, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) testPacket {
	switch proto {
	case pTCP:
		p := tcpPacket(src, sport, dst, dport)
		p.ack = true
		return p
	case pUDP:
		return udpPacket(src, sport, dst, dport)
	case pICMP:
		return echoReply(src, dst, dport)
	}
	panic("protocol")
}

func l4Payload(d decoded) []byte {
	switch {
	case d.tcp != nil:
		return d.tcp.Payload
	case d.udp != nil:
		return d.udp.Payload
	case d.icmp != nil:
		return d.icmp.Payload
	}
	return nil
}

// TestPacketDNAT: published ports, from the outside to a container and
// back.
func TestPacketDNAT(t *testing.T) {
	cases := []struct {
		name     string
		proto    layers.IPProtocol
		bind     netip.Addr // invalid: every host address
		dst      netip.Addr
		fast     bool
		ttl      uint8
		zeroCsum bool
		pad      int // Ethernet padding after the datagram
	}{
		{name: "tcp exact address fast path", proto: pTCP, bind: hostIP, dst: hostIP, fast: true},
		{name: "tcp exact address slow path", proto: pTCP, bind: hostIP, dst: hostIP},
		{name: "tcp every address fast path", proto: pTCP, dst: hostIP, fast: true},
		{name: "tcp every address, second host address", proto: pTCP, dst: hostIP2, fast: true},
		{name: "tcp every address slow path", proto: pTCP, dst: hostIP},
		{name: "udp exact address fast path", proto: pUDP, bind: hostIP, dst: hostIP, fast: true},
		{name: "udp every address slow path", proto: pUDP, dst: hostIP},
		{name: "udp without checksum", proto: pUDP, dst: hostIP, fast: true, zeroCsum: true},
		{name: "tcp ttl 1 goes to the stack", proto: pTCP, dst: hostIP, fast: true, ttl: 1},
		{name: "tcp with ethernet padding", proto: pTCP, dst: hostIP, fast: true, pad: 24},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: c.fast})
			proto := uint8(c.proto)
			e.publish(proto, c.bind, 8080, ctrA, 80, 7)

			p := flowPacket(c.proto, clientIP, 40001, c.dst, 8080)
			p.zeroUDPChecksum = c.zeroCsum
			ttl := uint8(64)
			if c.ttl != 0 {
				p.ttl, ttl = c.ttl, c.ttl
			}
			in := p.frame()
			in = append(in, make([]byte, c.pad)...)
			v, out := e.fromNetdev(in)
			redirected := c.fast && ttl > 1
			if redirected {
				expectVerdict(t, v, TC_ACT_REDIRECT)
			} else {
				expectVerdict(t, v, TC_ACT_OK)
			}
			if len(out) != len(in) {
				t.Errorf("output of %d bytes, input %d", len(out), len(in))
			}
			d := decode(t, out)
			expectTuple(t, d, clientIP, 40001, ctrA, 80)
			checkFrame(t, out)
			if redirected {
				expectTTL(t, d, ttl-1)
				expectMACs(t, d, gwMAC, macA)
			} else {
				expectTTL(t, d, ttl)
				expectMACs(t, d, routerMAC, upMAC)
			}
			if !bytes.Equal(l4Payload(d), p.payload) {
				t.Errorf("payload changed: %q", l4Payload(d))
			}
			if c.zeroCsum && d.udp.Checksum != 0 {
				t.Errorf("UDP checksum %#04x, want 0 (none)", d.udp.Checksum)
			}
			if c.pad > 0 && !bytes.Equal(out[len(out)-c.pad:], make([]byte, c.pad)) {
				t.Errorf("padding changed: %x", out[len(out)-c.pad:])
			}

			origKey := ctKey(proto, clientIP, 40001, c.dst, 8080)
			replyKey := ctKey(proto, ctrA, 80, clientIP, 40001)
			// A new flow from the outside is unassured until its client
			// answers the container.
			wantOrig := ctWant{clientIP, ctrA, 40001, 80, atFromNetdev, atToNetdev | flagReply, KindDNAT, e.idx["vetha"]}
			wantReply := ctWant{c.dst, clientIP, 8080, 40001, atToNetdev | flagReply, atFromNetdev, KindDNAT, e.idx["vetha"]}
			unassured := func(w ctWant) ctWant { w.flags |= flagUnassured; w.peer |= flagUnassured; return w }
			orig := e.expectCT(origKey, unassured(wantOrig))
			e.expectCT(replyKey, unassured(wantReply))
			if orig.Packets != 1 || orig.Bytes != uint64(len(in)) {
				t.Errorf("entry counted %d packets, %d bytes; want 1, %d", orig.Packets, orig.Bytes, len(in))
			}
			if c.proto == pTCP && orig.TcpSeen != tcpSeenSYN {
				t.Errorf("tcp_seen %#x, want SYN", orig.TcpSeen)
			}
			e.expectExpiry(orig, 10*time.Second) // half-open
			if n := len(e.ct()); n != 2 {
				t.Errorf("%d conntrack entries, want 2", n)
			}
			if n := e.portConns(portKey(proto, c.bind, 8080)); n != 1 {
				t.Errorf("port_conns = %d, want 1", n)
			}
			if n := e.event(EventCTNewDNAT); n != 1 {
				t.Errorf("ct_new_dnat = %d, want 1", n)
			}
			rx := e.traffic("vetha")
			if redirected && (rx.RxPackets != 1 || rx.RxBytes != uint64(len(in))) {
				t.Errorf("vetha counters %+v, want 1 packet of %d bytes received", rx, len(in))
			}
			if !redirected && rx != (Traffic{}) {
				t.Errorf("vetha counters %+v, want none (to_container counts)", rx)
			}

			// The container answers; the uplink's egress gives the reply
			// the published address back.
			r := replyPacket(c.proto, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
			r.zeroUDPChecksum = c.zeroCsum
			v, out = e.toNetdev(r.frame())
			expectVerdict(t, v, TC_ACT_OK)
			d = decode(t, out)
			expectTuple(t, d, c.dst, 8080, clientIP, 40001)
			checkFrame(t, out)
			expectTTL(t, d, 64)
			if c.zeroCsum && d.udp.Checksum != 0 {
				t.Errorf("reply UDP checksum %#04x, want 0 (none)", d.udp.Checksum)
			}
			re := e.expectCT(replyKey, unassured(wantReply))
			if re.Packets != 1 {
				t.Errorf("reply entry counted %d packets, want 1", re.Packets)
			}
			if c.proto == pTCP && re.TcpSeen != tcpSeenSynAck {
				t.Errorf("reply tcp_seen %#x, want SYN|ACK", re.TcpSeen)
			}

			// The next packet of the client finds its entry.
			p.syn, p.ack = false, true
			v, out = e.fromNetdev(p.frame())
			if redirected {
				expectVerdict(t, v, TC_ACT_REDIRECT)
			} else {
				expectVerdict(t, v, TC_ACT_OK)
			}
			expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 80)
			checkFrame(t, out)
			// ... which shows it assured: both halves move to ct4.
			orig = e.expectCT(origKey, wantOrig)
			e.expectCT(replyKey, wantReply)
			if _, ok := e.ctLookupIn(e.objs.Ct4, origKey); !ok {
				t.Errorf("client's entry not in ct4 after its answer")
			}
			if n := len(e.ctTable(e.objs.Ct4Syn)); n != 0 {
				t.Errorf("%d entries left in ct4_syn, want 0", n)
			}
			if orig.Packets != 2 {
				t.Errorf("entry counted %d packets, want 2", orig.Packets)
			}
			if c.proto == pTCP {
				e.expectExpiry(orig, 6*time.Hour) // established
			} else {
				e.expectExpiry(orig, time.Minute)
			}
			if n := e.event(EventCTPromoted); n != 1 {
				t.Errorf("ct_promoted = %d, want 1", n)
			}
			if n := e.event(EventCTNewDNAT); n != 1 {
				t.Errorf("ct_new_dnat = %d after the second packet, want 1", n)
			}
			if n := e.portConns(portKey(proto, c.bind, 8080)); n != 1 {
				t.Errorf("port_conns = %d after the second packet, want 1", n)
			}
			e.expectDrops(nil)
		})
	}
}

// TestPacketDNATBindings: which mapping a packet finds.
func TestPacketDNATBindings(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	tcp, udp := uint8(pTCP), uint8(pUDP)
	e.publish(tcp, hostIP2, 8080, ctrB, 80, 1)      // 192.0.2.2:8080->B:80
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 2) // 8080->A:80
	for i := range uint16(4) {                      // 9000-9003->A:5000-5003/udp
		e.publish(udp, netip.Addr{}, 9000+i, ctrA, 5000+i, 3)
	}
	e.publish(udp, netip.Addr{}, 9100, ctrC, 53, 4) // another network's container

	flows := []struct {
		name       string
		p          testPacket
		dst        netip.Addr
		dport      uint16
		binding    bpfPortKey
		redirected bool
	}{
		{name: "exact binding wins", p: tcpPacket(clientIP, 40001, hostIP2, 8080), dst: ctrB, dport: 80, binding: portKey(tcp, hostIP2, 8080), redirected: true},
		{name: "other address takes the wildcard", p: tcpPacket(clientIP, 40001, hostIP, 8080), dst: ctrA, dport: 80, binding: portKey(tcp, netip.Addr{}, 8080), redirected: true},
		{name: "another client, same port", p: tcpPacket(client2IP, 40001, hostIP, 8080), dst: ctrA, dport: 80, binding: portKey(tcp, netip.Addr{}, 8080), redirected: true},
		{name: "range 9000", p: udpPacket(clientIP, 50000, hostIP, 9000), dst: ctrA, dport: 5000, binding: portKey(udp, netip.Addr{}, 9000), redirected: true},
		{name: "range 9001", p: udpPacket(clientIP, 50000, hostIP, 9001), dst: ctrA, dport: 5001, binding: portKey(udp, netip.Addr{}, 9001), redirected: true},
		{name: "range 9003", p: udpPacket(clientIP, 50000, hostIP, 9003), dst: ctrA, dport: 5003, binding: portKey(udp, netip.Addr{}, 9003), redirected: true},
		{name: "second container", p: udpPacket(clientIP, 50000, hostIP, 9100), dst: ctrC, dport: 53, binding: portKey(udp, netip.Addr{}, 9100), redirected: true},
		{name: "gateway address is a host address", p: udpPacket(clientIP, 50001, gwIP, 9100), dst: ctrC, dport: 53, binding: portKey(udp, netip.Addr{}, 9100), redirected: true},
	}
	for i, f := range flows {
		v, out := e.fromNetdev(f.p.frame())
		if v != TC_ACT_REDIRECT {
			t.Errorf("%s: verdict %s, want TC_ACT_REDIRECT", f.name, verdictName(v))
			continue
		}
		d := decode(t, out)
		expectTuple(t, d, f.p.src, f.p.sport, f.dst, f.dport)
		checkFrame(t, out)
		if n := e.portConns(f.binding); n == 0 {
			t.Errorf("%s: no connection counted on %+v", f.name, f.binding)
		}
		if n := len(e.ct()); n != 2*(i+1) {
			t.Errorf("%s: %d conntrack entries, want %d", f.name, n, 2*(i+1))
		}
	}
	if n := e.portConns(portKey(tcp, netip.Addr{}, 8080)); n != 2 {
		t.Errorf("wildcard 8080 counted %d connections, want 2", n)
	}
	if n := e.portConns(portKey(tcp, hostIP2, 8080)); n != 1 {
		t.Errorf("exact 8080 counted %d connections, want 1", n)
	}

	// Not ours: nothing changes, nothing is tracked.
	before := e.ct()
	for _, f := range []struct {
		name string
		p    testPacket
	}{
		{name: "address that is not the host's", p: tcpPacket(clientIP, 40002, notHostIP, 8080)},
		{name: "protocol not published", p: udpPacket(clientIP, 40002, hostIP, 8080)},
		{name: "port not published", p: tcpPacket(clientIP, 40002, hostIP, 8081)},
		{name: "echo request to the host", p: echoPacket(clientIP, hostIP, 9)},
	} {
		in := f.p.frame()
		v, out := e.fromNetdev(in)
		if v != TC_ACT_OK {
			t.Errorf("%s: verdict %s, want TC_ACT_OK", f.name, verdictName(v))
		}
		expectUnchanged(t, in, out)
	}
	if after := e.ct(); !maps.Equal(before, after) {
		t.Errorf("conntrack changed by packets that are not ours:\n%s", e.ctDump())
	}
	e.expectDrops(nil)
}

// TestPacketNotPublished: what Docker's rules would stop from the outside.
func TestPacketNotPublished(t *testing.T) {
	loop := netip.MustParseAddr("127.0.0.1")
	cases := []struct {
		name   string
		p      testPacket
		want   uint32
		reason DropReason
	}{
		{name: "loopback binding", p: tcpPacket(clientIP, 40001, loop, 8080), want: TC_ACT_SHOT, reason: DropNotPublished},
		{name: "loopback, unbound port", p: udpPacket(clientIP, 40001, netip.MustParseAddr("127.0.0.53"), 53), want: TC_ACT_SHOT, reason: DropNotPublished},
		{name: "tcp straight to a container", p: tcpPacket(clientIP, 40001, ctrA, 80), want: TC_ACT_SHOT, reason: DropNotPublished},
		{name: "udp straight to a container", p: udpPacket(clientIP, 40001, ctrA, 80), want: TC_ACT_SHOT, reason: DropNotPublished},
		{name: "echo straight to a container", p: echoPacket(clientIP, ctrC, 1), want: TC_ACT_SHOT, reason: DropNotPublished},
		{name: "address in a container network without a container", p: tcpPacket(clientIP, 40001, netip.MustParseAddr("172.17.9.9"), 80), want: TC_ACT_SHOT, reason: DropNotPublished},
		{name: "host port not published", p: tcpPacket(clientIP, 40001, hostIP, 9999), want: TC_ACT_OK, reason: 0},
		// The bridges' gateways are host addresses inside container
		// subnets: the host's, as Docker's rules leave them.
		{name: "gateway address, unpublished port", p: tcpPacket(clientIP, 40001, gwIP, 8081), want: TC_ACT_OK, reason: 0},
		{name: "other network's gateway, udp", p: udpPacket(clientIP, 40001, gw2IP, 53), want: TC_ACT_OK, reason: 0},
		{name: "published container port on the host address", p: tcpPacket(clientIP, 40001, hostIP, 80), want: TC_ACT_OK, reason: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.publish(uint8(pTCP), loop, 8080, ctrA, 80, 1)
			// Even were loopback listed as a host address, it stays closed.
			e.put(e.objs.HostAddrs, be32(loop), uint32(1))
			in := c.p.frame()
			v, out := e.fromNetdev(in)
			expectVerdict(t, v, c.want)
			if c.want == TC_ACT_SHOT {
				e.expectDrops(map[DropReason]uint64{c.reason: 1})
			} else {
				expectUnchanged(t, in, out)
				e.expectDrops(nil)
			}
			if n := len(e.ct()); n != 0 {
				t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
			}
			if n := e.events(); n[EventCTNewDNAT] != 0 {
				t.Errorf("ct_new_dnat = %d", n[EventCTNewDNAT])
			}
		})
	}
}

// TestPacketMasquerade: containers to the outside through the uplink, and
// the replies.
func TestPacketMasquerade(t *testing.T) {
	cases := []struct {
		name     string
		proto    layers.IPProtocol
		zeroCsum bool
	}{
		{name: "tcp", proto: pTCP, zeroCsum: false},
		{name: "udp", proto: pUDP, zeroCsum: false},
		{name: "udp without checksum", proto: pUDP, zeroCsum: true},
		{name: "icmp echo", proto: pICMP, zeroCsum: false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			proto := uint8(c.proto)
			// For ICMP the "ports" are the identifier (request source,
			// reply destination).
			sport, dport := uint16(40000), uint16(443)
			if c.proto == pICMP {
				sport, dport = 0x4d2, 0
			}
			type flow struct {
				ctr  netip.Addr
				veth string
				mac  net.HardwareAddr
				nat  uint16
			}
			flows := []*flow{{ctr: ctrA, veth: "vetha", mac: macA}, {ctr: ctrB, veth: "vethb", mac: macB}}
			for i, f := range flows {
				p := flowPacket(c.proto, f.ctr, sport, remoteIP, dport).fromCtr(f.mac, gwMAC)
				p.zeroUDPChecksum = c.zeroCsum
				v, out := e.toNetdev(p.frame())
				expectVerdict(t, v, TC_ACT_OK)
				d := decode(t, out)
				checkFrame(t, out)
				gs, gd := d.ports()
				f.nat = gs
				if d.src() != hostIP || d.dst() != remoteIP || gd != dport {
					t.Errorf("flow %d: %s:%d -> %s:%d, want %s:* -> %s:%d", i, d.src(), gs, d.dst(), gd, hostIP, remoteIP, dport)
				}
				if i == 0 && gs != sport {
					t.Errorf("first flow: source port %d, want its own %d (free)", gs, sport)
				}
				if i == 1 && (gs == sport || gs < 32768) {
					t.Errorf("second flow: source port %d, want a new one in 32768-65535", gs)
				}
				if c.zeroCsum && d.udp.Checksum != 0 {
					t.Errorf("flow %d: UDP checksum %#04x, want 0 (none)", i, d.udp.Checksum)
				}
				if !bytes.Equal(l4Payload(d), p.payload) {
					t.Errorf("flow %d: payload changed", i)
				}
				okey := ctKey(proto, f.ctr, sport, remoteIP, dport)
				oe := e.expectCT(okey, ctWant{hostIP, remoteIP, f.nat, dport, atToNetdev, atFromNetdev | flagReply, KindSNAT, e.idx[f.veth]})
				if oe.Packets != 1 {
					t.Errorf("flow %d: entry counted %d packets, want 1", i, oe.Packets)
				}
				e.expectCT(ctKey(proto, remoteIP, dport, hostIP, f.nat), ctWant{remoteIP, f.ctr, dport, sport, atFromNetdev | flagReply, atToNetdev, KindSNAT, e.idx[f.veth]})
			}
			if flows[0].nat == flows[1].nat {
				t.Fatalf("both flows translated to port %d", flows[0].nat)
			}
			if n := len(e.ct()); n != 4 {
				t.Errorf("%d conntrack entries, want 4:\n%s", n, e.ctDump())
			}
			if n := e.event(EventCTNewSNAT); n != 2 {
				t.Errorf("ct_new_snat = %d, want 2", n)
			}

			// Replies, in the other order, to each container's own port.
			for i := len(flows) - 1; i >= 0; i-- {
				f := flows[i]
				r := replyPacket(c.proto, remoteIP, dport, hostIP, f.nat)
				r.zeroUDPChecksum = c.zeroCsum
				in := r.frame()
				v, out := e.fromNetdev(in)
				expectVerdict(t, v, TC_ACT_REDIRECT)
				d := decode(t, out)
				expectTuple(t, d, remoteIP, dport, f.ctr, sport)
				checkFrame(t, out)
				expectTTL(t, d, 63)
				expectMACs(t, d, gwMAC, f.mac)
				if c.zeroCsum && d.udp.Checksum != 0 {
					t.Errorf("reply %d: UDP checksum %#04x, want 0 (none)", i, d.udp.Checksum)
				}
				if c.proto == pICMP && d.icmp.TypeCode.Type() != layers.ICMPv4TypeEchoReply {
					t.Errorf("reply %d: ICMP type %v", i, d.icmp.TypeCode)
				}
				if tr := e.traffic(f.veth); tr.RxPackets != 1 || tr.RxBytes != uint64(len(in)) {
					t.Errorf("reply %d: %s counters %+v, want 1 packet of %d bytes received", i, f.veth, tr, len(in))
				}
			}
			if n := e.event(EventRedirectPeer); n != 2 {
				t.Errorf("redirect_peer = %d, want 2", n)
			}
			e.expectDrops(nil)
		})
	}
}

// TestPacketMasqueradeNot: what to_netdev leaves alone. (A network
// without masquerade leaves untranslated but tracked: TestPacketNoMasquerade.)
func TestPacketMasqueradeNot(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	timestamp := echoPacket(ctrA, remoteIP, 5)
	timestamp.icmpType = 13
	cases := []struct {
		name string
		dev  string
		p    testPacket
	}{
		{name: "interface that is not an uplink", dev: "up1", p: tcpPacket(ctrA, 40000, remoteIP, 443)},
		{name: "the host's own traffic", dev: "up0", p: udpPacket(hostIP, 40000, remoteIP, 53)},
		{name: "echo reply from a container", dev: "up0", p: echoReply(ctrA, remoteIP, 5)},
		{name: "icmp timestamp from a container", dev: "up0", p: timestamp},
		{name: "other protocol from a container", dev: "up0", p: func() testPacket {
			p := basePacket(layers.IPProtocolGRE, ctrA, 0, remoteIP, 0)
			return p
		}()},
	}
	for _, c := range cases {
		in := c.p.frame()
		v, out := e.run(e.objs.ToNetdev, c.dev, in)
		if v != TC_ACT_OK {
			t.Errorf("%s: verdict %s, want TC_ACT_OK", c.name, verdictName(v))
		}
		if !bytes.Equal(in, out) {
			t.Errorf("%s: frame changed", c.name)
		}
	}
	if n := len(e.ct()); n != 0 {
		t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
	}
	e.expectDrops(nil)
}

// TestPacketNATPortExhaustion: a range of four ports serves four colliding
// flows; the fifth is dropped.
func TestPacketNATPortExhaustion(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true, NATPortMin: 40000, NATPortMax: 40003})
	got := map[uint16]netip.Addr{}
	// Sources in the masqueraded network (no endpoint needed), all from
	// port 1000 to the same destination.
	for i := range 6 {
		src := netip.AddrFrom4([4]byte{172, 17, 1, byte(10 + i)})
		v, out := e.toNetdev(udpPacket(src, 1000, remoteIP, 53).frame())
		if i == 5 {
			expectVerdict(t, v, TC_ACT_SHOT)
			break
		}
		expectVerdict(t, v, TC_ACT_OK)
		d := decode(t, out)
		checkFrame(t, out)
		sp, _ := d.ports()
		if i == 0 && sp != 1000 {
			t.Errorf("first flow: port %d, want its own 1000", sp)
		}
		if i > 0 && (sp < 40000 || sp > 40003) {
			t.Errorf("flow %d: port %d, want 40000-40003", i, sp)
		}
		if prev, ok := got[sp]; ok {
			t.Errorf("flow %d from %s got port %d, already %s's", i, src, sp, prev)
		}
		got[sp] = src
	}
	e.expectDrops(map[DropReason]uint64{DropNATExhausted: 1})
	if n := len(e.ct()); n != 10 {
		t.Errorf("%d conntrack entries, want 10 (none for the dropped flow):\n%s", n, e.ctDump())
	}
}

// TestPacketNATPortUniqueness: 2000 flows from two containers, with the
// same source ports, to one destination, all get tuples of their own, and
// every reply finds its way back.
func TestPacketNATPortUniqueness(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	const perCtr = 1000
	type orig struct {
		ctr   netip.Addr
		sport uint16
	}
	seen := map[netip.AddrPort]orig{}
	for i := range perCtr {
		for _, ctr := range []netip.Addr{ctrA, ctrB} {
			sport := uint16(20000 + i)
			v, out := e.toNetdev(udpPacket(ctr, sport, remoteIP, 53).frame())
			if v != TC_ACT_OK {
				t.Fatalf("%s:%d: verdict %s", ctr, sport, verdictName(v))
			}
			d := decode(t, out)
			sp, dp := d.ports()
			if d.src() != hostIP || d.dst() != remoteIP || dp != 53 {
				t.Fatalf("%s:%d: translated to %s:%d -> %s:%d", ctr, sport, d.src(), sp, d.dst(), dp)
			}
			// A's ports are free (A comes first); B's are taken by A.
			if ctr == ctrA && sp != sport {
				t.Errorf("%s:%d: translated port %d, want its own", ctr, sport, sp)
			}
			if ctr == ctrB && sp < 32768 {
				t.Errorf("%s:%d: translated port %d, want 32768-65535", ctr, sport, sp)
			}
			ap := netip.AddrPortFrom(d.src(), sp)
			if o, dup := seen[ap]; dup {
				t.Fatalf("%s:%d and %s:%d both translated to %s", o.ctr, o.sport, ctr, sport, ap)
			}
			seen[ap] = orig{ctr, sport}
		}
	}
	if len(seen) != 2*perCtr {
		t.Fatalf("%d distinct translated tuples, want %d", len(seen), 2*perCtr)
	}
	ct := e.ct()
	if len(ct) != 4*perCtr {
		t.Errorf("%d conntrack entries, want %d", len(ct), 4*perCtr)
	}
	// The table agrees with the packets, and so do the replies.
	for ap, o := range seen {
		k := ctKey(uint8(pUDP), remoteIP, 53, hostIP, ap.Port())
		re, ok := ct[k]
		if !ok {
			t.Fatalf("no reply entry for %s", ap)
		}
		if addrFrom(re.Ndaddr) != o.ctr || port16(re.Ndport) != o.sport {
			t.Fatalf("reply entry for %s leads to %s:%d, want %s:%d", ap, addrFrom(re.Ndaddr), port16(re.Ndport), o.ctr, o.sport)
		}
		v, out := e.fromNetdev(udpPacket(remoteIP, 53, hostIP, ap.Port()).frame())
		if v != TC_ACT_REDIRECT {
			t.Fatalf("reply to %s: verdict %s", ap, verdictName(v))
		}
		d := decode(t, out)
		if sp, dp := d.ports(); d.dst() != o.ctr || dp != o.sport || sp != 53 {
			t.Fatalf("reply to %s went to %s:%d, want %s:%d", ap, d.dst(), dp, o.ctr, o.sport)
		}
	}
	if n := e.event(EventCTNewSNAT); n != 2*perCtr {
		t.Errorf("ct_new_snat = %d, want %d", n, 2*perCtr)
	}
	e.expectDrops(nil)
}

// masqueradeFlow sends a first packet from a container through to_netdev
// and returns the translated frame.
func (e *packetEnv) masqueradeFlow(p testPacket) []byte {
	e.t.Helper()
	v, out := e.toNetdev(p.frame())
	expectVerdict(e.t, v, TC_ACT_OK)
	return out
}

// withTTL returns a copy of an IPv4 datagram with another TTL and its
// header checksum recomputed.
func withTTL(dg []byte, ttl uint8) []byte {
	b := append([]byte(nil), dg...)
	b[8] = ttl
	setIPChecksum(b)
	return b
}

// TestPacketICMPErrorFromOutside: errors about masqueraded flows, from a
// router on the way or from the destination, are translated for the
// container.
func TestPacketICMPErrorFromOutside(t *testing.T) {
	cases := []struct {
		name      string
		flow      testPacket // what container A sends
		from      netip.Addr // who sends the error
		typ, code uint8
		rest      uint32
		quoteLen  int // bytes of the translated datagram quoted; 0 all
	}{
		{name: "fragmentation needed from a router, tcp", flow: tcpPacket(ctrA, 40000, remoteIP, 443), from: routerIP, typ: layers.ICMPv4TypeDestinationUnreachable, code: layers.ICMPv4CodeFragmentationNeeded, rest: 1400, quoteLen: 40},
		{name: "port unreachable from the destination, udp", flow: udpPacket(ctrA, 40000, remoteIP, 53), from: remoteIP, typ: layers.ICMPv4TypeDestinationUnreachable, code: layers.ICMPv4CodePort, rest: 0, quoteLen: 0},
		{name: "port unreachable, udp without checksum", flow: func() testPacket {
			p := udpPacket(ctrA, 40000, remoteIP, 53)
			p.zeroUDPChecksum = true
			return p
		}(), from: remoteIP, typ: layers.ICMPv4TypeDestinationUnreachable, code: layers.ICMPv4CodePort, rest: 0, quoteLen: 0},
		{name: "time exceeded from a router, udp, 8 bytes quoted", flow: udpPacket(ctrA, 40000, remoteIP, 53), from: routerIP, typ: layers.ICMPv4TypeTimeExceeded, code: layers.ICMPv4CodeTTLExceeded, rest: 0, quoteLen: 28},
		{name: "time exceeded from a router, echo", flow: echoPacket(ctrA, remoteIP, 40000), from: routerIP, typ: layers.ICMPv4TypeTimeExceeded, code: layers.ICMPv4CodeTTLExceeded, rest: 0, quoteLen: 0},
		{name: "parameter problem, tcp", flow: tcpPacket(ctrA, 40000, remoteIP, 443), from: routerIP, typ: layers.ICMPv4TypeParameterProblem, code: layers.ICMPv4CodePointerIndicatesError, rest: 0x14000000, quoteLen: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			// B takes A's port first, so A's flow gets a new one and the
			// quoted port must be translated too.
			other := c.flow.fromCtr(macB, gwMAC)
			other.src = ctrB
			e.masqueradeFlow(other)
			sent := c.flow.fromCtr(macA, gwMAC)
			xl := e.masqueradeFlow(sent)
			xd := decode(t, xl)
			natPort, _ := xd.ports()
			if natPort == 40000 {
				t.Fatal("A's flow kept its port; the test wants it translated")
			}

			quote := append([]byte(nil), xl[14:]...)
			if c.quoteLen > 0 {
				quote = quote[:c.quoteLen]
			}
			in := icmpError(c.from, hostIP, c.typ, c.code, c.rest, quote).frame()
			v, out := e.fromNetdev(in)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			checkFrame(t, out) // outer IP and ICMP checksums
			if d.src() != c.from || d.dst() != ctrA {
				t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), c.from, ctrA)
			}
			expectTTL(t, d, 63)
			expectMACs(t, d, gwMAC, macA)
			if got := d.icmp.TypeCode; got != layers.CreateICMPv4TypeCode(c.typ, c.code) {
				t.Errorf("ICMP %v", got)
			}
			if got := uint32(d.icmp.Id)<<16 | uint32(d.icmp.Seq); got != c.rest {
				t.Errorf("ICMP rest of header %#x, want %#x", got, c.rest)
			}
			q := parseQuote(t, d)
			if q.src != ctrA || q.dst != remoteIP || q.sport != 40000 {
				t.Errorf("quoted %s:%d -> %s:%d, want %s:40000 -> %s", q.src, q.sport, q.dst, q.dport, ctrA, remoteIP)
			}
			// The quote is what A sent, byte for byte, but for a quoted
			// TCP checksum: like the ports of a quote cut short, it is
			// left as the translated packet had it (no receiver checks it).
			want := sent.datagram()
			if len(q.raw) != len(quote) {
				t.Fatalf("quote of %d bytes, sent %d", len(q.raw), len(quote))
			}
			want = want[:len(q.raw)]
			isTCP := c.flow.proto == pTCP
			if isTCP && len(want) >= 20+18 {
				copy(want[20+16:20+18], quote[20+16:20+18])
			}
			if !bytes.Equal(q.raw, want) {
				t.Errorf("quote is not the datagram A sent:\n got  %x\n want %x", q.raw, want)
			}
			// And its checksums hold by themselves.
			if c.quoteLen == 0 && !isTCP {
				checkDatagram(t, "quoted datagram", q.raw)
			} else if s := fold(onesSum(q.raw[:20], 0)); s != 0xffff {
				t.Errorf("quoted IP header checksum is wrong")
			}
			if n := len(e.ct()); n != 4 {
				t.Errorf("%d conntrack entries, want 4", n)
			}
			e.expectDrops(nil)
		})
	}
}

// TestPacketICMPErrorFromContainer: a container's error about a published
// flow leaves with the published address, in the header and the quote.
func TestPacketICMPErrorFromContainer(t *testing.T) {
	for _, quoteAll := range []bool{true, false} {
		t.Run(fmt.Sprintf("whole datagram quoted %v", quoteAll), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.publish(uint8(pUDP), netip.Addr{}, 5353, ctrA, 53, 1)
			sent := udpPacket(clientIP, 40001, hostIP, 5353)
			v, got := e.fromNetdev(sent.frame())
			expectVerdict(t, v, TC_ACT_REDIRECT)

			// A's stack answers what it got with port unreachable.
			quote := append([]byte(nil), got[14:]...)
			if !quoteAll {
				quote = quote[:28]
			}
			in := icmpError(ctrA, clientIP, 3, 3, 0, quote).fromCtr(macA, gwMAC).frame()
			v, out := e.toNetdev(in)
			expectVerdict(t, v, TC_ACT_OK)
			d := decode(t, out)
			checkFrame(t, out)
			if d.src() != hostIP || d.dst() != clientIP {
				t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), hostIP, clientIP)
			}
			q := parseQuote(t, d)
			if q.src != clientIP || q.sport != 40001 || q.dst != hostIP || q.dport != 5353 {
				t.Errorf("quoted %s:%d -> %s:%d, want %s:40001 -> %s:5353", q.src, q.sport, q.dst, q.dport, clientIP, hostIP)
			}
			// The client finds the datagram it sent (with the TTL the
			// container saw).
			want := withTTL(sent.datagram(), 63)
			if !bytes.Equal(q.raw, want[:len(q.raw)]) {
				t.Errorf("quote is not the client's datagram:\n got  %x\n want %x", q.raw, want[:len(q.raw)])
			}
			if quoteAll {
				checkDatagram(t, "quoted datagram", q.raw)
			}
			e.expectDrops(nil)
		})
	}
}

// expectQuote checks that an ICMP error quotes want, byte for byte but for
// a quoted TCP checksum, which is left as it was (no receiver checks it),
// and that the quote's own checksums hold when it is whole.
func expectQuote(t testing.TB, d decoded, want []byte) {
	t.Helper()
	q := parseQuote(t, d)
	if len(q.raw) > len(want) {
		t.Fatalf("quote of %d bytes, more than the %d-byte datagram", len(q.raw), len(want))
	}
	want = append([]byte(nil), want[:len(q.raw)]...)
	tcp := q.proto == uint8(pTCP)
	if tcp && len(want) >= 20+18 {
		copy(want[20+16:20+18], q.raw[20+16:20+18])
	}
	if !bytes.Equal(q.raw, want) {
		t.Errorf("quote differs:\n got  %x\n want %x", q.raw, want)
	}
	if s := fold(onesSum(q.raw[:20], 0)); s != 0xffff {
		t.Errorf("quoted IP header checksum is wrong")
	}
	if !tcp && len(q.raw) == int(binary.BigEndian.Uint16(q.raw[2:])) {
		checkDatagram(t, "quoted datagram", q.raw)
	}
}

// TestPacketICMPErrorPublished: errors about a published container's
// answers, from a router or from the client, reach the container.
func TestPacketICMPErrorPublished(t *testing.T) {
	cases := []struct {
		name      string
		proto     layers.IPProtocol
		from      netip.Addr
		typ, code uint8
		rest      uint32
	}{
		{name: "fragmentation needed from a router, tcp", proto: pTCP, from: routerIP, typ: layers.ICMPv4TypeDestinationUnreachable, code: layers.ICMPv4CodeFragmentationNeeded, rest: 1280},
		{name: "port unreachable from the client, udp", proto: pUDP, from: clientIP, typ: layers.ICMPv4TypeDestinationUnreachable, code: layers.ICMPv4CodePort, rest: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.publish(uint8(c.proto), netip.Addr{}, 8080, ctrA, 80, 1)
			e.fromNetdev(flowPacket(c.proto, clientIP, 40001, hostIP, 8080).frame())
			sent := replyPacket(c.proto, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
			_, xl := e.toNetdev(sent.frame())
			in := icmpError(c.from, hostIP, c.typ, c.code, c.rest, xl[14:]).frame()
			v, out := e.fromNetdev(in)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			checkFrame(t, out)
			if d.src() != c.from || d.dst() != ctrA {
				t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), c.from, ctrA)
			}
			expectMACs(t, d, gwMAC, macA)
			expectQuote(t, d, sent.datagram())
		})
	}
}

// TestPacketICMPErrorToMasqueraded: a container's error about what came
// back on its masqueraded flow leaves from the uplink address, quoting
// what the remote end sent.
func TestPacketICMPErrorToMasqueraded(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	e.masqueradeFlow(udpPacket(ctrB, 40000, remoteIP, 53))
	xl := e.masqueradeFlow(udpPacket(ctrA, 40000, remoteIP, 53))
	nat, _ := decode(t, xl).ports()
	answer := udpPacket(remoteIP, 53, hostIP, nat)
	_, got := e.fromNetdev(answer.frame())
	in := icmpError(ctrA, remoteIP, 3, 3, 0, got[14:]).fromCtr(macA, gwMAC).frame()
	v, out := e.toNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	d := decode(t, out)
	checkFrame(t, out)
	if d.src() != hostIP || d.dst() != remoteIP {
		t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), hostIP, remoteIP)
	}
	expectQuote(t, d, withTTL(answer.datagram(), 63))
}

// TestPacketICMPErrorHairpin: errors about hairpinned flows, from either
// end, reach the other end with the addresses it knows.
func TestPacketICMPErrorHairpin(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("target's error, fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			e.publish(uint8(pUDP), netip.Addr{}, 5353, ctrB, 53, 1)
			sent := udpPacket(ctrA, 40001, hostIP, 5353).fromCtr(macA, gwMAC)
			_, got := e.fromContainer("vetha", sent.frame())
			in := icmpError(ctrB, ctrA, 3, 3, 0, got[14:]).fromCtr(macB, macA).frame()
			v, out := e.fromContainer("vethb", in)
			if fast {
				expectVerdict(t, v, TC_ACT_REDIRECT)
			} else {
				expectVerdict(t, v, TC_ACT_OK)
				expectUnchanged(t, in, out)
				v, out = e.toContainer("vetha", out)
				expectVerdict(t, v, TC_ACT_OK)
			}
			d := decode(t, out)
			checkFrame(t, out)
			if d.src() != hostIP || d.dst() != ctrA {
				t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), hostIP, ctrA)
			}
			expectQuote(t, d, withTTL(sent.datagram(), got[14+8]))
		})

		t.Run(fmt.Sprintf("source's error about the answer, fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			e.publish(uint8(pUDP), netip.Addr{}, 5353, ctrB, 53, 1)
			e.fromContainer("vetha", udpPacket(ctrA, 40001, hostIP, 5353).fromCtr(macA, gwMAC).frame())
			answer := udpPacket(ctrB, 53, ctrA, 40001).fromCtr(macB, macA)
			_, got := e.fromContainer("vethb", answer.frame())
			if !fast {
				_, got = e.toContainer("vetha", got)
			}
			expectTuple(t, decode(t, got), hostIP, 5353, ctrA, 40001)
			// A's port is closed: A tells the address it knows, the host.
			in := icmpError(ctrA, hostIP, 3, 3, 0, got[14:]).fromCtr(macA, gwMAC).frame()
			v, out := e.fromContainer("vetha", in)
			if fast {
				expectVerdict(t, v, TC_ACT_REDIRECT)
			} else {
				expectVerdict(t, v, TC_ACT_OK)
			}
			d := decode(t, out)
			checkFrame(t, out)
			if d.src() != ctrA || d.dst() != ctrB {
				t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), ctrA, ctrB)
			}
			expectQuote(t, d, answer.datagram())
		})

		t.Run(fmt.Sprintf("self, fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			e.publish(uint8(pUDP), netip.Addr{}, 5353, ctrA, 53, 1)
			sent := udpPacket(ctrA, 40001, hostIP, 5353).fromCtr(macA, gwMAC)
			_, got := e.fromContainer("vetha", sent.frame())
			expectTuple(t, decode(t, got), gwIP, 40001, ctrA, 53)
			// A's port 53 is closed: A answers the gateway with an error,
			// which must come back to A as from the published address.
			in := icmpError(ctrA, gwIP, 3, 3, 0, got[14:]).fromCtr(macA, gwMAC).frame()
			v, out := e.fromContainer("vetha", in)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			checkFrame(t, out)
			if d.src() != hostIP || d.dst() != ctrA {
				t.Errorf("outer %s -> %s, want %s -> %s", d.src(), d.dst(), hostIP, ctrA)
			}
			expectMACs(t, d, gwMAC, macA)
			expectQuote(t, d, withTTL(sent.datagram(), got[14+8]))
		})
	}
}

// TestPacketHairpinFragments: a fragmented answer of a hairpinned flow is
// translated whole.
func TestPacketHairpinFragments(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			e.publish(uint8(pUDP), netip.Addr{}, 5353, ctrB, 53, 1)
			e.fromContainer("vetha", udpPacket(ctrA, 40001, hostIP, 5353).fromCtr(macA, gwMAC).frame())
			answer := udpPacket(ctrB, 53, ctrA, 40001)
			answer.payload = make([]byte, 1000)
			answer.df, answer.ipID = false, 0x6161
			var seg []byte
			var first []byte
			for i, f := range fragment(answer.datagram(), 496) {
				in := ethFrame(macB, macA, layers.EthernetTypeIPv4, f)
				v, out := e.fromContainer("vethb", in)
				if fast {
					expectVerdict(t, v, TC_ACT_REDIRECT)
				} else {
					expectVerdict(t, v, TC_ACT_OK)
					v, out = e.toContainer("vetha", out)
					expectVerdict(t, v, TC_ACT_OK)
				}
				d := decode(t, out)
				if d.src() != hostIP || d.dst() != ctrA {
					t.Errorf("fragment %d: %s -> %s, want %s -> %s", i, d.src(), d.dst(), hostIP, ctrA)
				}
				checkDatagram(t, fmt.Sprintf("fragment %d", i), out[14:])
				if i == 0 {
					first = out[14:]
				}
				seg = append(seg, out[14+20:]...)
			}
			if sp := binary.BigEndian.Uint16(seg[0:]); sp != 5353 {
				t.Errorf("answer from port %d, want 5353", sp)
			}
			if s := l4Sum(first, seg); s != 0xffff {
				t.Errorf("reassembled UDP checksum is wrong")
			}
		})
	}
}

// TestPacketICMPErrorUnknown: errors that quote no tracked flow.
func TestPacketICMPErrorUnknown(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	quote := udpPacket(hostIP, 33434, remoteIP, 53).datagram()
	in := icmpError(routerIP, hostIP, 11, 0, 0, quote).frame()
	v, out := e.fromNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, out)

	// To a container address, unknown: stopped like anything else from
	// the outside.
	quote = udpPacket(ctrA, 33434, remoteIP, 53).datagram()
	v, _ = e.fromNetdev(icmpError(routerIP, ctrA, 11, 0, 0, quote).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropNotPublished: 1})

	// Leaving, unknown: untouched.
	in = icmpError(ctrA, clientIP, 3, 3, 0, udpPacket(clientIP, 1, ctrA, 2).datagram()).frame()
	v, out = e.toNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, out)
	if n := len(e.ct()); n != 0 {
		t.Errorf("%d conntrack entries, want none", n)
	}
}

// TestPacketHairpin: a container to a port the host publishes for another
// container, and the answer.
func TestPacketHairpin(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			tcp := uint8(pTCP)
			e.publish(tcp, netip.Addr{}, 8080, ctrB, 80, 1)
			in := tcpPacket(ctrA, 40001, hostIP, 8080).fromCtr(macA, gwMAC).frame()
			v, out := e.fromContainer("vetha", in)
			d := decode(t, out)
			expectTuple(t, d, ctrA, 40001, ctrB, 80)
			checkFrame(t, out)
			if fast {
				expectVerdict(t, v, TC_ACT_REDIRECT)
				expectTTL(t, d, 63)
				expectMACs(t, d, gwMAC, macB)
				if tr := e.traffic("vethb"); tr.RxPackets != 1 || tr.RxBytes != uint64(len(in)) {
					t.Errorf("vethb counters %+v, want 1 packet received", tr)
				}
			} else {
				// Through the stack, which routes it to B.
				expectVerdict(t, v, TC_ACT_OK)
				expectTTL(t, d, 64)
				expectMACs(t, d, macA, gwMAC)
			}
			e.expectCT(ctKey(tcp, ctrA, 40001, hostIP, 8080), ctWant{ctrA, ctrB, 40001, 80, atFromContainer, atToContainer | flagReply, KindHairpin, e.idx["vetha"]})
			replyKey := ctKey(tcp, ctrB, 80, ctrA, 40001)
			e.expectCT(replyKey, ctWant{hostIP, ctrA, 8080, 40001, atToContainer | flagReply, atFromContainer, KindHairpin, e.idx["vetha"]})
			if n := e.event(EventCTNewHairpin); n != 1 {
				t.Errorf("ct_new_hairpin = %d, want 1", n)
			}
			if n := e.portConns(portKey(tcp, netip.Addr{}, 8080)); n != 1 {
				t.Errorf("port_conns = %d, want 1", n)
			}
			if tr := e.traffic("vetha"); tr.TxPackets != 1 || tr.TxBytes != uint64(len(in)) {
				t.Errorf("vetha counters %+v, want 1 packet sent", tr)
			}

			// B answers A straight across the bridge.
			reply := replyPacket(pTCP, ctrB, 80, ctrA, 40001).fromCtr(macB, macA).frame()
			v, out = e.fromContainer("vethb", reply)
			if fast {
				// Translated on the way and put into A.
				expectVerdict(t, v, TC_ACT_REDIRECT)
				d = decode(t, out)
				expectTuple(t, d, hostIP, 8080, ctrA, 40001)
				checkFrame(t, out)
				expectTTL(t, d, 64) // same bridge: not routed
				expectMACs(t, d, macB, macA)
			} else {
				// The bridge takes it to A's veth, whose egress translates.
				expectVerdict(t, v, TC_ACT_OK)
				expectUnchanged(t, reply, out)
				v, out = e.toContainer("vetha", out)
				expectVerdict(t, v, TC_ACT_OK)
				d = decode(t, out)
				expectTuple(t, d, hostIP, 8080, ctrA, 40001)
				checkFrame(t, out)
				if tr := e.traffic("vetha"); tr.RxPackets != 1 {
					t.Errorf("vetha counters %+v, want 1 packet received", tr)
				}
			}
			if re, _ := e.ctLookup(replyKey); re.Packets != 1 {
				t.Errorf("reply entry counted %d packets, want 1", re.Packets)
			}

			// A's next packet follows the entry.
			p := tcpPacket(ctrA, 40001, hostIP, 8080).fromCtr(macA, gwMAC)
			p.syn, p.ack = false, true
			_, out = e.fromContainer("vetha", p.frame())
			expectTuple(t, decode(t, out), ctrA, 40001, ctrB, 80)
			if n := e.event(EventCTNewHairpin); n != 1 {
				t.Errorf("ct_new_hairpin = %d after the second packet, want 1", n)
			}
			e.expectDrops(nil)
		})
	}
}

// TestPacketHairpinSelf: a container to its own published port comes back
// from the gateway, and its answer returns as from the published address.
func TestPacketHairpinSelf(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			tcp := uint8(pTCP)
			e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
			e.publish(tcp, hostIP2, 8081, ctrA, 80, 2)

			in := tcpPacket(ctrA, 40001, hostIP, 8080).fromCtr(macA, gwMAC).frame()
			v, out := e.fromContainer("vetha", in)
			// It must turn around on its own veth: redirected either way.
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			expectTuple(t, d, gwIP, 40001, ctrA, 80)
			checkFrame(t, out)
			expectTTL(t, d, 63)
			expectMACs(t, d, gwMAC, macA)
			origKey := ctKey(tcp, ctrA, 40001, hostIP, 8080)
			replyKey := ctKey(tcp, ctrA, 80, gwIP, 40001)
			oe := e.expectCT(origKey, ctWant{gwIP, ctrA, 40001, 80, atFromContainer, atFromContainer | flagReply, KindHairpin, e.idx["vetha"]})
			e.expectCT(replyKey, ctWant{hostIP, ctrA, 8080, 40001, atFromContainer | flagReply, atFromContainer, KindHairpin, e.idx["vetha"]})
			if oe.Packets != 1 {
				t.Errorf("entry counted %d packets, want 1", oe.Packets)
			}

			// A answers the gateway; the answer must come back to A as
			// from the published address, not reach the host's stack.
			reply := replyPacket(pTCP, ctrA, 80, gwIP, 40001).fromCtr(macA, gwMAC).frame()
			v, out = e.fromContainer("vetha", reply)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d = decode(t, out)
			expectTuple(t, d, hostIP, 8080, ctrA, 40001)
			checkFrame(t, out)
			expectTTL(t, d, 63)
			expectMACs(t, d, gwMAC, macA)
			if re, _ := e.ctLookup(replyKey); re.Packets != 1 {
				t.Errorf("reply entry counted %d packets, want 1", re.Packets)
			}

			// The same source port to the other binding of the same
			// target: the gateway-side port is taken, a new one is used.
			in = tcpPacket(ctrA, 40001, hostIP2, 8081).fromCtr(macA, gwMAC).frame()
			v, out = e.fromContainer("vetha", in)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d = decode(t, out)
			sp, _ := d.ports()
			if d.src() != gwIP || sp == 40001 || sp < 32768 {
				t.Errorf("second flow from %s:%d, want %s and a port in 32768-65535", d.src(), sp, gwIP)
			}
			checkFrame(t, out)
			reply = replyPacket(pTCP, ctrA, 80, gwIP, sp).fromCtr(macA, gwMAC).frame()
			v, out = e.fromContainer("vetha", reply)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			expectTuple(t, decode(t, out), hostIP2, 8081, ctrA, 40001)
			checkFrame(t, out)
			if n := e.event(EventCTNewHairpin); n != 2 {
				t.Errorf("ct_new_hairpin = %d, want 2", n)
			}
			e.expectDrops(nil)
		})
	}
}

// TestPacketTCPReopen: a SYN on the tuple of a closed connection starts a
// new one, with the mapping of now.
func TestPacketTCPReopen(t *testing.T) {
	for _, closing := range []string{"fin", "rst"} {
		t.Run(closing, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			tcp := uint8(pTCP)
			e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
			send := func(mod func(*testPacket)) decoded {
				t.Helper()
				p := tcpPacket(clientIP, 40001, hostIP, 8080)
				p.syn = false
				mod(&p)
				v, out := e.fromNetdev(p.frame())
				expectVerdict(t, v, TC_ACT_REDIRECT)
				checkFrame(t, out)
				return decode(t, out)
			}
			origKey := ctKey(tcp, clientIP, 40001, hostIP, 8080)
			send(func(p *testPacket) { p.syn = true })
			if v, _ := e.toNetdev(replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC).frame()); v != TC_ACT_OK {
				t.Fatalf("SYN|ACK: verdict %s, want TC_ACT_OK", verdictName(v))
			}
			send(func(p *testPacket) { p.ack = true })
			if _, ok := e.ctLookupIn(e.objs.Ct4, origKey); !ok {
				t.Fatalf("established connection not in ct4")
			}
			// A retransmitted SYN of a live connection is not a new one.
			d := send(func(p *testPacket) { p.syn = true })
			expectTuple(t, d, clientIP, 40001, ctrA, 80)
			if n := e.event(EventCTNewDNAT); n != 1 {
				t.Fatalf("ct_new_dnat = %d, want 1", n)
			}
			if closing == "fin" {
				send(func(p *testPacket) { p.fin, p.ack = true, true })
			} else {
				send(func(p *testPacket) { p.rst = true })
			}
			oe, _ := e.ctLookup(origKey)
			e.expectExpiry(oe, 10*time.Second) // closing
			// The port now goes to B.
			e.publish(tcp, netip.Addr{}, 8080, ctrB, 80, 1)
			// Stragglers of the old connection still reach A.
			d = send(func(p *testPacket) { p.ack = true })
			expectTuple(t, d, clientIP, 40001, ctrA, 80)

			d = send(func(p *testPacket) { p.syn = true })
			expectTuple(t, d, clientIP, 40001, ctrB, 80)
			expectMACs(t, d, gwMAC, macB)
			// The new connection starts unassured, the old one's entries
			// are gone from ct4.
			const u = flagUnassured
			oe = e.expectCT(origKey, ctWant{clientIP, ctrB, 40001, 80, atFromNetdev | u, atToNetdev | flagReply | u, KindDNAT, e.idx["vethb"]})
			if oe.Packets != 1 || oe.TcpSeen != tcpSeenSYN {
				t.Errorf("new entry: %d packets, tcp_seen %#x; want 1, SYN", oe.Packets, oe.TcpSeen)
			}
			e.expectNoCT(ctKey(tcp, ctrA, 80, clientIP, 40001))
			e.expectCT(ctKey(tcp, ctrB, 80, clientIP, 40001), ctWant{hostIP, clientIP, 8080, 40001, atToNetdev | flagReply | u, atFromNetdev | u, KindDNAT, e.idx["vethb"]})
			if n := len(e.ctTable(e.objs.Ct4)); n != 0 {
				t.Errorf("%d entries in ct4, want none:\n%s", n, e.ctDump())
			}
			if n := len(e.ct()); n != 2 {
				t.Errorf("%d conntrack entries, want 2:\n%s", n, e.ctDump())
			}
			if n := e.event(EventCTNewDNAT); n != 2 {
				t.Errorf("ct_new_dnat = %d, want 2", n)
			}
			if n := e.portConns(portKey(tcp, netip.Addr{}, 8080)); n != 2 {
				t.Errorf("port_conns = %d, want 2", n)
			}
		})
	}

	t.Run("masquerade", func(t *testing.T) {
		e := newPacketEnv(t, Options{FastPath: true})
		p := tcpPacket(ctrA, 40000, remoteIP, 443)
		e.masqueradeFlow(p)
		p.syn, p.fin, p.ack = false, true, true
		e.masqueradeFlow(p)
		p.syn, p.fin, p.ack = true, false, false
		out := e.masqueradeFlow(p)
		expectTuple(t, decode(t, out), hostIP, 40000, remoteIP, 443)
		if n := e.event(EventCTNewSNAT); n != 2 {
			t.Errorf("ct_new_snat = %d, want 2", n)
		}
		oe, _ := e.ctLookup(ctKey(uint8(pTCP), ctrA, 40000, remoteIP, 443))
		if oe.Packets != 1 || oe.TcpSeen != tcpSeenSYN {
			t.Errorf("new entry: %d packets, tcp_seen %#x; want 1, SYN", oe.Packets, oe.TcpSeen)
		}
		if n := len(e.ct()); n != 2 {
			t.Errorf("%d conntrack entries, want 2:\n%s", n, e.ctDump())
		}
	})
}

// TestPacketPeerRestored: a flow whose other half was evicted gets it back
// with its next packet.
func TestPacketPeerRestored(t *testing.T) {
	t.Run("published port", func(t *testing.T) {
		e := newPacketEnv(t, Options{FastPath: true})
		udp := uint8(pUDP)
		e.publish(udp, netip.Addr{}, 5353, ctrA, 53, 1)
		p := udpPacket(clientIP, 40001, hostIP, 5353)
		replyKey := ctKey(udp, ctrA, 53, clientIP, 40001)
		// An unassured flow gets its half back in ct4_syn.
		const u = flagUnassured
		want := ctWant{hostIP, clientIP, 5353, 40001, atToNetdev | flagReply | u, atFromNetdev | u, KindDNAT, e.idx["vetha"]}
		e.fromNetdev(p.frame())
		e.expectCT(replyKey, want)
		e.ctDelete(replyKey)
		v, out := e.fromNetdev(p.frame())
		expectVerdict(t, v, TC_ACT_REDIRECT)
		expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 53)
		if _, ok := e.ctLookupIn(e.objs.Ct4Syn, replyKey); !ok {
			t.Fatalf("reply entry not restored in ct4_syn by the next packet")
		}
		re := e.expectCT(replyKey, want)
		e.expectExpiry(re, 10*time.Second)
		if n := e.event(EventCTPeerRestored); n != 1 {
			t.Errorf("ct_peer_restored = %d, want 1", n)
		}
		v, out = e.toNetdev(udpPacket(ctrA, 53, clientIP, 40001).frame())
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple(t, decode(t, out), hostIP, 5353, clientIP, 40001)
		checkFrame(t, out)
	})

	t.Run("masquerade", func(t *testing.T) {
		e := newPacketEnv(t, Options{FastPath: true})
		udp := uint8(pUDP)
		// B holds A's port, so A's translated port is one to remember.
		e.masqueradeFlow(udpPacket(ctrB, 40000, remoteIP, 53))
		out := e.masqueradeFlow(udpPacket(ctrA, 40000, remoteIP, 53))
		nat, _ := decode(t, out).ports()
		origKey := ctKey(udp, ctrA, 40000, remoteIP, 53)
		want := ctWant{hostIP, remoteIP, nat, 53, atToNetdev, atFromNetdev | flagReply, KindSNAT, e.idx["vetha"]}
		e.expectCT(origKey, want)
		e.ctDelete(origKey)
		v, rout := e.fromNetdev(udpPacket(remoteIP, 53, hostIP, nat).frame())
		expectVerdict(t, v, TC_ACT_REDIRECT)
		expectTuple(t, decode(t, rout), remoteIP, 53, ctrA, 40000)
		if _, ok := e.ctLookup(origKey); !ok {
			t.Fatalf("original entry not restored by the next reply")
		}
		e.expectCT(origKey, want)
		// A keeps its translated port instead of getting a new mapping.
		out = e.masqueradeFlow(udpPacket(ctrA, 40000, remoteIP, 53))
		expectTuple(t, decode(t, out), hostIP, nat, remoteIP, 53)
		if n := e.event(EventCTNewSNAT); n != 2 {
			t.Errorf("ct_new_snat = %d, want 2", n)
		}
		if n := e.event(EventCTPeerRestored); n != 1 {
			t.Errorf("ct_peer_restored = %d, want 1", n)
		}
	})
}

// TestPacketEvictedReplyHalf: a published flow whose reply half the LRU
// evicted must heal, not be masqueraded.
//
// The container's answer that misses its entry is dropped (ct_miss), not
// masqueraded as a new flow; the client's next packet restores the half.
func TestPacketEvictedReplyHalf(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	tcp := uint8(pTCP)
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	p := tcpPacket(clientIP, 40001, hostIP, 8080)
	e.fromNetdev(p.frame())
	replyKey := ctKey(tcp, ctrA, 80, clientIP, 40001)
	e.ctDelete(replyKey)
	answer := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC).frame()
	v, _ := e.toNetdev(answer)
	expectVerdict(t, v, TC_ACT_SHOT)
	if n := e.drops()[DropCTMiss]; n != 1 {
		t.Errorf("ct_miss drops = %d, want 1", n)
	}
	p.syn, p.ack = false, true
	e.fromNetdev(p.frame())
	_, out := e.toNetdev(answer)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)
}

// TestPacketRedirectOnly: the benchmark's mode translates and tracks
// nothing, and only redirects to containers.
func TestPacketRedirectOnly(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true, RedirectOnly: true})
	e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrA, 80, 1)

	in := tcpPacket(clientIP, 40001, ctrA, 80).frame()
	v, out := e.fromNetdev(in)
	expectVerdict(t, v, TC_ACT_REDIRECT)
	d := decode(t, out)
	expectTuple(t, d, clientIP, 40001, ctrA, 80)
	expectTTL(t, d, 63)
	expectMACs(t, d, gwMAC, macA)
	checkFrame(t, out)

	for _, c := range []struct {
		name string
		run  func([]byte) (uint32, []byte)
		p    testPacket
	}{
		{name: "published port", run: e.fromNetdev, p: tcpPacket(clientIP, 40001, hostIP, 8080)},
		{name: "masquerade", run: e.toNetdev, p: tcpPacket(ctrA, 40000, remoteIP, 443)},
		{name: "hairpin", run: func(b []byte) (uint32, []byte) { return e.fromContainer("vetha", b) }, p: tcpPacket(ctrA, 40000, hostIP, 8080)},
		{name: "to a container", run: func(b []byte) (uint32, []byte) { return e.toContainer("vetha", b) }, p: tcpPacket(ctrB, 80, ctrA, 40000)},
	} {
		in := c.p.frame()
		v, out := c.run(in)
		if v != TC_ACT_OK {
			t.Errorf("%s: verdict %s, want TC_ACT_OK", c.name, verdictName(v))
		}
		if !bytes.Equal(in, out) {
			t.Errorf("%s: frame changed", c.name)
		}
	}
	v, _ = e.fromContainer("vetha", tcpPacket(ctrA, 40000, ctrB, 80).fromCtr(macA, macB).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	if n := len(e.ct()); n != 0 {
		t.Errorf("%d conntrack entries, want none", n)
	}
	if tr := e.traffic("vetha"); tr.RxPackets != 2 || tr.TxPackets != 2 {
		t.Errorf("vetha counters %+v, want 2 received (a redirect, to_container), 2 sent", tr)
	}
	e.expectDrops(nil)
}

// TestPacketExpired: entries past their deadline are ignored, and the
// translated port of an expired flow is free again.
func TestPacketExpired(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true, UDPTimeout: time.Nanosecond})
	udp := uint8(pUDP)
	e.masqueradeFlow(udpPacket(ctrB, 40000, remoteIP, 53))
	// B's flow is over: A gets port 40000, its own.
	out := e.masqueradeFlow(udpPacket(ctrA, 40000, remoteIP, 53))
	expectTuple(t, decode(t, out), hostIP, 40000, remoteIP, 53)
	e.expectCT(ctKey(udp, remoteIP, 53, hostIP, 40000), ctWant{remoteIP, ctrA, 53, 40000, atFromNetdev | flagReply, atToNetdev, KindSNAT, e.idx["vetha"]})
	// An answer after the deadline finds nothing: it is not ours.
	in := udpPacket(remoteIP, 53, hostIP, 40000).frame()
	v, got := e.fromNetdev(in)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, in, got)

	// A published flow past its deadline starts over.
	e.publish(udp, netip.Addr{}, 5353, ctrA, 53, 1)
	p := udpPacket(clientIP, 40001, hostIP, 5353)
	e.fromNetdev(p.frame())
	e.publish(udp, netip.Addr{}, 5353, ctrB, 53, 1)
	v, out = e.fromNetdev(p.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), clientIP, 40001, ctrB, 53)
	if n := e.event(EventCTNewDNAT); n != 2 {
		t.Errorf("ct_new_dnat = %d, want 2", n)
	}
	e.expectDrops(nil)
}

// TestPacketIPOptions: headers longer than 20 bytes are translated right
// and keep their options.
func TestPacketIPOptions(t *testing.T) {
	opts := []struct {
		name string
		o    []layers.IPv4Option
	}{
		{name: "router alert (ihl 6)", o: []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}},
		{name: "record route (ihl 8)", o: []layers.IPv4Option{{OptionType: 7, OptionLength: 11, OptionData: []byte{4, 0, 0, 0, 0, 0, 0, 0, 0}}, {OptionType: 0}}},
	}
	for _, oc := range opts {
		name, o := oc.name, oc.o
		for _, proto := range []layers.IPProtocol{pTCP, pUDP} {
			t.Run(fmt.Sprintf("%s %s", name, proto), func(t *testing.T) {
				e := newPacketEnv(t, Options{FastPath: true})
				e.publish(uint8(proto), netip.Addr{}, 8080, ctrA, 80, 1)
				p := flowPacket(proto, clientIP, 40001, hostIP, 8080)
				p.options = o
				in := p.frame()
				ihl := int(in[14]&0xf) * 4
				if ihl <= 20 {
					t.Fatalf("IHL %d: no options", ihl)
				}
				v, out := e.fromNetdev(in)
				expectVerdict(t, v, TC_ACT_REDIRECT)
				d := decode(t, out)
				expectTuple(t, d, clientIP, 40001, ctrA, 80)
				checkFrame(t, out)
				if !bytes.Equal(out[14+20:14+ihl], in[14+20:14+ihl]) {
					t.Errorf("options changed: %x, sent %x", out[14+20:14+ihl], in[14+20:14+ihl])
				}
				if !bytes.Equal(l4Payload(d), p.payload) {
					t.Errorf("payload changed")
				}
				r := replyPacket(proto, ctrA, 80, clientIP, 40001)
				r.options = o
				v, out = e.toNetdev(r.frame())
				expectVerdict(t, v, TC_ACT_OK)
				expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)
				checkFrame(t, out)

				m := flowPacket(proto, ctrB, 40002, remoteIP, 443)
				m.options = o
				out = e.masqueradeFlow(m)
				expectTuple(t, decode(t, out), hostIP, 40002, remoteIP, 443)
				checkFrame(t, out)
			})
		}
	}
}

// TestPacketFragments: a fragmented datagram is translated whole: the
// first fragment by its ports, the later ones by the ports it recorded.
func TestPacketFragments(t *testing.T) {
	payload := make([]byte, 1000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	// reassemble joins fragments' payloads (in order, no options).
	reassemble := func(frames [][]byte) []byte {
		var seg []byte
		for _, f := range frames {
			seg = append(seg, f[14+20:]...)
		}
		return seg
	}

	t.Run("published port", func(t *testing.T) {
		e := newPacketEnv(t, Options{FastPath: true})
		udp := uint8(pUDP)
		e.publish(udp, netip.Addr{}, 5353, ctrA, 53, 1)
		p := udpPacket(clientIP, 40001, hostIP, 5353)
		p.payload, p.df, p.ipID = payload, false, 0x4242
		frags := fragment(p.datagram(), 496)
		if len(frags) != 3 {
			t.Fatalf("%d fragments", len(frags))
		}
		var outs [][]byte
		for i, f := range frags {
			in := ethFrame(routerMAC, upMAC, layers.EthernetTypeIPv4, f)
			v, out := e.fromNetdev(in)
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			if d.src() != clientIP || d.dst() != ctrA {
				t.Errorf("fragment %d: %s -> %s, want %s -> %s", i, d.src(), d.dst(), clientIP, ctrA)
			}
			checkDatagram(t, fmt.Sprintf("fragment %d", i), out[14:])
			expectTTL(t, d, 63)
			expectMACs(t, d, gwMAC, macA)
			if i == 0 {
				// gopacket decodes no L4 layer in a fragment.
				if dp := binary.BigEndian.Uint16(out[14+20+2:]); dp != 53 {
					t.Errorf("first fragment to port %d, want 53", dp)
				}
				fk := bpfFragKey{Saddr: be32(clientIP), Daddr: be32(hostIP), Id: be16(0x4242), Proto: udp}
				fp, ok := e.frags()[fk]
				if !ok || port16(fp.Sport) != 40001 || port16(fp.Dport) != 5353 {
					t.Errorf("frags4: %v %v, want ports 40001 5353 for %+v", ok, fp, fk)
				}
			} else if !bytes.Equal(out[14+20:], f[20:]) {
				// Later fragments: addresses only, their data as it was.
				t.Errorf("fragment %d: data changed", i)
			}
			if binary.BigEndian.Uint16(out[14+6:]) != binary.BigEndian.Uint16(f[6:]) {
				t.Errorf("fragment %d: flags/offset changed", i)
			}
			outs = append(outs, out)
		}
		// The datagram the container reassembles is right, checksum and
		// all.
		seg := reassemble(outs)
		if s := l4Sum(outs[0][14:], seg); s != 0xffff {
			t.Errorf("reassembled UDP checksum is wrong")
		}
		if !bytes.Equal(seg[8:], payload) {
			t.Errorf("reassembled payload differs")
		}
		oe, _ := e.ctLookup(ctKey(udp, clientIP, 40001, hostIP, 5353))
		if oe.Packets != 3 {
			t.Errorf("entry counted %d packets, want 3", oe.Packets)
		}
		if n := e.event(EventFragTracked); n != 1 {
			t.Errorf("fragment_tracked = %d, want 1", n)
		}

		// A later fragment whose first was never seen: left alone.
		stray := append([]byte(nil), frags[1]...)
		binary.BigEndian.PutUint16(stray[4:], 0x4343)
		setIPChecksum(stray)
		in := ethFrame(routerMAC, upMAC, layers.EthernetTypeIPv4, stray)
		before := e.ct()
		v, out := e.fromNetdev(in)
		expectVerdict(t, v, TC_ACT_OK)
		expectUnchanged(t, in, out)
		if !maps.Equal(before, e.ct()) {
			t.Errorf("conntrack changed by a stray fragment")
		}
		e.expectDrops(nil)
	})

	t.Run("masquerade", func(t *testing.T) {
		e := newPacketEnv(t, Options{FastPath: true})
		udp := uint8(pUDP)
		e.masqueradeFlow(udpPacket(ctrB, 40000, remoteIP, 53))
		p := udpPacket(ctrA, 40000, remoteIP, 53)
		p.payload, p.df, p.ipID = payload, false, 0x5151
		frags := fragment(p.datagram(), 504)
		var outs [][]byte
		for i, f := range frags {
			in := ethFrame(macA, gwMAC, layers.EthernetTypeIPv4, f)
			v, out := e.toNetdev(in)
			expectVerdict(t, v, TC_ACT_OK)
			d := decode(t, out)
			if d.src() != hostIP || d.dst() != remoteIP {
				t.Errorf("fragment %d: %s -> %s", i, d.src(), d.dst())
			}
			checkDatagram(t, fmt.Sprintf("fragment %d", i), out[14:])
			if i > 0 && !bytes.Equal(out[14+20:], f[20:]) {
				t.Errorf("fragment %d: data changed", i)
			}
			outs = append(outs, out)
		}
		seg := reassemble(outs)
		nat := binary.BigEndian.Uint16(seg[0:])
		if nat == 40000 {
			t.Errorf("source port kept though B holds it")
		}
		if s := l4Sum(outs[0][14:], seg); s != 0xffff {
			t.Errorf("reassembled UDP checksum is wrong")
		}
		fk := bpfFragKey{Saddr: be32(ctrA), Daddr: be32(remoteIP), Id: be16(0x5151), Proto: udp}
		if fp, ok := e.frags()[fk]; !ok || port16(fp.Sport) != 40000 || port16(fp.Dport) != 53 {
			t.Errorf("frags4: %v %v", ok, fp)
		}
		// A stray later fragment from a container: untouched.
		stray := append([]byte(nil), frags[1]...)
		binary.BigEndian.PutUint16(stray[4:], 0x5252)
		setIPChecksum(stray)
		in := ethFrame(macA, gwMAC, layers.EthernetTypeIPv4, stray)
		v, out := e.toNetdev(in)
		expectVerdict(t, v, TC_ACT_OK)
		expectUnchanged(t, in, out)
		e.expectDrops(nil)
	})
}

// TestPacketMalformed: bad input is dropped and counted by every program,
// and changes no state; what is not IPv4 passes untouched.
func TestPacketMalformed(t *testing.T) {
	type hook struct {
		name string
		prog func(e *packetEnv) *ebpf.Program
		dev  string
		// flow builds a packet the hook would translate.
		flow func(proto layers.IPProtocol) testPacket
	}
	hooks := []hook{
		{name: "from_netdev", prog: func(e *packetEnv) *ebpf.Program { return e.objs.FromNetdev }, dev: "up0",
			flow: func(p layers.IPProtocol) testPacket { return flowPacket(p, clientIP, 40001, hostIP, 8080) }},
		{name: "to_netdev", prog: func(e *packetEnv) *ebpf.Program { return e.objs.ToNetdev }, dev: "up0",
			flow: func(p layers.IPProtocol) testPacket { return flowPacket(p, ctrA, 40001, remoteIP, 8080) }},
		{name: "from_container", prog: func(e *packetEnv) *ebpf.Program { return e.objs.FromContainer }, dev: "vetha",
			flow: func(p layers.IPProtocol) testPacket { return flowPacket(p, ctrA, 40001, hostIP, 8080) }},
		{name: "to_container", prog: func(e *packetEnv) *ebpf.Program { return e.objs.ToContainer }, dev: "vetha",
			flow: func(p layers.IPProtocol) testPacket { return flowPacket(p, ctrB, 80, ctrA, 40001) }},
	}
	setTotLen := func(b []byte, n int) { binary.BigEndian.PutUint16(b[14+2:], uint16(n)); setIPChecksum(b[14:]) }
	arp := func() []byte {
		buf := gopacket.NewSerializeBuffer()
		a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: routerMAC, SourceProtAddress: routerIP.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: hostIP.AsSlice()}
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, a); err != nil {
			panic(err)
		}
		return ethFrame(routerMAC, mustMAC("ff:ff:ff:ff:ff:ff"), layers.EthernetTypeARP, buf.Bytes())
	}
	// Link-local IPv6, which every hook passes untouched (the IPv6
	// tests, packet_ipv6_test.go, have the rest).
	ipv6 := func() []byte {
		buf := gopacket.NewSerializeBuffer()
		ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, HopLimit: 64,
			SrcIP: net.ParseIP("fe80::1"), DstIP: net.ParseIP("fe80::2")}
		u := &layers.UDP{SrcPort: 40001, DstPort: 8080}
		_ = u.SetNetworkLayerForChecksum(ip)
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ip, u, gopacket.Payload("x")); err != nil {
			panic(err)
		}
		return ethFrame(routerMAC, upMAC, layers.EthernetTypeIPv6, buf.Bytes())
	}
	cases := []struct {
		name  string
		frame func(h hook) []byte
		shot  bool
	}{
		// The first two never reach the program on recent kernels:
		// BPF_PROG_RUN refuses an IPv4 frame without a whole IP header
		// (EINVAL), as a driver would hand none to TC.
		{name: "arp", frame: func(hook) []byte { return arp() }, shot: false},
		{name: "ipv6", frame: func(hook) []byte { return ipv6() }, shot: false},
		{name: "ethernet header only", frame: func(h hook) []byte { return h.flow(pTCP).frame()[:14] }, shot: true},
		{name: "truncated ip header", frame: func(h hook) []byte { return h.flow(pTCP).frame()[:14+12] }, shot: true},
		{name: "ihl 4", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); b[14] = 0x44; return b }, shot: true},
		{name: "ihl 0", frame: func(h hook) []byte { b := h.flow(pUDP).frame(); b[14] = 0x40; return b }, shot: true},
		{name: "version 6 in an ipv4 frame", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); b[14] = 0x65; return b }, shot: true},
		{name: "version 0", frame: func(h hook) []byte { b := h.flow(pUDP).frame(); b[14] = 0x05; return b }, shot: true},
		{name: "total length beyond the frame", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); setTotLen(b, len(b)-14+1); return b }, shot: true},
		{name: "total length below the header", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); setTotLen(b, 19); return b }, shot: true},
		{name: "ihl beyond the total length", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); b[14] = 0x4f; return b[:14+40] }, shot: true},
		{name: "truncated tcp header", frame: func(h hook) []byte { b := h.flow(pTCP).frame()[:14+20+10]; setTotLen(b, 30); return b }, shot: true},
		{name: "tcp header cut by the total length", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); setTotLen(b, 20+19); return b }, shot: true},
		{name: "tcp data offset 4", frame: func(h hook) []byte { b := h.flow(pTCP).frame(); b[14+20+12] = 0x40; return b }, shot: true},
		{name: "udp header cut by the total length", frame: func(h hook) []byte { b := h.flow(pUDP).frame(); setTotLen(b, 20+7); return b }, shot: true},
		{name: "truncated udp header", frame: func(h hook) []byte { b := h.flow(pUDP).frame()[:14+20+4]; setTotLen(b, 24); return b }, shot: true},
		{name: "truncated icmp header", frame: func(h hook) []byte { b := h.flow(pICMP).frame()[:14+20+4]; setTotLen(b, 24); return b }, shot: true},
		{name: "icmp header cut by the total length", frame: func(h hook) []byte { b := h.flow(pICMP).frame(); setTotLen(b, 20+7); return b }, shot: true},
	}
	for _, h := range hooks {
		t.Run(h.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			for _, p := range []layers.IPProtocol{pTCP, pUDP} {
				e.publish(uint8(p), netip.Addr{}, 8080, ctrB, 80, 1)
			}
			// Some state to keep: a published flow, a masqueraded one,
			// and a fragment record.
			e.fromNetdev(tcpPacket(client2IP, 1, hostIP, 8080).frame())
			e.masqueradeFlow(udpPacket(ctrB, 2, remoteIP, 53))
			fp := udpPacket(client2IP, 3, hostIP, 8080)
			fp.payload, fp.df = make([]byte, 64), false
			e.fromNetdev(ethFrame(routerMAC, upMAC, layers.EthernetTypeIPv4, fragment(fp.datagram(), 32)[0]))
			ct, frags := e.ct(), e.frags()
			if len(ct) != 6 || len(frags) != 1 {
				t.Fatalf("setup: %d conntrack entries, %d fragment records", len(ct), len(frags))
			}
			var malformed uint64
			for _, c := range cases {
				in := c.frame(h)
				v, out, err := e.tryRun(h.prog(e), h.dev, in)
				if err != nil {
					if c.shot && len(in) < 14+20 && errors.Is(err, unix.EINVAL) {
						t.Logf("%s: the kernel does not run programs on it: %v", c.name, err)
						continue
					}
					t.Fatalf("%s: %v", c.name, err)
				}
				if c.shot {
					malformed++
					if v != TC_ACT_SHOT {
						t.Errorf("%s: verdict %s, want TC_ACT_SHOT", c.name, verdictName(v))
					}
				} else {
					if v != TC_ACT_OK {
						t.Errorf("%s: verdict %s, want TC_ACT_OK", c.name, verdictName(v))
					}
					expectUnchanged(t, in, out)
				}
				if got := e.drops()[DropMalformed]; got != malformed {
					t.Errorf("%s: drops[malformed] = %d, want %d", c.name, got, malformed)
				}
				if !maps.Equal(ct, e.ct()) {
					t.Errorf("%s: conntrack changed:\n%s", c.name, e.ctDump())
					ct = e.ct()
				}
				if !maps.Equal(frags, e.frags()) {
					t.Errorf("%s: fragment records changed", c.name)
					frags = e.frags()
				}
			}
			e.expectDrops(map[DropReason]uint64{DropMalformed: malformed})
		})
	}
}

// TestPacketCounters: the host veth's programs count what the container
// sends and receives, whatever it is.
func TestPacketCounters(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: false})
	var tx, rx Traffic
	for i, n := range []int{0, 100, 1400} {
		p := udpPacket(ctrA, 1000, ctrB, 53).fromCtr(macA, gwMAC)
		p.payload = make([]byte, n)
		in := p.frame()
		v, out := e.fromContainer("vetha", in)
		expectVerdict(t, v, TC_ACT_OK)
		expectUnchanged(t, in, out)
		tx.TxPackets++
		tx.TxBytes += uint64(len(in))

		r := udpPacket(ctrB, 53, ctrA, 1000).fromCtr(gwMAC, macA)
		r.payload = make([]byte, n+i)
		in = r.frame()
		v, out = e.toContainer("vetha", in)
		expectVerdict(t, v, TC_ACT_OK)
		expectUnchanged(t, in, out)
		rx.RxPackets++
		rx.RxBytes += uint64(len(in))
	}
	// Not IPv4, and malformed: counted all the same.
	arp := ethFrame(macA, gwMAC, layers.EthernetTypeARP, make([]byte, 28))
	e.fromContainer("vetha", arp)
	tx.TxPackets++
	tx.TxBytes += uint64(len(arp))
	bad := udpPacket(ctrB, 53, ctrA, 1000).frame()
	bad[14] = 0x44 // IHL 4
	if v, _ := e.toContainer("vetha", bad); v != TC_ACT_SHOT {
		t.Errorf("malformed frame: verdict %s, want TC_ACT_SHOT", verdictName(v))
	}
	rx.RxPackets++
	rx.RxBytes += uint64(len(bad))

	want := Traffic{RxPackets: rx.RxPackets, RxBytes: rx.RxBytes, TxPackets: tx.TxPackets, TxBytes: tx.TxBytes}
	if got := e.traffic("vetha"); got != want {
		t.Errorf("vetha counters %+v, want %+v", got, want)
	}
	for _, dev := range []string{"vethb", "vethc", "up0"} {
		if got := e.traffic(dev); got != (Traffic{}) {
			t.Errorf("%s counters %+v, want none", dev, got)
		}
	}
}

// TestPacketForwardFastPath: with the fast path, what containers send is
// put straight into the container it is for, or out of the uplink. (To
// another network's container only a tracked flow's packets go, routed:
// packet_isolation_test.go.)
func TestPacketForwardFastPath(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	big := udpPacket(ctrA, 40000, remoteIP, 53)
	big.payload = make([]byte, 1600)
	bigRoute := big
	bigRoute.dst = netip.MustParseAddr("198.51.100.200")
	ttl1 := udpPacket(ctrA, 40000, remoteIP, 53)
	ttl1.ttl = 1
	first := udpPacket(ctrA, 40000, remoteIP, 53)
	first.payload, first.df = make([]byte, 64), false
	cases := []struct {
		name     string
		p        testPacket
		frame    []byte // instead of p's
		verdict  uint32
		ttl      uint8 // of the output when it changes
		src, dst net.HardwareAddr
		rxDev    string
		event    Event
	}{
		{name: "same bridge", p: udpPacket(ctrA, 40000, ctrB, 53), verdict: TC_ACT_REDIRECT, rxDev: "vethb", event: EventRedirectPeer},
		{name: "out of the uplink", p: udpPacket(ctrA, 40000, remoteIP, 53), verdict: TC_ACT_REDIRECT, ttl: 63, event: EventRedirectNeigh},
		{name: "route out of another interface", p: udpPacket(ctrA, 40000, netip.MustParseAddr("198.18.0.5"), 53), verdict: TC_ACT_OK},
		{name: "too big for the uplink", p: big, verdict: TC_ACT_OK},
		{name: "too big for the uplink, not for its route", p: bigRoute, verdict: TC_ACT_OK},
		{name: "fits the uplink, on that route", p: udpPacket(ctrA, 40000, netip.MustParseAddr("198.51.100.200"), 53), verdict: TC_ACT_REDIRECT, ttl: 63, event: EventRedirectNeigh},
		{name: "ttl 1", p: ttl1, verdict: TC_ACT_OK},
		{name: "fragment", frame: ethFrame(macA, gwMAC, layers.EthernetTypeIPv4, fragment(first.datagram(), 32)[0]), verdict: TC_ACT_OK},
		{name: "to the host", p: udpPacket(ctrA, 40000, gwIP, 53), verdict: TC_ACT_OK},
		{name: "to itself", p: udpPacket(ctrA, 40000, ctrA, 53), verdict: TC_ACT_OK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := c.frame
			if in == nil {
				in = c.p.fromCtr(macA, gwMAC).frame()
			}
			evBefore := e.events()
			rxBefore := e.traffic(c.rxDev)
			v, out := e.fromContainer("vetha", in)
			expectVerdict(t, v, c.verdict)
			if c.ttl == 0 {
				expectUnchanged(t, in, out)
			} else {
				d := decode(t, out)
				expectTTL(t, d, c.ttl)
				checkFrame(t, out)
				if c.src != nil {
					expectMACs(t, d, c.src, c.dst)
				} else if !bytes.Equal(out[:12], in[:12]) {
					t.Errorf("MACs changed")
				}
				if !bytes.Equal(out[14+12:], in[14+12:]) {
					t.Errorf("addresses or data changed")
				}
			}
			if c.verdict == TC_ACT_REDIRECT {
				if n := e.events()[c.event] - evBefore[c.event]; n != 1 {
					t.Errorf("%s counted %d times, want 1", c.event, n)
				}
			}
			if c.rxDev != "" {
				if tr := e.traffic(c.rxDev); tr.RxPackets != rxBefore.RxPackets+1 {
					t.Errorf("%s received %d packets, want %d", c.rxDev, tr.RxPackets, rxBefore.RxPackets+1)
				}
			}
		})
	}
	if n := len(e.ct()); n != 0 {
		t.Errorf("%d conntrack entries, want none", n)
	}
	e.expectDrops(nil)
}

// TestPacketTrackedReplyOut: the answer of a published port leaves through
// the fast path untranslated (the uplink's egress translates it) and is
// not taken for a new flow of the container.
func TestPacketTrackedReplyOut(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrA, 80, 7)
	v, _ := e.fromNetdev(flowPacket(pTCP, remoteIP, 40001, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	replyKey := ctKey(uint8(pTCP), ctrA, 80, remoteIP, 40001)
	before, ok := e.ctLookup(replyKey)
	if !ok {
		t.Fatalf("no reply entry after the request")
	}

	evBefore := e.events()
	in := replyPacket(pTCP, ctrA, 80, remoteIP, 40001).fromCtr(macA, gwMAC).frame()
	v, out := e.fromContainer("vetha", in)
	expectVerdict(t, v, TC_ACT_REDIRECT)
	d := decode(t, out)
	expectTuple(t, d, ctrA, 80, remoteIP, 40001)
	expectTTL(t, d, 63)
	checkFrame(t, out)
	if n := e.events()[EventRedirectNeigh] - evBefore[EventRedirectNeigh]; n != 1 {
		t.Errorf("redirect_neigh counted %d times, want 1", n)
	}
	after, _ := e.ctLookup(replyKey)
	if after.Packets != before.Packets {
		t.Errorf("reply entry counted %d packets at the container's hook, want %d (the uplink counts)", after.Packets, before.Packets)
	}
	if n := len(e.ct()); n != 2 {
		t.Errorf("%d conntrack entries, want the flow's 2", n)
	}
	e.expectDrops(nil)
}

// TestPacketPeerCheckedPeriodically: past its first packets, an established
// flow checks its other half every 64th packet, not on each one.
func TestPacketPeerCheckedPeriodically(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	udp := uint8(pUDP)
	e.publish(udp, netip.Addr{}, 5353, ctrA, 53, 1)
	p := udpPacket(clientIP, 40001, hostIP, 5353)
	origKey := ctKey(udp, clientIP, 40001, hostIP, 5353)
	replyKey := ctKey(udp, ctrA, 53, clientIP, 40001)
	send := func(n int) {
		t.Helper()
		for range n {
			if v, _ := e.fromNetdev(p.frame()); v != TC_ACT_REDIRECT {
				t.Fatalf("verdict %d, want a redirect", v)
			}
		}
	}
	// The container answers once, so the flow is established in ct4.
	send(1)
	if v, _ := e.toNetdev(udpPacket(ctrA, 53, clientIP, 40001).frame()); v != TC_ACT_OK {
		t.Fatalf("answer: verdict %s, want TC_ACT_OK", verdictName(v))
	}
	send(9)
	if _, ok := e.ctLookupIn(e.objs.Ct4, origKey); !ok {
		t.Fatalf("flow not in ct4 after the container's answer")
	}
	e.ctDelete(replyKey)
	send(54) // the flow's 11th to 64th packets
	if _, ok := e.ctLookup(replyKey); ok {
		t.Fatalf("reply entry restored before the 65th packet")
	}
	if n := e.event(EventCTPeerRestored); n != 0 {
		t.Errorf("ct_peer_restored = %d, want 0", n)
	}
	send(1)
	if _, ok := e.ctLookup(replyKey); !ok {
		t.Fatalf("reply entry not restored by the 65th packet")
	}
	if n := e.event(EventCTPeerRestored); n != 1 {
		t.Errorf("ct_peer_restored = %d, want 1", n)
	}
	if orig, _ := e.ctLookup(origKey); orig.Packets != 65 {
		t.Errorf("entry counted %d packets, want 65", orig.Packets)
	}
	e.expectDrops(nil)
}

// TestPacketGatewaySourceIsHost: a packet the host sends from a bridge's
// gateway address (an address inside a container subnet) out of the uplink
// is the host's: neither masqueraded nor judged as a container's. Its twin,
// the same segment from a container's address, is a container's answer of
// no known flow and is dropped ct_miss.
func TestPacketGatewaySourceIsHost(t *testing.T) {
	for _, c := range []struct {
		name   string
		src    netip.Addr
		want   uint32
		reason DropReason
	}{
		{name: "from the gateway", src: gwIP, want: TC_ACT_OK, reason: 0},
		{name: "from a container", src: ctrA, want: TC_ACT_SHOT, reason: DropCTMiss},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			p := replyPacket(pTCP, c.src, 8081, clientIP, 40001)
			p.rst = true
			in := p.frame()
			v, out := e.toNetdev(in)
			expectVerdict(t, v, c.want)
			if c.want == TC_ACT_OK {
				expectUnchanged(t, in, out)
				e.expectDrops(nil)
			} else {
				e.expectDrops(map[DropReason]uint64{c.reason: 1})
			}
			if n := len(e.ct()); n != 0 {
				t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
			}
		})
	}
}
