// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/lab"
)

// TestRunMasqueradeFlag: --masquerade decides which bridges masquerade.
// With two bridges and --masquerade naming the first one's subnet, the
// external server sees a container of the first bridge with the uplink's
// address and one of the second bridge with its own, for each datapath.
func TestRunMasqueradeFlag(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"ebpf fast path", []string{"--datapath", "ebpf", "--fast-path=true"}},
		{"ebpf stack", []string{"--datapath", "ebpf", "--fast-path=false"}},
		{"iptables", []string{"--datapath", "iptables"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			topo := lab.Setup(t, lab.Config{
				Bridges:    []lab.BridgeConfig{{}, {}},
				Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 1}},
			})
			masq, plain, ext := topo.Containers[0], topo.Containers[1], topo.Externals[0]
			// The external host routes the unmasqueraded subnet back
			// through the host, as a router upstream would.
			h, err := ext.Handle()
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				t.Fatal(err)
			}
			if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: topo.Bridges[1].Subnet, Gw: ext.HostAddr}); err != nil {
				t.Fatalf("route to %s in %s: %v", topo.Bridges[1].Subnet, ext.Name, err)
			}
			greetServer(t, &ext.Namespace, ext.Addr.String()+":9000", false)

			pin := pinPath(t, topo, bin, "bpfnet-masq-")
			args := append([]string{"run", "--pin-path", pin, "--metrics-addr", "",
				"--bridge", topo.Bridges[0].Name, "--bridge", topo.Bridges[1].Name, "--uplink", ext.Uplink,
				"--masquerade", topo.Bridges[0].Subnet.String()}, mode.args...)
			daemon := topo.Host.Command(context.Background(), bin, args...)
			startRun(t, daemon)

			seenAs := func(c *lab.Container) string {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				conn, err := c.DialTCP(ctx, ext.Addr.String()+":9000")
				if err != nil {
					t.Fatalf("%s to the external server: %v", c.Name, err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err != nil {
					t.Fatalf("%s: reading the server's answer: %v", c.Name, err)
				}
				return strings.TrimSpace(line)
			}
			if got, want := seenAs(masq), ext.HostAddr.String(); got != want {
				t.Errorf("container of the masqueraded bridge seen as %s, want the uplink's %s", got, want)
			}
			if got, want := seenAs(plain), plain.Addr.String(); got != want {
				t.Errorf("container of the other bridge seen as %s, want its own %s", got, want)
			}
		})
	}
}
