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
 * reverse at to_netdev; source allowlists, new flows unassured in ct6_syn
 * until the client answers, as for IPv4) and masquerade of container egress (TCP, UDP,
 * ICMPv6 echo by identifier, ports allocated as for IPv4, never one a host
 * socket or another flow holds), tracked in ct6; later fragments follow
 * their first by fragment identification; the sender check of container
 * egress; hairpin, the isolation of networks, enable_icc=false and
 * internal networks; the gateway modes' judgement of direct access from
 * the outside.
 * With the fast path, packets between an uplink and a container bypass
 * the stack (lib/fast6.h). */
#pragma once

#include "common.h"
#include "ipv6.h"
#include "maps6.h"
#include "conntrack6.h"
#include "icmp6.h"
#include "fast6.h"
#include "allow.h"
#include "nat64.h"

/* nat64_in_tail hands a packet to a NAT64 port to the nat64_in program
 * (datapath.c), whose stack the translation needs. */
static __always_inline int nat64_in_tail(struct __sk_buff *ctx);

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

/* track6_untranslated tracks a flow that crosses the uplink with its own
 * addresses, seen first at hook `at` (CT_AT_TO_NETDEV: from a network
 * without masquerade; CT_AT_FROM_NETDEV: from the outside straight to a
 * container its gateway mode lets in), so that its answers get through
 * unchanged (track_routed and gw_direct_track for IPv4). Returns 0 or
 * -DROP_CT_FULL. */
static __always_inline int track6_untranslated(struct pkt6 *p, __u8 at, __u64 now)
{
	struct ct6_entry ne = {};
	struct ct6_entry *e;
	struct endpoint6 *ep;
	int r;

	if (p->frag == FRAG_LATER ||
	    !(has_ports(p->t.proto) || p->icmp == ICMP_K_ECHO_REQ))
		return 0;
	ip6_copy(ne.nsaddr, p->t.saddr);
	ip6_copy(ne.ndaddr, p->t.daddr);
	ne.nsport = p->t.sport;
	ne.ndport = p->t.dport;
	ne.flags = at;
	ne.peer_flags = (at == CT_AT_TO_NETDEV ? CT_AT_FROM_NETDEV : CT_AT_TO_NETDEV) | CT_REPLY;
	ne.kind = CT_ROUTED;
	ep = bpf_map_lookup_elem(&endpoints6, at == CT_AT_TO_NETDEV ? p->t.saddr : p->t.daddr);
	if (ep)
		ne.ifindex = ep->ep.ifindex;
	r = ct6_create(&p->t, &ne, now);
	if (r < 0)
		return r;
	e = bpf_map_lookup_elem(&ct6, &p->t);
	if (e)
		ct6_touch(&p->t, e, p, now);
	if (at == CT_AT_FROM_NETDEV)
		count_event(EV_CT_NEW_DIRECT);
	return 0;
}

/* host6_flow_collides is host_flow_collides (datapath.c) for IPv6: a host
 * flow that opens with a reply tuple a translated flow holds gets a
 * source port of its own. */
static __always_inline int host6_flow_collides(const struct pkt6 *p, __u64 now)
{
	struct ct6_key rk = {.sport = p->t.dport, .dport = p->t.sport, .proto = p->t.proto};

	if (p->frag == FRAG_LATER)
		return 0;
	if (p->t.proto == IPPROTO_TCP) {
		if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
			return 0;
	} else if (p->t.proto != IPPROTO_UDP && p->icmp != ICMP_K_ECHO_REQ) {
		return 0;
	}
	ip6_copy(rk.saddr, p->t.daddr);
	ip6_copy(rk.daddr, p->t.saddr);
	return ct6_lookup(&rk, CT_AT_FROM_NETDEV, now) != 0;
}

/* src6_allowed is src_allowed (lib/isolation.h) for IPv6: the endpoint ep
 * of the veth may send from a: its own IPv6 address (or another endpoint's
 * of the same container), any with EP_F_FOREIGN_SRC, and for a veth whose
 * container is not known yet an address of its bridge's network. */
static __always_inline int src6_allowed(const struct endpoint *ep, const __be32 *a)
{
	struct endpoint6 *other;
	struct net6_info *ni;

	if (ep->ep_flags & EP_F_FOREIGN_SRC)
		return 1;
	other = bpf_map_lookup_elem(&endpoints6, a);
	if (other)
		return other->ep.ifindex == ep->ifindex ||
		       (ep->ctr_id && other->ep.ctr_id == ep->ctr_id);
	if (ep->addr)
		return 0;
	ni = container_net6(a);
	return ni && ni->net_id == ep->net_id;
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
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	if (CONFIG.redirect_only)
		return deliver6(ctx, &p);
	orig = p.t;
	if (p.icmp == ICMP_K_ERROR) {
		r = icmp6_error_xlate(ctx, &p, CT_AT_FROM_NETDEV, now);
		if (r < 0)
			return r;
		if (r == 0)
			goto unknown;
		return TC_ACT_OK;
	}
	if (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport)
		goto unknown;

	e = ct6_lookup_flow(&p, CT_AT_FROM_NETDEV, now);
	if (e) {
		/* Rewrite first: touching an unassured entry may move it to
		 * ct6 and free it. */
		r = apply6(ctx, &p, e);
		if (r < 0)
			return r;
		ct6_touch_client(&orig, e, &p, now);
	} else {
		struct port6_key pk = {.port = p.t.dport, .proto = p.t.proto};
		struct ct6_entry ne = {};
		struct port6_target *t;
		struct endpoint6 *ep;

		ip6_copy(pk.addr, p.t.daddr);
		if (!has_ports(p.t.proto) || p.frag == FRAG_LATER || !(t = published6_lookup(&pk)))
			goto unknown;
		r = port6_allowed(&pk, t, p.t.saddr);
		if (r < 0)
			return r;
		if (nat64_target(t))
			return nat64_in_tail(ctx);
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
		/* As for IPv4, every new flow from the outside starts
		 * unassured: a forged source's lands in ct6_syn only. */
		r = ct6_create_unassured(&p.t, &ne, now);
		if (r < 0)
			return r;
		e = bpf_map_lookup_elem(&ct6_syn, &p.t);
		if (e)
			ct6_touch_client(&p.t, e, &p, now);
		count_event(p.t.proto == IPPROTO_TCP && !(p.tcp_flags & TCPF_SYN) ? EV_CT_RECREATED
										  : EV_CT_NEW_DNAT);
		count_key(&port_conns6, &pk);
		r = apply6(ctx, &p, &ne);
		if (r < 0)
			return r;
	}
	frag6_record(&p, &orig);
	return deliver6(ctx, &p);

unknown:
	/* Not a translated flow: straight to a container is what the
	 * network's gateway mode decides; anything else is the host's. */
	{
		struct net6_info *net = container_net6(p.t.daddr);

		if (net && !bpf_map_lookup_elem(&host_addrs6, p.t.daddr)) {
			/* The network's gateway mode decides (lib/gwmode.h); on
			 * a nat network a trusted uplink may still reach a
			 * published container port (lib/direct.h). */
			r = gw6_direct_allowed(&p, net->flags);
			if (r == -DROP_NOT_PUBLISHED && (net->flags & NET_F_MASQ) &&
			    direct6_trusted(&p, net->flags, ctx->ifindex))
				r = GW_OPEN;
			if (r < 0)
				return r;
			/* Tracked untranslated, so that the container's answers
			 * leave as they are instead of being masqueraded. */
			if (p.icmp == ICMP_K_ERROR)
				return TC_ACT_OK;
			r = track6_untranslated(&p, CT_AT_FROM_NETDEV, now);
			if (r < 0)
				return r;
			frag6_record(&p, &orig);
			return deliver6(ctx, &p);
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
	struct net6_info *net;
	struct uplink6 *up;
	__be16 own;
	int r = parse6_flow(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	if (p.icmp == ICMP_K_ERROR) {
		r = icmp6_error_xlate(ctx, &p, CT_AT_TO_NETDEV, now);
		return r < 0 ? r : TC_ACT_OK;
	}
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
		return TC_ACT_OK;
	}

	/* Masquerade: a new flow from a container network, or a host flow
	 * that needs a port of its own. A bridge's gateway address is the
	 * host's, not a container's. */
	net = container_net6(p.t.saddr);
	if (net && bpf_map_lookup_elem(&host_addrs6, p.t.saddr))
		net = 0;
	if (!net) {
		if (!host6_flow_collides(&p, now))
			return TC_ACT_OK;
		own = 0;
	} else {
		if (p.frag == FRAG_LATER)
			return TC_ACT_OK;
		if (!has_ports(p.t.proto) && p.icmp != ICMP_K_ECHO_REQ)
			return TC_ACT_OK;
		if (!(net->flags & NET_F_MASQ)) {
			if (net->flags & NET_F_INTERNAL)
				return TC_ACT_OK;
			r = track6_untranslated(&p, CT_AT_TO_NETDEV, now);
			return r < 0 ? r : TC_ACT_OK;
		}
		if (p.t.proto == IPPROTO_TCP && (p.tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
			return -DROP_CT_MISS;
		own = p.t.sport;
	}
	{
		__u32 ifindex = ctx->ifindex;

		up = bpf_map_lookup_elem(&uplinks6, &ifindex);
	}
	if (!up || ip6_is_zero(up->addr) || (!net && !ip6_eq(up->addr, p.t.saddr)))
		return TC_ACT_OK;
	{
		struct ct6_entry ne = {};
		struct endpoint6 *ep = net ? bpf_map_lookup_elem(&endpoints6, p.t.saddr) : 0;

		/* A network's own host address (host_ipv6), else the uplink's. */
		if (net && !ip6_is_zero(net->host_addr))
			ip6_copy(ne.nsaddr, net->host_addr);
		else
			ip6_copy(ne.nsaddr, up->addr);
		ip6_copy(ne.ndaddr, p.t.daddr);
		ne.ndport = p.t.dport;
		ne.flags = CT_AT_TO_NETDEV;
		ne.peer_flags = CT_AT_FROM_NETDEV | CT_REPLY;
		ne.kind = CT_SNAT;
		if (ep)
			ne.ifindex = ep->ep.ifindex;
		r = ct6_create_nat(ctx, &p.t, &ne, own, now);
		if (r < 0)
			return r;
		e = bpf_map_lookup_elem(&ct6, &p.t);
		if (e)
			ct6_touch(&p.t, e, &p, now);
		count_event(net ? EV_CT_NEW_SNAT : EV_NAT_HOST_REMAP);
		r = apply6(ctx, &p, &ne);
		if (r < 0)
			return r;
	}
	frag6_record(&p, &orig);
	return TC_ACT_OK;
}

/* iso6_verdict is iso_verdict (lib/isolation.h) for IPv6: a packet a
 * container sends that no translation claimed, judged by the network of
 * the veth it came from (src) against that of its destination (dst, its
 * endpoint, else the IPv6 prefix holding it). 0 when it may go on, else
 * the negative drop reason. Link-local and multicast never get here
 * (parse6). */
static __always_inline int iso6_verdict(const struct pkt6 *p, const struct endpoint *src,
					const struct endpoint6 *dst, int to_host, __u64 now)
{
	struct ct6_entry *e;
	__u32 id;
	int reason;

	if (to_host)
		return 0;
	if (dst) {
		id = dst->ep.net_id;
	} else {
		struct net6_info *ni = container_net6(p->t.daddr);

		if (!ni)
			return (src->flags & NET_F_INTERNAL) ? -DROP_INTERNAL : 0;
		id = ni->net_id;
	}
	if (id == src->net_id) {
		if (!(src->flags & NET_F_NO_ICC))
			return 0;
		reason = -DROP_ICC;
	} else {
		reason = -DROP_ISOLATION;
	}
	/* The answer of a tracked flow (a hairpin's) may go back. */
	e = bpf_map_lookup_elem(&ct6, &p->t);
	return e && e->expires >= now ? 0 : reason;
}

/* iso6_hairpin is iso_hairpin for IPv6: only an internal network keeps
 * its containers from the published ports of others. */
static __always_inline int iso6_hairpin(const struct endpoint *src, const __be32 *target)
{
	struct endpoint6 *d;

	if (!(src->flags & NET_F_INTERNAL))
		return 0;
	d = bpf_map_lookup_elem(&endpoints6, target);
	return d && d->ep.net_id == src->net_id ? 0 : -DROP_INTERNAL;
}

/* handle6_from_container: the body of from_container6, from_container for
 * IPv6: the sender check, hairpin to published IPv6 ports of the host,
 * the isolation of networks, enable_icc=false and internal networks. */
static __always_inline int handle6_from_container(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 ifindex = ctx->ifindex;
	struct endpoint *src;
	struct endpoint6 *dst;
	struct ct6_key orig;
	struct ct6_entry *e;
	struct pkt6 p = {};
	int to_host, r = parse6_flow(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	/* A veth nobody told us about fails closed, as for IPv4. */
	src = bpf_map_lookup_elem(&veths, &ifindex);
	if (!src || !src6_allowed(src, p.t.saddr))
		return -DROP_SPOOFED;
	orig = p.t;
	if (CONFIG.redirect_only || p.icmp == ICMP_K_ERROR ||
	    (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport))
		goto plain;

	e = bpf_map_lookup_elem(&ct6, &p.t);
	if (e && e->expires < now)
		e = 0;
	if (e && !(e->flags & CT_AT_FROM_CONTAINER)) {
		/* A flow the uplink's egress translates (an answer of a
		 * published port, a masqueraded or routed connection): it goes
		 * out, but for an internal network's. */
		if ((e->flags & CT_AT_TO_NETDEV) && !(src->flags & NET_F_INTERNAL))
			return forward_out6(ctx, &p, src->bridge_ifindex);
		e = 0;
	}
	if (e && p.t.proto == IPPROTO_TCP && (p.tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN &&
	    (e->tcp_seen & (TCPF_FIN | TCPF_RST))) {
		struct ct6_key pk;

		ct6_peer_key(e, p.t.proto, &pk);
		bpf_map_delete_elem(&ct6, &pk);
		bpf_map_delete_elem(&ct6, &p.t);
		e = 0;
	}
	if (!e) {
		/* Hairpin: a container to a published port of the host. */
		struct port6_key pk = {.port = p.t.dport, .proto = p.t.proto};
		struct ct6_entry ne = {};
		struct port6_target *t;

		ip6_copy(pk.addr, p.t.daddr);
		if (!has_ports(p.t.proto) || p.frag == FRAG_LATER || !(t = published6_lookup(&pk)))
			goto plain;
		/* NAT64 is for clients from the outside (lib/nat64.h). */
		if (nat64_target(t))
			goto plain;
		r = iso6_hairpin(src, t->addr);
		if (r)
			return r;
		r = port6_allowed(&pk, t, p.t.saddr);
		if (r < 0)
			return r;
		ip6_copy(ne.nsaddr, p.t.saddr);
		ip6_copy(ne.ndaddr, t->addr);
		ne.nsport = p.t.sport;
		ne.ndport = t->port;
		ne.flags = CT_AT_FROM_CONTAINER;
		ne.peer_flags = CT_AT_TO_CONTAINER | CT_REPLY;
		ne.kind = CT_HAIRPIN;
		ne.ifindex = src->ifindex;
		if (ip6_eq(t->addr, p.t.saddr)) {
			/* To itself: from the gateway, as Docker's MASQUERADE of
			 * hairpin traffic; the answer comes back through this
			 * hook. */
			struct endpoint6 *me = bpf_map_lookup_elem(&endpoints6, p.t.saddr);

			if (!me || ip6_is_zero(me->gw6))
				goto plain;
			ip6_copy(ne.nsaddr, me->gw6);
			ne.peer_flags = CT_AT_FROM_CONTAINER | CT_REPLY;
			r = ct6_create_nat(ctx, &p.t, &ne, p.t.sport, now);
		} else {
			r = ct6_create(&p.t, &ne, now);
		}
		if (r < 0)
			return r;
		count_event(EV_CT_NEW_HAIRPIN);
		count_key(&port_conns6, &pk);
		e = bpf_map_lookup_elem(&ct6, &p.t);
		if (!e)
			return -DROP_CT_FULL;
	}
	ct6_touch(&orig, e, &p, now);
	r = apply6(ctx, &p, e);
	if (r < 0)
		return r;
	frag6_record(&p, &orig);
	return TC_ACT_OK;

plain:
	dst = bpf_map_lookup_elem(&endpoints6, p.t.daddr);
	to_host = bpf_map_lookup_elem(&host_addrs6, p.t.daddr) != 0;
	r = gw6_isolated_from_container(&p, to_host);
	if (r)
		return r;
	/* (Redirect-only mode tracks nothing: there, networks stay apart.) */
	r = (to_host || CONFIG.redirect_only) ? 0 : gw6_routed_from_other_net(&p, src, now);
	if (r)
		return r < 0 ? r : TC_ACT_OK;
	r = iso6_verdict(&p, src, dst, to_host, now);
	if (r < 0)
		return r;
	/* Out of the host (no container, no host address): the fast path;
	 * to_netdev6 masquerades it there. */
	if (to_host)
		return TC_ACT_OK;
	/* (Tested apart: clang would or the pointer into to_host, which the
	 * verifier refuses.) */
	asm volatile("" : "+r"(dst));
	if (dst || container_net6(p.t.daddr))
		return TC_ACT_OK;
	return forward_out6(ctx, &p, src->bridge_ifindex);
}

/* handle6_to_container: the body of to_container6, to_container for IPv6:
 * the isolated gateway mode, the reverse of a hairpin, then direct access
 * from other interfaces (lib/direct.h), which judges ICMPv6 errors too,
 * by their own addresses, as Docker's raw drop does. ND and link-local
 * traffic never get past parse6. */
static __always_inline int handle6_to_container(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct6_key orig;
	struct ct6_entry *e;
	struct pkt6 p = {};
	int r = parse6_flow(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	r = gw6_isolated_to_container(&p);
	if (r)
		return r;
	orig = p.t;
	if (p.icmp != ICMP_K_ERROR && (p.frag != FRAG_LATER || p.t.sport || p.t.dport)) {
		e = ct6_lookup(&p.t, CT_AT_TO_CONTAINER, now);
		if (e) {
			ct6_touch(&orig, e, &p, now);
			r = apply6(ctx, &p, e);
			if (r < 0)
				return r;
			frag6_record(&p, &orig);
		}
	}
	return direct6_verdict(&p, ctx->ifindex, ctx->ingress_ifindex, now);
}
