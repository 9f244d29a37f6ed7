// SPDX-License-Identifier: Apache-2.0

// Package metrics serves bpfnet's Prometheus /metrics: per-container
// traffic and the datapath's health, read from the BPF maps at scrape time.
//
// The [Collector] follows the style of cilium's pkg/maps/metricsmap: it
// keeps no state and runs no polling loop. Every scrape reads the maps
// through a [Reader] (per-CPU values summed by the reader), joins what it
// read with the daemon's desired [datapath.State] to name containers and
// published ports, and builds const metrics. A container that is gone has
// no series at the next scrape, since nothing is cached.
//
// A read error fails its metric family as a whole: the collector sends a
// [prometheus.NewInvalidMetric] for the family instead of part of its
// series, and [Handler] answers that scrape with HTTP 500 and the error
// (Prometheus then records up=0 for it). Counters live in the maps, not
// here, so a failed scrape loses nothing.
//
// The metrics (all prefixed bpfnet_):
//
//	container_receive_bytes_total      counter  container, container_id, network,
//	container_transmit_bytes_total     counter    interface, compose_project,
//	container_receive_packets_total    counter    compose_service
//	container_transmit_packets_total   counter
//	published_port_connections_total   counter  protocol, host_ip, host_port, container
//	published_port_denied_total        counter  protocol, host_ip, host_port, container
//	conntrack_entries                  gauge    table
//	conntrack_capacity                 gauge    table
//	conntrack_evictions_total          counter
//	conntrack_new_total                counter  kind
//	conntrack_half_open_total          counter
//	conntrack_promoted_total           counter
//	drops_total                        counter  reason
//	attached                           gauge    interface, hook, program, mode
//	build_info                         gauge    version, go_version
//	container_network_mode             gauge    container, container_id, mode, owner,
//	                                              compose_project, compose_service
//	host_firewall_rules                gauge    source, table, chain
//	host_firewall_bypassed             gauge
//
// The host_firewall_* pair comes from a [HostFirewallCollector], which the
// daemon registers next to the [Collector]: the last check of package
// hostfw, run on the daemon's timer.
//
// [NewRegistry] adds the standard Go runtime and process collectors.
// "Receive" is from the container's point of view: bytes into the
// container. Byte counts are the packets' lengths at the TC hook, Ethernet
// header included.
//
// Containers without a veth of their own (cgroup.go): those in host mode
// and those on macvlan or ipvlan networks have the same container_*
// series, with network="host" and interface="" (every interface but
// loopback), or the network's name and the container's device; their
// packets are counted by cgroup skb programs at the container's sockets
// (IP length plus 14 bytes, so that the figures compare with the TC ones),
// when the [Reader] is a [CgroupReader]. A container sharing another's
// network namespace (--network container:X) has no series: its traffic is
// in X's. container_network_mode lists these containers, and those
// without a network, with their mode: host, macvlan, ipvlan, container
// (owner is X) or none.
package metrics
