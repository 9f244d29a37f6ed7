// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/lab"
)

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot

const (
	testPort = 4242
	ipA      = "10.199.0.1"
	ipB      = "10.199.0.2"
	vethA    = "lda0"
	vethB    = "ldb0"
	tcActOK  = 0
	tcActNxt = -1 // TC_ACT_UNSPEC / TCX_NEXT
)

// counters is an ARRAY map: slot 0 counts the matching packets, slot 1 adds
// the weight of the program version that saw them.
func newCounters(t *testing.T) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func readCounters(t *testing.T, m *ebpf.Map) (packets, weight uint64) {
	t.Helper()
	if err := m.Lookup(uint32(0), &packets); err != nil {
		t.Fatal(err)
	}
	if err := m.Lookup(uint32(1), &weight); err != nil {
		t.Fatal(err)
	}
	return packets, weight
}

// newCounterProg builds a SchedCLS program that, for IPv4 UDP packets to
// testPort, adds 1 to slot 0 and weight to slot 1 of m, and returns verdict.
func newCounterProg(t *testing.T, m *ebpf.Map, weight int32, verdict int32) *ebpf.Program {
	t.Helper()
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], testPort)
	portNet := int32(binary.NativeEndian.Uint16(be[:]))
	binary.BigEndian.PutUint16(be[:], unix.ETH_P_IP)
	ipNet := int32(binary.NativeEndian.Uint16(be[:]))

	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 76, asm.Word), // skb->data
		asm.LoadMem(asm.R3, asm.R1, 80, asm.Word), // skb->data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14+20+4),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half), // ethertype
		asm.JNE.Imm(asm.R5, ipNet, "out"),
		asm.LoadMem(asm.R5, asm.R2, 14+9, asm.Byte), // IP protocol
		asm.JNE.Imm(asm.R5, unix.IPPROTO_UDP, "out"),
		asm.LoadMem(asm.R5, asm.R2, 14+20+2, asm.Half), // UDP dport (IHL 5)
		asm.JNE.Imm(asm.R5, portNet, "out"),
	}
	for slot, add := range []int32{1, weight} {
		insns = append(insns,
			asm.StoreImm(asm.RFP, -4, int64(slot), asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, add),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		)
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, verdict).WithSymbol("out"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "bpfnet_test",
		Type:         ebpf.SchedCLS,
		Instructions: insns,
		License:      "GPL",
	})
	if err != nil {
		t.Fatalf("loading test program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("no program ID")
	}
	return id
}

// testNet is two throwaway namespaces joined by a veth pair:
// nsA/lda0 (10.199.0.1) <-> nsB/ldb0 (10.199.0.2). The test goroutine is
// locked to its thread and left in nsA; base is a temporary bpffs directory.
type testNet struct {
	t          *testing.T
	orig       netns.NsHandle
	nsA, nsB   netns.NsHandle
	hA, hB     *netlink.Handle
	idxA, idxB int
	base       string
	conn       *net.UDPConn // in nsA, sends to ipB:testPort
}

func setup(t *testing.T) *testNet {
	t.Helper()
	requireRoot(t)

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	n := &testNet{t: t, orig: orig, nsA: netns.None(), nsB: netns.None()}
	// Cleanups run on this goroutine, last registered first.
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with the goroutine.
			t.Errorf("restoring the network namespace: %v", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	})

	n.nsB, err = netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.nsB.Close() })
	n.nsA, err = netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.nsA.Close() })

	if n.hA, err = netlink.NewHandleAt(n.nsA); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.hA.Close)
	if n.hB, err = netlink.NewHandleAt(n.nsB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.hB.Close)

	n.makeVeth()

	n.base, err = os.MkdirTemp("/sys/fs/bpf", "bpfnet-loader-test-")
	if err != nil {
		t.Fatalf("temporary bpffs directory (is bpffs mounted at /sys/fs/bpf?): %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(n.base) })

	// A receiver in nsB avoids ICMP port unreachable noise.
	n.inB(func() {
		rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ipB), Port: testPort})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rx.Close() })
	})
	n.conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ipA)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.conn.Close() })
	return n
}

// makeVeth (re)creates the veth pair with addresses and a static neighbour
// entry (no ARP in the way of the first packets).
func (n *testNet) makeVeth() {
	t := n.t
	t.Helper()
	if err := n.hA.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethA}, PeerName: vethB}); err != nil {
		t.Fatal(err)
	}
	b, err := n.hA.LinkByName(vethB)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.hA.LinkSetNsFd(b, int(n.nsB)); err != nil {
		t.Fatal(err)
	}
	a, err := n.hA.LinkByName(vethA)
	if err != nil {
		t.Fatal(err)
	}
	if b, err = n.hB.LinkByName(vethB); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		h  *netlink.Handle
		l  netlink.Link
		ip string
	}{{n.hA, a, ipA}, {n.hB, b, ipB}} {
		addr, _ := netlink.ParseAddr(x.ip + "/24")
		if err := x.h.AddrAdd(x.l, addr); err != nil {
			t.Fatal(err)
		}
		if err := x.h.LinkSetUp(x.l); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.hA.NeighSet(&netlink.Neigh{
		LinkIndex: a.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP(ipB), HardwareAddr: b.Attrs().HardwareAddr,
	}); err != nil {
		t.Fatal(err)
	}
	n.idxA, n.idxB = a.Attrs().Index, b.Attrs().Index
}

// inB runs f with the thread switched to nsB.
func (n *testNet) inB(f func()) {
	n.t.Helper()
	if err := netns.Set(n.nsB); err != nil {
		n.t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(n.nsA); err != nil {
			panic(err) // the thread would be in the wrong namespace
		}
	}()
	f()
}

// send sends count UDP packets from nsA to ipB:testPort.
func (n *testNet) send(count int) {
	n.t.Helper()
	dst := &net.UDPAddr{IP: net.ParseIP(ipB), Port: testPort}
	for range count {
		if _, err := n.conn.WriteToUDP([]byte("bpfnet"), dst); err != nil {
			n.t.Fatal(err)
		}
	}
}

// sendContinuously sends packets from another goroutine (the socket belongs
// to nsA whatever thread uses it) until the returned stop is called; stop
// returns the number of packets sent.
func (n *testNet) sendContinuously() (stop func() int64) {
	var (
		sent atomic.Int64
		quit = make(chan struct{})
		wg   sync.WaitGroup
		err  error
	)
	dst := &net.UDPAddr{IP: net.ParseIP(ipB), Port: testPort}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-quit:
				return
			default:
			}
			if _, err = n.conn.WriteToUDP([]byte("bpfnet"), dst); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	return func() int64 {
		close(quit)
		wg.Wait()
		if err != nil {
			n.t.Fatalf("sending: %v", err)
		}
		return sent.Load()
	}
}

func (n *testNet) ourFilters(ifindex int, dir Direction) (ours []*netlink.BpfFilter, all []netlink.Filter) {
	n.t.Helper()
	all, err := netlink.FilterList(linkRef(ifindex), tcParent(dir))
	if err != nil {
		n.t.Fatal(err)
	}
	for _, f := range all {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "bpfnet-") {
			ours = append(ours, bf)
		}
	}
	return ours, all
}

func (n *testNet) hasClsact(ifindex int) bool {
	n.t.Helper()
	clsact, _, err := tcQdisc(ifindex)
	if err != nil {
		n.t.Fatal(err)
	}
	return clsact
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func mustList(t *testing.T, base string) []Attachment {
	t.Helper()
	atts, err := List(base)
	if err != nil {
		t.Fatal(err)
	}
	return atts
}

func TestStringsAndPaths(t *testing.T) {
	if Ingress.String() != "ingress" || Egress.String() != "egress" {
		t.Fatal(Ingress, Egress)
	}
	if ModeAuto.String() != "auto" || ModeTCX.String() != "tcx" || ModeLegacy.String() != "legacy" {
		t.Fatal(ModeAuto, ModeTCX, ModeLegacy)
	}
	if got := GlobalsDir("/b"); got != "/b/globals" {
		t.Fatal(got)
	}
	if got := DeviceDir("/b", "eth0"); got != "/b/devices/eth0" {
		t.Fatal(got)
	}
	if got := LinkPin("/b", "eth0", Egress, "nat"); got != "/b/devices/eth0/links/egress_nat" {
		t.Fatal(got)
	}
	dir, prog, err := parseEntryName("ingress_snat_v4")
	if err != nil || dir != Ingress || prog != "snat_v4" {
		t.Fatal(dir, prog, err)
	}
}

func TestAttachTCX(t *testing.T) {
	n := setup(t)
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)

	att, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	if att.Mode != ModeTCX || att.ProgramID != progID(t, prog) || att.Ifindex != n.idxA || att.LinkID == 0 {
		t.Fatalf("unexpected attachment %+v", att)
	}
	if !exists(LinkPin(n.base, vethA, Egress, "nat")) {
		t.Fatal("no link pin")
	}
	if n.hasClsact(n.idxA) {
		t.Fatal("tcx attach created a clsact qdisc")
	}

	n.send(10)
	if p, w := readCounters(t, m); p != 10 || w != 10 {
		t.Fatalf("counters = %d/%d, want 10/10", p, w)
	}

	// Ingress on the other end, attached from inside nsB.
	mIn := newCounters(t)
	progIn := newCounterProg(t, mIn, 1, tcActOK)
	n.inB(func() {
		if _, err := Attach(n.base, progIn, "rev", vethB, n.idxB, Ingress, ModeTCX); err != nil {
			t.Fatal(err)
		}
	})
	n.send(5)
	if p, _ := readCounters(t, mIn); p != 5 {
		t.Fatalf("ingress counter = %d, want 5", p)
	}

	atts := mustList(t, n.base)
	if len(atts) != 2 {
		t.Fatalf("List = %v", atts)
	}
	// Sorted: lda0 before ldb0.
	if a := atts[0]; a.Interface != vethA || a.Direction != Egress || a.Program != "nat" || a.Mode != ModeTCX || a.ProgramID != att.ProgramID || a.LinkID != att.LinkID || a.Ifindex != n.idxA {
		t.Fatalf("List[0] = %+v", a)
	}
	if a := atts[1]; a.Interface != vethB || a.Direction != Ingress || a.Mode != ModeTCX || a.ProgramID != progID(t, progIn) {
		t.Fatalf("List[1] = %+v", a)
	}

	// The kernel agrees.
	res, err := link.QueryPrograms(link.QueryOptions{Target: n.idxA, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Programs) != 1 || res.Programs[0].ID != att.ProgramID {
		t.Fatalf("tcx egress programs on %s: %+v", vethA, res.Programs)
	}

	if err := Detach(n.base, vethA, Egress, "nat"); err != nil {
		t.Fatal(err)
	}
	if exists(LinkPin(n.base, vethA, Egress, "nat")) || exists(DeviceDir(n.base, vethA)) {
		t.Fatal("pin or device dir left after Detach")
	}
	n.send(10)
	if p, _ := readCounters(t, m); p != 15 {
		t.Fatalf("program still runs after Detach: %d, want 15", p)
	}
	// Detaching again, or something never attached, is fine.
	if err := Detach(n.base, vethA, Egress, "nat"); err != nil {
		t.Fatal(err)
	}
	if err := Detach(n.base, "nosuch0", Ingress, "nat"); err != nil {
		t.Fatal(err)
	}
}

func TestAttachLegacy(t *testing.T) {
	n := setup(t)

	// A foreign tool's clsact and filter: prio 1, runs first, lets packets
	// continue (TC_ACT_UNSPEC) and counts them too.
	if err := netlink.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: n.idxA, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
	}}); err != nil {
		t.Fatal(err)
	}
	mForeign := newCounters(t)
	foreign := newCounterProg(t, mForeign, 1, tcActNxt)
	if err := netlink.FilterAdd(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: n.idxA, Parent: netlink.HANDLE_MIN_EGRESS, Priority: 1, Handle: 1, Protocol: unix.ETH_P_ALL},
		Fd:          foreign.FD(), Name: "foreign", DirectAction: true,
	}); err != nil {
		t.Fatal(err)
	}

	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)
	att, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeLegacy)
	if err != nil {
		t.Fatal(err)
	}
	if att.Mode != ModeLegacy || att.ProgramID != progID(t, prog) || att.Priority != LegacyPriorityBase || att.Handle != LegacyHandle {
		t.Fatalf("unexpected attachment %+v", att)
	}
	if exists(LinkPin(n.base, vethA, Egress, "nat")) {
		t.Fatal("legacy attach left a link pin")
	}
	if !exists(LegacyRecordPath(n.base, vethA, Egress, "nat")) {
		t.Fatal("no legacy record")
	}
	ours, all := n.ourFilters(n.idxA, Egress)
	if len(ours) != 1 || ours[0].Name != "bpfnet-nat" || !ours[0].DirectAction || ebpf.ProgramID(ours[0].Id) != att.ProgramID {
		t.Fatalf("filters: %+v", all)
	}

	n.send(10)
	if p, _ := readCounters(t, m); p != 10 {
		t.Fatalf("counter = %d, want 10", p)
	}
	if p, _ := readCounters(t, mForeign); p != 10 {
		t.Fatalf("foreign counter = %d, want 10", p)
	}

	atts := mustList(t, n.base)
	if len(atts) != 1 || atts[0].Mode != ModeLegacy || atts[0].ProgramID != att.ProgramID || atts[0].Ifindex != n.idxA || atts[0].Priority != att.Priority {
		t.Fatalf("List = %+v", atts)
	}

	// Ingress of the other end: no clsact there yet, Attach creates it.
	mIn := newCounters(t)
	progIn := newCounterProg(t, mIn, 1, tcActOK)
	n.inB(func() {
		if n.hasClsact(n.idxB) {
			t.Fatal("clsact already on " + vethB)
		}
		if _, err := Attach(n.base, progIn, "rev", vethB, n.idxB, Ingress, ModeLegacy); err != nil {
			t.Fatal(err)
		}
		if !n.hasClsact(n.idxB) {
			t.Fatal("no clsact created")
		}
	})
	n.send(3)
	if p, _ := readCounters(t, mIn); p != 3 {
		t.Fatalf("ingress counter = %d, want 3", p)
	}
	n.inB(func() {
		if err := Detach(n.base, vethB, Ingress, "rev"); err != nil {
			t.Fatal(err)
		}
		if !n.hasClsact(n.idxB) {
			t.Fatal("Detach deleted the clsact qdisc")
		}
	})

	// Detach removes our filter only.
	if err := Detach(n.base, vethA, Egress, "nat"); err != nil {
		t.Fatal(err)
	}
	ours, all = n.ourFilters(n.idxA, Egress)
	if len(ours) != 0 {
		t.Fatalf("our filter survived Detach: %+v", ours)
	}
	foundForeign := false
	for _, f := range all {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == "foreign" && bf.Priority == 1 {
			foundForeign = true
		}
	}
	if !foundForeign {
		t.Fatalf("foreign filter deleted: %+v", all)
	}
	if !n.hasClsact(n.idxA) {
		t.Fatal("clsact qdisc deleted")
	}
	if exists(DeviceDir(n.base, vethA)) {
		t.Fatal("record left after Detach")
	}
	// 10 + 3 packets so far went through the egress of lda0.
	n.send(5)
	if p, _ := readCounters(t, m); p != 13 {
		t.Fatalf("our program still runs: %d, want 13", p)
	}
	if p, _ := readCounters(t, mForeign); p != 18 {
		t.Fatalf("foreign program stopped: %d, want 18", p)
	}
}

func TestUpgradeDowngrade(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			n := setup(t)
			m := newCounters(t)
			v1 := newCounterProg(t, m, 1, tcActOK)
			v2 := newCounterProg(t, m, 2, tcActOK)

			att1, err := Attach(n.base, v1, "nat", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			n.send(10)
			if p, w := readCounters(t, m); p != 10 || w != 10 {
				t.Fatalf("v1: %d/%d", p, w)
			}

			att2, err := Attach(n.base, v2, "nat", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			if att2.Mode != mode || att2.ProgramID == att1.ProgramID || att2.ProgramID != progID(t, v2) {
				t.Fatalf("after upgrade: %+v (before %+v)", att2, att1)
			}
			// Same link / same filter slot: updated in place.
			if att2.LinkID != att1.LinkID || att2.Priority != att1.Priority || att2.Handle != att1.Handle {
				t.Fatalf("not updated in place: %+v vs %+v", att2, att1)
			}
			n.send(10)
			if p, w := readCounters(t, m); p != 20 || w != 30 {
				t.Fatalf("v2: %d/%d, want 20/30", p, w)
			}

			att3, err := Attach(n.base, v1, "nat", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			if att3.ProgramID != att1.ProgramID || att3.LinkID != att1.LinkID || att3.Priority != att1.Priority {
				t.Fatalf("after downgrade: %+v", att3)
			}
			n.send(10)
			if p, w := readCounters(t, m); p != 30 || w != 40 {
				t.Fatalf("back to v1: %d/%d, want 30/40", p, w)
			}
			if mode == ModeLegacy {
				if ours, all := n.ourFilters(n.idxA, Egress); len(ours) != 1 {
					t.Fatalf("want exactly one bpfnet filter: %+v", all)
				}
			} else {
				res, err := link.QueryPrograms(link.QueryOptions{Target: n.idxA, Attach: ebpf.AttachTCXEgress})
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Programs) != 1 {
					t.Fatalf("want exactly one tcx program: %+v", res.Programs)
				}
			}

			// Swap back and forth under continuous traffic: every packet
			// must meet a program.
			p0, w0 := readCounters(t, m)
			stop := n.sendContinuously()
			swaps := 0
			for i := range 40 {
				time.Sleep(2 * time.Millisecond)
				prog := v2
				if i%2 == 1 {
					prog = v1
				}
				if _, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, mode); err != nil {
					stop()
					t.Fatal(err)
				}
				swaps++
			}
			time.Sleep(2 * time.Millisecond)
			sent := stop()
			p, w := readCounters(t, m)
			seen, byV2 := p-p0, (w-w0)-(p-p0)
			t.Logf("%s: %d swaps, %d packets sent, %d seen (%d by v2)", mode, swaps, sent, seen, byV2)
			if int64(seen) != sent {
				t.Fatalf("%d packets sent but %d seen by a program: window without a program", sent, seen)
			}
			if byV2 == 0 || byV2 == seen {
				t.Fatalf("both versions should have run during the swaps (v2 saw %d of %d)", byV2, seen)
			}
		})
	}
}

func TestRestartSurvival(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			n := setup(t)
			m := newCounters(t)
			v1 := newCounterProg(t, m, 1, tcActOK)

			att1, err := Attach(n.base, v1, "nat", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			// "Restart": Attach keeps no link object; drop the program too.
			// Only the pin (tcx) or the qdisc (legacy) holds it now.
			if err := v1.Close(); err != nil {
				t.Fatal(err)
			}
			runtime.GC()

			n.send(7)
			if p, _ := readCounters(t, m); p != 7 {
				t.Fatalf("after dropping Go references: counter = %d, want 7", p)
			}
			atts := mustList(t, n.base)
			if len(atts) != 1 || atts[0].ProgramID != att1.ProgramID || atts[0].Mode != mode {
				t.Fatalf("List after restart = %+v", atts)
			}

			// The new daemon loads its program again and adopts the
			// attachment in place.
			v1b := newCounterProg(t, m, 2, tcActOK)
			att2, err := Attach(n.base, v1b, "nat", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			if att2.Mode != mode || att2.LinkID != att1.LinkID || att2.Priority != att1.Priority || att2.Handle != att1.Handle {
				t.Fatalf("attachment not adopted: %+v vs %+v", att2, att1)
			}
			if mode == ModeTCX && att2.LinkID == 0 {
				t.Fatal("no link ID")
			}
			if ours, all := n.ourFilters(n.idxA, Egress); mode == ModeLegacy && len(ours) != 1 {
				t.Fatalf("want one bpfnet filter: %+v", all)
			}
			if att2.ProgramID != progID(t, v1b) {
				t.Fatalf("program ID %d, want %d", att2.ProgramID, progID(t, v1b))
			}
			n.send(3)
			if p, w := readCounters(t, m); p != 10 || w != 7+6 {
				t.Fatalf("after adoption: %d/%d, want 10/13", p, w)
			}
		})
	}
}

// TestMigration moves an attachment between tcx and legacy under traffic:
// the new mechanism is in place before the old one goes, and tcx programs
// that return a verdict hide the cls_bpf filter, so every packet is counted
// exactly once.
func TestMigration(t *testing.T) {
	n := setup(t)
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)

	if _, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeLegacy); err != nil {
		t.Fatal(err)
	}
	p0, _ := readCounters(t, m)
	stop := n.sendContinuously()
	for _, mode := range []Mode{ModeTCX, ModeLegacy, ModeAuto, ModeLegacy, ModeTCX} {
		time.Sleep(5 * time.Millisecond)
		att, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, mode)
		if err != nil {
			stop()
			t.Fatal(err)
		}
		want := mode
		if mode == ModeAuto {
			want = ModeTCX
		}
		atts, err := List(n.base)
		if err != nil || att.Mode != want || len(atts) != 1 || atts[0].Mode != want || atts[0].ProgramID != att.ProgramID {
			stop()
			t.Fatalf("after attaching with %s: %+v, List = %+v, %v", mode, att, atts, err)
		}
	}
	time.Sleep(5 * time.Millisecond)
	sent := stop()
	p, _ := readCounters(t, m)
	t.Logf("5 migrations: %d packets sent, %d counted", sent, p-p0)
	if int64(p-p0) != sent {
		t.Fatalf("%d packets sent, %d counted: seen twice or not at all", sent, p-p0)
	}
	if ours, _ := n.ourFilters(n.idxA, Egress); len(ours) != 0 {
		t.Fatal("legacy filter left after migrating to tcx")
	}
	if exists(LegacyRecordPath(n.base, vethA, Egress, "nat")) {
		t.Fatal("legacy record left after migrating to tcx")
	}
}

func TestDetachAll(t *testing.T) {
	n := setup(t)
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActNxt)
	mL := newCounters(t)
	progL := newCounterProg(t, mL, 1, tcActOK)

	if _, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeTCX); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(n.base, progL, "acct", vethA, n.idxA, Egress, ModeLegacy); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(n.base, prog, "nat", vethA, n.idxA, Ingress, ModeTCX); err != nil {
		t.Fatal(err)
	}
	if got := len(mustList(t, n.base)); got != 3 {
		t.Fatalf("List has %d entries, want 3", got)
	}
	// tcx returns TCX_NEXT, so the cls_bpf filter runs after it.
	n.send(4)
	if p, _ := readCounters(t, m); p != 4 {
		t.Fatalf("tcx counter %d", p)
	}
	if p, _ := readCounters(t, mL); p != 4 {
		t.Fatalf("legacy counter %d", p)
	}

	if err := DetachAll(n.base); err != nil {
		t.Fatal(err)
	}
	if exists(DevicesDir(n.base)) {
		t.Fatal("devices dir left")
	}
	if got := mustList(t, n.base); len(got) != 0 {
		t.Fatalf("List after DetachAll = %+v", got)
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXEgress, ebpf.AttachTCXIngress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: n.idxA, Attach: at})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Programs) != 0 {
			t.Fatalf("%s: programs still attached: %+v", at, res.Programs)
		}
	}
	if ours, _ := n.ourFilters(n.idxA, Egress); len(ours) != 0 {
		t.Fatal("legacy filter left")
	}
	if !n.hasClsact(n.idxA) {
		t.Fatal("clsact deleted")
	}
	n.send(4)
	if p, _ := readCounters(t, m); p != 4 {
		t.Fatalf("tcx program still runs: %d", p)
	}
	if p, _ := readCounters(t, mL); p != 4 {
		t.Fatalf("legacy program still runs: %d", p)
	}
	if err := DetachAll(n.base); err != nil {
		t.Fatalf("second DetachAll: %v", err)
	}
}

// TestStaleAndForget covers an interface deleted under its attachments.
func TestStaleAndForget(t *testing.T) {
	n := setup(t)
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)

	att1, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeTCX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(n.base, prog, "acct", vethA, n.idxA, Ingress, ModeLegacy); err != nil {
		t.Fatal(err)
	}
	oldIdx := n.idxA
	a, err := n.hA.LinkByName(vethA)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.hA.LinkDel(a); err != nil {
		t.Fatal(err)
	}

	atts := mustList(t, n.base)
	if len(atts) != 2 {
		t.Fatalf("List = %+v", atts)
	}
	for _, a := range atts {
		if a.Ifindex != 0 || a.ProgramID != 0 {
			t.Fatalf("stale attachment reported live: %+v", a)
		}
	}

	// Same name again (a new device): Attach replaces the defunct link.
	n.makeVeth()
	if n.idxA == oldIdx {
		t.Fatalf("ifindex reused (%d)", oldIdx)
	}
	att2, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeTCX)
	if err != nil {
		t.Fatal(err)
	}
	if att2.LinkID == att1.LinkID || att2.Ifindex != n.idxA {
		t.Fatalf("defunct link not replaced: %+v", att2)
	}
	n.send(5)
	if p, _ := readCounters(t, m); p != 5 {
		t.Fatalf("counter %d, want 5", p)
	}

	// Gone again: Forget drops the pins and records.
	a, _ = n.hA.LinkByName(vethA)
	if err := n.hA.LinkDel(a); err != nil {
		t.Fatal(err)
	}
	if err := Forget(n.base, vethA); err != nil {
		t.Fatal(err)
	}
	if exists(DeviceDir(n.base, vethA)) {
		t.Fatal("device dir left after Forget")
	}
	if got := mustList(t, n.base); len(got) != 0 {
		t.Fatalf("List after Forget = %+v", got)
	}
}

func TestBadInput(t *testing.T) {
	n := setup(t)
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)

	for _, mode := range []Mode{ModeAuto, ModeTCX, ModeLegacy} {
		_, err := Attach(n.base, prog, "nat", "nosuch0", 99999, Ingress, mode)
		if err == nil {
			t.Fatalf("%s: attaching to a missing interface succeeded", mode)
		}
		if !errors.Is(err, ErrInterfaceNotFound) || !strings.HasPrefix(err.Error(), "attaching nat to nosuch0 ingress: ") {
			t.Fatalf("%s: unclear error: %v", mode, err)
		}
		t.Logf("%s: %v", mode, err)
		if exists(LinkPin(n.base, "nosuch0", Ingress, "nat")) || exists(DeviceDir(n.base, "nosuch0")) || exists(DevicesDir(n.base)) {
			t.Fatalf("%s: pin or directory left behind", mode)
		}
	}

	// The kernel's own check, should the interface vanish between the
	// name check and the attach.
	if _, err := attachTCX(n.base, prog, "nat", "nosuch0", 99999, Ingress); err == nil || !errors.Is(err, unix.ENODEV) {
		t.Fatalf("attachTCX on a missing ifindex: %v", err)
	}
	if exists(DevicesDir(n.base)) {
		t.Fatal("directory left behind")
	}

	cases := []struct {
		name           string
		prog, ifname   string
		ifindex        int
		dir            Direction
		mode           Mode
		nilProg        bool
		wantSubstrings string
	}{
		{"wrong name", "nat", "other0", n.idxA, Egress, ModeAuto, false, "is named"},
		{"slash", "a/b", vethA, n.idxA, Egress, ModeAuto, false, "invalid program name"},
		{"dotdot", "nat", "..", n.idxA, Egress, ModeAuto, false, "invalid interface name"},
		{"empty", "", vethA, n.idxA, Egress, ModeAuto, false, "empty program name"},
		{"direction", "nat", vethA, n.idxA, Direction(7), ModeAuto, false, "invalid direction"},
		{"mode", "nat", vethA, n.idxA, Egress, Mode(9), false, "invalid mode"},
		{"nil prog", "nat", vethA, n.idxA, Egress, ModeAuto, true, "nil program"},
		{"zero index", "nat", vethA, 0, Egress, ModeAuto, false, "interface not found"},
	}
	for _, c := range cases {
		p := prog
		if c.nilProg {
			p = nil
		}
		_, err := Attach(n.base, p, c.prog, c.ifname, c.ifindex, c.dir, c.mode)
		if err == nil || !strings.Contains(err.Error(), c.wantSubstrings) {
			t.Fatalf("%s: err = %v, want %q", c.name, err, c.wantSubstrings)
		}
	}
	if exists(DevicesDir(n.base)) {
		t.Fatal("directory left behind")
	}
}

func TestSeveralProgramsOneHook(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			n := setup(t)
			m1, m2 := newCounters(t), newCounters(t)
			first := newCounterProg(t, m1, 1, tcActNxt)
			second := newCounterProg(t, m2, 1, tcActOK)
			a1, err := Attach(n.base, first, "first", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			a2, err := Attach(n.base, second, "second", vethA, n.idxA, Egress, mode)
			if err != nil {
				t.Fatal(err)
			}
			if mode == ModeLegacy && (a1.Priority != LegacyPriorityBase || a2.Priority != LegacyPriorityBase+1) {
				t.Fatalf("priorities %d, %d", a1.Priority, a2.Priority)
			}
			n.send(6)
			if p1, _ := readCounters(t, m1); p1 != 6 {
				t.Fatalf("first: %d", p1)
			}
			if p2, _ := readCounters(t, m2); p2 != 6 {
				t.Fatalf("second: %d", p2)
			}
			// Re-attaching the first keeps its place in the order.
			if _, err := Attach(n.base, first, "first", vethA, n.idxA, Egress, mode); err != nil {
				t.Fatal(err)
			}
			if err := Detach(n.base, vethA, Egress, "first"); err != nil {
				t.Fatal(err)
			}
			n.send(2)
			if p1, _ := readCounters(t, m1); p1 != 6 {
				t.Fatalf("first after detach: %d", p1)
			}
			if p2, _ := readCounters(t, m2); p2 != 8 {
				t.Fatalf("second after detaching first: %d", p2)
			}
			atts := mustList(t, n.base)
			if len(atts) != 1 || atts[0].Program != "second" {
				t.Fatalf("List = %+v", atts)
			}
		})
	}
}

func TestBridgePortsAndWatchLinks(t *testing.T) {
	n := setup(t)
	const bridge = "lbr0"
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
	if err := n.hA.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := n.hA.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	addVeth := func(name, peer string) (netlink.Link, netlink.Link) {
		t.Helper()
		if err := n.hA.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
			t.Fatal(err)
		}
		l, err := n.hA.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		p, err := n.hA.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		return l, p
	}
	pre, _ := addVeth("pre0", "pre1")
	if err := n.hA.LinkSetMaster(pre, br); err != nil {
		t.Fatal(err)
	}
	// A port of another bridge and a bridge-less veth are not ours.
	other := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "lbr1"}}
	if err := n.hA.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	oth, _ := addVeth("oth0", "oth1")
	if err := n.hA.LinkSetMaster(oth, other); err != nil {
		t.Fatal(err)
	}

	type event struct {
		add  bool
		name string
		at   time.Time
	}
	events := make(chan event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchErr := make(chan error, 1)
	go func() {
		// Runs on some other thread, in whatever namespace: the handle
		// selects nsA.
		watchErr <- WatchLinks(ctx, n.nsA, []string{bridge},
			func(l netlink.Link) { events <- event{true, l.Attrs().Name, time.Now()} },
			func(l netlink.Link) { events <- event{false, l.Attrs().Name, time.Now()} })
	}()
	expect := func(add bool, name string, since time.Time) time.Duration {
		t.Helper()
		select {
		case e := <-events:
			if e.add != add || e.name != name {
				t.Fatalf("got event %+v, want add=%v %s", e, add, name)
			}
			return e.at.Sub(since)
		case err := <-watchErr:
			t.Fatalf("WatchLinks returned early: %v", err)
		case <-time.After(time.Second):
			t.Fatalf("no event add=%v %s within 1s", add, name)
		}
		return 0
	}
	expect(true, "pre0", time.Now())

	w0, w1 := addVeth("w0", "w1")
	start := time.Now()
	if err := n.hA.LinkSetMaster(w0, br); err != nil {
		t.Fatal(err)
	}
	d := expect(true, "w0", start)
	t.Logf("onAdd called %v after enslaving", d)
	if d > time.Second {
		t.Fatalf("onAdd took %v", d)
	}

	ports, err := BridgePorts(n.hA, bridge)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range ports {
		names = append(names, p.Attrs().Name)
		if p.Attrs().Name == "w0" && p.Attrs().ParentIndex != w1.Attrs().Index {
			t.Fatalf("w0 peer index %d, want %d", p.Attrs().ParentIndex, w1.Attrs().Index)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"pre0", "w0"}) {
		t.Fatalf("BridgePorts = %v", names)
	}
	if _, err := BridgePorts(n.hA, "pre0"); err == nil {
		t.Fatal("BridgePorts on a veth succeeded")
	}
	if _, err := BridgePorts(n.hA, "nosuchbr"); err == nil {
		t.Fatal("BridgePorts on a missing bridge succeeded")
	}

	start = time.Now()
	if err := n.hA.LinkDel(w0); err != nil {
		t.Fatal(err)
	}
	t.Logf("onDel called %v after deleting", expect(false, "w0", start))

	start = time.Now()
	if err := n.hA.LinkSetNoMaster(pre); err != nil {
		t.Fatal(err)
	}
	t.Logf("onDel called %v after releasing", expect(false, "pre0", start))

	// Nothing else: not for w1, oth0, or a second onDel.
	select {
	case e := <-events:
		t.Fatalf("unexpected event %+v", e)
	case <-time.After(200 * time.Millisecond):
	}

	cancel()
	select {
	case err := <-watchErr:
		if err != nil {
			t.Fatalf("WatchLinks: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("WatchLinks did not return after cancel")
	}
}

// TestLegacyRecordFormat checks that records are symlinks (bpffs refuses
// regular files) and that the filter is found again by name if the record
// is lost.
func TestLegacyRecordFormat(t *testing.T) {
	n := setup(t)
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)
	att, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeLegacy)
	if err != nil {
		t.Fatal(err)
	}
	rec := LegacyRecordPath(n.base, vethA, Egress, "nat")
	fi, err := os.Lstat(rec)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("record %s: %v %v", rec, fi, err)
	}
	if err := os.WriteFile(filepath.Join(n.base, "probe"), nil, 0o600); err == nil {
		t.Log("note: this bpffs accepts regular files")
	}

	// Lose the record: the next Attach finds the filter by name and
	// replaces it in place rather than adding a second one.
	if err := os.Remove(rec); err != nil {
		t.Fatal(err)
	}
	att2, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeLegacy)
	if err != nil {
		t.Fatal(err)
	}
	if att2.Priority != att.Priority || att2.Handle != att.Handle {
		t.Fatalf("filter not reused: %+v vs %+v", att2, att)
	}
	if ours, all := n.ourFilters(n.idxA, Egress); len(ours) != 1 {
		t.Fatalf("filters: %+v", all)
	}
}

// TestDottedNames: bpffs refuses '.' in file names, yet VLAN interfaces are
// called like "lda0.100".
func TestDottedNames(t *testing.T) {
	n := setup(t)
	// A veth named like a VLAN interface (8021q may not be available).
	const vlan = "lda0.100"
	if err := n.hA.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vlan}, PeerName: "peer.100"}); err != nil {
		t.Fatal(err)
	}
	v, err := n.hA.LinkByName(vlan)
	if err != nil {
		t.Fatal(err)
	}
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)
	if _, err := Attach(n.base, prog, "nat.v4", vlan, v.Attrs().Index, Egress, ModeTCX); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(n.base, prog, "100%.v6", vlan, v.Attrs().Index, Ingress, ModeLegacy); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(n.base, "devices", "lda0%2e100", "links", "egress_nat%2ev4"); LinkPin(n.base, vlan, Egress, "nat.v4") != want || !exists(want) {
		t.Fatalf("pin not at %s", want)
	}
	atts := mustList(t, n.base)
	if len(atts) != 2 || atts[0].Interface != vlan || atts[0].Program != "100%.v6" || atts[1].Program != "nat.v4" || atts[0].ProgramID == 0 || atts[1].ProgramID == 0 {
		t.Fatalf("List = %+v", atts)
	}
	if ours, _ := n.ourFilters(v.Attrs().Index, Ingress); len(ours) != 1 || ours[0].Name != "bpfnet-100%.v6" {
		t.Fatalf("filters: %+v", ours)
	}
	if err := DetachAll(n.base); err != nil {
		t.Fatal(err)
	}
	if got := mustList(t, n.base); len(got) != 0 {
		t.Fatalf("List after DetachAll = %+v", got)
	}
	for _, s := range []string{"plain", "a.b", "%", "%2e", "x%25.y"} {
		if u, err := UnescapeName(EscapeName(s)); err != nil || u != s {
			t.Fatalf("round trip of %q: %q, %v", s, u, err)
		}
	}
	if _, err := UnescapeName("a.b"); err == nil {
		t.Fatal("unescaped dot accepted")
	}
}

// TestIngressQdisc: an old-style ingress qdisc (not clsact) of another tool
// serves the ingress hook; egress is refused rather than replacing it.
func TestIngressQdisc(t *testing.T) {
	n := setup(t)
	if err := netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: n.idxA, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS,
	}}); err != nil {
		t.Fatal(err)
	}
	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)
	if _, err := Attach(n.base, prog, "rev", vethA, n.idxA, Ingress, ModeLegacy); err != nil {
		t.Fatal(err)
	}
	_, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeLegacy)
	if err == nil || !strings.Contains(err.Error(), "ingress qdisc") {
		t.Fatalf("egress with an ingress qdisc: %v", err)
	}
	atts := mustList(t, n.base)
	if len(atts) != 1 || atts[0].ProgramID != progID(t, prog) {
		t.Fatalf("List = %+v", atts)
	}
	if err := DetachAll(n.base); err != nil {
		t.Fatal(err)
	}
	if _, ingress, err := tcQdisc(n.idxA); err != nil || !ingress {
		t.Fatalf("ingress qdisc gone: %v", err)
	}
}

// TestAutoFallback simulates a kernel without tcx: ModeAuto falls back to
// clsact, ModeTCX fails.
func TestAutoFallback(t *testing.T) {
	n := setup(t)
	orig := tcxAttach
	tcxAttach = func(link.TCXOptions) (link.Link, error) {
		return nil, fmt.Errorf("simulated: %w", link.ErrNotSupported)
	}
	defer func() { tcxAttach = orig }()

	m := newCounters(t)
	prog := newCounterProg(t, m, 1, tcActOK)
	att, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	if att.Mode != ModeLegacy || !n.hasClsact(n.idxA) {
		t.Fatalf("no fallback: %+v", att)
	}
	n.send(5)
	if p, _ := readCounters(t, m); p != 5 {
		t.Fatalf("counter %d, want 5", p)
	}
	_, err = Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeTCX)
	if !errors.Is(err, link.ErrNotSupported) {
		t.Fatalf("ModeTCX without tcx: %v", err)
	}
	if exists(LinkPin(n.base, vethA, Egress, "nat")) {
		t.Fatal("pin left")
	}
	// The legacy attachment is untouched by the failed attempt.
	atts := mustList(t, n.base)
	if len(atts) != 1 || atts[0].Mode != ModeLegacy || atts[0].ProgramID != att.ProgramID {
		t.Fatalf("List = %+v", atts)
	}
}
