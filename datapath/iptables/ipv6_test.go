// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
	"github.com/bpfnet/bpfnet/lab"
)

// dualState is sampleState's first network dual-stack, an IPv4-only
// second one, and ports of both families.
func dualState(t *testing.T) datapath.State {
	s := sampleState(t)
	s.Networks[0].Subnet6 = netip.MustParsePrefix("fd00:30::/64")
	s.Networks[0].Gateway6 = netip.MustParseAddr("fd00:30::1")
	s.Endpoints[0].Addr6 = netip.MustParseAddr("fd00:30::2")
	s.Endpoints[1].Addr6 = netip.MustParseAddr("fd00:30::3")
	s.Ports = publish(t,
		"8080:172.30.0.2:80",
		"[::]:8080:[fd00:30::2]:80",
		"[::1]:8081:[fd00:30::3]:81/udp",
		"[2001:db8::1]:9000-9001:[fd00:30::3]:7000-7001",
		"10.0.0.1:8081:172.30.1.2:80")
	return s
}

func TestIp6tablesRestoreInput(t *testing.T) {
	o := Options{}.withDefaults()
	if o.Restore6 != "ip6tables-restore" || o.Save6 != "ip6tables-save" {
		t.Errorf("ip6tables binaries %q %q", o.Restore6, o.Save6)
	}
	if l := (Options{Restore: "iptables-legacy-restore", Save: "iptables-legacy-save"}).withDefaults(); l.Restore6 != "ip6tables-legacy-restore" || l.Save6 != "ip6tables-legacy-save" {
		t.Errorf("legacy ip6tables binaries %q %q", l.Restore6, l.Save6)
	}
	ts, err := o.familyTables(dualState(t), rules.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	for table, golden := range map[string]string{"filter": sampleFilter6, "nat": sampleNat6, "raw": sampleRaw6} {
		if got := restoreInput(ts[table], &ipTable{name: table}); got != golden {
			t.Errorf("ip6 %s table: restore input\n%s\nwant\n%s", table, got, golden)
		}
	}
}

// sampleFilter6, sampleNat6 and sampleRaw6 are the ip6tables-restore
// inputs of dualState: Docker's rules for the IPv6 half of net0 (moby's
// iptabler ip6tables golden files, hairpin=true), net1 without IPv6 left
// out, the DNAT rules not of fe80::/10, OUTPUT without the loopback
// exclusion and no remote-loopback drop for the port on ::1.
const sampleFilter6 = `*filter
:BPFNET-DOCKER - [0:0]
:BPFNET-DOCKER-USER - [0:0]
:BPFNET-ISOLATION-STAGE-1 - [0:0]
:BPFNET-ISOLATION-STAGE-2 - [0:0]
-I FORWARD 1 -m comment --comment bpfnet -j BPFNET-DOCKER-USER
-I FORWARD 2 -m comment --comment bpfnet -j BPFNET-ISOLATION-STAGE-1
-I FORWARD 3 -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment bpfnet -j ACCEPT
-I FORWARD 4 -o br0 -m comment --comment bpfnet -j BPFNET-DOCKER
-I FORWARD 5 -i br0 ! -o br0 -m comment --comment bpfnet -j ACCEPT
-I FORWARD 6 -i br0 -o br0 -m comment --comment bpfnet -j ACCEPT
-A BPFNET-DOCKER -d fd00:30::2/128 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -j ACCEPT
-A BPFNET-DOCKER -d fd00:30::3/128 ! -i br0 -o br0 -p udp -m udp --dport 81 -j ACCEPT
-A BPFNET-DOCKER -d fd00:30::3/128 ! -i br0 -o br0 -p tcp -m tcp --dport 7000 -j ACCEPT
-A BPFNET-DOCKER -d fd00:30::3/128 ! -i br0 -o br0 -p tcp -m tcp --dport 7001 -j ACCEPT
-A BPFNET-DOCKER ! -i br0 -o br0 -j DROP
-A BPFNET-DOCKER-USER -j RETURN
-A BPFNET-ISOLATION-STAGE-1 -i br0 ! -o br0 -j BPFNET-ISOLATION-STAGE-2
-A BPFNET-ISOLATION-STAGE-1 -j RETURN
-A BPFNET-ISOLATION-STAGE-2 -o br0 -j DROP
-A BPFNET-ISOLATION-STAGE-2 -j RETURN
COMMIT
`

const sampleNat6 = `*nat
:BPFNET-DOCKER - [0:0]
-I PREROUTING 1 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-I OUTPUT 1 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-I POSTROUTING 1 -s fd00:30::/64 ! -o br0 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 2 -o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 3 -s fd00:30::2/128 -d fd00:30::2/128 -p tcp -m tcp --dport 80 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 4 -s fd00:30::3/128 -d fd00:30::3/128 -p udp -m udp --dport 81 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 5 -s fd00:30::3/128 -d fd00:30::3/128 -p tcp -m tcp --dport 7000 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 6 -s fd00:30::3/128 -d fd00:30::3/128 -p tcp -m tcp --dport 7001 -m comment --comment bpfnet -j MASQUERADE
-A BPFNET-DOCKER ! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:30::2]:80
-A BPFNET-DOCKER ! -s fe80::/10 -d ::1/128 -p udp -m udp --dport 8081 -j DNAT --to-destination [fd00:30::3]:81
-A BPFNET-DOCKER ! -s fe80::/10 -d 2001:db8::1/128 -p tcp -m tcp --dport 9000 -j DNAT --to-destination [fd00:30::3]:7000
-A BPFNET-DOCKER ! -s fe80::/10 -d 2001:db8::1/128 -p tcp -m tcp --dport 9001 -j DNAT --to-destination [fd00:30::3]:7001
COMMIT
`

const sampleRaw6 = `*raw
-I PREROUTING 1 -d fd00:30::2/128 ! -i br0 -m comment --comment bpfnet -j DROP
-I PREROUTING 2 -d fd00:30::3/128 ! -i br0 -m comment --comment bpfnet -j DROP
COMMIT
`

// ip6tablesSave is lab.IptablesSave for ip6tables: the namespace's IPv6
// rules, without the comment lines that change from run to run.
func ip6tablesSave(t *testing.T, ns *lab.Namespace, args ...string) string {
	t.Helper()
	out, err := ns.Command(context.Background(), "ip6tables-save", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip6tables-save: %v\n%s", err, out)
	}
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "#") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

const foreignRules6 = `*filter
:FOREIGN - [0:0]
-A FORWARD -s 2001:db8:99::/48 -j DROP
-A FORWARD -j FOREIGN
-A FOREIGN -j RETURN
COMMIT
*nat
-A POSTROUTING -s fd00:99::/64 -j MASQUERADE
COMMIT
`

// TestIp6tablesLabApplyRemove: a dual-stack state is written to both
// families, ip6tables prints our IPv6 rules back as we wrote them, a
// state that fails in an IPv6 table leaves both families as they were,
// and Remove takes every rule of both out, leaving the foreign ones.
func TestIp6tablesLabApplyRemove(t *testing.T) {
	requireRoot(t)
	lab.RequireTools(t, "ip6tables-restore", "ip6tables-save")
	lab.KeepHostIptables(t)
	topo := lab.Setup(t, twoContainers())
	host := topo.Host
	in := host.Command(context.Background(), "ip6tables-restore", "--noflush")
	in.Stdin = strings.NewReader(foreignRules6)
	if out, err := in.CombinedOutput(); err != nil {
		t.Fatalf("ip6tables-restore: %v\n%s", err, out)
	}
	pristine4, pristine6 := lab.IptablesSave(t, host), ip6tablesSave(t, host)

	dp, err := New(Options{Netns: host.Path})
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			dp.Remove()
		}
	})
	var s datapath.State
	if err := host.Do(func() error {
		s, err = datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.Networks[0].Subnet6 = netip.MustParsePrefix("fd00:30::/64")
	s.Networks[0].Gateway6 = netip.MustParseAddr("fd00:30::1")
	c0, c1 := topo.Containers[0], topo.Containers[1]
	s.Endpoints[0].Addr6 = netip.MustParseAddr("fd00:30::2")
	s.Endpoints[1].Addr6 = netip.MustParseAddr("fd00:30::3")
	s.Ports = publish(t, fmt.Sprintf("8080:%s:80", c0.Addr), "[::]:8080:[fd00:30::2]:80", "[::1]:8081:[fd00:30::3]:81/udp",
		fmt.Sprintf("9000:%s:90", c1.Addr))
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	want, err := dp.opts.allTables(s, dp.families())
	if err != nil {
		t.Fatal(err)
	}
	save4, save6 := lab.IptablesSave(t, host), ip6tablesSave(t, host)
	for _, ft := range dp.order() {
		save := save4
		if ft.fam == rules.IPv6 {
			save = save6
		}
		if got := dp.opts.parseSave(ft.table, save); fmt.Sprint(got) != fmt.Sprint(want.get(ft)) {
			t.Errorf("%s table holds\n%+v\nwant\n%+v", ft, got, want.get(ft))
		}
	}
	for _, line := range []string{
		"-A BPFNET-DOCKER ! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:30::2]:80",
		"-A POSTROUTING -s fd00:30::/64 ! -o " + topo.Bridges[0].Name + " -m comment --comment bpfnet -j MASQUERADE",
		"-A POSTROUTING -s fd00:99::/64 -j MASQUERADE",
		"-A FORWARD -s 2001:db8:99::/48 -j DROP",
	} {
		if !strings.Contains(save6, line+"\n") {
			t.Errorf("ip6tables-save has no %q:\n%s", line, save6)
		}
	}
	// Its positive twin: the IPv4 tables have the IPv4 port, not the
	// IPv6 ones.
	if !strings.Contains(save4, fmt.Sprintf("--dport 8080 -j DNAT --to-destination %s:80\n", c0.Addr)) || strings.Contains(save4, "fd00:30::") {
		t.Errorf("iptables-save:\n%s", save4)
	}
	if v, err := host.ReadSysctl("net/ipv6/conf/all/forwarding"); err != nil || v != "1" {
		t.Errorf("net.ipv6.conf.all.forwarding %q %v, want 1", v, err)
	}
	applied4, applied6 := save4, save6

	unchanged := func(what string, err error, msg string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want one saying %q", what, err, msg)
		}
		if now := lab.IptablesSave(t, host); now != applied4 {
			t.Errorf("%s changed the IPv4 rules:\n%s\nwant\n%s", what, now, applied4)
		}
		if now := ip6tablesSave(t, host); now != applied6 {
			t.Errorf("%s changed the IPv6 rules:\n%s\nwant\n%s", what, now, applied6)
		}
	}
	bad := s
	bad.Ports = publish(t, "[::]:8080:[fd00:30::2]:80", "[::]:8080:[fd00:30::3]:80")
	unchanged("an IPv6 host port published twice", dp.Apply(context.Background(), bad), "already published")
	// ip6tables' nat table fails after both IPv4 tables and the IPv6
	// filter table were written: all of them are put back.
	failing := filepath.Join(t.TempDir(), "failing-restore6")
	script := "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in *'*nat'*) echo 'injected ip6 nat failure' >&2; exit 1;; esac\n" +
		"printf '%s\\n' \"$input\" | exec ip6tables-restore \"$@\"\n"
	if err := os.WriteFile(failing, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dpFail, err := New(Options{Netns: host.Path, Restore6: failing})
	if err != nil {
		t.Fatal(err)
	}
	bad = s
	bad.Ports = append(publish(t, fmt.Sprintf("7777:%s:80", c0.Addr), "[::]:7777:[fd00:30::2]:80"), s.Ports...)
	unchanged("an ip6 nat table failing after the others", dpFail.Apply(context.Background(), bad), "injected ip6 nat failure")
	// A datapath without ip6tables refuses the dual-stack state, and
	// changes nothing.
	dpNo6, err := New(Options{Netns: host.Path, Restore6: "/nonexistent/ip6tables-restore"})
	if err != nil {
		t.Fatal(err)
	}
	unchanged("no ip6tables", dpNo6.Apply(context.Background(), s), "IPv6 needs")

	// Publishing one more IPv6 port incrementally inserts only its rules.
	more := publish(t, "[::]:8090:[fd00:30::3]:90")
	if err := dp.PublishPorts(more...); err != nil {
		t.Fatalf("PublishPorts: %v", err)
	}
	if now := ip6tablesSave(t, host); !strings.Contains(now, "--dport 8090 -j DNAT --to-destination [fd00:30::3]:90\n") {
		t.Errorf("after PublishPorts:\n%s", now)
	}
	if err := dp.UnpublishPorts(more...); err != nil {
		t.Fatalf("UnpublishPorts: %v", err)
	}
	if now := ip6tablesSave(t, host); now != applied6 {
		t.Errorf("after UnpublishPorts the IPv6 rules are\n%s\nwant\n%s", now, applied6)
	}

	if err := dp.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	removed = true
	// Reading and writing a table creates it (iptables-nft): the rules
	// and chains are compared, not the empty tables.
	if now := ruleLines(lab.IptablesSave(t, host)); now != ruleLines(pristine4) {
		t.Errorf("after Remove the IPv4 rules are\n%s\nwant\n%s", now, ruleLines(pristine4))
	}
	if now := ruleLines(ip6tablesSave(t, host)); now != ruleLines(pristine6) {
		t.Errorf("after Remove the IPv6 rules are\n%s\nwant\n%s", now, ruleLines(pristine6))
	}
}

// ruleLines are the rules and user chains of iptables-save output, each
// after the table it is in.
func ruleLines(save string) string {
	var b strings.Builder
	table := ""
	for _, line := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line
		case strings.HasPrefix(line, "-A "), strings.HasPrefix(line, ":") && strings.Contains(line, " - "):
			fmt.Fprintf(&b, "%s %s\n", table, line)
		}
	}
	return b.String()
}
