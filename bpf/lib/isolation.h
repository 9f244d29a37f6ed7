/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Docker's isolation of bridge networks, which its iptables rules do in
 * the FORWARD chain, judged for every packet a container sends (the
 * from_container hook sees them all, whether the stack routes them or the
 * fast path redirects them):
 *
 *   between networks   DOCKER-ISOLATION-STAGE-1/2: -i br-X -o br-Y -j DROP
 *   enable_icc=false   -i br -o br -j DROP
 *   --internal         -i br ! -d subnet -j DROP, ! -s subnet -o br -j DROP
 *
 * Traffic to the host itself (any of its addresses, the gateways among
 * them) is not forwarded, so none of these rules apply to it. A published
 * port reached through a host address (a hairpin) is the host's to give:
 * it is open from every network but an internal one. Answers of tracked
 * flows (a hairpin to another network's container, ICMP errors about it)
 * pass as Docker's conntrack RELATED,ESTABLISHED rule lets them.
 *
 * The sender is the interface: a packet's source network is that of the
 * endpoint of the veth it arrived on (veths), never that of its source
 * address, which the container chooses; a source address that is not the
 * endpoint's is dropped before any judgement (src_allowed). Docker's rules
 * match the input bridge (-i br-X) for the same reason. The destination's
 * network is that of its endpoint, else that of the subnet (nets) holding
 * it. */
#pragma once

#include "common.h"
#include "maps.h"
#include "packet.h"
#include "conntrack.h"
#include "icmp.h"

static __always_inline struct net_info *container_net(__be32 a)
{
	struct net_key k = {.prefixlen = 32, .addr = a};

	return bpf_map_lookup_elem(&nets, &k);
}

/* src_allowed tells whether the endpoint ep may send from address a: its
 * own address, or that of another endpoint of the same container (one on
 * several networks answers from the address a flow came to, out of the
 * veth its routes pick), any address with EP_F_FOREIGN_SRC (a container
 * that routes for others), and for a veth whose container is not known yet
 * (address 0) an address of its bridge's network. */
static __always_inline int src_allowed(const struct endpoint *ep, __be32 a)
{
	struct endpoint *other;
	struct net_info *ni;

	if (ep->ep_flags & EP_F_FOREIGN_SRC)
		return 1;
	if (ep->addr) {
		if (a == ep->addr)
			return 1;
		other = bpf_map_lookup_elem(&endpoints, &a);
		return other && ep->ctr_id && other->ctr_id == ep->ctr_id;
	}
	ni = container_net(a);
	return ni && ni->net_id == ep->net_id;
}

/* A network as the isolation rules see it. */
struct iso_net {
	__u32 id;
	__u32 flags; /* NET_F_* */
};

/* iso_net_of finds the network of destination address a, whose endpoint
 * (if any) is ep. Returns 0 when a is in no container network. */
static __always_inline int iso_net_of(__be32 a, const struct endpoint *ep, struct iso_net *n)
{
	struct net_info *ni;

	if (ep) {
		n->id = ep->net_id;
		n->flags = ep->flags;
		return 1;
	}
	ni = container_net(a);
	if (!ni)
		return 0;
	n->id = ni->net_id;
	n->flags = ni->flags;
	return 1;
}

/* Multicast and the limited broadcast stay on the bridge they are sent to:
 * the host does not forward them. */
static __always_inline int iso_link_local(__be32 a)
{
	return (a & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) || a == 0xffffffff;
}

/* iso_tracked tells whether a packet belongs to a live tracked flow: its
 * tuple has an entry (the answer of a hairpin), or, for an ICMP error, the
 * flow it quotes has one. */
static __always_inline int iso_tracked(struct __sk_buff *ctx, const struct pkt *p, __u64 now)
{
	struct ct_key k = p->t;
	struct ct_entry *e;

	if (p->icmp == ICMP_K_ERROR) {
		struct icmp_quote q;

		if (!icmp_quote_key(ctx, p, &q, &k))
			return 0;
	}
	e = bpf_map_lookup_elem(&ct4, &k);
	return e && e->expires >= now;
}

/* iso_verdict judges a packet a container sends that no translation
 * claimed: 0 when it may go on, else the negative drop reason. src is the endpoint
 * of the veth it came from, dst that of its destination address, if any;
 * to_host says that its destination is a host address. */
static __always_inline int iso_verdict(struct __sk_buff *ctx, const struct pkt *p,
				       const struct endpoint *src, const struct endpoint *dst,
				       int to_host, __u64 now)
{
	struct iso_net d;
	__be32 daddr = p->t.daddr;
	int reason;

	if (to_host || daddr == src->gw_addr)
		return 0;
	if (iso_link_local(daddr))
		return (src->flags & NET_F_NO_ICC) ? -DROP_ICC : 0;
	if (!iso_net_of(daddr, dst, &d))
		return (src->flags & NET_F_INTERNAL) ? -DROP_INTERNAL : 0;
	if (d.id == src->net_id) {
		if (!(src->flags & NET_F_NO_ICC))
			return 0;
		reason = -DROP_ICC;
	} else {
		reason = -DROP_ISOLATION;
	}
	return iso_tracked(ctx, p, now) ? 0 : reason;
}

/* iso_hairpin judges a new hairpin flow from the endpoint src to a
 * published port of container address target: 0 when it may go on, else
 * the negative drop reason. An internal network keeps its containers from
 * the published ports of others; a network without inter-container
 * communication keeps them from its own containers' published ports, the
 * sender's own included, as Docker's "-i br -o br -j DROP" does to the
 * DNATed packet (with --userland-proxy=false nothing else carries it). */
static __always_inline int iso_hairpin(const struct endpoint *src, __be32 target)
{
	struct iso_net d;
	int same;

	if (!(src->flags & (NET_F_INTERNAL | NET_F_NO_ICC)))
		return 0;
	same = iso_net_of(target, bpf_map_lookup_elem(&endpoints, &target), &d) && d.id == src->net_id;
	if (same)
		return (src->flags & NET_F_NO_ICC) ? -DROP_ICC : 0;
	return (src->flags & NET_F_INTERNAL) ? -DROP_INTERNAL : 0;
}
