// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestHostSocketHolds: which host sockets take a hostPort, as bind(2)
// judges a second bind, beside those that do not.
func TestHostSocketHolds(t *testing.T) {
	pod := netip.MustParseAddr("10.88.0.2")
	m := func(hostIP string, port uint16, proto datapath.Proto) datapath.PortMapping {
		pm := datapath.PortMapping{Proto: proto, HostPort: port, ContainerIP: pod, ContainerPort: 80}
		if hostIP != "" {
			pm.HostIP = netip.MustParseAddr(hostIP)
		}
		return pm
	}
	m6 := func(hostIP string, port uint16) datapath.PortMapping {
		pm := datapath.PortMapping{Proto: datapath.TCP, HostIP: netip.IPv6Unspecified(), HostPort: port, ContainerIP: netip.MustParseAddr("fd00:88::2"), ContainerPort: 80}
		if hostIP != "" {
			pm.HostIP = netip.MustParseAddr(hostIP)
		}
		return pm
	}
	sock := func(addr string, proto datapath.Proto, v6only bool) HostSocket {
		return HostSocket{Proto: proto, Addr: netip.MustParseAddrPort(addr), V6Only: v6only}
	}
	for _, tc := range []struct {
		sock  HostSocket
		m     datapath.PortMapping
		holds bool
	}{
		{sock("0.0.0.0:8080", datapath.TCP, false), m("", 8080, datapath.TCP), true},
		{sock("127.0.0.1:8080", datapath.TCP, false), m("", 8080, datapath.TCP), true},
		{sock("0.0.0.0:8080", datapath.TCP, false), m("192.0.2.1", 8080, datapath.TCP), true},
		{sock("192.0.2.1:8080", datapath.TCP, false), m("192.0.2.1", 8080, datapath.TCP), true},
		{sock("[::]:8080", datapath.TCP, false), m("", 8080, datapath.TCP), true},
		{sock("[::ffff:192.0.2.1]:53", datapath.UDP, false), m("192.0.2.1", 53, datapath.UDP), true},
		// An IPv6 hostPort (the container's IPv6 address): IPv6 sockets
		// hold it, a v6-only one too.
		{sock("[::]:8080", datapath.TCP, true), m6("", 8080), true},
		{sock("[2001:db8::1]:8080", datapath.TCP, false), m6("", 8080), true},
		{sock("[2001:db8::1]:8080", datapath.TCP, true), m6("2001:db8::1", 8080), true},
		{sock("[::]:8080", datapath.TCP, true), m6("2001:db8::1", 8080), true},
		// Its twins: another address, port, protocol or family.
		{sock("0.0.0.0:8080", datapath.TCP, false), m6("", 8080), false},
		{sock("[2001:db8::2]:8080", datapath.TCP, false), m6("2001:db8::1", 8080), false},
		{sock("192.0.2.2:8080", datapath.TCP, false), m("192.0.2.1", 8080, datapath.TCP), false},
		{sock("0.0.0.0:8081", datapath.TCP, false), m("", 8080, datapath.TCP), false},
		{sock("0.0.0.0:8080", datapath.UDP, false), m("", 8080, datapath.TCP), false},
		{sock("[::]:8080", datapath.TCP, true), m("", 8080, datapath.TCP), false},
		{sock("[2001:db8::1]:8080", datapath.TCP, false), m("", 8080, datapath.TCP), false},
	} {
		if got := tc.sock.Holds(tc.m); got != tc.holds {
			t.Errorf("%s holds %s: %v, want %v", tc.sock, tc.m, got, tc.holds)
		}
	}
}

// TestHostSockets: the TCP listener and the bound UDP socket of this
// process are listed, and refuse a hostPort of theirs with ErrPortTaken;
// a connected UDP socket and a TCP connection's ends are not listed, and
// another port is accepted.
func TestHostSockets(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	udp, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	client, err := net.Dial("udp4", udp.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	tcpClient, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcpClient.Close()
	socks, err := HostSockets()
	if err != nil {
		t.Fatal(err)
	}
	lnPort, udpPort := uint16(ln.Addr().(*net.TCPAddr).Port), uint16(udp.LocalAddr().(*net.UDPAddr).Port)
	clientPort := uint16(client.LocalAddr().(*net.UDPAddr).Port)
	tcpClientPort := uint16(tcpClient.LocalAddr().(*net.TCPAddr).Port)
	has := func(proto datapath.Proto, port uint16) bool {
		return slices.ContainsFunc(socks, func(s HostSocket) bool { return s.Proto == proto && s.Addr.Port() == port })
	}
	if !has(datapath.TCP, lnPort) || !has(datapath.UDP, udpPort) {
		t.Errorf("HostSockets lacks the listener on %d/tcp or the socket on %d/udp: %v", lnPort, udpPort, socks)
	}
	if has(datapath.UDP, clientPort) || has(datapath.TCP, tcpClientPort) {
		t.Errorf("HostSockets lists a connected socket (%d/udp or %d/tcp): %v", clientPort, tcpClientPort, socks)
	}
	// IPV6_V6ONLY is read: Go's "tcp" on :: is dual-stack, "tcp6" is not.
	for network, v6only := range map[string]bool{"tcp": false, "tcp6": true} {
		l, err := net.Listen(network, "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		port := uint16(l.Addr().(*net.TCPAddr).Port)
		socks, err := HostSockets()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(socks, func(s HostSocket) bool { return s.Proto == datapath.TCP && s.Addr.Port() == port })
		if i < 0 || socks[i].V6Only != v6only || !socks[i].Addr.Addr().IsUnspecified() {
			t.Errorf("a %s listener on [::]:%d: listed as %v, want V6Only %v", network, port, socks, v6only)
		}
	}
	pod := netip.MustParseAddr("10.88.0.2")
	for _, tc := range []struct {
		m     datapath.PortMapping
		taken bool
	}{
		{datapath.PortMapping{Proto: datapath.TCP, HostPort: lnPort, ContainerIP: pod, ContainerPort: 80}, true},
		{datapath.PortMapping{Proto: datapath.UDP, HostPort: udpPort, ContainerIP: pod, ContainerPort: 53, HostIP: netip.MustParseAddr("192.0.2.1")}, true},
		{datapath.PortMapping{Proto: datapath.UDP, HostPort: lnPort, ContainerIP: pod, ContainerPort: 80}, lnPort == udpPort},
		{datapath.PortMapping{Proto: datapath.UDP, HostPort: clientPort, ContainerIP: pod, ContainerPort: 53}, clientPort == udpPort},
	} {
		err := checkHostSockets([]datapath.PortMapping{tc.m}, socks)
		if errors.Is(err, datapath.ErrPortTaken) != tc.taken || (!tc.taken && err != nil) {
			t.Errorf("%s: %v, want taken %v", tc.m, err, tc.taken)
		}
	}
}
