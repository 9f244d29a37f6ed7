// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/lab"
)

// TestSockPrograms loads the sock programs into the generated struct
// (TestVerifier checks their sizes): the programs the loader attaches
// are every program of the object.
func TestSockPrograms(t *testing.T) {
	requireRoot(t)
	spec, err := SockSpec(1, false)
	if err != nil {
		t.Fatal(err)
	}
	var progs sockPrograms
	err = spec.LoadAndAssign(&progs, nil)
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		t.Fatalf("%-50v", ve)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer progs.Close()
	attached := sockProgramMap(&progs)
	for name, p := range attached {
		if p == nil {
			t.Errorf("%s: not loaded", name)
		}
	}
	if len(attached) != len(spec.Programs) {
		t.Errorf("the loader attaches %d programs, the object has %d", len(attached), len(spec.Programs))
	}
}

// sockLab is a lab with the datapath, ports published on container 0 and
// servers behind them: TCP echo on 80 and 81, UDP echo on 53.
func sockLab(t *testing.T) *labDatapath {
	t.Helper()
	return sockLabWith(t, true)
}

func sockLabWith(t *testing.T, fast bool) *labDatapath {
	t.Helper()
	l := startLabWith(t, twoContainers(), Options{FastPath: fast})
	c0 := l.topo.Containers[0]
	l.setPorts(t, publish(t,
		fmt.Sprintf("8080:%s:80", c0.Addr),
		fmt.Sprintf("127.0.0.1:8082:%s:81", c0.Addr),
		fmt.Sprintf("5353:%s:53/udp", c0.Addr)))
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":81")
	echoUDP(t, &c0.Namespace, c0.Addr.String()+":53")
	return l
}

// startSock starts the sock programs for the lab host's namespace; they
// are closed (not removed) at the end of the test, before the datapath is
// removed.
func startSock(t *testing.T, l *labDatapath) *Sock {
	t.Helper()
	var s *Sock
	err := l.topo.Host.Do(func() error {
		var err error
		s, err = l.dp.StartSock(SockOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("starting the sock programs: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func sockStats(t *testing.T, s *Sock) map[SockStat]uint64 {
	t.Helper()
	return mustRead(t, s.Stats)
}

// dialIn connects from ns (nil: the test's own, real host namespace).
func dialIn(ns *lab.Namespace, addr string, local *net.TCPAddr) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d := &net.Dialer{}
	if local != nil {
		d.LocalAddr = local
	}
	if ns == nil {
		return d.DialContext(ctx, "tcp4", addr)
	}
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	return c, err
}

// wantRefused checks that a connection from ns to addr is refused: nothing
// translated it to a container, and nothing listens there.
func wantRefused(t *testing.T, ns *lab.Namespace, addr string, local *net.TCPAddr, why string) {
	t.Helper()
	c, err := dialIn(ns, addr, local)
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

// udpUnconnected sends msg from an unconnected socket of ns to addr and
// returns where the answer came from and what the server saw.
func udpUnconnected(t *testing.T, ns *lab.Namespace, addr, msg string) (from net.Addr, seen string) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", "0.0.0.0:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	for try := 0; try < 5; try++ {
		if _, err := pc.WriteTo([]byte(msg), to); err != nil {
			t.Fatalf("sending to %s: %v", addr, err)
		}
		pc.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			seen, body, _ := strings.Cut(string(buf[:n]), " ")
			if body != msg {
				t.Fatalf("udp echo %q, want %q", body, msg)
			}
			return from, seen
		}
	}
	t.Fatalf("no UDP answer from %s on an unconnected socket", addr)
	return nil, ""
}

func peerOf(t *testing.T, c net.Conn) string {
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
	in, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		t.Fatalf("getpeername: %T", sa)
	}
	return fmt.Sprintf("%s:%d", net.IP(in.Addr[:]), in.Port)
}

// TestSockPublishedFromHost: the host's own processes reach published
// ports through loopback and host addresses, TCP and UDP, and see the
// address they asked for as their peer.
func TestSockPublishedFromHost(t *testing.T) {
	forBothPaths(t, testSockPublishedFromHost)
}

func testSockPublishedFromHost(t *testing.T, fast bool) {
	l := sockLabWith(t, fast)
	s := startSock(t, l)
	host := l.topo.Host
	gw := l.topo.Bridges[0].Gateway.String()
	uplinkAddr := l.topo.Externals[0].HostAddr.String()

	// The kernel picks the source for the rewritten destination: the
	// bridge address, never 127.0.0.1 (which could not leave lo).
	for _, addr := range []string{"127.0.0.1:8080", uplinkAddr + ":8080", gw + ":8080", "127.0.0.2:8080", "0.0.0.0:8080", "127.0.0.1:8082"} {
		if got := tcpExchange(t, host, addr, 100000); got != gw {
			t.Errorf("%s: container saw client %s, want the bridge address %s", addr, got, gw)
		}
	}
	// A binding to 127.0.0.1 is for loopback only.
	wantRefused(t, host, uplinkAddr+":8082", nil, "loopback-only binding through a host address")
	wantRefused(t, host, "127.0.0.2:8082", nil, "binding to 127.0.0.1 through 127.0.0.2")
	// Not published.
	wantRefused(t, host, "127.0.0.1:8083", nil, "unpublished port")

	// getpeername shows what was connected to; getsockname the real source.
	c, err := dialIn(host, "127.0.0.1:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RemoteAddr().String(); got != "127.0.0.1:8080" {
		t.Errorf("RemoteAddr %s, want 127.0.0.1:8080", got)
	}
	if got := peerOf(t, c); got != "127.0.0.1:8080" {
		t.Errorf("getpeername %s, want 127.0.0.1:8080", got)
	}
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != gw {
		t.Errorf("local address %s, want the bridge address %s", got, gw)
	}
	c.Close()
	// A client bound to a host address keeps it as its source.
	c, err = dialIn(host, "127.0.0.1:8080", &net.TCPAddr{IP: net.ParseIP(uplinkAddr)})
	if err != nil {
		t.Fatalf("client bound to %s: %v", uplinkAddr, err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != uplinkAddr+"\n" {
		t.Errorf("client bound to %s: server saw %q (%v)", uplinkAddr, line, err)
	}
	c.Close()

	// UDP, unconnected: the answer comes from where the datagram went.
	for _, addr := range []string{"127.0.0.1:5353", uplinkAddr + ":5353"} {
		from, seen := udpUnconnected(t, host, addr, "hello")
		if from.String() != addr {
			t.Errorf("unconnected UDP to %s: answer from %s, want %s", addr, from, addr)
		}
		if seen != gw {
			t.Errorf("unconnected UDP to %s: server saw %s, want %s", addr, seen, gw)
		}
	}
	// UDP, connected.
	if got := udpExchange(t, host, "127.0.0.1:5353", "connected"); got != gw {
		t.Errorf("connected UDP: server saw %s, want %s", got, gw)
	}

	// A client bound to 127.0.0.1 cannot reach a container (the kernel
	// refuses a loopback source off lo): it is left alone and finds no
	// listener, as it would without bpfnet.
	before := sockStats(t, s)[SockBoundLoopback]
	wantRefused(t, host, "127.0.0.1:8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, "client bound to 127.0.0.1")
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
	if pinned, err := ReadSockStats(l.pin); err != nil || fmt.Sprint(pinned) != fmt.Sprint(st) {
		t.Errorf("ReadSockStats: %v (%v), want %v", pinned, err, st)
	}

	// port_conns counts the host's connections with the TC datapath's.
	conns, err := l.dp.PortConnections()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []PortBinding{
		{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: 8080},
		{Proto: TCP, HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8082},
		{Proto: UDP, HostIP: netip.IPv4Unspecified(), HostPort: 5353},
	} {
		if conns[b] == 0 {
			t.Errorf("port_conns of %v is 0 (all: %v)", b, conns)
		}
	}
}

// TestSockIsolation: the programs sit on the root cgroup but touch only the
// sockets of the lab host's namespace.
func TestSockIsolation(t *testing.T) {
	l := sockLab(t)
	s := startSock(t, l)
	c1 := l.topo.Containers[1]
	uplinkAddr := l.topo.Externals[0].HostAddr.String()

	real, err := NetnsCookie()
	if err != nil {
		t.Fatal(err)
	}
	if real == s.NetnsCookie() {
		t.Fatalf("the lab host namespace has the test's own cookie %d", real)
	}
	before := sockStats(t, s)
	// The real host: no listener on 8080 there, and nothing translates.
	wantRefused(t, nil, "127.0.0.1:8080", nil, "real host namespace")
	// A container's loopback is its own.
	wantRefused(t, &c1.Namespace, "127.0.0.1:8080", nil, "container namespace")
	// A container reaches the published port through the TC hairpin,
	// which keeps its address as the source.
	if got := tcpExchange(t, &c1.Namespace, uplinkAddr+":8080", 1000); got != c1.Addr.String() {
		t.Errorf("hairpin: server saw %s, want %s", got, c1.Addr)
	}
	if got := udpExchange(t, &c1.Namespace, uplinkAddr+":5353", "x"); got != c1.Addr.String() {
		t.Errorf("udp hairpin: server saw %s, want %s", got, c1.Addr)
	}
	if after := sockStats(t, s); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("sock counters changed by other namespaces: %v -> %v", before, after)
	}
	// And the lab host still works.
	if got := tcpExchange(t, l.topo.Host, "127.0.0.1:8080", 10); got != l.topo.Bridges[0].Gateway.String() {
		t.Errorf("lab host: server saw %s", got)
	}
}

func sockLinks(t *testing.T, s *Sock) map[string]SockLink {
	t.Helper()
	ls, err := s.Links()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != len(sockHooks) {
		t.Fatalf("%d links, want %d", len(ls), len(sockHooks))
	}
	return ls
}

// cgroupProgs lists the programs attached to cgroup at each sock hook, by
// program name. (A cgroup query gives no link ids.)
func cgroupProgs(t *testing.T, cgroup string) map[string][]ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]ebpf.ProgramID{}
	for _, h := range sockHooks {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: h.attach})
		if err != nil {
			t.Fatalf("querying %s programs of %s: %v", h.name, cgroup, err)
		}
		for _, p := range r.Programs {
			out[h.name] = append(out[h.name], p.ID)
		}
	}
	return out
}

// TestSockRestart: pinned links outlive the process and are adopted (same
// links, new programs) by the next; the reverse translations survive;
// Remove detaches and unpins.
func TestSockRestart(t *testing.T) {
	l := sockLab(t)
	host := l.topo.Host
	gw := l.topo.Bridges[0].Gateway.String()
	s1 := startSock(t, l)
	links1 := sockLinks(t, s1)
	onCgroup := cgroupProgs(t, s1.CgroupPath())
	for name, l := range links1 {
		if !slices.Contains(onCgroup[name], l.ProgramID) {
			t.Errorf("program %d of %s is not on %s (%v)", l.ProgramID, name, s1.CgroupPath(), onCgroup[name])
		}
	}
	for name := range links1 {
		if _, err := os.Stat(SockDir(l.pin) + "/" + name); err != nil {
			t.Errorf("link of %s not pinned: %v", name, err)
		}
	}
	// A connection that lives across the restart.
	old, err := dialIn(host, "127.0.0.1:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	// The process goes away: everything closed, nothing unpinned.
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tcpExchange(t, host, "127.0.0.1:8080", 1000); got != gw {
		t.Errorf("with no process: server saw %s", got)
	}

	// The next one adopts the pins.
	err = host.Do(func() error {
		dp, err := NewEBPF(Options{PinPath: l.pin, FastPath: true})
		if err != nil {
			return err
		}
		l.dp = dp
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c0 := l.topo.Containers[0]
	l.setPorts(t, publish(t,
		fmt.Sprintf("8080:%s:80", c0.Addr),
		fmt.Sprintf("127.0.0.1:8082:%s:81", c0.Addr),
		fmt.Sprintf("5353:%s:53/udp", c0.Addr)))
	s2 := startSock(t, l)
	links2 := sockLinks(t, s2)
	for name, l1 := range links1 {
		l2 := links2[name]
		if l2.LinkID != l1.LinkID {
			t.Errorf("%s: link %d after restart, want the pinned %d adopted", name, l2.LinkID, l1.LinkID)
		}
		if l2.ProgramID == l1.ProgramID {
			t.Errorf("%s: still program %d after restart, want the new one", name, l2.ProgramID)
		}
	}
	// Updated in place: the new program replaced the old, nothing doubled.
	onCgroup = cgroupProgs(t, s2.CgroupPath())
	for name, l1 := range links1 {
		if !slices.Contains(onCgroup[name], links2[name].ProgramID) || slices.Contains(onCgroup[name], l1.ProgramID) {
			t.Errorf("%s on the cgroup: %v, want %d in place of %d", name, onCgroup[name], links2[name].ProgramID, l1.ProgramID)
		}
	}
	if got := tcpExchange(t, host, "127.0.0.1:8080", 1000); got != gw {
		t.Errorf("after restart: server saw %s", got)
	}
	if got := peerOf(t, old); got != "127.0.0.1:8080" {
		t.Errorf("connection of the previous run: getpeername %s, want 127.0.0.1:8080 (sock_rev4 adopted)", got)
	}
	from, _ := udpUnconnected(t, host, "127.0.0.1:5353", "again")
	if from.String() != "127.0.0.1:5353" {
		t.Errorf("after restart: UDP answer from %s", from)
	}

	// Remove: detached at once, pins gone.
	if err := s2.Remove(); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, host, "127.0.0.1:8080", nil, "after Remove")
	if _, err := os.Stat(SockDir(l.pin)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Remove: %v", SockDir(l.pin), err)
	}
	for _, name := range []string{"sock_rev4", "sock_rev6", "sock_stats"} {
		if _, err := os.Stat(l.pin + "/globals/" + name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("map pin %s still there after Remove: %v", name, err)
		}
	}
	onCgroup = cgroupProgs(t, s2.CgroupPath())
	for name, l := range links2 {
		if slices.Contains(onCgroup[name], l.ProgramID) {
			t.Errorf("program %d of %s still on %s after Remove", l.ProgramID, name, s2.CgroupPath())
		}
	}

	// Without an open Sock (bpfnet down), removing the pins detaches.
	s3 := startSock(t, l)
	if got := tcpExchange(t, host, "127.0.0.1:8080", 10); got != gw {
		t.Errorf("third start: server saw %s", got)
	}
	s3.Close()
	if err := RemoveSockPins(l.pin); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		c, err := dialIn(host, "127.0.0.1:8080", nil)
		if err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("after RemoveSockPins: %v, want connection refused", err)
			}
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Error("still translated after the link pins were removed with no process holding them")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSockCgroupPath: the programs serve the processes of their cgroup
// only, and a restart with another cgroup moves them there.
func TestSockCgroupPath(t *testing.T) {
	l := sockLab(t)
	root, err := DefaultCgroupPath()
	if err != nil {
		t.Fatal(err)
	}
	child := tempCgroup(t, root, "bpfnet-sock-test-")
	gw := l.topo.Bridges[0].Gateway.String()
	var s *Sock
	err = l.topo.Host.Do(func() error {
		var err error
		s, err = l.dp.StartSock(SockOptions{CgroupPath: child})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	childLinks := sockLinks(t, s)

	// The test process is not in the child cgroup: not translated.
	wantRefused(t, l.topo.Host, "127.0.0.1:8080", nil, "process outside the cgroup")
	// A process in it is.
	nc := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec nsenter --net="$2" -- busybox nc -w 2 127.0.0.1 8080 </dev/null`,
		"sh", child, l.topo.Host.Path)
	nc.Dir = "/"
	out, err := nc.Output()
	if line, _, _ := strings.Cut(string(out), "\n"); line != gw {
		t.Errorf("process in the cgroup: got %q (%v), want the greeting %s", out, err, gw)
	}

	// Restart on the root cgroup: the pinned links of the child are
	// replaced, not updated.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = startSock(t, l)
	for name, l2 := range sockLinks(t, s) {
		if l2.LinkID == childLinks[name].LinkID {
			t.Errorf("%s: link %d of the child cgroup kept for the root", name, l2.LinkID)
		}
	}
	for name, ids := range cgroupProgs(t, child) {
		if len(ids) > 0 {
			t.Errorf("%s: programs %v still on the child cgroup", name, ids)
		}
	}
	if got := tcpExchange(t, l.topo.Host, "127.0.0.1:8080", 10); got != gw {
		t.Errorf("on the root cgroup: server saw %s", got)
	}
}

// mapped is the IPv4-mapped IPv6 form of an "a.b.c.d:port" address.
func mapped(t *testing.T, addr string) *unix.SockaddrInet6 {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return &unix.SockaddrInet6{Addr: netip.AddrFrom16(ap.Addr().As16()).As16(), Port: int(ap.Port())}
}

func sa6String(sa unix.Sockaddr) string {
	in, ok := sa.(*unix.SockaddrInet6)
	if !ok {
		return fmt.Sprintf("%T %v", sa, sa)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(in.Addr), uint16(in.Port)).String()
}

// socket6 makes a dual-stack IPv6 socket in ns, with a receive timeout.
func socket6(t *testing.T, ns *lab.Namespace, typ int) int {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	must(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	must(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0))
	return fd
}

// TestSockDualStack: IPv6 sockets reaching the published ports through
// IPv4-mapped addresses (Java's, Go's "udp" on ":0") are served too.
func TestSockDualStack(t *testing.T) {
	l := sockLab(t)
	startSock(t, l)
	host := l.topo.Host
	gw := l.topo.Bridges[0].Gateway.String()
	uplinkAddr := l.topo.Externals[0].HostAddr.String()
	want := func(addr string) string { return "[::ffff:" + strings.Replace(addr, ":", "]:", 1) }

	// TCP: connect6 translates, getpeername6 restores.
	for _, addr := range []string{"127.0.0.1:8080", uplinkAddr + ":8080", "127.0.0.1:8082"} {
		fd := socket6(t, host, unix.SOCK_STREAM)
		if err := unix.Connect(fd, mapped(t, addr)); err != nil {
			t.Errorf("connecting an IPv6 socket to %s: %v", want(addr), err)
			continue
		}
		buf := make([]byte, 64)
		n, err := unix.Read(fd, buf)
		if err != nil || string(buf[:n]) != gw+"\n" {
			t.Errorf("%s: greeting %q (%v), want %s", want(addr), buf[:max(n, 0)], err, gw)
		}
		peer, err := unix.Getpeername(fd)
		if err != nil || sa6String(peer) != want(addr) {
			t.Errorf("%s: getpeername %s (%v)", want(addr), sa6String(peer), err)
		}
	}

	// UDP, unconnected: sendmsg4 translates, recvmsg6 restores.
	var pc net.PacketConn
	err := host.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if la := pc.LocalAddr().(*net.UDPAddr); la.IP.To4() != nil {
		t.Fatalf("ListenPacket(udp, :0) gave an IPv4 socket %s; the test wants a dual-stack one", la)
	}
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:5353"))
	buf := make([]byte, 2048)
	got := false
	for try := 0; try < 5 && !got; try++ {
		pc.WriteTo([]byte("ds"), to)
		pc.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			continue
		}
		got = true
		if ap := from.(*net.UDPAddr).AddrPort(); ap.Addr().Unmap().String() != "127.0.0.1" || ap.Port() != 5353 {
			t.Errorf("dual-stack unconnected UDP: answer from %s, want 127.0.0.1:5353", from)
		}
		if string(buf[:n]) != gw+" ds" {
			t.Errorf("dual-stack unconnected UDP: answer %q", buf[:n])
		}
	}
	if !got {
		t.Error("dual-stack unconnected UDP: no answer")
	}

	// UDP, connected: connect6 translates, getpeername6 restores.
	fd := socket6(t, host, unix.SOCK_DGRAM)
	must(t, unix.Connect(fd, mapped(t, "127.0.0.1:5353")))
	got = false
	for try := 0; try < 5 && !got; try++ {
		if _, err := unix.Write(fd, []byte("dsc")); err != nil {
			t.Fatal(err)
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			continue
		}
		got = true
		if string(buf[:n]) != gw+" dsc" {
			t.Errorf("dual-stack connected UDP: answer %q", buf[:n])
		}
	}
	if !got {
		t.Error("dual-stack connected UDP: no answer")
	}
	if peer, err := unix.Getpeername(fd); err != nil || sa6String(peer) != "[::ffff:127.0.0.1]:5353" {
		t.Errorf("dual-stack connected UDP: getpeername %s (%v)", sa6String(peer), err)
	}
}
