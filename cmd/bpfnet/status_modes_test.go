// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestPrintContainers(t *testing.T) {
	cs := []containerJSON{
		{Container: "agent", ContainerID: "0123456789abcdef", Mode: "host", Attached: true,
			Interfaces: []containerIfaceJSON{{Mode: "host", Network: "host", Traffic: trafficJSON{RxPackets: 1, RxBytes: 2, TxPackets: 3, TxBytes: 4}}}},
		{Container: "lan1", ContainerID: "fedcba9876543210", Mode: "macvlan", Attached: true,
			Interfaces: []containerIfaceJSON{{Mode: "macvlan", Network: "lan", Interface: "eth0", Ifindex: 12, Addr: netip.MustParseAddr("10.0.0.5"), Traffic: trafficJSON{RxBytes: 500}}}},
		{Container: "sidecar", ContainerID: "aaaa", Mode: "container", Owner: "web"},
		{Container: "joiner", ContainerID: "bbbb", Mode: "container", Owner: "agent", Attached: true},
		{Container: "batch", ContainerID: "cccc", Mode: "none"},
	}
	var b bytes.Buffer
	printContainers(&b, cs)
	out := b.String()
	for _, want := range []string{
		"agent   0123456789ab  host       host           all but lo  cgroup           1        2         3        4",
		"lan1    fedcba987654  macvlan    lan 10.0.0.5   eth0        cgroup           0        500",
		"sidecar aaaa          container  shares web     -           owner's ",
		"joiner  bbbb          container  shares agent   -           owner's, cgroup",
		"batch   cccc          none       -",
	} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	b.Reset()
	printContainers(&b, nil)
	if b.Len() != 0 {
		t.Errorf("no containers printed %q", b.String())
	}
}
