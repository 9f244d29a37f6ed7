// SPDX-License-Identifier: Apache-2.0

package datapath

// Masquerade against the host's own sockets and published ports: a
// translated tuple is never one that a host socket, another translation or
// a published port uses, and a host flow opened after a translation took
// its tuple is given a port of its own. The host sockets are real ones,
// opened in the packet-test namespace, where the programs run and look
// them up.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The fixed port of the host sockets and of the colliding container
// flows, outside the translation range the tests use: a port from the
// range never collides with them by chance, so the counts are exact.
const (
	hostPort      = 40123
	masqRangeMin  = 50000
	masqRangeMax  = 50999
	masqRemoteTCP = 443
	masqRemoteUDP = 53
)

func newMasqEnv(t *testing.T) *packetEnv {
	t.Helper()
	e := newPacketEnv(t, Options{FastPath: true, NATPortMin: masqRangeMin, NATPortMax: masqRangeMax})
	e.addRemoteServer()
	return e
}

// addRemoteServer puts remoteIP on the test namespace's loopback (and
// brings it up) so that host sockets can hold real connections to the
// address the container flows go to. Nothing of it reaches the programs:
// they are run on frames, not on what these sockets send.
func (e *packetEnv) addRemoteServer() {
	e.t.Helper()
	var err error
	e.ns.do(func() {
		var lo netlink.Link
		if lo, err = netlink.LinkByName("lo"); err != nil {
			return
		}
		if err = netlink.LinkSetUp(lo); err != nil {
			return
		}
		err = netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(remoteIP.AsSlice()), Mask: net.CIDRMask(32, 32)}})
	})
	if err != nil {
		e.t.Fatalf("putting %s on the test namespace's loopback: %v", remoteIP, err)
	}
}

// inNetns runs fn in the test namespace and fails the test on its error.
func (e *packetEnv) inNetns(what string, fn func() error) {
	e.t.Helper()
	var err error
	e.ns.do(func() { err = fn() })
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// hostTCPConn opens an established host connection from local to the
// listener at remote (both in the test namespace) and returns both ends.
func (e *packetEnv) hostTCPConn(local, remote netip.AddrPort) (client, server net.Conn) {
	e.t.Helper()
	var ln net.Listener
	e.inNetns("host TCP connection", func() error {
		var err error
		if ln, err = net.Listen("tcp4", remote.String()); err != nil {
			return err
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
		client, err = d.Dial("tcp4", remote.String())
		return err
	})
	defer ln.Close()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	server, err := ln.Accept()
	if err != nil {
		client.Close()
		e.t.Fatalf("accepting the host connection: %v", err)
	}
	e.t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// hostListen opens a host socket of network bound to addr.
func (e *packetEnv) hostListen(network string, addr netip.AddrPort) {
	e.t.Helper()
	e.inNetns("host "+network+" socket on "+addr.String(), func() error {
		if network == "udp4" {
			c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
			if err == nil {
				e.t.Cleanup(func() { c.Close() })
			}
			return err
		}
		ln, err := net.Listen(network, addr.String())
		if err == nil {
			e.t.Cleanup(func() { ln.Close() })
		}
		return err
	})
}

// hostUDPConn opens a host UDP socket bound to local and connected to
// remote.
func (e *packetEnv) hostUDPConn(local, remote netip.AddrPort) {
	e.t.Helper()
	e.inNetns("host UDP socket", func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(remote))
		if err == nil {
			e.t.Cleanup(func() { c.Close() })
		}
		return err
	})
}

// tcpStates lists the states of the test namespace's TCP sockets bound
// to local port port, as /proc/net/tcp gives them ("01" established, "03"
// a request, "06" time-wait, "0A" listen).
func (e *packetEnv) tcpStates(port uint16) []string {
	e.t.Helper()
	var states []string
	e.inNetns("reading /proc/net/tcp", func() error {
		// thread-self: the namespace of this thread, not of the process.
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) > 3 && strings.HasSuffix(fs[1], fmt.Sprintf(":%04X", port)) {
				states = append(states, fs[3])
			}
		}
		return sc.Err()
	})
	return states
}

// tcpState is the state of the only TCP socket on local port port, ""
// if there is none.
func (e *packetEnv) tcpState(port uint16) string {
	e.t.Helper()
	s := e.tcpStates(port)
	if len(s) == 0 {
		return ""
	}
	if len(s) > 1 {
		e.t.Fatalf("%d TCP sockets on port %d, want one: %v", len(s), port, s)
	}
	return s[0]
}

// masqPort sends the first packet of a container flow through to_netdev,
// checks that it leaves from the uplink address to its destination with
// valid checksums, and returns its translated source port.
func (e *packetEnv) masqPort(p testPacket) uint16 {
	e.t.Helper()
	v, out := e.toNetdev(p.frame())
	expectVerdict(e.t, v, TC_ACT_OK)
	checkFrame(e.t, out)
	d := decode(e.t, out)
	sp, dp := d.ports()
	if d.src() != hostIP || d.dst() != p.dst || dp != p.dport {
		e.t.Fatalf("%s:%d -> %s:%d translated to %s:%d -> %s:%d", p.src, p.sport, p.dst, p.dport, d.src(), sp, d.dst(), dp)
	}
	return sp
}

func expectPort(t *testing.T, what string, got, want uint16) {
	t.Helper()
	if got != want {
		t.Errorf("%s: source port %d, want %d", what, got, want)
	}
}

func expectOtherPort(t *testing.T, what string, got uint16) {
	t.Helper()
	if got == hostPort || got < masqRangeMin || got > masqRangeMax {
		t.Errorf("%s: source port %d, want one of %d-%d", what, got, masqRangeMin, masqRangeMax)
	}
}

// TestPacketMasqHostTCPSocket: a container's SYN keeps its source port
// unless a host TCP socket (established or time-wait, not a listener)
// uses the tuple its answers would have.
func TestPacketMasqHostTCPSocket(t *testing.T) {
	local := netip.AddrPortFrom(hostIP, hostPort)
	remote := netip.AddrPortFrom(remoteIP, masqRemoteTCP)
	syn := func(ctr netip.Addr, dport uint16) testPacket {
		return tcpPacket(ctr, hostPort, remoteIP, dport)
	}

	t.Run("no host socket", func(t *testing.T) {
		e := newMasqEnv(t)
		expectPort(t, "container SYN", e.masqPort(syn(ctrA, masqRemoteTCP)), hostPort)
		if n := e.event(EventNATHostSocket); n != 0 {
			t.Errorf("nat_host_socket = %d, want 0", n)
		}
		e.expectDrops(nil)
	})

	t.Run("established", func(t *testing.T) {
		e := newMasqEnv(t)
		e.hostTCPConn(local, remote)
		if s := e.tcpState(hostPort); s != "01" {
			t.Fatalf("host socket on port %d in state %q, want 01 (established)", hostPort, s)
		}
		p := e.masqPort(syn(ctrA, masqRemoteTCP))
		expectOtherPort(t, "container SYN to the host connection's peer", p)
		if n := e.event(EventNATHostSocket); n != 1 {
			t.Errorf("nat_host_socket = %d, want 1", n)
		}
		e.expectCT(ctKey(uint8(pTCP), remoteIP, masqRemoteTCP, hostIP, p), ctWant{remoteIP, ctrA, masqRemoteTCP, hostPort, atFromNetdev | flagReply, atToNetdev, KindSNAT, e.idx["vetha"]})
		e.expectNoCT(ctKey(uint8(pTCP), remoteIP, masqRemoteTCP, hostIP, hostPort))
		// The same port to another destination port is no host tuple.
		expectPort(t, "container SYN to another port", e.masqPort(syn(ctrB, masqRemoteTCP+1)), hostPort)
		if n := e.event(EventNATHostSocket); n != 1 {
			t.Errorf("nat_host_socket = %d after a free flow, want 1", n)
		}
		// The server's answer to the container's translated port reaches
		// the container; the host's connection keeps its tuple.
		v, out := e.fromNetdev(replyPacket(pTCP, remoteIP, masqRemoteTCP, hostIP, p).frame())
		expectVerdict(t, v, TC_ACT_REDIRECT)
		checkFrame(t, out)
		expectTuple(t, decode(t, out), remoteIP, masqRemoteTCP, ctrA, hostPort)
		e.expectDrops(nil)
	})

	t.Run("time-wait", func(t *testing.T) {
		e := newMasqEnv(t)
		c, s := e.hostTCPConn(local, remote)
		// The host closes first: its end waits in time-wait.
		c.Close()
		s.Close()
		deadline := time.Now().Add(5 * time.Second)
		for e.tcpState(hostPort) != "06" {
			if time.Now().After(deadline) {
				t.Fatalf("host socket on port %d in state %q, want 06 (time-wait)", hostPort, e.tcpState(hostPort))
			}
			time.Sleep(10 * time.Millisecond)
		}
		expectOtherPort(t, "container SYN onto a time-wait tuple", e.masqPort(syn(ctrA, masqRemoteTCP)))
		if n := e.event(EventNATHostSocket); n != 1 {
			t.Errorf("nat_host_socket = %d, want 1", n)
		}
		e.expectDrops(nil)
	})

	t.Run("request", func(t *testing.T) {
		// A listener that accepts only once data comes keeps the
		// connection of a client that sent none as a request socket.
		e := newMasqEnv(t)
		var ln net.Listener
		e.inNetns("listening with TCP_DEFER_ACCEPT", func() error {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 30)
				})
				return errors.Join(err, serr)
			}}
			var err error
			ln, err = lc.Listen(context.Background(), "tcp4", local.String())
			return err
		})
		defer ln.Close()
		// The client is the "remote" end: it connects from remote to
		// the host's port.
		e.inNetns("connecting to the listener", func() error {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(remote), Timeout: 5 * time.Second}
			c, err := d.Dial("tcp4", local.String())
			if err == nil {
				t.Cleanup(func() { c.Close() })
			}
			return err
		})
		if s := e.tcpStates(hostPort); !slices.Contains(s, "03") {
			t.Fatalf("sockets on port %d in states %v, want a 03 (request)", hostPort, s)
		}
		expectOtherPort(t, "container SYN onto a request's tuple", e.masqPort(syn(ctrA, masqRemoteTCP)))
		if n := e.event(EventNATHostSocket); n != 1 {
			t.Errorf("nat_host_socket = %d, want 1", n)
		}
		// The listener alone is no collision: another destination port.
		expectPort(t, "container SYN to another port", e.masqPort(syn(ctrB, masqRemoteTCP+1)), hostPort)
		e.expectDrops(nil)
	})

	t.Run("listener", func(t *testing.T) {
		e := newMasqEnv(t)
		e.hostListen("tcp4", netip.AddrPortFrom(netip.IPv4Unspecified(), hostPort))
		if s := e.tcpState(hostPort); s != "0A" {
			t.Fatalf("host socket on port %d in state %q, want 0A (listen)", hostPort, s)
		}
		expectPort(t, "container SYN from a listener's port", e.masqPort(syn(ctrA, masqRemoteTCP)), hostPort)
		if n := e.event(EventNATHostSocket); n != 0 {
			t.Errorf("nat_host_socket = %d, want 0", n)
		}
		e.expectDrops(nil)
	})
}

// TestPacketMasqHostUDPSocket: a container datagram keeps its source port
// unless a host UDP socket would receive its answers: one bound to the
// port, or one connected to the same destination.
func TestPacketMasqHostUDPSocket(t *testing.T) {
	dgram := func(ctr netip.Addr, sport, dport uint16) testPacket {
		return udpPacket(ctr, sport, remoteIP, dport)
	}
	e := newMasqEnv(t)
	// Before any host socket: the port is kept.
	expectPort(t, "no host socket", e.masqPort(dgram(ctrA, hostPort, masqRemoteUDP)), hostPort)

	// Bound only: every answer to the port is the host socket's.
	e.hostListen("udp4", netip.AddrPortFrom(hostIP, hostPort+1))
	p := e.masqPort(dgram(ctrA, hostPort+1, masqRemoteUDP))
	expectOtherPort(t, "port of a bound host socket", p)
	e.expectCT(ctKey(uint8(pUDP), remoteIP, masqRemoteUDP, hostIP, p), ctWant{remoteIP, ctrA, masqRemoteUDP, hostPort + 1, atFromNetdev | flagReply, atToNetdev, KindSNAT, e.idx["vetha"]})

	// Connected: the answers of its own peer only.
	e.hostUDPConn(netip.AddrPortFrom(hostIP, hostPort+2), netip.AddrPortFrom(remoteIP, masqRemoteUDP))
	expectOtherPort(t, "tuple of a connected host socket", e.masqPort(dgram(ctrA, hostPort+2, masqRemoteUDP)))
	expectPort(t, "connected host socket, another destination port", e.masqPort(dgram(ctrB, hostPort+2, masqRemoteUDP+1)), hostPort+2)

	if n := e.event(EventNATHostSocket); n != 2 {
		t.Errorf("nat_host_socket = %d, want 2", n)
	}
	if n := e.event(EventCTNewSNAT); n != 4 {
		t.Errorf("ct_new_snat = %d, want 4", n)
	}
	e.expectDrops(nil)
}

// TestPacketMasqPublishedPort: a published host port of the protocol, on
// every address or on the uplink's, is never a translated source port,
// not even the flow's own; a published port of another protocol or of
// another host address is.
func TestPacketMasqPublishedPort(t *testing.T) {
	cases := []struct {
		name      string
		published layers.IPProtocol
		flow      layers.IPProtocol
		bindAddr  netip.Addr // invalid: every address
		free      bool
	}{
		{name: "tcp on every address", published: pTCP, flow: pTCP, bindAddr: netip.Addr{}, free: false},
		{name: "tcp on the uplink address", published: pTCP, flow: pTCP, bindAddr: hostIP, free: false},
		{name: "udp on every address", published: pUDP, flow: pUDP, bindAddr: netip.Addr{}, free: false},
		{name: "udp flow, tcp published", published: pTCP, flow: pUDP, bindAddr: netip.Addr{}, free: true},
		{name: "tcp on another host address", published: pTCP, flow: pTCP, bindAddr: hostIP2, free: true},
	}
	const port = 40000
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// A range of one port: the published one.
			e := newPacketEnv(t, Options{FastPath: true, NATPortMin: port, NATPortMax: port})
			e.publish(uint8(c.published), c.bindAddr, port, ctrC, 80, 1)
			p := flowPacket(c.flow, ctrA, port, remoteIP, 443).fromCtr(macA, gwMAC)
			if c.free {
				expectPort(t, "flow from the port", e.masqPort(p), port)
				e.expectDrops(nil)
				return
			}
			in := p.frame()
			v, out := e.toNetdev(in)
			expectVerdict(t, v, TC_ACT_SHOT)
			expectUnchanged(t, in, out[:len(in)])
			e.expectDrops(map[DropReason]uint64{DropNATExhausted: 1})
			if n := len(e.ct()); n != 0 {
				t.Errorf("%d conntrack entries, want none:\n%s", n, e.ctDump())
			}
			// Masquerade works in this setup: a flow from another port
			// keeps it.
			expectPort(t, "flow from another port", e.masqPort(flowPacket(c.flow, ctrA, 1234, remoteIP, 443)), 1234)
			// The published port still takes its own connections.
			v, out = e.fromNetdev(flowPacket(c.published, clientIP, 5555, hostIP, port).frame())
			expectVerdict(t, v, TC_ACT_REDIRECT)
			checkFrame(t, out)
			expectTuple(t, decode(t, out), clientIP, 5555, ctrC, 80)
		})
	}
}

// TestPacketMasqFullRange: when every port of the range is taken, by a
// host socket or by another flow, a new flow is dropped and counted,
// never given a tuple in use.
func TestPacketMasqFullRange(t *testing.T) {
	for _, proto := range []layers.IPProtocol{pTCP, pUDP} {
		t.Run(proto.String(), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true, NATPortMin: masqRangeMin, NATPortMax: masqRangeMin + 1})
			e.addRemoteServer()
			remote := netip.AddrPortFrom(remoteIP, 443)
			if proto == pTCP {
				e.hostTCPConn(netip.AddrPortFrom(hostIP, masqRangeMin), remote)
			} else {
				e.hostUDPConn(netip.AddrPortFrom(hostIP, masqRangeMin), remote)
			}
			// A's port is free and kept; B's is A's, and of the range
			// only the second port is free; a third source gets nothing.
			a := e.masqPort(flowPacket(proto, ctrA, 1000, remoteIP, 443))
			expectPort(t, "first flow", a, 1000)
			b := e.masqPort(flowPacket(proto, ctrB, 1000, remoteIP, 443))
			expectPort(t, "second flow", b, masqRangeMin+1)
			before := e.event(EventNATHostSocket)
			third := netip.MustParseAddr("172.17.1.10")
			in := flowPacket(proto, third, 1000, remoteIP, 443).frame()
			v, out := e.toNetdev(in)
			expectVerdict(t, v, TC_ACT_SHOT)
			expectUnchanged(t, in, out[:len(in)])
			e.expectDrops(map[DropReason]uint64{DropNATExhausted: 1})
			// Each port of the range was tried once: the host socket's
			// refused one of them.
			if n := e.event(EventNATHostSocket) - before; n != 1 {
				t.Errorf("nat_host_socket rose by %d for the dropped flow, want 1", n)
			}
			if n := len(e.ct()); n != 4 {
				t.Errorf("%d conntrack entries, want 4 (none for the dropped flow):\n%s", n, e.ctDump())
			}
			e.expectNoCT(ctKey(uint8(proto), remoteIP, 443, hostIP, masqRangeMin))
		})
	}
}

// TestPacketMasqHostRemap: a host flow opened after a container's flow
// took its tuple leaves from another port, and its answers come back to
// the host's real port; the container keeps its own; a host flow that
// collides with nothing is left alone, without entries.
func TestPacketMasqHostRemap(t *testing.T) {
	for _, proto := range []layers.IPProtocol{pTCP, pUDP, pICMP} {
		t.Run(proto.String(), func(t *testing.T) {
			e := newMasqEnv(t)
			dport := uint16(443)
			if proto == pICMP {
				dport = 0
			}
			key := func(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) bpfCtKey {
				return ctKey(uint8(proto), src, sport, dst, dport)
			}
			// The container's flow keeps its port: nothing holds it yet.
			expectPort(t, "container flow", e.masqPort(flowPacket(proto, ctrA, hostPort, remoteIP, dport)), hostPort)

			// A host flow from another port: untouched, untracked.
			free := flowPacket(proto, hostIP, hostPort+1, remoteIP, dport)
			in := free.frame()
			v, out := e.toNetdev(in)
			expectVerdict(t, v, TC_ACT_OK)
			expectUnchanged(t, in, out)
			e.expectNoCT(key(hostIP, hostPort+1, remoteIP, dport))
			if n := len(e.ct()); n != 2 {
				t.Fatalf("%d conntrack entries after a free host flow, want 2:\n%s", n, e.ctDump())
			}

			// A host flow from the port the container's translation holds.
			hp := e.masqPort(flowPacket(proto, hostIP, hostPort, remoteIP, dport))
			expectOtherPort(t, "host flow", hp)
			if n := e.event(EventNATHostRemap); n != 1 {
				t.Errorf("nat_host_remap = %d, want 1", n)
			}
			if n := e.event(EventCTNewSNAT); n != 1 {
				t.Errorf("ct_new_snat = %d, want 1 (the container's)", n)
			}
			// Its answers' entry (for ICMP the identifier is the
			// answer's destination "port").
			rsport, rdport := dport, hp
			e.expectCT(key(hostIP, hostPort, remoteIP, dport), ctWant{hostIP, remoteIP, hp, dport, atToNetdev, atFromNetdev | flagReply, KindSNAT, 0})
			e.expectCT(key(remoteIP, rsport, hostIP, rdport), ctWant{remoteIP, hostIP, rsport, hostPort, atFromNetdev | flagReply, atToNetdev, KindSNAT, 0})

			// Its next packet takes the same port.
			next := flowPacket(proto, hostIP, hostPort, remoteIP, dport)
			if proto == pTCP {
				next.syn, next.ack = false, true
			}
			if got := e.masqPort(next); got != hp {
				t.Errorf("host flow's next packet from port %d, want %d", got, hp)
			}

			// Answers: the host's to its real port, through the stack;
			// the container's to the container.
			v, out = e.fromNetdev(replyPacket(proto, remoteIP, dport, hostIP, hp).frame())
			expectVerdict(t, v, TC_ACT_OK)
			checkFrame(t, out)
			expectTuple(t, decode(t, out), remoteIP, dport, hostIP, hostPort)
			v, out = e.fromNetdev(replyPacket(proto, remoteIP, dport, hostIP, hostPort).frame())
			expectVerdict(t, v, TC_ACT_REDIRECT)
			checkFrame(t, out)
			expectTuple(t, decode(t, out), remoteIP, dport, ctrA, hostPort)
			e.expectDrops(nil)
		})
	}
}

// TestPacketMasqRunOfHostPorts: a run of 500 consecutive ports held by
// host sockets, inside the translation range, and a container flow from
// each of them: every one is translated, to a port outside the run and of
// its own. (Ports in use come in runs; a search that walked the range from
// a random place would fail whenever it started inside one.)
func TestPacketMasqRunOfHostPorts(t *testing.T) {
	const n, base = 500, 40000
	for _, proto := range []layers.IPProtocol{pTCP, pUDP} {
		t.Run(proto.String(), func(t *testing.T) {
			e := newPacketEnv(t, Options{FastPath: true})
			e.addRemoteServer()
			remote := netip.AddrPortFrom(remoteIP, 443)
			var ln net.Listener
			if proto == pTCP {
				e.inNetns("listening", func() error {
					var err error
					ln, err = net.Listen("tcp4", remote.String())
					return err
				})
				defer ln.Close()
			}
			for i := range n {
				local := netip.AddrPortFrom(hostIP, base+uint16(i))
				if proto == pUDP {
					e.hostListen("udp4", local)
					continue
				}
				var c net.Conn
				e.inNetns("host connection", func() error {
					d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
					var err error
					c, err = d.Dial("tcp4", remote.String())
					return err
				})
				t.Cleanup(func() { c.Close() })
				s, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
			}
			used := map[uint16]bool{}
			for i := range n {
				p := e.masqPort(flowPacket(proto, ctrA, base+uint16(i), remoteIP, 443))
				if p >= base && p < base+n {
					t.Fatalf("flow from port %d translated to %d, a host socket's", base+i, p)
				}
				if used[p] {
					t.Fatalf("flow from port %d translated to %d, another flow's", base+i, p)
				}
				used[p] = true
			}
			e.expectDrops(nil)
			if h := e.event(EventNATHostSocket); h < n {
				t.Errorf("nat_host_socket = %d, want at least %d", h, n)
			}
		})
	}
}
