// SPDX-License-Identifier: Apache-2.0

package datapath

// Masquerade next to the host's own connections, in the lab: a host flow
// and a container flow from the same source port to the same server each
// keep their own answers, whichever opened first, and thousands of both
// to one destination port all do.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// serveTagTCP answers every line a client sends with the client's address
// and port as the server sees them, then the line.
func serveTagTCP(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	ns.ServeTCP(t, addr, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line); err != nil {
				return
			}
		}
	})
}

// serveTagUDP answers every datagram with the sender's address and port,
// then the datagram.
func serveTagUDP(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	serveUDP(t, ns, addr, func(from *net.UDPAddr, b []byte) []byte {
		return append([]byte(from.String()+" "), b...)
	})
}

// masqFlow is one flow of a lab test, from a host or container socket
// bound to a fixed port: exchange sends a message carrying the flow's id
// and checks that the answer is its own.
type masqFlow struct {
	id     string
	tcp    net.Conn
	r      *bufio.Reader
	udp    *net.UDPConn
	server *net.UDPAddr
	seen   string // the flow's source as the server saw it
}

func openMasqFlow(ns *lab.Namespace, proto string, id string, local netip.AddrPort, server netip.AddrPort) (*masqFlow, error) {
	f := &masqFlow{id: id}
	err := ns.Do(func() error {
		if proto == "tcp" {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
			c, err := d.Dial("tcp4", server.String())
			if err != nil {
				return err
			}
			f.tcp, f.r = c, bufio.NewReader(c)
			return nil
		}
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		if err != nil {
			return err
		}
		f.udp, f.server = c, net.UDPAddrFromAddrPort(server)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: opening %s from %s in %s: %w", id, proto, local, ns.Name, err)
	}
	return f, nil
}

func (f *masqFlow) close() {
	if f.tcp != nil {
		f.tcp.Close()
	}
	if f.udp != nil {
		f.udp.Close()
	}
}

// exchange sends "<id> <round>" and waits for its answer. A UDP datagram
// is sent again after a second without answer (up to five times); an
// answer that carries another flow's id fails at once: it is an answer
// that went to the wrong socket.
func (f *masqFlow) exchange(round int) error {
	msg := fmt.Sprintf("%s %d", f.id, round)
	if f.tcp != nil {
		f.tcp.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(f.tcp, "%s\n", msg); err != nil {
			return fmt.Errorf("%s: sending: %w", f.id, err)
		}
		line, err := f.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: reading the answer to round %d: %w", f.id, round, err)
		}
		return f.check(strings.TrimSuffix(line, "\n"), msg, round)
	}
	buf := make([]byte, 2048)
	for try := 0; try < 5; try++ {
		if _, err := f.udp.WriteToUDP([]byte(msg), f.server); err != nil {
			return fmt.Errorf("%s: sending: %w", f.id, err)
		}
		f.udp.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := f.udp.Read(buf)
			if lab.IsTimeout(err) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: reading: %w", f.id, err)
			}
			from, body, _ := strings.Cut(string(buf[:n]), " ")
			if strings.HasPrefix(body, f.id+" ") && body != msg {
				// A late answer of an earlier round's resend.
				continue
			}
			return f.check(from+" "+body, msg, round)
		}
	}
	return fmt.Errorf("%s: no answer to round %d", f.id, round)
}

func (f *masqFlow) check(answer, msg string, round int) error {
	from, body, _ := strings.Cut(answer, " ")
	if body != msg {
		return fmt.Errorf("%s: got answer %q to %q: another flow's", f.id, body, msg)
	}
	if f.seen != "" && f.seen != from {
		return fmt.Errorf("%s: round %d seen from %s, before from %s", f.id, round, from, f.seen)
	}
	f.seen = from
	return nil
}

// TestLabMasqHostSamePort: a host TCP connection and a host UDP socket on
// the uplink address and port 40123, and a container flow from port 40123
// to the same server: both exchange data, each gets only its own answers.
// Host first, the container's flow is translated to another port; the
// container first, the host's flow is. Docker's iptables rules give the
// same (kernel conntrack sees host flows, and remaps a local connection
// that clashes with a translation).
func TestLabMasqHostSamePort(t *testing.T) {
	const port = 40123
	for _, mode := range modes {
		for _, hostFirst := range []bool{true, false} {
			name := mode + "/container first"
			if hostFirst {
				name = mode + "/host first"
			}
			t.Run(name, func(t *testing.T) {
				l := startMode(t, mode, twoContainers())
				c0, ext := l.topo.Containers[0], l.topo.Externals[0]
				uplink := addrOf(ext.HostAddr)
				for i, proto := range []string{"tcp", "udp"} {
					server := netip.AddrPortFrom(addrOf(ext.Addr), uint16(9000+i))
					if proto == "tcp" {
						serveTagTCP(t, &ext.Namespace, server.String())
					} else {
						serveTagUDP(t, &ext.Namespace, server.String())
					}
					open := func(ns *lab.Namespace, id string, local netip.Addr) *masqFlow {
						f, err := openMasqFlow(ns, proto, id, netip.AddrPortFrom(local, port), server)
						if err != nil {
							t.Fatal(err)
						}
						t.Cleanup(f.close)
						if err := f.exchange(1); err != nil {
							t.Fatal(err)
						}
						return f
					}
					var host, ctr *masqFlow
					if hostFirst {
						host = open(l.topo.Host, "host-"+proto, uplink)
						ctr = open(&c0.Namespace, "container-"+proto, addrOf(c0.Addr))
					} else {
						ctr = open(&c0.Namespace, "container-"+proto, addrOf(c0.Addr))
						host = open(l.topo.Host, "host-"+proto, uplink)
					}
					// Both keep exchanging, in turns, with answers of their own.
					for round := 2; round <= 4; round++ {
						for _, f := range []*masqFlow{host, ctr, host} {
							if err := f.exchange(round); err != nil {
								t.Fatal(err)
							}
						}
					}
					first, second := host, ctr
					if !hostFirst {
						first, second = ctr, host
					}
					want := netip.AddrPortFrom(uplink, port).String()
					if first.seen != want {
						t.Errorf("%s: the server saw the first flow, %s, from %s, want %s", proto, first.id, first.seen, want)
					}
					ap, err := netip.ParseAddrPort(second.seen)
					if err != nil || ap.Addr() != uplink || ap.Port() == port {
						t.Errorf("%s: the server saw the second flow, %s, from %s, want %s and another port", proto, second.id, second.seen, uplink)
					}
				}
				dp, ok := l.dp.(*EBPF)
				if !ok {
					return
				}
				ev, err := dp.Events()
				if err != nil {
					t.Fatal(err)
				}
				if hostFirst && ev[EventNATHostSocket] < 2 {
					t.Errorf("nat_host_socket = %d, want at least 2 (a TCP and a UDP port refused)", ev[EventNATHostSocket])
				}
				if !hostFirst && ev[EventNATHostRemap] != 2 {
					t.Errorf("nat_host_remap = %d, want 2 (a TCP and a UDP host flow)", ev[EventNATHostRemap])
				}
				d, err := dp.Drops()
				if err != nil {
					t.Fatal(err)
				}
				if d[DropNATExhausted] != 0 || d[DropCTMiss] != 0 {
					t.Errorf("drops %v", d)
				}
			})
		}
	}
}

// TestLabMasqStress: 2000 host flows and 2000 container flows, half TCP
// and half UDP, to one destination port each, from the same source ports:
// host flows first and container flows after on half of the ports, the
// other way round on the other half. Every flow exchanges its id once when
// it opens and again when all are open, and every answer reaches its own
// socket.
func TestLabMasqStress(t *testing.T) {
	const perGroup = 500
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
		uplink := addrOf(ext.HostAddr)
		servers := map[string]netip.AddrPort{
			"tcp": netip.AddrPortFrom(addrOf(ext.Addr), 9100),
			"udp": netip.AddrPortFrom(addrOf(ext.Addr), 9101),
		}
		serveTagTCP(t, &ext.Namespace, servers["tcp"].String())
		serveTagUDP(t, &ext.Namespace, servers["udp"].String())

		type group struct {
			name  string
			ns    *lab.Namespace
			local netip.Addr
			proto string
			base  uint16
		}
		// Ports: 40000+ TCP host then c0, 41000+ TCP c1 then host,
		// 42000+ and 43000+ the same for UDP.
		steps := [][]group{
			{
				{"host-tcp-a", l.topo.Host, uplink, "tcp", 40000},
				{"host-udp-a", l.topo.Host, uplink, "udp", 42000},
			},
			{
				{"c0-tcp", &c0.Namespace, addrOf(c0.Addr), "tcp", 40000},
				{"c1-tcp", &c1.Namespace, addrOf(c1.Addr), "tcp", 41000},
				{"c0-udp", &c0.Namespace, addrOf(c0.Addr), "udp", 42000},
				{"c1-udp", &c1.Namespace, addrOf(c1.Addr), "udp", 43000},
			},
			{
				{"host-tcp-b", l.topo.Host, uplink, "tcp", 41000},
				{"host-udp-b", l.topo.Host, uplink, "udp", 43000},
			},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var (
			mu    sync.Mutex
			flows []*masqFlow
			errs  []error
		)
		t.Cleanup(func() {
			for _, f := range flows {
				f.close()
			}
		})
		// run does job for each of n items, 32 at a time, and collects
		// the errors.
		run := func(n int, job func(i int) error) {
			sem := make(chan struct{}, 32)
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				if ctx.Err() != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("out of time: %w", ctx.Err()))
					mu.Unlock()
					break
				}
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					if err := job(i); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
		}
		fail := func(what string) {
			t.Helper()
			mu.Lock()
			defer mu.Unlock()
			if len(errs) == 0 {
				return
			}
			for _, err := range errs[:min(len(errs), 10)] {
				t.Error(err)
			}
			t.Fatalf("%s: %d flows failed", what, len(errs))
		}
		for s, step := range steps {
			var pending []group
			var index []int
			for _, g := range step {
				for i := 0; i < perGroup; i++ {
					pending = append(pending, g)
					index = append(index, i)
				}
			}
			run(len(pending), func(k int) error {
				g, i := pending[k], index[k]
				f, err := openMasqFlow(g.ns, g.proto, fmt.Sprintf("%s-%d", g.name, i), netip.AddrPortFrom(g.local, g.base+uint16(i)), servers[g.proto])
				if err != nil {
					return err
				}
				mu.Lock()
				flows = append(flows, f)
				mu.Unlock()
				return f.exchange(1)
			})
			fail(fmt.Sprintf("opening the flows of step %d", s+1))
		}
		if len(flows) != 8*perGroup {
			t.Fatalf("%d flows open, want %d", len(flows), 8*perGroup)
		}
		// Every flow again, with all of them open.
		run(len(flows), func(k int) error { return flows[k].exchange(2) })
		fail("second round")

		// Every flow was seen from the uplink address, each from a port of
		// its own, per protocol.
		seen := map[string]string{}
		for _, f := range flows {
			ap, err := netip.ParseAddrPort(f.seen)
			if err != nil || ap.Addr() != uplink {
				t.Errorf("%s: seen from %s, want the uplink address %s", f.id, f.seen, uplink)
				continue
			}
			key := f.seen
			if f.udp != nil {
				key = "udp " + key
			}
			if other, dup := seen[key]; dup {
				t.Errorf("%s and %s both seen from %s", other, f.id, f.seen)
			}
			seen[key] = f.id
		}
		ev := l.events(t)
		if ev[EventNATHostSocket] < 2*perGroup {
			t.Errorf("nat_host_socket = %d, want at least %d (every container flow of a host flow's port)", ev[EventNATHostSocket], 2*perGroup)
		}
		if ev[EventNATHostRemap] < 2*perGroup {
			t.Errorf("nat_host_remap = %d, want at least %d (every host flow of a container flow's port)", ev[EventNATHostRemap], 2*perGroup)
		}
		if d := l.drops(t); d[DropNATExhausted] != 0 {
			t.Errorf("nat_ports_exhausted = %d", d[DropNATExhausted])
		}
	})
}
