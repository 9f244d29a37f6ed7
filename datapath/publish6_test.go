// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"net/netip"
	"strings"
	"testing"
)

// TestParsePublishIPv6 reads Docker's bracketed IPv6 syntax: wildcard,
// specific host address, UDP, ranges, and a container address alone.
func TestParsePublishIPv6(t *testing.T) {
	c2, c3 := netip.MustParseAddr("fd00:251::2"), netip.MustParseAddr("fd00:251::3")
	any6 := netip.IPv6Unspecified()
	for _, tc := range []struct {
		spec string
		want []PortMapping
	}{
		{"[::]:8080:[fd00:251::2]:80", []PortMapping{{Proto: TCP, HostIP: any6, HostPort: 8080, ContainerIP: c2, ContainerPort: 80}}},
		{"8080:[fd00:251::2]:80", []PortMapping{{Proto: TCP, HostIP: any6, HostPort: 8080, ContainerIP: c2, ContainerPort: 80}}},
		{"[fd00:252::100]:8081:[fd00:251::3]:81/udp", []PortMapping{{Proto: UDP, HostIP: netip.MustParseAddr("fd00:252::100"), HostPort: 8081, ContainerIP: c3, ContainerPort: 81}}},
		{"[::]:18000-18002:[fd00:251::2]:9000-9002", []PortMapping{
			{Proto: TCP, HostIP: any6, HostPort: 18000, ContainerIP: c2, ContainerPort: 9000},
			{Proto: TCP, HostIP: any6, HostPort: 18001, ContainerIP: c2, ContainerPort: 9001},
			{Proto: TCP, HostIP: any6, HostPort: 18002, ContainerIP: c2, ContainerPort: 9002},
		}},
		{"[::1]:8080:[fd00:251::2]:80/tcp,allow=192.0.2.0/24", []PortMapping{{Proto: TCP, HostIP: netip.IPv6Loopback(), HostPort: 8080, ContainerIP: c2, ContainerPort: 80,
			Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}}},
		{"[::]:8080:[fd00:251::2]:80,allow=fd00:1::/64+2001:db8::7", []PortMapping{{Proto: TCP, HostIP: any6, HostPort: 8080, ContainerIP: c2, ContainerPort: 80,
			Allow: []netip.Prefix{netip.MustParsePrefix("fd00:1::/64"), netip.MustParsePrefix("2001:db8::7/128")}}}},
		// The IPv4 forms are read as before.
		{"0.0.0.0:8080:172.17.0.2:80", []PortMapping{{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: 8080, ContainerIP: netip.MustParseAddr("172.17.0.2"), ContainerPort: 80}}},
	} {
		got, err := ParsePublish(tc.spec)
		if err != nil {
			t.Errorf("%s: %v", tc.spec, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d mappings, want %d", tc.spec, len(got), len(tc.want))
			continue
		}
		for i := range got {
			if !got[i].Equal(tc.want[i]) {
				t.Errorf("%s[%d] = %v, want %v", tc.spec, i, got[i], tc.want[i])
			}
		}
	}
	m, _ := ParsePublish("[fd00:252::100]:8081:[fd00:251::3]:81/udp")
	if s := m[0].String(); s != "[fd00:252::100]:8081->[fd00:251::3]:81/udp" {
		t.Errorf("String() = %q", s)
	}
}

func TestParsePublishIPv6Errors(t *testing.T) {
	for spec, want := range map[string]string{
		"0.0.0.0:8080:[fd00:251::2]:80":                  "different families",
		"127.0.0.1:8080:[fd00:251::2]:80":                "different families",
		"[::]:8080:fd00:251::2:80":                       "want [hostIP:]",
		"::1:8080:172.17.0.2:80":                         "IPv6 addresses in brackets",
		"[::1:8080:[fd00:251::2]:80":                     "a bracket opens inside brackets",
		"[::]8080:[fd00:251::2]:80":                      "colon must follow the closing bracket",
		"[::]:8080:[fd00:251::2:80":                      "no closing bracket",
		"::]:8080:[fd00:251::2]:80":                      "stray bracket",
		"[fe80::1%eth0]:8080:[fd00:251::2]:80":           "zone ids are not supported",
		"[::]:8080:[fe80::2%br0]:80":                     "zone ids are not supported",
		"[10.0.0.1]:8080:172.17.0.2:80":                  "only IPv6 addresses go in brackets",
		"[::ffff:10.0.0.1]:8080:[fd00:251::2]:80":        "IPv4-mapped",
		"[]:8080:[fd00:251::2]:80":                       "not an IP address",
		"[::]:8080:[fd00:251::2]:80,allow=::ffff:0:0/96": "IPv4-mapped",
		"[::]:18000-18005:[fd00:251::2]:9000-9001":       "differ in length",
		"[::]:8080:[fd00:251::2]:80/sctp":                "unknown protocol",
		"[::]:8080:[fd00:251::2]:0":                      "not a port",
		"[fd00::1]:8080:[fd00:251::2]:80:90":             "want [hostIP:]",
		"[fd00::1]:[fd00::2]:8080:[fd00:251::2]:80":      "want [hostIP:]",
		"[fd00::1]:8080:[fd00:251::2]:[fd00::3]":         "not a port",
		"[fd00::1]:8080:[fd00:251::2]:80]":               "stray bracket",
		"[fd00::1]:8080:[fd00:251::2]:80[":               "stray bracket",
		"[fd00::1]:8080:[fd00:251::2]:80,allow=[::1]":    "not a CIDR prefix",
	} {
		_, err := ParsePublish(spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePublish(%q) = %v, want an error with %q", spec, err, want)
		}
	}
}

// TestValidatePortsIPv6 checks the IPv6 bindings: :: collides with the
// IPv6 bindings of its port and protocol only, 0.0.0.0 with the IPv4
// ones only, so Docker's two bindings of -p 8080:80 are both accepted.
func TestValidatePortsIPv6(t *testing.T) {
	good := func() State {
		return State{
			Networks: []Network{{Name: "br", Bridge: "br0",
				Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1"),
				Subnet6: netip.MustParsePrefix("fd00:17::/64"), Gateway6: netip.MustParseAddr("fd00:17::1")}},
			Endpoints: []Endpoint{{Container: "a", Network: "br", Addr: netip.MustParseAddr("172.17.0.2"),
				Addr6: netip.MustParseAddr("fd00:17::2"), HostVeth: "veth0"}},
		}
	}
	pm := func(specs ...string) []PortMapping {
		var out []PortMapping
		for _, spec := range specs {
			m, err := ParsePublish(spec)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m...)
		}
		return out
	}
	zeroHost := pm("8080:[fd00:17::2]:80")
	zeroHost[0].HostIP = netip.Addr{}
	for _, tc := range []struct {
		name  string
		ports []PortMapping
		want  string
	}{
		{"docker's two bindings", pm("0.0.0.0:8080:172.17.0.2:80", "[::]:8080:[fd00:17::2]:80"), ""},
		{"zero host address and 0.0.0.0", append(pm("0.0.0.0:8080:172.17.0.2:80"), zeroHost...), ""},
		{"v6 wildcard and a v4 address", pm("[::]:8080:[fd00:17::2]:80", "10.0.0.1:8080:172.17.0.2:80"), ""},
		{"two v6 addresses", pm("[fd00:99::1]:8080:[fd00:17::2]:80", "[fd00:99::2]:8080:[fd00:17::2]:80"), ""},
		{"v6 wildcard, two protocols", pm("[::]:8080:[fd00:17::2]:80", "[::]:8080:[fd00:17::2]:80/udp"), ""},
		{"v6 wildcard twice", pm("[::]:8080:[fd00:17::2]:80", "[::]:8080:[fd00:17::2]:81"),
			"port 8080->[fd00:17::2]:81/tcp: host port already published by 8080->[fd00:17::2]:80/tcp"},
		{"v6 wildcard then v6 address", pm("[::]:8080:[fd00:17::2]:80", "[fd00:99::1]:8080:[fd00:17::2]:81"),
			"port [fd00:99::1]:8080->[fd00:17::2]:81/tcp: host port already published by 8080->[fd00:17::2]:80/tcp (a port on :: takes it on every address)"},
		{"zero host address is the v6 wildcard", append(zeroHost, pm("[fd00:99::1]:8080:[fd00:17::2]:81")...),
			"port [fd00:99::1]:8080->[fd00:17::2]:81/tcp: host port already published by 8080->[fd00:17::2]:80/tcp (a port on :: takes it on every address)"},
		{"mixed families", []PortMapping{{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: 8080, ContainerIP: netip.MustParseAddr("fd00:17::2"), ContainerPort: 80}},
			"port 8080->[fd00:17::2]:80/tcp: host address 0.0.0.0 and container address fd00:17::2 are of different families"},
		{"v6 container outside the networks", pm("[::]:8080:[fd00:18::2]:80"),
			"port 8080->[fd00:18::2]:80/tcp: container address fd00:18::2 is in none of the networks"},
	} {
		s := good()
		s.Ports = tc.ports
		err := s.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}
