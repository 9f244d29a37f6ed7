// SPDX-License-Identifier: Apache-2.0

package docker

// A dual-stack network end to end on a dockerd of the test's own:
// docker network create --ipv6 with a subnet of each family, a container
// publishing ports on both, and the State Source builds from it; then
// that state on the eBPF datapath and on each comparator (iptables,
// nftables), with IPv6 traffic from an external host; under eBPF, the
// host's own IPv6 sockets reach the published port too ([::1], through
// the cgroup sock programs).

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/iptables"
	"github.com/bpfnet/bpfnet/datapath/nftables"
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
	create("v6net", "172.30.40.0/24", "fd00:251::/64", map[string]string{optHostIPv6: "fd00:99::1"})
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
	if v6.Subnet6 != netip.MustParsePrefix("fd00:251::/64") || v6.Gateway6 != netip.MustParseAddr("fd00:251::1") || v6.HostIPv6 != netip.MustParseAddr("fd00:99::1") {
		t.Errorf("v6net: subnet6 %s gateway6 %s host_ipv6 %s, want fd00:251::/64 fd00:251::1 fd00:99::1", v6.Subnet6, v6.Gateway6, v6.HostIPv6)
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
		t.Fatalf("the state is refused: %v", err)
	}

	// The external host and the uplink get IPv6 addresses; the external
	// host routes the network's IPv6 subnet through the host only for
	// the direct-access probe.
	for _, c := range []struct {
		ns   *lab.Namespace
		args []string
	}{
		{e.topo.Host, []string{"-6", "addr", "add", "fd00:99::1/64", "dev", e.ext.Uplink, "nodad"}},
		{&e.ext.Namespace, []string{"-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"}},
		{&e.ext.Namespace, []string{"-6", "route", "add", "fd00:251::/64", "via", "fd00:99::1"}},
	} {
		if out, err := c.ns.Command(ctx, "ip", c.args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", c.args, err, out)
		}
	}
	isoServe(t, &e.ext.Namespace, "[fd00:99::2]:9000", "external")
	for _, name := range []string{"ebpf", "iptables", "nftables"} {
		t.Run(name, func(t *testing.T) { ipv6Traffic(t, e, name, st, web, addr6) })
	}
}

// ipv6Traffic applies st with the comparator name in the dockerd's
// namespace and tries its IPv6 half from the external host and from web:
// the published ports answer with the client's address kept, the
// container's address is dropped from outside, egress is masqueraded.
func ipv6Traffic(t *testing.T, e *e2e, name string, st datapath.State, web *isoCtr, addr6 netip.Addr) {
	var dp datapath.Datapath
	var err error
	// Apply and Remove run in the host namespace: the comparators are
	// given it, the eBPF datapath takes the calling thread's.
	inHost := func(fn func() error) error { return fn() }
	switch name {
	case "ebpf":
		pin := filepath.Join("/sys/fs/bpf", pinPrefix+e.topo.Prefix+"-v6")
		t.Cleanup(func() { os.RemoveAll(pin) })
		inHost = e.topo.Host.Do
		err = inHost(func() error {
			var err error
			dp, err = datapath.NewEBPF(datapath.Options{PinPath: pin, HostSockets: true})
			return err
		})
	case "iptables":
		dp, err = iptables.New(iptables.Options{Netns: e.topo.Host.Path})
	case "nftables":
		dp, err = nftables.New(nftables.Options{Netns: e.topo.Host.Path})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := inHost(dp.Remove); err != nil {
			t.Errorf("removing the %s datapath: %v", name, err)
		}
	})
	if err := inHost(func() error { return dp.Apply(context.Background(), st) }); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	greet := func(ns *lab.Namespace, to string) ([]string, error) {
		var line string
		var err error
		// dockerd's sockets that reserve the ports accept until the
		// rules are in: a few tries.
		for i := 0; i < 20; i++ {
			if line, err = ns.Greeting(to); err == nil && len(strings.Fields(line)) == 2 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return strings.Fields(line), err
	}
	// (web6 serves port 80 only: [::]:8081 leads to a closed port.)
	if f, err := greet(&e.ext.Namespace, "[fd00:99::1]:8080"); err != nil || len(f) != 2 || f[1] != "web6" || !strings.HasPrefix(f[0], "[fd00:99::2]:") {
		t.Errorf("[fd00:99::1]:8080 from outside: %q %v, want web6 seeing the client [fd00:99::2]", f, err)
	}
	// The IPv4 binding of the same port, in the same run.
	if f, err := greet(&e.ext.Namespace, netip.AddrPortFrom(addr4(e.ext.HostAddr), 8080).String()); err != nil || len(f) != 2 || f[1] != "web6" ||
		!strings.HasPrefix(f[0], addr4(e.ext.Addr).String()+":") {
		t.Errorf("IPv4 8080 from outside: %q %v", f, err)
	}
	// The container's IPv6 address from outside: dropped (DROP DIRECT
	// ACCESS), where the published port above answers.
	if line, err := e.ext.Greeting(netip.AddrPortFrom(addr6, 80).String()); err == nil || !lab.IsTimeout(err) {
		t.Errorf("[%s]:80 from outside: %q %v, want the SYN dropped", addr6, line, err)
	}
	// Egress over IPv6, SNATed to host_ipv6 (the uplink's address).
	if f, err := greet(web.ns, "[fd00:99::2]:9000"); err != nil || len(f) != 2 || !strings.HasPrefix(f[0], "[fd00:99::1]:") {
		t.Errorf("web6 to the outside over IPv6: %q %v, want seen as [fd00:99::1]", f, err)
	}
	if name != "ebpf" {
		return
	}
	// The host's own IPv6 sockets, with nothing listening on the host
	// (no docker-proxy): the sock programs take them to web6, from the
	// bridge's address. Its twin, a port not published, finds nothing.
	for _, to := range []string{"[::1]:8080", "[fd00:99::1]:8080"} {
		if f, err := greet(e.topo.Host, to); err != nil || len(f) != 2 || f[1] != "web6" || !strings.HasPrefix(f[0], "[fd00:251::1]:") {
			t.Errorf("%s from the host: %q %v, want web6 seeing the bridge's [fd00:251::1]", to, f, err)
		}
	}
	if line, err := e.topo.Host.Greeting("[::1]:8090"); err == nil {
		t.Errorf("[::1]:8090 (not published) from the host answered %q", line)
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
