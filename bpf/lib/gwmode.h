/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Docker 28's gateway modes of a bridge network
 * (com.docker.network.bridge.gateway_mode_ipv4), as net_flags:
 *
 *   nat              (no flag) published ports DNATed, egress masqueraded,
 *                    nothing from outside straight to a container address
 *   nat-unprotected  NET_F_UNPROTECTED: the same NAT, but the DOCKER chain
 *                    ends in "! -i br -o br -j ACCEPT" instead of DROP:
 *                    every container port is reachable by its address
 *   routed           NET_F_ROUTED, never NET_F_MASQ: no MASQUERADE, no
 *                    DNAT (the host port of -p is ignored); the DOCKER
 *                    chain accepts "-d cip ! -i br -o br -p proto --dport
 *                    cport" per published container port and "-o br -p
 *                    icmp", then drops "! -i br -o br"
 *   isolated         NET_F_ISOLATED with NET_F_INTERNAL: an internal network
 *                    whose bridge has no address, so the host has no route
 *                    to it and its containers none to the host
 *
 * (moby integration/network/bridge/iptablesdoc/generated/
 * usernet-portmap-natunprot.md, usernet-portmap-routed.md; isolated:
 * libnetwork/drivers/bridge, GetSkipGwAlloc and "gateway mode 'isolated'
 * can only be used for an internal network".) */
#pragma once

#include "common.h"
#include "maps.h"
#include "packet.h"
#include "conntrack.h"
#include "isolation.h"
#include "allow.h"
#include "maps6.h"
#include "conntrack6.h"

/* Published container ports of routed networks, keyed by container
 * address, container port and protocol (port_key with the container's
 * address): what Docker's per-port ACCEPT rule of a routed network lets in
 * straight from the outside. The value is a port_target naming the
 * container port itself, the mapping id and the source allowlist
 * (allow.h): several bindings of one container port are one entry, whose
 * list is the union of theirs, open to all when one of them has none
 * (datapath/allow.go, routedAllow). New flows refused by it are counted
 * in port_denied under this key, the container address and port. Written
 * whole by every first Apply, as published is. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port_key);
	__type(value, struct port_target);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routed_ports SEC(".maps");

/* How gw_direct_allowed lets a packet in. */
enum {
	GW_OPEN = 0,	  /* ICMP, or a nat-unprotected network */
	GW_PUBLISHED = 1, /* a published container port of a routed network */
};

/* gw_routed_port judges a packet to a container port of a routed network:
 * GW_PUBLISHED when the port is published and the source in its
 * allowlist, -DROP_PORT_DENIED (counted for the port) when it is
 * published to other sources, else -DROP_NOT_PUBLISHED. Only a flow's
 * first packet gets here: later ones find their conntrack entries. */
static __always_inline int gw_routed_port(const struct pkt *p)
{
	struct port_key k = {.addr = p->t.daddr, .port = p->t.dport, .proto = p->t.proto};
	struct port_target *t;
	int r;

	if (!has_ports(p->t.proto) || !(t = bpf_map_lookup_elem(&routed_ports, &k)))
		return -DROP_NOT_PUBLISHED;
	r = port_allowed(&k, t, p->t.saddr);
	return r < 0 ? r : GW_PUBLISHED;
}

/* gw_direct_allowed tells whether a packet from the outside straight to a
 * container address of a network with flags may go in when no tracked flow
 * claims it: GW_OPEN or GW_PUBLISHED when it may, else the negative drop
 * reason. */
static __always_inline int gw_direct_allowed(const struct pkt *p, __u32 flags)
{

	/* --internal (and isolated): DOCKER-ISOLATION-STAGE-1
	 * "! -s subnet -o br -j DROP". */
	if (flags & NET_F_INTERNAL)
		return -DROP_INTERNAL;
	/* nat-unprotected: DOCKER "! -i br -o br -j ACCEPT". */
	if (flags & NET_F_UNPROTECTED)
		return 0;
	/* nat: the DOCKER chain's default "! -i br -o br -j DROP" (the
	 * direct-access rule of Docker 28's raw table drops it earlier). */
	if (!(flags & NET_F_ROUTED))
		return -DROP_NOT_PUBLISHED;
	/* routed: DOCKER "-o br -p icmp -j ACCEPT", every ICMP type. */
	if (p->t.proto == IPPROTO_ICMP)
		return GW_OPEN;
	/* routed: DOCKER "-d cip ! -i br -o br -p proto --dport cport -j
	 * ACCEPT" of each published container port, behind its allowlist;
	 * else DOCKER "! -i br -o br -j DROP". A later fragment of a
	 * datagram whose first one was let in carries the ports frags4 kept
	 * for it (parse), and finds its flow before it gets here. */
	return gw_routed_port(p);
}

/* gw_direct_track tracks a new flow from the outside straight to a
 * container that gw_direct_allowed let in, untranslated, so that the
 * container's answers leave as they are (to_netdev would masquerade them on
 * a nat-unprotected network, or drop a TCP answer as a CT miss) and are
 * Docker's conntrack "RELATED,ESTABLISHED -j ACCEPT" of the reply
 * direction. Like a published port's flow it starts unassured, in ct4_syn.
 * ICMP errors and later fragments are not flows: they pass untracked.
 * how is what gw_direct_allowed gave: a published port's flow is counted
 * for the port (port_conns, under the routed_ports key).
 * Returns 0 or a negative drop reason. */
static __always_inline int gw_direct_track(struct pkt *p, int how, __u64 now)
{
	struct ct_entry ne = {};
	struct ct_entry *e;
	struct endpoint *ep;
	int r;

	if (p->frag == FRAG_LATER || (!has_ports(p->t.proto) && p->icmp != ICMP_K_ECHO_REQ))
		return 0;
	ne.nsaddr = p->t.saddr;
	ne.ndaddr = p->t.daddr;
	ne.nsport = p->t.sport;
	ne.ndport = p->t.dport;
	ne.flags = CT_AT_FROM_NETDEV;
	ne.peer_flags = CT_AT_TO_NETDEV | CT_REPLY;
	ne.kind = CT_ROUTED;
	ep = bpf_map_lookup_elem(&endpoints, &p->t.daddr);
	if (ep)
		ne.ifindex = ep->ifindex;
	r = ct_create_unassured(&p->t, &ne, now);
	if (r < 0)
		return r;
	e = bpf_map_lookup_elem(&ct4_syn, &p->t);
	if (e)
		ct_touch(&p->t, e, p, now);
	count_event(EV_CT_NEW_DIRECT);
	if (how == GW_PUBLISHED) {
		struct port_key k = {.addr = ne.ndaddr, .port = ne.ndport, .proto = p->t.proto};

		count_port_conn(&k);
	}
	return 0;
}

/* gw_isolated_from_container judges a packet a container of an isolated
 * network sends to the host (to_host: any host address; or its gateway
 * address, which Docker does not even give the bridge): the host is
 * outside such a network. 0 or -DROP_INTERNAL. */
static __always_inline int gw_isolated_from_container(const struct endpoint *src, __be32 daddr,
						      int to_host)
{
	if (!(src->flags & NET_F_ISOLATED))
		return 0;
	if (to_host || daddr == src->gw_addr)
		return -DROP_INTERNAL;
	return 0;
}

/* gw_isolated_to_container judges a packet to the container behind the
 * host veth ifindex: into an isolated network only its own containers
 * send (a host address, the gateway's among them, is not one of them).
 * Packets between its containers pass here without the fast path, and
 * from_container judged them already. 0 or -DROP_INTERNAL. */
static __always_inline int gw_isolated_to_container(const struct pkt *p, __u32 ifindex)
{
	struct endpoint *ep = bpf_map_lookup_elem(&veths, &ifindex);
	struct net_info *ni;

	if (!ep || !(ep->flags & NET_F_ISOLATED))
		return 0;
	ni = container_net(p->t.saddr);
	if (!ni || ni->net_id != ep->net_id || bpf_map_lookup_elem(&host_addrs, &p->t.saddr))
		return -DROP_INTERNAL;
	return 0;
}

/* gw_routed_from_other_net judges a packet a container sends to a
 * container of another, routed network (dst: its endpoint, if any). Docker
 * lets it past the isolation of networks ("-A DOCKER-ISOLATION-STAGE-1 -o
 * br -j RETURN") and filters it as it filters the outside: a published
 * container port or ICMP is accepted, anything else dropped by the
 * network's "! -i br -o br -j DROP"; a published port's allowlist judges
 * the sender's address as it judges the outside's. An accepted flow is tracked, both
 * ways, so that its answers get back across the isolation ("-A
 * DOCKER-ISOLATION-STAGE-1 -i br -m conntrack --ctstate
 * RELATED,ESTABLISHED -j ACCEPT"): from_container then finds its entries
 * first. Returns 1 when it may go on, 0 when this is no such packet (the
 * isolation rules judge it), or a negative drop reason. An internal
 * network's containers get no such way out. */
static __always_inline int gw_routed_from_other_net(const struct pkt *p, const struct endpoint *src,
						    const struct endpoint *dst, __u64 now)
{
	struct ct_entry ne = {};
	struct ct_entry *e;
	struct iso_net d;
	int how = GW_OPEN;
	int r;

	if (!iso_net_of(p->t.daddr, dst, &d) || !(d.flags & NET_F_ROUTED) || d.id == src->net_id ||
	    (src->flags & NET_F_INTERNAL))
		return 0;
	if (p->t.proto != IPPROTO_ICMP) {
		how = gw_routed_port(p);
		if (how < 0)
			return how;
	}
	if (p->frag == FRAG_LATER || (!has_ports(p->t.proto) && p->icmp != ICMP_K_ECHO_REQ))
		return 1;
	ne.nsaddr = p->t.saddr;
	ne.ndaddr = p->t.daddr;
	ne.nsport = p->t.sport;
	ne.ndport = p->t.dport;
	ne.flags = CT_AT_FROM_CONTAINER;
	ne.peer_flags = CT_AT_FROM_CONTAINER | CT_REPLY;
	ne.kind = CT_ROUTED;
	ne.ifindex = src->ifindex;
	r = ct_create(&p->t, &ne, now);
	if (r < 0)
		return r;
	e = bpf_map_lookup_elem(&ct4, &p->t);
	if (e)
		ct_touch(&p->t, e, p, now);
	count_event(EV_CT_NEW_DIRECT);
	if (how == GW_PUBLISHED) {
		struct port_key k = {.addr = p->t.daddr, .port = p->t.dport, .proto = p->t.proto};

		count_port_conn(&k);
	}
	return 1;
}

/* The IPv6 half: gateway_mode_ipv6, whose flags nets6 holds. */

/* routed_ports' twin for the published container ports of IPv6 routed
 * networks, keyed by container IPv6 address, container port and protocol
 * (port6_key with the container's address), valued as routed_ports is. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port6_key);
	__type(value, struct port6_target);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routed_ports6 SEC(".maps");

/* gw6_routed_port is gw_routed_port for IPv6: GW_PUBLISHED when the
 * container port is published and its allowlist (port_allow6, the union
 * of its bindings' lists) lets the source in, else -DROP_NOT_PUBLISHED or
 * -DROP_PORT_DENIED (counted under the routed_ports6 key). */
static __always_inline int gw6_routed_port(const struct pkt6 *p)
{
	struct port6_key k = {.port = p->t.dport, .proto = p->t.proto};
	struct port6_target *t;
	int r;

	if (!has_ports(p->t.proto))
		return -DROP_NOT_PUBLISHED;
	ip6_copy(k.addr, p->t.daddr);
	t = bpf_map_lookup_elem(&routed_ports6, &k);
	if (!t)
		return -DROP_NOT_PUBLISHED;
	r = port6_allowed(&k, t, p->t.saddr);
	return r < 0 ? r : GW_PUBLISHED;
}

/* gw6_direct_allowed is gw_direct_allowed for IPv6: a routed network lets
 * in ICMPv6 (Docker's "-o br -p icmpv6 -j ACCEPT") and its published
 * container ports. */
static __always_inline int gw6_direct_allowed(const struct pkt6 *p, __u32 flags)
{
	if (flags & NET_F_INTERNAL)
		return -DROP_INTERNAL;
	if (flags & NET_F_UNPROTECTED)
		return GW_OPEN;
	if (!(flags & NET_F_ROUTED))
		return -DROP_NOT_PUBLISHED;
	if (p->t.proto == IPPROTO_ICMPV6)
		return GW_OPEN;
	return gw6_routed_port(p);
}

/* gw6_isolated_from_container is gw_isolated_from_container for IPv6: a
 * container of a network whose IPv6 gateway mode is isolated reaches no
 * host address (to_host), its gateway's included. 0 or -DROP_INTERNAL. */
static __always_inline int gw6_isolated_from_container(const struct pkt6 *p, int to_host)
{
	struct net6_info *ni = container_net6(p->t.saddr);
	struct endpoint6 *me;

	if (!ni || !(ni->flags & NET_F_ISOLATED))
		return 0;
	if (to_host)
		return -DROP_INTERNAL;
	me = bpf_map_lookup_elem(&endpoints6, p->t.saddr);
	return me && ip6_eq(me->gw6, p->t.daddr) ? -DROP_INTERNAL : 0;
}

/* gw6_isolated_to_container is gw_isolated_to_container for IPv6: into a
 * network whose IPv6 gateway mode is isolated only its own containers
 * send. 0 or -DROP_INTERNAL. */
static __always_inline int gw6_isolated_to_container(const struct pkt6 *p)
{
	struct net6_info *dst = container_net6(p->t.daddr);
	struct net6_info *src;

	if (!dst || !(dst->flags & NET_F_ISOLATED))
		return 0;
	src = container_net6(p->t.saddr);
	if (!src || src->net_id != dst->net_id || bpf_map_lookup_elem(&host_addrs6, p->t.saddr))
		return -DROP_INTERNAL;
	return 0;
}

/* gw6_routed_from_other_net is gw_routed_from_other_net for IPv6: a
 * packet a container sends to a container of another network whose IPv6
 * gateway mode is routed, filtered as from the outside (a published
 * container port or ICMPv6) and tracked both ways, so that the answers
 * cross back. 1 when it may go on, 0 when this is no such packet (the
 * isolation rules judge it), or a negative drop reason. */
static __always_inline int gw6_routed_from_other_net(const struct pkt6 *p, const struct endpoint *src,
						     __u64 now)
{
	struct net6_info *d = container_net6(p->t.daddr);
	struct ct6_entry ne = {};
	struct ct6_entry *e;
	int r;

	if (!d || !(d->flags & NET_F_ROUTED) || d->net_id == src->net_id ||
	    (src->flags & NET_F_INTERNAL))
		return 0;
	r = gw6_direct_allowed(p, d->flags);
	if (r < 0)
		return r;
	if (p->frag == FRAG_LATER || (!has_ports(p->t.proto) && p->icmp != ICMP_K_ECHO_REQ))
		return 1;
	ip6_copy(ne.nsaddr, p->t.saddr);
	ip6_copy(ne.ndaddr, p->t.daddr);
	ne.nsport = p->t.sport;
	ne.ndport = p->t.dport;
	ne.flags = CT_AT_FROM_CONTAINER;
	ne.peer_flags = CT_AT_FROM_CONTAINER | CT_REPLY;
	ne.kind = CT_ROUTED;
	ne.ifindex = src->ifindex;
	r = ct6_create(&p->t, &ne, now);
	if (r < 0)
		return r;
	e = bpf_map_lookup_elem(&ct6, &p->t);
	if (e)
		ct6_touch(&p->t, e, p, now);
	count_event(EV_CT_NEW_DIRECT);
	return 1;
}
