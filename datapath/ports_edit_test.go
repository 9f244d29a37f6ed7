// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"net/netip"
	"slices"
	"testing"
)

// WithPorts replaces a mapping of the same host binding (a missing host
// address being every address) and refuses a binding given twice;
// WithoutPorts removes by host binding only; neither changes its input.
func TestWithWithoutPorts(t *testing.T) {
	c := netip.MustParseAddr("172.30.0.2")
	any := PortMapping{Proto: TCP, HostPort: 8080, ContainerIP: c, ContainerPort: 80}
	local := PortMapping{Proto: TCP, HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, ContainerIP: c, ContainerPort: 80}
	udp := PortMapping{Proto: UDP, HostPort: 8080, ContainerIP: c, ContainerPort: 80}
	ports := []PortMapping{any, udp}
	orig := slices.Clone(ports)

	moved := any
	moved.HostIP, moved.ContainerPort = netip.IPv4Unspecified(), 81
	got, err := WithPorts(ports, moved, local)
	if err != nil {
		t.Fatal(err)
	}
	if want := []PortMapping{udp, moved, local}; !slices.EqualFunc(got, want, PortMapping.Equal) {
		t.Errorf("WithPorts = %v, want %v", got, want)
	}
	if _, err := WithPorts(ports, local, local); err == nil {
		t.Error("WithPorts took one binding twice")
	}
	gone := udp
	gone.ContainerPort = 9999 // the container side is not looked at
	if got, want := WithoutPorts(ports, gone, local), []PortMapping{any}; !slices.EqualFunc(got, want, PortMapping.Equal) {
		t.Errorf("WithoutPorts = %v, want %v", got, want)
	}
	if !slices.EqualFunc(ports, orig, PortMapping.Equal) {
		t.Errorf("input changed: %v, was %v", ports, orig)
	}
}
