// SPDX-License-Identifier: Apache-2.0

package loader

import "testing"

// TestLayout pins the bpffs layout down: a running datapath is upgraded in
// place over these names, so a change here needs a migration.
func TestLayout(t *testing.T) {
	const b = "/sys/fs/bpf/bpfnet"
	for _, c := range []struct{ got, want string }{
		{GlobalsDir(b), b + "/globals"},
		{GlobalPin(b, "ct4"), b + "/globals/ct4"},
		{DevicesDir(b), b + "/devices"},
		{DeviceDir(b, "veth1"), b + "/devices/veth1"},
		{DeviceDir(b, "eth0.100"), b + "/devices/eth0%2e100"},
		{LinkPin(b, "veth1", Ingress, "from_container"), b + "/devices/veth1/links/ingress_from_container"},
		{LinkPin(b, "eth0.100", Egress, "nat.v4"), b + "/devices/eth0%2e100/links/egress_nat%2ev4"},
		{LegacyRecordPath(b, "veth1", Egress, "to_container"), b + "/devices/veth1/legacy/egress_to_container"},
		{CgroupDir(b), b + "/cgroup"},
		{SockLinkPin(b, "sock_connect4"), b + "/cgroup/sock_connect4"},
		{ContainersDir(b), b + "/cgroup/containers"},
		{ContainerDir(b, "0123abcd"), b + "/cgroup/containers/0123abcd"},
		{ContainerRecordPath(b, "0123abcd"), b + "/cgroup/containers/0123abcd/info"},
		{ContainerLinkPin(b, "0123abcd", "ingress"), b + "/cgroup/containers/0123abcd/ingress"},
		{ContainerLinkPin(b, "0123abcd", "egress"), b + "/cgroup/containers/0123abcd/egress"},
		{WarningsRecord(b), b + "/warnings"},
		{HostFirewallRecord(b), b + "/host-firewall"},
		{IptablesMarker(b), b + "/iptables"},
		// Relative and trailing-slash bases name the same folders.
		{GlobalPin("pins/", "nets"), "pins/globals/nets"},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
}

// TestEntryNames: the names of tcx pins and legacy records round-trip.
func TestEntryNames(t *testing.T) {
	for _, c := range []struct {
		dir  Direction
		prog string
	}{{Ingress, "from_container"}, {Egress, "nat.v4"}, {Egress, "a%b"}} {
		name := entryName(c.dir, c.prog)
		dir, prog, err := parseEntryName(name)
		if err != nil || dir != c.dir || prog != c.prog {
			t.Errorf("parseEntryName(%q) = %v, %q, %v; want %v, %q", name, dir, prog, err, c.dir, c.prog)
		}
	}
	for _, bad := range []string{"ingress", "sideways_x", "egress_%2", "egress_"} {
		if _, _, err := parseEntryName(bad); err == nil {
			t.Errorf("parseEntryName(%q) accepted", bad)
		}
	}
}
