// SPDX-License-Identifier: Apache-2.0

package docker

// The sender check with Docker: a container labelled
// bpfnet.allow-foreign-source=true sends from addresses not its own (it
// routes for others); another container's forged datagrams are dropped
// and counted, and the same container from its own address is delivered.

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

func TestDockerForeignSourceE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	e := newWatchedE2E(t)

	const netName = "sp-a"
	if _, err := e.d.cli.NetworkCreate(context.Background(), netName, network.CreateOptions{
		Driver: "bridge", IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: "172.30.20.0/24"}}},
	}); err != nil {
		t.Fatalf("creating network %s: %v", netName, err)
	}
	router := &isoCtr{name: "router", net: netName, labels: map[string]string{LabelAllowForeignSource: "true"}}
	plain := &isoCtr{name: "plain", net: netName}
	target := &isoCtr{name: "target", net: netName}
	for _, c := range []*isoCtr{router, plain, target} {
		isoRun(e, c)
	}
	e.waitApplied(t, func(s datapath.State) bool {
		n := 0
		for _, ep := range s.Endpoints {
			switch ep.Container {
			case "router":
				if ep.AllowForeignSource {
					n++
				}
			case "plain", "target":
				if !ep.AllowForeignSource {
					n++
				}
			}
		}
		return n == 3
	})

	c, err := target.ns.ListenUDP(netip.AddrPortFrom(target.addr, 5000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := map[netip.Addr]int{}
	// receive counts what arrives within d, by source.
	receive := func(want int, src netip.Addr, d time.Duration) int {
		deadline := time.Now().Add(d)
		buf := make([]byte, 256)
		for got[src] < want && time.Now().Before(deadline) {
			c.SetReadDeadline(deadline)
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			got[from.Addr().Unmap()]++
		}
		return got[src]
	}
	send := func(from *isoCtr, src netip.Addr) {
		t.Helper()
		d := lab.UDPv4(src, target.addr, 40000, 5000, []byte("forged"))
		ds := make([][]byte, 20)
		for i := range ds {
			ds[i] = d
		}
		if err := from.ns.SendIPv4(target.addr, ds...); err != nil {
			t.Fatalf("sending from %s: %v", from.name, err)
		}
	}
	spoofed := func() uint64 {
		t.Helper()
		return e.drops(t)[datapath.DropSpoofed]
	}
	behind := netip.MustParseAddr("10.250.0.2") // an address the router routes for

	send(router, behind)
	if n := receive(20, behind, 5*time.Second); n != 20 {
		t.Errorf("target received %d of the labelled container's 20 datagrams from %s, want all", n, behind)
	}
	before := spoofed()
	send(plain, behind)
	deadline := time.Now().Add(3 * time.Second)
	for spoofed() < before+20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := spoofed() - before; n != 20 {
		t.Errorf("%d drops counted as spoofed after the unlabelled container's 20 forged datagrams, want 20", n)
	}
	send(plain, plain.addr)
	if n := receive(20, plain.addr, 5*time.Second); n != 20 {
		t.Errorf("target received %d of the unlabelled container's 20 datagrams from its own address, want all", n)
	}
	if n := got[behind]; n != 20 {
		t.Errorf("target received %d datagrams from %s in all, want only the labelled container's 20", n, behind)
	}
}
