// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Environment variables that turn a test into the child half of a
// re-executed test binary.
const (
	envFailOnPurpose = "BPFNET_LAB_FAIL_ON_PURPOSE"
	envHang          = "BPFNET_LAB_HANG"
)

// startNetns is the inode of the network namespace the test binary started
// in: the real host's.
var startNetns uint64

func TestMain(m *testing.M) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		fmt.Fprintf(os.Stderr, "lab: %v\n", err)
		os.Exit(1)
	}
	startNetns = st.Ino
	if os.Geteuid() == 0 {
		if err := Sweep(); err != nil {
			fmt.Fprintf(os.Stderr, "lab: sweeping leftovers of earlier runs: %v\n", err)
		}
	}
	code := m.Run()
	// Whatever the tests did, no thread may have been left in one of the
	// lab's namespaces.
	if stray := strayThreads(startNetns); len(stray) > 0 {
		fmt.Fprintf(os.Stderr, "lab: threads left in other network namespaces: %v\n", stray)
		code = 1
	}
	os.Exit(code)
}

// requireRoot: see lab.RequireRoot.
var requireRoot = RequireRoot

// ---- Unit tests (no root) ----

func TestNewPrefix(t *testing.T) {
	seen := map[string]bool{}
	const n = 200
	for range n {
		p := NewPrefix()
		if len(p) != 6 || !strings.HasPrefix(p, "bn") || !ValidPrefix(p) {
			t.Fatalf("NewPrefix() = %q: want bn + 4 base36 characters", p)
		}
		seen[p] = true
	}
	// 200 draws out of 36^4: a few collisions are possible, many are not.
	if len(seen) < n-3 {
		t.Fatalf("NewPrefix produced only %d distinct values out of %d", len(seen), n)
	}
}

func TestMakePlanDefaults(t *testing.T) {
	p, err := makePlan(Config{
		Prefix:     "bnabcd",
		Bridges:    []BridgeConfig{{}, {Name: "web", Subnet: "192.168.50.0/24", Gateway: "192.168.50.254"}},
		Containers: []ContainerConfig{{}, {Addr: "172.30.0.2"}, {}, {Bridge: 1}, {Bridge: 1, Name: "db"}},
		Externals:  []ExternalConfig{{}, {Subnet: "10.99.0.0/30"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.host != "bnabcd-host" {
		t.Errorf("host namespace = %q", p.host)
	}
	wantBridges := []struct{ name, subnet, gw string }{
		{"bnabcd-br0", "172.30.0.0/24", "172.30.0.1"},
		{"bnabcd-web", "192.168.50.0/24", "192.168.50.254"},
	}
	for i, w := range wantBridges {
		b := p.bridges[i]
		if b.name != w.name || b.subnet.String() != w.subnet || b.gateway.String() != w.gw {
			t.Errorf("bridge %d = %s %s %s, want %v", i, b.name, b.subnet, b.gateway, w)
		}
	}
	// Container 1 asked for .2, so automatic addresses skip it.
	wantContainers := []struct{ ns, veth, addr string }{
		{"bnabcd-c0", "bnabcdv0", "172.30.0.3"},
		{"bnabcd-c1", "bnabcdv1", "172.30.0.2"},
		{"bnabcd-c2", "bnabcdv2", "172.30.0.4"},
		{"bnabcd-c3", "bnabcdv3", "192.168.50.2"},
		{"bnabcd-db", "bnabcdv4", "192.168.50.3"},
	}
	for i, w := range wantContainers {
		c := p.containers[i]
		if c.ns != w.ns || c.hostVeth != w.veth || c.addr.String() != w.addr {
			t.Errorf("container %d = %s %s %s, want %v", i, c.ns, c.hostVeth, c.addr, w)
		}
	}
	wantExternals := []struct{ ns, uplink, host, addr string }{
		{"bnabcd-x0", "bnabcdu0", "10.231.0.1", "10.231.0.2"},
		{"bnabcd-x1", "bnabcdu1", "10.99.0.1", "10.99.0.2"},
	}
	for i, w := range wantExternals {
		e := p.externals[i]
		if e.ns != w.ns || e.uplink != w.uplink || e.hostAddr.String() != w.host || e.addr.String() != w.addr {
			t.Errorf("external %d = %s %s %s %s, want %v", i, e.ns, e.uplink, e.hostAddr, e.addr, w)
		}
	}
	// Every link name must fit the kernel's limit and be recognised by
	// Cleanup as belonging to the prefix, and by nothing else.
	var names []string
	for _, b := range p.bridges {
		names = append(names, b.name)
	}
	for _, c := range p.containers {
		names = append(names, c.hostVeth, c.peerTmp)
	}
	for _, e := range p.externals {
		names = append(names, e.uplink, e.peerTmp)
	}
	for _, n := range names {
		if len(n) > ifNameMax {
			t.Errorf("link name %q longer than %d", n, ifNameMax)
		}
		if !ownsLink("bnabcd", n) {
			t.Errorf("ownsLink(bnabcd, %q) = false", n)
		}
		if ownsLink("bnabc", n) || ownsLink("bnabcde", n) {
			t.Errorf("link %q claimed by another prefix", n)
		}
	}
}

func TestMakePlanErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"empty prefix", Config{}, "invalid prefix"},
		{"uppercase prefix", Config{Prefix: "BNabcd"}, "invalid prefix"},
		{"link name too long", Config{Prefix: "bnabcdefghi", Bridges: []BridgeConfig{{Name: "bridge"}}}, "longer than the kernel limit"},
		{"addr outside subnet", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Addr: "10.0.0.2"}}}, "outside subnet"},
		{"addr is gateway", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Addr: "172.30.0.1"}}}, "already used"},
		{"duplicate addr", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Addr: "172.30.0.9"}, {Addr: "172.30.0.9"}}}, "already used"},
		{"broadcast addr", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Addr: "172.30.0.255"}}}, "broadcast"},
		{"bridge index", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Bridge: 1}}}, "out of range"},
		{"overlap", Config{Prefix: "bnabcd", Bridges: []BridgeConfig{{Subnet: "10.231.0.0/16"}}}, "overlaps"},
		{"host bits", Config{Prefix: "bnabcd", Bridges: []BridgeConfig{{Subnet: "172.30.0.1/24"}}}, "host bits"},
		{"ipv6", Config{Prefix: "bnabcd", Bridges: []BridgeConfig{{Subnet: "fd00::/64"}}}, "only IPv4"},
		{"too small", Config{Prefix: "bnabcd", Bridges: []BridgeConfig{{Subnet: "172.30.0.0/31"}}}, "too small"},
		{"subnet full", Config{Prefix: "bnabcd", Bridges: []BridgeConfig{{Subnet: "172.30.0.0/29"}}, Containers: make([]ContainerConfig, 6)}, "no free address"},
		{"namespace clash", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Name: "host"}}}, "used twice"},
		{"bad name", Config{Prefix: "bnabcd", Containers: []ContainerConfig{{Name: "a/b"}}}, "invalid name"},
		{"external same addr", Config{Prefix: "bnabcd", Externals: []ExternalConfig{{Addr: "10.231.0.1"}}}, "also the host side"},
		{"mtu", Config{Prefix: "bnabcd", MTU: 10}, "invalid MTU"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := makePlan(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("makePlan error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	// A /29 has 6 hosts: the gateway and 5 containers fit exactly.
	if _, err := makePlan(Config{Prefix: "bnabcd", Bridges: []BridgeConfig{{Subnet: "172.30.0.0/29"}}, Containers: make([]ContainerConfig, 5)}); err != nil {
		t.Errorf("5 containers in a /29: %v", err)
	}
}

func TestOwnsLink(t *testing.T) {
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"bnabcd-br0", true},
		{"bnabcdv0", true},
		{"bnabcdp12", true},
		{"bnabcdu3", true},
		{"bnabcdq3", true},
		{"bnabcd", false},
		{"bnabcdv", false},
		{"bnabcdx0", false},
		{"bnabcdv0a", false},
		{"bnabcde-br0", false},
		{"eth0", false},
	} {
		if got := ownsLink("bnabcd", tt.name); got != tt.want {
			t.Errorf("ownsLink(bnabcd, %q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestRecord(t *testing.T) {
	start, err := processStart(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r := record{pid: os.Getpid(), start: start}
	got, err := parseRecord([]byte(r.String()))
	if err != nil || got != r {
		t.Fatalf("parseRecord(%q) = %v, %v", r.String(), got, err)
	}
	if !got.alive() {
		t.Error("own process not alive")
	}
	if (record{pid: os.Getpid(), start: start + 1}).alive() {
		t.Error("record with another start time (reused PID) considered alive")
	}
	if _, err := parseRecord([]byte("pid=12\n")); err == nil {
		t.Error("incomplete record accepted")
	}
	if err := Cleanup("x"); err == nil {
		t.Error("Cleanup accepted a one-letter prefix")
	}
	if err := Cleanup(""); err == nil {
		t.Error("Cleanup accepted an empty prefix")
	}
}

// ---- Helpers for the root tests ----

// echoServer accepts connections on l, reports each client's address on
// the returned channel and echoes everything back until the client closes
// its write side.
func echoServer(t *testing.T, l net.Listener) <-chan net.Addr {
	t.Helper()
	t.Cleanup(func() { l.Close() })
	seen := make(chan net.Addr, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr()
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
	return seen
}

// exchange sends n random bytes over c and checks that exactly the same
// bytes come back.
func exchange(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, n)
	rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading echo from %s: %v", c.RemoteAddr(), err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing to %s: %v", c.RemoteAddr(), err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo from %s: got %d bytes, want the %d sent", c.RemoteAddr(), len(got), n)
	}
}

func wantRemote(t *testing.T, seen <-chan net.Addr, ip net.IP) {
	t.Helper()
	select {
	case a := <-seen:
		if got := a.(*net.TCPAddr).IP; !got.Equal(ip) {
			t.Fatalf("server saw client %s, want %s", got, ip)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server saw no connection")
	}
}

func hostPort(ip net.IP, l net.Listener) string {
	return net.JoinHostPort(ip.String(), strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
}

func handle(t *testing.T, ns *Namespace) *netlink.Handle {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func wantUnreachable(t *testing.T, h *netlink.Handle, ip net.IP) {
	t.Helper()
	if r, err := h.RouteGet(ip); !errors.Is(err, unix.ENETUNREACH) {
		t.Fatalf("route get %s from external = %v, %v; want network unreachable", ip, r, err)
	}
}

// prefixNamespaces lists NetnsDir entries of the prefix.
func prefixNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(NetnsDir, prefix+"-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// assertGone checks that nothing of the prefix is left: namespaces, links
// and routes in our own namespace, state record.
func assertGone(t *testing.T, prefix string) {
	t.Helper()
	if m := prefixNamespaces(t, prefix); len(m) > 0 {
		t.Errorf("namespaces left: %v", m)
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			t.Errorf("link %s left in own namespace", l.Attrs().Name)
		}
	}
	for _, family := range []string{"-4", "-6"} {
		out, err := exec.Command("ip", family, "-o", "route", "show", "table", "all").CombinedOutput()
		if err != nil {
			t.Fatalf("ip route: %v: %s", err, out)
		}
		if strings.Contains(string(out), prefix) {
			t.Errorf("route mentioning %s left:\n%s", prefix, out)
		}
	}
	if _, err := os.Stat(recordPath(prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state record %s left (stat: %v)", recordPath(prefix), err)
	}
}

// childCommand re-executes the test binary to run one test with env set.
func childCommand(test, env string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env+"=1")
	return cmd
}

// strayThreads lists the threads of this process that are not in the
// network namespace with inode ino.
func strayThreads(ino uint64) []string {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return []string{err.Error()}
	}
	var stray []string
	for _, task := range tasks {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/proc/self/task", task.Name(), "ns/net"), &st); err != nil {
			continue // thread exited meanwhile
		}
		if st.Ino != ino {
			stray = append(stray, task.Name())
		}
	}
	return stray
}

// ---- Root tests ----

func TestNamespaceDo(t *testing.T) {
	requireRoot(t)
	topo := Setup(t, Config{})
	self := func() uint64 {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	var st unix.Stat_t
	if err := unix.Stat(topo.Host.Path, &st); err != nil {
		t.Fatal(err)
	}
	hostIno := st.Ino
	x := topo.Externals[0]
	var inner, nested uint64
	err := topo.Host.Do(func() error {
		inner = self()
		return x.Do(func() error {
			nested = self()
			return errors.New("boom")
		})
	})
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Do error = %v, want the error of fn", err)
	}
	if inner != hostIno {
		t.Errorf("inside Do: thread namespace inode %d, want host namespace %d", inner, hostIno)
	}
	if nested == inner || nested == 0 {
		t.Errorf("nested Do did not switch namespace")
	}
	// No thread of the process may be left in another namespace, the
	// main thread included (/proc/self/ns/net is the main thread's).
	var own unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		t.Fatal(err)
	}
	if own.Ino != startNetns {
		t.Fatalf("main thread moved from namespace %d to %d", startNetns, own.Ino)
	}
	if stray := strayThreads(startNetns); len(stray) > 0 {
		t.Fatalf("threads left in other namespaces: %v", stray)
	}

	// Command enters the namespace: ip_forward is 1 in the host namespace
	// (while the real host's value is whatever it is).
	out, err := topo.Host.Run(t.Context(), "cat", "/proc/sys/net/ipv4/ip_forward")
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("ip_forward in host namespace via nsenter = %q, %v; want 1", out, err)
	}
	out, err = x.Run(t.Context(), "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(string(out), x.Addr.String()+"/24") {
		t.Fatalf("external eth0 via nsenter: %q, %v", out, err)
	}
}

func TestTopologyLayout(t *testing.T) {
	requireRoot(t)
	const mtu = 1400
	topo := Setup(t, Config{
		Bridges:    []BridgeConfig{{}, {Subnet: "172.31.5.0/24"}},
		Containers: []ContainerConfig{{}, {}, {Bridge: 1, Addr: "172.31.5.77"}},
		Externals:  []ExternalConfig{{}, {}},
		MTU:        mtu,
	})
	if len(topo.Bridges) != 2 || len(topo.Containers) != 3 || len(topo.Externals) != 2 {
		t.Fatalf("topology has %d bridges, %d containers, %d externals", len(topo.Bridges), len(topo.Containers), len(topo.Externals))
	}
	for _, ns := range append([]*Namespace{topo.Host}, &topo.Containers[0].Namespace, &topo.Containers[2].Namespace, &topo.Externals[1].Namespace) {
		if !ns.Exists() || !strings.HasPrefix(ns.Name, topo.Prefix+"-") {
			t.Errorf("namespace %s (%s): exists=%v", ns.Name, ns.Path, ns.Exists())
		}
	}
	if v, err := topo.Host.ReadSysctl("net/ipv4/ip_forward"); err != nil || v != "1" {
		t.Errorf("host ip_forward = %q, %v", v, err)
	}

	h := handle(t, topo.Host)
	for _, b := range topo.Bridges {
		l, err := h.LinkByIndex(b.Index)
		if err != nil {
			t.Fatalf("bridge %s: %v", b.Name, err)
		}
		a := l.Attrs()
		if l.Type() != "bridge" || a.Name != b.Name || a.HardwareAddr.String() != b.MAC.String() || a.MTU != mtu || a.Flags&net.FlagUp == 0 {
			t.Errorf("bridge %s: kernel has %s %s %s mtu %d flags %v", b.Name, l.Type(), a.Name, a.HardwareAddr, a.MTU, a.Flags)
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || !addrs[0].IP.Equal(b.Gateway) || addrs[0].Mask.String() != b.Subnet.Mask.String() {
			t.Errorf("bridge %s addresses = %v, %v; want %s", b.Name, addrs, err, b.Gateway)
		}
	}
	for _, c := range topo.Containers {
		if !c.Bridge.Subnet.Contains(c.Addr) {
			t.Errorf("container %s address %s not in %s", c.Name, c.Addr, c.Bridge.Subnet)
		}
		l, err := h.LinkByIndex(c.HostVethIndex)
		if err != nil {
			t.Fatalf("host veth of %s: %v", c.Name, err)
		}
		a := l.Attrs()
		if l.Type() != "veth" || a.Name != c.HostVeth || a.MasterIndex != c.Bridge.Index || a.MTU != mtu || a.Flags&net.FlagUp == 0 {
			t.Errorf("host veth %s: kernel has %s %s master %d mtu %d flags %v", c.HostVeth, l.Type(), a.Name, a.MasterIndex, a.MTU, a.Flags)
		}
		ch := handle(t, &c.Namespace)
		links, err := ch.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"eth0", "lo"}) {
			t.Errorf("container %s links = %v, want eth0 and lo", c.Name, names)
		}
		eth0, err := ch.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if eth0.Attrs().Index != c.Index || eth0.Attrs().HardwareAddr.String() != c.MAC.String() || eth0.Attrs().MTU != mtu {
			t.Errorf("container %s eth0: index %d mac %s mtu %d; recorded %d %s", c.Name, eth0.Attrs().Index, eth0.Attrs().HardwareAddr, eth0.Attrs().MTU, c.Index, c.MAC)
		}
		// The veth peer of eth0 is the recorded host veth.
		if eth0.Attrs().ParentIndex != c.HostVethIndex {
			t.Errorf("container %s eth0 peer ifindex %d, want host veth %d", c.Name, eth0.Attrs().ParentIndex, c.HostVethIndex)
		}
		routes, err := ch.RouteGet(net.ParseIP("192.0.2.1"))
		if err != nil || len(routes) != 1 || !routes[0].Gw.Equal(c.Bridge.Gateway) || routes[0].LinkIndex != c.Index {
			t.Errorf("container %s route to 192.0.2.1 = %v, %v; want via %s dev eth0", c.Name, routes, err, c.Bridge.Gateway)
		}
	}
	for i, x := range topo.Externals {
		l, err := h.LinkByIndex(x.UplinkIndex)
		if err != nil || l.Attrs().Name != x.Uplink {
			t.Fatalf("uplink %s: %v, %v", x.Uplink, l, err)
		}
		xh := handle(t, &x.Namespace)
		// Reaches the host's uplink address, but nothing behind the host.
		if r, err := xh.RouteGet(x.HostAddr); err != nil || len(r) != 1 {
			t.Errorf("external %d route to host address %s = %v, %v", i, x.HostAddr, r, err)
		}
		for _, c := range topo.Containers {
			wantUnreachable(t, xh, c.Addr)
		}
		wantUnreachable(t, xh, net.ParseIP("192.0.2.1"))
	}
	// The host's default route goes out through the first uplink.
	r, err := h.RouteGet(net.ParseIP("192.0.2.1"))
	if x := topo.Externals[0]; err != nil || len(r) != 1 || !r[0].Gw.Equal(x.Addr) || r[0].LinkIndex != x.UplinkIndex {
		t.Errorf("host route to 192.0.2.1 = %v, %v; want via %s dev %s", r, err, x.Addr, x.Uplink)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	if err := topo.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	assertGone(t, topo.Prefix)
}

func TestTopologyTCP(t *testing.T) {
	requireRoot(t)
	topo := Setup(t, Config{Containers: []ContainerConfig{{}, {}}})
	c0, c1, x := topo.Containers[0], topo.Containers[1], topo.Externals[0]
	ctx := t.Context()
	const n = 1 << 20

	l, err := c0.ListenTCP(net.JoinHostPort(c0.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	seen := echoServer(t, l)
	server := hostPort(c0.Addr, l)

	t.Run("container to container over the bridge", func(t *testing.T) {
		conn, err := c1.DialTCP(ctx, server)
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, conn, n)
		wantRemote(t, seen, c1.Addr)
		// The bridge learned both containers' MACs on their ports.
		fdb, err := handle(t, topo.Host).NeighList(0, unix.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range topo.Containers {
			if !slices.ContainsFunc(fdb, func(e netlink.Neigh) bool {
				return e.HardwareAddr.String() == c.MAC.String() && e.LinkIndex == c.HostVethIndex
			}) {
				t.Errorf("bridge FDB has no entry for %s (%s) on %s", c.Name, c.MAC, c.HostVeth)
			}
		}
	})

	t.Run("external has no route to containers", func(t *testing.T) {
		wantUnreachable(t, handle(t, &x.Namespace), c0.Addr)
		out, err := x.Run(ctx, "ip", "route", "get", c0.Addr.String())
		if err == nil {
			t.Errorf("ip route get %s in external succeeded: %s", c0.Addr, out)
		}
		start := time.Now()
		conn, err := x.DialTCP(ctx, server)
		if err == nil {
			conn.Close()
			t.Fatal("external reached the container without a route")
		}
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("dial error = %v, want network unreachable", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("dial took %v to fail, want an immediate failure", d)
		}
		// It does reach the host's side of the uplink.
		hl, err := topo.Host.ListenTCP(net.JoinHostPort(x.HostAddr.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		hseen := echoServer(t, hl)
		conn, err = x.DialTCP(ctx, hostPort(x.HostAddr, hl))
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, conn, n)
		wantRemote(t, hseen, x.Addr)
	})

	t.Run("routing through the host", func(t *testing.T) {
		xh := handle(t, &x.Namespace)
		eth0, err := xh.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		// Only for this test: a return route to the containers, and an
		// "Internet" address the host only reaches by its default route.
		back := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: c0.Bridge.Subnet, Gw: x.HostAddr}
		if err := xh.RouteAdd(back); err != nil {
			t.Fatalf("adding route to %s in external: %v", c0.Bridge.Subnet, err)
		}
		t.Cleanup(func() { xh.RouteDel(back) })
		lo, err := xh.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		inet := net.ParseIP("203.0.113.10").To4()
		if err := xh.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: inet, Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}

		// External client -> container server: through the uplink, the
		// host's routing and the bridge; the server sees the real client.
		conn, err := x.DialTCP(ctx, server)
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, conn, n)
		wantRemote(t, seen, x.Addr)

		// Container client -> "Internet" server: the container's default
		// route (the bridge gateway), the host's default route (uplink 0).
		xl, err := x.ListenTCP(net.JoinHostPort(inet.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		xseen := echoServer(t, xl)
		conn, err = c0.DialTCP(ctx, hostPort(inet, xl))
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, conn, n)
		wantRemote(t, xseen, c0.Addr)

		// The container resolved its gateway to the bridge's MAC.
		neighs, err := handle(t, &c0.Namespace).NeighList(c0.Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(neighs, func(e netlink.Neigh) bool {
			return e.IP.Equal(c0.Bridge.Gateway) && e.HardwareAddr.String() == c0.Bridge.MAC.String()
		}) {
			t.Errorf("container neighbours %v: no %s at bridge MAC %s", neighs, c0.Bridge.Gateway, c0.Bridge.MAC)
		}

		if err := xh.RouteDel(back); err != nil {
			t.Fatalf("removing route: %v", err)
		}
		wantUnreachable(t, xh, c0.Addr)
	})
}

func TestCleanupAfterFailure(t *testing.T) {
	if os.Getenv(envFailOnPurpose) == "1" {
		// Child: build a topology and fail; Setup's cleanup must run.
		topo := Setup(t, Config{Containers: []ContainerConfig{{}, {}}})
		fmt.Printf("LAB_PREFIX=%s\n", topo.Prefix)
		for _, m := range prefixNamespaces(t, topo.Prefix) {
			fmt.Printf("LAB_NS=%s\n", m)
		}
		t.Fatal("failing on purpose")
	}
	requireRoot(t)
	out, err := childCommand("TestCleanupAfterFailure", envFailOnPurpose).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("child test: err = %v, want a non-zero exit; output:\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("failing on purpose")) {
		t.Fatalf("child did not fail on purpose; output:\n%s", out)
	}
	var prefix string
	var created []string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "LAB_PREFIX="); ok {
			prefix = v
		}
		if v, ok := strings.CutPrefix(line, "LAB_NS="); ok {
			created = append(created, v)
		}
	}
	if !ValidPrefix(prefix) || len(created) != 4 { // host, c0, c1, x0
		t.Fatalf("child reported prefix %q and namespaces %v; output:\n%s", prefix, created, out)
	}
	t.Cleanup(func() { Cleanup(prefix) })
	for _, ns := range created {
		if _, err := os.Lstat(ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s created by the failed test still there", ns)
		}
	}
	assertGone(t, prefix)
}

func TestNewRollsBackOnError(t *testing.T) {
	requireRoot(t)
	prefix := NewPrefix()
	t.Cleanup(func() { Cleanup(prefix) })
	injected := errors.New("injected failure")
	var stages []string
	buildHook = func(stage string) error {
		stages = append(stages, stage)
		// host, x0, then one more per container built.
		if n := len(prefixNamespaces(t, prefix)); n != 2+len(stages) {
			t.Errorf("at %s: namespaces %v", stage, prefixNamespaces(t, prefix))
		}
		if stage == "container "+prefix+"-c1" {
			return injected
		}
		return nil
	}
	t.Cleanup(func() { buildHook = nil })
	topo, err := New(Config{Prefix: prefix, Containers: []ContainerConfig{{}, {}, {}}})
	if !errors.Is(err, injected) {
		t.Fatalf("New = %v, %v; want the injected error", topo, err)
	}
	if len(stages) != 2 {
		t.Errorf("build stopped after stages %v", stages)
	}
	assertGone(t, prefix)
}

func TestNewRemovesLeftover(t *testing.T) {
	requireRoot(t)
	prefix := NewPrefix()
	t.Cleanup(func() { Cleanup(prefix) })
	// Leftovers of an "earlier run": a host namespace with a stray link,
	// and a container namespace the new config does not have.
	for _, args := range [][]string{
		{"ip", "netns", "add", prefix + "-host"},
		{"ip", "netns", "add", prefix + "-c7"},
		{"nsenter", "--net=" + filepath.Join(NetnsDir, prefix+"-host"), "--", "ip", "link", "add", prefix + "-junk", "type", "bridge"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	topo := Setup(t, Config{Prefix: prefix, Containers: []ContainerConfig{{}}})
	if _, err := handle(t, topo.Host).LinkByName(prefix + "-junk"); err == nil {
		t.Error("the new host namespace still has the leftover's link: it was reused, not recreated")
	}
	got := prefixNamespaces(t, prefix)
	want := []string{topo.Containers[0].Path, topo.Host.Path, topo.Externals[0].Path}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("namespaces = %v, want %v", got, want)
	}
}

func TestSweepRemovesDeadTopology(t *testing.T) {
	if os.Getenv(envHang) == "1" {
		// Child: build a topology and wait to be killed, like a test
		// binary killed by `go test -timeout` before its cleanups run.
		topo, err := New(Config{Containers: []ContainerConfig{{}}})
		if err != nil {
			t.Fatal(err)
		}
		// And pins of its own, as a benchmark's datapath has.
		if err := os.Mkdir(PinDir(topo.Prefix, "pins"), 0o700); err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(filepath.Join(PinDir(topo.Prefix, "pins"), "m")); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("LAB_PREFIX=%s\n", topo.Prefix)
		time.Sleep(time.Hour)
		return
	}
	requireRoot(t)
	live := Setup(t, Config{})

	cmd := childCommand("TestSweepRemovesDeadTopology", envHang)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	prefixc := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "LAB_PREFIX="); ok {
				prefixc <- v
			}
		}
		close(prefixc)
	}()
	var prefix string
	select {
	case p, ok := <-prefixc:
		if !ok {
			cmd.Wait()
			t.Fatalf("child exited without building a topology: %s", stderr.String())
		}
		prefix = p
	case <-time.After(60 * time.Second):
		t.Fatal("child did not build a topology in time")
	}
	t.Cleanup(func() { Cleanup(prefix) })

	b, err := os.ReadFile(recordPath(prefix))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := parseRecord(b)
	if err != nil || rec.pid != cmd.Process.Pid {
		t.Fatalf("state record %q = %v, %v; want pid %d", b, rec, err, cmd.Process.Pid)
	}
	// While the child lives, Sweep leaves its topology (and ours) alone.
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if len(prefixNamespaces(t, prefix)) != 3 || len(prefixNamespaces(t, live.Prefix)) != 2 {
		t.Fatalf("Sweep removed live topologies: %v %v", prefixNamespaces(t, prefix), prefixNamespaces(t, live.Prefix))
	}
	pins := filepath.Join(PinDir(prefix, "pins"), "m")
	if _, err := os.Stat(pins); err != nil {
		t.Fatalf("the live child's pin: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if len(prefixNamespaces(t, prefix)) != 3 {
		t.Fatalf("killed child left %v, want its 3 namespaces as leftovers", prefixNamespaces(t, prefix))
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, prefix)
	if _, err := os.Stat(PinDir(prefix, "pins")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Sweep left the killed child's pins: %v", err)
	}
	if !live.Host.Exists() {
		t.Error("Sweep removed the live topology of this process")
	}
}
