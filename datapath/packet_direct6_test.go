// SPDX-License-Identifier: Apache-2.0

package datapath

// Packet tests of the IPv6 half of the protection of container addresses
// from direct access (bpf/lib/direct.h: to_container6 judges by the
// interface a packet arrived on, from_netdev6 lets a trusted uplink in)
// and of the IPv6 gateway modes (bpf/lib/gwmode.h: routed_ports6, the
// isolated mode's cut-off of the host). toContainerFrom runs to_container,
// which hands IPv6 frames to to_container6.

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// trust6 lets the interface in reach port of container IPv6 address a.
func (e *packetEnv) trust6(in string, proto uint8, a netip.Addr, port uint16) {
	e.put(e.objs.DirectTrusted6, bpfTrusted6Key{Ifindex: e.ingressIndex(in), Addr: be128(a), Port: be16(port), Proto: proto}, uint32(1))
}

// setNet6Flags gives the IPv6 network subnet (of installTopology6) flags.
func (e *packetEnv) setNet6Flags(subnet netip.Prefix, flags bpfNetFlags) {
	e.t.Helper()
	k := bpfNet6Key{Prefixlen: uint32(subnet.Bits()), Addr: be128(subnet.Addr())}
	var info bpfNet6Info
	if err := e.objs.Nets6.Lookup(k, &info); err != nil {
		e.t.Fatalf("network %s: %v", subnet, err)
	}
	info.Flags = flags
	e.put(e.objs.Nets6, k, info)
}

// routedPort6 publishes a container port of a routed IPv6 network, as
// Apply does (routed_ports6); allowID nonzero: it has an allowlist.
func (e *packetEnv) routedPort6(proto uint8, ctr netip.Addr, port uint16, id, allowID uint32) {
	e.put(e.objs.RoutedPorts6, bpfPort6Key{Addr: be128(ctr), Port: be16(port), Proto: proto},
		bpfPort6Target{Addr: be128(ctr), Port: be16(port), Id: id, AllowId: allowID})
}

// dropsOnly checks that reason (if any) was counted n times and nothing
// else at all.
func (e *packetEnv) dropsOnly(reason DropReason, n uint64) {
	e.t.Helper()
	want := map[DropReason]uint64{}
	if n != 0 {
		want[reason] = n
	}
	e.expectDrops(want)
}

// TestPacketIPv6DirectAccess6: a packet to a container's IPv6 address
// passes to_container6 from the container's bridge, a port of it, the
// host, loopback, an uplink, and from a trusted interface to a published
// container port; from any other interface it is dropped and counted as
// direct_access, as IPv4's. --allow-direct-routing trusts every interface
// with the published container ports only; networks without masquerade,
// internal and nat-unprotected ones are not protected this way; a routed
// network lets in its published container ports and ICMPv6; ICMPv6
// errors are judged as the rest; Neighbour Discovery and link-local
// traffic always pass.
func TestPacketIPv6DirectAccess6(t *testing.T) {
	outside := netip.MustParseAddr("2001:db8:77::5") // behind other0, not an uplink
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	type want struct {
		verdict uint32
		reason  DropReason
		n       uint64
	}
	pass := want{TC_ACT_OK, DropDirectAccess, 0}
	drop := want{TC_ACT_SHOT, DropDirectAccess, 1}
	allowDirect := func(e *packetEnv) {
		e.setNet6Flags(net6a, netFMasq|netFDirectOpen)
		e.trust6("host", tcp, ctrA6, 80)
	}
	routed := func(e *packetEnv) {
		e.setNet6Flags(net6b, netFRouted)
		e.routedPort6(tcp, ctrC6, 80, 1, 0)
	}
	// unreach6 is a Destination Unreachable from src about a datagram
	// ctr sent it.
	unreach6 := func(src, ctr netip.Addr) packet6 {
		return icmp6Error(src, ctr, 1, 4, 0, udp6(ctr, 53, src, 40000).datagram())
	}
	tracked := func(expires uint64) func(e *packetEnv) {
		// The entry of the answers of a flow from ctrC6 a hook of ours
		// tracks (a hairpin's, translated to ctrA6:80).
		return func(e *packetEnv) {
			e.put(e.objs.Ct6, ct6Key(tcp, ctrA6, 80, ctrC6, 40000),
				bpfCt6Entry{Nsaddr: be128(host6), Ndaddr: be128(ctrC6), Nsport: be16(8080), Ndport: be16(40000), Expires: expires})
		}
	}
	cases := []struct {
		name  string
		setup func(e *packetEnv)
		veth  string
		in    string
		p     packet6
		want  want
	}{
		{name: "second NIC to a container", veth: "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: drop},
		{name: "second NIC, udp", veth: "vetha", in: "other0", p: udp6(outside, 40000, ctrA6, 53), want: drop},
		{name: "second NIC, echo", veth: "vetha", in: "other0", p: echo6(outside, ctrA6, 7, false), want: drop},
		{name: "second NIC, neighbour solicitation", veth: "vetha", in: "other0", p: nd6(outside, ctrA6, 135), want: pass},
		{name: "second NIC, link-local", veth: "vetha", in: "other0", p: tcp6(linkLoc6, 40000, netip.MustParseAddr("fe80::2"), 80), want: pass},
		{name: "second NIC, an ICMPv6 error", veth: "vetha", in: "other0", p: unreach6(outside, ctrA6), want: drop},
		{name: "its bridge, an ICMPv6 error", veth: "vetha", in: "br0", p: unreach6(outside, ctrA6), want: pass},
		{name: "routed, an ICMPv6 error", setup: routed, veth: "vethc", in: "other0", p: unreach6(outside, ctrC6), want: pass},
		{name: "its bridge", veth: "vetha", in: "br0", p: tcp6(outside, 40000, ctrA6, 80), want: pass},
		{name: "a port of its bridge", veth: "vetha", in: "vethb", p: tcp6(ctrB6, 40000, ctrA6, 80), want: pass},
		{name: "the host", veth: "vetha", in: "host", p: tcp6(gw6, 40000, ctrA6, 80), want: pass},
		{name: "loopback", veth: "vetha", in: "lo", p: tcp6(gw6, 40000, ctrA6, 80), want: pass},
		{name: "an uplink, judged by from_netdev", veth: "vetha", in: "up0", p: tcp6(remote6, 40000, ctrA6, 80), want: pass},
		{name: "an interface that is not an uplink", veth: "vetha", in: "up1", p: tcp6(remote6, 40000, ctrA6, 80), want: drop},
		{name: "another network's bridge", veth: "vetha", in: "br1", p: tcp6(ctrC6, 40000, ctrA6, 80), want: drop},
		{name: "another network's veth", veth: "vetha", in: "vethc", p: tcp6(ctrC6, 40000, ctrA6, 80), want: drop},
		{name: "another network's bridge, a tracked flow", setup: tracked(^uint64(0)), veth: "vetha", in: "br1", p: tcp6(ctrC6, 40000, ctrA6, 80), want: pass},
		{name: "another network's bridge, an expired flow", setup: tracked(1), veth: "vetha", in: "br1", p: tcp6(ctrC6, 40000, ctrA6, 80), want: drop},
		{
			name:  "trusted interface to a published container port",
			setup: func(e *packetEnv) { e.trust6("other0", tcp, ctrA6, 80) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: pass,
		},
		{
			name:  "trusted interface to an unpublished port",
			setup: func(e *packetEnv) { e.trust6("other0", tcp, ctrA6, 80) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 81), want: drop,
		},
		{
			name:  "trusted interface, the port published for udp only",
			setup: func(e *packetEnv) { e.trust6("other0", udp, ctrA6, 80) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: drop,
		},
		{
			name:  "trusted interface to another container's published port",
			setup: func(e *packetEnv) { e.trust6("other0", tcp, ctrB6, 80) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: drop,
		},
		{
			name:  "another interface than the trusted one",
			setup: func(e *packetEnv) { e.trust6("other0", tcp, ctrA6, 80) },
			veth:  "vetha", in: "up1", p: tcp6(outside, 40000, ctrA6, 80), want: drop,
		},
		{
			name:  "an IPv4 trusted entry trusts no IPv6",
			setup: func(e *packetEnv) { e.trust("other0", tcp, ctrA, 80) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: drop,
		},
		{name: "allow-direct-routing, a published port", setup: allowDirect, veth: "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: pass},
		{name: "allow-direct-routing, another interface", setup: allowDirect, veth: "vetha", in: "up1", p: tcp6(outside, 40000, ctrA6, 80), want: pass},
		{name: "allow-direct-routing, another network's bridge", setup: allowDirect, veth: "vetha", in: "br1", p: tcp6(ctrC6, 40000, ctrA6, 80), want: pass},
		{name: "allow-direct-routing, an unpublished port", setup: allowDirect, veth: "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 81), want: drop},
		{name: "allow-direct-routing, echo", setup: allowDirect, veth: "vetha", in: "other0", p: echo6(outside, ctrA6, 7, false), want: drop},
		{
			name:  "an entry of every interface without allow-direct-routing",
			setup: func(e *packetEnv) { e.trust6("host", tcp, ctrA6, 80) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: drop,
		},
		{name: "a network without masquerade", veth: "vethc", in: "other0", p: tcp6(outside, 40000, ctrC6, 80), want: pass},
		{
			name:  "nat-unprotected",
			setup: func(e *packetEnv) { e.setNet6Flags(net6a, netFMasq|netFUnprotected) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 81), want: pass,
		},
		{
			name:  "an internal network (judged by its own rules)",
			setup: func(e *packetEnv) { e.setNet6Flags(net6a, netFInternal) },
			veth:  "vetha", in: "other0", p: tcp6(outside, 40000, ctrA6, 80), want: pass,
		},
		{name: "routed, a published container port", setup: routed, veth: "vethc", in: "other0", p: tcp6(outside, 40000, ctrC6, 80), want: pass},
		{name: "routed, echo", setup: routed, veth: "vethc", in: "other0", p: echo6(outside, ctrC6, 7, false), want: pass},
		{name: "routed, an unpublished port", setup: routed, veth: "vethc", in: "other0", p: tcp6(outside, 40000, ctrC6, 81), want: want{TC_ACT_SHOT, DropNotPublished, 1}},
		{name: "routed, the port published for tcp only", setup: routed, veth: "vethc", in: "other0", p: udp6(outside, 40000, ctrC6, 80), want: want{TC_ACT_SHOT, DropNotPublished, 1}},
		{name: "routed, its bridge", setup: routed, veth: "vethc", in: "br1", p: tcp6(ctrA6, 40000, ctrC6, 81), want: pass},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.installTopology6()
			if c.setup != nil {
				c.setup(e)
			}
			v, out := e.toContainerFrom(c.veth, c.in, c.p.frame())
			expectVerdict(t, v, c.want.verdict)
			e.dropsOnly(c.want.reason, c.want.n)
			if c.want.verdict == TC_ACT_OK {
				got := parse6Frame(t, c.name, out)
				if got.src != c.p.src || got.dst != c.p.dst {
					t.Errorf("passed as %s -> %s, want %s -> %s untouched", got.src, got.dst, c.p.src, c.p.dst)
				}
			}
		})
	}
}

// TestPacketIPv6DirectTrustedUplink: an uplink that is a trusted interface
// of an IPv6 nat network (or every one, with --allow-direct-routing)
// reaches a published container port by the container's IPv6 address:
// tracked untranslated, and the container's answer leaves through
// to_netdev6 with its own address rather than masqueraded. Untrusted, or
// to an unpublished port, it is dropped as not_published.
func TestPacketIPv6DirectTrustedUplink(t *testing.T) {
	tcp := uint8(layers.IPProtocolTCP)
	cases := []struct {
		name    string
		setup   func(e *packetEnv)
		dport   uint16
		trusted bool
	}{
		{name: "not trusted", setup: func(e *packetEnv) {}, dport: 80},
		{name: "trusted, published port", setup: func(e *packetEnv) { e.trust6("up0", tcp, ctrA6, 80) }, dport: 80, trusted: true},
		{name: "trusted, unpublished port", setup: func(e *packetEnv) { e.trust6("up0", tcp, ctrA6, 80) }, dport: 81},
		{name: "another uplink trusted", setup: func(e *packetEnv) { e.trust6("up1", tcp, ctrA6, 80) }, dport: 80},
		{name: "allow-direct-routing", setup: func(e *packetEnv) {
			e.setNet6Flags(net6a, netFMasq|netFDirectOpen)
			e.trust6("host", tcp, ctrA6, 80)
		}, dport: 80, trusted: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.installTopology6()
			c.setup(e)
			v, out := e.fromNetdev(tcp6(remote6, 40000, ctrA6, c.dport).frame())
			if !c.trusted {
				expectVerdict(t, v, TC_ACT_SHOT)
				e.dropsOnly(DropNotPublished, 1)
				if n := len(e.ct6()); n != 0 {
					t.Errorf("%d ct6 entries, want none", n)
				}
				return
			}
			// Into the container with the fast path, as IPv4's trusted
			// uplink (deliver6).
			expectVerdict(t, v, TC_ACT_REDIRECT)
			expectTuple6(t, "in", parse6Frame(t, "in", out), remote6, 40000, ctrA6, c.dport)
			e.dropsOnly(DropDirectAccess, 0)
			if _, ok := e.ct6()[ct6Key(tcp, ctrA6, c.dport, remote6, 40000)]; !ok {
				t.Fatalf("no ct6 entry of the answers")
			}
			r := tcp6(ctrA6, c.dport, remote6, 40000).fromCtr(macA, gwMAC)
			r.ack = true
			v, out = e.toNetdev(r.frame())
			expectVerdict(t, v, TC_ACT_OK)
			expectTuple6(t, "answer", parse6Frame(t, "answer", out), ctrA6, c.dport, remote6, 40000)
			if n := e.event(EventCTNewSNAT); n != 0 {
				t.Errorf("ct_new_snat = %d, want 0: the answer was masqueraded", n)
			}
		})
	}
}

// TestPacketIPv6Routed: on a routed IPv6 network (gateway_mode_ipv6 routed)
// from_netdev6 lets a published container port in by the container's
// address, TCP and UDP, and ICMPv6, tracked untranslated so the answers
// leave unmasqueraded; an unpublished port, the other protocol, and a
// port with an allowlist from a source it does not list are dropped (its
// twin, a listed source, gets in).
func TestPacketIPv6Routed(t *testing.T) {
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	cases := []struct {
		name   string
		p      packet6
		reason DropReason // 0: let in
	}{
		{"published tcp", tcp6(remote6, 40000, ctrC6, 80), 0},
		{"published udp", udp6(remote6, 40001, ctrC6, 53), 0},
		{"echo", echo6(remote6, ctrC6, 9, false), 0},
		{"unpublished tcp", tcp6(remote6, 40002, ctrC6, 81), DropNotPublished},
		{"tcp of a udp port", tcp6(remote6, 40003, ctrC6, 53), DropNotPublished},
		{"another container's port", tcp6(remote6, 40004, netip.MustParseAddr("fd00:18::9"), 80), DropNotPublished},
		{"a port with an allowlist, an unlisted source", tcp6(remote6, 40005, ctrC6, 8443), DropPortDenied},
		{"a port with an allowlist, a listed source", tcp6(client6, 40006, ctrC6, 8443), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPacketEnv(t, Options{})
			e.installTopology6()
			e.setNet6Flags(net6b, netFRouted)
			e.routedPort6(tcp, ctrC6, 80, 1, 0)
			e.routedPort6(udp, ctrC6, 53, 2, 0)
			e.routedPort6(tcp, ctrC6, 8443, 3, 1)
			// List 1: client6's /64 and an IPv4 prefix, which no IPv6
			// source matches.
			e.allowListBoth(1, "2001:db8:99::/64", "192.0.2.0/24")
			v, out := e.fromNetdev(c.p.frame())
			if c.reason != 0 {
				expectVerdict(t, v, TC_ACT_SHOT)
				e.dropsOnly(c.reason, 1)
				if n := len(e.ct6()); n != 0 {
					t.Errorf("%d ct6 entries, want none", n)
				}
				return
			}
			expectVerdict(t, v, TC_ACT_OK)
			e.dropsOnly(c.reason, 0)
			got := parse6Frame(t, "in", out)
			sport := c.p.sport
			if c.p.proto == layers.IPProtocolICMPv6 {
				sport = c.p.icmpID
			}
			if got.src != c.p.src || got.dst != c.p.dst || got.sport != sport || got.dport != c.p.dport {
				t.Fatalf("let in as %+v, want it untouched", got)
			}
			if n := len(e.ct6()); n != 2 {
				t.Fatalf("%d ct6 entries, want the flow's 2", n)
			}
			// The answer leaves with the container's own address.
			var r packet6
			switch c.p.proto {
			case layers.IPProtocolICMPv6:
				r = echo6(ctrC6, remote6, c.p.icmpID, true)
			case layers.IPProtocolTCP:
				r = tcp6(ctrC6, c.p.dport, remote6, c.p.sport)
				r.ack = true
			default:
				r = udp6(ctrC6, c.p.dport, remote6, c.p.sport)
			}
			v, out = e.toNetdev(r.fromCtr(macC, gw2MAC).frame())
			expectVerdict(t, v, TC_ACT_OK)
			if got := parse6Frame(t, "answer", out); got.src != ctrC6 || got.dst != remote6 {
				t.Errorf("answer left as %s -> %s, want %s -> %s", got.src, got.dst, ctrC6, remote6)
			}
			if n := e.event(EventCTNewSNAT); n != 0 {
				t.Errorf("ct_new_snat = %d, want 0", n)
			}
		})
	}
}

// TestPacketIPv6Isolated: a container of a network whose IPv6 gateway mode
// is isolated reaches no host address (its gateway's included) and the
// host reaches none of its containers, while its containers reach each
// other; with the network only internal the host is reached.
func TestPacketIPv6Isolated(t *testing.T) {
	for _, isolated := range []bool{true, false} {
		name := "internal"
		flags := netFInternal
		if isolated {
			name, flags = "isolated", netFInternal|netFIsolated
		}
		t.Run(name, func(t *testing.T) {
			e := newPacketEnv(t, Options{})
			e.installTopology6()
			e.setNet6Flags(net6a, flags)
			cut := uint32(TC_ACT_OK)
			var n uint64
			check := func(what string, v uint32, want uint32) {
				t.Helper()
				if v != want {
					t.Errorf("%s: verdict %d, want %d", what, v, want)
				}
			}
			if isolated {
				cut = TC_ACT_SHOT
			}
			v, _ := e.fromContainer("vetha", tcp6(ctrA6, 40000, host6, 22).fromCtr(macA, gwMAC).frame())
			check("to a host address", v, cut)
			v, _ = e.fromContainer("vetha", tcp6(ctrA6, 40001, gw6, 53).fromCtr(macA, gwMAC).frame())
			check("to its gateway", v, cut)
			v, _ = e.toContainerFrom("vetha", "host", tcp6(host6, 40002, ctrA6, 80).frame())
			check("from the host", v, cut)
			v, _ = e.toContainerFrom("vetha", "host", tcp6(gw6, 40003, ctrA6, 80).frame())
			check("from its gateway", v, cut)
			if isolated {
				n = 4
			}
			// Its own containers reach each other either way.
			v, _ = e.fromContainer("vetha", tcp6(ctrA6, 40004, ctrB6, 80).fromCtr(macA, macB).frame())
			check("to a container of its own", v, TC_ACT_OK)
			v, _ = e.toContainerFrom("vetha", "vethb", tcp6(ctrB6, 40005, ctrA6, 80).frame())
			check("from a container of its own", v, TC_ACT_OK)
			e.dropsOnly(DropInternal, n)
		})
	}
}

// TestPacketIPv6RoutedFromOtherNetwork: a container of a nat network
// reaches a routed IPv6 network's published container port and pings its
// container, as Docker lets another bridge into a routed network through
// its DOCKER chain; the flow is tracked both ways, so the answer goes
// back and to_container6 lets both directions through. An unpublished
// port is dropped (not_published), and with the network not routed the
// isolation of networks drops the same packet.
func TestPacketIPv6RoutedFromOtherNetwork(t *testing.T) {
	tcp := uint8(layers.IPProtocolTCP)
	e := newPacketEnv(t, Options{})
	e.installTopology6()
	e.setNet6Flags(net6b, netFRouted)
	e.routedPort6(tcp, ctrC6, 80, 1, 0)

	v, _ := e.fromContainer("vetha", tcp6(ctrA6, 40000, ctrC6, 80).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	if _, ok := e.ct6()[ct6Key(tcp, ctrC6, 80, ctrA6, 40000)]; !ok || len(e.ct6()) != 2 {
		t.Fatalf("ct6 holds %d entries, want the flow's 2", len(e.ct6()))
	}
	v, _ = e.toContainerFrom("vethc", "br0", tcp6(ctrA6, 40000, ctrC6, 80).frame())
	expectVerdict(t, v, TC_ACT_OK)
	ans := tcp6(ctrC6, 80, ctrA6, 40000)
	ans.ack = true
	v, out := e.fromContainer("vethc", ans.fromCtr(macC, gw2MAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple6(t, "answer", parse6Frame(t, "answer", out), ctrC6, 80, ctrA6, 40000)
	v, _ = e.toContainerFrom("vetha", "br1", ans.frame())
	expectVerdict(t, v, TC_ACT_OK)
	v, _ = e.fromContainer("vetha", echo6(ctrA6, ctrC6, 5, false).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	e.dropsOnly(DropNotPublished, 0)

	v, _ = e.fromContainer("vetha", tcp6(ctrA6, 40001, ctrC6, 81).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.dropsOnly(DropNotPublished, 1)

	e.setNet6Flags(net6b, 0)
	v, _ = e.fromContainer("vetha", tcp6(ctrA6, 40002, ctrC6, 80).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropNotPublished: 1, DropIsolation: 1})
}
