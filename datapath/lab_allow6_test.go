// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// TestLabIPv6Allow: IPv6 published ports behind allowlists, with real
// traffic from two external namespaces on uplinks of their own. Each
// port's listed source connects, seen with its own address, and the other
// source's SYN is dropped and counted for the port; a list of IPv4
// prefixes only keeps the IPv6 port closed to both, while the same list on
// the IPv4 port lets its source in; a container reaching an IPv6 port
// through the hairpin is judged by the list too. Published shows the
// lists' IPv6 prefixes. A changed list judges new connections at once and
// leaves an established one alone; with no list left, port_allow6 is
// empty.
func TestLabIPv6Allow(t *testing.T) {
	cfg := lab.Config{Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 0}}, Externals: []lab.ExternalConfig{{}, {}}}
	c4 := netip.MustParseAddr("172.30.0.2")
	x0v6, x1v6 := labExt6Of(0), labExt6Of(1)
	var ports []PortMapping
	for _, spec := range []string{
		fmt.Sprintf("[::]:8080:[%s]:80,allow=%s", labCtr6[0], x0v6),
		fmt.Sprintf("[::]:8081:[%s]:80,allow=%s/64+192.0.2.0/24", labCtr6[0], x1v6),
		// IPv4 prefixes only, the externals' own: closed to IPv6.
		fmt.Sprintf("[::]:8082:[%s]:80,allow=10.0.0.0/8+172.16.0.0/12+192.168.0.0/16", labCtr6[0]),
		fmt.Sprintf("8082:%s:80,allow=10.0.0.0/8+172.16.0.0/12+192.168.0.0/16", c4),
		fmt.Sprintf("[::]:8083:[%s]:80,allow=%s", labCtr6[0], labSub6),
	} {
		ms, err := ParsePublish(spec)
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, ms...)
	}
	l, _ := dualStackLabWith(t, cfg, ports, Options{})
	c0, c1 := l.topo.Containers[0], l.topo.Containers[1]
	x0, x1 := l.topo.Externals[0], l.topo.Externals[1]
	if c0.Addr.String() != c4.String() {
		t.Fatalf("container 0 has %s, the test publishes %s", c0.Addr, c4)
	}
	echoTCP(t, &c0.Namespace, "[::]:80")
	dial := func(i, port int) string { return fmt.Sprintf("[%s]:%d", labHost6Of(i), port) }

	// The first connection may wait for neighbour discovery.
	waitGreeting(t, &x0.Namespace, dial(0, 8080))
	expectGreeting(t, &x0.Namespace, dial(0, 8080), x0v6.String())
	expectDenied(t, &x1.Namespace, dial(1, 8080))
	waitGreeting(t, &x1.Namespace, dial(1, 8081))
	expectGreeting(t, &x1.Namespace, dial(1, 8081), x1v6.String())
	expectDenied(t, &x0.Namespace, dial(0, 8081))
	// The IPv4-only list: no IPv6 source; its IPv4 twin lets x0 in.
	expectDenied(t, &x0.Namespace, dial(0, 8082))
	expectDenied(t, &x1.Namespace, dial(1, 8082))
	expectGreeting(t, &x0.Namespace, x0.HostAddr.String()+":8082", x0.Addr.String())
	// Hairpin: c1 is in 8083's list, not in 8080's.
	expectGreeting(t, &c1.Namespace, dial(0, 8083), labCtr6[1].String())
	expectDenied(t, &c1.Namespace, dial(0, 8080))

	err := l.topo.Host.Do(func() error {
		denied, err := l.dp.PortDenied()
		if err != nil {
			return err
		}
		conns, err := l.dp.PortConnections()
		if err != nil {
			return err
		}
		any6 := netip.IPv6Unspecified()
		// A SYN retransmitted within the dial's time counts again.
		for port, want := range map[uint16][2]uint64{8080: {1, 2}, 8081: {1, 1}, 8082: {0, 2}, 8083: {1, 0}} {
			b := PortBinding{Proto: TCP, HostIP: any6, HostPort: port}
			if conns[b] < want[0] || denied[b] < want[1] || (want[1] == 0 && denied[b] != 0) {
				t.Errorf("[::]:%d: %d connections, %d denied; want at least %d and %d", port, conns[b], denied[b], want[0], want[1])
			}
		}
		if b := (PortBinding{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: 8082}); conns[b] != 1 || denied[b] != 0 {
			t.Errorf("0.0.0.0:8082: %d connections, %d denied; want 1, 0", conns[b], denied[b])
		}
		pub, err := l.dp.Published()
		if err != nil {
			return err
		}
		seen := false
		for _, p := range pub {
			if p.Binding.HostPort == 8081 && p.Binding.HostIP == any6 {
				seen = true
				if got, want := FormatAllow(p.Allow), "192.0.2.0/24,"+netip.PrefixFrom(x1v6, 64).Masked().String(); got != want {
					t.Errorf("[::]:8081's list reads %s, want %s", got, want)
				}
			}
		}
		if !seen {
			t.Errorf("Published lists no [::]:8081: %v", pub)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// 8080's list changed to the other source: new connections obey it
	// at once, and the tries keep only the lists in use.
	apply := func(ports []PortMapping) {
		t.Helper()
		if err := l.topo.Host.Do(func() error {
			s, err := labState6(l.topo, ports)
			if err != nil {
				return err
			}
			return l.dp.Apply(context.Background(), s)
		}); err != nil {
			t.Fatal(err)
		}
	}
	trie6 := func() int {
		t.Helper()
		n := 0
		if err := l.topo.Host.Do(func() error {
			keys, err := readMap[bpfAllow6Key, uint32](l.dp.objs.PortAllow6)
			n = len(keys)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// x0's /128, x1's /64, the network's /64.
	if n := trie6(); n != 3 {
		t.Errorf("port_allow6 holds %d entries, want 3", n)
	}
	// An established connection of x0's outlives the change, as over
	// IPv4 (TestLabAllow).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := x0.DialTCP(ctx, dial(0, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	greeting := make([]byte, len(x0v6.String())+1)
	if _, err := io.ReadFull(conn, greeting); err != nil {
		t.Fatal(err)
	}
	moved := slices.Clone(ports)
	moved[0].Allow = []netip.Prefix{netip.PrefixFrom(x1v6, 128)}
	apply(moved)
	if _, err := conn.Write([]byte("still here")); err != nil {
		t.Fatalf("writing on the established connection: %v", err)
	}
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "still here" {
		t.Errorf("established IPv6 connection after its list changed: %q, %v", buf, err)
	}
	expectGreeting(t, &x1.Namespace, dial(1, 8080), x1v6.String())
	expectDenied(t, &x0.Namespace, dial(0, 8080))
	if n := trie6(); n != 3 {
		t.Errorf("port_allow6 holds %d entries after the change, want 3 (x0's gone, x1's /128 new)", n)
	}
	// No lists: every port open to both sources, nothing in the tries.
	open := slices.Clone(ports)
	for i := range open {
		open[i].Allow = nil
	}
	apply(open)
	expectGreeting(t, &x0.Namespace, dial(0, 8082), x0v6.String())
	expectGreeting(t, &x1.Namespace, dial(1, 8080), x1v6.String())
	if n := trie6(); n != 0 {
		t.Errorf("port_allow6 holds %d entries with no list left, want none", n)
	}
}

// waitGreeting dials addr from ns until it answers (neighbour discovery
// on a fresh link), for at most two seconds; expectGreeting checks it.
func waitGreeting(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	var err error
	for try := 0; try < 20; try++ {
		if _, err = ns.Greeting(addr); err == nil || !strings.Contains(err.Error(), "refused") && !lab.IsTimeout(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
