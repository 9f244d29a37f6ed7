// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of the source allowlists of routed networks' published
// container ports (bpf/lib/gwmode.h, gw_routed_port): routed_ports names
// a list of port_allow as published does, judged on a flow's first packet
// from the outside, from another network's container and from an
// interface that is neither an uplink nor the bridge; refusals counted in
// port_denied under the container address and port.

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/gopacket/layers"
)

func routedKey(proto uint8, ctr netip.Addr, port uint16) bpfPortKey {
	return bpfPortKey{Addr: be32(ctr), Port: be16(port), Proto: proto}
}

// TestPacketRoutedAllow: from the outside, a routed port with a list lets
// its sources in (untranslated, tracked, counted for the port) and drops
// the others' first packet, counted for the port; a port of the same
// container without a list is open to all.
func TestPacketRoutedAllow(t *testing.T) {
	for _, proto := range []layers.IPProtocol{pTCP, pUDP} {
		t.Run(proto.String(), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.setNetFlags(net1, modeFlags[GatewayRouted])
			p := uint8(proto)
			e.allowList(5, "203.0.113.8/32", "198.51.100.0/24") // client2IP, not clientIP
			e.routedPortAllow(p, ctrA, 80, 1, 5)
			e.routedPort(p, ctrA, 81, 2)

			in := flowPacket(proto, clientIP, 40001, ctrA, 80).frame()
			v, out := e.fromNetdev(in)
			expectVerdict(t, v, TC_ACT_SHOT)
			expectUnchanged(t, in, out)
			e.expectDrops(map[DropReason]uint64{DropPortDenied: 1})
			if n := len(e.ct()) + len(e.ctTable(e.objs.Ct4Syn)); n != 0 {
				t.Errorf("%d conntrack entries after a denied packet, want none:\n%s", n, e.ctDump())
			}

			for _, c := range []struct {
				src  netip.Addr
				port uint16
			}{{client2IP, 80}, {clientIP, 81}} {
				v, out = e.fromNetdev(flowPacket(proto, c.src, 40002, ctrA, c.port).frame())
				expectVerdict(t, v, TC_ACT_REDIRECT)
				checkFrame(t, out)
				expectTuple(t, decode(t, out), c.src, 40002, ctrA, c.port)
			}
			e.expectDrops(map[DropReason]uint64{DropPortDenied: 1})
			if n := e.portDenied(routedKey(p, ctrA, 80)); n != 1 {
				t.Errorf("port 80: %d denied, want 1", n)
			}
			for _, port := range []uint16{80, 81} {
				if n := e.portDenied(routedKey(p, ctrA, port)); port == 81 && n != 0 {
					t.Errorf("port 81: %d denied, want 0", n)
				}
				if n := e.portConns(routedKey(p, ctrA, port)); n != 1 {
					t.Errorf("port %d: %d connections, want 1", port, n)
				}
			}
			if n := e.event(EventCTNewDirect); n != 2 {
				t.Errorf("ct_new_direct = %d, want 2", n)
			}
		})
	}
}

// TestPacketRoutedAllowEstablished: a flow let in keeps going when the
// port's list changes to one that leaves its source out (the new list
// under a new id, as Apply writes it); a new flow from that source is
// dropped at once, and one from the new list's source let in.
func TestPacketRoutedAllowEstablished(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	e.setNetFlags(net1, modeFlags[GatewayRouted])
	tcp := uint8(pTCP)
	e.allowList(1, "203.0.113.7/32") // clientIP
	e.routedPortAllow(tcp, ctrA, 80, 1, 1)

	v, _ := e.fromNetdev(tcpPacket(clientIP, 40001, ctrA, 80).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	synack := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	v, out := e.fromContainer("vetha", synack.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT) // straight out of up0, whose egress runs next
	v, out = e.toNetdev(out)
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), ctrA, 80, clientIP, 40001)

	// The new list: client2IP only.
	e.allowList(2, "203.0.113.8/32")
	e.routedPortAllow(tcp, ctrA, 80, 1, 2)
	for k := range allowEntries(1, []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}) {
		if err := e.objs.PortAllow.Delete(k); err != nil {
			t.Fatal(err)
		}
	}

	ack := tcpPacket(clientIP, 40001, ctrA, 80)
	ack.syn, ack.ack, ack.seq = false, true, 1001
	v, out = e.fromNetdev(ack.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 80)
	checkFrame(t, out)
	e.expectCT(ctKey(tcp, clientIP, 40001, ctrA, 80), ctWant{clientIP, ctrA, 40001, 80, atFromNetdev, atToNetdev | flagReply, KindRouted, e.idx["vetha"]})

	v, _ = e.fromNetdev(tcpPacket(clientIP, 40002, ctrA, 80).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	v, out = e.fromNetdev(tcpPacket(client2IP, 40003, ctrA, 80).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), client2IP, 40003, ctrA, 80)
	e.expectDrops(map[DropReason]uint64{DropPortDenied: 1})
	if n := e.portDenied(routedKey(tcp, ctrA, 80)); n != 1 {
		t.Errorf("%d denied, want 1", n)
	}
}

// TestPacketRoutedAllowFromOtherNetwork: a container of another network
// reaching a routed network's published port is judged by the port's
// list with its own address as the source, as a hairpin is.
func TestPacketRoutedAllowFromOtherNetwork(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	e.setNetFlags(net2, modeFlags[GatewayRouted])
	tcp := uint8(pTCP)
	e.allowList(1, "172.17.0.3/32") // ctrB, not ctrA
	e.routedPortAllow(tcp, ctrC, 80, 1, 1)

	v, _ := e.fromContainer("vetha", fromA(tcpPacket(ctrA, 40001, ctrC, 80)).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectNoCT(ctKey(tcp, ctrA, 40001, ctrC, 80))
	v, out := e.fromContainer("vethb", fromB(tcpPacket(ctrB, 40002, ctrC, 80)).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), ctrB, 40002, ctrC, 80)
	e.expectCT(ctKey(tcp, ctrB, 40002, ctrC, 80), ctWant{ctrB, ctrC, 40002, 80, atFromContainer, atFromContainer | flagReply, KindRouted, e.idx["vethb"]})
	e.expectDrops(map[DropReason]uint64{DropPortDenied: 1})
	if n := e.portDenied(routedKey(tcp, ctrC, 80)); n != 1 {
		t.Errorf("%d denied, want 1", n)
	}
	if n := e.portConns(routedKey(tcp, ctrC, 80)); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestPacketRoutedAllowOtherInterface: from an interface that is neither
// an uplink nor the bridge, which to_container judges, the list applies
// too.
func TestPacketRoutedAllowOtherInterface(t *testing.T) {
	allowed := netip.MustParseAddr("10.99.0.5") // behind other0, not an uplink
	denied := netip.MustParseAddr("10.99.0.6")
	for _, c := range []struct {
		src     netip.Addr
		verdict uint32
	}{{allowed, TC_ACT_OK}, {denied, TC_ACT_SHOT}} {
		t.Run(c.src.String(), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.setNetFlags(net2, netFRouted)
			e.allowList(3, "10.99.0.5/32")
			e.routedPortAllow(uint8(pTCP), ctrC, 80, 1, 3)
			v, _ := e.toContainerFrom("vethc", "other0", tcpPacket(c.src, 40000, ctrC, 80).frame())
			expectVerdict(t, v, c.verdict)
			want := map[DropReason]uint64{}
			if c.verdict == TC_ACT_SHOT {
				want[DropPortDenied] = 1
			}
			e.expectDrops(want)
		})
	}
}

// TestRoutedAllowUnion: the bindings of one routed container port share
// its entry; its list is the union of theirs, and a binding without a
// list opens it to every source. Other container ports, and a nat
// network's bindings, keep their own.
func TestRoutedAllowUnion(t *testing.T) {
	nets := []Network{
		{Name: "routed", Subnet: netip.MustParsePrefix("172.30.0.0/24"), GatewayMode: GatewayRouted},
		{Name: "nat", Subnet: netip.MustParsePrefix("172.31.0.0/24"), Masquerade: true},
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	r0, n0 := netip.MustParseAddr("172.30.0.2"), netip.MustParseAddr("172.31.0.2")
	pm := func(host uint16, ctr netip.Addr, port uint16, allow ...string) PortMapping {
		return PortMapping{Proto: TCP, HostPort: host, ContainerIP: ctr, ContainerPort: port, Allow: pfx(allow...)}
	}
	s := State{Networks: nets, Ports: []PortMapping{
		// 80: two lists, a union.
		pm(8080, r0, 80, "10.0.0.0/24"),
		pm(8081, r0, 80, "192.0.2.7/32", "10.0.0.0/24"),
		// 81: one binding without a list opens it.
		pm(8082, r0, 81, "10.0.0.0/24"),
		pm(8083, r0, 81),
		// 82: one list.
		pm(0, r0, 82, "198.51.100.0/24"),
		// A nat network's binding of a host port a routed binding
		// names too (which maps nothing): not a routed port, and
		// without a list of its own, open.
		pm(8080, n0, 80),
	}}
	got := routedAllow(s)
	want := map[bpfPortKey][]netip.Prefix{
		routedKey(uint8(TCP), r0, 80): pfx("10.0.0.0/24", "192.0.2.7/32"),
		routedKey(uint8(TCP), r0, 81): nil,
		routedKey(uint8(TCP), r0, 82): pfx("198.51.100.0/24"),
	}
	if len(got) != len(want) {
		t.Errorf("%d routed ports, want %d: %v", len(got), len(want), got)
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("port %d: no entry", port16(k.Port))
			continue
		}
		if !slices.Equal(g, w) {
			t.Errorf("port %d: list %v, want %v", port16(k.Port), g, w)
		}
	}

	// assignAllow gives the union one list, names it in the routed entry
	// and counts its use; the open port names none; the nat binding
	// gets no routed binding's list.
	d := &EBPF{}
	ports := map[bpfPortKey]bpfPortTarget{d.portKey(s.Ports[5]): {Addr: be32(n0), Port: be16(80)}}
	routed := map[bpfPortKey]bpfPortTarget{}
	for k := range want {
		routed[k] = bpfPortTarget{Addr: k.Addr, Port: k.Port}
	}
	l := d.assignAllow(newAllowLists(), s, ports, routed, nil, nil)
	for k, w := range want {
		id := routed[k].AllowId
		if (id == 0) != (w == nil) {
			t.Errorf("port %d: list id %d, want a list: %v", port16(k.Port), id, w != nil)
			continue
		}
		if id != 0 && !slices.Equal(l.prefixes[id], w) {
			t.Errorf("port %d: list %d holds %v, want %v", port16(k.Port), id, l.prefixes[id], w)
		}
	}
	if id := ports[d.portKey(s.Ports[5])].AllowId; id != 0 {
		t.Errorf("the nat binding of port 8080 names list %d %v, want none", id, l.prefixes[id])
	}
	if refs := allowRefs(ports, routed); fmt.Sprint(refs) != fmt.Sprint(l.refs) {
		t.Errorf("refs %v, read back as %v", l.refs, refs)
	}
}

// TestBindingOfRouted: the counters of a routed network's port are read
// under the container's address and port, those of a nat network's under
// the host binding.
func TestBindingOfRouted(t *testing.T) {
	nets := []Network{
		{Name: "routed", Subnet: netip.MustParsePrefix("172.30.0.0/24"), GatewayMode: GatewayRouted},
		{Name: "nat", Subnet: netip.MustParsePrefix("172.31.0.0/24"), Masquerade: true},
	}
	routed := PortMapping{Proto: TCP, HostPort: 8080, ContainerIP: netip.MustParseAddr("172.30.0.2"), ContainerPort: 80}
	nat := PortMapping{Proto: UDP, HostPort: 5353, ContainerIP: netip.MustParseAddr("172.31.0.2"), ContainerPort: 53}
	if got, want := BindingOf(nets, routed), (PortBinding{Proto: TCP, HostIP: routed.ContainerIP, HostPort: 80}); got != want {
		t.Errorf("routed: %+v, want %+v", got, want)
	}
	if got, want := BindingOf(nets, nat), (PortBinding{Proto: UDP, HostIP: netip.IPv4Unspecified(), HostPort: 5353}); got != want {
		t.Errorf("nat: %+v, want %+v", got, want)
	}
}
