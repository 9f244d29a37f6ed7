// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// sendForgedUDP sends n UDP datagrams from src to dst:port out of a raw
// socket of ns: the kernel keeps the source as given.
func sendForgedUDP(ns *lab.Namespace, src, dst netip.Addr, port uint16, n int) error {
	d := lab.UDPv4(src, dst, 40000, port, []byte("forged"))
	ds := make([][]byte, n)
	for i := range ds {
		ds[i] = d
	}
	return ns.SendIPv4(dst, ds...)
}

// countUDP counts the datagrams to addr in ns by source address.
func countUDP(t *testing.T, ns *lab.Namespace, addr string) func(src netip.Addr) int {
	t.Helper()
	c, err := ns.ListenUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	seen := make(chan netip.Addr, 1024)
	go func() {
		buf := make([]byte, 256)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			seen <- from.Addr().Unmap()
		}
	}()
	got := map[netip.Addr]int{}
	return func(src netip.Addr) int {
		for {
			select {
			case a := <-seen:
				got[a]++
			default:
				return got[src]
			}
		}
	}
}

// TestRunAllowForeignSource: --allow-foreign-source must name a container
// that is there; the container it names sends from any address, the
// others are held to their own.
func TestRunAllowForeignSource(t *testing.T) {
	requireRoot(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}, {}}})
	c0, c1, ext := topo.Containers[0], topo.Containers[1], topo.Externals[0]
	br := topo.Bridges[0].Name

	// A mistyped address: refused before anything is loaded.
	missing := filepath.Join(t.TempDir(), "pins")
	err := topo.Host.Do(func() error {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs([]string{"run", "--pin-path", missing, "--bridge", br, "--uplink", ext.Uplink,
			"--metrics-addr", "", "--allow-foreign-source", "172.30.0.99"})
		return root.Execute()
	})
	if err == nil || !strings.Contains(err.Error(), "172.30.0.99") || !strings.Contains(err.Error(), "no container") {
		t.Fatalf("run with an address of no container: %v, want a refusal naming it", err)
	}
	if _, serr := os.Stat(missing); !os.IsNotExist(serr) {
		t.Fatalf("the refused run left %s behind", missing)
	}

	bin := buildBinary(t)
	pin := pinPath(t, topo, bin, "bpfnet-foreign-test-")
	cmd := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin, "--bridge", br, "--uplink", ext.Uplink,
		"--publish", fmt.Sprintf("8080:%s:80", c0.Addr), "--metrics-addr", "", "--allow-foreign-source", c0.Addr.String())
	startRun(t, cmd)
	waitAttached(t, topo, bin, pin, 6)

	status := func() statusReport {
		t.Helper()
		return statusJSON(t, topo, bin, pin)
	}
	spoofed := func() uint64 { return status().Drops["spoofed"] }
	// bpfnet status says which endpoint has the exception.
	eps := status().Endpoints
	if len(eps) != 2 {
		t.Errorf("bpfnet status lists %d endpoints, want c0 and c1: %+v", len(eps), eps)
	}
	for _, ep := range eps {
		if want := ep.Addr.String() == c0.Addr.String(); ep.AllowForeignSource != want {
			t.Errorf("bpfnet status: endpoint %s allow_foreign_source %v, want %v", ep.Addr, ep.AllowForeignSource, want)
		}
	}
	if out, err := topo.Host.Command(context.Background(), bin, "status", "--pin-path", pin).Output(); err != nil ||
		!strings.Contains(string(out), "foreign sources: "+c0.Addr.String()) {
		t.Errorf("bpfnet status does not name %s as allowed foreign sources (%v):\n%s", c0.Addr, err, out)
	}
	at0 := countUDP(t, &c0.Namespace, c0.Addr.String()+":5000")
	at1 := countUDP(t, &c1.Namespace, c1.Addr.String()+":5000")
	routed := netip.MustParseAddr("10.250.0.2") // behind c0, in no network
	a0, _ := netip.AddrFromSlice(c0.Addr.To4())
	a1, _ := netip.AddrFromSlice(c1.Addr.To4())

	// c0 routes for others: its foreign source reaches c1.
	if err := sendForgedUDP(&c0.Namespace, routed, a1, 5000, 20); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for at1(routed) < 20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := at1(routed); n != 20 {
		t.Errorf("c1 received %d of c0's 20 datagrams from %s, want all", n, routed)
	}
	// c1 has no exception: the same from it is dropped and counted.
	before := spoofed()
	if err := sendForgedUDP(&c1.Namespace, routed, a0, 5000, 20); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Second)
	for spoofed() < before+20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := spoofed() - before; n != 20 {
		t.Errorf("%d drops counted as spoofed after c1's 20 forged datagrams, want 20", n)
	}
	time.Sleep(200 * time.Millisecond)
	if n := at0(routed); n != 0 {
		t.Errorf("c0 received %d of c1's forged datagrams, want none", n)
	}
	// c1 from its own address reaches c0 (the sender works).
	if err := sendForgedUDP(&c1.Namespace, a1, a0, 5000, 20); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for at0(a1) < 20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := at0(a1); n != 20 {
		t.Errorf("c0 received %d of c1's 20 datagrams from its own address, want all", n)
	}
}
