// SPDX-License-Identifier: Apache-2.0

package datapath

// Fuzz targets of the TC programs. Each target runs one program with
// BPF_PROG_RUN on mutated frames, in the packet tests' namespace and
// topology (fuzzTopology), once with the fast path and once through the
// stack, and checks what must hold whatever path the program takes:
//
//   - the verdict is TC_ACT_OK, TC_ACT_SHOT or TC_ACT_REDIRECT, and a
//     TC_ACT_SHOT counts exactly one drop (nothing else counts one);
//   - a frame that is not IPv4, or that the kernel's IP receive path
//     rejects (parseFuzzFrame), comes out byte for byte as it went in;
//   - a frame that comes out changed differs only in the fields a
//     translation or a fast-path forward writes (MACs, TTL, addresses,
//     ports and ICMP identifier, checksums, an ICMP error's quote), never
//     past the IP datagram's end, and never only in its checksums; and
//     every checksum right on the way in (IP header, TCP, UDP, ICMP, the
//     quoted IP header of an ICMP error) is right on the way out, every
//     wrong one still wrong;
//   - a malformed frame (one the kernel's IP, TCP, UDP or ICMP receive
//     path rejects) changes no state (fuzzStateMaps): no conntrack or
//     fragment entry is created, none is touched.
//
// Most inputs have their checksums made right first (fixSums), so that
// the programs see what a sender would send; the others keep them as the
// fuzzer made them. The state maps start every input from the same flows
// (fuzzBaseFlows), so that answers and ICMP errors find a translation to
// apply; whatever an input changes is undone before the next one.
//
// Seeds: the frames of every packet test, recorded into testdata/fuzz by
// running the packet tests with BPFNET_FUZZ_RECORD=1 (see recordFrame), and
// a few built here, so that the targets have seeds without the corpus too.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
)

// fuzzMaxFrame bounds the frames tried: BPF_PROG_RUN refuses data larger
// than a page less the skb's head and tail room.
const fuzzMaxFrame = 3000

// Devices a target's frames arrive on (or leave through), chosen by the
// fuzzed index: an uplink, interfaces that are not uplinks, container
// veths of every network, and a veth that is no endpoint's.
var (
	fuzzNetdevs     = []string{"up0", "up1", "other0"}
	fuzzContainerIf = []string{"vetha", "vethb", "vethc", "vethd", "other0"}
)

// Another network on top of the packet tests' two: internal and isolated
// (gateway mode), without inter-container communication, with one
// container D. net2, not masqueraded, is routed (gateway mode), with C's
// tcp/80 published as a container port.
var (
	gw3IP  = netip.MustParseAddr("172.19.0.1")
	ctrD   = netip.MustParseAddr("172.19.0.2")
	net3   = netip.MustParsePrefix("172.19.0.0/16")
	macD   = mustMAC("02:42:ac:13:00:02")
	gw3MAC = mustMAC("02:42:00:00:00:03")
)

const (
	netMasq     = netFMasq
	netNoICC    = netFNoICC
	netInternal = netFInternal
	netRouted   = netFRouted
	netIsolated = netFIsolated
)

// fuzzTopology writes the packet-test topology into the maps of objs:
// host addresses, the uplink, three networks with their containers and
// published ports of every kind (to every host address and to one,
// TCP and UDP, to containers of each network). It is the one place the
// fuzz targets' state comes from: a map a program starts to read is
// filled here.
func fuzzTopology(objs *bpfObjects, idx map[string]uint32) error {
	type put struct {
		m    *ebpf.Map
		k, v any
	}
	ep := func(addr netip.Addr, veth, bridge string, gw netip.Addr, mac, gwmac []byte, netID uint32, flags bpfNetFlags) bpfEndpoint {
		e := bpfEndpoint{Ifindex: idx[veth], BridgeIfindex: idx[bridge], GwAddr: be32(gw), NetId: netID, Flags: flags, Addr: be32(addr)}
		copy(e.Mac[:], mac)
		copy(e.GwMac[:], gwmac)
		return e
	}
	pub := func(proto uint8, host netip.Addr, hport uint16, target netip.Addr, port uint16, id uint32) put {
		return put{objs.Published, portKey(proto, host, hport), bpfPortTarget{Addr: be32(target), Port: be16(port), Id: id}}
	}
	tcp, udp := uint8(layers.IPProtocolTCP), uint8(layers.IPProtocolUDP)
	puts := []put{
		{objs.Uplinks, idx["up0"], bpfUplink{Addr: be32(hostIP)}},
		{objs.Nets, bpfNetKey{Prefixlen: 16, Addr: be32(net1.Addr())}, bpfNetInfo{Flags: netMasq, NetId: 1}},
		{objs.Nets, bpfNetKey{Prefixlen: 16, Addr: be32(net2.Addr())}, bpfNetInfo{Flags: netRouted, NetId: 2}},
		{objs.Nets, bpfNetKey{Prefixlen: 16, Addr: be32(net3.Addr())}, bpfNetInfo{Flags: netInternal | netNoICC | netIsolated, NetId: 3}},
		{objs.RoutedPorts, bpfPortKey{Addr: be32(ctrC), Port: be16(80), Proto: tcp}, bpfPortTarget{Addr: be32(ctrC), Port: be16(80), Id: 7}},
		pub(tcp, netip.Addr{}, 8080, ctrA, 80, 1),
		pub(udp, netip.Addr{}, 5353, ctrB, 53, 2),
		pub(tcp, hostIP2, 8081, ctrC, 80, 3),
		pub(udp, netip.Addr{}, 9100, ctrC, 53, 4),
		pub(tcp, netip.Addr{}, 8082, ctrD, 80, 5),
		pub(tcp, netip.Addr{}, 8083, ctrB, 8083, 6),
	}
	// Every endpoint by address and by its veth, as Apply writes them.
	for _, e := range []bpfEndpoint{
		ep(ctrA, "vetha", "br0", gwIP, macA, gwMAC, 1, netMasq),
		ep(ctrB, "vethb", "br0", gwIP, macB, gwMAC, 1, netMasq),
		ep(ctrC, "vethc", "br1", gw2IP, macC, gw2MAC, 2, netRouted),
		ep(ctrD, "vethd", "br2", gw3IP, macD, gw3MAC, 3, netInternal|netNoICC|netIsolated),
	} {
		puts = append(puts, put{objs.Endpoints, e.Addr, e}, put{objs.Veths, e.Ifindex, e})
	}
	for _, a := range []netip.Addr{hostIP, hostIP2, gwIP, gw2IP, gw3IP} {
		puts = append(puts, put{objs.HostAddrs, be32(a), uint32(1)})
	}
	// NAT64 (bpf/lib/nat64.h): host IPv6 ports of IPv4 containers.
	puts = append(puts,
		put{objs.HostAddrs6, bpfIn6Key{A: be128(host6)}, uint32(1)},
		put{objs.Published6, bpfPort6Key{Port: be16(8064), Proto: tcp}, bpfPort6Target{Addr: be128(ctrA), Port: be16(80), Id: 8}},
		put{objs.Published6, bpfPort6Key{Port: be16(5364), Proto: udp}, bpfPort6Target{Addr: be128(ctrB), Port: be16(53), Id: 9}})
	for _, p := range puts {
		if err := p.m.Put(p.k, p.v); err != nil {
			return fmt.Errorf("%s: put %+v: %w", p.m, p.k, err)
		}
	}
	return nil
}

// fuzzNATPort is the one port masquerade picks when a flow's own is
// taken: the base flows are the same on every load, and a second
// collision reaches the exhausted range.
const fuzzNATPort = 61000

// fuzzFlow is a frame run at setup to open a flow every input starts from.
type fuzzFlow struct {
	prog  func(*bpfObjects) *ebpf.Program
	dev   string
	frame []byte
}

func progFromNetdev(o *bpfObjects) *ebpf.Program    { return o.FromNetdev }
func progToNetdev(o *bpfObjects) *ebpf.Program      { return o.ToNetdev }
func progFromContainer(o *bpfObjects) *ebpf.Program { return o.FromContainer }
func progToContainer(o *bpfObjects) *ebpf.Program   { return o.ToContainer }

// fuzzBaseFlows are the flows of the conntrack table every input starts
// from: masqueraded TCP, UDP and ping, published TCP and UDP, a hairpin
// and a routed flow of the network without masquerade.
func fuzzBaseFlows() []fuzzFlow {
	out := func(p testPacket) testPacket { return p.fromCtr(upMAC, routerMAC) }
	return []fuzzFlow{
		{progToNetdev, "up0", out(tcpPacket(ctrA, 40000, remoteIP, 443)).frame()},
		// The same source port as A's flow: masqueraded to fuzzNATPort.
		{progToNetdev, "up0", out(tcpPacket(ctrB, 40000, remoteIP, 443)).frame()},
		{progToNetdev, "up0", out(udpPacket(ctrB, 5000, remoteIP, 53)).frame()},
		{progToNetdev, "up0", out(echoPacket(ctrA, remoteIP, 77)).frame()},
		{progToNetdev, "up0", out(tcpPacket(ctrC, 42000, remoteIP, 80)).frame()},
		{progFromNetdev, "up0", tcpPacket(clientIP, 50000, hostIP, 8080).frame()},
		{progFromNetdev, "up0", udpPacket(clientIP, 50001, hostIP, 5353).frame()},
		{progFromNetdev, "up0", tcpPacket(client2IP, 50002, hostIP2, 8081).frame()},
		{progFromContainer, "vethb", tcpPacket(ctrB, 41000, hostIP, 8080).fromCtr(macB, gwMAC).frame()},
		{progFromContainer, "vethb", tcpPacket(ctrB, 41001, hostIP, 8083).fromCtr(macB, gwMAC).frame()},
		// A first fragment: the later ones of fuzzFragmented find its
		// ports in frags4.
		{progFromNetdev, "up0", fuzzFragmented()[0]},
		// NAT64 flows, whose answers fuzzSeeds6 sends.
		{progFromNetdev, "up0", tcp6(client6, 50064, host6, 8064).frame()},
		{progFromNetdev, "up0", udp6(client6, 50065, host6, 5364).frame()},
	}
}

// fuzzFragmented is a published-port datagram cut into fragments.
func fuzzFragmented() [][]byte {
	big := udpPacket(clientIP, 50020, hostIP, 5353)
	big.payload = bytes.Repeat([]byte{'f'}, 1200)
	big.df = false
	var out [][]byte
	for _, f := range fragment(big.datagram(), 496) {
		out = append(out, ethFrame(routerMAC, upMAC, layers.EthernetTypeIPv4, f))
	}
	return out
}

// fuzzStateMaps are the maps of flow state: every input starts from the
// same content (the base flows), and a malformed frame changes none of
// them. A new table of flows belongs here.
func fuzzStateMaps(o *bpfObjects) []*ebpf.Map {
	return []*ebpf.Map{o.Ct4, o.Ct4Syn, o.Frags4, o.Nat64Fwd, o.Nat64Rev}
}

// mapState is a map's content, raw key to raw value.
type mapState map[string]string

func dumpState(m *ebpf.Map) (mapState, error) {
	out := mapState{}
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[string(k)] = string(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", m, err)
	}
	return out, nil
}

// fuzzDatapath is one loaded datapath of a fuzz target, with the state
// its inputs start from (one mapState per fuzzStateMaps entry).
type fuzzDatapath struct {
	objs bpfObjects
	base []mapState
	// The counters as the last run left them.
	drops, events []uint64
}

func (dp *fuzzDatapath) state() ([]mapState, error) {
	var out []mapState
	for _, m := range fuzzStateMaps(&dp.objs) {
		st, err := dumpState(m)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// restore puts the state maps back to the base, given what they hold now.
func (dp *fuzzDatapath) restore(now []mapState) error {
	for i, m := range fuzzStateMaps(&dp.objs) {
		base := dp.base[i]
		for k, v := range now[i] {
			b, ok := base[k]
			if !ok {
				if err := m.Delete([]byte(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("%s: %w", m, err)
				}
			} else if v != b {
				if err := m.Put([]byte(k), []byte(b)); err != nil {
					return fmt.Errorf("%s: %w", m, err)
				}
			}
		}
		for k, b := range base {
			if _, ok := now[i][k]; !ok {
				if err := m.Put([]byte(k), []byte(b)); err != nil {
					return fmt.Errorf("%s: %w", m, err)
				}
			}
		}
	}
	return nil
}

// fuzzEnv holds the fast-path and the through-the-stack datapaths, in one
// test namespace.
type fuzzEnv struct {
	ns  *netnsRunner
	idx map[string]uint32
	dps [2]*fuzzDatapath // fast path, stack
}

func newFuzzEnv(f *testing.F) *fuzzEnv {
	f.Helper()
	requireRoot(f)
	e := &fuzzEnv{idx: map[string]uint32{}}
	e.ns = startNetns(f, func() error {
		if err := setupTestNetns(e.idx); err != nil {
			return err
		}
		return addFuzzDevs(e.idx)
	})
	for i, fast := range []bool{true, false} {
		dp, err := e.load(Options{FastPath: fast, NATPortMin: fuzzNATPort, NATPortMax: fuzzNATPort})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { dp.objs.Close() })
		e.dps[i] = dp
	}
	return e
}

// addFuzzDevs adds the interfaces of network 3 to the test namespace.
func addFuzzDevs(idx map[string]uint32) error {
	for _, name := range []string{"br2", "vethd"} {
		la := netlink.NewLinkAttrs()
		la.Name = name
		if err := addTestVeth(la, idx); err != nil {
			return err
		}
	}
	return addTestAddr("br2", gw3IP.String()+"/16")
}

// load loads a datapath, writes the topology and opens the base flows; the
// base conntrack entries then live for an hour, longer than any fuzzing
// run.
func (e *fuzzEnv) load(opts Options) (*fuzzDatapath, error) {
	spec, err := Spec(opts)
	if err != nil {
		return nil, err
	}
	dp := &fuzzDatapath{}
	if err := spec.LoadAndAssign(&dp.objs, nil); err != nil {
		return nil, fmt.Errorf("loading the datapath: %w", err)
	}
	if err := fuzzTopology(&dp.objs, e.idx); err != nil {
		dp.objs.Close()
		return nil, err
	}
	for _, fl := range fuzzBaseFlows() {
		if _, _, err := e.runOn(fl.prog(&dp.objs), fl.dev, fl.frame); err != nil {
			dp.objs.Close()
			return nil, err
		}
	}
	now, err := monotonicNow()
	if err != nil {
		dp.objs.Close()
		return nil, err
	}
	// The base flows live through the run, in whichever table holds them
	// (published flows stay unassured: their clients never answered).
	opened := 0
	for _, m := range []*ebpf.Map{dp.objs.Ct4, dp.objs.Ct4Syn} {
		ct, err := readMap[bpfCtKey, bpfCtEntry](m)
		if err != nil {
			dp.objs.Close()
			return nil, err
		}
		opened += len(ct)
		for k, v := range ct {
			v.Expires = now + uint64(time.Hour)
			if err := m.Put(k, v); err != nil {
				dp.objs.Close()
				return nil, err
			}
		}
	}
	if opened == 0 {
		dp.objs.Close()
		return nil, errors.New("the base flows opened no conntrack entry")
	}
	if err := fuzzNAT64Forever(&dp.objs, now+uint64(time.Hour)); err != nil {
		dp.objs.Close()
		return nil, err
	}
	if dp.base, err = dp.state(); err != nil {
		dp.objs.Close()
		return nil, err
	}
	if dp.drops, err = sumArray(dp.objs.Drops, dropMax); err != nil {
		dp.objs.Close()
		return nil, err
	}
	if dp.events, err = sumArray(dp.objs.Events, eventMax); err != nil {
		dp.objs.Close()
		return nil, err
	}
	return dp, nil
}

// runOn runs prog on frame from dev, in the test namespace.
func (e *fuzzEnv) runOn(prog *ebpf.Program, dev string, frame []byte) (uint32, []byte, error) {
	return e.ns.runProg(prog, dev, e.idx[dev], frame)
}

// fuzzOutcomes counts what the runs did; it exists for the branches of
// fuzzFeedback.
var fuzzOutcomes [64]uint64

// fuzzFeedback turns what a run did inside the program (its verdict, drop
// reason, events, the conntrack entries it added) into Go branches: the
// fuzzer's coverage sees Go code only, and so keeps an input that makes a
// program do something new, not only one that is parsed in a new way here.
func fuzzFeedback(verdict uint32, reason int, events uint32, class frameClass, newEntries int) {
	switch verdict {
	case TC_ACT_OK:
		fuzzOutcomes[0]++
	case TC_ACT_SHOT:
		fuzzOutcomes[1]++
	case TC_ACT_REDIRECT:
		fuzzOutcomes[2]++
	}
	switch reason {
	case 0:
		fuzzOutcomes[3]++
	case 1:
		fuzzOutcomes[4]++
	case 2:
		fuzzOutcomes[5]++
	case 3:
		fuzzOutcomes[6]++
	case 4:
		fuzzOutcomes[7]++
	case 5:
		fuzzOutcomes[8]++
	case 6:
		fuzzOutcomes[9]++
	case 7:
		fuzzOutcomes[10]++
	case 8:
		fuzzOutcomes[11]++
	case 9:
		fuzzOutcomes[12]++
	case 10:
		fuzzOutcomes[13]++
	case 11:
		fuzzOutcomes[14]++
	case 12:
		fuzzOutcomes[15]++
	}
	for i := 0; i < eventMax; i++ {
		if events&(1<<i) == 0 {
			continue
		}
		switch i {
		case 0:
			fuzzOutcomes[16]++
		case 1:
			fuzzOutcomes[17]++
		case 2:
			fuzzOutcomes[18]++
		case 3:
			fuzzOutcomes[19]++
		case 4:
			fuzzOutcomes[20]++
		case 5:
			fuzzOutcomes[21]++
		case 6:
			fuzzOutcomes[22]++
		case 7:
			fuzzOutcomes[23]++
		case 8:
			fuzzOutcomes[24]++
		case 9:
			fuzzOutcomes[25]++
		case 10:
			fuzzOutcomes[26]++
		case 11:
			fuzzOutcomes[27]++
		}
	}
	switch {
	case newEntries < 0:
		fuzzOutcomes[28]++
	case newEntries == 0:
		fuzzOutcomes[29]++
	case newEntries <= 2:
		fuzzOutcomes[30]++
	default:
		fuzzOutcomes[31]++
	}
	// The outcome of a malformed frame apart: a drop that it took to
	// pass elsewhere is new ground.
	if class != frameOK {
		switch verdict {
		case TC_ACT_OK:
			fuzzOutcomes[32]++
		case TC_ACT_SHOT:
			fuzzOutcomes[33]++
		case TC_ACT_REDIRECT:
			fuzzOutcomes[34]++
		}
	}
}

// The independent parser: what the kernel's receive path accepts, as
// ip_rcv_core, tcp_v4_rcv, __udp4_lib_rcv and icmp_rcv check it.

type frameClass int

const (
	frameNotIPv4 frameClass = iota // not IPv4: not the datapath's
	frameBadIP                     // ip_rcv drops it
	frameBadL4                     // its TCP, UDP or ICMP header is dropped on receipt
	frameOK
)

func (c frameClass) String() string {
	return [...]string{"not IPv4", "malformed IPv4", "malformed L4", "well-formed"}[c]
}

// fuzzFrame is a frame as the independent parser sees it. Offsets are
// from the frame's start.
type fuzzFrame struct {
	class  frameClass
	why    string
	ihl    int // IP header length
	end    int // end of the IP datagram (14 + total length)
	proto  uint8
	later  bool // a fragment at an offset: no L4 header
	first  bool // a first fragment: its L4 checksum covers later ones
	l4     int  // offset of the L4 header
	l4Len  int  // bytes of L4 header and payload in this datagram
	udpLen int  // UDP length field, when UDP
}

// parseFuzzFrame classifies a frame. Not malformed here, though the
// kernel drops them too: a wrong checksum (the datapath leaves checksums
// to the receiver, as a frame from a container may carry a partial one)
// and IP options that do not parse (the datapath does not read options).
// A first fragment's L4 header is judged after reassembly, so never here.
func parseFuzzFrame(b []byte) fuzzFrame {
	var p fuzzFrame
	if len(b) < 14 || binary.BigEndian.Uint16(b[12:]) != uint16(layers.EthernetTypeIPv4) {
		p.class = frameNotIPv4
		return p
	}
	ip := b[14:]
	bad := func(why string) fuzzFrame {
		p.class, p.why = frameBadIP, why
		return p
	}
	if len(ip) < 20 {
		return bad("truncated IP header")
	}
	if ip[0]>>4 != 4 {
		return bad("IP version not 4")
	}
	p.ihl = int(ip[0]&0xf) * 4
	if p.ihl < 20 {
		return bad("IHL below 5")
	}
	if p.ihl > len(ip) {
		return bad("IHL past the frame")
	}
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) {
		return bad("total length past the frame")
	}
	if tot < p.ihl {
		return bad("total length below the header")
	}
	p.end = 14 + tot
	p.proto = ip[9]
	frag := binary.BigEndian.Uint16(ip[6:])
	p.later = frag&0x1fff != 0
	p.first = !p.later && frag&0x2000 != 0
	p.l4 = 14 + p.ihl
	p.l4Len = tot - p.ihl
	p.class = frameOK
	if p.later || p.first {
		return p
	}
	seg := b[p.l4:p.end]
	badL4 := func(why string) fuzzFrame {
		p.class, p.why = frameBadL4, why
		return p
	}
	switch layers.IPProtocol(p.proto) {
	case layers.IPProtocolTCP:
		if len(seg) < 20 {
			return badL4("truncated TCP header")
		}
		doff := int(seg[12]>>4) * 4
		if doff < 20 {
			return badL4("TCP data offset below 5")
		}
		if doff > len(seg) {
			return badL4("TCP data offset past the segment")
		}
	case layers.IPProtocolUDP:
		if len(seg) < 8 {
			return badL4("truncated UDP header")
		}
		p.udpLen = int(binary.BigEndian.Uint16(seg[4:]))
		if p.udpLen < 8 {
			return badL4("UDP length below the header")
		}
		if p.udpLen > len(seg) {
			return badL4("UDP length past the datagram")
		}
	case layers.IPProtocolICMPv4:
		if len(seg) < 8 {
			return badL4("truncated ICMP header")
		}
	}
	return p
}

// isICMPError tells whether an ICMP type quotes a datagram that the
// datapath translates.
func isICMPError(typ uint8) bool {
	return typ == layers.ICMPv4TypeDestinationUnreachable || typ == layers.ICMPv4TypeTimeExceeded ||
		typ == layers.ICMPv4TypeParameterProblem
}

// fuzzSum is one checksum of a frame that can be verified.
type fuzzSum struct {
	what string
	ok   bool
}

// checksums lists the checksums of a frame (parsed as p) that can be
// verified and whether each is right: the IP header's; the L4 checksum of
// a datagram that is not a fragment (UDP over its length field's bytes,
// a zero UDP checksum being none); the quoted IP header of an ICMP error.
func (p fuzzFrame) checksums(b []byte) []fuzzSum {
	if p.class < frameBadL4 {
		return nil
	}
	ip := b[14:p.end]
	out := []fuzzSum{{"IP header", fold(onesSum(ip[:p.ihl], 0)) == 0xffff}}
	if p.later || p.first {
		return out
	}
	seg := b[p.l4:p.end]
	switch layers.IPProtocol(p.proto) {
	case layers.IPProtocolTCP:
		if len(seg) >= 20 {
			out = append(out, fuzzSum{"TCP", l4Sum(ip, seg) == 0xffff})
		}
	case layers.IPProtocolUDP:
		if p.class == frameOK && binary.BigEndian.Uint16(seg[6:]) != 0 {
			out = append(out, fuzzSum{"UDP", l4Sum(ip, seg[:p.udpLen]) == 0xffff})
		}
	case layers.IPProtocolICMPv4:
		if len(seg) >= 4 {
			out = append(out, fuzzSum{"ICMP", fold(onesSum(seg, 0)) == 0xffff})
		}
		if len(seg) >= 8+20 && isICMPError(seg[0]) && seg[8]&0xf == 5 {
			out = append(out, fuzzSum{"quoted IP header", fold(onesSum(seg[8:28], 0)) == 0xffff})
		}
	}
	return out
}

// fixSums makes the checksums of a frame right, so that most inputs are
// frames a sender would send.
func fixSums(b []byte) {
	p := parseFuzzFrame(b)
	if p.class < frameBadL4 {
		return
	}
	ip := b[14:p.end]
	setIPChecksum(ip)
	if p.later || p.first {
		return
	}
	seg := b[p.l4:p.end]
	switch layers.IPProtocol(p.proto) {
	case layers.IPProtocolTCP:
		if len(seg) >= 20 {
			seg[16], seg[17] = 0, 0
			binary.BigEndian.PutUint16(seg[16:], ^l4Sum(ip, seg))
		}
	case layers.IPProtocolUDP:
		if p.class == frameOK && binary.BigEndian.Uint16(seg[6:]) != 0 {
			seg[6], seg[7] = 0, 0
			c := ^l4Sum(ip, seg[:p.udpLen])
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(seg[6:], c)
		}
	case layers.IPProtocolICMPv4:
		if len(seg) >= 8+20 && isICMPError(seg[0]) && seg[8]&0xf == 5 {
			setIPChecksum(seg[8:28])
		}
		if len(seg) >= 4 {
			seg[2], seg[3] = 0, 0
			binary.BigEndian.PutUint16(seg[2:], ^fold(onesSum(seg, 0)))
		}
	}
}

// writable marks the bytes of a frame (parsed as p) that a translation or
// a fast-path forward may write.
func (p fuzzFrame) writable(n int) []bool {
	w := make([]bool, n)
	set := func(from, to int) {
		for i := from; i < to && i < p.end && i < n; i++ {
			w[i] = true
		}
	}
	for i := 0; i < 12; i++ {
		w[i] = true // MACs: the frame's own, not the datagram's
	}
	set(14+8, 14+9)   // TTL
	set(14+10, 14+20) // header checksum, addresses
	if p.later {
		return w
	}
	switch layers.IPProtocol(p.proto) {
	case layers.IPProtocolTCP:
		set(p.l4, p.l4+4)
		set(p.l4+16, p.l4+18)
	case layers.IPProtocolUDP:
		set(p.l4, p.l4+4)
		set(p.l4+6, p.l4+8)
	case layers.IPProtocolICMPv4:
		set(p.l4+2, p.l4+6) // checksum, echo identifier
		set(p.l4+8, p.l4+8+28)
	}
	return w
}

// checksumBytes marks the bytes of p that are checksums.
func (p fuzzFrame) checksumBytes(n int) []bool {
	w := make([]bool, n)
	mark := func(i int) {
		if i+1 < p.end && i+1 < n {
			w[i], w[i+1] = true, true
		}
	}
	mark(14 + 10)
	if !p.later {
		switch layers.IPProtocol(p.proto) {
		case layers.IPProtocolTCP:
			mark(p.l4 + 16)
		case layers.IPProtocolUDP:
			mark(p.l4 + 6)
		case layers.IPProtocolICMPv4:
			mark(p.l4 + 2)
			mark(p.l4 + 8 + 10)
			mark(p.l4 + 8 + 26)
		}
	}
	return w
}

// tcResult is what one run of a TC program did.
type tcResult struct {
	verdict   uint32
	in, out   []byte
	drops     uint64     // drops counted by the run
	before    []mapState // state maps before the run (the base)
	after     []mapState // and after it
	maps      []*ebpf.Map
	prog, dev string
	fastPath  bool
	parsed    fuzzFrame
}

// checkTC checks the invariants of one run (see the top of this file).
func checkTC(t testing.TB, r tcResult) {
	t.Helper()
	where := fmt.Sprintf("%s on %s (fast path %v), %s frame", r.prog, r.dev, r.fastPath, r.parsed.class)
	if r.parsed.why != "" {
		where += " (" + r.parsed.why + ")"
	}
	switch r.verdict {
	case TC_ACT_OK, TC_ACT_REDIRECT:
		if r.drops != 0 {
			t.Errorf("%s: verdict %s with %d drops counted", where, verdictName(r.verdict), r.drops)
		}
	case TC_ACT_SHOT:
		if r.drops != 1 {
			t.Errorf("%s: TC_ACT_SHOT with %d drops counted, want 1", where, r.drops)
		}
	default:
		t.Errorf("%s: verdict %s is none of TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT", where, verdictName(r.verdict))
	}
	if len(r.out) >= 14 && len(r.in) >= 14 && !bytes.Equal(r.in[12:14], r.out[12:14]) {
		checkNAT64Frame(t, where, r)
		return
	}
	if len(r.out) != len(r.in) {
		t.Errorf("%s: %d bytes in, %d out", where, len(r.in), len(r.out))
		return
	}
	if r.parsed.class <= frameBadL4 {
		ipv6 := binary.BigEndian.Uint16(r.in[12:]) == uint16(layers.EthernetTypeIPv6)
		for i, m := range r.maps {
			if ipv6 && isNAT64Map(m) {
				continue // NAT64's: an IPv6 frame is not the IPv4 parser's to judge
			}
			if !mapsEqual(r.before[i], r.after[i]) {
				t.Errorf("%s: %s changed:\n%s", where, m, stateDiff(r.before[i], r.after[i]))
			}
		}
	}
	if bytes.Equal(r.in, r.out) {
		return
	}
	if r.parsed.class <= frameBadIP {
		t.Errorf("%s: changed:\n in  %x\n out %x", where, r.in, r.out)
		return
	}
	w := r.parsed.writable(len(r.in))
	sums := r.parsed.checksumBytes(len(r.in))
	onlySums := true
	for i := range r.in {
		if r.in[i] == r.out[i] {
			continue
		}
		if !w[i] {
			t.Errorf("%s: byte %d changed (%#02x -> %#02x), which no translation writes:\n in  %x\n out %x", where, i, r.in[i], r.out[i], r.in, r.out)
			return
		}
		if !sums[i] {
			onlySums = false
		}
	}
	if onlySums {
		t.Errorf("%s: only checksums changed:\n in  %x\n out %x", where, r.in, r.out)
	}
	in, out := r.parsed.checksums(r.in), parseFuzzFrame(r.out).checksums(r.out)
	if len(in) != len(out) {
		t.Errorf("%s: checksums %v in, %v out", where, in, out)
		return
	}
	for i := range in {
		switch {
		case in[i].ok && !out[i].ok:
			t.Errorf("%s: %s checksum broken:\n in  %x\n out %x", where, in[i].what, r.in, r.out)
		case !in[i].ok && out[i].ok:
			t.Errorf("%s: wrong %s checksum made right:\n in  %x\n out %x", where, in[i].what, r.in, r.out)
		}
	}
}

// stateDiff tells what changed in a state map, conntrack entries decoded.
func stateDiff(a, b mapState) string {
	show := func(k, v string) string {
		var ck bpfCtKey
		var cv bpfCtEntry
		if len(k) == binary.Size(ck) && len(v) == binary.Size(cv) {
			binary.Read(strings.NewReader(k), binary.NativeEndian, &ck)
			binary.Read(strings.NewReader(v), binary.NativeEndian, &cv)
			return fmt.Sprintf("%s => %s packets=%d", ctKeyString(ck), ctGot(cv), cv.Packets)
		}
		return fmt.Sprintf("%x => %x", k, v)
	}
	var s strings.Builder
	for k, v := range b {
		if w, ok := a[k]; !ok {
			fmt.Fprintf(&s, "  new     %s\n", show(k, v))
		} else if w != v {
			fmt.Fprintf(&s, "  changed %s (was %s)\n", show(k, v), show(k, w))
		}
	}
	for k, v := range a {
		if _, ok := b[k]; !ok {
			fmt.Fprintf(&s, "  deleted %s\n", show(k, v))
		}
	}
	return s.String()
}

// runnable tells whether BPF_PROG_RUN takes a frame: an Ethernet header,
// a page at most, and an IPv4 or IPv6 frame at least as long as the fixed
// IP header (bpf_prog_test_run_skb refuses a shorter one with EINVAL).
func runnable(frame []byte) bool {
	if len(frame) < 14 || len(frame) > fuzzMaxFrame {
		return false
	}
	switch layers.EthernetType(binary.BigEndian.Uint16(frame[12:])) {
	case layers.EthernetTypeIPv4:
		return len(frame) >= 14+20
	case layers.EthernetTypeIPv6:
		return len(frame) >= 14+40
	}
	return true
}

// runTC runs one input through a program and returns what it did, the
// state put back for the next input.
func (e *fuzzEnv) runTC(t testing.TB, prog func(*bpfObjects) *ebpf.Program, devs []string, frame []byte, dev uint8, slow, rawSums bool) (tcResult, bool) {
	t.Helper()
	if !runnable(frame) {
		return tcResult{}, false
	}
	in := bytes.Clone(frame)
	if !rawSums {
		fixSums(in)
	}
	dp := e.dps[0]
	if slow {
		dp = e.dps[1]
	}
	r := tcResult{in: in, dev: devs[int(dev)%len(devs)], fastPath: !slow, parsed: parseFuzzFrame(in), before: dp.base, maps: fuzzStateMaps(&dp.objs)}
	p := prog(&dp.objs)
	r.prog = p.String()
	// The counters change only in this process's runs: what the last run
	// left is where this one starts.
	drops, events := dp.drops, dp.events
	var err error
	r.verdict, r.out, err = e.runOn(p, r.dev, in)
	if err != nil {
		t.Fatal(err)
	}
	dropsAfter, err := sumArray(dp.objs.Drops, dropMax)
	if err != nil {
		t.Fatal(err)
	}
	eventsAfter, err := sumArray(dp.objs.Events, eventMax)
	if err != nil {
		t.Fatal(err)
	}
	reason := -1
	for i := range drops {
		if n := dropsAfter[i] - drops[i]; n != 0 {
			r.drops += n
			reason = i
		}
	}
	var evs uint32
	for i := range events {
		if eventsAfter[i] != events[i] {
			evs |= 1 << i
		}
	}
	dp.drops, dp.events = dropsAfter, eventsAfter
	if r.after, err = dp.state(); err != nil {
		t.Fatal(err)
	}
	fuzzFeedback(r.verdict, reason, evs, r.parsed.class, len(r.after[0])-len(r.before[0]))
	if err := dp.restore(r.after); err != nil {
		t.Fatalf("restoring the state maps: %v", err)
	}
	return r, true
}

// fuzzSeeds are frames of every kind the packet tests send, built here so
// that the targets have seeds without testdata/fuzz: to and from the
// published ports, answers of the base flows, hairpin, masquerade, ICMP
// errors quoting base flows, fragments, and broken headers.
func fuzzSeeds() [][]byte {
	ctr := func(p testPacket, mac, gw []byte) []byte { return p.fromCtr(mac, gw).frame() }
	out := func(p testPacket) []byte { return p.fromCtr(upMAC, routerMAC).frame() }
	synack := func(p testPacket) testPacket { p.ack = true; return p }
	quote := func(p testPacket) []byte { return p.datagram()[:28] }
	seeds := [][]byte{
		tcpPacket(clientIP, 50000, hostIP, 8080).frame(),
		tcpPacket(clientIP, 50010, hostIP2, 8081).frame(),
		udpPacket(clientIP, 50001, hostIP, 5353).frame(),
		udpPacket(clientIP, 50011, hostIP, 9100).frame(),
		synack(tcpPacket(remoteIP, 443, hostIP, 40000)).frame(),
		udpPacket(remoteIP, 53, hostIP, 5000).frame(),
		echoReply(remoteIP, hostIP, 77).frame(),
		tcpPacket(clientIP, 50003, ctrA, 80).frame(),
		echoPacket(clientIP, hostIP, 9).frame(),
		icmpError(routerIP, hostIP, 3, 4, 1400, quote(tcpPacket(hostIP, 40000, remoteIP, 443))).frame(),
		icmpError(remoteIP, hostIP, 3, 3, 0, quote(udpPacket(hostIP, 5000, remoteIP, 53))).frame(),
		icmpError(routerIP, hostIP, 11, 0, 0, quote(echoPacket(hostIP, remoteIP, 77))).frame(),
		out(tcpPacket(ctrA, 40000, remoteIP, 443)),
		out(tcpPacket(ctrA, 40100, remoteIP, 443)),
		out(udpPacket(ctrB, 5001, remoteIP, 53)),
		out(echoPacket(ctrB, remoteIP, 78)),
		out(synack(tcpPacket(ctrA, 80, clientIP, 50000))),
		out(udpPacket(ctrB, 53, clientIP, 50001)),
		out(tcpPacket(ctrC, 42001, remoteIP, 80)),
		ctr(tcpPacket(ctrA, 40200, remoteIP, 443), macA, gwMAC),
		ctr(tcpPacket(ctrB, 41002, hostIP, 8080), macB, gwMAC),
		ctr(tcpPacket(ctrA, 41003, hostIP, 8080), macA, gwMAC),
		ctr(synack(tcpPacket(ctrA, 80, ctrB, 41000)), macA, gwMAC),
		ctr(udpPacket(ctrA, 6000, ctrC, 53), macA, gwMAC),
		ctr(tcpPacket(ctrA, 6001, ctrB, 80), macA, macB),
		ctr(tcpPacket(ctrD, 6002, ctrA, 80), macD, gw3MAC),
		ctr(tcpPacket(ctrD, 6003, hostIP, 8082), macD, gw3MAC),
		ctr(udpPacket(ctrA, 68, netip.MustParseAddr("255.255.255.255"), 67), macA, gwMAC),
		ctr(icmpError(ctrA, clientIP, 3, 3, 0, quote(udpPacket(clientIP, 50001, ctrA, 53))), macA, gwMAC),
		ctr(udpPacket(ctrB, 53, clientIP, 50001), macB, gwMAC),
		tcpPacket(gwIP, 41000, ctrB, 80).fromCtr(gwMAC, macB).frame(),
		udpPacket(remoteIP, 53, ctrB, 5000).fromCtr(gwMAC, macB).frame(),
	}
	seeds = append(seeds, fuzzFragmented()...)
	// Broken on purpose: the fuzzer starts next to each malformed kind.
	short := tcpPacket(clientIP, 50030, hostIP, 8080).frame()
	seeds = append(seeds, short[:14+20+10])
	doff := tcpPacket(clientIP, 50031, hostIP, 8080).frame()
	doff[14+20+12] = 0xf0
	seeds = append(seeds, doff)
	ulen := udpPacket(clientIP, 50032, hostIP, 5353).frame()
	binary.BigEndian.PutUint16(ulen[14+20+4:], 4000)
	seeds = append(seeds, ulen)
	// An ICMP error whose quote ends early: the rest of the frame is
	// Ethernet padding, past the datagram.
	seeds = append(seeds, cutQuote(tcpPacket(hostIP, fuzzNATPort, remoteIP, 443)))
	arp := ethFrame(routerMAC, upMAC, layers.EthernetTypeARP, make([]byte, 28))
	seeds = append(seeds, arp)
	return append(seeds, fuzzSeeds6()...)
}

// fuzzSeeds6 are the IPv6 frames of the packet tests (packet_ipv6_test.go):
// Neighbour Discovery, extension-header chains at and past the bound, and
// broken headers.
func fuzzSeeds6() [][]byte {
	withExt := func(p packet6, ext ...v6Ext) []byte { p.ext = ext; return p.frame() }
	seeds := [][]byte{
		tcp6(client6, 50000, host6, 8080).frame(),
		udp6(client6, 50001, host6, 5353).frame(),
		echo6(client6, host6, 9, false).frame(),
		nd6(ctrA6, netip.MustParseAddr("ff02::1:ff00:1"), 135).fromCtr(macA, gwMAC).frame(),
		nd6(ctrA6, gw6, 136).fromCtr(macA, gwMAC).frame(),
		withExt(tcp6(client6, 50002, host6, 8080), extOpts(0), extOpts(60), extRouting(), extFrag(0, true, 5), extAuth(), extOpts(60)),
		withExt(udp6(client6, 50003, host6, 5353), extFrag(2, false, 5)),
		withExt(tcp6(client6, 50004, host6, 8080), extOpts(60), extOpts(0)),
		tcp6(ctrA6, 40000, host6, 8080).fromCtr(macA, gwMAC).frame(),
		udp6(ctrA6, 40001, remote6, 53).fromCtr(upMAC, routerMAC).frame(),
		echo6(ctrA6, remote6, 78, false).fromCtr(upMAC, routerMAC).frame(),
		echo6(remote6, host6, 78, true).frame(),
		tcp6(client6, 50006, ctrA6, 80).frame(),
		icmp6Error(remote6, host6, 2, 0, 1280, tcp6(host6, 40000, remote6, 443).datagram()).frame(),
		icmp6Error(remote6, host6, 3, 0, 0, echo6(host6, remote6, 78, false).datagram()[:48]).frame(),
		icmp6Error(ctrA6, client6, 1, 4, 0, udp6(client6, 50001, ctrA6, 53).datagram()).fromCtr(macA, gwMAC).frame(),
	}
	cut := tcp6(client6, 50005, host6, 8080).frame()
	return append(append(seeds, cut[:14+40+8]), fuzzSeedsNAT64()...)
}

// cutQuote is an ICMP error from remoteIP quoting the IP header of q, with
// q's first 8 L4 bytes after the datagram's end, where a receiver finds
// Ethernet padding.
func cutQuote(q testPacket) []byte {
	dg := q.datagram()
	f := icmpError(remoteIP, q.src, 3, 3, 0, dg[:20]).frame()
	return append(f, dg[20:28]...)
}

func addSeeds(f *testing.F, devs int) {
	for _, s := range fuzzSeeds() {
		for d := 0; d < devs; d++ {
			f.Add(s, uint8(d), false, false)
		}
		f.Add(s, uint8(0), true, false)
	}
}

func fuzzTC(f *testing.F, prog func(*bpfObjects) *ebpf.Program, devs []string) {
	addSeeds(f, len(devs))
	e := newFuzzEnv(f)
	f.Fuzz(func(t *testing.T, frame []byte, dev uint8, slow, rawSums bool) {
		r, ok := e.runTC(t, prog, devs, frame, dev, slow, rawSums)
		if ok {
			checkTC(t, r)
		}
	})
}

func FuzzFromNetdev(f *testing.F)    { fuzzTC(f, progFromNetdev, fuzzNetdevs) }
func FuzzToNetdev(f *testing.F)      { fuzzTC(f, progToNetdev, fuzzNetdevs) }
func FuzzFromContainer(f *testing.F) { fuzzTC(f, progFromContainer, fuzzContainerIf) }
func FuzzToContainer(f *testing.F)   { fuzzTC(f, progToContainer, fuzzContainerIf) }

// Recording the packet tests' frames as seeds.

var (
	recordMu   sync.Mutex
	recordSeen = map[string]int{}
)

// recordPerTest bounds the frames recorded per test and program: loops
// that open thousands of flows add nothing a fuzzer needs.
const recordPerTest = 6

// recordFrame writes a frame that a packet test runs into the corpus of
// the fuzz target of that program, when BPFNET_FUZZ_RECORD is set:
//
//	BPFNET_FUZZ_RECORD=1 go test -count=1 -run 'TestPacket' ./datapath
func recordFrame(e *packetEnv, prog *ebpf.Program, dev string, frame []byte) {
	if os.Getenv("BPFNET_FUZZ_RECORD") == "" || !runnable(frame) {
		return
	}
	var target string
	var devs []string
	switch prog {
	case e.objs.FromNetdev:
		target, devs = "FuzzFromNetdev", fuzzNetdevs
	case e.objs.ToNetdev:
		target, devs = "FuzzToNetdev", fuzzNetdevs
	case e.objs.FromContainer:
		target, devs = "FuzzFromContainer", fuzzContainerIf
	case e.objs.ToContainer:
		target, devs = "FuzzToContainer", fuzzContainerIf
	default:
		return
	}
	d := 0
	for i, n := range devs {
		if n == dev {
			d = i
		}
	}
	body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbyte(%q)\nbool(%v)\nbool(true)\n", frame, rune(d), !e.opts.FastPath)
	sum := sha256.Sum256([]byte(body))
	dir := filepath.Join("testdata", "fuzz", target)
	recordMu.Lock()
	defer recordMu.Unlock()
	if recordSeen[e.t.Name()+" "+target]++; recordSeen[e.t.Name()+" "+target] > recordPerTest {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		panic(err)
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("packet-%x", sum[:8])), []byte(body), 0o644); err != nil {
		panic(err)
	}
}

// TestPacketFuzzMalformedL4 holds what the fuzz targets found: a TCP
// segment whose data offset points past its end, and a UDP datagram whose
// length field is shorter than its header or longer than the datagram,
// were taken for flows (the kernel's receive path drops them) and opened
// conntrack entries. Each hook now drops them as malformed; the same
// frame with a sound header is translated.
func TestPacketFuzzMalformedL4(t *testing.T) {
	type hook struct {
		name string
		prog func(e *packetEnv) *ebpf.Program
		dev  string
		flow func(proto layers.IPProtocol) testPacket
		key  func(proto layers.IPProtocol) bpfCtKey // the entry the sound frame opens
	}
	hooks := []hook{
		{"from_netdev", func(e *packetEnv) *ebpf.Program { return e.objs.FromNetdev }, "up0",
			func(p layers.IPProtocol) testPacket { return flowPacket(p, clientIP, 40001, hostIP, 8080) },
			func(p layers.IPProtocol) bpfCtKey { return ctKey(uint8(p), clientIP, 40001, hostIP, 8080) }},
		{"to_netdev", func(e *packetEnv) *ebpf.Program { return e.objs.ToNetdev }, "up0",
			func(p layers.IPProtocol) testPacket { return flowPacket(p, ctrA, 40001, remoteIP, 8080) },
			func(p layers.IPProtocol) bpfCtKey { return ctKey(uint8(p), ctrA, 40001, remoteIP, 8080) }},
		{"from_container", func(e *packetEnv) *ebpf.Program { return e.objs.FromContainer }, "vetha",
			func(p layers.IPProtocol) testPacket {
				return flowPacket(p, ctrA, 40001, hostIP, 8080).fromCtr(macA, gwMAC)
			},
			func(p layers.IPProtocol) bpfCtKey { return ctKey(uint8(p), ctrA, 40001, hostIP, 8080) }},
	}
	cases := []struct {
		name  string
		proto layers.IPProtocol
		bend  func(b []byte) // makes the L4 header malformed
	}{
		{"tcp data offset past the segment", pTCP, func(b []byte) { b[14+20+12] = 0xf0 }},
		{"tcp data offset one word too long", pTCP, func(b []byte) {
			// 20 bytes of header and 26 of payload: 12 words claimed.
			b[14+20+12] = 0xc0
		}},
		{"udp length past the datagram", pUDP, func(b []byte) { binary.BigEndian.PutUint16(b[14+20+4:], uint16(len(b)-14-20+1)) }},
		{"udp length below the header", pUDP, func(b []byte) { binary.BigEndian.PutUint16(b[14+20+4:], 7) }},
	}
	for _, h := range hooks {
		for _, c := range cases {
			t.Run(h.name+"/"+c.name, func(t *testing.T) {
				e := newPacketEnv(t, Options{FastPath: true})
				e.publish(uint8(c.proto), netip.Addr{}, 8080, ctrA, 80, 1)
				bad := h.flow(c.proto).frame()
				c.bend(bad)
				fixSums(bad)
				if p := parseFuzzFrame(bad); p.class != frameBadL4 {
					t.Fatalf("the frame is %s to the independent parser, want malformed L4", p.class)
				}
				v, out := e.run(h.prog(e), h.dev, bad)
				expectVerdict(t, v, TC_ACT_SHOT)
				expectUnchanged(t, bad, out)
				e.expectDrops(map[DropReason]uint64{DropMalformed: 1})
				if ct := e.ct(); len(ct) != 0 {
					t.Fatalf("conntrack entries for a malformed frame:\n%s", e.ctDump())
				}

				// The twin: the same flow with a sound header.
				good := h.flow(c.proto).frame()
				v, out = e.run(h.prog(e), h.dev, good)
				if v == TC_ACT_SHOT {
					t.Fatalf("the sound frame was dropped")
				}
				checkFrame(t, out)
				e.expectDrops(map[DropReason]uint64{DropMalformed: 1})
				if _, ok := e.ctLookup(h.key(c.proto)); !ok {
					t.Fatalf("the sound frame opened no flow; table:\n%s", e.ctDump())
				}
			})
		}
	}
}

// TestPacketFuzzICMPErrorShortQuote holds what FuzzFromNetdev found: an
// ICMP error whose datagram ends inside the quote (the quoted ports lie in
// the frame's padding) had the padding rewritten and summed into its ICMP
// checksum, which then was wrong for the datagram it belongs to. Such an
// error is now left alone; the same error with its whole quote inside the
// datagram is translated.
func TestPacketFuzzICMPErrorShortQuote(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true, NATPortMin: fuzzNATPort, NATPortMax: fuzzNATPort})
	out := func(p testPacket) []byte { return p.fromCtr(upMAC, routerMAC).frame() }
	expectVerdict(t, e.runOK(e.objs.ToNetdev, out(tcpPacket(ctrA, 40000, remoteIP, 443))), TC_ACT_OK)
	expectVerdict(t, e.runOK(e.objs.ToNetdev, out(tcpPacket(ctrB, 40000, remoteIP, 443))), TC_ACT_OK)
	// B's flow left with the one free port.
	e.expectCT(ctKey(uint8(pTCP), remoteIP, 443, hostIP, fuzzNATPort), ctWant{
		nsaddr: remoteIP, nsport: 443, ndaddr: ctrB, ndport: 40000,
		flags: atFromNetdev | flagReply, peer: atToNetdev, kind: KindSNAT, ifindex: e.idx["vethb"],
	})
	quoted := tcpPacket(hostIP, fuzzNATPort, remoteIP, 443)

	short := cutQuote(quoted)
	v, got := e.fromNetdev(short)
	expectVerdict(t, v, TC_ACT_OK)
	expectUnchanged(t, short, got)

	whole := icmpError(remoteIP, hostIP, 3, 3, 0, quoted.datagram()[:28]).frame()
	v, got = e.fromNetdev(whole)
	expectVerdict(t, v, TC_ACT_REDIRECT)
	checkFrame(t, got)
	d := decode(t, got)
	if d.dst() != ctrB {
		t.Errorf("the whole error went to %s, want %s", d.dst(), ctrB)
	}
	q := parseQuote(t, d)
	if q.src != ctrB || q.sport != 40000 || q.dst != remoteIP || q.dport != 443 {
		t.Errorf("quote %s:%d -> %s:%d, want %s:40000 -> %s:443", q.src, q.sport, q.dst, q.dport, ctrB, remoteIP)
	}
	e.expectDrops(nil)
}

func (e *packetEnv) runOK(prog *ebpf.Program, frame []byte) uint32 {
	e.t.Helper()
	v, _ := e.run(prog, "up0", frame)
	return v
}
