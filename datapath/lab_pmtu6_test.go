// SPDX-License-Identifier: Apache-2.0

package datapath

// Path MTU discovery over IPv6 through the datapath's translations. IPv6
// routers never fragment: a packet too big for the next link is dropped
// and answered with an ICMPv6 Packet Too Big to its source, which, for a
// translated flow, is the host's address. Unless the datapath translates
// that error back to the container (the quoted packet's addresses and
// ports, and both checksums), the container keeps sending packets that
// never arrive and the transfer stalls.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

var (
	labRouter6 = netip.MustParseAddr("2001:db8:2ff::1") // the external namespace, routing to far
	labFar6    = netip.MustParseAddr("2001:db8:2ff::2") // a host behind it
)

// farHost6 adds, behind the external namespace of a dual-stack lab, a far
// host on a link whose router end has MTU mtu and whose far end 1500: the
// far host offers a 1500-byte path (its TCP MSS is 1440), and the router
// drops bigger packets than mtu toward it, answering Packet Too Big.
func farHost6(t *testing.T, topo *lab.Topology, mtu int) *lab.Namespace {
	t.Helper()
	ext := topo.Externals[0]
	name := topo.Prefix + "-far6"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("removing namespace %s: %v\n%s", name, err, out)
		}
	})
	a, b := topo.Prefix+"ra", topo.Prefix+"rb"
	run("ip", "link", "add", a, "netns", ext.Name, "mtu", fmt.Sprint(mtu), "type", "veth", "peer", "name", b, "netns", name, "mtu", "1500")
	run("ip", "-n", ext.Name, "addr", "add", labRouter6.String()+"/64", "dev", a, "nodad")
	run("ip", "-n", ext.Name, "link", "set", a, "up")
	run("ip", "-n", name, "addr", "add", labFar6.String()+"/64", "dev", b, "nodad")
	run("ip", "-n", name, "link", "set", b, "up")
	run("ip", "-n", name, "link", "set", "lo", "up")
	run("ip", "-n", name, "-6", "route", "add", "default", "via", labRouter6.String())
	if err := ext.WriteSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	far := &lab.Namespace{Name: name, Path: "/run/netns/" + name}
	if !far.Exists() {
		t.Fatalf("namespace %s not found at %s", name, far.Path)
	}
	return far
}

// tooBigs is the count of Packet Too Big messages ns has received.
func tooBigs(t *testing.T, ns *lab.Namespace) int {
	t.Helper()
	out, err := ns.Run(context.Background(), "cat", "/proc/net/snmp6")
	if err != nil {
		t.Fatalf("reading snmp6 of %s: %v", ns.Name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Icmp6InPktTooBigs" {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no Icmp6InPktTooBigs in the snmp6 of %s:\n%s", ns.Name, out)
	return 0
}

// pathMTU6 is the MTU the kernel of ns holds for its route to dst.
func pathMTU6(t *testing.T, ns *lab.Namespace, dst netip.Addr) string {
	t.Helper()
	out, err := ns.Run(context.Background(), "ip", "-6", "route", "get", dst.String())
	if err != nil {
		t.Fatalf("ip -6 route get %s in %s: %v", dst, ns.Name, err)
	}
	f := strings.Fields(string(out))
	for i := range f[:max(len(f)-1, 0)] {
		if f[i] == "mtu" {
			return f[i+1]
		}
	}
	return "none"
}

const pmtuBytes = 256 << 10

// download reads what the server at addr sends until it closes, from ns.
func download(t *testing.T, ns *lab.Namespace, addr string) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.DialTCP(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(8 * time.Second))
	n, err := io.Copy(io.Discard, c)
	return int(n), err
}

// upload sends pmtuBytes from ns to the server at addr, which answers with
// the count it read.
func upload(t *testing.T, ns *lab.Namespace, addr string) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.DialTCP(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(8 * time.Second))
	if _, err := c.Write(make([]byte, pmtuBytes)); err != nil {
		return 0, fmt.Errorf("writing: %w", err)
	}
	c.CloseWrite()
	var got uint64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		return 0, fmt.Errorf("reading the count: %w", err)
	}
	return int(got), nil
}

// TestLabPMTU6: a far client downloads from a container over an IPv6
// published port, and the container uploads to a far server through IPv6
// masquerade, across a router whose link toward far has MTU 1280 while
// every end offers 1500: the router's Packet Too Big, sent to the host's
// address, is translated to the container, which lowers its path MTU, and
// both transfers complete. Its twin with MTU 1500 everywhere completes
// with no Packet Too Big at all, so the first is not a transfer that never
// needed one. Through the stack and with the fast path.
func TestLabPMTU6(t *testing.T) {
	lab.RequireTools(t, "ip")
	forBothPaths(t, testLabPMTU6)
}

func testLabPMTU6(t *testing.T, fast bool) {
	for _, c := range []struct {
		mtu     int
		tooBig  bool
		pathMTU string
	}{{1280, true, "1280"}, {1500, false, "none"}} {
		t.Run(fmt.Sprintf("router_mtu=%d", c.mtu), func(t *testing.T) {
			l, _ := dualStackLabWith(t, lab.Config{Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 0}}}, []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: labCtr6[0], ContainerPort: 80}}, Options{FastPath: fast})
			c0 := l.topo.Containers[0]
			far := farHost6(t, l.topo, c.mtu)
			c0.ServeTCP(t, "[::]:80", func(conn net.Conn) {
				conn.Write(make([]byte, pmtuBytes))
				conn.Close()
			})
			far.ServeTCP(t, "[::]:9000", func(conn net.Conn) {
				n, _ := io.Copy(io.Discard, conn)
				binary.Write(conn, binary.BigEndian, uint64(n))
				conn.Close()
			})
			before := tooBigs(t, &c0.Namespace)

			// Download through the published port.
			n, err := download(t, far, "["+labHost6.String()+"]:8080")
			if err != nil || n != pmtuBytes {
				t.Errorf("download through [%s]:8080: %d of %d bytes (%v)", labHost6, n, pmtuBytes, err)
			}
			afterDown := tooBigs(t, &c0.Namespace)
			if got := pathMTU6(t, &c0.Namespace, labFar6); got != c.pathMTU {
				t.Errorf("after the download the container's path MTU to %s is %s, want %s", labFar6, got, c.pathMTU)
			}
			if (afterDown > before) != c.tooBig {
				t.Errorf("Packet Too Big received by the container during the download: %d -> %d, want some: %v", before, afterDown, c.tooBig)
			}

			// Upload through masquerade, with the path MTU forgotten.
			if _, err := c0.Run(context.Background(), "ip", "-6", "route", "flush", "cache"); err != nil {
				t.Fatal(err)
			}
			if got := pathMTU6(t, &c0.Namespace, labFar6); got != "none" {
				t.Fatalf("the container still holds path MTU %s after the flush", got)
			}
			n, err = upload(t, &c0.Namespace, "["+labFar6.String()+"]:9000")
			if err != nil || n != pmtuBytes {
				t.Errorf("upload to [%s]:9000: the server read %d of %d bytes (%v)", labFar6, n, pmtuBytes, err)
			}
			afterUp := tooBigs(t, &c0.Namespace)
			if (afterUp > afterDown) != c.tooBig {
				t.Errorf("Packet Too Big received by the container during the upload: %d -> %d, want some: %v", afterDown, afterUp, c.tooBig)
			}
			if got := pathMTU6(t, &c0.Namespace, labFar6); got != c.pathMTU {
				t.Errorf("after the upload the container's path MTU to %s is %s, want %s", labFar6, got, c.pathMTU)
			}
		})
	}
}
