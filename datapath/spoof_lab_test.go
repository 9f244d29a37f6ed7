// SPDX-License-Identifier: Apache-2.0

package datapath

// Forged source addresses, in a lab of two bridges (two networks): a
// container sends UDP datagrams and TCP SYNs from a raw socket (IP_HDRINCL)
// with another container's address, and the receivers count what arrives
// at their own raw sockets. Run with the eBPF datapath, fast path on and
// off, and with the iptables datapath, whose -i br-X isolation rules give
// the same guarantee between networks.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/bpfnet/bpfnet/lab"
)

// spoofProbeCount is how many datagrams, and as many SYNs, each probe
// sends.
const spoofProbeCount = 20

// rawSend sends n UDP datagrams and n TCP SYNs from src to dst:dport out
// of a raw socket of ns: the kernel takes the IP header as given, source
// address included.
func rawSend(ns *lab.Namespace, src, dst netip.Addr, dport uint16, n int) error {
	var ds [][]byte
	for i := range n {
		for _, proto := range []layers.IPProtocol{layers.IPProtocolUDP, layers.IPProtocolTCP} {
			ip := &layers.IPv4{Version: 4, TTL: 64, Id: uint16(i), Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
			var l4 gopacket.SerializableLayer
			sport := layers.TCPPort(41000 + i)
			if proto == layers.IPProtocolUDP {
				u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
				u.SetNetworkLayerForChecksum(ip)
				l4 = u
			} else {
				tc := &layers.TCP{SrcPort: sport, DstPort: layers.TCPPort(dport), SYN: true, Seq: 1000, Window: 64240}
				tc.SetNetworkLayerForChecksum(ip)
				l4 = tc
			}
			buf := gopacket.NewSerializeBuffer()
			opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
			if err := gopacket.SerializeLayers(buf, opts, ip, l4, gopacket.Payload("bpfnet spoof probe")); err != nil {
				return err
			}
			ds = append(ds, buf.Bytes())
		}
	}
	return ns.SendIPv4(dst, ds...)
}

// rawCounter counts the UDP and TCP packets that reach a namespace's
// address, whatever socket would take them, by protocol, destination port
// and the source address they came with.
type rawCounter struct {
	mu   sync.Mutex
	seen map[rawKey]int
}

type rawKey struct {
	proto string
	dport uint16
	src   string
}

func countRaw(t *testing.T, ns *lab.Namespace, addr netip.Addr) *rawCounter {
	t.Helper()
	rc := &rawCounter{seen: map[rawKey]int{}}
	for _, proto := range []string{"udp", "tcp"} {
		var c *net.IPConn
		err := ns.Do(func() error {
			var err error
			c, err = net.ListenIP("ip4:"+proto, &net.IPAddr{IP: addr.AsSlice()})
			return err
		})
		if err != nil {
			t.Fatalf("raw %s socket in %s: %v", proto, ns.Name, err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if n < 4 {
					continue
				}
				k := rawKey{proto, uint16(buf[2])<<8 | uint16(buf[3]), from.String()}
				rc.mu.Lock()
				rc.seen[k]++
				rc.mu.Unlock()
			}
		}()
	}
	return rc
}

// count is how many packets of proto to dport came from src.
func (rc *rawCounter) count(proto string, dport uint16, src netip.Addr) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.seen[rawKey{proto, dport, src.String()}]
}

// total is how many packets to dport came, from any source.
func (rc *rawCounter) total(dport uint16) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for k, v := range rc.seen {
		if k.dport == dport {
			n += v
		}
	}
	return n
}

// isoDropRe is the counter of iptables' drop between networks, into the
// bridge of group 2 (iptables-save -c).
var isoDropRe = regexp.MustCompile(`(?m)^\[(\d+):\d+\] -A BPFNET-ISOLATION-STAGE-2 -o (\S+) -j DROP$`)

// iptablesIsoDrops is how many packets the iptables datapath dropped on
// their way into bridge.
func iptablesIsoDrops(t *testing.T, host *lab.Namespace, bridge string) uint64 {
	t.Helper()
	out, err := host.Run(context.Background(), "iptables-save", "-c", "-t", "filter")
	if err != nil {
		t.Fatalf("iptables-save: %v\n%s", err, out)
	}
	for _, m := range isoDropRe.FindAllStringSubmatch(string(out), -1) {
		if m[2] == bridge {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			return n
		}
	}
	t.Fatalf("no isolation drop rule for %s in:\n%s", bridge, out)
	return 0
}

// ruleIsoDrops is how many packets a rule datapath dropped as isolation:
// for iptables those on their way into bridge, for the others (nftables)
// every isolation drop, which the lab's one probe at a time makes the
// same.
func ruleIsoDrops(t *testing.T, m *modeLab, bridge string) uint64 {
	t.Helper()
	if m.dp.Name() == "iptables" {
		return iptablesIsoDrops(t, m.topo.Host, bridge)
	}
	return m.dropped(t, DropIsolation)
}

// TestLabSpoofedSource: a container of network A that forges the address
// of a container of network B reaches neither B's containers nor its own
// network's nor the outside, and every forged packet is counted as
// spoofed; the same raw-socket sender with its own address reaches its
// network's container and the outside, and is dropped as isolation on
// its way to B.
func TestLabSpoofedSource(t *testing.T) {
	cfg := lab.Config{
		Bridges: []lab.BridgeConfig{{}, {}},
		// a0, a1 on A; b0, b1 on B.
		Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 0}, {Bridge: 1}, {Bridge: 1}},
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			m := startMode(t, mode, cfg)
			c, ext := m.topo.Containers, m.topo.Externals[0]
			a0, a1, b0, b1 := c[0], c[1], c[2], c[3]
			extAddr, hostAddr := addrOf(ext.Addr), addrOf(ext.HostAddr)
			ebpfDP, isEBPF := m.dp.(*EBPF)

			// Where each probe can arrive.
			dsts := map[string]*rawCounter{
				"a1":      countRaw(t, &a1.Namespace, addrOf(a1.Addr)),
				"b0":      countRaw(t, &b0.Namespace, addrOf(b0.Addr)),
				"outside": countRaw(t, &ext.Namespace, extAddr),
			}
			dstAddr := map[string]netip.Addr{"a1": addrOf(a1.Addr), "b0": addrOf(b0.Addr), "outside": extAddr}

			type probe struct {
				name string
				src  netip.Addr
				dst  string
				// seen is the source the receiver sees when the probe is
				// delivered; invalid: it must not be.
				seen   netip.Addr
				reason DropReason // of the eBPF datapath, when not delivered
				// ebpfOnly: Docker's rules let it through (a bridge's
				// own traffic, or a forged source masqueraded out).
				ebpfOnly bool
			}
			own := addrOf(a0.Addr)
			probes := []probe{
				{name: "forged, B's address to B", src: addrOf(b1.Addr), dst: "b0", reason: DropSpoofed},
				{name: "forged, B's address to its own network", src: addrOf(b1.Addr), dst: "a1", reason: DropSpoofed, ebpfOnly: true},
				{name: "forged, B's address to the outside", src: addrOf(b1.Addr), dst: "outside", reason: DropSpoofed, ebpfOnly: true},
				{name: "forged, its network's other address to B", src: addrOf(a1.Addr), dst: "b0", reason: DropSpoofed, ebpfOnly: true},
				{name: "own address to B", src: own, dst: "b0", reason: DropIsolation},
				{name: "own address to its own network", src: own, dst: "a1", seen: own},
				{name: "own address to the outside", src: own, dst: "outside", seen: hostAddr},
			}
			for i, p := range probes {
				if p.ebpfOnly && !isEBPF {
					continue
				}
				dport := uint16(5001 + i)
				var before map[DropReason]uint64
				var isoBefore uint64
				if isEBPF {
					var err error
					if before, err = ebpfDP.Drops(); err != nil {
						t.Fatal(err)
					}
				} else if !p.seen.IsValid() {
					isoBefore = ruleIsoDrops(t, m, b0.Bridge.Name)
				}
				if err := rawSend(&a0.Namespace, p.src, dstAddr[p.dst], dport, spoofProbeCount); err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				rc := dsts[p.dst]
				if p.seen.IsValid() {
					deadline := time.Now().Add(5 * time.Second)
					for time.Now().Before(deadline) && (rc.count("udp", dport, p.seen) < spoofProbeCount || rc.count("tcp", dport, p.seen) < spoofProbeCount) {
						time.Sleep(20 * time.Millisecond)
					}
					for _, proto := range []string{"udp", "tcp"} {
						if n := rc.count(proto, dport, p.seen); n != spoofProbeCount {
							t.Errorf("%s: %s received %d %s packets from %s, want %d", p.name, p.dst, n, proto, p.seen, spoofProbeCount)
						}
					}
					continue
				}
				// Not delivered: the drop counter rises by one per packet,
				// and then nothing has arrived.
				want := uint64(2 * spoofProbeCount)
				var got uint64
				deadline := time.Now().Add(3 * time.Second)
				for {
					if isEBPF {
						after, err := ebpfDP.Drops()
						if err != nil {
							t.Fatal(err)
						}
						got = after[p.reason] - before[p.reason]
					} else {
						got = ruleIsoDrops(t, m, b0.Bridge.Name) - isoBefore
					}
					if got >= want || time.Now().After(deadline) {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if got != want {
					t.Errorf("%s: %d drops counted (%s), want %d", p.name, got, p.reason, want)
				}
				time.Sleep(200 * time.Millisecond)
				if n := rc.total(dport); n != 0 {
					t.Errorf("%s: %s received %d of the packets, want none", p.name, p.dst, n)
				}
			}
			// Late arrivals of the blocked probes.
			for i, p := range probes {
				if !p.seen.IsValid() {
					if n := dsts[p.dst].total(uint16(5001 + i)); n != 0 {
						t.Errorf("%s: %s received %d of the packets in the end, want none", p.name, p.dst, n)
					}
				}
			}
		})
	}
}

// TestLabSpoofedPendingVeth: a veth whose container the runtime has not
// reported yet gets an entry of its bridge's network: its container sends
// from an address of that network, not from any other.
func TestLabSpoofedPendingVeth(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, c1 := l.topo.Containers[0], l.topo.Containers[1]
		err := l.topo.Host.Do(func() error {
			s, err := Discover([]string{l.topo.Bridges[0].Name}, nil, nil)
			if err != nil {
				return err
			}
			// c1 as the runtime has not reported it yet.
			s.Endpoints = slices.DeleteFunc(s.Endpoints, func(e Endpoint) bool { return e.HostVeth == c1.HostVeth })
			if err := s.AddPendingVeths(); err != nil {
				return err
			}
			if !slices.Contains(s.PendingVeths, c1.HostVeth) {
				return fmt.Errorf("%s is not pending: %v", c1.HostVeth, s.PendingVeths)
			}
			return l.dp.Apply(context.Background(), s)
		})
		if err != nil {
			t.Fatal(err)
		}
		var ep bpfEndpoint
		if err := l.dp.objs.Veths.Lookup(uint32(c1.HostVethIndex), &ep); err != nil {
			t.Fatalf("no veths entry for the pending %s: %v", c1.HostVeth, err)
		}
		if ep.Addr != 0 || ep.NetId != uint32(l.topo.Bridges[0].Index) || ep.BridgeIfindex != uint32(l.topo.Bridges[0].Index) {
			t.Errorf("veths entry of the pending %s: %+v, want address 0 on network %d", c1.HostVeth, ep, l.topo.Bridges[0].Index)
		}
		to := addrOf(c0.Addr)
		rc := countRaw(t, &c0.Namespace, to)
		own := addrOf(c1.Addr)
		if err := rawSend(&c1.Namespace, own, to, 6001, spoofProbeCount); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && rc.count("udp", 6001, own)+rc.count("tcp", 6001, own) < 2*spoofProbeCount {
			time.Sleep(20 * time.Millisecond)
		}
		if n := rc.count("udp", 6001, own) + rc.count("tcp", 6001, own); n != 2*spoofProbeCount {
			t.Errorf("c0 received %d of the pending container's %d packets from its own address, want all", n, 2*spoofProbeCount)
		}
		before := l.drops(t)[DropSpoofed]
		if err := rawSend(&c1.Namespace, netip.MustParseAddr("10.250.0.2"), to, 6002, spoofProbeCount); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && l.drops(t)[DropSpoofed] < before+2*spoofProbeCount {
			time.Sleep(20 * time.Millisecond)
		}
		if n := l.drops(t)[DropSpoofed] - before; n != 2*spoofProbeCount {
			t.Errorf("%d drops counted as spoofed after the pending container's %d forged packets, want as many", n, 2*spoofProbeCount)
		}
		time.Sleep(200 * time.Millisecond)
		if n := rc.total(6002); n != 0 {
			t.Errorf("c0 received %d of the pending container's forged packets, want none", n)
		}
	})
}
