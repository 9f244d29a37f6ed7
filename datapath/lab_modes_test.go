// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// The datapaths the mode tests compare.
const (
	modeEBPFFast = "ebpf-fastpath"
	modeEBPFSlow = "ebpf-slowpath"
	modeIptables = "iptables"
	modeNftables = "nftables"
)

var modes = []string{modeEBPFFast, modeEBPFSlow, modeIptables, modeNftables}

// modeLab is a lab topology with one of the datapaths in its host
// namespace.
type modeLab struct {
	topo *lab.Topology
	dp   Datapath
}

// startMode builds a topology of cfg and starts the datapath of mode in its
// host namespace, publishing ports (--publish specs). The datapath is
// removed at the end of the test, and the real host's iptables rules must
// not have changed.
func startMode(t *testing.T, mode string, cfg lab.Config, ports ...string) *modeLab {
	t.Helper()
	requireRoot(t)
	lab.KeepHostIptables(t)
	switch mode {
	case modeEBPFFast, modeEBPFSlow:
		l := startLabWith(t, cfg, Options{FastPath: mode == modeEBPFFast}, ports...)
		return &modeLab{topo: l.topo, dp: l.dp}
	case modeIptables, modeNftables:
	default:
		t.Fatalf("unknown datapath mode %q", mode)
	}
	topo := lab.Setup(t, cfg)
	if newRuleDatapath[mode] == nil {
		t.Fatalf("no %s datapath registered (datapaths_ext_test.go)", mode)
	}
	dp, err := newRuleDatapath[mode](topo.Host.Path)
	if err != nil {
		t.Fatal(err)
	}
	m := &modeLab{topo: topo, dp: dp}
	t.Cleanup(func() {
		if err := dp.Remove(); err != nil {
			t.Errorf("removing the iptables datapath: %v", err)
		}
		out, err := topo.Host.Run(context.Background(), "iptables-save")
		if err != nil {
			t.Error(err)
		}
		if strings.Contains(string(out), "BPFNET") || strings.Contains(string(out), "bpfnet") {
			t.Errorf("rules left after Remove:\n%s", out)
		}
	})
	if err := m.apply(publish(t, ports...)); err != nil {
		t.Fatalf("starting the iptables datapath: %v", err)
	}
	return m
}

// apply gives the datapath the state of the host namespace with ports.
func (m *modeLab) apply(ports []PortMapping) error {
	return m.topo.Host.Do(func() error {
		s, err := discoverLab(m.topo, ports)
		if err != nil {
			return err
		}
		return m.dp.Apply(context.Background(), s)
	})
}

// Addresses of modesConfig, which the published ports name.
const (
	modeC0   = "172.30.0.2"
	modeC1   = "172.30.0.3"
	modeHost = "10.231.0.1" // the host's uplink address
)

// modesConfig: one bridge with two containers, one external host.
func modesConfig() lab.Config {
	return lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}},
		Containers: []lab.ContainerConfig{{Addr: modeC0}, {Addr: modeC1}},
		Externals:  []lab.ExternalConfig{{Subnet: "10.231.0.0/24", HostAddr: modeHost}},
	}
}

var modePorts = []string{
	"8080:" + modeC0 + ":80",
	modeHost + ":8081:" + modeC1 + ":80",
	"9000-9002:" + modeC1 + ":7000-7002",
	"5353:" + modeC0 + ":53/udp",
}

// modeScenarios are run against every datapath, on the lab of modesConfig
// with modePorts and the servers of TestLabModes.
var modeScenarios = []struct {
	name string
	run  func(t *testing.T, m *modeLab)
}{
	{"published_tcp", func(t *testing.T, m *modeLab) {
		ext := m.topo.Externals[0]
		if got := tcpExchange(t, &ext.Namespace, modeHost+":8080", 200000); got != ext.Addr.String() {
			t.Errorf("container saw client %s, want the real client %s", got, ext.Addr)
		}
	}},
	{"host_ip_binding", func(t *testing.T, m *modeLab) {
		ext := m.topo.Externals[0]
		if got := tcpExchange(t, &ext.Namespace, modeHost+":8081", 1000); got != ext.Addr.String() {
			t.Errorf("container saw client %s, want %s", got, ext.Addr)
		}
		// Another host address does not answer for the binding.
		gw := m.topo.Bridges[0].Gateway.String()
		// Every datapath leaves the gateway, a host address, to the
		// host, which has no socket there and answers with a RST.
		mustBeRefused(t, &ext.Namespace, gw+":8081", "a port bound to "+modeHost+" on "+gw)
	}},
	{"port_range", func(t *testing.T, m *modeLab) {
		ext := m.topo.Externals[0]
		for p := 9000; p <= 9002; p++ {
			if got := tcpExchange(t, &ext.Namespace, fmt.Sprintf("%s:%d", modeHost, p), 100); got != ext.Addr.String() {
				t.Errorf("port %d: container saw %s", p, got)
			}
		}
	}},
	{"published_udp", func(t *testing.T, m *modeLab) {
		ext := m.topo.Externals[0]
		if got := udpExchange(t, &ext.Namespace, modeHost+":5353", "hello"); got != ext.Addr.String() {
			t.Errorf("container saw client %s, want %s", got, ext.Addr)
		}
	}},
	{"masquerade_tcp", func(t *testing.T, m *modeLab) {
		c0, ext := m.topo.Containers[0], m.topo.Externals[0]
		if got := tcpExchange(t, &c0.Namespace, ext.Addr.String()+":9000", 300000); got != modeHost {
			t.Errorf("external server saw %s, want the uplink address %s", got, modeHost)
		}
	}},
	{"masquerade_udp", func(t *testing.T, m *modeLab) {
		c0, ext := m.topo.Containers[0], m.topo.Externals[0]
		if got := udpExchange(t, &c0.Namespace, ext.Addr.String()+":9001", "x"); got != modeHost {
			t.Errorf("external server saw %s, want the uplink address %s", got, modeHost)
		}
	}},
	{"hairpin_other_container", func(t *testing.T, m *modeLab) {
		c1 := m.topo.Containers[1]
		if got := tcpExchange(t, &c1.Namespace, modeHost+":8080", 100000); got != modeC1 {
			t.Errorf("server saw %s, want the client container %s", got, modeC1)
		}
	}},
	{"not_published", func(t *testing.T, m *modeLab) {
		ext := m.topo.Externals[0]
		// The external host has a route to the containers (added by
		// TestLabModes); port 81 of c0 listens but is not published.
		mustBeDropped(t, m.dropped, &ext.Namespace, modeC0+":81", DropNotPublished, "an unpublished container port")
		mustBeRefused(t, &ext.Namespace, modeHost+":8083", "an unpublished host port")
		// The same client reaches the same container, and the host's
		// published port answers, where it is allowed.
		if got := tcpExchange(t, &ext.Namespace, modeHost+":8080", 100); got != ext.Addr.String() {
			t.Errorf("published port: container saw %s, want %s", got, ext.Addr)
		}
	}},
}

// mustBeRefused fails unless a TCP connection from ns to addr is refused
// (ECONNREFUSED: a RST answered the SYN). A timeout, no route, a missing
// namespace or a connection that succeeds all fail the test.
func mustBeRefused(t *testing.T, ns *lab.Namespace, addr, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := ns.DialTCP(ctx, addr)
	if err == nil {
		c.Close()
		t.Errorf("%s: connected to %s, want ECONNREFUSED", msg, addr)
		return
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s: dialing %s: %v, want ECONNREFUSED", msg, addr, err)
	}
}

// mustBeDropped fails unless a TCP connection from ns to addr times out
// and the counter of drops for reason rises during that probe (read by
// dropped just before and after it): the SYN was dropped by the datapath
// for that reason, not lost elsewhere. Any other error fails the test.
func mustBeDropped(t *testing.T, dropped func(t *testing.T, reason DropReason) uint64, ns *lab.Namespace, addr string, reason DropReason, msg string) {
	t.Helper()
	before := dropped(t, reason)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := ns.DialTCP(ctx, addr)
	after := dropped(t, reason)
	if err == nil {
		c.Close()
		t.Errorf("%s: connected to %s, want it dropped (%s)", msg, addr, reason)
		return
	}
	if !lab.IsTimeout(err) {
		t.Errorf("%s: dialing %s: %v, want a timeout with the SYN dropped (%s)", msg, addr, err, reason)
		return
	}
	if after <= before {
		t.Errorf("%s: dialing %s timed out but %s drops went %d -> %d: the SYN was lost elsewhere", msg, addr, reason, before, after)
	}
}

// dropped reads the counter that a packet dropped for reason raises in
// m's datapath: the eBPF datapath's drop counter of that reason; for the
// iptables datapath, the packets matched by the DROP rules that stand for
// it (DOCKER's for not_published, ISOLATION-STAGE-2's for isolation).
func (m *modeLab) dropped(t *testing.T, reason DropReason) uint64 {
	t.Helper()
	switch dp := m.dp.(type) {
	case *EBPF:
		d, err := dp.Drops()
		if err != nil {
			t.Fatal(err)
		}
		return d[reason]
	}
	if drops := ruleDrops[m.dp.Name()]; drops != nil {
		return drops(t, m.topo.Host, reason)
	}
	t.Fatalf("datapath %T has no drop counters", m.dp)
	return 0
}

// iptablesDrops sums the packet counters of the DROP rules of a chain in
// ns: a filter chain, or TABLE:CHAIN for another table.
func iptablesDrops(t *testing.T, ns *lab.Namespace, chain string) uint64 {
	t.Helper()
	n, rules := iptablesDropCount(t, ns, chain)
	if rules == 0 {
		t.Fatalf("no DROP rule in chain %s", chain)
	}
	return n
}

// iptablesDropCount is iptablesDrops for a chain that may hold no DROP
// rule (the raw table's, which has none for a routed or nat-unprotected
// network): the sum and the number of DROP rules.
func iptablesDropCount(t *testing.T, ns *lab.Namespace, chain string) (n uint64, rules int) {
	t.Helper()
	table := "filter"
	if tb, c, ok := strings.Cut(chain, ":"); ok {
		table, chain = tb, c
	}
	out, err := ns.Run(context.Background(), "iptables-save", "-c", "-t", table)
	if err != nil {
		t.Fatal(err)
	}
	// And the IPv6 rules, which a state with IPv6 has (the iptables
	// datapath refuses one without ip6tables).
	if _, err := exec.LookPath("ip6tables-save"); err == nil {
		out6, err := ns.Run(context.Background(), "ip6tables-save", "-c", "-t", table)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, out6...)
	}
	for _, line := range strings.Split(string(out), "\n") {
		counters, rule, ok := strings.Cut(line, "] ")
		if !ok || !strings.HasPrefix(rule, "-A "+chain+" ") || !strings.HasSuffix(rule, " -j DROP") {
			continue
		}
		pkts, _, _ := strings.Cut(strings.TrimPrefix(counters, "["), ":")
		v, err := strconv.ParseUint(pkts, 10, 64)
		if err != nil {
			t.Fatalf("counters of %q: %v", line, err)
		}
		n += v
		rules++
	}
	return n, rules
}

// TestLabModes runs the same scenarios against the eBPF datapath, with and
// without its fast path, and against the iptables one.
func TestLabModes(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			m := startMode(t, mode, modesConfig(), modePorts...)
			c0, c1, ext := m.topo.Containers[0], m.topo.Containers[1], m.topo.Externals[0]
			if c0.Addr.String() != modeC0 || c1.Addr.String() != modeC1 || ext.HostAddr.String() != modeHost {
				t.Fatalf("lab addresses %s %s %s, want those of modesConfig", c0.Addr, c1.Addr, ext.HostAddr)
			}
			echoTCP(t, &c0.Namespace, modeC0+":80")
			echoTCP(t, &c0.Namespace, modeC0+":81")
			echoUDP(t, &c0.Namespace, modeC0+":53")
			echoTCP(t, &c1.Namespace, modeC1+":80")
			for p := 7000; p <= 7002; p++ {
				echoTCP(t, &c1.Namespace, net.JoinHostPort(modeC1, fmt.Sprint(p)))
			}
			echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
			echoUDP(t, &ext.Namespace, ext.Addr.String()+":9001")
			sub := m.topo.Bridges[0].Subnet.String()
			if _, err := ext.Run(context.Background(), "ip", "route", "add", sub, "via", modeHost); err != nil {
				t.Fatal(err)
			}
			for _, sc := range modeScenarios {
				t.Run(sc.name, func(t *testing.T) { sc.run(t, m) })
			}
		})
	}
}
