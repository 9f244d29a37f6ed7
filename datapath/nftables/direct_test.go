// SPDX-License-Identifier: Apache-2.0

package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
)

// TestRenderDirectAccess: the raw prerouting chain accepts a network's
// trusted host interfaces before its drop of direct access, has no such
// drop with --allow-direct-routing, and a network with host_ipv4 leaves
// with `snat to` that address.
func TestRenderDirectAccess(t *testing.T) {
	s := state(t, "8080:172.30.0.2:80")
	s.Networks[0].TrustedHostInterfaces = "eth1"
	s.Networks = append(s.Networks, datapath.Network{Name: "net1", Bridge: "br1", Subnet: netip.MustParsePrefix("172.30.1.0/24"),
		Gateway: netip.MustParseAddr("172.30.1.1"), Masquerade: true, HostIPv4: netip.MustParseAddr("192.0.2.9")})
	chainOf := func(s datapath.State, name string) []string {
		t.Helper()
		p, err := rules.New(s)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := render(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range rs.chains {
			if c.name == name {
				return c.rules
			}
		}
		t.Fatalf("no chain %s", name)
		return nil
	}
	want := []string{
		`iifname "eth1" ip daddr 172.30.0.2 counter accept comment "ACCEPT DIRECT ACCESS"`,
		`iifname != "br0" ip daddr 172.30.0.2 counter drop comment "DROP DIRECT ACCESS"`,
	}
	if got := chainOf(s, "raw-PREROUTING"); !slices.Equal(got, want) {
		t.Errorf("raw-PREROUTING:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	wantSNAT := []string{`oifname != "br1" ip saddr 172.30.1.0/24 counter snat to 192.0.2.9 comment "MASQUERADE"`}
	if got := chainOf(s, "nat-postrouting-out__br1"); !slices.Equal(got, wantSNAT) {
		t.Errorf("nat-postrouting-out__br1:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantSNAT, "\n"))
	}
	wantMasq := []string{`oifname != "br0" ip saddr 172.30.0.0/24 counter masquerade comment "MASQUERADE"`}
	if got := chainOf(s, "nat-postrouting-out__br0"); !slices.Equal(got, wantMasq) {
		t.Errorf("nat-postrouting-out__br0:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantMasq, "\n"))
	}
	s.AllowDirectRouting = true
	if got := chainOf(s, "raw-PREROUTING"); len(got) != 0 {
		t.Errorf("raw-PREROUTING with --allow-direct-routing:\n%s\nwant it empty", strings.Join(got, "\n"))
	}
	s.Networks[0].TrustedHostInterfaces = `eth"1`
	p, err := rules.New(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := render(p); err == nil {
		t.Error(`trusted interface eth"1: no error`)
	}
}
