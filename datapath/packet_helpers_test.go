// SPDX-License-Identifier: Apache-2.0

package datapath

// Helpers of the packet tests (packet_test.go): a throwaway network
// namespace with the interfaces the maps name, a fresh, unpinned set of
// datapath objects per test, frames built with gopacket, independent
// checksum verification, and readers of the maps.
//
// The programs run with BPF_PROG_RUN. The kernel builds the skb on the
// device whose index the context names (loopback by default), which must
// exist in the network namespace of the calling thread; that is why every
// run is made by one goroutine locked to a thread inside the test
// namespace. Redirect helpers only record their target under
// BPF_PROG_RUN: the verdict (TC_ACT_REDIRECT) comes back, nothing is sent.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Verdicts of a TC program (linux/pkt_cls.h).
const (
	TC_ACT_OK       = 0
	TC_ACT_SHOT     = 2
	TC_ACT_REDIRECT = 7
)

func verdictName(v uint32) string {
	switch v {
	case TC_ACT_OK:
		return "TC_ACT_OK"
	case TC_ACT_SHOT:
		return "TC_ACT_SHOT"
	case TC_ACT_REDIRECT:
		return "TC_ACT_REDIRECT"
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// Flags of conntrack entries and their kinds, as in bpf/lib/maps.h.
const (
	atFromNetdev    = ctAtFromNetdev
	atToNetdev      = ctAtToNetdev
	atFromContainer = ctAtFromContainer
	atToContainer   = ctAtToContainer
	flagReply       = ctReply
	flagUnassured   = ctUnassured
)

// TCP flags as conntrack entries collect them in tcp_seen (TCPF_* in
// bpf/lib/packet.h).
const (
	tcpSeenSYN    uint8 = 0x02
	tcpSeenACK    uint8 = 0x10
	tcpSeenSynAck       = tcpSeenSYN | tcpSeenACK
)

// The test topology. up0 is the uplink, masquerading with hostIP; br0
// holds containers A and B (172.17.0.0/16, masqueraded), br1 holds C
// (172.18.0.0/16, not masqueraded). Every interface is one end of a veth
// pair whose other end is left alone: the programs only need the indexes
// to exist (and routes to go out of them).
var (
	hostIP    = netip.MustParseAddr("192.0.2.1")   // up0, a host address
	hostIP2   = netip.MustParseAddr("192.0.2.2")   // another host address, for exact bindings
	notHostIP = netip.MustParseAddr("192.0.2.99")  // on up0's subnet, not ours
	routerIP  = netip.MustParseAddr("192.0.2.254") // up0's next hop
	clientIP  = netip.MustParseAddr("203.0.113.7")
	client2IP = netip.MustParseAddr("203.0.113.8")
	remoteIP  = netip.MustParseAddr("198.51.100.10")
	gwIP      = netip.MustParseAddr("172.17.0.1") // br0, a host address
	gw2IP     = netip.MustParseAddr("172.18.0.1") // br1, a host address
	ctrA      = netip.MustParseAddr("172.17.0.2")
	ctrB      = netip.MustParseAddr("172.17.0.3")
	ctrC      = netip.MustParseAddr("172.18.0.2")
	net1      = netip.MustParsePrefix("172.17.0.0/16")
	net2      = netip.MustParsePrefix("172.18.0.0/16")

	macA      = mustMAC("02:42:ac:11:00:02")
	macB      = mustMAC("02:42:ac:11:00:03")
	macC      = mustMAC("02:42:ac:12:00:02")
	gwMAC     = mustMAC("02:42:00:00:00:01")
	gw2MAC    = mustMAC("02:42:00:00:00:02")
	upMAC     = mustMAC("02:00:00:00:00:01")
	routerMAC = mustMAC("02:00:00:00:00:fe")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// Interfaces of the test namespace.
var testDevs = []string{"up0", "up1", "other0", "br0", "br1", "vetha", "vethb", "vethc"}

// netnsRunner runs functions on one thread inside a network namespace of
// its own, which goes away with the runner.
type netnsRunner struct {
	jobs chan func()
}

func startNetns(t testing.TB, setup func() error) *netnsRunner {
	t.Helper()
	r := &netnsRunner{jobs: make(chan func())}
	ready := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime ends
		// the thread, and with its last user the namespace.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			ready <- fmt.Errorf("creating a network namespace: %w", err)
			return
		}
		ns.Close()
		if err := setup(); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for job := range r.jobs {
			job()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(r.jobs) })
	return r
}

// do runs fn inside the namespace and waits for it.
func (r *netnsRunner) do(fn func()) {
	done := make(chan struct{})
	r.jobs <- func() {
		defer close(done)
		fn()
	}
	<-done
}

// runProg runs prog once on frame inside the namespace, as if it came in
// on the interface ifindex (dev names it in the error), and returns the
// verdict and the frame as the program left it.
func (r *netnsRunner) runProg(prog *ebpf.Program, dev string, ifindex uint32, frame []byte) (uint32, []byte, error) {
	opts := ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256),
		Context: skbContext{Ifindex: ifindex},
	}
	var ret uint32
	var err error
	r.do(func() { ret, err = prog.Run(&opts) })
	if err != nil {
		return 0, nil, fmt.Errorf("running %s on %s: %w", prog, dev, err)
	}
	return ret, opts.DataOut, nil
}

// setupTestNetns creates the test interfaces in the current namespace,
// with a default route out of up0, a route to 198.18.0.0/15 out of
// other0 and one to 198.51.100.128/25 with a 9000-byte MTU, and turns
// forwarding on (bpf_fib_lookup wants it).
func setupTestNetns(idx map[string]uint32) error {
	for _, name := range testDevs {
		la := netlink.NewLinkAttrs()
		la.Name = name
		if name == "up0" {
			la.HardwareAddr = upMAC
		}
		if err := addTestVeth(la, idx); err != nil {
			return err
		}
	}
	for _, a := range [][2]string{{"up0", "192.0.2.1/24"}, {"up0", "192.0.2.2/32"}, {"other0", "10.99.0.1/24"}, {"br0", "172.17.0.1/16"}, {"br1", "172.18.0.1/16"}} {
		if err := addTestAddr(a[0], a[1]); err != nil {
			return fmt.Errorf("adding %s to %s: %w", a[1], a[0], err)
		}
	}
	routes := []netlink.Route{
		{Dst: nil, Gw: net.IP(routerIP.AsSlice()), LinkIndex: int(idx["up0"])},
		{Dst: &net.IPNet{IP: net.IPv4(198, 18, 0, 0), Mask: net.CIDRMask(15, 32)}, Gw: net.IPv4(10, 99, 0, 254), LinkIndex: int(idx["other0"])},
		// A route whose (locked) MTU is above the device's: the route
		// lookup lets a big packet through, the device would not.
		{Dst: &net.IPNet{IP: net.IPv4(198, 51, 100, 128), Mask: net.CIDRMask(25, 32)}, Gw: net.IP(routerIP.AsSlice()), LinkIndex: int(idx["up0"]), MTU: 9000, MTULock: true},
	}
	for _, rt := range routes {
		if err := netlink.RouteAdd(&rt); err != nil {
			return fmt.Errorf("adding route %v: %w", rt, err)
		}
	}
	// /proc/sys/net is the namespace of the thread that opens it.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644); err != nil {
		return err
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/br0/forwarding")
	if err != nil {
		return err
	}
	if string(bytes.TrimSpace(b)) != "1" {
		return errors.New("forwarding did not turn on in the test namespace")
	}
	return nil
}

// addTestVeth adds la as a veth pair with the peer la.Name+"p" (the
// kernel of the tests has no dummy driver), sets both ends up and records
// their indexes in idx.
func addTestVeth(la netlink.LinkAttrs, idx map[string]uint32) error {
	name := la.Name
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name + "p"}); err != nil {
		return fmt.Errorf("adding %s: %w", name, err)
	}
	for _, n := range []string{name + "p", name} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", n, err)
		}
		idx[n] = uint32(l.Attrs().Index)
	}
	return nil
}

// addTestAddr adds cidr to dev.
func addTestAddr(dev, cidr string) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return netlink.AddrAdd(l, a)
}

// packetEnv is one test's datapath: programs and maps of its own, loaded
// unpinned, programmed with the test topology.
type packetEnv struct {
	t    testing.TB
	opts Options
	objs bpfObjects
	ns   *netnsRunner
	idx  map[string]uint32
}

func newPacketEnv(t testing.TB, opts Options) *packetEnv {
	t.Helper()
	requireRoot(t)
	e := &packetEnv{t: t, opts: opts, idx: map[string]uint32{}}
	e.ns = startNetns(t, func() error { return setupTestNetns(e.idx) })
	spec, err := Spec(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.LoadAndAssign(&e.objs, nil); err != nil {
		t.Fatalf("loading the datapath: %v", err)
	}
	t.Cleanup(func() { e.objs.Close() })
	e.installTopology()
	return e
}

func (e *packetEnv) put(m *ebpf.Map, k, v any) {
	e.t.Helper()
	if err := m.Put(k, v); err != nil {
		e.t.Fatalf("%s: put %+v: %v", m, k, err)
	}
}

func (e *packetEnv) installTopology() {
	for _, a := range []netip.Addr{hostIP, hostIP2, gwIP, gw2IP} {
		e.put(e.objs.HostAddrs, be32(a), uint32(1))
	}
	e.put(e.objs.Uplinks, e.idx["up0"], bpfUplink{Addr: be32(hostIP)})
	e.put(e.objs.Nets, bpfNetKey{Prefixlen: 16, Addr: be32(net1.Addr())}, bpfNetInfo{Flags: 1, NetId: 1})
	e.put(e.objs.Nets, bpfNetKey{Prefixlen: 16, Addr: be32(net2.Addr())}, bpfNetInfo{Flags: 0, NetId: 2})
	e.addEndpoint(ctrA, "vetha", "br0", gwIP, macA, gwMAC, 1)
	e.addEndpoint(ctrB, "vethb", "br0", gwIP, macB, gwMAC, 1)
	e.addEndpoint(ctrC, "vethc", "br1", gw2IP, macC, gw2MAC, 2)
}

// addEndpoint programs a container as Apply does: by its address and by
// its host veth.
func (e *packetEnv) addEndpoint(a netip.Addr, veth, bridge string, gw netip.Addr, mac, gwmac net.HardwareAddr, netID uint32) {
	ep := bpfEndpoint{Ifindex: e.idx[veth], BridgeIfindex: e.idx[bridge], GwAddr: be32(gw), NetId: netID, Addr: be32(a)}
	copy(ep.Mac[:], mac)
	copy(ep.GwMac[:], gwmac)
	e.put(e.objs.Endpoints, be32(a), ep)
	e.put(e.objs.Veths, ep.Ifindex, ep)
}

// publish adds a published port; an invalid hostAddr binds every host
// address.
func (e *packetEnv) publish(proto uint8, hostAddr netip.Addr, hostPort uint16, target netip.Addr, port uint16, id uint32) {
	e.put(e.objs.Published, portKey(proto, hostAddr, hostPort), bpfPortTarget{Addr: be32(target), Port: be16(port), Id: id})
}

func portKey(proto uint8, hostAddr netip.Addr, hostPort uint16) bpfPortKey {
	return bpfPortKey{Addr: be32(hostAddr), Port: be16(hostPort), Proto: proto}
}

// skbContext mirrors the head of struct __sk_buff, as far as
// BPF_PROG_RUN lets a caller set it.
type skbContext struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTci        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
	TcIndex        uint32
	Cb             [5]uint32
}

// run runs prog on frame as if it arrived on (or left through) the
// interface dev, and returns the verdict and the frame as the program left
// it.
func (e *packetEnv) run(prog *ebpf.Program, dev string, frame []byte) (uint32, []byte) {
	e.t.Helper()
	ret, out, err := e.tryRun(prog, dev, frame)
	if err != nil {
		e.t.Fatal(err)
	}
	return ret, out
}

// tryRun is run that returns the kernel's refusal to run the program
// rather than failing the test.
func (e *packetEnv) tryRun(prog *ebpf.Program, dev string, frame []byte) (uint32, []byte, error) {
	ifindex, ok := e.idx[dev]
	if !ok {
		return 0, nil, fmt.Errorf("no interface %q in the test namespace", dev)
	}
	recordFrame(e, prog, dev, frame)
	return e.ns.runProg(prog, dev, ifindex, frame)
}

func (e *packetEnv) fromNetdev(frame []byte) (uint32, []byte) {
	e.t.Helper()
	return e.run(e.objs.FromNetdev, "up0", frame)
}

func (e *packetEnv) toNetdev(frame []byte) (uint32, []byte) {
	e.t.Helper()
	return e.run(e.objs.ToNetdev, "up0", frame)
}

func (e *packetEnv) fromContainer(veth string, frame []byte) (uint32, []byte) {
	e.t.Helper()
	return e.run(e.objs.FromContainer, veth, frame)
}

func (e *packetEnv) toContainer(veth string, frame []byte) (uint32, []byte) {
	e.t.Helper()
	return e.run(e.objs.ToContainer, veth, frame)
}

func expectVerdict(t testing.TB, got, want uint32) {
	t.Helper()
	if got != want {
		t.Fatalf("verdict %s, want %s", verdictName(got), verdictName(want))
	}
}

// Map readers.

func ctKey(proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) bpfCtKey {
	return bpfCtKey{Saddr: be32(src), Daddr: be32(dst), Sport: be16(sport), Dport: be16(dport), Proto: proto}
}

func ctKeyString(k bpfCtKey) string {
	return fmt.Sprintf("%d %s:%d -> %s:%d", k.Proto, addrFrom(k.Saddr), port16(k.Sport), addrFrom(k.Daddr), port16(k.Dport))
}

// ct reads both connection-tracking tables, ct4 and the unassured
// ct4_syn, as one (a flow is in one of them; ctTable tells which).
func (e *packetEnv) ct() map[bpfCtKey]bpfCtEntry {
	e.t.Helper()
	out := e.ctTable(e.objs.Ct4)
	for k, v := range e.ctTable(e.objs.Ct4Syn) {
		if _, dup := out[k]; dup {
			e.t.Fatalf("%s is in ct4 and ct4_syn", ctKeyString(k))
		}
		out[k] = v
	}
	return out
}

func (e *packetEnv) ctTable(m *ebpf.Map) map[bpfCtKey]bpfCtEntry {
	e.t.Helper()
	out, err := readMap[bpfCtKey, bpfCtEntry](m)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// ctLookup finds k in ct4, else in ct4_syn.
func (e *packetEnv) ctLookup(k bpfCtKey) (bpfCtEntry, bool) {
	e.t.Helper()
	if v, ok := e.ctLookupIn(e.objs.Ct4, k); ok {
		return v, true
	}
	return e.ctLookupIn(e.objs.Ct4Syn, k)
}

func (e *packetEnv) ctLookupIn(m *ebpf.Map, k bpfCtKey) (bpfCtEntry, bool) {
	e.t.Helper()
	var v bpfCtEntry
	err := m.Lookup(k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return v, true
}

// ctDelete deletes k from the table that holds it, as an eviction would.
func (e *packetEnv) ctDelete(k bpfCtKey) {
	e.t.Helper()
	err := e.objs.Ct4.Delete(k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = e.objs.Ct4Syn.Delete(k)
	}
	if err != nil {
		e.t.Fatalf("deleting %s: %v", ctKeyString(k), err)
	}
}

func (e *packetEnv) frags() map[bpfFragKey]bpfFragPorts {
	e.t.Helper()
	out, err := readMap[bpfFragKey, bpfFragPorts](e.objs.Frags4)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *packetEnv) perCPUArray(m *ebpf.Map, n int) []uint64 {
	e.t.Helper()
	v, err := sumArray(m, n)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *packetEnv) drops() []uint64  { return e.perCPUArray(e.objs.Drops, dropMax) }
func (e *packetEnv) events() []uint64 { return e.perCPUArray(e.objs.Events, eventMax) }

// expectDrops checks the drop counters against want (reasons not named
// must be zero).
func (e *packetEnv) expectDrops(want map[DropReason]uint64) {
	e.t.Helper()
	for i, n := range e.drops() {
		if w := want[DropReason(i)]; n != w {
			e.t.Errorf("drops[%s] = %d, want %d", DropReason(i), n, w)
		}
	}
}

func (e *packetEnv) event(ev Event) uint64 { return e.events()[ev] }

func (e *packetEnv) traffic(dev string) Traffic {
	e.t.Helper()
	var vals []bpfTraffic
	err := e.objs.IfStats.Lookup(e.idx[dev], &vals)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Traffic{}
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var tr Traffic
	for _, v := range vals {
		tr.RxPackets += v.RxPackets
		tr.RxBytes += v.RxBytes
		tr.TxPackets += v.TxPackets
		tr.TxBytes += v.TxBytes
	}
	return tr
}

func (e *packetEnv) portConns(k bpfPortKey) uint64 {
	e.t.Helper()
	var vals []uint64
	err := e.objs.PortConns.Lookup(k, &vals)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var n uint64
	for _, v := range vals {
		n += v
	}
	return n
}

// ctWant is what a test expects of a conntrack entry; counters and the
// deadline are checked apart.
type ctWant struct {
	nsaddr, ndaddr netip.Addr
	nsport, ndport uint16
	flags, peer    bpfCtFlags
	kind           FlowKind
	ifindex        uint32
}

func (w ctWant) String() string {
	return fmt.Sprintf("%s:%d -> %s:%d flags=%#x peer=%#x kind=%s ifindex=%d", w.nsaddr, w.nsport, w.ndaddr, w.ndport, w.flags, w.peer, w.kind, w.ifindex)
}

func ctGot(v bpfCtEntry) ctWant {
	return ctWant{
		nsaddr: addrFrom(v.Nsaddr), ndaddr: addrFrom(v.Ndaddr),
		nsport: port16(v.Nsport), ndport: port16(v.Ndport),
		flags: v.Flags, peer: v.PeerFlags, kind: FlowKind(v.Kind), ifindex: v.Ifindex,
	}
}

// expectCT checks the entry at k and returns it.
func (e *packetEnv) expectCT(k bpfCtKey, want ctWant) bpfCtEntry {
	e.t.Helper()
	v, ok := e.ctLookup(k)
	if !ok {
		e.t.Fatalf("no conntrack entry at %s; table:\n%s", ctKeyString(k), e.ctDump())
	}
	if got := ctGot(v); got != want {
		e.t.Errorf("conntrack entry at %s:\n got %s\nwant %s", ctKeyString(k), got, want)
	}
	return v
}

func (e *packetEnv) expectNoCT(k bpfCtKey) {
	e.t.Helper()
	if v, ok := e.ctLookup(k); ok {
		e.t.Errorf("unexpected conntrack entry at %s: %s", ctKeyString(k), ctGot(v))
	}
}

// expectExpiry checks that an entry lives for about d from now.
func (e *packetEnv) expectExpiry(v bpfCtEntry, d time.Duration) {
	e.t.Helper()
	now, err := monotonicNow()
	if err != nil {
		e.t.Fatal(err)
	}
	left := time.Duration(int64(v.Expires) - int64(now))
	if left > d || left < d-10*time.Second {
		e.t.Errorf("entry expires in %v, want about %v", left, d)
	}
}

func (e *packetEnv) ctDump() string {
	var b bytes.Buffer
	for k, v := range e.ct() {
		fmt.Fprintf(&b, "  %s => %s packets=%d\n", ctKeyString(k), ctGot(v), v.Packets)
	}
	return b.String()
}

// Frames.

// testPacket describes an Ethernet/IPv4 frame; the constructors fill in
// defaults that a test overrides field by field.
type testPacket struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	proto          layers.IPProtocol
	sport, dport   uint16
	ttl            uint8
	ipID           uint16
	df             bool
	options        []layers.IPv4Option

	syn, ack, fin, rst bool
	seq                uint32

	icmpType, icmpCode uint8
	icmpID, icmpSeq    uint16

	payload []byte
	// zeroUDPChecksum sends UDP without a checksum.
	zeroUDPChecksum bool
}

func basePacket(proto layers.IPProtocol, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) testPacket {
	return testPacket{
		srcMAC: routerMAC, dstMAC: upMAC,
		src: src, dst: dst, proto: proto, sport: sport, dport: dport,
		ttl: 64, ipID: 0x1234, df: true,
		payload: []byte("bpfnet packet test payload"),
	}
}

func tcpPacket(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) testPacket {
	p := basePacket(layers.IPProtocolTCP, src, sport, dst, dport)
	p.syn = true
	p.seq = 1000
	return p
}

func udpPacket(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) testPacket {
	return basePacket(layers.IPProtocolUDP, src, sport, dst, dport)
}

// echoPacket is an echo request with identifier id.
func echoPacket(src, dst netip.Addr, id uint16) testPacket {
	p := basePacket(layers.IPProtocolICMPv4, src, 0, dst, 0)
	p.icmpType = layers.ICMPv4TypeEchoRequest
	p.icmpID = id
	p.icmpSeq = 1
	return p
}

func echoReply(src, dst netip.Addr, id uint16) testPacket {
	p := echoPacket(src, dst, id)
	p.icmpType = layers.ICMPv4TypeEchoReply
	return p
}

// icmpError is an ICMP error of type/code whose body quotes quote (an IP
// datagram, whole or cut); rest is the 32-bit field after the checksum
// (the next-hop MTU of fragmentation needed).
func icmpError(src, dst netip.Addr, typ, code uint8, rest uint32, quote []byte) testPacket {
	p := basePacket(layers.IPProtocolICMPv4, src, 0, dst, 0)
	p.icmpType, p.icmpCode = typ, code
	p.icmpID, p.icmpSeq = uint16(rest>>16), uint16(rest)
	p.payload = quote
	return p
}

// fromContainerPkt sets the MACs of a frame a container sends to its
// gateway.
func (p testPacket) fromCtr(mac, gw net.HardwareAddr) testPacket {
	p.srcMAC, p.dstMAC = mac, gw
	return p
}

func (p testPacket) l4() gopacket.SerializableLayer {
	switch p.proto {
	case layers.IPProtocolTCP:
		return &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: p.seq, SYN: p.syn, ACK: p.ack, FIN: p.fin, RST: p.rst, Window: 65535}
	case layers.IPProtocolUDP:
		return &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
	case layers.IPProtocolICMPv4:
		return &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmpType, p.icmpCode), Id: p.icmpID, Seq: p.icmpSeq}
	}
	return nil
}

// datagram serializes the IPv4 datagram, checksums computed.
func (p testPacket) datagram() []byte {
	ip := p.ipLayer()
	ls := []gopacket.SerializableLayer{ip}
	if l4 := p.l4(); l4 != nil {
		if n, ok := l4.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			if err := n.SetNetworkLayerForChecksum(ip); err != nil {
				panic(err)
			}
		}
		ls = append(ls, l4)
	}
	ls = append(ls, gopacket.Payload(p.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		panic(err)
	}
	b := append([]byte(nil), buf.Bytes()...)
	if p.zeroUDPChecksum && p.proto == layers.IPProtocolUDP {
		ihl := int(b[0]&0xf) * 4
		b[ihl+6], b[ihl+7] = 0, 0
	}
	return b
}

func (p testPacket) ipLayer() *layers.IPv4 {
	ip := &layers.IPv4{
		Version: 4, TTL: p.ttl, Id: p.ipID, Protocol: p.proto,
		SrcIP: net.IP(p.src.AsSlice()), DstIP: net.IP(p.dst.AsSlice()),
		Options: p.options,
	}
	if p.df {
		ip.Flags = layers.IPv4DontFragment
	}
	return ip
}

// frame serializes the whole Ethernet frame.
func (p testPacket) frame() []byte {
	return ethFrame(p.srcMAC, p.dstMAC, layers.EthernetTypeIPv4, p.datagram())
}

func ethFrame(src, dst net.HardwareAddr, typ layers.EthernetType, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], uint16(typ))
	return append(b, payload...)
}

// fragment cuts an IPv4 datagram (no options) into fragments of at most
// size bytes of payload (a multiple of 8 but for the last).
func fragment(dg []byte, size int) [][]byte {
	hdr := dg[:20]
	data := dg[20:]
	var out [][]byte
	for off := 0; off < len(data); off += size {
		end := min(off+size, len(data))
		f := append(append([]byte(nil), hdr...), data[off:end]...)
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		fo := uint16(off / 8)
		if end < len(data) {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(f[6:], fo)
		setIPChecksum(f)
		out = append(out, f)
	}
	return out
}

func setIPChecksum(ip []byte) {
	ihl := int(ip[0]&0xf) * 4
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], ^fold(onesSum(ip[:ihl], 0)))
}

// Checksums, computed here rather than by gopacket.

func onesSum(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// l4Sum is the one's-complement sum of seg with the pseudo header of
// an IPv4 header ip; 0xffff when the checksum in seg is right.
func l4Sum(ip []byte, seg []byte) uint16 {
	var ph [12]byte
	copy(ph[0:8], ip[12:20])
	ph[9] = ip[9]
	binary.BigEndian.PutUint16(ph[10:], uint16(len(seg)))
	return fold(onesSum(seg, onesSum(ph[:], 0)))
}

// checkDatagram verifies the checksums of an IPv4 datagram: the header
// always, the L4 checksum when the datagram is not a fragment (UDP
// without a checksum passes). It reports every problem with what.
func checkDatagram(t testing.TB, what string, ip []byte) {
	t.Helper()
	if len(ip) < 20 {
		t.Errorf("%s: datagram of %d bytes", what, len(ip))
		return
	}
	ihl := int(ip[0]&0xf) * 4
	if s := fold(onesSum(ip[:ihl], 0)); s != 0xffff {
		t.Errorf("%s: bad IP header checksum %#04x (sum %#04x)", what, binary.BigEndian.Uint16(ip[10:]), s)
	}
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) {
		t.Errorf("%s: total length %d of a %d-byte datagram", what, tot, len(ip))
		return
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return
	}
	seg := ip[ihl:tot]
	switch layers.IPProtocol(ip[9]) {
	case layers.IPProtocolTCP:
		if s := l4Sum(ip, seg); s != 0xffff {
			t.Errorf("%s: bad TCP checksum %#04x", what, binary.BigEndian.Uint16(seg[16:]))
		}
	case layers.IPProtocolUDP:
		if binary.BigEndian.Uint16(seg[6:]) == 0 {
			return
		}
		if s := l4Sum(ip, seg); s != 0xffff {
			t.Errorf("%s: bad UDP checksum %#04x", what, binary.BigEndian.Uint16(seg[6:]))
		}
	case layers.IPProtocolICMPv4:
		if s := fold(onesSum(seg, 0)); s != 0xffff {
			t.Errorf("%s: bad ICMP checksum %#04x", what, binary.BigEndian.Uint16(seg[2:]))
		}
	}
}

// checkFrame verifies the checksums of an Ethernet frame's datagram.
func checkFrame(t testing.TB, frame []byte) {
	t.Helper()
	checkDatagram(t, "frame", frame[14:])
}

// decoded is a frame parsed back with gopacket.
type decoded struct {
	eth  *layers.Ethernet
	ip   *layers.IPv4
	tcp  *layers.TCP
	udp  *layers.UDP
	icmp *layers.ICMPv4
}

func decode(t testing.TB, frame []byte) decoded {
	t.Helper()
	pk := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var d decoded
	if l, ok := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); ok {
		d.eth = l
	}
	if l, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		d.ip = l
	}
	if d.eth == nil || d.ip == nil {
		t.Fatalf("output is not Ethernet/IPv4: %v", pk)
	}
	if l, ok := pk.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
		d.tcp = l
	}
	if l, ok := pk.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
		d.udp = l
	}
	if l, ok := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		d.icmp = l
	}
	return d
}

func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

func (d decoded) src() netip.Addr { return ipAddr(d.ip.SrcIP) }
func (d decoded) dst() netip.Addr { return ipAddr(d.ip.DstIP) }

// ports gives the L4 ports; for an ICMP echo request the identifier as
// source port, for an echo reply as destination port.
func (d decoded) ports() (uint16, uint16) {
	switch {
	case d.tcp != nil:
		return uint16(d.tcp.SrcPort), uint16(d.tcp.DstPort)
	case d.udp != nil:
		return uint16(d.udp.SrcPort), uint16(d.udp.DstPort)
	case d.icmp != nil && d.icmp.TypeCode.Type() == layers.ICMPv4TypeEchoRequest:
		return d.icmp.Id, 0
	case d.icmp != nil && d.icmp.TypeCode.Type() == layers.ICMPv4TypeEchoReply:
		return 0, d.icmp.Id
	}
	return 0, 0
}

// expectTuple checks a frame's addresses and ports.
func expectTuple(t testing.TB, d decoded, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	t.Helper()
	gs, gd := d.ports()
	if d.src() != src || gs != sport || d.dst() != dst || gd != dport {
		t.Errorf("tuple %s:%d -> %s:%d, want %s:%d -> %s:%d", d.src(), gs, d.dst(), gd, src, sport, dst, dport)
	}
}

func expectMACs(t testing.TB, d decoded, src, dst net.HardwareAddr) {
	t.Helper()
	if !bytes.Equal(d.eth.SrcMAC, src) || !bytes.Equal(d.eth.DstMAC, dst) {
		t.Errorf("MACs %s -> %s, want %s -> %s", d.eth.SrcMAC, d.eth.DstMAC, src, dst)
	}
}

func expectTTL(t testing.TB, d decoded, ttl uint8) {
	t.Helper()
	if d.ip.TTL != ttl {
		t.Errorf("TTL %d, want %d", d.ip.TTL, ttl)
	}
}

func expectUnchanged(t testing.TB, in, out []byte) {
	t.Helper()
	if !bytes.Equal(in, out) {
		t.Errorf("frame changed:\n in  %x\n out %x", in, out)
	}
}

// quoted is the datagram an ICMP error quotes, read from its bytes.
type quoted struct {
	raw          []byte
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16 // ports, or for an echo the identifier as sport
}

func parseQuote(t testing.TB, d decoded) quoted {
	t.Helper()
	if d.icmp == nil {
		t.Fatal("not an ICMP message")
	}
	b := d.icmp.Payload
	if len(b) < 28 {
		t.Fatalf("ICMP error quotes %d bytes", len(b))
	}
	ihl := int(b[0]&0xf) * 4
	q := quoted{raw: b, proto: b[9]}
	q.src, _ = netip.AddrFromSlice(b[12:16])
	q.dst, _ = netip.AddrFromSlice(b[16:20])
	l4 := b[ihl:]
	if q.proto == uint8(layers.IPProtocolICMPv4) {
		q.sport = binary.BigEndian.Uint16(l4[4:])
	} else {
		q.sport = binary.BigEndian.Uint16(l4[0:])
		q.dport = binary.BigEndian.Uint16(l4[2:])
	}
	return q
}
