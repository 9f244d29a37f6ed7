// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/lab"
)

// TestRunRoutedPublishAllow: on a routed network (--bridge
// NAME,gateway_mode=routed), --publish ...,allow= limits the container
// port reached at the container's address: one port whose list leaves the
// client out times it out, one whose list names it lets it in, and
// `bpfnet ports` lists both as routed, under the container's address and
// port, with their lists, denials and connections.
func TestRunRoutedPublishAllow(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
	c0, ext := topo.Containers[0], topo.Externals[0]
	h, err := ext.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: topo.Bridges[0].Subnet, Gw: ext.HostAddr}); err != nil {
		t.Fatal(err)
	}
	greetServer(t, &c0.Namespace, c0.Addr.String()+":80", false)
	greetServer(t, &c0.Namespace, c0.Addr.String()+":81", false)
	pin := pinPath(t, topo, bin, "bpfnet-routedallow-")
	startRun(t, topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin, "--metrics-addr", "",
		"--bridge", topo.Bridges[0].Name+",gateway_mode=routed", "--uplink", ext.Uplink,
		"--publish", fmt.Sprintf("8080:%s:80,allow=192.0.2.0/24", c0.Addr),
		"--publish", fmt.Sprintf("8081:%s:81,allow=%s/32", c0.Addr, ext.Addr)))

	if got, err := ext.Greeting(c0.Addr.String() + ":80"); err == nil || !lab.IsTimeout(err) {
		t.Errorf("port 80, client not in its list: %q %v, want a timeout", got, err)
	}
	if got, err := ext.Greeting(c0.Addr.String() + ":81"); err != nil || got != ext.Addr.String() {
		t.Errorf("port 81, client in its list: %q %v, want it let through", got, err)
	}

	out, err := topo.Host.Command(context.Background(), bin, "ports", "--json", "--pin-path", pin).Output()
	if err != nil {
		t.Fatalf("bpfnet ports --json: %v", err)
	}
	var ports []portJSON
	if err := json.Unmarshal(out, &ports); err != nil {
		t.Fatal(err)
	}
	got := map[uint16]portJSON{}
	for _, p := range ports {
		if p.HostIP != c0.Addr.String() || !p.Routed {
			t.Errorf("port %+v: want it routed, under %s", p, c0.Addr)
		}
		got[p.HostPort] = p
	}
	if p := got[80]; strings.Join(p.Allow, ",") != "192.0.2.0/24" || p.Denied < 1 || p.Connections != 0 {
		t.Errorf("port 80: %+v, want its list, a denial, no connection", p)
	}
	if p := got[81]; strings.Join(p.Allow, ",") != ext.Addr.String()+"/32" || p.Denied != 0 || p.Connections != 1 {
		t.Errorf("port 81: %+v, want the client's /32, no denial, a connection", p)
	}
	out, err = topo.Host.Command(context.Background(), bin, "ports", "--pin-path", pin).Output()
	if err != nil {
		t.Fatalf("bpfnet ports: %v", err)
	}
	if n := strings.Count(string(out), " routed "); n != 2 {
		t.Errorf("bpfnet ports shows %d routed ports, want 2:\n%s", n, out)
	}
}
