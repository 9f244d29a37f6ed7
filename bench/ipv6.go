// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"net/netip"
)

// The lab is dual stack: the IPv6 figures (TCP_RR and TCP_CRR, IPv6) run
// through the same modes as the IPv4 ones, over IPv6 addresses added to
// the lab's links (the lab package builds IPv4 topologies). Documentation
// prefixes, as the datapath's own lab tests use: the uplink in
// 2001:db8::/32, the container network in a ULA.
var (
	host6   = netip.MustParseAddr("2001:db8:231::1") // the host's uplink
	ext6    = netip.MustParseAddr("2001:db8:231::2") // the external host
	gw6     = netip.MustParseAddr("fd00:30::1")      // the bridge
	ctr6    = netip.MustParseAddr("fd00:30::2")      // the container
	subnet6 = netip.MustParsePrefix("fd00:30::/64")
)

// addIPv6 gives the lab's host, bridge, container and external host their
// IPv6 addresses and routes, the container a default route through the
// bridge, and (routed modes) the external host a route to the container
// network through the host's uplink.
func (e *env) addIPv6(routed bool) error {
	steps := []func() error{
		func() error { return e.topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1") },
		func() error { return e.topo.Host.AddAddr6(e.ext.Uplink, host6, 64) },
		func() error { return e.topo.Host.AddAddr6(e.topo.Bridges[0].Name, gw6, 64) },
		func() error { return e.ext.Namespace.AddAddr6("eth0", ext6, 64) },
		func() error { return e.c.Namespace.AddAddr6("eth0", ctr6, 64) },
		func() error { return e.c.Namespace.AddRoute6("eth0", netip.Prefix{}, gw6) },
		func() error { return e.topo.Host.AddRoute6(e.ext.Uplink, netip.Prefix{}, ext6) },
	}
	if routed {
		steps = append(steps, func() error { return e.ext.Namespace.AddRoute6("eth0", subnet6, host6) })
	}
	for _, st := range steps {
		if err := st(); err != nil {
			return fmt.Errorf("adding IPv6 to the lab: %w", err)
		}
	}
	return nil
}
