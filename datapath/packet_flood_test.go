// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Packet tests of the table of unassured flows (ct4_syn): where a new
// published-port flow starts, when it moves to ct4, and what a flood of
// forged SYNs can and cannot push out.

// handshake runs a TCP handshake from the client through the published
// port 8080 to container A: the client's SYN, the container's SYN|ACK, the
// client's ACK. Each step must be translated.
func (e *packetEnv) handshake(client netip.Addr, sport uint16) {
	e.t.Helper()
	p := tcpPacket(client, sport, hostIP, 8080)
	v, out := e.fromNetdev(p.frame())
	expectVerdict(e.t, v, TC_ACT_REDIRECT)
	expectTuple(e.t, decode(e.t, out), client, sport, ctrA, 80)
	v, out = e.toNetdev(replyPacket(pTCP, ctrA, 80, client, sport).fromCtr(macA, gwMAC).frame())
	expectVerdict(e.t, v, TC_ACT_OK)
	expectTuple(e.t, decode(e.t, out), hostIP, 8080, client, sport)
	p.syn, p.ack = false, true
	v, out = e.fromNetdev(p.frame())
	expectVerdict(e.t, v, TC_ACT_REDIRECT)
	expectTuple(e.t, decode(e.t, out), client, sport, ctrA, 80)
}

// TestPacketFloodHandshake: a SYN makes entries in ct4_syn only, the
// container's SYN|ACK is translated through them, and the client's ACK
// moves both halves to ct4.
func TestPacketFloodHandshake(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	tcp := uint8(pTCP)
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	origKey := ctKey(tcp, clientIP, 40001, hostIP, 8080)
	replyKey := ctKey(tcp, ctrA, 80, clientIP, 40001)
	const u = flagUnassured
	wantOrig := ctWant{clientIP, ctrA, 40001, 80, atFromNetdev, atToNetdev | flagReply, KindDNAT, e.idx["vetha"]}
	wantReply := ctWant{hostIP, clientIP, 8080, 40001, atToNetdev | flagReply, atFromNetdev, KindDNAT, e.idx["vetha"]}

	p := tcpPacket(clientIP, 40001, hostIP, 8080)
	v, out := e.fromNetdev(p.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 80)
	if n := len(e.ctTable(e.objs.Ct4)); n != 0 {
		t.Fatalf("SYN: %d entries in ct4, want none:\n%s", n, e.ctDump())
	}
	if n := len(e.ctTable(e.objs.Ct4Syn)); n != 2 {
		t.Fatalf("SYN: %d entries in ct4_syn, want 2:\n%s", n, e.ctDump())
	}
	e.expectCT(origKey, ctWant{clientIP, ctrA, 40001, 80, atFromNetdev | u, atToNetdev | flagReply | u, KindDNAT, e.idx["vetha"]})
	if n := e.event(EventCTHalfOpen); n != 1 {
		t.Errorf("ct_half_open = %d, want 1", n)
	}

	// A retransmitted SYN finds its unassured flow: no second one.
	v, _ = e.fromNetdev(p.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	if n := e.event(EventCTHalfOpen); n != 1 {
		t.Errorf("ct_half_open = %d after a retransmitted SYN, want 1", n)
	}

	// The container's SYN|ACK leaves its veth towards the uplink, whose
	// egress gives it the published address back.
	synAck := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	v, out = e.fromContainer("vetha", synAck.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), ctrA, 80, clientIP, 40001)
	v, out = e.toNetdev(synAck.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)
	checkFrame(t, out)
	re := e.expectCT(replyKey, ctWant{hostIP, clientIP, 8080, 40001, atToNetdev | flagReply | u, atFromNetdev | u, KindDNAT, e.idx["vetha"]})
	if re.TcpSeen != tcpSeenSynAck || re.Packets != 1 {
		t.Errorf("reply half: tcp_seen %#x, %d packets; want SYN|ACK, 1", re.TcpSeen, re.Packets)
	}
	if n := len(e.ctTable(e.objs.Ct4)); n != 0 {
		t.Fatalf("SYN|ACK: %d entries in ct4, want none", n)
	}

	// The client's ACK: assured, both halves in ct4, none left behind.
	p.syn, p.ack = false, true
	v, out = e.fromNetdev(p.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 80)
	checkFrame(t, out)
	if n := len(e.ctTable(e.objs.Ct4Syn)); n != 0 {
		t.Errorf("ACK: %d entries left in ct4_syn, want none:\n%s", n, e.ctDump())
	}
	oe, ok := e.ctLookupIn(e.objs.Ct4, origKey)
	if !ok {
		t.Fatalf("ACK: client's half not in ct4:\n%s", e.ctDump())
	}
	if got := ctGot(oe); got != wantOrig {
		t.Errorf("client's half in ct4:\n got %s\nwant %s", got, wantOrig)
	}
	if oe.Packets != 3 || oe.TcpSeen != tcpSeenSynAck {
		t.Errorf("client's half: %d packets, tcp_seen %#x; want 3 (SYN, SYN, ACK), SYN|ACK", oe.Packets, oe.TcpSeen)
	}
	e.expectExpiry(oe, 6*time.Hour)
	re, ok = e.ctLookupIn(e.objs.Ct4, replyKey)
	if !ok {
		t.Fatalf("ACK: reply half not in ct4")
	}
	if got := ctGot(re); got != wantReply {
		t.Errorf("reply half in ct4:\n got %s\nwant %s", got, wantReply)
	}
	if n := e.event(EventCTPromoted); n != 1 {
		t.Errorf("ct_promoted = %d, want 1", n)
	}

	// From now on ct4 translates both ways.
	data := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	data.syn = false
	v, out = e.toNetdev(data.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)
	if n := e.event(EventCTPromoted); n != 1 {
		t.Errorf("ct_promoted = %d after more traffic, want 1", n)
	}
	e.expectDrops(nil)
}

// TestPacketFloodNotAssured: what keeps a flow in ct4_syn. The client's
// ACK before the container answered, or after the container reset, moves
// nothing; the same ACK after a real answer does (the positive twin, on a
// flow that lost its entries and starts again mid-stream).
func TestPacketFloodNotAssured(t *testing.T) {
	e := newPacketEnv(t, Options{FastPath: true})
	tcp := uint8(pTCP)
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	ack := func(sport uint16) testPacket {
		p := tcpPacket(clientIP, sport, hostIP, 8080)
		p.syn, p.ack = false, true
		return p
	}
	inCt4 := func(sport uint16) bool {
		_, ok := e.ctLookupIn(e.objs.Ct4, ctKey(tcp, clientIP, sport, hostIP, 8080))
		return ok
	}

	// A forged ACK: a mid-stream flow, unassured; a second one is not an
	// answer to anything.
	for range 2 {
		v, _ := e.fromNetdev(ack(40001).frame())
		expectVerdict(t, v, TC_ACT_REDIRECT)
	}
	if inCt4(40001) {
		t.Errorf("client ACKs without an answer moved the flow to ct4")
	}
	if n := e.event(EventCTRecreated); n != 1 {
		t.Errorf("ct_recreated = %d, want 1", n)
	}

	// The container resets: the client's next ACK moves nothing.
	rst := tcpPacket(ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	rst.syn, rst.rst = false, true
	v, out := e.toNetdev(rst.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)
	v, _ = e.fromNetdev(ack(40001).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	if inCt4(40001) {
		t.Errorf("client ACK after the container's RST moved the flow to ct4")
	}

	// Positive twin: a connection whose entries were lost, mid-stream.
	// The container answers its segment (an ACK), the client's next
	// segment moves the flow.
	v, _ = e.fromNetdev(ack(40002).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	answer := tcpPacket(ctrA, 80, clientIP, 40002).fromCtr(macA, gwMAC)
	answer.syn, answer.ack = false, true
	v, out = e.toNetdev(answer.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40002)
	if inCt4(40002) {
		t.Fatalf("the container's answer alone moved the flow to ct4")
	}
	v, _ = e.fromNetdev(ack(40002).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	if !inCt4(40002) {
		t.Errorf("client ACK after the container's ACK left the flow unassured:\n%s", e.ctDump())
	}
	if n := e.event(EventCTPromoted); n != 1 {
		t.Errorf("ct_promoted = %d, want 1 (only the answered flow)", n)
	}
	if n := len(e.ctTable(e.objs.Ct4Syn)); n != 2 {
		t.Errorf("%d entries in ct4_syn, want the reset flow's 2", n)
	}
	e.expectDrops(nil)
}

// TestPacketFloodKeepsEstablished: random-source SYNs at a published port,
// ten times the capacity of ct4_syn, evict only unassured flows: the
// established published-port flow and a masqueraded flow keep their ct4
// entries and are still translated both ways. The flood's first flows were
// pushed out of ct4_syn (their SYN|ACK is dropped as ct_miss), its last
// one is still there (its SYN|ACK is translated).
func TestPacketFloodKeepsEstablished(t *testing.T) {
	const halfOpen, flood = 128, 1280
	e := newPacketEnv(t, Options{FastPath: true, CTSize: 1024, HalfOpenSize: halfOpen})
	tcp := uint8(pTCP)
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	if got := e.objs.Ct4Syn.MaxEntries(); got != halfOpen {
		t.Fatalf("ct4_syn holds %d entries, want %d", got, halfOpen)
	}

	e.handshake(clientIP, 40001)
	masq := tcpPacket(ctrB, 45000, remoteIP, 443).fromCtr(macB, gwMAC)
	e.masqueradeFlow(masq)
	established := e.ctTable(e.objs.Ct4)
	if len(established) != 4 {
		t.Fatalf("%d entries in ct4 before the flood, want 4:\n%s", len(established), e.ctDump())
	}
	halfBefore := e.event(EventCTHalfOpen)

	// Sources in 198.18.0.0/15, as a flooder forges them.
	src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }
	for i := range flood {
		v, _ := e.fromNetdev(tcpPacket(src(i), uint16(1024+i), hostIP, 8080).frame())
		if v != TC_ACT_REDIRECT {
			t.Fatalf("flood SYN %d: verdict %s, want TC_ACT_REDIRECT", i, verdictName(v))
		}
	}
	if n := e.event(EventCTHalfOpen) - halfBefore; n != flood {
		t.Errorf("ct_half_open rose by %d, want %d", n, flood)
	}
	if n := len(e.ctTable(e.objs.Ct4Syn)); n > halfOpen {
		t.Errorf("%d entries in ct4_syn, more than its %d", n, halfOpen)
	}
	after := e.ctTable(e.objs.Ct4)
	if len(after) != len(established) {
		t.Errorf("%d entries in ct4 after the flood, want the %d established ones:\n%s", len(after), len(established), e.ctDump())
	}
	for k := range established {
		if _, ok := after[k]; !ok {
			t.Errorf("flood evicted %s from ct4", ctKeyString(k))
		}
	}

	// The established flows still work, both ways.
	p := tcpPacket(clientIP, 40001, hostIP, 8080)
	p.syn, p.ack = false, true
	v, out := e.fromNetdev(p.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), clientIP, 40001, ctrA, 80)
	r := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	r.syn = false
	v, out = e.toNetdev(r.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)
	masqReply := tcpPacket(remoteIP, 443, hostIP, 45000)
	masqReply.ack = true
	v, out = e.fromNetdev(masqReply.frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	expectTuple(t, decode(t, out), remoteIP, 443, ctrB, 45000)
	e.expectDrops(nil)

	// At most a tenth of the flood's flows still fit in ct4_syn: one of
	// them is still half-open there, and the container's SYN|ACK to it is
	// translated; one that was evicted has no flow left, so the SYN|ACK to
	// it is dropped as ct_miss. (Which ones the LRU kept is its business.)
	syn := e.ctTable(e.objs.Ct4Syn)
	kept, gone := -1, -1
	for i := range flood {
		_, ok := syn[ctKey(tcp, ctrA, 80, src(i), uint16(1024+i))]
		if ok && kept < 0 {
			kept = i
		}
		if !ok && gone < 0 {
			gone = i
		}
	}
	if kept < 0 || gone < 0 {
		t.Fatalf("flood flows: one kept %d, one evicted %d; want both", kept, gone)
	}
	v, out = e.toNetdev(replyPacket(pTCP, ctrA, 80, src(kept), uint16(1024+kept)).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, src(kept), uint16(1024+kept))
	v, _ = e.toNetdev(replyPacket(pTCP, ctrA, 80, src(gone), uint16(1024+gone)).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropCTMiss: 1})

	// A new legitimate connection during the flood is made as ever.
	e.handshake(client2IP, 40002)
	if _, ok := e.ctLookupIn(e.objs.Ct4, ctKey(tcp, client2IP, 40002, hostIP, 8080)); !ok {
		t.Errorf("new connection during the flood not established in ct4")
	}
}

// TestPacketFloodExpiry: unassured entries live HalfOpenTimeout after their
// last packet; past it they are ignored (the container's late SYN|ACK has
// no flow) and the garbage collector deletes them, while an established
// flow of the same age keeps its entries and its translation.
func TestPacketFloodExpiry(t *testing.T) {
	const life = 200 * time.Millisecond
	e := newPacketEnv(t, Options{FastPath: true, HalfOpenTimeout: life})
	tcp := uint8(pTCP)
	e.publish(tcp, netip.Addr{}, 8080, ctrA, 80, 1)
	d := &EBPF{objs: e.objs}

	e.handshake(clientIP, 40001)
	v, _ := e.fromNetdev(tcpPacket(clientIP, 40002, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	half, ok := e.ctLookupIn(e.objs.Ct4Syn, ctKey(tcp, clientIP, 40002, hostIP, 8080))
	if !ok {
		t.Fatalf("no unassured entry after the SYN")
	}
	e.expectExpiry(half, life)
	if n, err := d.GC(); err != nil || n != 0 {
		t.Fatalf("GC before the deadline: %d deleted, %v; want 0", n, err)
	}

	time.Sleep(life + 50*time.Millisecond)
	v, _ = e.toNetdev(replyPacket(pTCP, ctrA, 80, clientIP, 40002).fromCtr(macA, gwMAC).frame())
	expectVerdict(t, v, TC_ACT_SHOT)
	e.expectDrops(map[DropReason]uint64{DropCTMiss: 1})
	n, err := d.GC()
	if err != nil || n != 2 {
		t.Fatalf("GC after the deadline: %d deleted, %v; want the half-open flow's 2", n, err)
	}
	if n := len(e.ctTable(e.objs.Ct4Syn)); n != 0 {
		t.Errorf("%d entries left in ct4_syn after GC", n)
	}
	if n := len(e.ctTable(e.objs.Ct4)); n != 2 {
		t.Errorf("%d entries in ct4 after GC, want the established flow's 2", n)
	}
	// The established flow, as old, still translates.
	r := replyPacket(pTCP, ctrA, 80, clientIP, 40001).fromCtr(macA, gwMAC)
	r.syn = false
	v, out := e.toNetdev(r.frame())
	expectVerdict(t, v, TC_ACT_OK)
	expectTuple(t, decode(t, out), hostIP, 8080, clientIP, 40001)

	// And Conntrack lists both tables, marking the unassured entries.
	v, _ = e.fromNetdev(tcpPacket(clientIP, 40003, hostIP, 8080).frame())
	expectVerdict(t, v, TC_ACT_REDIRECT)
	entries, err := d.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	unassured := 0
	for _, c := range entries {
		if c.Unassured {
			unassured++
		}
	}
	if len(entries) != 4 || unassured != 2 {
		t.Errorf("Conntrack: %d entries, %d unassured; want 4, 2", len(entries), unassured)
	}
}

// BenchmarkPacketCRR is the datapath's work for one short connection
// through a published port, as TCP_CRR makes them: the handshake, one
// segment each way, and the close, eight program runs. It reports the
// kernel's own time of those runs per connection (datapath-ns/conn), not
// the syscalls or the building of frames around them, to show what
// starting flows in ct4_syn and moving them to ct4 adds.
func BenchmarkPacketCRR(b *testing.B) {
	e := newPacketEnv(b, Options{FastPath: true})
	e.publish(uint8(pTCP), netip.Addr{}, 8080, ctrA, 80, 1)
	var total time.Duration
	run := func(prog *ebpf.Program, frame []byte) uint32 {
		var ret uint32
		var d time.Duration
		var err error
		e.ns.do(func() { ret, d, err = prog.Benchmark(frame, 1, nil) })
		if err != nil {
			b.Fatal(err)
		}
		total += d
		return ret
	}
	b.ResetTimer()
	for i := range b.N {
		client := netip.AddrFrom4([4]byte{203, 0, byte(i >> 16), byte(i >> 8)})
		sport := uint16(1024 + i%256)
		c := tcpPacket(client, sport, hostIP, 8080)
		s := tcpPacket(ctrA, 80, client, sport).fromCtr(macA, gwMAC)
		steps := []struct {
			prog          *ebpf.Program
			p             *testPacket
			syn, ack, fin bool
		}{
			{prog: e.objs.FromNetdev, p: &c, syn: true, ack: false, fin: false},
			{prog: e.objs.ToNetdev, p: &s, syn: true, ack: true, fin: false},
			{prog: e.objs.FromNetdev, p: &c, syn: false, ack: true, fin: false},
			{prog: e.objs.FromNetdev, p: &c, syn: false, ack: true, fin: false},
			{prog: e.objs.ToNetdev, p: &s, syn: false, ack: true, fin: false},
			{prog: e.objs.FromNetdev, p: &c, syn: false, ack: true, fin: true},
			{prog: e.objs.ToNetdev, p: &s, syn: false, ack: true, fin: true},
			{prog: e.objs.FromNetdev, p: &c, syn: false, ack: true, fin: false},
		}
		for _, st := range steps {
			st.p.syn, st.p.ack, st.p.fin = st.syn, st.ack, st.fin
			if v := run(st.prog, st.p.frame()); v == TC_ACT_SHOT {
				b.Fatalf("connection %d dropped", i)
			}
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "datapath-ns/conn")
}
