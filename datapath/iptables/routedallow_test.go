// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// routedIsolatedState has a routed network (br0) whose container port 80
// has two bindings with a list each and port 81 one with a list and one
// without, and an isolated network (brI).
func routedIsolatedState(t *testing.T) datapath.State {
	s := datapath.State{
		Networks: []datapath.Network{
			{Name: "net0", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"),
				Masquerade: true, GatewayMode: datapath.GatewayRouted},
			{Name: "iso", Bridge: "brI", Subnet: netip.MustParsePrefix("172.30.2.0/24"), Gateway: netip.MustParseAddr("172.30.2.1"),
				Internal: true, GatewayMode: datapath.GatewayIsolated},
		},
		Ports: publish(t,
			"8080:172.30.0.2:80,allow=192.0.2.7",
			"8081:172.30.0.2:80,allow=198.51.100.0/24",
			"8082:172.30.0.2:81,allow=192.0.2.7",
			"8083:172.30.0.2:81"),
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// routedIsolatedRules are rules of routedIsolatedState as iptables-save
// prints them: the routed port's union list in DOCKER-USER, none for the
// port a binding opens, and the isolated bridge's INPUT and OUTPUT drops.
var routedIsolatedRules = []string{
	"-A INPUT -i brI -m comment --comment bpfnet -j DROP",
	"-A OUTPUT -o brI -m comment --comment bpfnet -j DROP",
	"-A BPFNET-DOCKER-USER -s 192.0.2.7/32 -d 172.30.0.2/32 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW -j RETURN",
	"-A BPFNET-DOCKER-USER -s 198.51.100.0/24 -d 172.30.0.2/32 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW -j RETURN",
	"-A BPFNET-DOCKER-USER -d 172.30.0.2/32 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW -j DROP",
	"-A BPFNET-DOCKER-USER -j RETURN",
}

func TestIptablesRoutedAllowAndIsolated(t *testing.T) {
	o := Options{}.withDefaults()
	tables, err := o.tables(routedIsolatedState(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range append(slices.Clone(tables["filter"].builtin), tables["filter"].rules...) {
		got = append(got, "-A "+r.chain+" "+r.spec)
	}
	for _, w := range routedIsolatedRules {
		if !slices.Contains(got, w) {
			t.Errorf("filter table lacks %s:\n%s", w, strings.Join(got, "\n"))
		}
	}
	for _, r := range got {
		if strings.Contains(r, "--dport 81 -m conntrack --ctstate NEW") {
			t.Errorf("port 81, which a binding without a list opens, has an allowlist rule: %s", r)
		}
	}
	// The positive twin: an internal network that is not isolated keeps
	// the host.
	s := routedIsolatedState(t)
	s.Networks[1].GatewayMode = datapath.GatewayNAT
	tables, err = o.tables(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range tables["filter"].builtin {
		if r.chain == "INPUT" || r.chain == "OUTPUT" {
			t.Errorf("internal network: rule in %s: %s", r.chain, r.spec)
		}
	}
}

// TestIptablesLabRoutedAllowAndIsolated: iptables takes the rules, and
// iptables-save prints them back as written.
func TestIptablesLabRoutedAllowAndIsolated(t *testing.T) {
	requireRoot(t)
	lab.KeepHostIptables(t)
	topo := lab.Setup(t, lab.Config{})
	dp, err := New(Options{Netns: topo.Host.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	s := routedIsolatedState(t)
	for _, br := range []string{"br0", "brI"} {
		if _, err := topo.Host.Run(context.Background(), "ip", "link", "add", br, "type", "bridge"); err != nil {
			t.Fatal(err)
		}
	}
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	want, err := dp.opts.tables(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := dp.opts.parseSave("filter", lab.IptablesSave(t, topo.Host)); fmt.Sprint(got) != fmt.Sprint(want["filter"]) {
		t.Errorf("filter table holds\n%+v\nwant\n%+v", got, want["filter"])
	}
	save := lab.IptablesSave(t, topo.Host, "-t", "filter")
	for _, w := range routedIsolatedRules {
		if !strings.Contains(save, w+"\n") {
			t.Errorf("filter table lacks %s:\n%s", w, save)
		}
	}
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	if save := lab.IptablesSave(t, topo.Host, "-t", "filter"); strings.Contains(save, "bpfnet") || strings.Contains(save, "BPFNET") {
		t.Errorf("rules left after Remove:\n%s", save)
	}
}
