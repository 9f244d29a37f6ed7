// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// DropReason says why the datapath dropped a packet: enum drop_reason of
// bpf/lib/common.h, the key of the drops map.
type DropReason uint32

// The drop reasons, generated from enum drop_reason.
const (
	DropMalformed    = DropReason(bpfDropReasonDROP_MALFORMED)
	DropNotPublished = DropReason(bpfDropReasonDROP_NOT_PUBLISHED)
	DropCTFull       = DropReason(bpfDropReasonDROP_CT_FULL)
	DropNATExhausted = DropReason(bpfDropReasonDROP_NAT_EXHAUSTED)
	DropRewrite      = DropReason(bpfDropReasonDROP_REWRITE)
	DropCTMiss       = DropReason(bpfDropReasonDROP_CT_MISS)
	// DropIsolation: between containers of two networks (Docker's
	// DOCKER-ISOLATION chains).
	DropIsolation = DropReason(bpfDropReasonDROP_ISOLATION)
	// DropICC: between containers of a network created with
	// com.docker.network.bridge.enable_icc=false.
	DropICC = DropReason(bpfDropReasonDROP_ICC)
	// DropInternal: leaving or entering an internal network.
	DropInternal = DropReason(bpfDropReasonDROP_INTERNAL)
	// DropSpoofed: a container sent from an address that is not its own
	// (or from a veth the datapath does not know).
	DropSpoofed = DropReason(bpfDropReasonDROP_SPOOFED)
	// DropDirectAccess: to a container's address from an interface that
	// may not reach it directly (Docker 28's raw-table drop; from an
	// uplink such packets count as DropNotPublished).
	DropDirectAccess = DropReason(bpfDropReasonDROP_DIRECT_ACCESS)
	// DropPortDenied: a new flow to a published port from a source its
	// allowlist leaves out (counted per port too: PortDenied).
	DropPortDenied = DropReason(bpfDropReasonDROP_PORT_DENIED)
	// DropIPv6ExtHdr: an IPv6 packet with more extension headers than the
	// datapath walks (IPV6_EXT_MAX in bpf/lib/ipv6.h), whose flow it
	// therefore cannot tell.
	DropIPv6ExtHdr = DropReason(bpfDropReasonDROP_IPV6EXTHDR)
	// DropNAT64: a packet of a NAT64 port (an IPv6 host port of an
	// IPv4 container, bpf/lib/nat64.h) that is not translated: a
	// fragment, IPv6 extension headers, IPv4 options, a hop limit spent,
	// an IPv4 UDP answer without a checksum.
	DropNAT64 = DropReason(bpfDropReasonDROP_NAT64)
	dropMax   = int(bpfDropReasonDROP_MAX)

	// dropMalformedOld is the number that malformed drops had before
	// they moved to DropMalformed, so that no drop reason is 0 (the
	// programs' helpers return negative reasons). A pinned drops map of an
	// earlier version that a running bpfnet upgrades in place keeps its
	// count there: Drops reads it as malformed.
	dropMalformedOld = 0
)

var dropNames = map[DropReason]string{
	DropMalformed:    "malformed",
	DropNotPublished: "not_published",
	DropCTFull:       "ct_full",
	DropNATExhausted: "nat_ports_exhausted",
	DropRewrite:      "rewrite_failed",
	DropCTMiss:       "ct_miss",
	DropIsolation:    "isolation",
	DropICC:          "icc_disabled",
	DropInternal:     "internal",
	DropSpoofed:      "spoofed",
	DropDirectAccess: "direct_access",
	DropPortDenied:   "port_denied",
	DropIPv6ExtHdr:   "ipv6_ext_headers",
	DropNAT64:        "nat64",
}

func (r DropReason) String() string {
	if s, ok := dropNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason_%d", uint32(r))
}

// DropReasons lists every reason the datapath knows.
func DropReasons() []DropReason {
	return []DropReason{DropMalformed, DropNotPublished, DropCTFull, DropNATExhausted, DropRewrite, DropCTMiss, DropIsolation, DropICC, DropInternal, DropSpoofed, DropDirectAccess, DropPortDenied, DropIPv6ExtHdr, DropNAT64}
}

// Event is a counted datapath event: enum event_kind of
// bpf/lib/common.h, the key of the events map.
type Event uint32

// The events, generated from enum event_kind.
const (
	EventCTNewDNAT      = Event(bpfEventKindEV_CT_NEW_DNAT)
	EventCTNewSNAT      = Event(bpfEventKindEV_CT_NEW_SNAT)
	EventCTNewHairpin   = Event(bpfEventKindEV_CT_NEW_HAIRPIN)
	EventCTRecreated    = Event(bpfEventKindEV_CT_RECREATED)
	EventCTPeerRestored = Event(bpfEventKindEV_CT_PEER_RESTORED)
	EventRedirectPeer   = Event(bpfEventKindEV_REDIRECT_PEER)
	EventRedirectNeigh  = Event(bpfEventKindEV_REDIRECT_NEIGH)
	EventFragTracked    = Event(bpfEventKindEV_FRAG_TRACKED)
	// EventNATHostSocket: a masquerade candidate port was refused because
	// a socket of the host uses its tuple.
	EventNATHostSocket = Event(bpfEventKindEV_NAT_HOST_SOCKET)
	// EventNATHostRemap: a flow of the host whose tuple a translated flow
	// holds was given another source port.
	EventNATHostRemap = Event(bpfEventKindEV_NAT_HOST_REMAP)
	// EventCTHalfOpen: a new published-port flow, unassured (in ct4_syn)
	// until its client answers the container.
	EventCTHalfOpen = Event(bpfEventKindEV_CT_HALF_OPEN)
	// EventCTPromoted: an unassured flow whose client answered, moved into
	// ct4.
	EventCTPromoted = Event(bpfEventKindEV_CT_PROMOTED)
	// EventCTNewDirect: a new flow from outside a routed or
	// nat-unprotected network (the outside, or for a routed one another
	// network's container) straight to its container's address.
	EventCTNewDirect = Event(bpfEventKindEV_CT_NEW_DIRECT)
	// EventCTNewNAT64: a new NAT64 flow of a published port.
	EventCTNewNAT64 = Event(bpfEventKindEV_CT_NEW_NAT64)
	eventMax        = int(bpfEventKindEV_MAX)
)

var eventNames = map[Event]string{
	EventCTNewDNAT:      "ct_new_dnat",
	EventCTNewSNAT:      "ct_new_snat",
	EventCTNewHairpin:   "ct_new_hairpin",
	EventCTRecreated:    "ct_recreated",
	EventCTPeerRestored: "ct_peer_restored",
	EventRedirectPeer:   "redirect_peer",
	EventRedirectNeigh:  "redirect_neigh",
	EventFragTracked:    "fragment_tracked",
	EventNATHostSocket:  "nat_host_socket",
	EventNATHostRemap:   "nat_host_remap",
	EventCTHalfOpen:     "ct_half_open",
	EventCTPromoted:     "ct_promoted",
	EventCTNewDirect:    "ct_new_direct",
	EventCTNewNAT64:     "ct_new_nat64",
}

func (e Event) String() string {
	if s, ok := eventNames[e]; ok {
		return s
	}
	return fmt.Sprintf("event_%d", uint32(e))
}

// Events lists every event the datapath counts.
func Events() []Event {
	return []Event{EventCTNewDNAT, EventCTNewSNAT, EventCTNewHairpin, EventCTRecreated, EventCTPeerRestored, EventRedirectPeer, EventRedirectNeigh, EventFragTracked, EventNATHostSocket, EventNATHostRemap, EventCTHalfOpen, EventCTPromoted, EventCTNewDirect, EventCTNewNAT64}
}

// Traffic is what a container sent and received, summed over CPUs.
type Traffic struct {
	RxPackets, RxBytes, TxPackets, TxBytes uint64
}

// add sums one CPU's counters in (the TC and cgroup programs' counters
// have one layout).
func (t *Traffic) add(v bpfTraffic) {
	t.RxPackets += v.RxPackets
	t.RxBytes += v.RxBytes
	t.TxPackets += v.TxPackets
	t.TxBytes += v.TxBytes
}

func sumArray(m *ebpf.Map, n int) ([]uint64, error) {
	out := make([]uint64, n)
	var vals []uint64
	for i := 0; i < n; i++ {
		if err := m.Lookup(uint32(i), &vals); err != nil {
			return nil, err
		}
		for _, v := range vals {
			out[i] += v
		}
	}
	return out, nil
}

// Drops returns the drop counters by reason.
func (d *EBPF) Drops() (map[DropReason]uint64, error) {
	v, err := sumArray(d.objs.Drops, dropMax)
	if err != nil {
		return nil, fmt.Errorf("reading drops: %w", err)
	}
	out := map[DropReason]uint64{}
	for i, n := range v {
		r := DropReason(i)
		if i == dropMalformedOld {
			r = DropMalformed
		}
		out[r] += n
	}
	return out, nil
}

// Events returns the event counters.
func (d *EBPF) Events() (map[Event]uint64, error) {
	v, err := sumArray(d.objs.Events, eventMax)
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	out := map[Event]uint64{}
	for i, n := range v {
		out[Event(i)] = n
	}
	return out, nil
}

// Traffic returns the per-interface counters, by host-side ifindex.
func (d *EBPF) Traffic() (map[uint32]Traffic, error) {
	out := map[uint32]Traffic{}
	var k uint32
	var vals []bpfTraffic
	it := d.objs.IfStats.Iterate()
	for it.Next(&k, &vals) {
		var t Traffic
		for _, v := range vals {
			t.add(v)
		}
		out[k] = t
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading traffic counters: %w", err)
	}
	return out, nil
}

// PortConnections returns the new connections counted per published port
// binding (host address, zero for every address, port and protocol).
func (d *EBPF) PortConnections() (map[PortBinding]uint64, error) {
	out, err := sumPortCounters(d.objs.PortConns, "port counters")
	if err != nil || d.objs.PortConns6 == nil {
		return out, err
	}
	return out, sumPort6Counters(out, d.objs.PortConns6, "IPv6 port counters")
}

// sumPort6Counters adds to out the counts of m, a per-CPU counter map
// keyed by IPv6 host binding (:: for every address), summed over CPUs.
func sumPort6Counters(out map[PortBinding]uint64, m *ebpf.Map, what string) error {
	return addPortCounters(out, m, what, func(k bpfPort6Key) PortBinding {
		return PortBinding{Proto: Proto(k.Proto), HostIP: addr6From(k.Addr), HostPort: port16(k.Port)}
	})
}

// sumPortCounters reads a per-CPU counter map keyed by host binding,
// summed over CPUs.
func sumPortCounters(m *ebpf.Map, what string) (map[PortBinding]uint64, error) {
	out := map[PortBinding]uint64{}
	err := addPortCounters(out, m, what, func(k bpfPortKey) PortBinding {
		return PortBinding{Proto: Proto(k.Proto), HostIP: addrFrom(k.Addr), HostPort: port16(k.Port)}
	})
	return out, err
}

// addPortCounters adds to out the counts of m, a per-CPU counter map
// whose key of type K names the binding bindingOf gives.
func addPortCounters[K any](out map[PortBinding]uint64, m *ebpf.Map, what string, bindingOf func(K) PortBinding) error {
	var k K
	var vals []uint64
	it := m.Iterate()
	for it.Next(&k, &vals) {
		var n uint64
		for _, v := range vals {
			n += v
		}
		out[bindingOf(k)] = n
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", what, err)
	}
	return nil
}

// PortBinding is the host side of a published port.
type PortBinding struct {
	Proto    Proto
	HostIP   netip.Addr // 0.0.0.0 for every address
	HostPort uint16
}
