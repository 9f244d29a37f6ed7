// SPDX-License-Identifier: Apache-2.0

package docker

// A dual-stack network end to end on a dockerd of the test's own:
// docker network create --ipv6 with a subnet of each family, a container
// publishing ports on both, and the State Source builds from it. The
// traffic of IPv6 published ports waits for the eBPF IPv6 datapath
// (issue 14): this test asserts the conversion only.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

func TestDockerIPv6StateE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	e := &e2e{t: t, notify: make(chan struct{}, 1)}
	t.Cleanup(e.leftoverCheck())
	sweepStale(t)
	e.topo = lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	e.ext = e.topo.Externals[0]
	e.d = startDockerd(t, e.topo.Host, e.topo.Bridges[0].Name, e.topo.Prefix)
	e.d.ImportImage()
	var err error
	e.src, err = New("unix://" + e.d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.src.Close() })
	e.src.Logger = slog.New(testLogger(t).Handler())
	ctx := context.Background()

	// Docker 20.10 takes --ipv6 per network without the daemon's
	// "ipv6": true; the v6 subnet is given, as the daemon has no
	// default IPv6 pool there.
	create := func(name, subnet, subnet6 string, opts map[string]string) {
		t.Helper()
		_, err := e.d.cli.NetworkCreate(ctx, name, network.CreateOptions{
			Driver: "bridge", EnableIPv6: ptr(subnet6 != ""), Options: opts,
			IPAM: &network.IPAM{Config: ipamConfigs(subnet, subnet6)},
		})
		if err != nil {
			t.Fatalf("creating network %s: %v", name, err)
		}
	}
	create("v6net", "172.30.40.0/24", "fd00:251::/64", map[string]string{optGatewayModeIPv6: "nat-unprotected"})
	create("v4net", "172.30.41.0/24", "", nil)

	web := &isoCtr{name: "web6", net: "v6net", publish: []string{"8080:80", "[::]:8081:81", "0.0.0.0:8082:82/udp"}}
	isoRun(e, web)
	plain := &isoCtr{name: "plain4", net: "v4net", publish: []string{"9080:80"}}
	isoRun(e, plain)
	es := e.d.Inspect(web.id).NetworkSettings.Networks["v6net"]
	addr6 := parseAddr(es.GlobalIPv6Address)
	if !netip.MustParsePrefix("fd00:251::/64").Contains(addr6) {
		t.Fatalf("web6's GlobalIPv6Address %q is not in fd00:251::/64", es.GlobalIPv6Address)
	}
	t.Logf("dockerd's bindings of web6: %v", e.d.Inspect(web.id).NetworkSettings.Ports)

	var st datapath.State
	if err := e.topo.Host.Do(func() error {
		var err error
		st, err = e.src.State(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	nets := map[string]datapath.Network{}
	for _, n := range st.Networks {
		nets[n.Name] = n
	}
	v6, v4 := nets["v6net"], nets["v4net"]
	if v6.Subnet6 != netip.MustParsePrefix("fd00:251::/64") || v6.Gateway6 != netip.MustParseAddr("fd00:251::1") || v6.GatewayModeIPv6 != datapath.GatewayNATUnprotected {
		t.Errorf("v6net: subnet6 %s gateway6 %s mode6 %s, want fd00:251::/64 fd00:251::1 nat-unprotected", v6.Subnet6, v6.Gateway6, v6.GatewayModeIPv6)
	}
	// Its positive twin: the IPv4-only network has no IPv6 half.
	if v4.Name != "v4net" || v4.Subnet6.IsValid() || v4.Gateway6.IsValid() {
		t.Errorf("v4net: %+v, want it served without IPv6", v4)
	}
	// The bridge carries the gateway Docker reports.
	if out, err := e.topo.Host.Command(ctx, "ip", "-6", "addr", "show", "dev", v6.Bridge).CombinedOutput(); err != nil || !strings.Contains(string(out), "fd00:251::1/64") {
		t.Errorf("bridge %s: %v %s, want fd00:251::1/64 on it", v6.Bridge, err, out)
	}
	for _, ep := range st.Endpoints {
		switch ep.Container {
		case "web6":
			if ep.Addr != web.addr || ep.Addr6 != addr6 {
				t.Errorf("web6: %s %s, want %s %s", ep.Addr, ep.Addr6, web.addr, addr6)
			}
		case "plain4":
			if ep.Addr != plain.addr || ep.Addr6.IsValid() {
				t.Errorf("plain4: %s %s, want %s and no IPv6 address", ep.Addr, ep.Addr6, plain.addr)
			}
		}
	}
	var got []string
	for _, m := range st.Ports {
		got = append(got, m.String())
	}
	slices.Sort(got)
	// -p 8080:80 is Docker's two bindings on a network with IPv6,
	// 0.0.0.0 and :: (Docker 20.10 lists "0.0.0.0" and "::"); [::]:8081
	// is IPv6 only, 0.0.0.0:8082 IPv4 only, and the IPv4-only network's
	// container gets no IPv6 mapping.
	want := []string{
		fmt.Sprintf("8080->%s:80/tcp", web.addr),
		fmt.Sprintf("8080->[%s]:80/tcp", addr6),
		fmt.Sprintf("8081->[%s]:81/tcp", addr6),
		fmt.Sprintf("8082->%s:82/udp", web.addr),
		fmt.Sprintf("9080->%s:80/tcp", plain.addr),
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ports:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st.Uplinks = []datapath.Uplink{{Name: e.ext.Uplink}}
	if err := st.Validate(); err != nil {
		t.Errorf("the state is refused: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func ipamConfigs(subnets ...string) []network.IPAMConfig {
	var out []network.IPAMConfig
	for _, s := range subnets {
		if s != "" {
			out = append(out, network.IPAMConfig{Subnet: s})
		}
	}
	return out
}
