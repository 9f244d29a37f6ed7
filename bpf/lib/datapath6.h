/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The IPv6 half of the entry programs: the bodies of the programs
 * from_netdev6, to_netdev6, from_container6 and to_container6
 * (datapath.c), which each entry program tail-calls for an IPv6 frame
 * after one ethertype test. So the IPv4 path costs one branch more, the
 * verifier walks the two families apart, and each has a stack of its own
 * (a BPF-to-BPF call would add the IPv6 frame to the IPv4 one's, beyond
 * the 512 bytes a program may have).
 *
 * What IPv6 has so far: published ports (DNAT at from_netdev, its
 * reverse at to_netdev) tracked in ct6, later fragments following their
 * first by fragment identification, and the nat gateway mode's refusal
 * of direct access from the outside. Packets go through the stack (no
 * fast path for IPv6 yet). */
#pragma once

#include "common.h"
#include "ipv6.h"
#include "maps6.h"
#include "conntrack6.h"

/* frag6_ports gives a later fragment the ports its first fragment had. */
static __always_inline void frag6_ports(struct pkt6 *p)
{
	struct frag6_key fk = {.id = p->frag_id, .proto = p->t.proto};
	struct frag_ports *fp;

	if (p->frag != FRAG_LATER)
		return;
	ip6_copy(fk.saddr, p->t.saddr);
	ip6_copy(fk.daddr, p->t.daddr);
	fp = bpf_map_lookup_elem(&frags6, &fk);
	if (fp) {
		p->t.sport = fp->sport;
		p->t.dport = fp->dport;
	}
}

/* frag6_record remembers a first fragment's ports under its tuple as it
 * arrived, for its later fragments. */
static __always_inline void frag6_record(const struct pkt6 *p, const struct ct6_key *orig)
{
	struct frag6_key fk = {.id = p->frag_id, .proto = orig->proto};
	struct frag_ports fp = {.sport = orig->sport, .dport = orig->dport};

	if (p->frag != FRAG_FIRST)
		return;
	ip6_copy(fk.saddr, orig->saddr);
	ip6_copy(fk.daddr, orig->daddr);
	bpf_map_update_elem(&frags6, &fk, &fp, BPF_ANY);
	count_event(EV_FRAG_TRACKED);
}

static __always_inline int apply6(struct __sk_buff *ctx, struct pkt6 *p, const struct ct6_entry *e)
{
	return rewrite6(ctx, p, e->nsaddr, e->ndaddr, e->nsport, e->ndport);
}

/* parse6_flow is parse6 with a later fragment's ports filled in. */
static __always_inline int parse6_flow(struct __sk_buff *ctx, struct pkt6 *p)
{
	int r = parse6(ctx, p);

	if (r == PARSE_OK)
		frag6_ports(p);
	return r;
}

/* published6_lookup finds the mapping of a packet to a host IPv6 address:
 * the binding to that exact address first, then the one to `::`. */
static __always_inline struct port6_target *published6_lookup(struct port6_key *k)
{
	struct port6_target *t;

	if (!bpf_map_lookup_elem(&host_addrs6, k->addr))
		return 0;
	t = bpf_map_lookup_elem(&published6, k);
	if (t)
		return t;
	__builtin_memset(k->addr, 0, sizeof(k->addr));
	return bpf_map_lookup_elem(&published6, k);
}

/* v6_direct_allowed is gw_direct_allowed (lib/gwmode.h) for IPv6: a packet
 * from the outside straight to a container address that no tracked flow
 * claims. Routed networks let in ICMPv6 only (IPv6 routed_ports are still
 * to come). */
static __always_inline int v6_direct_allowed(const struct pkt6 *p, __u32 flags)
{
	if (flags & NET_F_INTERNAL)
		return -DROP_INTERNAL;
	if (flags & NET_F_UNPROTECTED)
		return 0;
	if ((flags & NET_F_ROUTED) && p->t.proto == IPPROTO_ICMPV6)
		return 0;
	return -DROP_NOT_PUBLISHED;
}

/* handle6_from_netdev: the body of from_netdev6, from_netdev for IPv6. */
static __always_inline int handle6_from_netdev(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct pkt6 p = {};
	struct ct6_key orig;
	struct ct6_entry *e;
	int r = parse6_flow(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS || p.icmp == ICMP_K_ERROR)
		return TC_ACT_OK;
	orig = p.t;
	if (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport)
		goto unknown;

	e = ct6_lookup_flow(&p, CT_AT_FROM_NETDEV, now);
	if (e) {
		r = apply6(ctx, &p, e);
		if (r < 0)
			return r;
		ct6_touch(&orig, e, &p, now);
	} else {
		struct port6_key pk = {.port = p.t.dport, .proto = p.t.proto};
		struct ct6_entry ne = {};
		struct port6_target *t;
		struct endpoint6 *ep;

		ip6_copy(pk.addr, p.t.daddr);
		if (!has_ports(p.t.proto) || p.frag == FRAG_LATER || !(t = published6_lookup(&pk)))
			goto unknown;
		/* Allowlists are IPv4 prefixes: a port restricted to some
		 * IPv4 sources is closed to IPv6. */
		if (t->allow_id)
			return -DROP_PORT_DENIED;
		ip6_copy(ne.nsaddr, p.t.saddr);
		ip6_copy(ne.ndaddr, t->addr);
		ne.nsport = p.t.sport;
		ne.ndport = t->port;
		ne.flags = CT_AT_FROM_NETDEV;
		ne.peer_flags = CT_AT_TO_NETDEV | CT_REPLY;
		ne.kind = CT_DNAT;
		ep = bpf_map_lookup_elem(&endpoints6, t->addr);
		if (ep)
			ne.ifindex = ep->ep.ifindex;
		r = ct6_create(&p.t, &ne, now);
		if (r < 0)
			return r;
		count_event(EV_CT_NEW_DNAT);
		r = apply6(ctx, &p, &ne);
		if (r < 0)
			return r;
		e = bpf_map_lookup_elem(&ct6, &orig);
		if (e)
			ct6_touch(&orig, e, &p, now);
	}
	frag6_record(&p, &orig);
	return TC_ACT_OK;

unknown:
	/* Not a translated flow: straight to a container is what the
	 * network's gateway mode decides; anything else is the host's. */
	{
		struct net6_info *net = container_net6(p.t.daddr);

		if (net && !bpf_map_lookup_elem(&host_addrs6, p.t.daddr)) {
			r = v6_direct_allowed(&p, net->flags);
			if (r < 0)
				return r;
		}
	}
	return TC_ACT_OK;
}

/* handle6_to_netdev: the body of to_netdev6, to_netdev for IPv6. */
static __always_inline int handle6_to_netdev(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct pkt6 p = {};
	struct ct6_key orig;
	struct ct6_entry *e;
	int r = parse6_flow(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS || p.icmp == ICMP_K_ERROR)
		return TC_ACT_OK;
	if (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport)
		return TC_ACT_OK;
	orig = p.t;

	e = ct6_lookup_flow(&p, CT_AT_TO_NETDEV, now);
	if (e) {
		ct6_touch(&p.t, e, &p, now);
		r = apply6(ctx, &p, e);
		if (r < 0)
			return r;
		frag6_record(&p, &orig);
	}
	return TC_ACT_OK;
}

/* handle6_from_container: the body of from_container6, from_container for IPv6. */
static __always_inline int handle6_from_container(struct __sk_buff *ctx)
{
	struct pkt6 p = {};
	int r = parse6(ctx, &p);

	if (r < 0)
		return r;
	return TC_ACT_OK;
}

/* handle6_to_container: the body of to_container6, to_container for IPv6. */
static __always_inline int handle6_to_container(struct __sk_buff *ctx)
{
	struct pkt6 p = {};
	int r = parse6(ctx, &p);

	if (r < 0)
		return r;
	return TC_ACT_OK;
}
