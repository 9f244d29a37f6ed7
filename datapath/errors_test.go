// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"net/netip"
	"testing"
)

// TestErrPortTaken: a host port bound twice is refused with an error that
// wraps ErrPortTaken, by Validate and by PublishPorts' check next to the
// applied state alike; the other refusals (a container in no network) do
// not wrap it, and a free port is accepted.
func TestErrPortTaken(t *testing.T) {
	ctr := netip.MustParseAddr("172.17.0.2")
	port := func(hostIP string, hostPort uint16, proto Proto) PortMapping {
		m := PortMapping{Proto: proto, HostPort: hostPort, ContainerIP: ctr, ContainerPort: 80}
		if hostIP != "" {
			m.HostIP = netip.MustParseAddr(hostIP)
		}
		return m
	}
	state := func(ports ...PortMapping) State {
		return State{
			Networks:  []Network{{Name: "br", Bridge: "br0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1")}},
			Endpoints: []Endpoint{{Container: "a", Network: "br", Addr: ctr, HostVeth: "veth0"}},
			Ports:     ports,
		}
	}
	for _, tc := range []struct {
		name  string
		ports []PortMapping
		taken bool
	}{
		{"same port twice", []PortMapping{port("", 8080, TCP), port("", 8080, TCP)}, true},
		{"wildcard and specific", []PortMapping{port("", 8080, UDP), port("10.0.0.1", 8080, UDP)}, true},
		{"two protocols", []PortMapping{port("", 8080, TCP), port("", 8080, UDP)}, false},
		{"two ports", []PortMapping{port("", 8080, TCP), port("", 8081, TCP)}, false},
	} {
		s := state(tc.ports...)
		err := s.Validate()
		if got := errors.Is(err, ErrPortTaken); got != tc.taken || (!tc.taken && err != nil) {
			t.Errorf("Validate, %s: %v, want taken %v", tc.name, err, tc.taken)
		}
	}
	s := state(port("", 8080, TCP))
	s.Ports = append(s.Ports, PortMapping{Proto: TCP, HostPort: 8081, ContainerIP: netip.MustParseAddr("10.250.0.2"), ContainerPort: 80})
	if err := s.Validate(); err == nil || errors.Is(err, ErrPortTaken) {
		t.Errorf("Validate of a container in no network: %v, want an error that is not ErrPortTaken", err)
	}

	// PublishPorts' check against what is applied: 8080 on every
	// address is there.
	d := &EBPF{applied: &resolved{
		nets:  map[bpfNetKey]bpfNetInfo{{Prefixlen: 16, Addr: be32(netip.MustParseAddr("172.17.0.0"))}: {}},
		ports: map[bpfPortKey]bpfPortTarget{{Port: be16(8080), Proto: uint8(TCP)}: {Addr: be32(ctr), Port: be16(80)}},
	}}
	if err := d.checkPublish(port("10.0.0.1", 8080, TCP), nil); !errors.Is(err, ErrPortTaken) {
		t.Errorf("publishing 10.0.0.1:8080 next to 0.0.0.0:8080: %v, want ErrPortTaken", err)
	}
	if err := d.checkPublish(port("10.0.0.1", 8081, TCP), nil); err != nil {
		t.Errorf("publishing 10.0.0.1:8081 next to 0.0.0.0:8080: %v", err)
	}
	if err := d.checkPublish(PortMapping{Proto: TCP, HostPort: 8082, ContainerIP: netip.MustParseAddr("10.250.0.2"), ContainerPort: 80}, nil); err == nil || errors.Is(err, ErrPortTaken) {
		t.Errorf("publishing to a container in no network: %v, want an error that is not ErrPortTaken", err)
	}
}
