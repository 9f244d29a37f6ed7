// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// Packet tests of the source allowlists of published ports
// (bpf/lib/allow.h): the lists are written into port_allow under an id
// that the port's target names, as Apply writes them.

// allowList writes list id with prefixes into port_allow.
func (e *packetEnv) allowList(id uint32, prefixes ...string) {
	e.t.Helper()
	for _, s := range prefixes {
		p := netip.MustParsePrefix(s)
		for k, v := range allowEntries(id, []netip.Prefix{p}) {
			e.put(e.objs.PortAllow, k, v)
		}
	}
}

// publishAllow is publish with the port's list set to allowID.
func (e *packetEnv) publishAllow(proto uint8, hostAddr netip.Addr, hostPort uint16, target netip.Addr, port uint16, id, allowID uint32) {
	e.t.Helper()
	e.put(e.objs.Published, portKey(proto, hostAddr, hostPort), bpfPortTarget{Addr: be32(target), Port: be16(port), Id: id, AllowId: allowID})
}

func (e *packetEnv) portDenied(k bpfPortKey) uint64 {
	e.t.Helper()
	var vals []uint64
	err := e.objs.PortDenied.Lookup(k, &vals)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var n uint64
	for _, v := range vals {
		n += v
	}
	return n
}

// TestPacketAllow: a port with a list lets its sources in and drops the
// others' first packet, counted for the port; a port without a list is
// open to all.
func TestPacketAllow(t *testing.T) {
	for _, proto := range []uint8{uint8(pTCP), uint8(pUDP)} {
		t.Run(fmt.Sprintf("proto %d", proto), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.allowList(5, "203.0.113.0/30", "198.51.100.0/24") // clientIP (.7) is not in the /30
			e.allowList(6, "203.0.113.7/32")
			e.publishAllow(proto, netip.Addr{}, 8080, ctrA, 80, 1, 6) // clientIP only
			e.publishAllow(proto, netip.Addr{}, 8081, ctrA, 81, 2, 5) // neither client
			e.publish(proto, netip.Addr{}, 8082, ctrA, 82, 3)         // no list: open
			p := flowPacket(layers.IPProtocol(proto), clientIP, 40001, hostIP, 8080)

			v, out := e.fromNetdev(p.frame())
			expectVerdict(t, v, TC_ACT_REDIRECT)
			d := decode(t, out)
			expectTuple(t, d, clientIP, 40001, ctrA, 80)
			checkFrame(t, out)

			denied := flowPacket(layers.IPProtocol(proto), client2IP, 40002, hostIP, 8080)
			in := denied.frame()
			v, out = e.fromNetdev(in)
			expectVerdict(t, v, TC_ACT_SHOT)
			expectUnchanged(t, in, out[:len(in)])
			e.expectNoCT(ctKey(proto, client2IP, 40002, hostIP, 8080))

			v, _ = e.fromNetdev(flowPacket(layers.IPProtocol(proto), clientIP, 40003, hostIP, 8081).frame())
			expectVerdict(t, v, TC_ACT_SHOT)

			for _, src := range []netip.Addr{clientIP, client2IP} {
				v, out = e.fromNetdev(flowPacket(layers.IPProtocol(proto), src, 40004, hostIP, 8082).frame())
				expectVerdict(t, v, TC_ACT_REDIRECT)
				expectTuple(t, decode(t, out), src, 40004, ctrA, 82)
			}

			e.expectDrops(map[DropReason]uint64{DropPortDenied: 2})
			k80, k81, k82 := portKey(proto, netip.Addr{}, 8080), portKey(proto, netip.Addr{}, 8081), portKey(proto, netip.Addr{}, 8082)
			if n := e.portDenied(k80); n != 1 {
				t.Errorf("port 8080: %d denied, want 1", n)
			}
			if n := e.portDenied(k81); n != 1 {
				t.Errorf("port 8081: %d denied, want 1", n)
			}
			if n := e.portDenied(k82); n != 0 {
				t.Errorf("port 8082 (no list): %d denied, want 0", n)
			}
			if n := e.portConns(k80); n != 1 {
				t.Errorf("port 8080: %d connections, want 1 (the denied one is not one)", n)
			}
			if n := e.portConns(k82); n != 2 {
				t.Errorf("port 8082: %d connections, want 2", n)
			}
		})
	}
}

// TestPacketAllowTwoHostPorts: two host ports mapped to one container
// port, each with its own list; an exact host address binding is judged
// by its own list too.
func TestPacketAllowTwoHostPorts(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	tcp := uint8(pTCP)
	e.allowList(1, "203.0.113.7/32")
	e.allowList(2, "203.0.113.8/32")
	e.publishAllow(tcp, netip.Addr{}, 8080, ctrA, 80, 1, 1)
	e.publishAllow(tcp, hostIP2, 8081, ctrA, 80, 2, 2)
	for i, c := range []struct {
		src  netip.Addr
		dst  netip.Addr
		port uint16
		ok   bool
	}{
		{clientIP, hostIP, 8080, true},
		{client2IP, hostIP, 8080, false},
		{client2IP, hostIP2, 8081, true},
		{clientIP, hostIP2, 8081, false},
	} {
		sport := uint16(41000 + i)
		v, out := e.fromNetdev(tcpPacket(c.src, sport, c.dst, c.port).frame())
		if !c.ok {
			expectVerdict(t, v, TC_ACT_SHOT)
			continue
		}
		expectVerdict(t, v, TC_ACT_REDIRECT)
		expectTuple(t, decode(t, out), c.src, sport, ctrA, 80)
	}
	e.expectDrops(map[DropReason]uint64{DropPortDenied: 2})
	for _, k := range []bpfPortKey{portKey(tcp, netip.Addr{}, 8080), portKey(tcp, hostIP2, 8081)} {
		if n := e.portDenied(k); n != 1 {
			t.Errorf("%+v: %d denied, want 1", k, n)
		}
		if n := e.portConns(k); n != 1 {
			t.Errorf("%+v: %d connections, want 1", k, n)
		}
	}
}

// TestPacketAllowListChange: a flow established under a list keeps going
// when the port's list changes to one that leaves its source out (the
// new list under a new id, as Apply writes it); a new flow from that
// source is dropped at once.
func TestPacketAllowListChange(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	tcp := uint8(pTCP)
	e.allowList(1, "203.0.113.0/24")
	e.publishAllow(tcp, netip.Addr{}, 8080, ctrA, 80, 1, 1)

	v, _ := e.fromNetdev(tcpPacket(clientIP, 40001, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	synack := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	v, out := e.fromContainer("vetha", synack.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT) // straight out of up0, whose egress runs next
	v, out = e.toNetdev(out)
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)

	// The new list: only client2IP.
	e.allowList(2, "203.0.113.8/32")
	e.publishAllow(tcp, netip.Addr{}, 8080, ctrA, 80, 1, 2)
	for k := range allowEntries(1, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}) {
		if err := e.objs.PortAllow.Delete(k); err != nil {
			t.Fatal(err)
		}
	}

	ack := tcpPacket(clientIP, 40001, hostIP, 8080)
	ack.syn, ack.ack, ack.seq = false, true, 1001
	v, out = e.fromNetdev(ack.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 80)
	checkFrame(t, out)

	v, _ = e.fromNetdev(tcpPacket(clientIP, 40002, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	v, out = e.fromNetdev(tcpPacket(client2IP, 40003, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), client2IP, 40003, ctrA, 80)
	e.expectDrops(map[DropReason]uint64{DropPortDenied: 1})
	if n := e.portDenied(portKey(tcp, netip.Addr{}, 8080)); n != 1 {
		t.Errorf("%d denied, want 1", n)
	}
}

// TestPacketAllowHairpin: a container reaching a published port of the
// host is judged by the port's list with its own address as the source.
func TestPacketAllowHairpin(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast path %v", fast), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: fast})
			tcp := uint8(pTCP)
			e.allowList(1, "172.17.0.2/32")  // ctrA
			e.allowList(2, "203.0.113.0/24") // the outside only
			e.publishAllow(tcp, netip.Addr{}, 8080, ctrB, 80, 1, 1)
			e.publishAllow(tcp, netip.Addr{}, 8081, ctrB, 80, 2, 2)

			v, out := e.fromContainer("vetha", tcpPacket(ctrA, 40001, hostIP, 8080).fromCtr(macA, gwMAC).frame())
			if fast {
				expectVerdict(t, v, TC_ACT_REDIRECT)
			} else {
				expectVerdict(t, v, TC_ACT_OK)
			}
			expectTuple(t, decode(t, out), ctrA, 40001, ctrB, 80)
			checkFrame(t, out)
			e.expectCT(ctKey(tcp, ctrA, 40001, hostIP, 8080), ctWant{ctrA, ctrB, 40001, 80, atFromContainer, atToContainer | flagReply, KindHairpin, e.idx["vetha"]})

			in := tcpPacket(ctrA, 40002, hostIP, 8081).fromCtr(macA, gwMAC).frame()
			v, _ = e.fromContainer("vetha", in)
			expectVerdict(t, v, TC_ACT_SHOT)
			e.expectNoCT(ctKey(tcp, ctrA, 40002, hostIP, 8081))
			// C, on another network, is not in 8080's list either.
			v, _ = e.fromContainer("vethc", tcpPacket(ctrC, 40003, hostIP, 8080).fromCtr(macC, gw2MAC).frame())
			expectVerdict(t, v, TC_ACT_SHOT)

			e.expectDrops(map[DropReason]uint64{DropPortDenied: 2})
			if n := e.portDenied(portKey(tcp, netip.Addr{}, 8081)); n != 1 {
				t.Errorf("port 8081: %d denied, want 1", n)
			}
			if n := e.portDenied(portKey(tcp, netip.Addr{}, 8080)); n != 1 {
				t.Errorf("port 8080: %d denied, want 1", n)
			}
		})
	}
}
