package datapath

import (
	"net/netip"
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
			if got[i] != tc.want[i] {
				t.Errorf("%s[%d] = %v, want %v", tc.spec, i, got[i], tc.want[i])
			}
		}
	}
}

func TestParsePublishErrors(t *testing.T) {
	for spec, want := range map[string]string{
		"8080:80":                        "want [hostIP:]",
		"0:172.17.0.2:80":                "not a port",
		"70000:172.17.0.2:80":            "not a port",
		"8080:172.17.0.2:80/sctp":        "unknown protocol",
		"8080:nothost:80":                "container address",
		"::1:8080:172.17.0.2:80":         "want [hostIP:]",
		"8002-8000:172.17.0.2:80":        "reversed",
		"8000-8002:172.17.0.2:9000-9001": "differ in length",
		"x:8080:172.17.0.2:80":           "host address",
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
		"unknown network":   func(s *State) { s.Endpoints[0].Network = "nope" },
		"outside subnet":    func(s *State) { s.Endpoints[0].Addr = netip.MustParseAddr("10.0.0.2") },
		"duplicate binding": func(s *State) { s.Ports = append(s.Ports, s.Ports[0]) },
		"port zero":         func(s *State) { s.Ports[0].HostPort = 0 },
		"bad proto":         func(s *State) { s.Ports[0].Proto = 1 },
		"ipv6 subnet":       func(s *State) { s.Networks[0].Subnet = netip.MustParsePrefix("fd00::/64") },
		"no veth":           func(s *State) { s.Endpoints[0].HostVeth = "" },
	} {
		s := good()
		mutate(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	// A wildcard and a specific binding of one port coexist, as in Docker.
	s = good()
	s.Ports = append(s.Ports, PortMapping{Proto: TCP, HostIP: netip.MustParseAddr("10.0.0.1"), HostPort: 80, ContainerIP: netip.MustParseAddr("172.17.0.2"), ContainerPort: 81})
	if err := s.Validate(); err != nil {
		t.Errorf("wildcard + specific binding: %v", err)
	}
}
