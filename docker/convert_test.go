// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"net/netip"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestBuildAllowForeignSource: the label bpfnet.allow-foreign-source=true
// sets the exception on every endpoint of its container; without it, or
// with another value, a container's endpoints have none.
func TestBuildAllowForeignSource(t *testing.T) {
	nets, ctrs, k := fixture()
	labelled := map[string]bool{}
	for i, c := range ctrs {
		switch c.Name {
		case "/web":
			c.Config.Labels[LabelAllowForeignSource] = "true"
			labelled["web"] = true
		case "/prio":
			c.Config = &container.Config{Labels: map[string]string{LabelAllowForeignSource: "false"}}
		case "/zz-clash":
			c.Config = &container.Config{Labels: map[string]string{LabelAllowForeignSource: "yes please"}}
		}
		ctrs[i] = c
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, e := range snap.Endpoints {
		seen[e.Container]++
		if e.AllowForeignSource != labelled[e.Container] {
			t.Errorf("endpoint %s on %s: AllowForeignSource %v, want %v", e.Container, e.Network, e.AllowForeignSource, labelled[e.Container])
		}
	}
	for _, c := range []string{"web", "prio", "zz-clash", "db"} {
		if seen[c] == 0 {
			t.Errorf("no endpoint of %s: the test sees nothing of it", c)
		}
	}
	if seen["web"] != 2 {
		t.Errorf("web has %d endpoints, want its 2", seen["web"])
	}
}

// TestBuildDirectOptions: trusted_host_interfaces and host_ipv4 reach the
// network as given; a host_ipv4 that is no IPv4 address leaves the
// network out; a network without them has neither.
func TestBuildDirectOptions(t *testing.T) {
	nets, ctrs, k := fixture()
	for i, n := range nets {
		switch n.Name {
		case "appnet":
			n.Options = map[string]string{optTrustedIfaces: "eth1:wg0", optHostIPv4: "192.0.2.9"}
		case "aaa":
			n.Options = map[string]string{optHostIPv4: "fe80::1"}
		}
		nets[i] = n
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]datapath.Network{}
	for _, n := range snap.Networks {
		got[n.Name] = n.Network
	}
	app, ok := got["appnet"]
	if !ok {
		t.Fatal("appnet left out")
	}
	if app.TrustedHostInterfaces != "eth1:wg0" || app.HostIPv4 != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("appnet: trusted %q, host_ipv4 %s; want eth1:wg0, 192.0.2.9", app.TrustedHostInterfaces, app.HostIPv4)
	}
	if _, ok := got["aaa"]; ok {
		t.Error("aaa, whose host_ipv4 is IPv6, is in the snapshot")
	}
	if b, ok := got["bridge"]; !ok || b.TrustedHostInterfaces != "" || b.HostIPv4.IsValid() {
		t.Errorf("bridge: %+v, want no trusted interfaces and no host_ipv4", b)
	}
}
