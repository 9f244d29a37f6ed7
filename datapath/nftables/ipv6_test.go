// SPDX-License-Identifier: Apache-2.0

package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
)

// dualState is state() with net0 dual-stack (fd00:30::/64).
func dualState(t *testing.T, specs ...string) datapath.State {
	s := state(t, specs...)
	s.Networks[0].Subnet6 = netip.MustParsePrefix("fd00:30::/64")
	s.Networks[0].Gateway6 = netip.MustParseAddr("fd00:30::1")
	return s
}

// TestRenderIPv6 compares the ip6 table of a dual-stack state with
// Docker 29's ip6 docker-bridges (moby nftabler golden file
// hairpin=true,internal=false,icc=true,masq=true,snat=false,gwm=nat,
// bindlh=false__ip6.golden, with its container at fd00:30::2), plus a
// port on ::1 and one with an allowlist that has no IPv6 prefix.
func TestRenderIPv6(t *testing.T) {
	s := dualState(t, "8080:172.30.0.2:80", "[::]:8080:[fd00:30::2]:80", "[::1]:8081:[fd00:30::2]:81/udp",
		"[::]:8082:[fd00:30::2]:82,allow=192.0.2.0/24")
	p, err := rules.NewFamily(s, rules.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := render(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.text("docker-bridges"); got != golden6 {
		t.Errorf("ip6 table\n%s\nwant\n%s", got, golden6)
	}
	// The ip table of the same state has the IPv4 port only.
	p4, err := rules.New(s)
	if err != nil {
		t.Fatal(err)
	}
	rs4, err := render(p4)
	if err != nil {
		t.Fatal(err)
	}
	text4 := rs4.text("docker-bridges")
	if !strings.HasPrefix(text4, "table ip docker-bridges {") || strings.Contains(text4, "fd00:") || !strings.Contains(text4, "dnat to 172.30.0.2:80") {
		t.Errorf("ip table\n%s", text4)
	}
	// Routed IPv6: ICMPv6 accepted, as Docker 29's "meta l4proto
	// ipv6-icmp ... accept comment \"ICMP\"".
	s.Networks[0].GatewayModeIPv6 = datapath.GatewayRouted
	p, _ = rules.NewFamily(s, rules.IPv6)
	rs, _ = render(p)
	if got := rs.text("t"); !strings.Contains(got, "\t\tmeta l4proto ipv6-icmp counter accept comment \"ICMP\"\n") {
		t.Errorf("routed ip6 table has no ICMPv6 rule:\n%s", got)
	}
}

const golden6 = `table ip6 docker-bridges {
	map filter-forward-in-jumps {
		type ifname : verdict
		elements = { "br0" : jump filter-forward-in__br0 }
	}
	map filter-forward-out-jumps {
		type ifname : verdict
		elements = { "br0" : jump filter-forward-out__br0 }
	}
	map nat-postrouting-in-jumps {
		type ifname : verdict
		elements = { "br0" : jump nat-postrouting-in__br0 }
	}
	map nat-postrouting-out-jumps {
		type ifname : verdict
		elements = { "br0" : jump nat-postrouting-out__br0 }
	}
	chain filter-FORWARD {
		type filter hook forward priority filter; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}
	chain nat-OUTPUT {
		type nat hook output priority -100; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}
	chain nat-POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}
	chain nat-PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}
	chain user-forward-allowlists {
		type filter hook forward priority filter - 1; policy accept;
		ip6 daddr fd00:30::2 tcp dport 82 ct state new ct status dnat ct original proto-dst 8082 counter drop comment "PORT ALLOWLIST"
	}
	chain user-input-isolated {
		type filter hook input priority filter; policy accept;
	}
	chain user-output-isolated {
		type filter hook output priority filter; policy accept;
	}
	chain nat-prerouting-and-output {
		ip6 saddr != fe80::/10 tcp dport 8080 counter dnat to [fd00:30::2]:80 comment "DNAT"
		ip6 saddr != fe80::/10 ip6 daddr ::1 udp dport 8081 counter dnat to [fd00:30::2]:81 comment "DNAT"
		ip6 saddr != fe80::/10 tcp dport 8082 counter dnat to [fd00:30::2]:82 comment "DNAT"
	}
	chain raw-PREROUTING {
		type filter hook prerouting priority raw; policy accept;
		iifname != "br0" ip6 daddr fd00:30::2 counter drop comment "DROP DIRECT ACCESS"
	}
	chain filter-forward-in__br0 {
		ct state established,related counter accept comment "ESTABLISHED"
		iifname "br0" counter accept comment "ICC"
		ip6 daddr fd00:30::2 tcp dport 80 counter accept comment "PUBLISHED"
		ip6 daddr fd00:30::2 udp dport 81 counter accept comment "PUBLISHED"
		ip6 daddr fd00:30::2 tcp dport 82 counter accept comment "PUBLISHED"
		counter drop comment "UNPUBLISHED PORT DROP"
	}
	chain filter-forward-out__br0 {
		ct state established,related counter accept comment "ESTABLISHED"
		counter accept comment "OUTGOING"
	}
	chain nat-postrouting-in__br0 {
		fib saddr type local counter masquerade comment "MASQUERADE FROM HOST"
		ip6 saddr fd00:30::2 ip6 daddr fd00:30::2 tcp dport 80 counter masquerade comment "MASQ TO OWN PORT"
		ip6 saddr fd00:30::2 ip6 daddr fd00:30::2 udp dport 81 counter masquerade comment "MASQ TO OWN PORT"
		ip6 saddr fd00:30::2 ip6 daddr fd00:30::2 tcp dport 82 counter masquerade comment "MASQ TO OWN PORT"
	}
	chain nat-postrouting-out__br0 {
		oifname != "br0" ip6 saddr fd00:30::/64 counter masquerade comment "MASQUERADE"
	}
}
`

// TestLabApplyPublishRemoveIPv6: the ip6 table is written with the ip
// one and reads back as its rendering; an IPv6 port published and
// unpublished alone changes only its rules; the ip6 table goes when the
// state has no IPv6 left, and Remove deletes both tables and nothing
// else.
func TestLabApplyPublishRemoveIPv6(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := fmt.Sprintf("bpfnet-nft6-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ns := "/run/netns/" + name
	nft := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", name, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "ip", "link", "add", "br0", "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	nft("add table ip6 foreign; add chain ip6 foreign c; add rule ip6 foreign c counter accept")
	dp, err := New(Options{Netns: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	check := func(s datapath.State) {
		t.Helper()
		got, err := dp.Rules(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		w, err := want(s)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("tables hold\n%v\nwant\n%v", got, w)
		}
	}
	specs := []string{"8080:172.30.0.2:80", "[::]:8080:[fd00:30::2]:80", "[::1]:8081:[fd00:30::2]:81/udp"}
	s := dualState(t, specs...)
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	check(s)
	if got := dp.mustRules(t)["ip6 nat-prerouting-and-output"]; len(got) != 2 || !strings.Contains(got[0], "dnat to [fd00:30::2]:80") {
		t.Errorf("ip6 DNAT chain %q", got)
	}
	m, _ := datapath.ParsePublish("[::]:9000:[fd00:30::3]:90")
	if err := dp.PublishPorts(m...); err != nil {
		t.Fatal(err)
	}
	check(dualState(t, append(specs, "[::]:9000:[fd00:30::3]:90")...))
	if err := dp.UnpublishPorts(m...); err != nil {
		t.Fatal(err)
	}
	check(s)
	// A bad state changes nothing, in either table.
	before := nft("list", "ruleset")
	bad := dualState(t, "[::]:8080:[fd00:30::2]:80", "[::]:8080:[fd00:30::3]:80")
	if err := dp.Apply(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "already published") {
		t.Errorf("Apply of a port taken twice: %v", err)
	}
	if after := nft("list", "ruleset"); after != before {
		t.Errorf("a refused state changed the ruleset:\n%s\nwant\n%s", after, before)
	}
	// An IPv4-only state: no ip6 table of ours.
	if err := dp.Apply(context.Background(), state(t, "8080:172.30.0.2:80")); err != nil {
		t.Fatal(err)
	}
	check(state(t, "8080:172.30.0.2:80"))
	if out := nft("list", "tables"); strings.Contains(out, "table ip6 "+dp.Table()) || !strings.Contains(out, "table ip "+dp.Table()) {
		t.Errorf("tables after an IPv4-only Apply:\n%s", out)
	}
	// IPv6 comes back by a port published alone: the ip6 table with it.
	if err := dp.UnpublishPorts(state(t, "8080:172.30.0.2:80").Ports...); err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(context.Background(), dualState(t)); err != nil {
		t.Fatal(err)
	}
	m, _ = datapath.ParsePublish("[::]:8080:[fd00:30::2]:80")
	if err := dp.PublishPorts(m...); err != nil {
		t.Fatal(err)
	}
	check(dualState(t, "[::]:8080:[fd00:30::2]:80"))
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	out := nft("list", "ruleset")
	if strings.Contains(out, dp.Table()) || !strings.Contains(out, "table ip6 foreign") {
		t.Errorf("after Remove:\n%s", out)
	}
}

func (d *Datapath) mustRules(t *testing.T) map[string][]string {
	t.Helper()
	r, err := d.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r
}
