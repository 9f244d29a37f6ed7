// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/lab"
)

// TestRunGatewayModeFlag: --bridge NAME,gateway_mode=routed makes the
// network routed: the outside reaches the container's published port by
// the container's address, the host port of --publish is not mapped (the
// host refuses it), and the container's flows leave with its own address.
// The same lab without the field is nat: the host port answers, the
// container is seen as the uplink's address.
func TestRunGatewayModeFlag(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	for _, dp := range []string{"ebpf", "iptables", "nftables"} {
		for _, routed := range []bool{false, true} {
			name := dp + "/nat"
			if routed {
				name = dp + "/routed"
			}
			t.Run(name, func(t *testing.T) {
				topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
				c0, ext := topo.Containers[0], topo.Externals[0]
				h, err := ext.Handle()
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				eth0, err := h.LinkByName("eth0")
				if err != nil {
					t.Fatal(err)
				}
				if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: topo.Bridges[0].Subnet, Gw: ext.HostAddr}); err != nil {
					t.Fatal(err)
				}
				greetServer(t, &c0.Namespace, c0.Addr.String()+":80", false)
				greetServer(t, &ext.Namespace, ext.Addr.String()+":9000", false)

				bridge := topo.Bridges[0].Name
				if routed {
					bridge += ",gateway_mode=routed"
				}
				pin := pinPath(t, topo, bin, "bpfnet-gwmode-")
				startRun(t, topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin, "--metrics-addr", "",
					"--datapath", dp, "--bridge", bridge, "--uplink", ext.Uplink, "--publish", "8080:"+c0.Addr.String()+":80"))

				greeting := func(ns *lab.Namespace, addr string) (string, error) {
					ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
					defer cancel()
					c, err := ns.DialTCP(ctx, addr)
					if err != nil {
						return "", err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(3 * time.Second))
					line, err := bufio.NewReader(c).ReadString('\n')
					return strings.TrimSpace(line), err
				}
				hostPort := ext.HostAddr.String() + ":8080"
				direct := c0.Addr.String() + ":80"
				if routed {
					if got, err := greeting(&ext.Namespace, direct); err != nil || got != ext.Addr.String() {
						t.Errorf("container address: greeting %q %v, want %s", got, err, ext.Addr)
					}
					if _, err := greeting(&ext.Namespace, hostPort); !errors.Is(err, syscall.ECONNREFUSED) {
						t.Errorf("host port of a routed network: %v, want ECONNREFUSED (nothing mapped)", err)
					}
				} else {
					if got, err := greeting(&ext.Namespace, hostPort); err != nil || got != ext.Addr.String() {
						t.Errorf("host port: greeting %q %v, want %s", got, err, ext.Addr)
					}
					if _, err := greeting(&ext.Namespace, direct); !lab.IsTimeout(err) {
						t.Errorf("container address of a nat network: %v, want a timeout (dropped)", err)
					}
				}
				want := ext.HostAddr.String()
				if routed {
					want = c0.Addr.String()
				}
				if got, err := greeting(&c0.Namespace, ext.Addr.String()+":9000"); err != nil || got != want {
					t.Errorf("egress seen as %q (%v), want %s", got, err, want)
				}
			})
		}
	}
}
