// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	c := netip.MustParseAddr("172.17.0.2")
	for _, tc := range []struct {
		spec string
		want []PortMapping
	}{
		{"8080:172.17.0.2:80", []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: c, ContainerPort: 80}}},
		{"127.0.0.1:8080:172.17.0.2:80/udp", []PortMapping{{Proto: UDP, HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, ContainerIP: c, ContainerPort: 80}}},
		{"8000-8002:172.17.0.2:9000-9002", []PortMapping{
			{Proto: TCP, HostPort: 8000, ContainerIP: c, ContainerPort: 9000},
			{Proto: TCP, HostPort: 8001, ContainerIP: c, ContainerPort: 9001},
			{Proto: TCP, HostPort: 8002, ContainerIP: c, ContainerPort: 9002},
		}},
		{"8080:172.17.0.2:80/tcp,allow=192.0.2.0/24+198.51.100.7", []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: c, ContainerPort: 80,
			Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.7/32")}}}},
		{"8000-8001:172.17.0.2:80,allow=10.0.0.0/8", []PortMapping{
			{Proto: TCP, HostPort: 8000, ContainerIP: c, ContainerPort: 80, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
			{Proto: TCP, HostPort: 8001, ContainerIP: c, ContainerPort: 80, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		}},
		{"8080:172.17.0.2:80,allow=10.0.0.0/8+fd00:1::/64+2001:db8::7", []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: c, ContainerPort: 80,
			Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00:1::/64"), netip.MustParsePrefix("2001:db8::7/128")}}}},
		{"8000-8001:172.17.0.2:80/tcp", []PortMapping{
			{Proto: TCP, HostPort: 8000, ContainerIP: c, ContainerPort: 80},
			{Proto: TCP, HostPort: 8001, ContainerIP: c, ContainerPort: 80},
		}},
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
}

func TestParsePublishErrors(t *testing.T) {
	for spec, want := range map[string]string{
		"8080:80":                                          "want [hostIP:]",
		"0:172.17.0.2:80":                                  "not a port",
		"70000:172.17.0.2:80":                              "not a port",
		"8080:172.17.0.2:80/sctp":                          "unknown protocol",
		"8080:nothost:80":                                  "container address",
		"::1:8080:172.17.0.2:80":                           "want [hostIP:]",
		"8002-8000:172.17.0.2:80":                          "reversed",
		"8000-8002:172.17.0.2:9000-9001":                   "differ in length",
		"x:8080:172.17.0.2:80":                             "host address",
		"8080:172.17.0.2:80,allow=":                        "empty allowlist",
		"8080:172.17.0.2:80,allow=10.0.0.0/33":             "not a CIDR prefix",
		"8080:172.17.0.2:80,allow=10.0.0.0/8+":             "not a CIDR prefix",
		"8080:172.17.0.2:80,allow=::ffff:10.0.0.0/104":     "IPv4-mapped",
		"8080:172.17.0.2:80,allow=2001:db8::/129":          "not a CIDR prefix",
		"8080:172.17.0.2:80,allow=fe80::1%eth0":            "zone",
		"8080:172.17.0.2:80,allow=10.0.0.1,allow=10.0.0.2": "given twice",
		"8080:172.17.0.2:80,deny=10.0.0.1":                 "unknown option",
	} {
		_, err := ParsePublish(spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePublish(%q) = %v, want an error with %q", spec, err, want)
		}
	}
}

func TestStateValidate(t *testing.T) {
	good := func() State {
		return State{
			Networks:  []Network{{Name: "br", Bridge: "br0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1")}},
			Endpoints: []Endpoint{{Container: "a", Network: "br", Addr: netip.MustParseAddr("172.17.0.2"), HostVeth: "veth0"}},
			Ports:     []PortMapping{{Proto: TCP, HostPort: 80, ContainerIP: netip.MustParseAddr("172.17.0.2"), ContainerPort: 80}},
		}
	}
	s := good()
	if err := s.Validate(); err != nil {
		t.Fatalf("valid state: %v", err)
	}
	for name, mutate := range map[string]func(*State){
		"unknown network": func(s *State) { s.Endpoints[0].Network = "nope" },
		"outside subnet":  func(s *State) { s.Endpoints[0].Addr = netip.MustParseAddr("10.0.0.2") },
		"IPv4-mapped allowlist": func(s *State) {
			s.Ports[0].Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("::ffff:192.0.2.0/120")}
		},
		"invalid allowlist prefix": func(s *State) { s.Ports[0].Allow = []netip.Prefix{{}} },
		"duplicate binding":        func(s *State) { s.Ports = append(s.Ports, s.Ports[0]) },
		"port zero":                func(s *State) { s.Ports[0].HostPort = 0 },
		"bad proto":                func(s *State) { s.Ports[0].Proto = 1 },
		"ipv6 subnet":              func(s *State) { s.Networks[0].Subnet = netip.MustParsePrefix("fd00::/64") },
		"no veth":                  func(s *State) { s.Endpoints[0].HostVeth = "" },
	} {
		s := good()
		mutate(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	// Each refusal names its problem; its positive twin, the same ports
	// told apart by protocol or by two specific addresses, is accepted.
	port := func(hostIP string, hostPort uint16, proto Proto) PortMapping {
		m := PortMapping{Proto: proto, HostPort: hostPort, ContainerIP: netip.MustParseAddr("172.17.0.2"), ContainerPort: 81}
		if hostIP != "" {
			m.HostIP = netip.MustParseAddr(hostIP)
		}
		return m
	}
	ranges := func(specs ...string) []PortMapping {
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
	for _, tc := range []struct {
		name  string
		ports []PortMapping
		want  string
	}{
		{"wildcard then specific", []PortMapping{port("", 80, TCP), port("10.0.0.1", 80, TCP)},
			"port 10.0.0.1:80->172.17.0.2:81/tcp: host port already published by 80->172.17.0.2:81/tcp (a port on 0.0.0.0 takes it on every address)"},
		{"specific then wildcard", []PortMapping{port("10.0.0.1", 80, TCP), port("0.0.0.0", 80, TCP)},
			"port 80->172.17.0.2:81/tcp: host port already published by 10.0.0.1:80->172.17.0.2:81/tcp (a port on 0.0.0.0 takes it on every address)"},
		{"same specific address twice", []PortMapping{port("10.0.0.1", 80, TCP), port("10.0.0.1", 80, TCP)},
			"port 10.0.0.1:80->172.17.0.2:81/tcp: host port already published by 10.0.0.1:80->172.17.0.2:81/tcp"},
		{"overlapping ranges", ranges("8000-8002:172.17.0.2:9000-9002", "8002-8003:172.17.0.2:80"),
			"port 8002->172.17.0.2:80/tcp: host port already published by 8002->172.17.0.2:9002/tcp"},
		{"container in no network", ranges("8080:10.250.0.2:80"),
			"port 8080->10.250.0.2:80/tcp: container address 10.250.0.2 is in none of the networks"},
		{"two specific addresses", []PortMapping{port("10.0.0.1", 80, TCP), port("10.0.0.2", 80, TCP)}, ""},
		{"one port, two protocols", []PortMapping{port("", 80, TCP), port("10.0.0.1", 80, UDP)}, ""},
		{"adjacent ranges", ranges("8000-8002:172.17.0.2:9000-9002", "8003-8004:172.17.0.2:80"), ""},
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
		// A runtime's state keeps the first binding and says why the
		// other was left out.
		s.Ports = slices.Clone(tc.ports)
		warnings := s.SkipUnservablePorts()
		if tc.want == "" {
			if len(warnings) != 0 || len(s.Ports) != len(tc.ports) {
				t.Errorf("%s: SkipUnservablePorts left out %v", tc.name, warnings)
			}
			continue
		}
		if len(warnings) != 1 || warnings[0] != "container 172.17.0.2: "+tc.want && warnings[0] != "container 10.250.0.2: "+tc.want {
			t.Errorf("%s: warnings %q, want one saying %q", tc.name, warnings, tc.want)
		}
		if err := s.Validate(); err != nil {
			t.Errorf("%s: what SkipUnservablePorts kept is refused: %v", tc.name, err)
		}
	}
}

// TestStateValidateDualStack checks the IPv6 half of a dual-stack
// network, endpoint and host address, each refusal beside the state it
// breaks being accepted.
func TestStateValidateDualStack(t *testing.T) {
	good := func() State {
		return State{
			Networks: []Network{{Name: "br", Bridge: "br0",
				Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1"),
				Subnet6: netip.MustParsePrefix("fd00:17::/64"), Gateway6: netip.MustParseAddr("fd00:17::1")}},
			Endpoints: []Endpoint{{Container: "a", Network: "br", Addr: netip.MustParseAddr("172.17.0.2"),
				Addr6: netip.MustParseAddr("fd00:17::2"), HostVeth: "veth0"}},
		}
	}
	s := good()
	if err := s.Validate(); err != nil {
		t.Fatalf("valid dual-stack state: %v", err)
	}
	if n, ok := networkOf(s.Networks, netip.MustParseAddr("fd00:17::9")); !ok || n.Name != "br" {
		t.Errorf("networkOf(fd00:17::9) = %v, %v; want br", n.Name, ok)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*State)
		want   string
	}{
		{"ipv4 prefix as subnet6", func(s *State) { s.Networks[0].Subnet6 = netip.MustParsePrefix("10.0.0.0/8") },
			"network br: subnet6 10.0.0.0/8 is not an IPv6 prefix"},
		{"gateway6 outside", func(s *State) { s.Networks[0].Gateway6 = netip.MustParseAddr("fd00:18::1") },
			"network br: IPv6 gateway fd00:18::1 is outside fd00:17::/64"},
		{"addr6 outside", func(s *State) { s.Endpoints[0].Addr6 = netip.MustParseAddr("fd00:18::2") },
			"endpoint a: IPv6 address fd00:18::2 is outside the network's IPv6 subnet fd00:17::/64"},
		{"addr6 on an IPv4-only network", func(s *State) {
			s.Networks[0].Subnet6, s.Networks[0].Gateway6 = netip.Prefix{}, netip.Addr{}
		}, "endpoint a: IPv6 address fd00:17::2 is outside the network's IPv6 subnet invalid Prefix"},
		{"addr6 twice", func(s *State) {
			s.Endpoints = append(s.Endpoints, Endpoint{Container: "b", Network: "br", Addr: netip.MustParseAddr("172.17.0.3"),
				Addr6: netip.MustParseAddr("fd00:17::2"), HostVeth: "veth1"})
		}, "endpoint b: address fd00:17::2 used twice"},
		{"link-local host_ipv6", func(s *State) { s.Networks[0].HostIPv6 = netip.MustParseAddr("fe80::1") },
			"network br: host_ipv6 fe80::1 is not a global IPv6 host address"},
		{"host_ipv6 not the host's", func(s *State) {
			s.Networks[0].HostIPv6 = netip.MustParseAddr("2001:db8::5")
			s.HostAddrs = []netip.Addr{netip.MustParseAddr("2001:db8::6")}
		}, "network br: host_ipv6 2001:db8::5 is not an address of this host"},
		{"isolated ipv6 needs internal", func(s *State) { s.Networks[0].GatewayModeIPv6 = GatewayIsolated },
			"network br: gateway mode isolated needs an internal network"},
		{"host_ipv6 of the host", func(s *State) {
			s.Networks[0].HostIPv6 = netip.MustParseAddr("2001:db8::5")
			s.HostAddrs = []netip.Addr{netip.MustParseAddr("2001:db8::5")}
		}, ""},
		{"second dual-stack endpoint", func(s *State) {
			s.Endpoints = append(s.Endpoints, Endpoint{Container: "b", Network: "br", Addr: netip.MustParseAddr("172.17.0.3"),
				Addr6: netip.MustParseAddr("fd00:17::3"), HostVeth: "veth1"})
		}, ""},
	} {
		s := good()
		tc.mutate(&s)
		err := s.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestStateValidatePortsIPv6: IPv6 mappings take host and container
// address of one family; :: collides with IPv6 bindings of its port only,
// so a port published on 0.0.0.0 and on :: (Docker's -p 8080:80 on a
// dual-stack network) is two bindings.
func TestStateValidatePortsIPv6(t *testing.T) {
	c4, c6 := netip.MustParseAddr("172.17.0.2"), netip.MustParseAddr("fd00:17::2")
	port := func(host string, hp uint16, cip netip.Addr) PortMapping {
		m := PortMapping{Proto: TCP, HostPort: hp, ContainerIP: cip, ContainerPort: 80}
		if host != "" {
			m.HostIP = netip.MustParseAddr(host)
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		ports []PortMapping
		want  string
	}{
		{"0.0.0.0 and :: of one port", []PortMapping{port("", 8080, c4), port("", 8080, c6)}, ""},
		{"explicit :: beside 0.0.0.0", []PortMapping{port("0.0.0.0", 8080, c4), port("::", 8080, c6)}, ""},
		{"specific IPv6 beside 0.0.0.0", []PortMapping{port("", 8080, c4), port("2001:db8::1", 8080, c6)}, ""},
		{"two specific IPv6", []PortMapping{port("2001:db8::1", 8080, c6), port("2001:db8::2", 8080, c6)}, ""},
		{":: then specific IPv6", []PortMapping{port("", 8080, c6), port("2001:db8::1", 8080, c6)},
			"port [2001:db8::1]:8080->[fd00:17::2]:80/tcp: host port already published by 8080->[fd00:17::2]:80/tcp (a port on :: takes it on every address)"},
		{":: twice", []PortMapping{port("::", 8080, c6), port("", 8080, c6)},
			"port 8080->[fd00:17::2]:80/tcp: host port already published by 8080->[fd00:17::2]:80/tcp"},
		{"IPv4 host, IPv6 container", []PortMapping{port("10.0.0.1", 8080, c6)},
			"port 10.0.0.1:8080->[fd00:17::2]:80/tcp: host address 10.0.0.1 and container address fd00:17::2 are of different families"},
		// NAT64 (nat64_test.go has the rest).
		{"IPv6 host, IPv4 container", []PortMapping{port("2001:db8::1", 8080, c4)}, ""},
		{"NAT64 :: beside an IPv6 ::", []PortMapping{port("::", 8080, c6), port("::", 8080, c4)},
			"port [::]:8080->172.17.0.2:80/tcp: host port already published by 8080->[fd00:17::2]:80/tcp"},
		{"0.0.0.0, IPv6 container", []PortMapping{port("0.0.0.0", 8080, c6)},
			"port 8080->[fd00:17::2]:80/tcp: host address 0.0.0.0 and container address fd00:17::2 are of different families"},
	} {
		s := State{
			Networks: []Network{{Name: "br", Bridge: "br0",
				Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1"),
				Subnet6: netip.MustParsePrefix("fd00:17::/64"), Gateway6: netip.MustParseAddr("fd00:17::1")}},
			Endpoints: []Endpoint{{Container: "a", Network: "br", Addr: c4, Addr6: c6, HostVeth: "veth0"}},
			Ports:     tc.ports,
		}
		err := s.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}
