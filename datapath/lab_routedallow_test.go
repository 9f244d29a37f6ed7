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

// TestLabRoutedAllow: source allowlists on a routed network, reached at
// the container's address, in every datapath. Two external namespaces,
// x0 and x1, each behind an uplink; c0's port 80 has two bindings whose
// lists together name x0 (the union: x1 is refused), 81 one binding with
// a list and one without (open to both), 82 a list naming x1 (x0 is
// refused). An established connection outlives a list that leaves its
// client out; new connections obey the new list.
func TestLabRoutedAllow(t *testing.T) {
	cfg := lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}},
		Containers: []lab.ContainerConfig{{Addr: modeC0}},
		Externals: []lab.ExternalConfig{
			{Subnet: "10.231.0.0/24", HostAddr: modeHost},
			{Subnet: "10.232.0.0/24", HostAddr: "10.232.0.1"},
		},
	}
	for _, dpName := range gwModeDatapaths {
		t.Run(dpName, func(t *testing.T) {
			m := startMode(t, dpName, cfg)
			c0, x0, x1 := m.topo.Containers[0], m.topo.Externals[0], m.topo.Externals[1]
			apply := func(specs ...string) {
				t.Helper()
				err := m.topo.Host.Do(func() error {
					var ports []PortMapping
					for _, s := range specs {
						ports = append(ports, publish(t, s)...)
					}
					s, err := discoverLab(m.topo, ports)
					if err != nil {
						return err
					}
					s.Networks[0].GatewayMode = GatewayRouted
					// x1's uplink is no default route.
					s.Uplinks = append(s.Uplinks, Uplink{Name: x1.Uplink})
					return m.dp.Apply(context.Background(), s)
				})
				if err != nil {
					t.Fatalf("applying: %v", err)
				}
			}
			sub := m.topo.Bridges[0].Subnet.String()
			for _, x := range []*lab.External{x0, x1} {
				if _, err := x.Run(context.Background(), "ip", "route", "add", sub, "via", x.HostAddr.String()); err != nil {
					t.Fatal(err)
				}
			}
			for _, port := range []string{"80", "81", "82"} {
				echoTCP(t, &c0.Namespace, modeC0+":"+port)
			}
			a0, a1 := x0.Addr.String(), x1.Addr.String()
			apply(
				"8080:"+modeC0+":80,allow="+a0+"/32",
				"8081:"+modeC0+":80,allow=192.0.2.0/24",
				"8082:"+modeC0+":81,allow="+a0+"/32",
				"8083:"+modeC0+":81",
				"8084:"+modeC0+":82,allow="+a1+"/32",
			)
			ebpf, _ := m.dp.(*EBPF)
			denied := func(x *lab.External, addr string) {
				t.Helper()
				if ebpf != nil {
					mustBeDropped(t, m.dropped, &x.Namespace, addr, DropPortDenied, x.Name+" to "+addr)
					return
				}
				expectDenied(t, &x.Namespace, addr)
			}
			expectGreeting(t, &x0.Namespace, modeC0+":80", a0)
			denied(x1, modeC0+":80")
			expectGreeting(t, &x0.Namespace, modeC0+":81", a0)
			expectGreeting(t, &x1.Namespace, modeC0+":81", a1)
			expectGreeting(t, &x1.Namespace, modeC0+":82", a1)
			denied(x0, modeC0+":82")

			if ebpf != nil {
				err := m.topo.Host.Do(func() error {
					bind := func(port uint16) PortBinding {
						return RoutedBinding(PortMapping{Proto: TCP, ContainerIP: netip.MustParseAddr(modeC0), ContainerPort: port})
					}
					denials, err := ebpf.PortDenied()
					if err != nil {
						return err
					}
					conns, err := ebpf.PortConnections()
					if err != nil {
						return err
					}
					for port, want := range map[uint16]bool{80: true, 81: false, 82: true} {
						if got := denials[bind(port)]; (got > 0) != want {
							t.Errorf("port %d: %d flows denied, want some: %v", port, got, want)
						}
						if got := conns[bind(port)]; got == 0 {
							t.Errorf("port %d: no connection counted", port)
						}
					}
					pub, err := ebpf.Published()
					if err != nil {
						return err
					}
					lists := map[uint16]string{}
					for _, p := range pub {
						if p.Routed {
							lists[p.ContainerPort] = FormatAllow(p.Allow)
						}
					}
					want := map[uint16]string{80: a0 + "/32,192.0.2.0/24", 81: "", 82: a1 + "/32"}
					if fmt.Sprint(lists) != fmt.Sprint(want) {
						t.Errorf("routed ports' lists %v, want %v", lists, want)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}

			// An established connection outlives a new list that leaves
			// its client out.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := x0.DialTCP(ctx, modeC0+":80")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			greeting := make([]byte, len(a0)+1)
			if _, err := conn.Read(greeting); err != nil {
				t.Fatal(err)
			}
			apply("8080:" + modeC0 + ":80,allow=" + a1 + "/32")
			if _, err := conn.Write([]byte("still here")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len("still here"))
			if _, err := conn.Read(buf); err != nil || string(buf) != "still here" {
				t.Errorf("established connection after its list changed: %q, %v", buf, err)
			}
			denied(x0, modeC0+":80")
			expectGreeting(t, &x1.Namespace, modeC0+":80", a1)
		})
	}
}
