// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
)

// dualStackNetwork is a network as `docker network create --ipv6
// --subnet v4 --subnet v6` lists it: an IPAM config of each family.
func dualStackNetwork(name string, id int, subnet, gw, subnet6, gw6 string, opts map[string]string) network.Summary {
	n := bridgeNetwork(name, id, subnet, gw, opts)
	n.EnableIPv6 = true
	n.IPAM.Config = append(n.IPAM.Config, network.IPAMConfig{Subnet: subnet6, Gateway: gw6})
	return n
}

// TestBuildDualStack: a network with IPv6 gets its IPv6 subnet and
// gateway (from IPAM, else from the bridge), host_ipv6, its endpoints
// their GlobalIPv6Address, and the bindings on :: (and on "", both
// families) IPv6 mappings to the container's IPv6 address; an IPv4-only
// network's :: binding (Docker's userland proxy's) is left out, and so is
// an IPv6 config of a network without EnableIPv6, and the IPv6 half of a
// network whose IPv6 gateway is nowhere.
func TestBuildDualStack(t *testing.T) {
	nets := []network.Summary{
		dualStackNetwork("v6net", 1, "172.30.1.0/24", "172.30.1.1", "fd00:251::/64", "fd00:251::1",
			map[string]string{optHostIPv6: "2001:db8::5", optGatewayModeIPv6: "nat-unprotected"}),
		dualStackNetwork("v6nogw", 2, "172.30.2.0/24", "172.30.2.1", "fd00:252::/64", "", nil),
		bridgeNetwork("v4net", 3, "172.30.3.0/24", "172.30.3.1", nil),
		dualStackNetwork("disabled", 4, "172.30.4.0/24", "172.30.4.1", "fd00:254::/64", "fd00:254::1", nil),
		dualStackNetwork("badhost6", 5, "172.30.5.0/24", "172.30.5.1", "fd00:255::/64", "fd00:255::1", map[string]string{optHostIPv6: "192.0.2.1"}),
		// No IPv6 gateway in IPAM nor on the bridge: IPv4 only.
		dualStackNetwork("v6lost", 6, "172.30.6.0/24", "172.30.6.1", "fd00:256::/64", "", nil),
	}
	nets[3].EnableIPv6 = false
	k := &fakeKernel{bridges: map[string]fakeBridge{}, veths: map[string]fakeVeth{}}
	for i, n := range nets {
		k.bridges["br-"+n.ID[:12]] = fakeBridge{index: 20 + i}
	}
	k.bridges["br-"+nets[1].ID[:12]] = fakeBridge{index: 21, addrs: []netip.Prefix{pfx("172.30.2.1/24"), pfx("fe80::1/64"), pfx("fd00:252::1/64")}}
	k.veths["100/02:42:ac:1e:01:02"] = fakeVeth{"veth6a", 20}
	k.veths["200/02:42:ac:1e:02:02"] = fakeVeth{"veth6b", 21}
	k.veths["300/02:42:ac:1e:03:02"] = fakeVeth{"veth4", 22}
	k.veths["400/02:42:ac:1e:04:02"] = fakeVeth{"vethd", 23}
	ports := nat.PortMap{
		"80/tcp": {{HostIP: "0.0.0.0", HostPort: "8080"}, {HostIP: "::", HostPort: "8080"}},
		"53/udp": {{HostIP: "", HostPort: "5353"}},
		"81/tcp": {{HostIP: "2001:db8::5", HostPort: "8081"}},
		"82/tcp": {{HostIP: "fe80::1%eth0", HostPort: "8082"}},
	}
	ctr := func(name string, pid int, net, addr, addr6, m string, p nat.PortMap) container.InspectResponse {
		c := runningContainer(name, pid, nil, p, attach{net: net, addr: addr, mac: m})
		c.NetworkSettings.Networks[net].GlobalIPv6Address = addr6
		c.NetworkSettings.Networks[net].GlobalIPv6PrefixLen = 64
		return c
	}
	ctrs := []container.InspectResponse{
		ctr("a", 100, "v6net", "172.30.1.2", "fd00:251::2", "02:42:ac:1e:01:02", ports),
		ctr("b", 200, "v6nogw", "172.30.2.2", "fd00:252::2", "02:42:ac:1e:02:02", nil),
		ctr("c", 300, "v4net", "172.30.3.2", "", "02:42:ac:1e:03:02", nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "9080"}, {HostIP: "::", HostPort: "9080"}}}),
		ctr("d", 400, "disabled", "172.30.4.2", "fd00:254::2", "02:42:ac:1e:04:02", nil),
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range snap.Networks {
		got = append(got, fmt.Sprintf("%s %s %s %s %s host6=%s gw6mode=%s", n.Name, n.Subnet, n.Gateway, n.Subnet6, n.Gateway6, n.HostIPv6, n.GatewayModeIPv6))
	}
	want := []string{
		"disabled 172.30.4.0/24 172.30.4.1 invalid Prefix invalid IP host6=invalid IP gw6mode=nat",
		"v4net 172.30.3.0/24 172.30.3.1 invalid Prefix invalid IP host6=invalid IP gw6mode=nat",
		"v6lost 172.30.6.0/24 172.30.6.1 invalid Prefix invalid IP host6=invalid IP gw6mode=nat",
		"v6net 172.30.1.0/24 172.30.1.1 fd00:251::/64 fd00:251::1 host6=2001:db8::5 gw6mode=nat-unprotected",
		"v6nogw 172.30.2.0/24 172.30.2.1 fd00:252::/64 fd00:252::1 host6=invalid IP gw6mode=nat",
	}
	if !slices.Equal(got, want) {
		t.Errorf("networks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got = nil
	for _, e := range snap.Endpoints {
		got = append(got, fmt.Sprintf("%s %s %s %s", e.Container, e.Network, e.Addr, e.Addr6))
	}
	want = []string{
		"a v6net 172.30.1.2 fd00:251::2",
		"b v6nogw 172.30.2.2 fd00:252::2",
		"c v4net 172.30.3.2 invalid IP",
		"d disabled 172.30.4.2 invalid IP",
	}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got = nil
	for _, m := range snap.Ports {
		got = append(got, m.String())
	}
	want = []string{
		"8080->172.30.1.2:80/tcp",
		"8080->[fd00:251::2]:80/tcp",
		"[2001:db8::5]:8081->[fd00:251::2]:81/tcp",
		"9080->172.30.3.2:80/tcp",
		"5353->172.30.1.2:53/udp",
		"5353->[fd00:251::2]:53/udp",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ports:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st := snap.State()
	st.HostAddrs = []netip.Addr{ip("2001:db8::5")}
	if err := st.Validate(); err != nil {
		t.Errorf("the dual-stack state is refused: %v", err)
	}
	if len(snap.Warnings) != 0 {
		t.Errorf("warnings %q", snap.Warnings)
	}
	for _, m := range snap.Ports {
		if m.ContainerIP.Is6() && m.HostIP != netip.IPv6Unspecified() && m.HostIP != ip("2001:db8::5") {
			t.Errorf("%s: IPv6 mapping's host address %s, want :: or the binding's", m, m.HostIP)
		}
	}
}

// TestBuildRoutedIPv6: on a network whose IPv6 gateway mode is routed
// (and IPv4's nat), the IPv6 bindings publish the container's IPv6 ports
// only, without a host address or port, while the IPv4 ones keep their
// host ports; two containers may bind one host port there.
func TestBuildRoutedIPv6(t *testing.T) {
	nets := []network.Summary{
		dualStackNetwork("r6", 1, "172.30.1.0/24", "172.30.1.1", "fd00:251::/64", "fd00:251::1",
			map[string]string{optGatewayModeIPv6: "routed"}),
	}
	k := &fakeKernel{bridges: map[string]fakeBridge{"br-" + nets[0].ID[:12]: {index: 20}}, veths: map[string]fakeVeth{}}
	k.veths["100/02:42:ac:1e:01:02"] = fakeVeth{"veth6a", 20}
	k.veths["200/02:42:ac:1e:01:03"] = fakeVeth{"veth6b", 20}
	ctr := func(name string, pid int, addr, addr6, m string, p nat.PortMap) container.InspectResponse {
		c := runningContainer(name, pid, nil, p, attach{net: "r6", addr: addr, mac: m})
		c.NetworkSettings.Networks["r6"].GlobalIPv6Address = addr6
		c.NetworkSettings.Networks["r6"].GlobalIPv6PrefixLen = 64
		return c
	}
	ctrs := []container.InspectResponse{
		ctr("a", 100, "172.30.1.2", "fd00:251::2", "02:42:ac:1e:01:02", nat.PortMap{
			"80/tcp": {{HostIP: "0.0.0.0", HostPort: "8080"}, {HostIP: "::", HostPort: "8080"}},
			"53/udp": {{HostIP: "", HostPort: "5353"}},
		}),
		ctr("b", 200, "172.30.1.3", "fd00:251::3", "02:42:ac:1e:01:03", nat.PortMap{
			"80/tcp": {{HostIP: "::", HostPort: "8080"}},
		}),
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range snap.Ports {
		got = append(got, m.String())
		if m.ContainerIP.Is6() && (m.HostPort != 0 || m.HostIP.IsValid()) {
			t.Errorf("%s: a routed IPv6 binding took host %s port %d", m, m.HostIP, m.HostPort)
		}
	}
	want := []string{
		"0->[fd00:251::2]:80/tcp",
		"0->[fd00:251::3]:80/tcp",
		"8080->172.30.1.2:80/tcp",
		"0->[fd00:251::2]:53/udp",
		"5353->172.30.1.2:53/udp",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ports:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st := snap.State(); st.Validate() != nil {
		t.Errorf("the state is refused: %v", st.Validate())
	}
	if len(snap.Warnings) != 0 {
		t.Errorf("warnings %q", snap.Warnings)
	}
}

// TestBuildNAT64Label: on an IPv4-only network, a container labelled
// bpfnet.nat64=true gets its :: binding as a NAT64 mapping of its IPv4
// address beside the IPv4 one, and the state is valid; without the label
// (or with another value) the :: binding is left to docker-proxy, as on a
// routed network even with the label.
func TestBuildNAT64Label(t *testing.T) {
	nets := []network.Summary{
		bridgeNetwork("v4net", 1, "172.30.1.0/24", "172.30.1.1", nil),
		bridgeNetwork("routed", 2, "172.30.2.0/24", "172.30.2.1", map[string]string{optGatewayModeIPv4: "routed"}),
	}
	k := &fakeKernel{bridges: map[string]fakeBridge{}, veths: map[string]fakeVeth{}}
	for i, n := range nets {
		k.bridges["br-"+n.ID[:12]] = fakeBridge{index: 20 + i}
	}
	k.veths["100/02:42:ac:1e:01:02"] = fakeVeth{"vetha", 20}
	k.veths["200/02:42:ac:1e:01:03"] = fakeVeth{"vethb", 20}
	k.veths["300/02:42:ac:1e:01:04"] = fakeVeth{"vethc", 20}
	k.veths["400/02:42:ac:1e:02:02"] = fakeVeth{"vethd", 21}
	bind := func(port string) nat.PortMap {
		return nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: port}, {HostIP: "::", HostPort: port}}}
	}
	yes := map[string]string{LabelNAT64: "true"}
	ctrs := []container.InspectResponse{
		runningContainer("a", 100, yes, bind("8080"), attach{net: "v4net", addr: "172.30.1.2", mac: "02:42:ac:1e:01:02"}),
		runningContainer("b", 200, nil, bind("8081"), attach{net: "v4net", addr: "172.30.1.3", mac: "02:42:ac:1e:01:03"}),
		runningContainer("c", 300, map[string]string{LabelNAT64: "yes"}, bind("8082"), attach{net: "v4net", addr: "172.30.1.4", mac: "02:42:ac:1e:01:04"}),
		runningContainer("d", 400, yes, bind("8083"), attach{net: "routed", addr: "172.30.2.2", mac: "02:42:ac:1e:02:02"}),
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range snap.Ports {
		got = append(got, fmt.Sprintf("%s nat64=%v", m, m.IsNAT64()))
	}
	want := []string{
		"8080->172.30.1.2:80/tcp nat64=false",
		"[::]:8080->172.30.1.2:80/tcp nat64=true",
		"8081->172.30.1.3:80/tcp nat64=false",
		"8082->172.30.1.4:80/tcp nat64=false",
		"0->172.30.2.2:80/tcp nat64=false",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ports:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st := snap.State()
	if err := st.Validate(); err != nil {
		t.Errorf("the state with a NAT64 mapping is refused: %v", err)
	}
}
