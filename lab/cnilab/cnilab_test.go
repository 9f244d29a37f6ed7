// SPDX-License-Identifier: Apache-2.0

package cnilab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// TestMain settles how the net package opens sockets before a test
// runs in a lab namespace: Go probes once per process whether the
// system has IPv6 (a bind of [::1]), and a probe made first in a pod's
// namespace whose lo is down would make every later wildcard listener
// IPv4-only.
func TestMain(m *testing.M) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
	}
	os.Exit(m.Run())
}

func goCmd() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// TestNodes: both ways of serving pods, side by side as the benchmark
// runs them: a hostPort answers an external client with its address
// kept, and the pod's connection out leaves with the host's address.
func TestNodes(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireTools(t, "ip", "nsenter", "iptables")
	bin := t.TempDir()
	if err := BuildPlugins(goCmd(), bin); err != nil {
		t.Fatal(err)
	}
	agent := lab.BuildBpfnet(t)
	for _, plugin := range []Plugin{Portmap, Bpfnet} {
		t.Run(string(plugin), func(t *testing.T) {
			topo := lab.Setup(t, lab.Config{})
			ext := topo.Externals[0]
			n, err := Start(Config{Topo: topo, Plugin: plugin, BinDir: bin, Agent: agent, Dir: t.TempDir()})
			if n != nil {
				t.Cleanup(func() {
					if err := n.Close(); err != nil {
						t.Error(err)
					}
				})
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p, err := n.AddPod(ctx, "web", PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"})
			if err != nil {
				t.Fatal(err)
			}
			greet := func(c net.Conn) { fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP) }
			p.ServeTCP(t, ":80", greet)
			ext.ServeTCP(t, ext.Addr.String()+":9000", greet)
			var got string
			for i := 0; i < 5 && got != ext.Addr.String(); i++ {
				got, err = ext.Greeting(ext.HostAddr.String() + ":8080")
			}
			if got != ext.Addr.String() {
				t.Errorf("hostPort from outside: greeting %q (%v), want the client's %s", got, err, ext.Addr)
			}
			if got, err := p.Greeting(ext.Addr.String() + ":9000"); got != ext.HostAddr.String() {
				t.Errorf("the pod's connection out: seen as %q (%v), want the host's %s", got, err, ext.HostAddr)
			}
			if err := n.DelPod(ctx, p); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(p.Path); !os.IsNotExist(err) {
				t.Errorf("the pod's namespace is still there: %v", err)
			}
		})
	}
}

// TestNodesManyPods: the benchmark's sequence, without measuring and
// with fewer pods (the benchmark's 100 take a minute with portmap): a
// target pod, removed, then pods of 10 hostPorts each, then the target
// again, attached last, whose hostPort answers, as do the others'.
func TestNodesManyPods(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireTools(t, "ip", "nsenter", "iptables")
	bin := t.TempDir()
	if err := BuildPlugins(goCmd(), bin); err != nil {
		t.Fatal(err)
	}
	agent := lab.BuildBpfnet(t)
	greet := func(c net.Conn) { fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP) }
	for _, plugin := range []Plugin{Portmap, Bpfnet} {
		t.Run(string(plugin), func(t *testing.T) {
			topo := lab.Setup(t, lab.Config{})
			ext := topo.Externals[0]
			n, err := Start(Config{Topo: topo, Plugin: plugin, BinDir: bin, Agent: agent, Dir: t.TempDir()})
			if n != nil {
				t.Cleanup(func() {
					if err := n.Close(); err != nil {
						t.Error(err)
					}
				})
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			target := PortMapping{HostPort: 5001, ContainerPort: 5001, Protocol: "tcp"}
			p, err := n.AddPod(ctx, "t0", target)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.DelPod(ctx, p); err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			var last *Pod
			const pods = 20
			for i := range pods {
				var ports []PortMapping
				for j := range 10 {
					ports = append(ports, PortMapping{HostPort: 30000 + i*10 + j, ContainerPort: 80, Protocol: "tcp"})
				}
				if last, err = n.AddPod(ctx, fmt.Sprintf("o%d", i), ports...); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%s: %d pods of 10 hostPorts in %v", plugin, pods, time.Since(began))
			if p, err = n.AddPod(ctx, "t1", target); err != nil {
				t.Fatal(err)
			}
			p.ServeTCP(t, ":5001", greet)
			last.ServeTCP(t, ":80", greet)
			for _, port := range []int{5001, 30000 + pods*10 - 1} {
				addr := fmt.Sprintf("%s:%d", ext.HostAddr, port)
				var got string
				for i := 0; i < 5 && got != ext.Addr.String(); i++ {
					got, err = ext.Greeting(addr)
				}
				if got != ext.Addr.String() {
					t.Errorf("%s from outside: greeting %q (%v), want %s", addr, got, err, ext.Addr)
				}
			}
		})
	}
}

// TestNodesDualStack: both ways of serving pods on a dual-stack node
// (host-local with an IPv6 range too) behave alike on IPv6: the pod's
// hostPort answers at the host's IPv6 address with the client's address
// kept, a hostPort on 0.0.0.0 does not answer there (and does on IPv4),
// and the pod's IPv6 connection out leaves with the host's IPv6 address.
func TestNodesDualStack(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireTools(t, "ip", "nsenter", "iptables", "ip6tables")
	bin := t.TempDir()
	if err := BuildPlugins(goCmd(), bin); err != nil {
		t.Fatal(err)
	}
	agent := lab.BuildBpfnet(t)
	host6, ext6 := netip.MustParseAddr("2001:db8:231::1"), netip.MustParseAddr("2001:db8:231::2")
	for _, plugin := range []Plugin{Portmap, Bpfnet} {
		t.Run(string(plugin), func(t *testing.T) {
			topo := lab.Setup(t, lab.Config{})
			ext := topo.Externals[0]
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
				t.Fatal(err)
			}
			if err := topo.Host.AddAddr6(ext.Uplink, host6, 64); err != nil {
				t.Fatal(err)
			}
			if err := ext.Namespace.AddAddr6("eth0", ext6, 64); err != nil {
				t.Fatal(err)
			}
			n, err := Start(Config{Topo: topo, Plugin: plugin, BinDir: bin, Agent: agent, Dir: t.TempDir(), Subnet6: "fd00:88::/64"})
			if n != nil {
				t.Cleanup(func() {
					if err := n.Close(); err != nil {
						t.Error(err)
					}
				})
			}
			if err != nil {
				t.Fatal(err)
			}
			p, err := n.AddPod(ctx, "web", PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
				PortMapping{HostPort: 8081, ContainerPort: 80, Protocol: "tcp", HostIP: "0.0.0.0"})
			if err != nil {
				t.Fatal(err)
			}
			if !p.Addr6.Is6() {
				t.Fatalf("the pod has no IPv6 address (%s)", p.Addr6)
			}
			// lo up, as a runtime's loopback plugin brings it.
			if out, err := p.Run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			greet := func(c net.Conn) { fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP) }
			p.ServeTCP(t, ":80", greet)
			ext.ServeTCP(t, "[::]:9000", greet)
			greeting := func(ns *lab.Namespace, addr string) (string, error) {
				var got string
				var err error
				for i := 0; i < 30; i++ {
					if got, err = ns.Greeting(addr); err == nil {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				return got, err
			}
			at := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
			if got, err := greeting(&ext.Namespace, at(host6, 8080)); got != ext6.String() {
				t.Errorf("hostPort from outside over IPv6: greeting %q (%v), want the client's %s", got, err, ext6)
			}
			if got, err := greeting(&ext.Namespace, ext.HostAddr.String()+":8081"); got != ext.Addr.String() {
				t.Errorf("hostPort on 0.0.0.0 over IPv4: greeting %q (%v), want the client's %s", got, err, ext.Addr)
			}
			if got, err := ext.Greeting(at(host6, 8081)); err == nil {
				t.Errorf("hostPort on 0.0.0.0 answered over IPv6 (%q)", got)
			}
			if got, err := greeting(&p.Namespace, at(ext6, 9000)); got != host6.String() {
				t.Errorf("the pod's IPv6 connection out: seen as %q (%v), want the host's %s", got, err, host6)
			}
			if err := n.DelPod(ctx, p); err != nil {
				t.Fatal(err)
			}
		})
	}
}
