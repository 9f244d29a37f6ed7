// SPDX-License-Identifier: Apache-2.0

package datapath

// Real traffic through each gateway mode (Docker 28's
// com.docker.network.bridge.gateway_mode_ipv4), in the lab of
// modesConfig: an external namespace tries a published port through the
// host's address, c0's address on its published container port and on an
// unpublished one, and ping; the external server sees what c0's egress
// leaves with; and on an isolated network the host and c0 try each other.

import (
	"context"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// applyGatewayMode applies the lab's state with the bridge's network in
// mode (internal as well when internal) and ports.
func (m *modeLab) applyGatewayMode(t *testing.T, mode GatewayMode, internal bool, ports []PortMapping) {
	t.Helper()
	err := m.topo.Host.Do(func() error {
		s, err := discoverLab(m.topo, ports)
		if err != nil {
			return err
		}
		s.Networks[0].GatewayMode = mode
		if internal {
			s.Networks[0].Internal, s.Networks[0].Masquerade = true, false
			s.Ports = nil
		}
		return m.dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("applying gateway mode %s: %v", mode, err)
	}
}

func mustPing(t *testing.T, ns *lab.Namespace, addr string, want bool, msg string) {
	t.Helper()
	got, err := ns.Ping(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("%s: ping %s answered %v, want %v", msg, addr, got, want)
	}
}

// mustPingFromHost is mustPing from the host namespace. Where a rule
// datapath's filter OUTPUT drops the echo request (an isolated network's
// cut-off), the kernel refuses the send itself: busybox ping reports
// "Operation not permitted", as it reports "Network unreachable" on Docker
// 28's bridge without an address. That refusal, and only it, is no answer
// there; the eBPF datapath drops on the veth, so its ping times out.
func (m *modeLab) mustPingFromHost(t *testing.T, addr string, want bool, msg string) {
	t.Helper()
	got, err := m.topo.Host.Ping(context.Background(), addr)
	if _, isEBPF := m.dp.(*EBPF); err != nil && !want && !isEBPF && strings.Contains(err.Error(), "not permitted") {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("%s: ping %s answered %v, want %v", msg, addr, got, want)
	}
}

// gwModeDatapaths: the eBPF datapath, and the iptables and nftables ones,
// which render the modes as Docker 28 and 29 do.
var gwModeDatapaths = modes

// TestLabGatewayModes: nat, nat-unprotected and routed, as seen from the
// outside.
func TestLabGatewayModes(t *testing.T) {
	type want struct {
		hostPort      bool // modeHost:8080 reaches c0:80
		published     bool // c0:80 reachable by c0's address
		unpublished   bool // c0:81 likewise
		ping          bool // c0 answers a ping from outside
		egressFromCtr bool // the outside sees c0's own address
	}
	cases := []struct {
		mode GatewayMode
		want want
	}{
		{GatewayNAT, want{hostPort: true}},
		{GatewayNATUnprotected, want{hostPort: true, published: true, unpublished: true, ping: true}},
		{GatewayRouted, want{published: true, ping: true, egressFromCtr: true}},
	}
	for _, dpName := range gwModeDatapaths {
		for _, c := range cases {
			t.Run(dpName+"/"+c.mode.String(), func(t *testing.T) {
				ports := []string{"8080:" + modeC0 + ":80"}
				m := startMode(t, dpName, modesConfig(), ports...)
				m.applyGatewayMode(t, c.mode, false, publish(t, ports...))
				c0, ext := m.topo.Containers[0], m.topo.Externals[0]
				echoTCP(t, &c0.Namespace, modeC0+":80")
				echoTCP(t, &c0.Namespace, modeC0+":81")
				echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
				sub := m.topo.Bridges[0].Subnet.String()
				if _, err := ext.Run(context.Background(), "ip", "route", "add", sub, "via", modeHost); err != nil {
					t.Fatal(err)
				}

				if c.want.hostPort {
					if got := tcpExchange(t, &ext.Namespace, modeHost+":8080", 1000); got != ext.Addr.String() {
						t.Errorf("published port: container saw %s, want %s", got, ext.Addr)
					}
				} else {
					// Docker maps nothing on the host: the host itself
					// answers, with nothing listening there.
					mustBeRefused(t, &ext.Namespace, modeHost+":8080", "the host port of a routed network's binding")
				}
				for _, p := range []struct {
					addr string
					open bool
					what string
				}{
					{modeC0 + ":80", c.want.published, "c0's published container port by its address"},
					{modeC0 + ":81", c.want.unpublished, "c0's unpublished port by its address"},
				} {
					if p.open {
						if got := tcpExchange(t, &ext.Namespace, p.addr, 1000); got != ext.Addr.String() {
							t.Errorf("%s: container saw %s, want %s", p.what, got, ext.Addr)
						}
					} else {
						mustBeDropped(t, m.dropped, &ext.Namespace, p.addr, DropNotPublished, p.what)
					}
				}
				mustPing(t, &ext.Namespace, modeC0, c.want.ping, "outside to c0")
				wantSrc := modeHost
				if c.want.egressFromCtr {
					wantSrc = modeC0
				}
				if got := tcpExchange(t, &c0.Namespace, ext.Addr.String()+":9000", 1000); got != wantSrc {
					t.Errorf("the outside saw c0's flow from %s, want %s", got, wantSrc)
				}
				// A host port published next to the state: refused on
				// a routed network, which maps none.
				if dp, ok := m.dp.(*EBPF); ok {
					err := dp.PublishPorts(publish(t, "8085:"+modeC0+":81")...)
					if routed := c.mode == GatewayRouted; routed != (err != nil) {
						t.Errorf("PublishPorts on a %s network: %v", c.mode, err)
					}
				}
			})
		}
	}
}

// TestLabGatewayModeIsolated: an isolated network's containers reach each
// other and nothing else: not the outside, not the host (by its gateway
// or its uplink address), and the host does not reach them. The same lab
// with the network internal only is the positive twin: there the host and
// its containers reach each other.
//
// Every datapath runs it: Docker writes no rule that keeps the host out
// (its isolated bridge has no address, so the host has no route), and the
// lab's bridge has one, so the iptables and nftables datapaths drop in
// filter INPUT and OUTPUT what Docker 28 leaves unroutable
// (rules.Plan.HostCutOff).
func TestLabGatewayModeIsolated(t *testing.T) {
	for _, dpName := range gwModeDatapaths {
		t.Run(dpName, func(t *testing.T) {
			m := startMode(t, dpName, modesConfig())
			c0, c1, ext := m.topo.Containers[0], m.topo.Containers[1], m.topo.Externals[0]
			gw := m.topo.Bridges[0].Gateway.String()
			sub := m.topo.Bridges[0].Subnet.String()
			if _, err := ext.Run(context.Background(), "ip", "route", "add", sub, "via", modeHost); err != nil {
				t.Fatal(err)
			}
			for _, isolated := range []bool{false, true} {
				mode := GatewayNAT
				if isolated {
					mode = GatewayIsolated
				}
				m.applyGatewayMode(t, mode, true, nil)
				mustPing(t, &c0.Namespace, modeC1, true, mode.String()+": c0 to c1")
				mustPing(t, &c1.Namespace, modeC0, true, mode.String()+": c1 to c0")
				m.mustPingFromHost(t, modeC0, !isolated, mode.String()+": host to c0")
				mustPing(t, &c0.Namespace, gw, !isolated, mode.String()+": c0 to the gateway")
				mustPing(t, &c0.Namespace, modeHost, !isolated, mode.String()+": c0 to the host's uplink address")
				mustPing(t, &ext.Namespace, modeC0, false, mode.String()+": outside to c0")
			}
			if _, ok := m.dp.(*EBPF); !ok {
				return
			}
			if n := m.dropped(t, DropInternal); n == 0 {
				t.Errorf("no drop counted as internal")
			}
		})
	}
}

// TestLabGatewayModeRoutedFromOtherNetwork: c0, on a nat network, reaches
// c1 on a routed one as the outside does: its published container port
// and ping; an unpublished port is dropped, and c1 opens nothing towards
// c0. With c1's network nat (the positive twin of the isolation), c0
// reaches none of it.
func TestLabGatewayModeRoutedFromOtherNetwork(t *testing.T) {
	cfg := lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}, {Subnet: "172.30.1.0/24"}},
		Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 1}},
		Externals:  []lab.ExternalConfig{{Subnet: "10.231.0.0/24", HostAddr: modeHost}},
	}
	for _, dpName := range gwModeDatapaths {
		t.Run(dpName, func(t *testing.T) {
			m := startMode(t, dpName, cfg)
			c0, c1 := m.topo.Containers[0], m.topo.Containers[1]
			echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
			echoTCP(t, &c1.Namespace, c1.Addr.String()+":80")
			echoTCP(t, &c1.Namespace, c1.Addr.String()+":81")
			ports := publish(t, "8080:"+c1.Addr.String()+":80")
			to1 := func(port string) string { return c1.Addr.String() + ":" + port }

			for _, routed := range []bool{false, true} {
				err := m.topo.Host.Do(func() error {
					s, err := discoverLab(m.topo, ports)
					if err != nil {
						return err
					}
					if routed {
						s.Networks[1].GatewayMode = GatewayRouted
					}
					return m.dp.Apply(context.Background(), s)
				})
				if err != nil {
					t.Fatal(err)
				}
				if !routed {
					mustBeDropped(t, m.dropped, &c0.Namespace, to1("80"), DropIsolation, "nat: c0 to c1's container port")
					mustPing(t, &c0.Namespace, c1.Addr.String(), false, "nat: c0 to c1")
					continue
				}
				// Docker's MASQUERADE of c0's network ("-s subnet ! -o
				// br0") takes c0's flow into the routed network too:
				// iptables and nftables show it to c1 from br1's
				// gateway. The eBPF datapath masquerades only what
				// leaves through an uplink: c1 sees c0's address.
				seen := c0.Addr.String()
				if _, isEBPF := m.dp.(*EBPF); !isEBPF {
					seen = m.topo.Bridges[1].Gateway.String()
				}
				if got := tcpExchange(t, &c0.Namespace, to1("80"), 10000); got != seen {
					t.Errorf("routed: c1 saw c0 as %s, want %s", got, seen)
				}
				mustPing(t, &c0.Namespace, c1.Addr.String(), true, "routed: c0 to c1")
				mustBeDropped(t, m.dropped, &c0.Namespace, to1("81"), DropNotPublished, "routed: c0 to c1's unpublished port")
				mustBeDropped(t, m.dropped, &c1.Namespace, c0.Addr.String()+":80", DropIsolation, "routed: c1 to c0")
			}
		})
	}
}
