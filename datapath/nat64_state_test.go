// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/loader"
)

// TestParsePublishNAT64: an IPv6 host address of an IPv4 container is a
// NAT64 mapping, shown with its host address; an IPv4 host address of an
// IPv6 container is still refused.
func TestParsePublishNAT64(t *testing.T) {
	for spec, want := range map[string]string{
		"[::]:8080:172.17.0.2:80":              "[::]:8080->172.17.0.2:80/tcp",
		"[2001:db8::1]:8081:172.17.0.2:81/udp": "[2001:db8::1]:8081->172.17.0.2:81/udp",
	} {
		m, err := ParsePublish(spec)
		if err != nil || len(m) != 1 {
			t.Fatalf("ParsePublish(%q) = %v, %v", spec, m, err)
		}
		if !m[0].IsNAT64() || m[0].String() != want {
			t.Errorf("ParsePublish(%q) = %s (NAT64 %v), want NAT64 %s", spec, m[0], m[0].IsNAT64(), want)
		}
	}
	m, _ := ParsePublish("8080:172.17.0.2:80")
	if m[0].IsNAT64() {
		t.Errorf("%s: an IPv4 binding is no NAT64 mapping", m[0])
	}
	if _, err := ParsePublish("10.0.0.1:8080:[fd00::2]:80"); err == nil || !strings.Contains(err.Error(), "different families") {
		t.Errorf("IPv4 host of an IPv6 container: %v, want different families", err)
	}
}

// TestValidateNAT64: accepted on a nat network, refused on a routed one,
// on a loopback or link-local host address; an allowlist (of IPv6
// prefixes, the clients') is taken.
func TestValidateNAT64(t *testing.T) {
	c4 := netip.MustParseAddr("172.17.0.2")
	nat := func(host string) PortMapping {
		return PortMapping{Proto: TCP, HostIP: netip.MustParseAddr(host), HostPort: 8080, ContainerIP: c4, ContainerPort: 80}
	}
	allowed := nat("::")
	allowed.Allow = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
	for _, tc := range []struct {
		name string
		mode GatewayMode
		m    PortMapping
		want string
	}{
		{"::", GatewayNAT, nat("::"), ""},
		{"host address", GatewayNAT, nat("2001:db8::1"), ""},
		{"routed", GatewayRouted, nat("::"), "is routed"},
		{"loopback", GatewayNAT, nat("::1"), "never a loopback"},
		{"link-local", GatewayNAT, nat("fe80::1"), "never a loopback or link-local"},
		{"allowlist", GatewayNAT, allowed, ""},
	} {
		s := State{
			Networks: []Network{{Name: "br", Bridge: "br0", GatewayMode: tc.mode,
				Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1")}},
			Endpoints: []Endpoint{{Container: "a", Network: "br", Addr: c4, HostVeth: "veth0"}},
			Ports:     []PortMapping{tc.m},
		}
		err := s.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestNAT64Pool: the pool's own checks, its CONFIG form, and the overlap
// with a network, an uplink address, a route, judged only for a state
// with a NAT64 mapping.
func TestNAT64Pool(t *testing.T) {
	for p, want := range map[string]string{
		"198.19.0.0/16": "",
		"100.64.0.0/30": "",
		"10.0.0.0/31":   "prefix length",
		"10.0.0.0/7":    "prefix length",
		"10.0.0.1/24":   "host bits",
		"fd00::/64":     "not an IPv4 prefix",
	} {
		err := CheckNAT64Pool(netip.MustParsePrefix(p))
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckNAT64Pool(%s) = %v, want %q", p, err, want)
		}
	}
	pool, mask := nat64Config(DefaultNAT64Pool)
	if addrFrom(pool) != netip.MustParseAddr("198.19.0.0") || addrFrom(mask) != netip.MustParseAddr("255.255.0.0") {
		t.Errorf("nat64Config = %s/%s", addrFrom(pool), addrFrom(mask))
	}
	n := Network{Name: "br", Bridge: "br0", Subnet: netip.MustParsePrefix("172.17.0.0/16")}
	nat64 := PortMapping{Proto: TCP, HostIP: netip.IPv6Unspecified(), HostPort: 8080, ContainerIP: netip.MustParseAddr("172.17.0.2"), ContainerPort: 80}
	s := State{Networks: []Network{n}, Ports: []PortMapping{nat64}}
	if err := checkNAT64Overlap(netip.MustParsePrefix("198.19.0.0/16"), s, nil); err != nil {
		t.Errorf("a pool apart from everything: %v", err)
	}
	if err := checkNAT64Overlap(netip.MustParsePrefix("172.17.128.0/24"), s, nil); err == nil || !strings.Contains(err.Error(), "network br") {
		t.Errorf("a pool in a network's subnet: %v", err)
	}
	if err := checkNAT64Overlap(netip.MustParsePrefix("192.0.2.0/24"), s, []netip.Addr{netip.MustParseAddr("192.0.2.7")}); err == nil || !strings.Contains(err.Error(), "uplink address") {
		t.Errorf("a pool holding an uplink address: %v", err)
	}
	s.Ports = nil
	if err := checkNAT64Overlap(netip.MustParsePrefix("172.17.128.0/24"), s, nil); err != nil {
		t.Errorf("without a NAT64 mapping the pool is not judged: %v", err)
	}
}

// TestDropNAT64Ports: a datapath without NAT64 gets the state without
// those mappings, a warning each; the other ports stay.
func TestDropNAT64Ports(t *testing.T) {
	m4, _ := ParsePublish("8080:172.17.0.2:80")
	m64, _ := ParsePublish("[::]:8080:172.17.0.2:80")
	s := State{Ports: append(m4, m64...)}
	w := s.DropNAT64Ports("iptables")
	if len(s.Ports) != 1 || s.Ports[0].IsNAT64() || len(w) != 1 || !strings.Contains(w[0], "NAT64") {
		t.Errorf("ports %v, warnings %q", s.Ports, w)
	}
	if !PublishesNAT64(&EBPF{}) {
		t.Error("the eBPF datapath serves NAT64")
	}
}

// TestNAT64OlderPins: the pins of a version without the NAT64 maps are
// adopted: a reader (bpfnet ct, bpfnet ports) goes without them, and a
// new datapath loaded over them pins them afresh. The positive twin is
// the reader of the new version's pins, which has them.
func TestNAT64OlderPins(t *testing.T) {
	requireRoot(t)
	pin := bpffsDir(t, "bpfnet-nat64-")
	d, err := NewEBPF(Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	r, err := OpenPinned(pin)
	if err != nil {
		t.Fatal(err)
	}
	if r.objs.Nat64Fwd == nil || r.objs.Nat64Rev == nil {
		t.Fatalf("the new version's pins: no NAT64 maps")
	}
	r.Close()
	for _, name := range []string{"nat64_fwd", "nat64_rev"} {
		if err := os.Remove(loader.GlobalPin(pin, name)); err != nil {
			t.Fatal(err)
		}
	}
	r, err = OpenPinned(pin)
	if err != nil {
		t.Fatalf("reading an older version's pins: %v", err)
	}
	if _, err := r.Conntrack(); err != nil {
		t.Errorf("Conntrack of an older version's pins: %v", err)
	}
	if _, err := r.Published(); err != nil {
		t.Errorf("Published of an older version's pins: %v", err)
	}
	r.Close()
	d, err = NewEBPF(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("loading over an older version's pins: %v", err)
	}
	d.Close()
	for _, name := range []string{"nat64_fwd", "nat64_rev"} {
		if _, err := os.Stat(loader.GlobalPin(pin, name)); err != nil {
			t.Errorf("%s not pinned by the new version: %v", name, err)
		}
	}
}
