// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// sampleState has two bridges, the second not masqueraded, and ports of
// every kind: wildcard, bound to a host address, a range, UDP, and two host
// ports leading to one container port.
func sampleState(t *testing.T) datapath.State {
	return datapath.State{
		Networks: []datapath.Network{
			{Name: "net0", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true},
			{Name: "net1", Bridge: "br1", Subnet: netip.MustParsePrefix("172.30.1.0/24"), Gateway: netip.MustParseAddr("172.30.1.1")},
		},
		Endpoints: []datapath.Endpoint{
			{Container: "c0", Network: "net0", Addr: netip.MustParseAddr("172.30.0.2"), HostVeth: "veth0"},
			{Container: "c1", Network: "net0", Addr: netip.MustParseAddr("172.30.0.3"), HostVeth: "veth1"},
			{Container: "c2", Network: "net1", Addr: netip.MustParseAddr("172.30.1.2"), HostVeth: "veth2"},
		},
		Ports: publish(t,
			"8080:172.30.0.2:80",
			"10.0.0.1:8081:172.30.1.2:80",
			"9000-9001:172.30.0.3:7000-7001",
			"5353:172.30.0.2:53/udp",
			"8082:172.30.0.2:80"),
	}
}

// sampleFilter and sampleNat are the restore inputs of sampleState into
// tables that hold nothing of the datapath yet.
const sampleFilter = `*filter
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
-I FORWARD 7 -o br1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment bpfnet -j ACCEPT
-I FORWARD 8 -o br1 -m comment --comment bpfnet -j BPFNET-DOCKER
-I FORWARD 9 -i br1 ! -o br1 -m comment --comment bpfnet -j ACCEPT
-I FORWARD 10 -i br1 -o br1 -m comment --comment bpfnet -j ACCEPT
-A BPFNET-DOCKER -d 172.30.0.2/32 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -j ACCEPT
-A BPFNET-DOCKER -d 172.30.1.2/32 ! -i br1 -o br1 -p tcp -m tcp --dport 80 -j ACCEPT
-A BPFNET-DOCKER -d 172.30.0.3/32 ! -i br0 -o br0 -p tcp -m tcp --dport 7000 -j ACCEPT
-A BPFNET-DOCKER -d 172.30.0.3/32 ! -i br0 -o br0 -p tcp -m tcp --dport 7001 -j ACCEPT
-A BPFNET-DOCKER -d 172.30.0.2/32 ! -i br0 -o br0 -p udp -m udp --dport 53 -j ACCEPT
-A BPFNET-DOCKER ! -i br0 -o br0 -j DROP
-A BPFNET-DOCKER ! -i br1 -o br1 -j DROP
-A BPFNET-DOCKER-USER -j RETURN
-A BPFNET-ISOLATION-STAGE-1 -i br0 ! -o br0 -j BPFNET-ISOLATION-STAGE-2
-A BPFNET-ISOLATION-STAGE-1 -i br1 ! -o br1 -j BPFNET-ISOLATION-STAGE-2
-A BPFNET-ISOLATION-STAGE-1 -j RETURN
-A BPFNET-ISOLATION-STAGE-2 -o br0 -j DROP
-A BPFNET-ISOLATION-STAGE-2 -o br1 -j DROP
-A BPFNET-ISOLATION-STAGE-2 -j RETURN
COMMIT
`

const sampleNat = `*nat
:BPFNET-DOCKER - [0:0]
-I PREROUTING 1 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-I OUTPUT 1 ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-I POSTROUTING 1 -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 2 -o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 3 -o br1 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 4 -s 172.30.0.2/32 -d 172.30.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 5 -s 172.30.1.2/32 -d 172.30.1.2/32 -p tcp -m tcp --dport 80 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 6 -s 172.30.0.3/32 -d 172.30.0.3/32 -p tcp -m tcp --dport 7000 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 7 -s 172.30.0.3/32 -d 172.30.0.3/32 -p tcp -m tcp --dport 7001 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 8 -s 172.30.0.2/32 -d 172.30.0.2/32 -p udp -m udp --dport 53 -m comment --comment bpfnet -j MASQUERADE
-A BPFNET-DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.30.0.2:80
-A BPFNET-DOCKER -d 10.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.30.1.2:80
-A BPFNET-DOCKER -p tcp -m tcp --dport 9000 -j DNAT --to-destination 172.30.0.3:7000
-A BPFNET-DOCKER -p tcp -m tcp --dport 9001 -j DNAT --to-destination 172.30.0.3:7001
-A BPFNET-DOCKER -p udp -m udp --dport 5353 -j DNAT --to-destination 172.30.0.2:53
-A BPFNET-DOCKER -p tcp -m tcp --dport 8082 -j DNAT --to-destination 172.30.0.2:80
COMMIT
`

func TestIptablesRestoreInput(t *testing.T) {
	o := Options{}.withDefaults()
	want, err := o.tables(sampleState(t))
	if err != nil {
		t.Fatal(err)
	}
	for table, golden := range map[string]string{"filter": sampleFilter, "nat": sampleNat} {
		if got := restoreInput(want[table], &ipTable{name: table}); got != golden {
			t.Errorf("%s table: restore input\n%s\nwant\n%s", table, got, golden)
		}
	}
}

// A table as iptables-save prints it after sampleState with one port,
// next to rules of others: a chain of another program that happens to
// start alike, rules of others in built-in chains, one with another
// comment, one jumping to our chain from a chain of theirs.
const savedNat = `# Generated by iptables-save v1.8.9 (nf_tables) on Fri Nov 27 10:45:00 2026
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:BPFNET-DOCKER - [0:0]
:BPFNET-OTHER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-A PREROUTING -p tcp -m tcp --dport 22 -m comment --comment "bpfnet was here" -j RETURN
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-A POSTROUTING -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE
-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE
-A POSTROUTING -o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-A BPFNET-DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.30.0.2:80
-A BPFNET-OTHER -m comment --comment bpfnet -j BPFNET-DOCKER
COMMIT
# Completed on Fri Nov 27 10:45:00 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Fri Nov 27 10:45:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:BPFNET-DOCKER - [0:0]
-A FORWARD -m comment --comment bpfnet -j BPFNET-DOCKER
COMMIT
`

func TestIptablesParseSave(t *testing.T) {
	o := Options{}.withDefaults()
	got := o.parseSave("nat", savedNat)
	want := &ipTable{
		name:   "nat",
		chains: []string{"BPFNET-DOCKER"},
		builtin: []ipRule{
			{"PREROUTING", "-m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER"},
			{"OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER"},
			{"POSTROUTING", "-s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE"},
			{"POSTROUTING", "-o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE"},
		},
		rules: []ipRule{{"BPFNET-DOCKER", "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.30.0.2:80"}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parsed\n%+v\nwant\n%+v", got, want)
	}
	// Another prefix and comment: nothing there is ours.
	other := Options{ChainPrefix: "X-", Comment: "x"}.withDefaults()
	if got := other.parseSave("nat", savedNat); !got.empty() {
		t.Errorf("with another prefix and comment, parsed %+v", got)
	}
}

// TestIptablesReapplyInput: re-Apply deletes the old rules in built-in
// chains by their text and inserts the new ones in the same input; Remove
// flushes, deletes the rules in built-in chains, then the chains.
func TestIptablesReapplyInput(t *testing.T) {
	o := Options{}.withDefaults()
	have := o.parseSave("nat", savedNat)
	s := sampleState(t)
	s.Networks = s.Networks[:1]
	s.Endpoints = s.Endpoints[:2]
	s.Ports = publish(t, "127.0.0.1:8090:172.30.0.2:80")
	want, err := o.tables(s)
	if err != nil {
		t.Fatal(err)
	}
	const reapply = `*nat
:BPFNET-DOCKER - [0:0]
-D PREROUTING -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-D POSTROUTING -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE
-D POSTROUTING -o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-I PREROUTING 1 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-I OUTPUT 1 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-I POSTROUTING 1 -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 2 -o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-I POSTROUTING 3 -s 172.30.0.2/32 -d 172.30.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment bpfnet -j MASQUERADE
-A BPFNET-DOCKER -d 127.0.0.1/32 -p tcp -m tcp --dport 8090 -j DNAT --to-destination 172.30.0.2:80
COMMIT
`
	if got := restoreInput(want["nat"], have); got != reapply {
		t.Errorf("re-Apply input\n%s\nwant\n%s", got, reapply)
	}
	const remove = `*nat
:BPFNET-DOCKER - [0:0]
-D PREROUTING -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment bpfnet -j BPFNET-DOCKER
-D POSTROUTING -s 172.30.0.0/24 ! -o br0 -m comment --comment bpfnet -j MASQUERADE
-D POSTROUTING -o br0 -m addrtype --src-type LOCAL -m comment --comment bpfnet -j MASQUERADE
-X BPFNET-DOCKER
COMMIT
`
	if got := restoreInput(&ipTable{name: "nat"}, have); got != remove {
		t.Errorf("Remove input\n%s\nwant\n%s", got, remove)
	}
}

func TestIptablesRejects(t *testing.T) {
	o := Options{}.withDefaults()
	for name, change := range map[string]func(s *datapath.State){
		"port outside the networks": func(s *datapath.State) { s.Ports = publish(t, "8080:10.9.9.9:80") },
		"bridge name with a space":  func(s *datapath.State) { s.Networks[1].Bridge = "br 1" },
		"bridge name like an option": func(s *datapath.State) {
			s.Networks[1].Bridge = "-j"
		},
	} {
		s := sampleState(t)
		change(&s)
		if _, err := o.tables(s); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	for _, opts := range []Options{
		{ChainPrefix: "TWELVE-CHARS"},
		{ChainPrefix: "A B"},
		{Comment: "two words"},
		{Comment: `"quoted"`},
		{Netns: "/run/netns/bpfnet-no-such-namespace"},
		{Restore: "bpfnet-no-such-iptables-restore"},
	} {
		if _, err := New(opts); err == nil {
			t.Errorf("New(%+v): no error", opts)
		}
	}
}

// foreignRules are other programs' rules, for Apply and Remove to leave
// alone. The raw rule also makes the raw table exist before Apply: with
// the nft backend, a table iptables created stays (empty) after its
// rules are deleted.
const foreignRules = `*raw
-A PREROUTING -s 192.0.2.0/24 -j DROP
COMMIT
*nat
:FOREIGN - [0:0]
-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE
-A PREROUTING -p tcp -m tcp --dport 2222 -m comment --comment other -j DNAT --to-destination 192.0.2.9:22
-A FOREIGN -j RETURN
COMMIT
*filter
:FOREIGN - [0:0]
-A FORWARD -s 192.0.2.0/24 -j DROP
-A FORWARD -j FOREIGN
-A FOREIGN -j RETURN
COMMIT
`

func TestIptablesLabApplyRemove(t *testing.T) {
	requireRoot(t)
	lab.KeepHostIptables(t)
	topo := lab.Setup(t, twoContainers())
	host := topo.Host
	run := func(stdin string, name string, args ...string) {
		t.Helper()
		cmd := host.Command(context.Background(), name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run(foreignRules, "iptables-restore", "--noflush")
	pristine := lab.IptablesSave(t, host)

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
	err = host.Do(func() error {
		s, err = datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c0, c1 := topo.Containers[0], topo.Containers[1]
	apply := func(ports ...string) {
		t.Helper()
		s.Ports = publish(t, ports...)
		if err := dp.Apply(context.Background(), s); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	// check compares the namespace's rules with those of s: iptables
	// prints our rules back exactly as we wrote them (so that Remove can
	// delete them by their text), each once, at the top of the built-in
	// chains, and the foreign rules are still there.
	check := func(s datapath.State) string {
		t.Helper()
		want, err := dp.opts.tables(s)
		if err != nil {
			t.Fatal(err)
		}
		save := lab.IptablesSave(t, host)
		for _, table := range ipTables {
			got := dp.opts.parseSave(table, save)
			if fmt.Sprint(got) != fmt.Sprint(want[table]) {
				t.Errorf("%s table holds\n%+v\nwant\n%+v", table, got, want[table])
			}
		}
		for _, line := range strings.Split(foreignRules, "\n") {
			if strings.HasPrefix(line, "-A ") && !strings.Contains(save, line+"\n") {
				t.Errorf("foreign rule %q is gone", line)
			}
		}
		for table, chain := range map[string]string{"nat": "POSTROUTING", "filter": "FORWARD"} {
			var first string
			for _, line := range strings.Split(lab.IptablesSave(t, host, "-t", table), "\n") {
				if strings.HasPrefix(line, "-A "+chain+" ") {
					first = line
					break
				}
			}
			if !strings.Contains(first, "--comment bpfnet ") {
				t.Errorf("%s %s starts with %q, not with a rule of ours", table, chain, first)
			}
		}
		return save
	}

	apply(fmt.Sprintf("8080:%s:80", c0.Addr), fmt.Sprintf("9000-9002:%s:7000-7002", c1.Addr), fmt.Sprintf("5353:%s:53/udp", c0.Addr))
	check(s)
	if !strings.Contains(lab.IptablesSave(t, host, "-t", "nat"), fmt.Sprintf("--dport 8080 -j DNAT --to-destination %s:80\n", c0.Addr)) {
		t.Error("no DNAT rule for port 8080")
	}

	// Re-Apply with 8080 moved to 8090: replaced, nothing duplicated.
	apply(fmt.Sprintf("8090:%s:80", c0.Addr), fmt.Sprintf("9000-9002:%s:7000-7002", c1.Addr), fmt.Sprintf("5353:%s:53/udp", c0.Addr))
	applied := check(s)
	nat := lab.IptablesSave(t, host, "-t", "nat")
	if strings.Contains(nat, "--dport 8080 ") || !strings.Contains(nat, "--dport 8090 ") {
		t.Errorf("after re-Apply, the nat table is\n%s", nat)
	}
	good := s

	// Bad states change nothing.
	unchanged := func(what string, err error, msg string) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: Apply succeeded", what)
		} else if !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %q does not say %q", what, err, msg)
		}
		if now := lab.IptablesSave(t, host); now != applied {
			t.Errorf("%s changed the rules:\n%s\nwant\n%s", what, now, applied)
		}
	}
	bad := good
	bad.Ports = publish(t, fmt.Sprintf("8080:%s:80", c0.Addr), fmt.Sprintf("8080:%s:80", c1.Addr))
	unchanged("a host port published twice", dp.Apply(context.Background(), bad), "already published")
	bad.Ports = publish(t, "8080:10.9.9.9:80")
	unchanged("a port to no network", dp.Apply(context.Background(), bad), "none of the networks")
	// iptables itself refuses this one, half-way through the filter input.
	bad.Ports = good.Ports
	bad.Networks = append(slices.Clone(good.Networks), datapath.Network{Name: "long", Bridge: "a-too-long-bridge-name", Subnet: netip.MustParsePrefix("172.31.0.0/24")})
	unchanged("an interface name iptables rejects", dp.Apply(context.Background(), bad), "IFNAMSIZ")

	// When the nat table fails after the filter table was written, the
	// filter table is put back.
	failing := filepath.Join(t.TempDir(), "failing-restore")
	script := "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in *'*nat'*) echo 'injected nat failure' >&2; exit 1;; esac\n" +
		"printf '%s\\n' \"$input\" | exec iptables-restore \"$@\"\n"
	if err := os.WriteFile(failing, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dpFail, err := New(Options{Netns: host.Path, Restore: failing})
	if err != nil {
		t.Fatal(err)
	}
	bad = good
	bad.Ports = publish(t, fmt.Sprintf("7777:%s:80", c0.Addr))
	unchanged("a nat table failing after the filter table", dpFail.Apply(context.Background(), bad), "injected nat failure")

	// A new process adopts the rules: a new datapath removes them.
	if err := dp.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	removed = true
	if now := lab.IptablesSave(t, host); now != pristine {
		t.Errorf("after Remove the rules are\n%s\nwant, as before Apply\n%s", now, pristine)
	}
	if err := dp.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	other, err := New(Options{Netns: host.Path})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Apply(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	if now := lab.IptablesSave(t, host); now != applied {
		t.Errorf("Apply by a new datapath gives\n%s\nwant\n%s", now, applied)
	}
	fresh, err := New(Options{Netns: host.Path})
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Remove(); err != nil {
		t.Fatalf("Remove by another datapath: %v", err)
	}
	if now := lab.IptablesSave(t, host); now != pristine {
		t.Errorf("after Remove by another datapath the rules are\n%s\nwant\n%s", now, pristine)
	}
}

// TestIptablesLabLegacy: the same rules through iptables-legacy, whose
// input and output are the same text.
func TestIptablesLabLegacy(t *testing.T) {
	requireRoot(t)
	lab.RequireTools(t, "iptables-legacy-restore")
	topo := lab.Setup(t, twoContainers())
	dp, err := New(Options{Netns: topo.Host.Path, Restore: "iptables-legacy-restore", Save: "iptables-legacy-save"})
	if err != nil {
		t.Fatal(err)
	}
	var s datapath.State
	err = topo.Host.Do(func() error {
		s, err = datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Ports = publish(t, fmt.Sprintf("8080:%s:80", topo.Containers[0].Addr))
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	want, _ := dp.opts.tables(s)
	out, err := topo.Host.Run(context.Background(), "iptables-legacy-save")
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range ipTables {
		got := dp.opts.parseSave(table, string(out))
		if fmt.Sprint(got) != fmt.Sprint(want[table]) {
			t.Errorf("%s table holds\n%+v\nwant\n%+v", table, got, want[table])
		}
	}
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	out, _ = topo.Host.Run(context.Background(), "iptables-legacy-save")
	if strings.Contains(string(out), "bpfnet") || strings.Contains(string(out), "BPFNET") {
		t.Errorf("left after Remove:\n%s", out)
	}
}

// publish parses --publish specs.
func publish(t *testing.T, specs ...string) []datapath.PortMapping {
	t.Helper()
	var out []datapath.PortMapping
	for _, s := range specs {
		m, err := datapath.ParsePublish(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

func twoContainers() lab.Config {
	return lab.Config{Containers: []lab.ContainerConfig{{}, {}}}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}
