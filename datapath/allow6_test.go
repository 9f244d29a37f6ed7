// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// TestParseAllow: both families, a bare address as a host prefix, and
// each malformed item refused with what is wrong with it.
func TestParseAllow(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/8,fd00:1::/64":               "10.0.0.0/8,fd00:1::/64",
		" 192.0.2.7 , 2001:db8::7 ":            "192.0.2.7/32,2001:db8::7/128",
		"fd00::/8":                             "fd00::/8",
		"::/0":                                 "::/0",
		"10.0.0.0/8,fd00:1::/64,10.0.0.0/8":    "10.0.0.0/8,fd00:1::/64,10.0.0.0/8",
		"2001:db8:0:0:0:0:0:1/128,10.1.2.3/32": "2001:db8::1/128,10.1.2.3/32",
	} {
		got, err := ParseAllow(in, ",")
		if err != nil {
			t.Errorf("ParseAllow(%q): %v", in, err)
			continue
		}
		if s := FormatAllow(got); s != want {
			t.Errorf("ParseAllow(%q) = %s, want %s", in, s, want)
		}
	}
	for in, want := range map[string]string{
		"":                     "empty allowlist",
		"fd00::/64,":           "not a CIDR prefix",
		"fd00::/129":           "not a CIDR prefix",
		"fd00:::1/64":          "not a CIDR prefix",
		"[fd00::1]":            "not a CIDR prefix",
		"::ffff:10.0.0.0/104":  "IPv4-mapped",
		"::ffff:10.0.0.1":      "IPv4-mapped",
		"fe80::1%eth0":         "zone",
		"fe80::1%eth0/64":      "zone",
		"10.0.0.0/8,fd00::/8x": "not a CIDR prefix",
	} {
		got, err := ParseAllow(in, ",")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAllow(%q) = %v, %v; want an error with %q", in, got, err, want)
		}
	}
}

// TestAllowEntriesByFamily: a list's IPv4 prefixes go to port_allow and
// its IPv6 ones to port_allow6 under the same id; a list of one family
// has no entry in the other trie (so it keeps that family out), and both
// are read back as the one list.
func TestAllowEntriesByFamily(t *testing.T) {
	mixed := canonAllow([]netip.Prefix{netip.MustParsePrefix("fd00:1::/64"), netip.MustParsePrefix("10.0.0.0/8")})
	only4 := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	only6 := []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
	if v4, v6 := allowEntries(1, mixed), allowEntries6(1, mixed); len(v4) != 1 || len(v6) != 1 {
		t.Fatalf("mixed list: %d IPv4 and %d IPv6 entries, want 1 and 1", len(v4), len(v6))
	}
	for k := range allowEntries6(1, mixed) {
		if k.List != 1 || k.Prefixlen != 32+64 || addr6From(k.Addr) != netip.MustParseAddr("fd00:1::") {
			t.Errorf("IPv6 entry %+v, want list 1, fd00:1::/64", k)
		}
	}
	if n := len(allowEntries6(2, only4)); n != 0 {
		t.Errorf("IPv4-only list: %d IPv6 entries, want none", n)
	}
	if n := len(allowEntries(3, only6)); n != 0 {
		t.Errorf("IPv6-only list: %d IPv4 entries, want none", n)
	}
	l := newAllowLists()
	for _, ps := range [][]netip.Prefix{mixed, only4, only6} {
		l.id(canonAllow(ps), newAllowLists())
	}
	v4, v6 := l.entries()
	if len(v4) != 2 || len(v6) != 2 {
		t.Errorf("three lists: %d IPv4 and %d IPv6 entries, want 2 and 2", len(v4), len(v6))
	}
	ids := map[string]uint32{}
	for k, id := range l.ids {
		ids[k] = id
	}
	if id := ids[allowKeyOf(mixed)]; id == 0 || !slices.Equal(l.prefixes[id], mixed) {
		t.Errorf("mixed list: id %d holds %v", id, l.prefixes[id])
	}
}

// Packet tests of IPv6 allowlists and of the unassured IPv6 table
// (bpf/lib/allow.h port6_allowed, bpf/lib/conntrack6.h ct6_syn).

// allowListBoth writes list id with prefixes of either family into
// port_allow and port_allow6, as Apply does.
func (e *packetEnv) allowListBoth(id uint32, prefixes ...string) {
	e.t.Helper()
	ps := make([]netip.Prefix, len(prefixes))
	for i, s := range prefixes {
		ps[i] = netip.MustParsePrefix(s)
	}
	for k, v := range allowEntries(id, ps) {
		e.put(e.objs.PortAllow, k, v)
	}
	for k, v := range allowEntries6(id, ps) {
		e.put(e.objs.PortAllow6, k, v)
	}
}

// publish6Allow is publish6 behind list allowID.
func (e *packetEnv) publish6Allow(proto uint8, hostAddr netip.Addr, hostPort uint16, target netip.Addr, port uint16, id, allowID uint32) {
	e.t.Helper()
	e.put(e.objs.Published6, bpfPort6Key{Addr: be128(hostAddr), Port: be16(hostPort), Proto: proto},
		bpfPort6Target{Addr: be128(target), Port: be16(port), Id: id, AllowId: allowID})
}

// portCounts6 reads the per-port counters of the datapath as its Go side
// does (PortConnections, PortDenied), IPv6 bindings included.
func (e *packetEnv) portCounts6() (conns, denied map[PortBinding]uint64) {
	e.t.Helper()
	d := &EBPF{objs: e.objs}
	conns, err := d.PortConnections()
	if err != nil {
		e.t.Fatal(err)
	}
	if denied, err = d.PortDenied(); err != nil {
		e.t.Fatal(err)
	}
	return conns, denied
}

// TestPacketIPv6Allow: an IPv6 port behind a list lets its IPv6 sources
// in and drops the others' first packet, counted for the port (drop
// reason and the port's denied counter); a list of IPv4 prefixes only
// keeps an IPv6 port closed, a list of IPv6 prefixes only an IPv4 one,
// while the mixed list opens both (the positive twins); a port without a
// list is open. TCP and UDP.
func TestPacketIPv6Allow(t *testing.T) {
	for _, proto := range []uint8{uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)} {
		t.Run(fmt.Sprintf("proto %d", proto), func(t *testing.T) {
			e := newPacketEnv(t, Options{})
			e.installTopology6()
			pkt := func(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) packet6 {
				if proto == uint8(layers.IPProtocolUDP) {
					return udp6(src, sport, dst, dport)
				}
				return tcp6(src, sport, dst, dport)
			}
			other6 := netip.MustParseAddr("2001:db8:98::9")
			e.allowListBoth(5, "2001:db8:99::/64", "198.51.100.0/24") // client6 in, other6 not
			e.allowListBoth(6, "203.0.113.0/24")                      // IPv4 only
			e.allowListBoth(7, "2001:db8:99::7/128")                  // IPv6 only
			e.publish6Allow(proto, netip.Addr{}, 8080, ctrA6, 80, 1, 5)
			e.publish6Allow(proto, netip.Addr{}, 8081, ctrA6, 81, 2, 6)
			e.publish6Allow(proto, host6b, 8082, ctrB6, 82, 3, 0)
			e.publishAllow(proto, netip.Addr{}, 9080, ctrA, 80, 4, 7) // IPv4 port, IPv6-only list
			e.publishAllow(proto, netip.Addr{}, 9081, ctrA, 81, 5, 5) // IPv4 port, mixed list

			// In the list: translated, counted as a connection.
			v, out := e.fromNetdev(pkt(client6, 40000, host6, 8080).frame())
			expectVerdict(t, v, TC_ACT_OK)
			expectTuple6(t, "listed source", parse6Frame(t, "listed", out), client6, 40000, ctrA6, 80)
			// Not in it: dropped, nothing tracked.
			v, _ = e.fromNetdev(pkt(other6, 40001, host6, 8080).frame())
			expectVerdict(t, v, TC_ACT_SHOT)
			// An IPv4-only list lets no IPv6 source in.
			v, _ = e.fromNetdev(pkt(client6, 40002, host6, 8081).frame())
			expectVerdict(t, v, TC_ACT_SHOT)
			// No list: open to all.
			v, out = e.fromNetdev(pkt(other6, 40003, host6b, 8082).frame())
			expectVerdict(t, v, TC_ACT_OK)
			expectTuple6(t, "open port", parse6Frame(t, "open", out), other6, 40003, ctrB6, 82)
			// IPv4: an IPv6-only list lets no IPv4 source in; the mixed
			// list lets its IPv4 prefix's in.
			in4 := tcpPacket(netip.MustParseAddr("198.51.100.9"), 40004, hostIP, 9080)
			in4.proto = layers.IPProtocol(proto)
			v, _ = e.fromNetdev(in4.frame())
			expectVerdict(t, v, TC_ACT_SHOT)
			in4.dport = 9081
			v, out = e.fromNetdev(in4.frame())
			expectVerdict(t, v, TC_ACT_OK) // no fast path in this setup
			expectTuple(t, decode(t, out), in4.src, 40004, ctrA, 81)

			for _, k := range []bpfCt6Key{ct6Key(proto, other6, 40001, host6, 8080), ct6Key(proto, client6, 40002, host6, 8081)} {
				for _, m := range []*ebpf.Map{e.objs.Ct6, e.objs.Ct6Syn} {
					if _, ok := e.ct6In(m)[k]; ok {
						t.Errorf("a denied flow is tracked in %s", m)
					}
				}
			}
			if _, ok := e.ct6In(e.objs.Ct6Syn)[ct6Key(proto, client6, 40000, host6, 8080)]; !ok {
				t.Errorf("the listed flow is not tracked in ct6_syn")
			}
			e.expectDrops(map[DropReason]uint64{DropPortDenied: 3})
			conns, denied := e.portCounts6()
			b := func(a netip.Addr, port uint16) PortBinding {
				return PortBinding{Proto: Proto(proto), HostIP: a, HostPort: port}
			}
			any6, any4 := netip.IPv6Unspecified(), netip.IPv4Unspecified()
			for bind, want := range map[PortBinding][2]uint64{
				b(any6, 8080): {1, 1}, b(any6, 8081): {0, 1}, b(host6b, 8082): {1, 0},
				b(any4, 9080): {0, 1}, b(any4, 9081): {1, 0},
			} {
				if conns[bind] != want[0] || denied[bind] != want[1] {
					t.Errorf("%v: %d connections, %d denied; want %d, %d", bind, conns[bind], denied[bind], want[0], want[1])
				}
			}
		})
	}
}

// TestPacketIPv6AllowHairpin: a container reaching an IPv6 published port
// of the host through the hairpin is judged by the port's list, as over
// IPv4: a list naming its network lets it in, one that does not drops it.
func TestPacketIPv6AllowHairpin(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.allowListBoth(1, "fd00:17::/64")
	e.allowListBoth(2, "2001:db8:99::/64")
	e.publish6Allow(tcp, netip.Addr{}, 8080, ctrB6, 80, 1, 1)
	e.publish6Allow(tcp, netip.Addr{}, 8081, ctrB6, 81, 2, 2)

	v, o := e.fromContainer("vetha", tcp6(ctrA6, 40000, host6, 8080).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "listed hairpin", parse6Frame(t, "hairpin", o), ctrA6, 40000, ctrB6, 80)
	v, _ = e.fromContainer("vetha", tcp6(ctrA6, 40001, host6, 8081).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropPortDenied: 1})
	conns, denied := e.portCounts6()
	any6 := netip.IPv6Unspecified()
	if b := (PortBinding{TCP, any6, 8080}); conns[b] != 1 || denied[b] != 0 {
		t.Errorf("%v: %d connections, %d denied; want 1, 0", b, conns[b], denied[b])
	}
	if b := (PortBinding{TCP, any6, 8081}); conns[b] != 0 || denied[b] != 1 {
		t.Errorf("%v: %d connections, %d denied; want 0, 1", b, conns[b], denied[b])
	}
}

// TestPacketIPv6FloodHandshake: an IPv6 SYN to a published port makes
// entries in ct6_syn only, the container's SYN|ACK is translated through
// them, and the client's ACK moves both halves to ct6.
func TestPacketIPv6FloodHandshake(t *testing.T) {
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA6, 80, 1)
	orig, reply := ct6Key(tcp, client6, 40000, host6, 8080), ct6Key(tcp, ctrA6, 80, client6, 40000)

	syn := tcp6(client6, 40000, host6, 8080)
	v, out := e.fromNetdev(syn.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "SYN", parse6Frame(t, "SYN", out), client6, 40000, ctrA6, 80)
	if n, m := len(e.ct6()), len(e.ct6In(e.objs.Ct6Syn)); n != 0 || m != 2 {
		t.Fatalf("SYN: %d entries in ct6, %d in ct6_syn; want 0, 2", n, m)
	}
	if f := e.ct6In(e.objs.Ct6Syn)[orig].Flags; f&flagUnassured == 0 {
		t.Errorf("SYN: entry flags %#x, want unassured", f)
	}
	if n := e.event(EventCTHalfOpen); n != 1 {
		t.Errorf("ct_half_open = %d, want 1", n)
	}
	dp := &EBPF{objs: e.objs}
	if n, c, err := dp.HalfOpen6Usage(); err != nil || n != 2 || c != int(e.objs.Ct6Syn.MaxEntries()) {
		t.Errorf("HalfOpen6Usage = %d / %d, %v; want 2 / %d", n, c, err, e.objs.Ct6Syn.MaxEntries())
	}
	synAck := tcp6(ctrA6, 80, client6, 40000)
	synAck.ack = true
	v, out = e.toNetdev(synAck.fromCtr(upMAC, routerMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "SYN|ACK", parse6Frame(t, "SYN|ACK", out), host6, 8080, client6, 40000)
	if n := len(e.ct6()); n != 0 {
		t.Fatalf("SYN|ACK: %d entries in ct6, want none", n)
	}

	ack := syn
	ack.syn, ack.ack = false, true
	v, out = e.fromNetdev(ack.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "ACK", parse6Frame(t, "ACK", out), client6, 40000, ctrA6, 80)
	if n := len(e.ct6In(e.objs.Ct6Syn)); n != 0 {
		t.Errorf("ACK: %d entries left in ct6_syn, want none", n)
	}
	ct := e.ct6()
	for _, k := range []bpfCt6Key{orig, reply} {
		ent, ok := ct[k]
		if !ok {
			t.Fatalf("ACK: a half is not in ct6")
		}
		if ent.Flags&flagUnassured != 0 {
			t.Errorf("ACK: an entry of ct6 is still unassured (%#x)", ent.Flags)
		}
	}
	if n := e.event(EventCTPromoted); n != 1 {
		t.Errorf("ct_promoted = %d, want 1", n)
	}
	if n, _, err := dp.CT6Usage(); err != nil || n != 2 {
		t.Errorf("CT6Usage = %d entries, %v; want 2", n, err)
	}
	data := tcp6(ctrA6, 80, client6, 40000)
	data.syn, data.ack = false, true
	v, out = e.toNetdev(data.fromCtr(upMAC, routerMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "data from ct6", parse6Frame(t, "data", out), host6, 8080, client6, 40000)
	entries, err := dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, ce := range entries {
		if ce.Key.Src.Addr() == client6 && ce.Unassured {
			t.Errorf("Conntrack lists %v as unassured after the ACK", ce.Key)
		}
	}
	e.expectDrops(nil)
}

// TestPacketIPv6FloodKeepsEstablished: random-source IPv6 SYNs at a
// published port, ten times the capacity of ct6_syn, evict only unassured
// flows: an established IPv6 flow keeps its ct6 entries and is still
// translated both ways, and ct6 holds nothing of the flood.
func TestPacketIPv6FloodKeepsEstablished(t *testing.T) {
	const halfOpen, flood = 128, 1280
	e := newPacketEnv(t, Options{CTSize: 1024, HalfOpenSize: halfOpen})
	e.installTopology6()
	tcp := uint8(layers.IPProtocolTCP)
	e.publish6(tcp, netip.Addr{}, 8080, ctrA6, 80, 1)
	if got := e.objs.Ct6Syn.MaxEntries(); got != halfOpen {
		t.Fatalf("ct6_syn holds %d entries, want %d", got, halfOpen)
	}
	syn := tcp6(client6, 40000, host6, 8080)
	expectRun := func(what string, v uint32, out []byte, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
		t.Helper()
		expectVerdict(t, v, TC_ACT_OK)
		expectTuple6(t, what, parse6Frame(t, what, out), src, sport, dst, dport)
	}
	v, out := e.fromNetdev(syn.frame())
	expectRun("SYN", v, out, client6, 40000, ctrA6, 80)
	synAck := tcp6(ctrA6, 80, client6, 40000)
	synAck.ack = true
	v, out = e.toNetdev(synAck.fromCtr(upMAC, routerMAC).frame())
	expectRun("SYN|ACK", v, out, host6, 8080, client6, 40000)
	ack := syn
	ack.syn, ack.ack = false, true
	v, out = e.fromNetdev(ack.frame())
	expectRun("ACK", v, out, client6, 40000, ctrA6, 80)
	established := e.ct6()
	if len(established) != 2 {
		t.Fatalf("%d entries in ct6 before the flood, want 2", len(established))
	}

	src := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xf1, 0x00, 14: byte(i >> 8), 15: byte(i)})
	}
	for i := range flood {
		v, _ := e.fromNetdev(tcp6(src(i), uint16(1024+i), host6, 8080).frame())
		if v != TC_ACT_OK {
			t.Fatalf("flood SYN %d: verdict %s, want TC_ACT_OK", i, verdictName(v))
		}
	}
	if n := len(e.ct6In(e.objs.Ct6Syn)); n == 0 || n > halfOpen {
		t.Errorf("%d entries in ct6_syn, want some, at most its %d", n, halfOpen)
	}
	after := e.ct6()
	if len(after) != len(established) {
		t.Errorf("%d entries in ct6 after the flood, want the %d established ones", len(after), len(established))
	}
	for k := range established {
		if _, ok := after[k]; !ok {
			t.Errorf("the flood evicted [%s]:%d from ct6", addr6From(k.Saddr), port16(k.Sport))
		}
	}
	v, out = e.fromNetdev(ack.frame())
	expectRun("established, in", v, out, client6, 40000, ctrA6, 80)
	data := tcp6(ctrA6, 80, client6, 40000)
	data.syn, data.ack = false, true
	v, out = e.toNetdev(data.fromCtr(upMAC, routerMAC).frame())
	expectRun("established, out", v, out, host6, 8080, client6, 40000)
	// The flood's last flow is still unassured and answered.
	last := tcp6(ctrA6, 80, src(flood-1), uint16(1024+flood-1))
	last.ack = true
	v, out = e.toNetdev(last.fromCtr(upMAC, routerMAC).frame())
	expectRun("last flood SYN|ACK", v, out, host6, 8080, src(flood-1), uint16(1024+flood-1))
	e.expectDrops(nil)
}

// TestBindingOfIPv6: an IPv6 mapping without a host address counts under
// ::, where port_conns6 and port_denied6 have it, not under 0.0.0.0 with
// the IPv4 binding of the same port (Docker's -p 8080:80 makes both); one
// with a host address under that address.
func TestBindingOfIPv6(t *testing.T) {
	nets := []Network{{Name: "dual", Subnet: netip.MustParsePrefix("172.31.0.0/24"), Subnet6: netip.MustParsePrefix("fd00:31::/64"), Masquerade: true}}
	c4, c6 := netip.MustParseAddr("172.31.0.2"), netip.MustParseAddr("fd00:31::2")
	for _, tc := range []struct {
		m    PortMapping
		want PortBinding
	}{
		{PortMapping{Proto: TCP, HostPort: 8080, ContainerIP: c6, ContainerPort: 80}, PortBinding{TCP, netip.IPv6Unspecified(), 8080}},
		{PortMapping{Proto: TCP, HostPort: 8080, ContainerIP: c4, ContainerPort: 80}, PortBinding{TCP, netip.IPv4Unspecified(), 8080}},
		{PortMapping{Proto: UDP, HostIP: netip.MustParseAddr("2001:db8::1"), HostPort: 53, ContainerIP: c6, ContainerPort: 53},
			PortBinding{UDP, netip.MustParseAddr("2001:db8::1"), 53}},
	} {
		if got := BindingOf(nets, tc.m); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.m, got, tc.want)
		}
	}
}

// TestAssignAllowIPv6: an IPv6 port of a nat network gets its list's id in
// its published6 target, the id shared with the IPv4 port of the same
// list; an IPv6 port of a network routed for IPv6 (and nat for IPv4) gets
// none and is no routed IPv4 entry (no routed_ports6 yet), and nothing
// panics on its address.
func TestAssignAllowIPv6(t *testing.T) {
	nets := []Network{
		{Name: "nat", Subnet: netip.MustParsePrefix("172.31.0.0/24"), Subnet6: netip.MustParsePrefix("fd00:31::/64"), Masquerade: true},
		{Name: "r6", Subnet: netip.MustParsePrefix("172.32.0.0/24"), Subnet6: netip.MustParsePrefix("fd00:32::/64"), Masquerade: true, GatewayModeIPv6: GatewayRouted},
	}
	list := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00:1::/64")}
	s := State{Networks: nets, Ports: []PortMapping{
		{Proto: TCP, HostPort: 8080, ContainerIP: netip.MustParseAddr("172.31.0.2"), ContainerPort: 80, Allow: list},
		{Proto: TCP, HostPort: 8080, ContainerIP: netip.MustParseAddr("fd00:31::2"), ContainerPort: 80, Allow: list},
		{Proto: TCP, HostPort: 8081, ContainerIP: netip.MustParseAddr("fd00:32::2"), ContainerPort: 81, Allow: list},
	}}
	d := &EBPF{}
	ports := map[bpfPortKey]bpfPortTarget{d.portKey(s.Ports[0]): {}}
	ports6 := map[bpfPort6Key]bpfPort6Target{port6Key(s.Ports[1]): {}}
	routed := map[bpfPortKey]bpfPortTarget{}
	l := d.assignAllow(newAllowLists(), s, ports, routed, ports6, nil)
	id4, id6 := ports[d.portKey(s.Ports[0])].AllowId, ports6[port6Key(s.Ports[1])].AllowId
	if id4 == 0 || id6 != id4 {
		t.Errorf("list ids: IPv4 port %d, IPv6 port %d; want one nonzero id", id4, id6)
	}
	if l.refs[id4] != 2 || len(l.prefixes) != 1 {
		t.Errorf("lists %v, refs %v; want one list named twice", l.prefixes, l.refs)
	}
	if len(routed) != 0 {
		t.Errorf("routed entries %v for an IPv6 routed port", routed)
	}
	if got := routedAllow(s); len(got) != 0 {
		t.Errorf("routedAllow = %v, want nothing for IPv6", got)
	}
}
