// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/lab"
)

// sock6Lab is the dual-stack lab with IPv6 ports published on container 0
// and servers behind them: TCP echo on 80 ([::]:8080) and 81 (bound to
// [::1]:8082, the host's loopback only), UDP echo on 53 ([::]:5353).
func sock6Lab(t *testing.T) (*labDatapath, *lab.External) {
	t.Helper()
	ctr := labCtr6[0]
	l, ext := dualStackLab(t, []PortMapping{
		{Proto: TCP, HostPort: 8080, ContainerIP: ctr, ContainerPort: 80},
		{Proto: TCP, HostIP: netip.IPv6Loopback(), HostPort: 8082, ContainerIP: ctr, ContainerPort: 81},
		{Proto: UDP, HostPort: 5353, ContainerIP: ctr, ContainerPort: 53},
	})
	c0 := l.topo.Containers[0]
	echoTCP(t, &c0.Namespace, "[::]:80")
	echoTCP(t, &c0.Namespace, "[::]:81")
	echoUDP(t, &c0.Namespace, "[::]:53")
	return l, ext
}

// dialIn6 connects over IPv6 from ns (nil: the test's own namespace).
func dialIn6(ns *lab.Namespace, addr string, local *net.TCPAddr) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d := &net.Dialer{}
	if local != nil {
		d.LocalAddr = local
	}
	if ns == nil {
		return d.DialContext(ctx, "tcp6", addr)
	}
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp6", addr)
		return err
	})
	return c, err
}

// wantRefused6 is wantRefused over IPv6.
func wantRefused6(t *testing.T, ns *lab.Namespace, addr string, local *net.TCPAddr, why string) {
	t.Helper()
	c, err := dialIn6(ns, addr, local)
	if err == nil {
		c.SetReadDeadline(time.Now().Add(time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		t.Errorf("%s: connecting to %s succeeded (greeting %q), want it refused", why, addr, line)
		return
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s: connecting to %s: %v, want connection refused", why, addr, err)
	}
}

// greeting6 reads the first line the server sends on a connection from ns
// to addr (bound to local, if given).
func greeting6(t *testing.T, ns *lab.Namespace, addr string, local *net.TCPAddr) (string, net.Conn) {
	t.Helper()
	c, err := dialIn6(ns, addr, local)
	if err != nil {
		t.Fatalf("connecting to %s (bound to %v): %v", addr, local, err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Errorf("greeting of %s: %v", addr, err)
	}
	return line[:max(len(line)-1, 0)], c
}

func peerOf6(t *testing.T, c net.Conn) string {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var gerr error
	if err := raw.Control(func(fd uintptr) { sa, gerr = unix.Getpeername(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("getpeername: %v", gerr)
	}
	return sa6String(sa)
}

// udpUnconnected6 sends msg from an unconnected IPv6 socket of ns to addr
// and returns where the answer came from and what the server saw.
func udpUnconnected6(t *testing.T, ns *lab.Namespace, addr, msg string) (from netip.AddrPort, seen string) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp6", "[::]:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))
	buf := make([]byte, 2048)
	for try := 0; try < 5; try++ {
		if _, err := pc.WriteTo([]byte(msg), to); err != nil {
			t.Fatalf("sending to %s: %v", addr, err)
		}
		pc.SetReadDeadline(time.Now().Add(time.Second))
		n, f, err := pc.ReadFrom(buf)
		if err == nil {
			seen, body, _ := strings.Cut(string(buf[:n]), " ")
			if body != msg {
				t.Fatalf("udp echo %q, want %q", body, msg)
			}
			return f.(*net.UDPAddr).AddrPort(), seen
		}
	}
	t.Fatalf("no UDP answer from %s on an unconnected IPv6 socket", addr)
	return netip.AddrPort{}, ""
}

// TestSockIPv6: the host's own IPv6 sockets reach IPv6 published ports
// through ::1, ::, the host's and the bridge's IPv6 addresses, TCP and UDP,
// connected or not, and see the address they asked for as their peer. A
// port bound to [::1] is the host's alone: the outside and other host
// addresses are refused, each beside a twin that reaches.
func TestSockIPv6(t *testing.T) {
	l, ext := sock6Lab(t)
	s := startSock(t, l)
	host := l.topo.Host
	gw := labGw6.String()
	up := "[" + labHost6.String() + "]"

	// The kernel picks the source for the rewritten destination: the
	// bridge's IPv6 address, never ::1.
	for _, addr := range []string{"[::1]:8080", up + ":8080", "[" + gw + "]:8080", "[::]:8080", "[::1]:8082"} {
		got, c := greeting6(t, host, addr, nil)
		c.Close()
		if got != gw {
			t.Errorf("%s: container saw client %s, want the bridge address %s", addr, got, gw)
		}
	}
	// A binding to [::1] is for the host's loopback only.
	wantRefused6(t, host, up+":8082", nil, "loopback-only binding through a host address")
	if _, err := ext.Greeting(up + ":8082"); err == nil {
		t.Errorf("loopback-only binding reached from the outside")
	}
	// Its twin: the wildcard binding reaches from the outside.
	if got, err := ext.Greeting(up + ":8080"); err != nil || got != labExt6.String() {
		t.Errorf("[::]:8080 from the outside: %q (%v), want the client %s", got, err, labExt6)
	}
	// Not published.
	wantRefused6(t, host, "[::1]:8083", nil, "unpublished port")
	// An IPv4 destination reaches no IPv6 mapping (a socket cannot
	// change family), and nothing listens on the host.
	wantRefused(t, host, "127.0.0.1:8080", nil, "IPv4 loopback to an IPv6-only port")

	// getpeername shows what was connected to; getsockname the real source.
	for _, c := range []struct{ dial, peer string }{
		{"[::1]:8080", "[::1]:8080"},
		{"[::]:8080", "[::1]:8080"}, // connect() takes :: for ::1
		{up + ":8080", up + ":8080"},
	} {
		_, conn := greeting6(t, host, c.dial, nil)
		if got := conn.RemoteAddr().String(); got != c.peer {
			t.Errorf("%s: RemoteAddr %s, want %s", c.dial, got, c.peer)
		}
		if got := peerOf6(t, conn); got != c.peer {
			t.Errorf("%s: getpeername %s, want %s", c.dial, got, c.peer)
		}
		if got := conn.LocalAddr().(*net.TCPAddr).IP.String(); got != gw {
			t.Errorf("%s: local address %s, want the bridge address %s", c.dial, got, gw)
		}
		conn.Close()
	}
	// A client bound to a host address keeps it as its source.
	got, c := greeting6(t, host, "[::1]:8080", &net.TCPAddr{IP: net.IP(labHost6.AsSlice())})
	c.Close()
	if got != labHost6.String() {
		t.Errorf("client bound to %s: server saw %q", labHost6, got)
	}

	// UDP, unconnected: the answer comes from where the datagram went.
	for _, addr := range []string{"[::1]:5353", up + ":5353"} {
		from, seen := udpUnconnected6(t, host, addr, "hello")
		if from.String() != addr {
			t.Errorf("unconnected UDP to %s: answer from %s, want %s", addr, from, addr)
		}
		if seen != gw {
			t.Errorf("unconnected UDP to %s: server saw %s, want %s", addr, seen, gw)
		}
	}
	// UDP, connected: connect6 translates, getpeername6 restores.
	if got := udpExchange(t, host, "[::1]:5353", "connected"); got != gw {
		t.Errorf("connected UDP: server saw %s, want %s", got, gw)
	}
	fd := socket6(t, host, unix.SOCK_DGRAM)
	must(t, unix.Connect(fd, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16(), Port: 5353}))
	if peer, err := unix.Getpeername(fd); err != nil || sa6String(peer) != "[::1]:5353" {
		t.Errorf("connected UDP: getpeername %s (%v), want [::1]:5353", sa6String(peer), err)
	}

	// A client bound to ::1 cannot reach a container: left alone, it
	// finds no listener, as it would without bpfnet.
	before := sockStats(t, s)[SockBoundLoopback]
	wantRefused6(t, host, "[::1]:8080", &net.TCPAddr{IP: net.IPv6loopback}, "client bound to ::1")
	st := sockStats(t, s)
	if st[SockBoundLoopback] != before+1 {
		t.Errorf("bound_loopback %d -> %d, want one more", before, st[SockBoundLoopback])
	}
	for _, k := range []SockStat{SockConnect, SockSendmsg, SockRecvmsg, SockGetpeername} {
		if st[k] == 0 {
			t.Errorf("counter %s is 0", k)
		}
	}
	t.Logf("sock counters: %v", st)

	// The programs touch only the lab host's namespace.
	wantRefused6(t, nil, "[::1]:8080", nil, "real host namespace")
}
