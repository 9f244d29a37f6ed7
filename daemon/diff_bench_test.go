// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"net/netip"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// benchState is one bridge with a container and n published ports.
func benchState(n int) datapath.State {
	c := netip.MustParseAddr("172.30.0.2")
	s := datapath.State{
		Networks:  []datapath.Network{{Name: "n0", Bridge: "br0", Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true}},
		Endpoints: []datapath.Endpoint{{Network: "n0", HostVeth: "veth0", Addr: c, Container: "c0"}},
	}
	for i := range n {
		p := uint16(20000 + i)
		s.Ports = append(s.Ports, datapath.PortMapping{Proto: datapath.TCP, HostPort: p, ContainerIP: c, ContainerPort: p, Container: "c0"})
	}
	return s
}

// BenchmarkPortsDiff is the daemon's work before a one-port change with
// 10,000 ports published reaches the datapath: the diff and the
// validation of the new state.
func BenchmarkPortsDiff(b *testing.B) {
	have := benchState(10000)
	want := benchState(10001)
	for b.Loop() {
		if _, pub, ok := PortsDiff(have, want); !ok || len(pub) != 1 {
			b.Fatalf("diff: %v %d", ok, len(pub))
		}
		if err := want.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
