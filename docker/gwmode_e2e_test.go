// SPDX-License-Identifier: Apache-2.0

package docker

// Docker 28's gateway modes end to end: a dockerd of the test's own
// creates networks with -o com.docker.network.bridge.gateway_mode_ipv4
// (Docker 20.10 keeps the option it does not know), Source.Watch drives
// the eBPF datapath, and the external host and the containers try what
// each mode opens and closes.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

func TestDockerGatewayModesE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare", "busybox")
	e := newWatchedE2E(t)
	ctx := context.Background()
	host := e.hostAddr.String()

	nets := []struct {
		name, subnet string
		mode         datapath.GatewayMode
		internal     bool
	}{
		{"gw-nat", "172.30.20.0/24", datapath.GatewayNAT, false},
		{"gw-unprot", "172.30.21.0/24", datapath.GatewayNATUnprotected, false},
		{"gw-routed", "172.30.22.0/24", datapath.GatewayRouted, false},
		{"gw-isolated", "172.30.23.0/24", datapath.GatewayIsolated, true},
	}
	for _, n := range nets {
		_, err := e.d.cli.NetworkCreate(ctx, n.name, network.CreateOptions{
			Driver: "bridge", Internal: n.internal,
			Options: map[string]string{optGatewayModeIPv4: n.mode.String()},
			IPAM:    &network.IPAM{Config: []network.IPAMConfig{{Subnet: n.subnet}}},
		})
		if err != nil {
			t.Fatalf("creating network %s: %v", n.name, err)
		}
		if out, err := e.ext.Command(ctx, "ip", "route", "add", n.subnet, "via", host).CombinedOutput(); err != nil {
			t.Fatalf("route: %v %s", err, out)
		}
	}
	e.waitApplied(t, func(st datapath.State) bool {
		for _, n := range nets {
			found := false
			for _, sn := range st.Networks {
				found = found || (sn.Name == n.name && sn.GatewayMode == n.mode)
			}
			if !found {
				return false
			}
		}
		return true
	})

	ctrs := []*isoCtr{
		{name: "gn1", net: "gw-nat", publish: []string{"8090:80"}},
		{name: "gu1", net: "gw-unprot", publish: []string{"8091:80"}},
		{name: "gu2", net: "gw-unprot"},
		{name: "gr1", net: "gw-routed", publish: []string{"8092:80"}},
		{name: "gr2", net: "gw-routed"},
		{name: "gs1", net: "gw-isolated"},
		{name: "gs2", net: "gw-isolated"},
	}
	for _, c := range ctrs {
		isoRun(e, c)
	}
	gn1, gu1, gu2, gr1, gr2, gs1, gs2 := ctrs[0], ctrs[1], ctrs[2], ctrs[3], ctrs[4], ctrs[5], ctrs[6]
	e.waitApplied(t, func(s datapath.State) bool {
		for _, c := range ctrs {
			if !hasEndpoint(s, c.name) {
				return false
			}
		}
		return true
	})
	isoServe(t, &e.ext.Namespace, e.ext.Addr.String()+":9000", "external")
	isoServe(t, e.topo.Host, host+":7", "host")
	at := func(c *isoCtr) netip.AddrPort { return netip.AddrPortFrom(c.addr, 80) }

	t.Run("Reachable", func(t *testing.T) {
		// From the outside: host ports of nat modes, container
		// addresses where the mode opens them.
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), "gn1", 2*time.Second)
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8091), "gu1", 2*time.Second)
		e.expectEcho(t, "tcp", at(gu1), "gu1", 2*time.Second)
		e.expectEcho(t, "tcp", at(gu2), "gu2", 2*time.Second) // unpublished, unprotected
		e.expectEcho(t, "tcp", at(gr1), "gr1", 2*time.Second) // published container port, routed
		for _, c := range []*isoCtr{gu2, gr1, gr2} {
			if ok, err := e.ext.Ping(ctx, c.addr.String()); err != nil || !ok {
				t.Errorf("ping from outside to %s: %v %v, want an answer", c.name, ok, err)
			}
		}
		// Egress: masqueraded but for routed.
		for _, p := range []struct {
			from *isoCtr
			saw  string
		}{{gn1, host}, {gu1, host}, {gr1, gr1.addr.String()}} {
			line, err := p.from.ns.Greeting(net.JoinHostPort(e.ext.Addr.String(), "9000"))
			f := strings.Fields(line)
			if err != nil || len(f) != 2 || !strings.HasPrefix(f[0], p.saw+":") {
				t.Errorf("%s to the outside: %q %v, want to be seen as %s", p.from.name, line, err, p.saw)
			}
		}
		// Inside the isolated network.
		if line, err := gs1.ns.Greeting(at(gs2).String()); err != nil || !strings.HasSuffix(line, " gs2") {
			t.Errorf("gs1 to gs2: %q %v", line, err)
		}
	})

	t.Run("Blocked", func(t *testing.T) {
		// The host port of a routed network's binding is not mapped:
		// the connection is the host's own. Docker 28 binds nothing
		// there (a reset answers); dockerd 20.10, which does not know
		// the mode, holds the port with a socket that never accepts
		// (its port reservation with --userland-proxy=false), so the
		// greeting times out. Either way gr1 never answers.
		line, err := e.ext.Greeting(netip.AddrPortFrom(e.hostAddr, 8092).String())
		if err == nil || !(errors.Is(err, syscall.ECONNREFUSED) || lab.IsTimeout(err)) {
			t.Errorf("host port of a routed binding: %q %v, want the host's own refusal or silence", line, err)
		}
		for _, g := range []struct {
			reason datapath.DropReason
			probes []struct {
				ns *lab.Namespace
				to string
			}
		}{
			{datapath.DropNotPublished, []struct {
				ns *lab.Namespace
				to string
			}{{&e.ext.Namespace, at(gn1).String()}, {&e.ext.Namespace, at(gr2).String()}}},
			{datapath.DropInternal, []struct {
				ns *lab.Namespace
				to string
			}{{&e.ext.Namespace, at(gs1).String()}, {gs1.ns, host + ":7"}, {e.topo.Host, at(gs1).String()}}},
		} {
			before := e.drops(t)[g.reason]
			for _, p := range g.probes {
				if line, err := p.ns.Greeting(p.to); err == nil {
					t.Errorf("%s: %s reached %s (%q), want it blocked", g.reason, p.ns.Name, p.to, line)
				} else if !lab.IsTimeout(err) {
					t.Errorf("%s: %s to %s: %v, want a timeout (the SYN dropped)", g.reason, p.ns.Name, p.to, err)
				}
			}
			if after := e.drops(t)[g.reason]; after < before+uint64(len(g.probes)) {
				t.Errorf("drops[%s] %d -> %d after %d blocked connections", g.reason, before, after, len(g.probes))
			}
		}
		if ok, err := e.ext.Ping(ctx, gn1.addr.String()); err != nil || ok {
			t.Errorf("ping from outside to %s on a nat network: %v %v, want none", gn1.name, ok, err)
		}
	})
}
