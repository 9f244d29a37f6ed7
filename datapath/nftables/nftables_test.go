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
)

func state(t *testing.T, specs ...string) datapath.State {
	t.Helper()
	s := datapath.State{Networks: []datapath.Network{{Name: "net0", Bridge: "br0",
		Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true}}}
	for _, spec := range specs {
		m, err := datapath.ParsePublish(spec)
		if err != nil {
			t.Fatal(err)
		}
		s.Ports = append(s.Ports, m...)
	}
	return s
}

// TestLabApplyPublishRemove: the table nft holds reads back as the
// rendering of the plan, after Apply and after a port published and
// unpublished alone; Remove deletes it and leaves a foreign table.
func TestLabApplyPublishRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := fmt.Sprintf("bpfnet-nft-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ns := "/run/netns/" + name
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "link", "add", "br0", "type", "bridge")
	run("nft", "add table ip foreign; add chain ip foreign c; add rule ip foreign c counter accept")
	dp, err := New(Options{Netns: ns})
	if err != nil {
		t.Fatal(err)
	}
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
			t.Errorf("table holds\n%v\nwant\n%v", got, w)
		}
	}
	s := state(t, "8080:172.30.0.2:80", "5353:172.30.0.2:53/udp")
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	check(s)
	m, _ := datapath.ParsePublish("127.0.0.1:9000:172.30.0.3:90")
	if err := dp.PublishPorts(m...); err != nil {
		t.Fatal(err)
	}
	check(state(t, "8080:172.30.0.2:80", "5353:172.30.0.2:53/udp", "127.0.0.1:9000:172.30.0.3:90"))
	gone, _ := datapath.ParsePublish("8080:172.30.0.2:80")
	if err := dp.UnpublishPorts(gone...); err != nil {
		t.Fatal(err)
	}
	check(state(t, "5353:172.30.0.2:53/udp", "127.0.0.1:9000:172.30.0.3:90"))
	// Source allowlists: one prefix, several, on a host address, and a
	// list changed in place.
	allow := []string{"5353:172.30.0.2:53/udp,allow=192.0.2.7", "127.0.0.1:9000:172.30.0.3:90",
		"8080:172.30.0.2:80,allow=198.51.100.0/24+192.0.2.0/24", "10.0.0.1:8081:172.30.0.2:80,allow=203.0.113.0/24"}
	for _, spec := range allow[2:] {
		m, _ := datapath.ParsePublish(spec)
		if err := dp.PublishPorts(m...); err != nil {
			t.Fatal(err)
		}
	}
	m, _ = datapath.ParsePublish(allow[0])
	if err := dp.PublishPorts(m...); err != nil {
		t.Fatal(err)
	}
	// A rule whose text is unchanged stays where it is, so only the
	// allowlist chain is compared here, whole.
	rules, err := dp.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, err := want(state(t, allow[1], allow[2], allow[3], allow[0]))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rules[allowChainName]) != fmt.Sprint(w[allowChainName]) || len(w[allowChainName]) != 3 {
		t.Errorf("allowlist chain holds\n%v\nwant\n%v", rules[allowChainName], w[allowChainName])
	}
	if got := strings.Join(rules[allowChainName], "\n"); !strings.Contains(got,
		`ip daddr 172.30.0.2 tcp dport 80 ct state new ct status dnat ct original proto-dst 8080 ip saddr != { 192.0.2.0/24, 198.51.100.0/24 } counter drop comment "PORT ALLOWLIST"`) {
		t.Errorf("allowlist chain holds\n%s", got)
	}
	if err := dp.Apply(context.Background(), state(t, allow...)); err != nil {
		t.Fatal(err)
	}
	check(state(t, allow...))
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "netns", "exec", name, "nft", "list", "ruleset").CombinedOutput()
	if strings.Contains(string(out), dp.Table()) {
		t.Errorf("table left after Remove:\n%s", out)
	}
	if !strings.Contains(string(out), "table ip foreign") {
		t.Errorf("foreign table gone after Remove:\n%s", out)
	}
}
