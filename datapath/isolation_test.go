// SPDX-License-Identifier: Apache-2.0

package datapath

// Docker's isolation of networks, in a lab: real TCP and ping between
// containers of five bridges, with the fast path and without; what
// reaches what, what does not, and the drop counters that say why. And the
// State's validation and programming of the networks' flags.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfnet/bpfnet/lab"
)

// The bridges of isoConfig, by index, and what each network is.
const (
	isoNormal   = 0 // c0, c1
	isoOther    = 1 // c2
	isoNoICC    = 2 // c3, c4: enable_icc=false
	isoInternal = 3 // c5, c6: --internal
	isoNoMasq   = 4 // c7: enable_ip_masquerade=false
)

func isoConfig() lab.Config {
	cfg := lab.Config{}
	for i := range 5 {
		cfg.Bridges = append(cfg.Bridges, lab.BridgeConfig{Subnet: fmt.Sprintf("172.30.%d.0/24", i)})
	}
	for _, b := range []int{isoNormal, isoNormal, isoOther, isoNoICC, isoNoICC, isoInternal, isoInternal, isoNoMasq} {
		cfg.Containers = append(cfg.Containers, lab.ContainerConfig{Bridge: b})
	}
	return cfg
}

// isoState is the lab's state with Docker's settings of each network.
func isoState(l *labDatapath, ports []PortMapping) (State, error) {
	s, err := discoverLab(l.topo, ports)
	if err != nil {
		return s, err
	}
	for i := range s.Networks {
		switch s.Networks[i].Bridge {
		case l.topo.Bridges[isoNoICC].Name:
			s.Networks[i].NoICC = true
		case l.topo.Bridges[isoInternal].Name:
			s.Networks[i].Internal = true
			s.Networks[i].Masquerade = false
		case l.topo.Bridges[isoNoMasq].Name:
			s.Networks[i].Masquerade = false
		}
	}
	return s, nil
}

func TestLabIsolation(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, isoConfig(), fast)
		c, ext := l.topo.Containers, l.topo.Externals[0]
		host := ext.HostAddr.String()
		gw := func(b int) string { return l.topo.Bridges[b].Gateway.String() }
		ports := publish(t, fmt.Sprintf("8080:%s:80", c[0].Addr))
		err := l.topo.Host.Do(func() error {
			s, err := isoState(l, ports)
			if err != nil {
				return err
			}
			return l.dp.Apply(context.Background(), s)
		})
		if err != nil {
			t.Fatal(err)
		}
		l.checkNetFlags(t)

		for _, ctr := range c {
			echoTCP(t, &ctr.Namespace, ctr.Addr.String()+":80")
		}
		for _, b := range []int{isoNoICC, isoInternal} {
			echoTCP(t, l.topo.Host, gw(b)+":7")
		}
		echoTCP(t, l.topo.Host, host+":7")
		echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
		// The outside routes the network without masquerade back to the
		// host (without, its answers would have nowhere to go).
		if out, err := ext.Command(context.Background(), "ip", "route", "add", l.topo.Bridges[isoNoMasq].Subnet.String(), "via", host).CombinedOutput(); err != nil {
			t.Fatalf("route: %v %s", err, out)
		}

		type probe struct {
			name string
			from int // container; -1: the external host
			to   string
			saw  string // the address the server must see; "" for any
		}
		reach := func(probes []probe) {
			t.Helper()
			for _, p := range probes {
				ns := &ext.Namespace
				if p.from >= 0 {
					ns = &c[p.from].Namespace
				}
				got, err := ns.Greeting(p.to)
				if err != nil {
					t.Errorf("%s (%s): no answer: %v", p.name, p.to, err)
				} else if p.saw != "" && got != p.saw {
					t.Errorf("%s (%s): the server saw %s, want %s", p.name, p.to, got, p.saw)
				}
			}
		}
		// blocked checks that each probe's connection times out (its SYN
		// unanswered: a refusal or any other error fails) and that drops
		// of reason rose by one each at least.
		blocked := func(reason DropReason, probes []probe) {
			t.Helper()
			before := l.drops(t)[reason]
			for _, p := range probes {
				ns := &ext.Namespace
				if p.from >= 0 {
					ns = &c[p.from].Namespace
				}
				if got, err := ns.Greeting(p.to); err == nil {
					t.Errorf("%s (%s): answered (%s), want it blocked", p.name, p.to, got)
				} else if !lab.IsTimeout(err) {
					t.Errorf("%s (%s): %v, want a timeout", p.name, p.to, err)
				}
			}
			if after := l.drops(t)[reason]; after < before+uint64(len(probes)) {
				t.Errorf("drops[%s] %d -> %d after %d blocked connections, want at least one drop each", reason, before, after, len(probes))
			}
		}
		addr := func(i int, port int) string { return fmt.Sprintf("%s:%d", c[i].Addr, port) }

		reach([]probe{
			{"same network", 1, addr(0, 80), c[1].Addr.String()},
			{"inside an internal network", 6, addr(5, 80), c[6].Addr.String()},
			{"no-ICC network to its gateway", 3, gw(isoNoICC) + ":7", c[3].Addr.String()},
			{"internal network to its gateway", 5, gw(isoInternal) + ":7", c[5].Addr.String()},
			{"internal network to the host's address", 5, host + ":7", c[5].Addr.String()},
			{"no-ICC network out, masqueraded", 3, ext.Addr.String() + ":9000", host},
			{"other network out, masqueraded", 2, ext.Addr.String() + ":9000", host},
			{"network without masquerade out, with its own address", 7, ext.Addr.String() + ":9000", c[7].Addr.String()},
			{"another network's published port, through the host", 2, host + ":8080", c[2].Addr.String()},
			{"no-ICC network to a published port", 4, host + ":8080", c[4].Addr.String()},
			{"the outside to a published port", -1, host + ":8080", ext.Addr.String()},
		})
		blocked(DropIsolation, []probe{
			{"to another network", 0, addr(2, 80), ""},
			{"from another network", 2, addr(0, 80), ""},
			{"normal to internal", 0, addr(5, 80), ""},
			{"internal to normal", 5, addr(0, 80), ""},
			{"no-ICC to another network", 3, addr(1, 80), ""},
			{"without masquerade to another network", 7, addr(0, 80), ""},
		})
		blocked(DropICC, []probe{
			{"inside a no-ICC network", 3, addr(4, 80), ""},
			{"inside a no-ICC network, the other way", 4, addr(3, 80), ""},
		})
		blocked(DropInternal, []probe{
			{"internal network out", 5, ext.Addr.String() + ":9000", ""},
			{"internal network to another network's published port", 6, host + ":8080", ""},
		})
		blocked(DropNotPublished, []probe{
			{"the outside straight to a container without masquerade", -1, addr(7, 80), ""},
		})

		// ICMP: an echo that must go unanswered is dropped for its
		// reason during that ping.
		for _, p := range []struct {
			name     string
			from     int
			to       string
			answered bool
			reason   DropReason // when not answered
		}{
			{"same network", 0, c[1].Addr.String(), true, 0},
			{"inside an internal network", 5, c[6].Addr.String(), true, 0},
			{"no-ICC network to its gateway", 3, gw(isoNoICC), true, 0},
			{"no-ICC network out", 3, ext.Addr.String(), true, 0},
			{"without masquerade out", 7, ext.Addr.String(), true, 0},
			{"to another network", 0, c[2].Addr.String(), false, DropIsolation},
			{"inside a no-ICC network", 3, c[4].Addr.String(), false, DropICC},
			{"internal network out", 5, ext.Addr.String(), false, DropInternal},
		} {
			before := l.drops(t)[p.reason]
			got, err := c[p.from].Ping(context.Background(), p.to)
			if err != nil {
				t.Fatal(err)
			}
			after := l.drops(t)[p.reason]
			if got != p.answered {
				t.Errorf("ping %s (c%d to %s): answered %v, want %v", p.name, p.from, p.to, got, p.answered)
			} else if !got && after <= before {
				t.Errorf("ping %s (c%d to %s): no answer, but %s drops went %d -> %d: lost elsewhere", p.name, p.from, p.to, p.reason, before, after)
			}
		}
	})
}

// checkNetFlags reads the networks and endpoints back from the maps: a
// network's id is its bridge's ifindex, its flags are Docker's settings,
// and its endpoints carry both.
func (l *labDatapath) checkNetFlags(t *testing.T) {
	t.Helper()
	want := map[int]bpfNetFlags{
		isoNormal: netFMasq, isoOther: netFMasq, isoNoICC: netFMasq | netFNoICC,
		isoInternal: netFInternal, isoNoMasq: 0,
	}
	for i, b := range l.topo.Bridges {
		sub, _ := netip.ParsePrefix(b.Subnet.String())
		var info bpfNetInfo
		if err := l.dp.objs.Nets.Lookup(bpfNetKey{Prefixlen: uint32(sub.Bits()), Addr: be32(sub.Addr())}, &info); err != nil {
			t.Errorf("network %s: %v", b.Name, err)
			continue
		}
		if info.NetId != uint32(b.Index) || info.Flags != want[i] {
			t.Errorf("network %s: id %d flags %#x, want %d %#x", b.Name, info.NetId, info.Flags, b.Index, want[i])
		}
	}
	for _, c := range l.topo.Containers {
		var ep bpfEndpoint
		if err := l.dp.objs.Endpoints.Lookup(be32(addrOf(c.Addr)), &ep); err != nil {
			t.Errorf("endpoint %s: %v", c.Addr, err)
			continue
		}
		bi := -1
		for i, b := range l.topo.Bridges {
			if b == c.Bridge {
				bi = i
			}
		}
		if ep.NetId != uint32(c.Bridge.Index) || ep.Flags != want[bi] {
			t.Errorf("endpoint %s: network %d flags %#x, want %d %#x", c.Addr, ep.NetId, ep.Flags, c.Bridge.Index, want[bi])
		}
	}
}

// TestLabIsolationStableIDs: adding a network (a bridge listed first)
// changes no other network's id, so an Apply never mixes ids of two
// states while it rewrites the maps entry by entry.
func TestLabIsolationStableIDs(t *testing.T) {
	cfg := lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}, {Subnet: "172.30.1.0/24"}},
		Containers: []lab.ContainerConfig{{Bridge: 1}},
	}
	l := startLab(t, cfg, true)
	b0, b1 := l.topo.Bridges[0], l.topo.Bridges[1]
	key := bpfNetKey{Prefixlen: 24, Addr: be32(netip.MustParseAddr("172.30.1.0"))}
	id := func() uint32 {
		var info bpfNetInfo
		if err := l.dp.objs.Nets.Lookup(key, &info); err != nil {
			t.Fatal(err)
		}
		return info.NetId
	}
	if got := id(); got != uint32(b1.Index) {
		t.Fatalf("network of %s: id %d, want its ifindex %d", b1.Name, got, b1.Index)
	}
	for _, order := range [][]string{{b1.Name}, {b1.Name, b0.Name}, {b0.Name, b1.Name}} {
		err := l.topo.Host.Do(func() error {
			s, err := Discover(order, nil, nil)
			if err != nil {
				return err
			}
			return l.dp.Apply(context.Background(), s)
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := id(); got != uint32(b1.Index) {
			t.Errorf("bridges %v: network of %s has id %d, want %d", order, b1.Name, got, b1.Index)
		}
	}
	var info bpfNetInfo
	err := l.dp.objs.Nets.Lookup(bpfNetKey{Prefixlen: 24, Addr: be32(netip.MustParseAddr("172.30.0.0"))}, &info)
	if err != nil || info.NetId != uint32(b0.Index) {
		t.Errorf("network of %s: %+v %v, want id %d", b0.Name, info, err, b0.Index)
	}
	if err := l.topo.Host.Do(func() error {
		s, err := Discover([]string{b1.Name}, nil, nil)
		if err != nil {
			return err
		}
		return l.dp.Apply(context.Background(), s)
	}); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.objs.Nets.Lookup(bpfNetKey{Prefixlen: 24, Addr: be32(netip.MustParseAddr("172.30.0.0"))}, &info); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("removed network still in nets: %+v %v", info, err)
	}
}

// TestStateIsolationValidate: an internal network is neither masqueraded
// nor publishes ports; the zero values are Docker's defaults.
func TestStateIsolationValidate(t *testing.T) {
	base := func() State {
		return State{
			Networks: []Network{
				{Name: "web", Bridge: "br-web", Subnet: netip.MustParsePrefix("172.20.0.0/16"), Gateway: netip.MustParseAddr("172.20.0.1"), Masquerade: true},
				{Name: "db", Bridge: "br-db", Subnet: netip.MustParsePrefix("172.21.0.0/16"), Gateway: netip.MustParseAddr("172.21.0.1"), Internal: true, NoICC: true},
			},
			Ports: []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: netip.MustParseAddr("172.20.0.2"), ContainerPort: 80}},
		}
	}
	s := base()
	if err := s.Validate(); err != nil {
		t.Fatalf("valid state: %v", err)
	}
	if (Network{}).NoICC || (Network{}).Internal {
		t.Error("the zero Network is not Docker's default (ICC on, not internal)")
	}
	s = base()
	s.Networks[1].Masquerade = true
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "internal") {
		t.Errorf("masqueraded internal network: %v, want an error", err)
	}
	s = base()
	s.Ports = append(s.Ports, PortMapping{Proto: UDP, HostPort: 5432, ContainerIP: netip.MustParseAddr("172.21.0.2"), ContainerPort: 5432})
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "internal") {
		t.Errorf("port of an internal network: %v, want an error", err)
	}
	if f := netFlags(Network{Masquerade: true, Internal: true}); f != netFInternal {
		t.Errorf("flags of an internal network %#x, want %#x (never masqueraded)", f, netFInternal)
	}
}
