// SPDX-License-Identifier: Apache-2.0

package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
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
	}
	for _, spec := range []string{"8080:172.30.0.2:80,allow=192.0.2.7", "8081:172.30.0.2:80,allow=198.51.100.0/24",
		"8082:172.30.0.2:81,allow=192.0.2.7", "8083:172.30.0.2:81"} {
		m, err := datapath.ParsePublish(spec)
		if err != nil {
			t.Fatal(err)
		}
		s.Ports = append(s.Ports, m...)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// routedIsolatedWant are the chains of routedIsolatedState's rules of
// its own: the routed port's union list, none for the port a binding
// opens, and the isolated bridge's cut-off from the host.
var routedIsolatedWant = map[string][]string{
	allowChainName: {`iifname != "br0" oifname "br0" ip daddr 172.30.0.2 tcp dport 80 ct state new ip saddr != { 192.0.2.7, 198.51.100.0/24 } counter drop comment "PORT ALLOWLIST"`},
	cutOffInName:   {`iifname "brI" counter drop comment "ISOLATED FROM HOST"`},
	cutOffOutName:  {`oifname "brI" counter drop comment "HOST TO ISOLATED"`},
}

func TestNftablesRoutedAllowAndIsolated(t *testing.T) {
	w, err := want(routedIsolatedState(t))
	if err != nil {
		t.Fatal(err)
	}
	for c, rules := range routedIsolatedWant {
		if !slices.Equal(w[c], rules) {
			t.Errorf("chain %s:\n%s\nwant\n%s", c, strings.Join(w[c], "\n"), strings.Join(rules, "\n"))
		}
	}
	// The positive twin: an internal network that is not isolated keeps
	// the host; the chains stay, empty.
	s := routedIsolatedState(t)
	s.Networks[1].GatewayMode = datapath.GatewayNAT
	if w, err = want(s); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{cutOffInName, cutOffOutName} {
		if rules, ok := w[c]; !ok || len(rules) != 0 {
			t.Errorf("internal network: chain %s holds %v (present %v), want it empty", c, rules, ok)
		}
	}
}

// TestLabNftablesRoutedAllowAndIsolated: nft takes the table, and lists
// it back as written.
func TestLabNftablesRoutedAllowAndIsolated(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := fmt.Sprintf("bpfnet-nftra-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	for _, br := range []string{"br0", "brI"} {
		if out, err := exec.Command("ip", "netns", "exec", name, "ip", "link", "add", br, "type", "bridge").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	dp, err := New(Options{Netns: "/run/netns/" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	s := routedIsolatedState(t)
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	got, err := dp.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, err := want(s)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(w) {
		t.Errorf("table holds\n%v\nwant\n%v", got, w)
	}
	for c, rules := range routedIsolatedWant {
		if !slices.Equal(got[c], rules) {
			t.Errorf("chain %s holds\n%s\nwant\n%s", c, strings.Join(got[c], "\n"), strings.Join(rules, "\n"))
		}
	}
}
