// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// NAT64 of a published port (bpf/lib/nat64.h): a host IPv6 port published
// to an IPv4-only container. Docker serves such a binding only through
// docker-proxy, and the container sees the proxy; here the datapath
// translates the flow, and the container sees, for each client, an
// address of the NAT64 pool.

// DefaultNAT64Pool is the IPv4 range NAT64 clients appear from: RFC 2544
// benchmarking space, never on the Internet (bpfnet run --nat64-pool).
var DefaultNAT64Pool = netip.MustParsePrefix("198.19.0.0/16")

// IsNAT64 tells whether m is a NAT64 mapping: a host IPv6 binding (`::` or
// an IPv6 host address) of an IPv4 container address.
func (m PortMapping) IsNAT64() bool {
	return m.ContainerIP.Is4() && m.HostIP.Is6() && !m.HostIP.Is4In6()
}

// CheckNAT64Pool checks a NAT64 pool on its own: an IPv4 prefix of at
// least four addresses (the first and the last are never handed out).
func CheckNAT64Pool(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("NAT64 pool %s is not an IPv4 prefix", p)
	}
	if p.Bits() > 30 || p.Bits() < 8 {
		return fmt.Errorf("NAT64 pool %s: want a prefix length from 8 to 30", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("NAT64 pool %s has host bits set (want %s)", p, p.Masked())
	}
	return nil
}

// nat64Pool is o's pool, the default filled in.
func (o *Options) nat64Pool() netip.Prefix {
	if o.NAT64Pool.IsValid() {
		return o.NAT64Pool
	}
	return DefaultNAT64Pool
}

// nat64Config is the pool and its mask as CONFIG holds them (network
// byte order).
func nat64Config(p netip.Prefix) (pool, mask uint32) {
	var m [4]byte
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return be32(p.Masked().Addr()), be32(netip.AddrFrom4(m))
}

// checkNAT64Overlap refuses a pool that overlaps an address the host
// reaches otherwise: a network's subnet, an uplink's address, the
// destination of a route of the host (but for a default route). Only a
// state with a NAT64 mapping uses the pool, and only then is it checked.
func checkNAT64Overlap(pool netip.Prefix, s State, uplinkAddrs []netip.Addr) error {
	if !hasNAT64(s) {
		return nil
	}
	for _, n := range s.Networks {
		if n.Subnet.IsValid() && n.Subnet.Overlaps(pool) {
			return fmt.Errorf("NAT64 pool %s overlaps network %s's subnet %s (choose another with --nat64-pool)", pool, n.Name, n.Subnet)
		}
	}
	for _, a := range uplinkAddrs {
		if pool.Contains(a) {
			return fmt.Errorf("NAT64 pool %s holds uplink address %s (choose another with --nat64-pool)", pool, a)
		}
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing routes for the NAT64 pool: %w", err)
	}
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(rt.Dst.IP.To4())
		if !ok || ones == 0 {
			continue
		}
		if dst := netip.PrefixFrom(a, ones).Masked(); dst.Overlaps(pool) {
			return fmt.Errorf("NAT64 pool %s overlaps the host's route to %s (choose another with --nat64-pool)", pool, dst)
		}
	}
	return nil
}

func hasNAT64(s State) bool {
	for _, m := range s.Ports {
		if m.IsNAT64() {
			return true
		}
	}
	return false
}

// checkNAT64Mapping refuses a NAT64 mapping where it makes no sense: on a
// routed network (which publishes container ports, not host ones), on a
// loopback or link-local host address (never reached from the outside).
// An allowlist is judged on the IPv6 client, as an IPv6 port's (its IPv4
// prefixes match none).
func checkNAT64Mapping(n Network, m PortMapping) error {
	switch {
	case n.GatewayMode == GatewayRouted:
		return fmt.Errorf("port %s: network %s is routed: it publishes no host port to translate (NAT64 needs a nat network)", m, n.Name)
	case n.GatewayMode == GatewayIsolated:
		return fmt.Errorf("port %s: network %s is isolated and cannot publish ports", m, n.Name)
	case m.HostIP.IsLoopback() || m.HostIP.IsLinkLocalUnicast():
		return fmt.Errorf("port %s: NAT64 of host address %s: the datapath translates what arrives from outside, never a loopback or link-local address", m, m.HostIP)
	}
	return nil
}

// nat64Flows lists the live NAT64 flows as conntrack entries of kind
// KindNAT64: the client's direction ([client]:port -> [host]:port,
// translated pool:port -> container:port) and the container's (reply).
// Expired entries, which no collector deletes (the LRU maps evict them
// when full), are left out.
func (d *EBPF) nat64Flows(now uint64) ([]CTEntry, error) {
	var out []CTEntry
	if d.objs.Nat64Fwd != nil {
		var k bpfCt6Key
		var v bpfNat64FwdEntry
		it := d.objs.Nat64Fwd.Iterate()
		for it.Next(&k, &v) {
			if v.Expires < now {
				continue
			}
			out = append(out, CTEntry{
				Kind:       KindNAT64,
				Key:        tuple6Of(k.Proto, k.Saddr, k.Daddr, k.Sport, k.Dport),
				Translated: tupleOf(k.Proto, v.T4.Saddr, v.T4.Daddr, v.T4.Sport, v.T4.Dport),
				TCPFlags:   v.TcpSeen, Ifindex: v.Ifindex, Packets: v.Packets, Bytes: v.Bytes,
				Expires: time.Duration(int64(v.Expires) - int64(now)),
			})
		}
		if err := it.Err(); err != nil {
			return out, fmt.Errorf("reading NAT64 flows: %w", err)
		}
	}
	if d.objs.Nat64Rev != nil {
		var k bpfCtKey
		var v bpfNat64RevEntry
		it := d.objs.Nat64Rev.Iterate()
		for it.Next(&k, &v) {
			if v.Expires < now {
				continue
			}
			out = append(out, CTEntry{
				Kind: KindNAT64, Reply: true,
				Key:        tupleOf(k.Proto, k.Saddr, k.Daddr, k.Sport, k.Dport),
				Translated: tuple6Of(k.Proto, v.T6.Saddr, v.T6.Daddr, v.T6.Sport, v.T6.Dport),
				TCPFlags:   v.TcpSeen, Packets: v.Packets, Bytes: v.Bytes,
				Expires: time.Duration(int64(v.Expires) - int64(now)),
			})
		}
		if err := it.Err(); err != nil {
			return out, fmt.Errorf("reading NAT64 answers: %w", err)
		}
	}
	return out, nil
}

// nat64Ports lists the NAT64 mappings of published6 (those whose target
// is an IPv4-mapped address), the host address `::` for a binding to
// every one.
func (d *EBPF) nat64Ports() ([]PublishedPort, error) {
	if d.objs.Published6 == nil {
		return nil, nil
	}
	var out []PublishedPort
	var k bpfPort6Key
	var v bpfPort6Target
	it := d.objs.Published6.Iterate()
	for it.Next(&k, &v) {
		c := addr6From(v.Addr)
		if !c.Is4In6() {
			continue
		}
		out = append(out, PublishedPort{
			Binding:     PortBinding{Proto: Proto(k.Proto), HostIP: addr6From(k.Addr), HostPort: port16(k.Port)},
			ContainerIP: c.Unmap(), ContainerPort: port16(v.Port), NAT64: true,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading NAT64 ports: %w", err)
	}
	return out, nil
}

// NAT64Publisher is a Datapath that says whether it serves NAT64
// mappings (PortMapping.IsNAT64). The eBPF datapath does; the rule-based
// comparators do not (Docker has docker-proxy for them), and are given a
// state without them, with a warning each (DropNAT64Ports).
type NAT64Publisher interface {
	PublishesNAT64() bool
}

// PublishesNAT64 tells whether dp serves NAT64 mappings.
func PublishesNAT64(dp Datapath) bool {
	p, ok := dp.(NAT64Publisher)
	return ok && p.PublishesNAT64()
}

// PublishesNAT64 is true: bpf/lib/nat64.h translates them.
func (d *EBPF) PublishesNAT64() bool { return true }

// DropNAT64Ports removes the NAT64 mappings from s and says, for each,
// that datapath name does not serve it.
func (s *State) DropNAT64Ports(name string) []string {
	var warnings []string
	kept := s.Ports[:0:0]
	for _, m := range s.Ports {
		if m.IsNAT64() {
			who := m.Container
			if who == "" {
				who = m.ContainerIP.String()
			}
			warnings = append(warnings, fmt.Sprintf("container %s: port %s: the %s datapath does not translate an IPv6 host port to an IPv4 container (NAT64)", who, m, name))
			continue
		}
		kept = append(kept, m)
	}
	s.Ports = kept
	return warnings
}
