// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of the IPv6 datapath (bpf/lib/ipv6.h, bpf/lib/datapath6.h):
// frames built with gopacket, extension headers spliced in by hand, run
// with BPF_PROG_RUN, the output parsed again and its checksums verified
// here over the pseudo-header.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// The IPv6 side of the test topology.
var (
	host6    = netip.MustParseAddr("2001:db8:1::1") // up0, a host address
	host6b   = netip.MustParseAddr("2001:db8:1::2") // another host address
	client6  = netip.MustParseAddr("2001:db8:99::7")
	remote6  = netip.MustParseAddr("2001:db8:51::10")
	gw6      = netip.MustParseAddr("fd00:17::1") // br0
	ctrA6    = netip.MustParseAddr("fd00:17::2")
	ctrB6    = netip.MustParseAddr("fd00:17::3")
	gw6C     = netip.MustParseAddr("fd00:18::1") // br1
	ctrC6    = netip.MustParseAddr("fd00:18::2")
	net6a    = netip.MustParsePrefix("fd00:17::/64")
	net6b    = netip.MustParsePrefix("fd00:18::/64")
	linkLoc6 = netip.MustParseAddr("fe80::42:acff:fe11:2")
)

// v6Ext is one extension header to splice between the fixed header and
// the L4 header: its type and its bytes but the next-header byte.
type v6Ext struct {
	typ  uint8
	body []byte
}

// extOpts is a hop-by-hop or destination-options header of 8 bytes
// (PadN), extRouting a routing header with no segment left, extFrag a
// fragment header (offset in 8-byte units), extAuth an authentication
// header of 16 bytes.
func extOpts(typ uint8) v6Ext { return v6Ext{typ, []byte{0, 0, 1, 4, 0, 0, 0, 0}} }
func extRouting() v6Ext       { return v6Ext{43, []byte{0, 0, 4, 0, 0, 0, 0, 0}} }
func extAuth() v6Ext {
	return v6Ext{51, []byte{0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0}}
}
func extFrag(off uint16, more bool, id uint32) v6Ext {
	b := make([]byte, 8)
	fo := off << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[2:], fo)
	binary.BigEndian.PutUint32(b[4:], id)
	return v6Ext{44, b}
}

// packet6 is an IPv6 packet to build.
type packet6 struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	proto          layers.IPProtocol
	sport, dport   uint16
	hlim           uint8
	ext            []v6Ext

	syn, ack, fin, rst bool
	seq                uint32

	icmpType, icmpCode uint8
	icmpID, icmpSeq    uint16
	// icmpBody replaces the ICMPv6 body after the first 8 bytes (ND
	// messages, the quote of an error).
	icmpBody []byte

	payload []byte
}

func base6(proto layers.IPProtocol, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) packet6 {
	return packet6{
		srcMAC: routerMAC, dstMAC: upMAC,
		src: src, dst: dst, proto: proto, sport: sport, dport: dport, hlim: 64,
		payload: []byte("bpfnet IPv6 packet test payload"),
	}
}

func tcp6(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) packet6 {
	p := base6(layers.IPProtocolTCP, src, sport, dst, dport)
	p.syn, p.seq = true, 1000
	return p
}

func udp6(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) packet6 {
	return base6(layers.IPProtocolUDP, src, sport, dst, dport)
}

func echo6(src, dst netip.Addr, id uint16, reply bool) packet6 {
	p := base6(layers.IPProtocolICMPv6, src, 0, dst, 0)
	p.icmpType = layers.ICMPv6TypeEchoRequest
	if reply {
		p.icmpType = layers.ICMPv6TypeEchoReply
	}
	p.icmpID, p.icmpSeq = id, 1
	return p
}

// nd6 is a Neighbour Discovery (or any other ICMPv6) message of type typ.
func nd6(src, dst netip.Addr, typ uint8) packet6 {
	p := base6(layers.IPProtocolICMPv6, src, 0, dst, 0)
	p.icmpType = typ
	p.payload = nil
	p.icmpBody = make([]byte, 16)
	copy(p.icmpBody, ctrA6.AsSlice())
	return p
}

func (p packet6) fromCtr(mac, gw net.HardwareAddr) packet6 {
	p.srcMAC, p.dstMAC = mac, gw
	return p
}

// datagram serializes the IPv6 datagram, checksums computed over the
// pseudo-header, extension headers spliced in after.
func (p packet6) datagram() []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: p.hlim, NextHeader: p.proto, SrcIP: net.IP(p.src.AsSlice()), DstIP: net.IP(p.dst.AsSlice())}
	ls := []gopacket.SerializableLayer{ip}
	switch p.proto {
	case layers.IPProtocolTCP:
		t := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: p.seq, SYN: p.syn, ACK: p.ack, FIN: p.fin, RST: p.rst, Window: 65535}
		_ = t.SetNetworkLayerForChecksum(ip)
		ls = append(ls, t)
	case layers.IPProtocolUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		_ = u.SetNetworkLayerForChecksum(ip)
		ls = append(ls, u)
	case layers.IPProtocolICMPv6:
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(p.icmpType, p.icmpCode)}
		_ = ic.SetNetworkLayerForChecksum(ip)
		rest := make([]byte, 4)
		binary.BigEndian.PutUint16(rest, p.icmpID)
		binary.BigEndian.PutUint16(rest[2:], p.icmpSeq)
		if p.icmpBody != nil {
			rest = append(rest[:0:0], p.icmpBody...)
		}
		ls = append(ls, ic, gopacket.Payload(rest))
	}
	ls = append(ls, gopacket.Payload(p.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		panic(err)
	}
	b := append([]byte(nil), buf.Bytes()...)
	if len(p.ext) == 0 {
		return b
	}
	var ext []byte
	next := b[6]
	for i := len(p.ext) - 1; i >= 0; i-- {
		h := append([]byte{next}, p.ext[i].body[1:]...)
		ext = append(h, ext...)
		next = p.ext[i].typ
	}
	b[6] = next
	out := append(append(append([]byte(nil), b[:40]...), ext...), b[40:]...)
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}

func (p packet6) frame() []byte {
	return ethFrame(p.srcMAC, p.dstMAC, layers.EthernetTypeIPv6, p.datagram())
}

// l4Sum6 is the one's-complement sum of seg with the IPv6 pseudo-header
// of src, dst and next header nh; 0xffff when seg's checksum is right.
func l4Sum6(src, dst []byte, nh uint8, seg []byte) uint16 {
	ph := make([]byte, 40)
	copy(ph[0:16], src)
	copy(ph[16:32], dst)
	binary.BigEndian.PutUint32(ph[32:], uint32(len(seg)))
	ph[39] = nh
	return fold(onesSum(seg, onesSum(ph, 0)))
}

// parsed6 is what the test reads back from an IPv6 frame.
type parsed6 struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16 // ICMPv6 echo: the identifier in sport
	hlim         uint8
	l4           []byte
}

// parse6Frame parses an IPv6 frame as a receiver would, walking the
// extension headers, and verifies the L4 checksum by hand (a later
// fragment is not checked).
func parse6Frame(t testing.TB, what string, frame []byte) parsed6 {
	t.Helper()
	if len(frame) < 14+40 || binary.BigEndian.Uint16(frame[12:]) != uint16(layers.EthernetTypeIPv6) {
		t.Fatalf("%s: not an IPv6 frame (%d bytes)", what, len(frame))
	}
	ip := frame[14:]
	end := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	if end > len(ip) {
		t.Fatalf("%s: payload length beyond the frame", what)
	}
	var out parsed6
	out.src, _ = netip.AddrFromSlice(ip[8:24])
	out.dst, _ = netip.AddrFromSlice(ip[24:40])
	out.hlim = ip[7]
	nh, off, later := ip[6], 40, false
	for nh == 0 || nh == 43 || nh == 44 || nh == 60 || nh == 51 {
		h := ip[off:]
		n := (int(h[1]) + 1) * 8
		if nh == 44 {
			n = 8
			later = binary.BigEndian.Uint16(h[2:])&0xfff8 != 0
		} else if nh == 51 {
			n = (int(h[1]) + 2) * 4
		}
		nh, off = h[0], off+n
	}
	out.proto, out.l4 = nh, ip[off:end]
	if later {
		return out
	}
	seg := out.l4
	switch nh {
	case 6, 17:
		out.sport, out.dport = binary.BigEndian.Uint16(seg), binary.BigEndian.Uint16(seg[2:])
	case 58:
		if seg[0] == 128 || seg[0] == 129 {
			out.sport = binary.BigEndian.Uint16(seg[4:])
		}
	}
	// A fragmented datagram's checksum covers all of it: only whole
	// datagrams are checked.
	if !hasFragHdr(ip) {
		if s := l4Sum6(ip[8:24], ip[24:40], nh, seg); s != 0xffff {
			t.Errorf("%s: bad L4 checksum (proto %d, sum %#04x)", what, nh, s)
		}
	}
	return out
}

func hasFragHdr(ip []byte) bool {
	nh, off := ip[6], 40
	for nh == 0 || nh == 43 || nh == 60 || nh == 51 {
		n := (int(ip[off+1]) + 1) * 8
		if nh == 51 {
			n = (int(ip[off+1]) + 2) * 4
		}
		nh, off = ip[off], off+n
	}
	return nh == 44
}

// runAll6 runs frame through the program of every hook, each on its own
// device, and returns the verdicts and frames by hook. A frame shorter
// than the fixed header, which the kernel does not run programs on
// (EINVAL), is left out.
func (e *packetEnv) runAll6(frame []byte) map[string][2]any {
	e.t.Helper()
	out := map[string][2]any{}
	for _, h := range []struct {
		name string
		prog *ebpf.Program
		dev  string
	}{
		{"from_netdev", e.objs.FromNetdev, "up0"},
		{"to_netdev", e.objs.ToNetdev, "up0"},
		{"from_container", e.objs.FromContainer, "vetha"},
		{"to_container", e.objs.ToContainer, "vetha"},
	} {
		v, o, err := e.tryRun(h.prog, h.dev, frame)
		if err != nil {
			if len(frame) < 14+40 && errors.Is(err, unix.EINVAL) {
				e.t.Logf("%d-byte frame: the kernel does not run programs on it: %v", len(frame), err)
				continue
			}
			e.t.Fatal(err)
		}
		out[h.name] = [2]any{v, o[:len(frame)]}
	}
	return out
}

// parseOnly lets vetha send from any address, so that the parsing tests
// run the same frames through every hook without the sender check
// (TestPacketIPv6Spoofed has that).
func (e *packetEnv) parseOnly() {
	var ep bpfEndpoint
	if err := e.objs.Veths.Lookup(e.idx["vetha"], &ep); err != nil {
		e.t.Fatal(err)
	}
	ep.EpFlags |= epFForeignSrc
	e.put(e.objs.Veths, e.idx["vetha"], ep)
}

// TestPacketIPv6NDPassthrough: Neighbour Discovery, MLD and link-local
// traffic pass every hook untouched, and are counted nowhere as drops;
// their twin, a global TCP SYN with the same addresses but one, passes
// too and is what the translations of later tests act on.
func TestPacketIPv6NDPassthrough(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.parseOnly()
	cases := map[string]packet6{
		"router solicitation":    nd6(linkLoc6, netip.MustParseAddr("ff02::2"), 133),
		"router advertisement":   nd6(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1"), 134),
		"neighbor solicitation":  nd6(ctrA6, netip.MustParseAddr("ff02::1:ff00:1"), 135),
		"DAD solicitation":       nd6(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:2"), 135),
		"neighbor advertisement": nd6(ctrA6, gw6, 136),
		"global NA to a host":    nd6(client6, host6, 136),
		"redirect":               nd6(gw6, ctrA6, 137),
		"MLDv2 report":           nd6(linkLoc6, netip.MustParseAddr("ff02::16"), 143),
		"link-local TCP":         tcp6(linkLoc6, 40000, netip.MustParseAddr("fe80::1"), 80),
		"link-local to global":   tcp6(linkLoc6, 40000, host6, 80),
		"multicast UDP":          udp6(ctrA6, 5353, netip.MustParseAddr("ff02::fb"), 5353),
		"loopback":               tcp6(netip.IPv6Loopback(), 40000, netip.IPv6Loopback(), 80),
	}
	for name, p := range cases {
		frame := p.frame()
		for hook, got := range e.runAll6(frame) {
			if got[0].(uint32) != TC_ACT_OK {
				t.Errorf("%s at %s: verdict %s, want TC_ACT_OK", name, hook, verdictName(got[0].(uint32)))
			}
			if !bytes.Equal(got[1].([]byte), frame) {
				t.Errorf("%s at %s: frame changed", name, hook)
			}
		}
	}
	// The positive twin: a global flow, which is parsed and passes (no
	// translation is configured for it).
	frame := tcp6(client6, 40000, remote6, 80).frame()
	for hook, got := range e.runAll6(frame) {
		if got[0].(uint32) != TC_ACT_OK {
			t.Errorf("global TCP at %s: verdict %s", hook, verdictName(got[0].(uint32)))
		}
	}
	e.expectDrops(nil)
}

// TestPacketIPv6ExtHeaders: every extension header kind, and chains up to
// the bound, are walked to the L4 header and pass whole; a chain one
// header longer than the bound is dropped and counted; malformed chains
// are dropped as malformed. Nothing changes a frame it passes.
func TestPacketIPv6ExtHeaders(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.parseOnly()
	chain := func(n int) []v6Ext {
		out := []v6Ext{extOpts(0)}
		for len(out) < n {
			out = append(out, extOpts(60))
		}
		return out[:n]
	}
	pass := map[string][]v6Ext{
		"none":                    nil,
		"hop-by-hop":              {extOpts(0)},
		"destination options":     {extOpts(60)},
		"routing":                 {extRouting()},
		"atomic fragment":         {extFrag(0, false, 7)},
		"authentication":          {extAuth()},
		"RFC 8200 order":          {extOpts(0), extOpts(60), extRouting(), extFrag(0, false, 9), extAuth(), extOpts(60)},
		"bound (IPV6_EXT_MAX)":    chain(6),
		"bound minus one":         chain(5),
		"later fragment at bound": append(chain(5), extFrag(3, false, 11)),
	}
	for name, ext := range pass {
		p := tcp6(client6, 40000, remote6, 80)
		p.ext = ext
		frame := p.frame()
		for hook, got := range e.runAll6(frame) {
			if got[0].(uint32) != TC_ACT_OK {
				t.Errorf("%s at %s: verdict %s, want TC_ACT_OK", name, hook, verdictName(got[0].(uint32)))
			}
			if !bytes.Equal(got[1].([]byte), frame) {
				t.Errorf("%s at %s: frame changed", name, hook)
			}
		}
		parse6Frame(t, name, frame)
	}
	e.expectDrops(nil)

	drop := map[string]struct {
		ext    []v6Ext
		reason DropReason
	}{
		"bound plus one":            {chain(7), DropIPv6ExtHdr},
		"bound plus one, fragment":  {append(chain(6), extFrag(0, true, 3)), DropIPv6ExtHdr},
		"hop-by-hop not first":      {[]v6Ext{extOpts(60), extOpts(0)}, DropMalformed},
		"two fragment headers":      {[]v6Ext{extFrag(0, true, 1), extFrag(0, true, 1)}, DropMalformed},
		"header beyond the payload": {[]v6Ext{{60, []byte{0, 200, 1, 4, 0, 0, 0, 0}}}, DropMalformed},
	}
	want := map[DropReason]uint64{}
	for name, c := range drop {
		p := tcp6(client6, 40000, remote6, 80)
		p.ext = c.ext
		for hook, got := range e.runAll6(p.frame()) {
			if got[0].(uint32) != TC_ACT_SHOT {
				t.Errorf("%s at %s: verdict %s, want TC_ACT_SHOT", name, hook, verdictName(got[0].(uint32)))
			}
		}
		want[c.reason] += 4
	}
	e.expectDrops(want)
}

// TestPacketIPv6Malformed: truncated fixed headers, payload lengths beyond
// the frame, truncated L4 headers are dropped as malformed at every hook,
// never passed on half-read; the whole frame of each (positive twin)
// passes.
func TestPacketIPv6Malformed(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.parseOnly()
	whole := tcp6(client6, 40000, remote6, 80).frame()
	udpWhole := udp6(client6, 40000, remote6, 53).frame()
	cases := map[string][]byte{
		"fixed header cut": whole[:14+30],
		"TCP header cut": func() []byte {
			f := append([]byte(nil), whole[:14+40+10]...)
			binary.BigEndian.PutUint16(f[14+4:], 10)
			return f
		}(),
		"payload beyond frame": func() []byte {
			f := append([]byte(nil), whole...)
			binary.BigEndian.PutUint16(f[14+4:], 2000)
			return f
		}(),
		"jumbo (payload 0)":    func() []byte { f := append([]byte(nil), whole...); binary.BigEndian.PutUint16(f[14+4:], 0); return f }(),
		"version 4 in an IPv6": func() []byte { f := append([]byte(nil), whole...); f[14] = 0x40; return f }(),
		"UDP length too long": func() []byte {
			f := append([]byte(nil), udpWhole...)
			binary.BigEndian.PutUint16(f[14+40+4:], 500)
			return f
		}(),
	}
	var runs uint64
	for name, frame := range cases {
		for hook, got := range e.runAll6(frame) {
			runs++
			if got[0].(uint32) != TC_ACT_SHOT {
				t.Errorf("%s at %s: verdict %s, want TC_ACT_SHOT", name, hook, verdictName(got[0].(uint32)))
			}
		}
	}
	if runs < 4*uint64(len(cases)-1) {
		t.Fatalf("only %d runs", runs)
	}
	e.expectDrops(map[DropReason]uint64{DropMalformed: runs})
	for hook, got := range e.runAll6(whole) {
		if got[0].(uint32) != TC_ACT_OK {
			t.Errorf("whole frame at %s: verdict %s", hook, verdictName(got[0].(uint32)))
		}
	}
	e.expectDrops(map[DropReason]uint64{DropMalformed: runs})
}
