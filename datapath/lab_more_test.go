// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/lab"
)

func publish(t *testing.T, specs ...string) []PortMapping {
	t.Helper()
	var out []PortMapping
	for _, s := range specs {
		m, err := ParsePublish(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

func TestLabHairpin(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
		host := ext.HostAddr.String()
		l.setPorts(t, publish(t, fmt.Sprintf("8080:%s:80", c0.Addr), fmt.Sprintf("8081:%s:80", c1.Addr)))
		echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
		echoTCP(t, &c1.Namespace, c1.Addr.String()+":80")

		// To another container: it sees the client container's address.
		if got := tcpExchange(t, &c1.Namespace, host+":8080", 100000); got != c1.Addr.String() {
			t.Errorf("hairpin to another container: server saw %s, want %s", got, c1.Addr)
		}
		// To itself: the source becomes the gateway, as Docker's hairpin
		// MASQUERADE does, since a packet cannot arrive from its own address.
		if got := tcpExchange(t, &c0.Namespace, host+":8080", 100000); got != l.topo.Bridges[0].Gateway.String() {
			t.Errorf("hairpin to itself: server saw %s, want the gateway %s", got, l.topo.Bridges[0].Gateway)
		}
		// Through the gateway address, which is a host address too.
		if got := tcpExchange(t, &c1.Namespace, l.topo.Bridges[0].Gateway.String()+":8080", 1000); got != c1.Addr.String() {
			t.Errorf("hairpin via gateway: server saw %s", got)
		}
	})
}

// TestLabNotPublished: from outside, a container's own address answers
// nothing, even with a route to it, and an unpublished host port is the
// host's own business.
func TestLabNotPublished(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, ext := l.topo.Containers[0], l.topo.Externals[0]
		l.setPorts(t, publish(t, fmt.Sprintf("8080:%s:80", c0.Addr)))
		echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
		sub := l.topo.Bridges[0].Subnet.String()
		if out, err := ext.Command(context.Background(), "ip", "route", "add", sub, "via", ext.HostAddr.String()).CombinedOutput(); err != nil {
			t.Fatalf("route: %v %s", err, out)
		}
		before := l.drops(t)[DropNotPublished]
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		c, err := ext.DialTCP(ctx, c0.Addr.String()+":80")
		if err == nil {
			c.Close()
			t.Fatal("an external host reached a container's port straight, without a published port")
		}
		// Dropped, not refused nor unroutable: the SYN must time out.
		if !lab.IsTimeout(err) {
			t.Fatalf("dialing the container straight: %v, want a timeout", err)
		}
		if after := l.drops(t)[DropNotPublished]; after <= before {
			t.Errorf("not_published drops %d -> %d, want them counted", before, after)
		}
		// The published port still works.
		if got := tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 10); got != ext.Addr.String() {
			t.Errorf("published port: saw %s", got)
		}
	})
}

// TestLabMappingChange: when a published port's container comes back with
// another address, a UDP client that keeps its source port reaches the new
// address at the next datagram (Docker's conntrack keeps it on the old).
func TestLabMappingChange(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
		echoUDPNamed(t, &c0.Namespace, c0.Addr.String()+":53", "c0")
		echoUDPNamed(t, &c1.Namespace, c1.Addr.String()+":53", "c1")
		l.setPorts(t, publish(t, fmt.Sprintf("5353:%s:53/udp", c0.Addr)))
		var conn *net.UDPConn
		err := ext.Do(func() error {
			var err error
			conn, err = net.DialUDP("udp", &net.UDPAddr{IP: ext.Addr, Port: 40000}, &net.UDPAddr{IP: ext.HostAddr, Port: 5353})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ask := func() string {
			buf := make([]byte, 64)
			for i := 0; i < 5; i++ {
				conn.Write([]byte("who"))
				conn.SetReadDeadline(time.Now().Add(time.Second))
				if n, err := conn.Read(buf); err == nil {
					return string(buf[:n])
				}
			}
			return "no answer"
		}
		if got := ask(); got != "c0" {
			t.Fatalf("before the change: answer %q, want c0", got)
		}
		l.setPorts(t, publish(t, fmt.Sprintf("5353:%s:53/udp", c1.Addr)))
		conn.Write([]byte("who"))
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != "c1" {
			t.Fatalf("first datagram after the change: %q %v, want c1 at once", buf[:n], err)
		}
	})
}

// echoUDPNamed answers every datagram with name.
func echoUDPNamed(t *testing.T, ns *lab.Namespace, addr, name string) {
	t.Helper()
	serveUDP(t, ns, addr, func(*net.UDPAddr, []byte) []byte { return []byte(name) })
}

// TestLabManyFlows opens a thousand UDP flows from each of two containers,
// from the same source ports, to one destination port: masquerade must give
// every flow its own translated tuple and each must be answered.
func TestLabManyFlows(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		ext := l.topo.Externals[0]
		const perContainer = 1000
		srv, err := ext.ListenUDP(ext.Addr.String() + ":9999")
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		var mu sync.Mutex
		seen := map[string]bool{}
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := srv.ReadFromUDP(buf)
				if err != nil {
					return
				}
				if from.IP.String() != ext.HostAddr.String() {
					t.Errorf("flow arrived from %s, want the uplink address", from)
				}
				mu.Lock()
				seen[from.String()] = true
				mu.Unlock()
				srv.WriteToUDP(buf[:n], from)
			}
		}()
		var conns []*net.UDPConn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for _, c := range l.topo.Containers {
			err := c.Do(func() error {
				for i := 0; i < perContainer; i++ {
					conn, err := net.DialUDP("udp", &net.UDPAddr{IP: c.Addr, Port: 20000 + i}, &net.UDPAddr{IP: ext.Addr, Port: 9999})
					if err != nil {
						return err
					}
					conns = append(conns, conn)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		answered := make([]bool, len(conns))
		buf := make([]byte, 64)
		for round := 0; round < 5; round++ {
			for i, c := range conns {
				if !answered[i] {
					c.Write([]byte(fmt.Sprint(i)))
				}
			}
			for i, c := range conns {
				if answered[i] {
					continue
				}
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if n, err := c.Read(buf); err == nil && string(buf[:n]) == fmt.Sprint(i) {
					answered[i] = true
				}
			}
		}
		missing := 0
		for _, a := range answered {
			if !a {
				missing++
			}
		}
		mu.Lock()
		distinct := len(seen)
		mu.Unlock()
		if missing > 0 {
			t.Errorf("%d of %d flows got no answer", missing, len(conns))
		}
		if distinct != len(conns) {
			t.Errorf("%d distinct translated tuples for %d flows", distinct, len(conns))
		}
		entries, err := l.dp.Conntrack()
		if err != nil {
			t.Fatal(err)
		}
		snat := 0
		for _, e := range entries {
			if e.Kind == KindSNAT && !e.Reply {
				snat++
			}
		}
		if snat != len(conns) {
			t.Errorf("%d masquerade flows in conntrack, want %d", snat, len(conns))
		}
	})
}

// farHost adds, behind the external host, a router hop and a far host on a
// link of the given MTU: far is reachable from the host only through the
// external host, which answers ICMP errors for it.
func farHost(t *testing.T, topo *lab.Topology, mtu int) net.IP {
	t.Helper()
	ext := topo.Externals[0]
	name := topo.Prefix + "-far"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	a, b := topo.Prefix+"fa", topo.Prefix+"fb"
	run("ip", "link", "add", a, "netns", ext.Name, "mtu", fmt.Sprint(mtu), "type", "veth", "peer", "name", b, "netns", name, "mtu", fmt.Sprint(mtu))
	run("ip", "-n", ext.Name, "addr", "add", "198.51.100.1/24", "dev", a)
	run("ip", "-n", ext.Name, "link", "set", a, "up")
	run("ip", "-n", name, "addr", "add", "198.51.100.2/24", "dev", b)
	run("ip", "-n", name, "link", "set", b, "up")
	run("ip", "-n", name, "link", "set", "lo", "up")
	run("ip", "-n", name, "route", "add", "default", "via", "198.51.100.1")
	if err := ext.WriteSysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	return net.ParseIP("198.51.100.2")
}

// TestLabICMPErrors: ICMP errors from a router beyond the uplink about a
// masqueraded flow reach the container: fragmentation needed (path-MTU
// discovery) and time exceeded (traceroute).
func TestLabICMPErrors(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, ext := l.topo.Containers[0], l.topo.Externals[0]
		far := farHost(t, l.topo, 1280)

		t.Run("frag_needed", func(t *testing.T) {
			fd := udpSocket(t, &c0.Namespace)
			must(t, unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO))
			must(t, unix.Connect(fd, &unix.SockaddrInet4{Port: 9, Addr: [4]byte(far.To4())}))
			payload := make([]byte, 1400)
			deadline := time.Now().Add(5 * time.Second)
			mtu := 0
			for time.Now().Before(deadline) {
				_, err := unix.Write(fd, payload)
				if errors.Is(err, syscall.EMSGSIZE) {
					mtu, _ = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if mtu != 1280 {
				t.Fatalf("container's path MTU to %s is %d, want 1280 learnt from the translated fragmentation-needed", far, mtu)
			}
		})
		t.Run("time_exceeded", func(t *testing.T) {
			fd := udpSocket(t, &c0.Namespace)
			must(t, unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1))
			// TTL 2: the host forwards it (1 left), the external host
			// cannot: it answers time exceeded to the host's address.
			must(t, unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, 2))
			must(t, unix.Connect(fd, &unix.SockaddrInet4{Port: 33434, Addr: [4]byte(far.To4())}))
			var from net.IP
			for i := 0; i < 20 && from == nil; i++ {
				unix.Write(fd, []byte("probe"))
				time.Sleep(100 * time.Millisecond)
				from = readICMPError(fd, 11 /* ICMP time exceeded */)
			}
			if !from.Equal(ext.Addr) {
				t.Fatalf("time exceeded came from %v, want the external router %s", from, ext.Addr)
			}
		})
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func udpSocket(t *testing.T, ns *lab.Namespace) int {
	t.Helper()
	fd := -1
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// readICMPError reads the socket's error queue for an ICMP error of the
// given type and returns who sent it.
func readICMPError(fd int, icmpType uint8) net.IP {
	buf := make([]byte, 512)
	oob := make([]byte, 512)
	for {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return nil
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil
		}
		for _, m := range msgs {
			if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_RECVERR || len(m.Data) < 16+8 {
				continue
			}
			// struct sock_extended_err: errno u32, origin u8, type u8,
			// code u8, pad u8, info u32, data u32; then the offender.
			origin, typ := m.Data[4], m.Data[5]
			if origin != unix.SO_EE_ORIGIN_ICMP || typ != icmpType {
				continue
			}
			return net.IP(append([]byte(nil), m.Data[16+4:16+8]...))
		}
	}
}

// TestLabConntrackGC: expired entries are collected from Go, live ones are
// kept.
func TestLabConntrackGC(t *testing.T) {
	l := startLabWith(t, twoContainers(), Options{FastPath: true, UDPTimeout: time.Second})
	c0, ext := l.topo.Containers[0], l.topo.Externals[0]
	echoUDP(t, &ext.Namespace, ext.Addr.String()+":9001")
	echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
	udpExchange(t, &c0.Namespace, ext.Addr.String()+":9001", "x")
	tcpExchange(t, &c0.Namespace, ext.Addr.String()+":9000", 10)
	if n, err := l.dp.GC(); err != nil || n != 0 {
		t.Fatalf("GC of live flows deleted %d (%v), want 0", n, err)
	}
	time.Sleep(1500 * time.Millisecond)
	n, err := l.dp.GC()
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("GC deleted %d entries, want the 2 of the expired UDP flow", n)
	}
	entries, err := l.dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Key.Proto != 6 {
			t.Errorf("entry left after GC: %+v", e)
		}
	}
	if len(entries) != 2 {
		t.Errorf("%d entries left, want the TCP flow's 2 (closing, not yet expired)", len(entries))
	}
}

// TestLabTableFull: with a table far smaller than the flows offered, the
// LRU evicts, and an established TCP connection keeps working throughout:
// an evicted half is recreated from the next packet.
func TestLabTableFull(t *testing.T) {
	l := startLabWith(t, twoContainers(), Options{FastPath: true, CTSize: 256})
	c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
	l.setPorts(t, publish(t, fmt.Sprintf("8080:%s:80", c0.Addr), fmt.Sprintf("5353:%s:53/udp", c1.Addr)))
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
	echoUDPNamed(t, &c1.Namespace, c1.Addr.String()+":53", "c1")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := ext.DialTCP(ctx, ext.HostAddr.String()+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	greet := make([]byte, 64)
	if _, err := conn.Read(greet); err != nil {
		t.Fatal(err)
	}
	roundTrip := func() {
		t.Helper()
		msg := []byte("still there?")
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != string(msg) {
			t.Fatalf("established connection broke after the table filled: %q %v", got, err)
		}
	}
	roundTrip()
	// 1000 UDP flows: 2000 entries into a table of 256.
	err = ext.Do(func() error {
		for i := 0; i < 1000; i++ {
			u, err := net.DialUDP("udp", &net.UDPAddr{IP: ext.Addr, Port: 30000 + i}, &net.UDPAddr{IP: ext.HostAddr, Port: 5353})
			if err != nil {
				return err
			}
			u.Write([]byte("x"))
			u.Close()
			if i%100 == 0 {
				roundTrip()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip()
	n, capacity, err := l.dp.CTUsage()
	if err != nil {
		t.Fatal(err)
	}
	if n > capacity || capacity != 256 {
		t.Errorf("table holds %d of %d", n, capacity)
	}
	ev, _ := l.dp.Events()
	t.Logf("table %d/%d; new dnat flows %d, recreated %d, restored halves %d", n, capacity,
		ev[EventCTNewDNAT], ev[EventCTRecreated], ev[EventCTPeerRestored])
}

// TestLabCountersForgotten: the counters of a veth that went away and of a
// port no longer published are dropped at the next Apply.
func TestLabCountersForgotten(t *testing.T) {
	l := startLab(t, twoContainers(), true)
	c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
	l.setPorts(t, publish(t, fmt.Sprintf("8080:%s:80", c1.Addr)))
	echoTCP(t, &c1.Namespace, c1.Addr.String()+":80")
	echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
	tcpExchange(t, &c0.Namespace, ext.Addr.String()+":9000", 100)
	tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 100)
	tr, err := l.dp.Traffic()
	if err != nil {
		t.Fatal(err)
	}
	if tr[uint32(c1.HostVethIndex)].TxPackets == 0 || tr[uint32(c0.HostVethIndex)].TxPackets == 0 {
		t.Fatalf("no traffic counted: %+v", tr)
	}
	if out, err := l.topo.Host.Command(context.Background(), "ip", "link", "del", c1.HostVeth).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	l.setPorts(t, nil)
	tr, err = l.dp.Traffic()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tr[uint32(c1.HostVethIndex)]; ok {
		t.Errorf("counters of deleted %s kept", c1.HostVeth)
	}
	if _, ok := tr[uint32(c0.HostVethIndex)]; !ok {
		t.Errorf("counters of live %s dropped", c0.HostVeth)
	}
	pc, err := l.dp.PortConnections()
	if err != nil {
		t.Fatal(err)
	}
	if len(pc) != 0 {
		t.Errorf("port counters of unpublished ports kept: %v", pc)
	}
}
