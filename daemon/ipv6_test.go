// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// fakeDatapath6 is fakeDatapath that publishes IPv6 ports.
type fakeDatapath6 struct{ fakeDatapath }

func (f *fakeDatapath6) PublishesIPv6() bool { return true }

func dualBase(ports ...datapath.PortMapping) datapath.State {
	s := baseState(ports...)
	s.Networks[0].Subnet6, s.Networks[0].Gateway6 = netip.MustParsePrefix("fd00:30::/64"), netip.MustParseAddr("fd00:30::1")
	s.Endpoints[0].Addr6 = netip.MustParseAddr("fd00:30::2")
	return s
}

// TestIPv6PortsLeftOut: a datapath that does not publish IPv6 ports is
// given the state without them, and the state says why; one that does
// gets them, on Start and on Reconcile alike.
func TestIPv6PortsLeftOut(t *testing.T) {
	ctx := context.Background()
	a80 := pm(datapath.TCP, "", 8080, "172.30.0.2", 80)
	b80 := pm(datapath.TCP, "::", 8080, "fd00:30::2", 80)
	b53 := pm(datapath.UDP, "::", 5353, "fd00:30::2", 53)

	plain := &fakeDatapath{}
	src := &Static{}
	d := New(Config{Datapath: plain, Source: src})
	if err := d.Start(ctx, dualBase(a80, b80)); err != nil {
		t.Fatal(err)
	}
	cur := d.Current()
	if !slices.EqualFunc(cur.Ports, []datapath.PortMapping{a80}, datapath.PortMapping.Equal) {
		t.Errorf("without IPv6: ports %v, want the IPv4 one", cur.Ports)
	}
	if len(cur.Warnings) != 1 || !strings.Contains(cur.Warnings[0], "the fake datapath does not publish IPv6 ports") {
		t.Errorf("without IPv6: warnings %q", cur.Warnings)
	}
	src.Set(dualBase(a80, b80, b53))
	if _, err := d.Reconcile(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if cur := d.Current(); len(cur.Ports) != 1 || len(cur.Warnings) != 2 {
		t.Errorf("without IPv6, after Reconcile: ports %v warnings %q", cur.Ports, cur.Warnings)
	}

	six := &fakeDatapath6{}
	src6 := &Static{}
	d6 := New(Config{Datapath: six, Source: src6})
	if err := d6.Start(ctx, dualBase(a80, b80)); err != nil {
		t.Fatal(err)
	}
	src6.Set(dualBase(a80, b80, b53))
	if _, err := d6.Reconcile(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if cur := d6.Current(); len(cur.Ports) != 3 || len(cur.Warnings) != 0 {
		t.Errorf("with IPv6: ports %v warnings %q, want all three and none", cur.Ports, cur.Warnings)
	}
}
