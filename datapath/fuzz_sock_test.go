// SPDX-License-Identifier: Apache-2.0

package datapath

// Fuzz target of the sock_addr programs (bpf/sock.c). They cannot run
// under BPF_PROG_RUN, so the target makes real connect() and sendto()
// calls of fuzzed protocol, family, source binding, address and port, in a
// namespace of its own whose sockets the programs translate, attached to
// the test process's cgroup. The namespace has only lo, and every IPv4
// address is local there (a local route for 0.0.0.0/0), so each call's first packet stays
// in it and is read back from raw sockets. Per input:
//
//   - the packet goes to the address and port asked for (0.0.0.0 being
//     the socket's own address or 127.0.0.1), or, when they are a
//     published port that the socket may use (an exact binding first, then
//     one to every address; the address loopback, a host address or
//     0.0.0.0; the socket not bound to loopback), to its target;
//   - a connected socket's peer is what it asked for, translated or not;
//   - the reverse translation recorded is the one of that socket, and
//     nothing else is recorded; the published ports and host addresses are
//     as they were.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type sockFuzzEnv struct {
	ns        *netnsRunner
	dp        bpfObjects
	rev       *ebpf.Map
	published map[bpfPortKey]bpfPortTarget
	hostAddrs map[uint32]uint32
	raw       map[int]int // protocol -> raw socket in the namespace
}

func newSockFuzzEnv(f testing.TB) *sockFuzzEnv {
	f.Helper()
	requireRoot(f)
	e := &sockFuzzEnv{raw: map[int]int{}}
	idx := map[string]uint32{}
	var cookie uint64
	e.ns = startNetns(f, func() error {
		// Only lo: a connected route of another interface would be a
		// longer match than the local one, and take its packets away.
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// Every IPv4 address is local: nothing leaves, everything is seen.
		anyIP := netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, LinkIndex: lo.Attrs().Index,
			Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: unix.RT_SCOPE_HOST}
		if err := netlink.RouteAdd(&anyIP); err != nil {
			return fmt.Errorf("adding the local route for every address: %w", err)
		}
		for _, proto := range []int{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
			if err != nil {
				return fmt.Errorf("opening a raw socket: %w", err)
			}
			e.raw[proto] = fd
		}
		cookie, err = NetnsCookie()
		return err
	})
	f.Cleanup(func() {
		for _, fd := range e.raw {
			unix.Close(fd)
		}
	})

	spec, err := Spec(Options{FastPath: true})
	if err != nil {
		f.Fatal(err)
	}
	if err := spec.LoadAndAssign(&e.dp, nil); err != nil {
		f.Fatalf("loading the datapath: %v", err)
	}
	f.Cleanup(func() { e.dp.Close() })
	if err := fuzzTopology(&e.dp, idx); err != nil {
		f.Fatal(err)
	}
	if e.published, err = readMap[bpfPortKey, bpfPortTarget](e.dp.Published); err != nil {
		f.Fatal(err)
	}
	if e.hostAddrs, err = readMap[uint32, uint32](e.dp.HostAddrs); err != nil {
		f.Fatal(err)
	}

	sspec, err := SockSpec(cookie, false)
	if err != nil {
		f.Fatal(err)
	}
	var objs struct {
		sockPrograms
		sockOwnMaps
	}
	co := ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"published": e.dp.Published, "host_addrs": e.dp.HostAddrs, "port_conns": e.dp.PortConns,
	}}
	if err := sspec.LoadAndAssign(&objs, &co); err != nil {
		f.Fatalf("loading the sock programs: %v", err)
	}
	f.Cleanup(func() { objs.sockPrograms.Close(); objs.sockOwnMaps.Close() })
	e.rev = objs.SockRev4

	cgroup, err := ProcessCgroup("", os.Getpid())
	if err != nil {
		f.Fatal(err)
	}
	progs := sockProgramMap(&objs.sockPrograms)
	for _, h := range sockHooks {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: h.attach, Program: progs[h.name]})
		if err != nil {
			f.Fatalf("attaching %s to %s: %v", h.name, cgroup, err)
		}
		f.Cleanup(func() { l.Close() })
	}
	return e
}

// sockTarget is the independent model of a published port's lookup at the
// socket: the target of (addr, port, proto) if the socket may use it.
func (e *sockFuzzEnv) sockTarget(proto uint8, addr netip.Addr, port uint16) (netip.AddrPort, bool) {
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
		return netip.AddrPort{}, false
	}
	if !addr.IsUnspecified() && !addr.IsLoopback() && e.hostAddrs[be32(addr)] == 0 {
		return netip.AddrPort{}, false
	}
	t, ok := e.published[portKey(proto, addr, port)]
	if !ok || addr.IsUnspecified() {
		t, ok = e.published[portKey(proto, netip.Addr{}, port)]
	}
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(addrFrom(t.Addr), port16(t.Port)), true
}

// Binding choices of a fuzzed socket.
var sockFuzzBinds = []netip.Addr{{}, netip.MustParseAddr("127.0.0.1"), hostIP, netip.MustParseAddr("127.0.0.5"), gwIP}

// sockCall is one fuzzed socket call.
type sockCall struct {
	proto  int // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	six    bool
	sendto bool
	bind   netip.Addr
	dst    netip.AddrPort
}

func (c sockCall) String() string {
	fam, how := "IPv4", "connect"
	if c.six {
		fam = "IPv6 (mapped)"
	}
	if c.sendto {
		how = "sendto"
	}
	p := "TCP"
	if c.proto == unix.IPPROTO_UDP {
		p = "UDP"
	}
	return fmt.Sprintf("%s %s %s to %s bound to %v", fam, p, how, c.dst, c.bind)
}

func sockaddr(six bool, a netip.AddrPort) unix.Sockaddr {
	if six {
		sa := &unix.SockaddrInet6{Port: int(a.Port())}
		sa.Addr = netip.AddrFrom16(a.Addr().As16()).As16()
		return sa
	}
	return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// sockResult is what a call did, as seen from the namespace.
type sockResult struct {
	err      error          // of connect or sendto
	local    netip.AddrPort // the socket's address after the call
	sent     netip.AddrPort // destination of its first packet, if one was seen
	seen     bool
	peer     netip.AddrPort // getpeername of a connected socket
	peerErr  error
	cookie   uint64
	setupErr error
}

// drain empties a raw socket.
func drain(fd int) {
	buf := make([]byte, 4096)
	for {
		if _, _, err := unix.Recvfrom(fd, buf, 0); err != nil {
			return
		}
	}
}

// firstFrom waits up to d for a packet of a raw socket from local port
// sport and returns its destination.
func firstFrom(fd int, sport uint16, d time.Duration) (netip.AddrPort, bool) {
	buf := make([]byte, 4096)
	deadline := time.Now().Add(d)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == nil {
			if n < 20 || int(buf[0]&0xf)*4+4 > n {
				continue
			}
			l4 := buf[int(buf[0]&0xf)*4:]
			if binary.BigEndian.Uint16(l4[0:]) != sport {
				continue
			}
			dst, _ := netip.AddrFromSlice(buf[16:20])
			return netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:])), true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return netip.AddrPort{}, false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		unix.Poll(pfd, int(left.Milliseconds())+1)
	}
}

// call makes one socket call in the namespace.
func (e *sockFuzzEnv) call(c sockCall) sockResult {
	var r sockResult
	e.ns.do(func() {
		raw := e.raw[c.proto]
		drain(raw)
		fam, typ := unix.AF_INET, unix.SOCK_STREAM
		if c.six {
			fam = unix.AF_INET6
		}
		if c.proto == unix.IPPROTO_UDP {
			typ = unix.SOCK_DGRAM
		}
		fd, err := unix.Socket(fam, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, c.proto)
		if err != nil {
			r.setupErr = err
			return
		}
		defer unix.Close(fd)
		if c.bind.IsValid() {
			if err := unix.Bind(fd, sockaddr(c.six, netip.AddrPortFrom(c.bind, 0))); err != nil {
				r.setupErr = fmt.Errorf("binding to %s: %w", c.bind, err)
				return
			}
		}
		if r.cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			r.setupErr = err
			return
		}
		sa := sockaddr(c.six, c.dst)
		if c.sendto {
			r.err = unix.Sendto(fd, []byte("x"), 0, sa)
		} else {
			r.err = unix.Connect(fd, sa)
			if errors.Is(r.err, unix.EINPROGRESS) {
				r.err = nil
			}
			if r.err == nil && c.proto == unix.IPPROTO_UDP {
				r.err = unix.Sendto(fd, []byte("x"), 0, nil)
			}
			if r.err == nil {
				var p unix.Sockaddr
				if p, r.peerErr = unix.Getpeername(fd); r.peerErr == nil {
					r.peer = addrPortOf(p)
				}
			}
		}
		if ls, err := unix.Getsockname(fd); err == nil {
			r.local = addrPortOf(ls)
		}
		if r.err == nil && r.local.Port() != 0 {
			r.sent, r.seen = firstFrom(raw, r.local.Port(), 200*time.Millisecond)
		}
	})
	return r
}

// sockFuzzSeeds are calls to every published port, to host, loopback and
// container addresses and the unspecified one, and to ports nobody
// publishes.
func sockFuzzSeeds() [][4]uint64 {
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), {}, hostIP, hostIP2, gwIP, ctrA, remoteIP, netip.MustParseAddr("127.1.2.3")}
	ports := []uint16{8080, 8081, 5353, 9100, 8082, 8083, 80, 53, 1}
	var out [][4]uint64
	for i, a := range addrs {
		for j, p := range ports {
			op := uint64(i*len(ports) + j)
			out = append(out, [4]uint64{op % 8, op % uint64(len(sockFuzzBinds)), uint64(be32(a)), uint64(p)})
		}
	}
	return out
}

func FuzzSockAddr(f *testing.F) {
	for _, s := range sockFuzzSeeds() {
		f.Add(uint8(s[0]), uint8(s[1]), uint32(s[2]), uint16(s[3]))
	}
	e := newSockFuzzEnv(f)
	f.Fuzz(func(t *testing.T, op, bind uint8, addr uint32, port uint16) {
		c := sockCall{proto: unix.IPPROTO_TCP, six: op&2 != 0, sendto: op&4 != 0}
		if op&1 != 0 {
			c.proto = unix.IPPROTO_UDP
		}
		if c.proto == unix.IPPROTO_TCP {
			c.sendto = false
		}
		c.bind = sockFuzzBinds[int(bind)%len(sockFuzzBinds)]
		c.dst = netip.AddrPortFrom(addrFrom(addr), port)
		if c.dst.Addr().IsMulticast() || c.dst.Addr() == netip.MustParseAddr("255.255.255.255") {
			return // not a destination a port is published at; routed apart
		}
		r := e.call(c)
		if r.setupErr != nil {
			t.Fatalf("%s: %v", c, r.setupErr)
		}
		revs, err := readMap[sockSockRevKey, sockSockRevVal](e.rev)
		if err != nil {
			t.Fatal(err)
		}
		for k := range revs {
			if err := e.rev.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatal(err)
			}
		}
		e.check(t, c, r, revs)
	})
}

func (e *sockFuzzEnv) check(t *testing.T, c sockCall, r sockResult, revs map[sockSockRevKey]sockSockRevVal) {
	t.Helper()
	asked := c.dst
	own := asked
	if asked.Addr().IsUnspecified() {
		a := netip.MustParseAddr("127.0.0.1")
		if c.bind.IsValid() {
			a = c.bind
		}
		own = netip.AddrPortFrom(a, asked.Port())
	}
	target, published := e.sockTarget(uint8(c.proto), asked.Addr(), asked.Port())
	translates := published && !(c.bind.IsValid() && c.bind.IsLoopback())
	if r.seen {
		switch {
		case translates && r.sent != target:
			t.Errorf("%s: sent to %s, want the published target %s", c, r.sent, target)
		case !translates && r.sent != own:
			t.Errorf("%s: sent to %s, want %s", c, r.sent, own)
		}
	} else if r.err == nil && c.proto == unix.IPPROTO_UDP {
		t.Errorf("%s: the datagram was sent, but no packet from %s was seen", c, r.local)
	}
	if c.bind.IsValid() && r.local.IsValid() && r.local.Addr() != c.bind {
		t.Errorf("%s: the socket's address became %s", c, r.local)
	}
	if !c.sendto && r.err == nil && r.peerErr == nil {
		okPeer := r.peer == asked || r.peer == own || (asked.Addr().IsUnspecified() && r.peer == netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), asked.Port()))
		if !okPeer {
			t.Errorf("%s: getpeername %s, want %s", c, r.peer, asked)
		}
	}
	for k, v := range revs {
		if k.Cookie != r.cookie {
			t.Errorf("%s: reverse translation of another socket (cookie %d, ours %d)", c, k.Cookie, r.cookie)
			continue
		}
		got := netip.AddrPortFrom(addrFrom(k.Addr), port16(k.Port))
		if !translates || got != target || k.Proto != uint8(c.proto) {
			t.Errorf("%s: reverse translation recorded for %s proto %d", c, got, k.Proto)
		}
		want := asked
		if asked.Addr().IsUnspecified() {
			want = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), asked.Port())
		}
		if back := netip.AddrPortFrom(addrFrom(v.Addr), port16(v.Port)); back != want {
			t.Errorf("%s: reverse translation gives back %s, want %s", c, back, want)
		}
	}
	if len(revs) > 1 {
		t.Errorf("%s: %d reverse translations recorded", c, len(revs))
	}
	if pub, err := readMap[bpfPortKey, bpfPortTarget](e.dp.Published); err != nil || !mapsEqual(pub, e.published) {
		t.Errorf("%s: published ports changed (%v): %v", c, err, pub)
	}
	if ha, err := readMap[uint32, uint32](e.dp.HostAddrs); err != nil || !mapsEqual(ha, e.hostAddrs) {
		t.Errorf("%s: host addresses changed (%v): %v", c, err, ha)
	}
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSockFuzzHarness shows that the sock target observes what it judges:
// a connect and a datagram to published ports are seen going to their
// targets, the same calls to a port nobody publishes to their own
// destination, and a socket bound to loopback is left alone.
func TestSockFuzzHarness(t *testing.T) {
	e := newSockFuzzEnv(t)
	lo := netip.MustParseAddr("127.0.0.1")
	for _, c := range []struct {
		call sockCall
		want netip.AddrPort
	}{
		{sockCall{proto: unix.IPPROTO_TCP, dst: netip.AddrPortFrom(lo, 8080)}, netip.AddrPortFrom(ctrA, 80)},
		{sockCall{proto: unix.IPPROTO_TCP, six: true, dst: netip.AddrPortFrom(hostIP2, 8081)}, netip.AddrPortFrom(ctrC, 80)},
		{sockCall{proto: unix.IPPROTO_UDP, sendto: true, dst: netip.AddrPortFrom(hostIP, 5353)}, netip.AddrPortFrom(ctrB, 53)},
		{sockCall{proto: unix.IPPROTO_UDP, dst: netip.AddrPortFrom(gwIP, 9100)}, netip.AddrPortFrom(ctrC, 53)},
		{sockCall{proto: unix.IPPROTO_TCP, dst: netip.AddrPortFrom(lo, 8079)}, netip.AddrPortFrom(lo, 8079)},
		{sockCall{proto: unix.IPPROTO_UDP, sendto: true, dst: netip.AddrPortFrom(hostIP, 5354)}, netip.AddrPortFrom(hostIP, 5354)},
		{sockCall{proto: unix.IPPROTO_TCP, bind: lo, dst: netip.AddrPortFrom(lo, 8080)}, netip.AddrPortFrom(lo, 8080)},
	} {
		r := e.call(c.call)
		if r.setupErr != nil || r.err != nil {
			t.Fatalf("%s: %v %v", c.call, r.setupErr, r.err)
		}
		if !r.seen || r.sent != c.want {
			t.Errorf("%s: seen %v, sent to %s, want %s", c.call, r.seen, r.sent, c.want)
		}
		revs, err := readMap[sockSockRevKey, sockSockRevVal](e.rev)
		if err != nil {
			t.Fatal(err)
		}
		for k := range revs {
			e.rev.Delete(k)
		}
		e.check(t, c.call, r, revs)
	}
}
