// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestBuildGatewayModes: com.docker.network.bridge.gateway_mode_ipv4 (and
// _ipv6, kept) sets each network's mode; an unknown mode, or isolated on a
// network that is not internal (which Docker 28 refuses to create), leaves
// the network out; a routed network's bindings publish container ports
// only, so two containers may bind one host port there.
func TestBuildGatewayModes(t *testing.T) {
	gw4, gw6 := optGatewayModeIPv4, optGatewayModeIPv6
	nets := []network.Summary{
		bridgeNetwork("default", 1, "172.30.1.0/24", "172.30.1.1", nil),
		bridgeNetwork("nat", 2, "172.30.2.0/24", "172.30.2.1", map[string]string{gw4: "nat"}),
		bridgeNetwork("unprot", 3, "172.30.3.0/24", "172.30.3.1", map[string]string{gw4: "nat-unprotected", gw6: "routed"}),
		bridgeNetwork("routed", 4, "172.30.4.0/24", "172.30.4.1", map[string]string{gw4: "routed"}),
		bridgeNetwork("isolated", 5, "172.30.5.0/24", "172.30.5.1", map[string]string{gw4: "isolated"}),
		bridgeNetwork("notinternal", 6, "172.30.6.0/24", "172.30.6.1", map[string]string{gw4: "isolated"}),
		bridgeNetwork("bogus", 7, "172.30.7.0/24", "172.30.7.1", map[string]string{gw4: "bridged"}),
		bridgeNetwork("bogus6", 8, "172.30.8.0/24", "172.30.8.1", map[string]string{gw6: "nope"}),
	}
	nets[4].Internal = true
	k := &fakeKernel{bridges: map[string]fakeBridge{}, veths: map[string]fakeVeth{}}
	for i, n := range nets {
		k.bridges["br-"+n.ID[:12]] = fakeBridge{index: 20 + i}
	}
	k.veths["100/02:42:ac:1e:04:02"] = fakeVeth{"vethr1", 23}
	k.veths["200/02:42:ac:1e:04:03"] = fakeVeth{"vethr2", 23}
	k.veths["300/02:42:ac:1e:02:02"] = fakeVeth{"vethn", 21}
	ports := func(hostPort string) nat.PortMap {
		return nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: hostPort}}, "53/udp": {{HostIP: "10.0.0.1", HostPort: "5353"}}}
	}
	ctrs := []container.InspectResponse{
		runningContainer("r1", 100, nil, ports("8080"), attach{net: "routed", addr: "172.30.4.2", mac: "02:42:ac:1e:04:02"}),
		runningContainer("r2", 200, nil, ports("8080"), attach{net: "routed", addr: "172.30.4.3", mac: "02:42:ac:1e:04:03"}),
		runningContainer("n", 300, nil, ports("8080"), attach{net: "nat", addr: "172.30.2.2", mac: "02:42:ac:1e:02:02"}),
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	type mode struct{ v4, v6 datapath.GatewayMode }
	got := map[string]mode{}
	for _, n := range snap.Networks {
		got[n.Name] = mode{n.GatewayMode, n.GatewayModeIPv6}
		if n.Name == "isolated" && n.Gateway.IsValid() {
			t.Errorf("isolated network has gateway %s: Docker gives its bridge none", n.Gateway)
		}
		if n.Name != "isolated" && !n.Gateway.IsValid() {
			t.Errorf("network %s lost its gateway", n.Name)
		}
	}
	want := map[string]mode{
		"default":  {datapath.GatewayNAT, datapath.GatewayNAT},
		"nat":      {datapath.GatewayNAT, datapath.GatewayNAT},
		"unprot":   {datapath.GatewayNATUnprotected, datapath.GatewayRouted},
		"routed":   {datapath.GatewayRouted, datapath.GatewayNAT},
		"isolated": {datapath.GatewayIsolated, datapath.GatewayNAT},
	}
	if len(got) != len(want) {
		t.Errorf("networks %v, want %v", got, want)
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("network %s: modes %v (present %v), want %v", name, g, ok, w)
		}
	}

	cip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	wantPorts := []datapath.PortMapping{
		// nat: host ports as Docker maps them.
		{Proto: datapath.TCP, HostPort: 8080, ContainerIP: cip("172.30.2.2"), ContainerPort: 80, Container: "n"},
		{Proto: datapath.UDP, HostIP: cip("10.0.0.1"), HostPort: 5353, ContainerIP: cip("172.30.2.2"), ContainerPort: 53, Container: "n"},
		// routed: container ports only, no host address or port.
		{Proto: datapath.TCP, ContainerIP: cip("172.30.4.2"), ContainerPort: 80, Container: "r1"},
		{Proto: datapath.UDP, ContainerIP: cip("172.30.4.2"), ContainerPort: 53, Container: "r1"},
		{Proto: datapath.TCP, ContainerIP: cip("172.30.4.3"), ContainerPort: 80, Container: "r2"},
		{Proto: datapath.UDP, ContainerIP: cip("172.30.4.3"), ContainerPort: 53, Container: "r2"},
	}
	sortPorts := func(ps []datapath.PortMapping) {
		slices.SortFunc(ps, func(a, b datapath.PortMapping) int {
			if c := a.ContainerIP.Compare(b.ContainerIP); c != 0 {
				return c
			}
			return int(a.ContainerPort) - int(b.ContainerPort)
		})
	}
	gotPorts := slices.Clone(snap.Ports)
	sortPorts(gotPorts)
	sortPorts(wantPorts)
	if !slices.EqualFunc(gotPorts, wantPorts, datapath.PortMapping.Equal) {
		t.Errorf("ports:\n got %v\nwant %v", gotPorts, wantPorts)
	}
	if len(snap.Warnings) != 0 {
		t.Errorf("warnings %q, want none: a routed network's bindings take no host port", snap.Warnings)
	}
}
