// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// TestRulesLabLoopbackIsolation: with each rendering of Docker's rules
// (iptables, nftables), a port bound to 127.0.0.1 answers the host itself
// (route_localnet on, the source masqueraded to the gateway), and
// containers of two bridges cannot reach each other.
func TestRulesLabLoopbackIsolation(t *testing.T) {
	for _, mode := range []string{modeIptables, modeNftables} {
		t.Run(mode, func(t *testing.T) { testLoopbackIsolation(t, mode) })
	}
}

func testLoopbackIsolation(t *testing.T, mode string) {
	requireRoot(t)
	lab.KeepHostIptables(t)
	cfg := lab.Config{
		Bridges:    []lab.BridgeConfig{{}, {}},
		Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 1}},
	}
	m := startMode(t, mode, cfg, "127.0.0.1:8080:172.30.0.2:80")
	c0, c1, ext := m.topo.Containers[0], m.topo.Containers[1], m.topo.Externals[0]
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
	echoTCP(t, &c1.Namespace, c1.Addr.String()+":80")
	br0 := m.topo.Bridges[0]
	key := "net/ipv4/conf/" + br0.Name + "/route_localnet"
	if v, err := m.topo.Host.ReadSysctl(key); err != nil || v != "1" {
		t.Errorf("route_localnet on %s is %q (%v), want 1", br0.Name, v, err)
	}
	if got := tcpExchange(t, m.topo.Host, "127.0.0.1:8080", 1000); got != br0.Gateway.String() {
		t.Errorf("from the host to 127.0.0.1:8080 the container saw %s, want the gateway %s", got, br0.Gateway)
	}
	// From outside, the host has no socket on that port: a RST.
	mustBeRefused(t, &ext.Namespace, ext.HostAddr.String()+":8080", "a port bound to 127.0.0.1, from outside")
	// Another bridge's container: the isolation rule (iptables:
	// DOCKER-ISOLATION-STAGE-2) drops the SYN, while
	// the host reaches the same container port.
	mustBeDropped(t, m.dropped, &c1.Namespace, c0.Addr.String()+":80", DropIsolation, "a container of another bridge")
	if got := tcpExchange(t, m.topo.Host, c0.Addr.String()+":80", 100); got != br0.Gateway.String() {
		t.Errorf("from the host to %s:80 the container saw %s, want the gateway %s", c0.Addr, got, br0.Gateway)
	}
	// Each bridge still reaches the outside.
	echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
	for _, c := range m.topo.Containers {
		if got := tcpExchange(t, &c.Namespace, ext.Addr.String()+":9000", 100); got != ext.HostAddr.String() {
			t.Errorf("%s: external server saw %s", c.Name, got)
		}
	}
	// Without the loopback port, route_localnet is set back.
	if err := m.apply(nil); err != nil {
		t.Fatal(err)
	}
	if v, err := m.topo.Host.ReadSysctl(key); err != nil || v != "0" {
		t.Errorf("route_localnet on %s is %q (%v) once no port is bound to loopback, want 0", br0.Name, v, err)
	}
}

// TestRulesLabICCInternal: with each rendering of Docker's rules, two
// containers of a network with icc=false do not reach each other while the
// host reaches them, and a container of an internal network does not
// reach the outside while it reaches its neighbour on that network.
func TestRulesLabICCInternal(t *testing.T) {
	for _, mode := range []string{modeIptables, modeNftables} {
		t.Run(mode, func(t *testing.T) {
			cfg := lab.Config{
				Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}, {Subnet: "172.30.1.0/24"}},
				Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 0}, {Bridge: 1}, {Bridge: 1}},
			}
			m := startMode(t, mode, cfg)
			c, ext := m.topo.Containers, m.topo.Externals[0]
			err := m.topo.Host.Do(func() error {
				s, err := Discover([]string{m.topo.Bridges[0].Name, m.topo.Bridges[1].Name}, nil, nil)
				if err != nil {
					return err
				}
				for i := range s.Networks {
					switch s.Networks[i].Bridge {
					case m.topo.Bridges[0].Name:
						s.Networks[i].NoICC = true
					case m.topo.Bridges[1].Name:
						s.Networks[i].Internal = true
						s.Networks[i].Masquerade = false
					}
				}
				return m.dp.Apply(context.Background(), s)
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, ctr := range c {
				echoTCP(t, &ctr.Namespace, ctr.Addr.String()+":80")
			}
			echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
			to := func(i int) string { return c[i].Addr.String() + ":80" }
			if _, err := c[0].Greeting(to(1)); err == nil {
				t.Errorf("icc=false: %s reached %s", c[0].Name, to(1))
			}
			if _, err := m.topo.Host.Greeting(to(1)); err != nil {
				t.Errorf("icc=false: the host does not reach %s: %v", to(1), err)
			}
			if _, err := c[2].Greeting(ext.Addr.String() + ":9000"); err == nil {
				t.Errorf("internal: %s reached the outside", c[2].Name)
			}
			if _, err := c[2].Greeting(to(3)); err != nil {
				t.Errorf("internal: %s does not reach its neighbour %s: %v", c[2].Name, to(3), err)
			}
			if _, err := c[0].Greeting(ext.Addr.String() + ":9000"); err != nil {
				t.Errorf("%s (not internal) does not reach the outside: %v", c[0].Name, err)
			}
		})
	}
}
