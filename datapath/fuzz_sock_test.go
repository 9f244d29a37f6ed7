// SPDX-License-Identifier: Apache-2.0

package datapath

// Fuzz target of the sock_addr programs (bpf/sock.c). They cannot run
// under BPF_PROG_RUN, so the target makes real connect() and sendto()
// calls of fuzzed protocol, family, source binding, address and port, in a
// namespace of its own whose sockets the programs translate, attached to
// the test process's cgroup. The namespace has only lo, and every IPv4
// and IPv6 address is local there (local routes for 0.0.0.0/0 and ::/0), so
// each call's first packet stays in it and is read back from raw sockets
// (IPv4) or a packet socket on lo (IPv6). The families: IPv4, IPv6
// reaching IPv4 through mapped addresses, and IPv6 to IPv6 published ports.
// Per input:
//
//   - the packet goes to the address and port asked for (0.0.0.0 being
//     the socket's own address or 127.0.0.1, :: being ::1), or, when they
//     are a published port of the destination's family that the socket may
//     use (an exact binding first, then one to every address; the address
//     loopback, a host address or the unspecified one; the socket not
//     bound to loopback), to its target;
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
	rev6      *ebpf.Map
	published map[bpfPortKey]bpfPortTarget
	hostAddrs map[uint32]uint32
	raw       map[int]int // protocol -> raw socket in the namespace
	// The IPv6 half: published6 and host_addrs6 as written, and a packet
	// socket on lo that sees every IPv6 packet of the namespace.
	published6 map[bpfPort6Key]bpfPort6Target
	hostAddrs6 map[bpfIn6Key]uint32
	pkt6       int
}

// The IPv6 topology of the sock target: host addresses (on lo, so that
// sockets can bind them), containers, and IPv6 published ports of every
// kind: to every address, to one host address, to ::1 only.
var (
	sockHost6  = netip.MustParseAddr("2001:db8:99::1")
	sockHost6b = netip.MustParseAddr("2001:db8:99::2")
	sockGw6    = netip.MustParseAddr("fd00:99::1")
	sockCtr6A  = netip.MustParseAddr("fd00:99::2")
	sockCtr6B  = netip.MustParseAddr("fd00:99::3")
	sockFar6   = netip.MustParseAddr("2001:db8:77::9")
)

type sockPub6 struct {
	proto  uint8
	host   netip.Addr // invalid: every address
	hport  uint16
	target netip.AddrPort
}

var sockFuzzPorts6 = []sockPub6{
	{unix.IPPROTO_TCP, netip.Addr{}, 8080, netip.AddrPortFrom(sockCtr6A, 80)},
	{unix.IPPROTO_UDP, netip.Addr{}, 5353, netip.AddrPortFrom(sockCtr6B, 53)},
	{unix.IPPROTO_TCP, sockHost6b, 8081, netip.AddrPortFrom(sockCtr6A, 81)},
	{unix.IPPROTO_TCP, netip.IPv6Loopback(), 8082, netip.AddrPortFrom(sockCtr6B, 82)},
	{unix.IPPROTO_UDP, netip.IPv6Loopback(), 9100, netip.AddrPortFrom(sockCtr6A, 53)},
}

func fuzzPort6Key(proto uint8, host netip.Addr, port uint16) bpfPort6Key {
	k := bpfPort6Key{Port: be16(port), Proto: proto}
	if host.IsValid() && !host.IsUnspecified() {
		k.Addr = be128(host)
	}
	return k
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
		anyIP6 := netlink.Route{Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, LinkIndex: lo.Attrs().Index,
			Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: unix.RT_SCOPE_HOST}
		if err := netlink.RouteAdd(&anyIP6); err != nil {
			return fmt.Errorf("adding the local route for every IPv6 address: %w", err)
		}
		// IPv6 binds only addresses of an interface, the route is not enough.
		for _, a := range []netip.Addr{sockHost6, sockHost6b, sockGw6} {
			ipn := &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(128, 128)}
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("adding %s to lo: %w", a, err)
			}
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IPV6)))
		if err != nil {
			return fmt.Errorf("opening a packet socket: %w", err)
		}
		e.pkt6 = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: lo.Attrs().Index}); err != nil {
			return fmt.Errorf("binding the packet socket to lo: %w", err)
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
		if e.pkt6 > 0 {
			unix.Close(e.pkt6)
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
	for _, p := range sockFuzzPorts6 {
		t := bpfPort6Target{Addr: be128(p.target.Addr()), Port: be16(p.target.Port()), Id: uint32(p.hport)}
		if err := e.dp.Published6.Put(fuzzPort6Key(p.proto, p.host, p.hport), t); err != nil {
			f.Fatal(err)
		}
	}
	for _, a := range []netip.Addr{sockHost6, sockHost6b, sockGw6} {
		if err := e.dp.HostAddrs6.Put(bpfIn6Key{A: be128(a)}, uint32(1)); err != nil {
			f.Fatal(err)
		}
	}
	if e.published6, err = readMap[bpfPort6Key, bpfPort6Target](e.dp.Published6); err != nil {
		f.Fatal(err)
	}
	if e.hostAddrs6, err = readMap[bpfIn6Key, uint32](e.dp.HostAddrs6); err != nil {
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
		"published6": e.dp.Published6, "host_addrs6": e.dp.HostAddrs6,
	}}
	if err := sspec.LoadAndAssign(&objs, &co); err != nil {
		f.Fatalf("loading the sock programs: %v", err)
	}
	f.Cleanup(func() { objs.sockPrograms.Close(); objs.sockOwnMaps.Close() })
	e.rev, e.rev6 = objs.SockRev4, objs.SockRev6

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

// sockTarget6 is sockTarget's twin for an IPv6 destination.
func (e *sockFuzzEnv) sockTarget6(proto uint8, addr netip.Addr, port uint16) (netip.AddrPort, bool) {
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
		return netip.AddrPort{}, false
	}
	if !addr.IsUnspecified() && !addr.IsLoopback() && e.hostAddrs6[bpfIn6Key{A: be128(addr)}] == 0 {
		return netip.AddrPort{}, false
	}
	t, ok := e.published6[fuzzPort6Key(proto, addr, port)]
	if !ok || addr.IsUnspecified() {
		t, ok = e.published6[fuzzPort6Key(proto, netip.Addr{}, port)]
	}
	// A NAT64 port (an IPv4-mapped target) is for clients from the
	// outside: the hooks leave the host's sockets to it alone.
	if !ok || addr6From(t.Addr).Is4In6() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(addr6From(t.Addr), port16(t.Port)), true
}

// Binding choices of a fuzzed socket, IPv4 (and mapped) and IPv6.
var (
	sockFuzzBinds  = []netip.Addr{{}, netip.MustParseAddr("127.0.0.1"), hostIP, netip.MustParseAddr("127.0.0.5"), gwIP}
	sockFuzzBinds6 = []netip.Addr{{}, netip.IPv6Loopback(), sockHost6, sockGw6}
)

// sockFuzzAddrs6 are the IPv6 destinations a fuzzed address picks from.
var sockFuzzAddrs6 = []netip.Addr{netip.IPv6Loopback(), netip.IPv6Unspecified(), sockHost6, sockHost6b, sockGw6, sockCtr6A, sockFar6,
	netip.MustParseAddr("::2"), netip.MustParseAddr("::ffff:0:1")}

// fuzzAddr6 makes an IPv6 destination of a fuzzed word: one of
// sockFuzzAddrs6, its last byte replaced when the top bit is set.
func fuzzAddr6(w uint32) netip.Addr {
	a := sockFuzzAddrs6[int(w&0xffff)%len(sockFuzzAddrs6)].As16()
	if w&0x80000000 != 0 {
		a[15] = byte(w >> 16)
	}
	return netip.AddrFrom16(a)
}

// sockCall is one fuzzed socket call.
type sockCall struct {
	proto  int  // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	six    bool // an IPv6 socket
	v6     bool // ... to an IPv6 destination (else a mapped IPv4 one)
	sendto bool
	bind   netip.Addr
	dst    netip.AddrPort
}

func (c sockCall) String() string {
	fam, how := "IPv4", "connect"
	if c.six {
		fam = "IPv6 (mapped)"
	}
	if c.v6 {
		fam = "IPv6"
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

// firstFrom6 is firstFrom for the packet socket: the destination of the
// first IPv6 packet of protocol proto from local port sport.
func firstFrom6(fd int, proto int, sport uint16, d time.Duration) (netip.AddrPort, bool) {
	buf := make([]byte, 4096)
	deadline := time.Now().Add(d)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == nil {
			if n < 44 || buf[0]>>4 != 6 || int(buf[6]) != proto || binary.BigEndian.Uint16(buf[40:]) != sport {
				continue
			}
			dst := netip.AddrFrom16([16]byte(buf[24:40]))
			return netip.AddrPortFrom(dst, binary.BigEndian.Uint16(buf[42:])), true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return netip.AddrPort{}, false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		unix.Poll(pfd, int(left.Milliseconds())+1)
	}
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
		if c.v6 {
			raw = e.pkt6
		}
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
			if c.v6 {
				r.sent, r.seen = firstFrom6(raw, c.proto, r.local.Port(), 200*time.Millisecond)
			} else {
				r.sent, r.seen = firstFrom(raw, r.local.Port(), 200*time.Millisecond)
			}
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
	// IPv6 destinations (op bit 3): each address of sockFuzzAddrs6 and a
	// near miss of each, to the IPv6 published ports and others.
	ports6 := []uint16{8080, 8081, 8082, 5353, 9100, 80, 1}
	for i := range sockFuzzAddrs6 {
		for j, p := range ports6 {
			op := uint64(i*len(ports6) + j)
			w := uint64(i)
			if j == len(ports6)-1 {
				w |= 0x80ff0000
			}
			out = append(out, [4]uint64{8 | op%8, op % uint64(len(sockFuzzBinds6)), w, uint64(p)})
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
		if op&8 != 0 {
			c.six, c.v6 = true, true
			c.bind = sockFuzzBinds6[int(bind)%len(sockFuzzBinds6)]
			c.dst = netip.AddrPortFrom(fuzzAddr6(addr), port)
			if c.dst.Addr().Is4In6() {
				return // a mapped destination: the IPv4 inputs' case
			}
		}
		if c.dst.Addr().IsMulticast() || c.dst.Addr() == netip.MustParseAddr("255.255.255.255") {
			return // not a destination a port is published at; routed apart
		}
		r := e.call(c)
		if r.setupErr != nil {
			t.Fatalf("%s: %v", c, r.setupErr)
		}
		e.check(t, c, r, e.takeRevs(t))
	})
}

// sockRev is a recorded reverse translation of either family.
type sockRev struct {
	cookie uint64
	proto  uint8
	xlated netip.AddrPort // the container's address and port
	asked  netip.AddrPort // what the application sent to
}

// takeRevs reads and empties sock_rev4 and sock_rev6.
func (e *sockFuzzEnv) takeRevs(t testing.TB) []sockRev {
	t.Helper()
	var out []sockRev
	revs, err := readMap[sockSockRevKey, sockSockRevVal](e.rev)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range revs {
		out = append(out, sockRev{k.Cookie, k.Proto, netip.AddrPortFrom(addrFrom(k.Addr), port16(k.Port)), netip.AddrPortFrom(addrFrom(v.Addr), port16(v.Port))})
		if err := e.rev.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
	}
	revs6, err := readMap[sockSockRev6Key, sockSockRev6Val](e.rev6)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range revs6 {
		out = append(out, sockRev{k.Cookie, k.Proto, netip.AddrPortFrom(addr6From(k.Addr), port16(k.Port)), netip.AddrPortFrom(addr6From(v.Addr), port16(v.Port))})
		if err := e.rev6.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
	}
	return out
}

func (e *sockFuzzEnv) check(t *testing.T, c sockCall, r sockResult, revs []sockRev) {
	t.Helper()
	asked := c.dst
	own := asked
	lo := netip.MustParseAddr("127.0.0.1")
	if c.v6 {
		lo = netip.IPv6Loopback()
	}
	if asked.Addr().IsUnspecified() {
		a := lo
		if c.bind.IsValid() && !c.v6 {
			a = c.bind
		}
		own = netip.AddrPortFrom(a, asked.Port())
	}
	var target netip.AddrPort
	var published bool
	if c.v6 {
		target, published = e.sockTarget6(uint8(c.proto), asked.Addr(), asked.Port())
	} else {
		target, published = e.sockTarget(uint8(c.proto), asked.Addr(), asked.Port())
	}
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
		okPeer := r.peer == asked || r.peer == own || (asked.Addr().IsUnspecified() && r.peer == netip.AddrPortFrom(lo, asked.Port()))
		if !okPeer {
			t.Errorf("%s: getpeername %s, want %s", c, r.peer, asked)
		}
	}
	for _, rv := range revs {
		if rv.cookie != r.cookie {
			t.Errorf("%s: reverse translation of another socket (cookie %d, ours %d)", c, rv.cookie, r.cookie)
			continue
		}
		if !translates || rv.xlated != target || rv.proto != uint8(c.proto) {
			t.Errorf("%s: reverse translation recorded for %s proto %d", c, rv.xlated, rv.proto)
		}
		want := asked
		if asked.Addr().IsUnspecified() {
			want = netip.AddrPortFrom(lo, asked.Port())
		}
		if rv.asked != want {
			t.Errorf("%s: reverse translation gives back %s, want %s", c, rv.asked, want)
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
	if pub, err := readMap[bpfPort6Key, bpfPort6Target](e.dp.Published6); err != nil || !mapsEqual(pub, e.published6) {
		t.Errorf("%s: IPv6 published ports changed (%v): %v", c, err, pub)
	}
	if ha, err := readMap[bpfIn6Key, uint32](e.dp.HostAddrs6); err != nil || !mapsEqual(ha, e.hostAddrs6) {
		t.Errorf("%s: IPv6 host addresses changed (%v): %v", c, err, ha)
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
	lo, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
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
		// IPv6 destinations: published ports to every address, to a host
		// address and to ::1; their twins unpublished or bound to ::1.
		{sockCall{proto: unix.IPPROTO_TCP, six: true, v6: true, dst: netip.AddrPortFrom(lo6, 8080)}, netip.AddrPortFrom(sockCtr6A, 80)},
		{sockCall{proto: unix.IPPROTO_TCP, six: true, v6: true, dst: netip.AddrPortFrom(sockHost6b, 8081)}, netip.AddrPortFrom(sockCtr6A, 81)},
		{sockCall{proto: unix.IPPROTO_TCP, six: true, v6: true, dst: netip.AddrPortFrom(sockHost6, 8081)}, netip.AddrPortFrom(sockHost6, 8081)},
		{sockCall{proto: unix.IPPROTO_TCP, six: true, v6: true, dst: netip.AddrPortFrom(lo6, 8082)}, netip.AddrPortFrom(sockCtr6B, 82)},
		{sockCall{proto: unix.IPPROTO_TCP, six: true, v6: true, dst: netip.AddrPortFrom(sockHost6, 8082)}, netip.AddrPortFrom(sockHost6, 8082)},
		{sockCall{proto: unix.IPPROTO_UDP, six: true, v6: true, sendto: true, dst: netip.AddrPortFrom(sockHost6, 5353)}, netip.AddrPortFrom(sockCtr6B, 53)},
		{sockCall{proto: unix.IPPROTO_UDP, six: true, v6: true, sendto: true, dst: netip.AddrPortFrom(sockFar6, 5353)}, netip.AddrPortFrom(sockFar6, 5353)},
		{sockCall{proto: unix.IPPROTO_UDP, six: true, v6: true, dst: netip.AddrPortFrom(netip.IPv6Unspecified(), 9100)}, netip.AddrPortFrom(lo6, 9100)},
		{sockCall{proto: unix.IPPROTO_UDP, six: true, v6: true, dst: netip.AddrPortFrom(lo6, 9100)}, netip.AddrPortFrom(sockCtr6A, 53)},
		{sockCall{proto: unix.IPPROTO_TCP, six: true, v6: true, bind: lo6, dst: netip.AddrPortFrom(lo6, 8080)}, netip.AddrPortFrom(lo6, 8080)},
	} {
		r := e.call(c.call)
		if r.setupErr != nil || r.err != nil {
			t.Fatalf("%s: %v %v", c.call, r.setupErr, r.err)
		}
		if !r.seen || r.sent != c.want {
			t.Errorf("%s: seen %v, sent to %s, want %s", c.call, r.seen, r.sent, c.want)
		}
		e.check(t, c.call, r, e.takeRevs(t))
	}
}

// htons is the network order of a packet socket's protocol.
func htons(v uint16) uint16 { return v<<8 | v>>8 }
