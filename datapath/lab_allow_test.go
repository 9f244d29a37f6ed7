// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// expectGreeting dials addr from ns and wants the echo server's greeting
// (the client address it saw): the positive twin of expectDenied.
func expectGreeting(t *testing.T, ns *lab.Namespace, addr, want string) {
	t.Helper()
	got, err := ns.Greeting(addr)
	if err != nil {
		t.Errorf("%s -> %s: %v, want it let through", ns.Name, addr, err)
	} else if got != want {
		t.Errorf("%s -> %s: server saw %s, want %s", ns.Name, addr, got, want)
	}
}

// expectDenied dials addr from ns and wants the SYN dropped: a timeout.
// Any other failure (refused, the namespace gone) fails the test, since
// the client did not show what the datapath does.
func expectDenied(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	got, err := ns.Greeting(addr)
	switch {
	case err == nil:
		t.Errorf("%s -> %s: connected (server saw %s), want it dropped", ns.Name, addr, got)
	case !lab.IsTimeout(err):
		t.Errorf("%s -> %s: %v, want a dropped SYN (a timeout)", ns.Name, addr, err)
	}
}

// TestLabAllow: two external clients, two host ports to one container
// port with a list each, a hairpin, and a list changed under an
// established connection.
func TestLabAllow(t *testing.T) {
	cfg := lab.Config{Containers: []lab.ContainerConfig{{}, {}}, Externals: []lab.ExternalConfig{{}, {}}}
	l := newLabDatapath(t, cfg)
	c0, c1 := l.topo.Containers[0], l.topo.Containers[1]
	x0, x1 := l.topo.Externals[0], l.topo.Externals[1]
	apply := func(ports []PortMapping) {
		t.Helper()
		err := l.topo.Host.Do(func() error {
			s, err := discoverLab(l.topo, ports)
			if err != nil {
				return err
			}
			// The second external's uplink is no default route.
			s.Uplinks = append(s.Uplinks, Uplink{Name: x1.Uplink})
			if l.dp == nil {
				if l.dp, err = NewEBPF(Options{PinPath: l.pin, FastPath: true}); err != nil {
					return err
				}
			}
			return l.dp.Apply(context.Background(), s)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	spec := func(s string, a ...any) []PortMapping { return publish(t, fmt.Sprintf(s, a...)) }
	var ports []PortMapping
	ports = append(ports, spec("8080:%s:80,allow=%s/32", c0.Addr, x0.Addr)...)
	ports = append(ports, spec("8081:%s:80,allow=%s/32+192.0.2.0/24", c0.Addr, x1.Addr)...)
	ports = append(ports, spec("8082:%s:80,allow=172.30.0.0/24", c0.Addr)...)
	apply(ports)
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")

	h0, h1 := x0.HostAddr.String(), x1.HostAddr.String()
	expectGreeting(t, &x0.Namespace, h0+":8080", x0.Addr.String())
	expectDenied(t, &x1.Namespace, h1+":8080")
	expectGreeting(t, &x1.Namespace, h1+":8081", x1.Addr.String())
	expectDenied(t, &x0.Namespace, h0+":8081")
	// Hairpin: c1 is in 8082's list, not in 8080's.
	expectGreeting(t, &c1.Namespace, h0+":8082", c1.Addr.String())
	expectDenied(t, &c1.Namespace, h0+":8080")

	err := l.topo.Host.Do(func() error {
		denied, err := l.dp.PortDenied()
		if err != nil {
			return err
		}
		want := map[uint16]uint64{8080: 2, 8081: 1}
		for port, n := range want {
			// A SYN retransmitted within the dial's time counts again.
			if got := denied[PortBinding{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: port}]; got < n {
				t.Errorf("port %d: %d flows denied, want at least %d", port, got, n)
			}
		}
		if got := denied[PortBinding{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: 8082}]; got != 0 {
			t.Errorf("port 8082: %d flows denied, want 0", got)
		}
		pub, err := l.dp.Published()
		if err != nil {
			return err
		}
		for _, p := range pub {
			if p.Binding.HostPort == 8081 && FormatAllow(p.Allow) != x1.Addr.String()+"/32,192.0.2.0/24" {
				t.Errorf("port 8081's list reads %v", p.Allow)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// An established connection outlives a list that leaves its client
	// out; new connections obey the new list at once, incrementally
	// (PublishPorts) and through a full Apply alike.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := x0.DialTCP(ctx, h0+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	echoOnce := func(msg string) {
		t.Helper()
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatalf("writing on the established connection: %v", err)
		}
	}
	greeting := make([]byte, len(x0.Addr.String())+1)
	if _, err := conn.Read(greeting); err != nil {
		t.Fatal(err)
	}
	moved := spec("8080:%s:80,allow=%s/32", c0.Addr, x1.Addr)
	if err := l.topo.Host.Do(func() error { return l.dp.PublishPorts(moved...) }); err != nil {
		t.Fatal(err)
	}
	echoOnce("still here")
	buf := make([]byte, len("still here"))
	if _, err := conn.Read(buf); err != nil || string(buf) != "still here" {
		t.Errorf("established connection after its list changed: %q, %v", buf, err)
	}
	expectDenied(t, &x0.Namespace, h0+":8080")
	expectGreeting(t, &x1.Namespace, h1+":8080", x1.Addr.String())

	// No list: open to both again.
	apply(spec("8080:%s:80", c0.Addr))
	expectGreeting(t, &x0.Namespace, h0+":8080", x0.Addr.String())
	expectGreeting(t, &x1.Namespace, h1+":8080", x1.Addr.String())
	if err := l.topo.Host.Do(func() error {
		lists, err := l.dp.allowOf()
		if err == nil && len(lists) != 0 {
			err = fmt.Errorf("%d lists left in the trie, want none: %v", len(lists), lists)
		}
		return err
	}); err != nil {
		t.Error(err)
	}
}
