// SPDX-License-Identifier: Apache-2.0

package datapath

// The NAT64 part of the fuzz targets (fuzz_test.go): seeds for the
// translated ports of fuzzTopology, the base flows kept alive, and what
// must hold of a frame that changed family.

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// isNAT64Map tells a NAT64 flow table among the state maps.
func isNAT64Map(m *ebpf.Map) bool { return strings.Contains(m.String(), "(nat64_") }

// fuzzNAT64Forever makes the NAT64 base flows live until deadline.
func fuzzNAT64Forever(o *bpfObjects, deadline uint64) error {
	fwd, err := readMap[bpfCt6Key, bpfNat64FwdEntry](o.Nat64Fwd)
	if err != nil {
		return err
	}
	for k, v := range fwd {
		v.Expires = deadline
		if err := o.Nat64Fwd.Put(k, v); err != nil {
			return err
		}
	}
	rev, err := readMap[bpfCtKey, bpfNat64RevEntry](o.Nat64Rev)
	if err != nil {
		return err
	}
	for k, v := range rev {
		v.Expires = deadline
		if err := o.Nat64Rev.Put(k, v); err != nil {
			return err
		}
	}
	if len(fwd) == 0 || len(rev) == 0 {
		return errFuzzNoNAT64
	}
	for k := range rev {
		if addrFrom(k.Daddr) != fuzzNAT64Pool() {
			return fuzzError("a NAT64 base flow is on pool address " + addrFrom(k.Daddr).String() + ", not the seeds' " + fuzzNAT64Pool().String())
		}
	}
	return nil
}

type fuzzError string

func (e fuzzError) Error() string { return string(e) }

const errFuzzNoNAT64 = fuzzError("the NAT64 base flows opened no entry")

// fuzzSeedsNAT64: to the NAT64 ports (new and base flows, with extension
// headers, a first fragment, a spent hop limit, cut short), and the
// containers' answers of the base flows (with a checksum, without one,
// with IP options), so that both translations have seeds.
func fuzzSeedsNAT64() [][]byte {
	// The base flows' pool address is the one nat64_hash picks for
	// client6 (fuzzNAT64Pool).
	pool := fuzzNAT64Pool()
	ctr := func(p testPacket, mac []byte) []byte { return p.fromCtr(mac, gwMAC).frame() }
	synack := tcpPacket(ctrA, 80, pool, 50064)
	synack.ack = true
	noSum := udpPacket(ctrB, 53, pool, 50065)
	noSum.zeroUDPChecksum = true
	opts := synack
	opts.options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	ext := tcp6(client6, 50066, host6, 8064)
	ext.ext = []v6Ext{extOpts(60)}
	frag := udp6(client6, 50067, host6, 5364)
	frag.ext = []v6Ext{extFrag(0, true, 9)}
	spent := tcp6(client6, 50068, host6, 8064)
	spent.hlim = 1
	cut := tcp6(client6, 50069, host6, 8064).frame()
	return [][]byte{
		tcp6(client6, 50064, host6, 8064).frame(),
		tcp6(client6b, 50070, host6, 8064).frame(),
		udp6(client6, 50065, host6, 5364).frame(),
		ext.frame(), frag.frame(), spent.frame(), cut[:14+40+10],
		ctr(synack, macA), ctr(udpPacket(ctrB, 53, pool, 50065), macB), ctr(noSum, macB), ctr(opts, macA),
	}
}

// fuzzNAT64Pool is the pool address nat64_hash (bpf/lib/nat64.h) gives
// client6 first.
func fuzzNAT64Pool() netip.Addr {
	h := uint32(0x9e3779b1)
	b := client6.As16()
	for i := 0; i < 4; i++ {
		h ^= binary.NativeEndian.Uint32(b[4*i:])
		h *= 0x85ebca6b
		h ^= h >> 15
	}
	span := uint32(1<<(32-DefaultNAT64Pool.Bits())) - 2
	base := binary.BigEndian.Uint32(DefaultNAT64Pool.Addr().AsSlice())
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], base|(h%span+1))
	return netip.AddrFrom4(out)
}

// checkNAT64Frame checks a frame that changed family, which only NAT64
// does: IPv6 to an IPv4 of 20 bytes less, or IPv4 to an IPv6 of 20 more,
// the out frame well-formed, its L4 checksum right exactly when the in
// frame's was, and the L4 header past the ports and the payload as they
// were (but for the checksum).
func checkNAT64Frame(t testing.TB, where string, r tcResult) {
	t.Helper()
	in, out := r.in, r.out
	if r.verdict == TC_ACT_SHOT {
		t.Errorf("%s: dropped, yet changed family", where)
	}
	v6in := binary.BigEndian.Uint16(in[12:]) == uint16(layers.EthernetTypeIPv6)
	inL3, outL3 := 40, 20
	if !v6in {
		inL3, outL3 = 20, 40
	}
	if len(out) != len(in)-inL3+outL3 || len(in) < 14+inL3+8 {
		t.Errorf("%s: NAT64 of %d bytes gave %d:\n in  %x\n out %x", where, len(in), len(out), in, out)
		return
	}
	var inOK, outOK bool
	var proto uint8
	if v6in {
		ip := in[14:]
		end := 40 + int(binary.BigEndian.Uint16(ip[4:]))
		proto = ip[6]
		inOK = end <= len(ip) && l4Sum6(ip[8:24], ip[24:40], proto, ip[40:end]) == 0xffff
		op := parseFuzzFrame(out)
		if op.class != frameOK {
			t.Errorf("%s: NAT64 gave a %s IPv4 frame (%s):\n in  %x\n out %x", where, op.class, op.why, in, out)
			return
		}
		o := out[14:]
		if s := fold(onesSum(o[:20], 0)); s != 0xffff {
			t.Errorf("%s: NAT64 gave a bad IPv4 header checksum:\n out %x", where, out)
		}
		outOK = l4Sum(o, o[20:binary.BigEndian.Uint16(o[2:])]) == 0xffff
	} else {
		ip := in[14:]
		proto = ip[9]
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		inOK = tot <= len(ip) && l4Sum(ip, ip[20:tot]) == 0xffff
		o := out[14:]
		end := 40 + int(binary.BigEndian.Uint16(o[4:]))
		if binary.BigEndian.Uint16(out[12:]) != uint16(layers.EthernetTypeIPv6) || o[0]>>4 != 6 || end > len(o) || o[6] != proto {
			t.Errorf("%s: NAT64 gave no well-formed IPv6 frame:\n in  %x\n out %x", where, in, out)
			return
		}
		outOK = l4Sum6(o[8:24], o[24:40], proto, o[40:end]) == 0xffff
	}
	if inOK != outOK {
		t.Errorf("%s: L4 checksum right %v in, %v out:\n in  %x\n out %x", where, inOK, outOK, in, out)
	}
	csum := 16 // TCP's checksum
	if proto == uint8(layers.IPProtocolUDP) {
		csum = 6
	}
	a, b := bytes.Clone(in[14+inL3+4:]), bytes.Clone(out[14+outL3+4:])
	a[csum-4], a[csum-3], b[csum-4], b[csum-3] = 0, 0, 0, 0
	if !bytes.Equal(a, b) {
		t.Errorf("%s: NAT64 changed the L4 header past the ports or the payload:\n in  %x\n out %x", where, in, out)
	}
}
