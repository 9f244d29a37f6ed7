/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NAT64 of a published port: a host IPv6 port published to an IPv4-only
 * container, which Docker serves only through docker-proxy (and the
 * container then sees the proxy, not the client). Here the flow is
 * translated in the datapath and the container sees a source address of
 * its own for each client: the client's IPv6 address is mapped statefully
 * into the IPv4 pool of CONFIG.nat64_pool/nat64_mask (198.19.0.0/16 by
 * default, RFC 2544 benchmarking space, never on the Internet).
 *
 * A published6 target whose address is IPv4-mapped (::ffff:a.b.c.d)
 * marks the mapping. Its first packet picks a pool address for the
 * client (a hash of the client's address, then the next ones, so that no
 * two live flows share the IPv4 tuple the container sees) and records the
 * flow in nat64_fwd (by the IPv6 tuple as it arrives) and nat64_rev (by
 * the container's answer tuple). from_netdev6 translates the client's
 * packets to IPv4 and puts them into the container with
 * bpf_redirect_peer (fast path or not: through the bridge, to_container
 * would judge them as direct access from the uplink); from_container
 * tail-calls nat64_out for a packet to a pool address, which translates
 * the answer back to IPv6 from the host address and port the client
 * connected to and sends it out (lib/fast6.h's forward_out6, else the
 * stack routes it).
 *
 * TCP and UDP only, without IP options or IPv6 extension headers, and
 * never a fragment: the first fragment of an IPv6 datagram to a NAT64
 * port, a packet with extension headers or a hop limit of 1 or less, and
 * an answer that cannot be translated (IP options, UDP without a
 * checksum, which IPv6 cannot carry) are dropped with DROP_NAT64, counted;
 * a later IPv6 fragment goes to the stack, which has no socket for it. A
 * packet to a pool address that no live flow claims (an ICMP error of the
 * container, a fragment) is not translated and goes on as any other: the
 * pool is no network of the host's. ICMPv6 errors about a NAT64 flow are
 * not translated either: they go to the stack as any unknown error.
 * Entries live as ct entries do (ct_lifetime, checked at lookup) in LRU
 * maps, which evict the least recently used when full: no garbage
 * collector walks them. */
#pragma once

#include "common.h"
#include "config.h"
#include "maps.h"
#include "maps6.h"
#include "packet.h"
#include "ipv6.h"
#include "conntrack.h"
#include "fast6.h"

/* Pool addresses a new flow tries before it is refused. */
#define NAT64_PROBES 4

/* One direction of a NAT64 flow. fwd (nat64_fwd, keyed by the IPv6 tuple
 * of the client's packets) holds the IPv4 tuple they become; rev
 * (nat64_rev, keyed by the IPv4 tuple of the container's answers) the
 * IPv6 tuple those become. */
struct nat64_fwd_entry {
	struct ct_key t4; /* pool:client port -> container:port */
	__u32 ifindex;	  /* host veth of the container */
	__u8 tcp_seen;
	__u8 pad[3];
	__u64 expires;
	__u64 packets;
	__u64 bytes;
};

struct nat64_rev_entry {
	struct ct6_key t6; /* host6:host port -> client6:client port */
	__u8 tcp_seen;
	__u8 pad[3];
	__u32 ifindex; /* host veth of the container: its answers come from there only */
	__u64 expires;
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct6_key);
	__type(value, struct nat64_fwd_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat64_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct nat64_rev_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat64_rev SEC(".maps");

/* nat64_target: whether a published6 target is an IPv4 container's. */
static __always_inline int nat64_target(const struct port6_target *t)
{
	return !t->addr[0] && !t->addr[1] && t->addr[2] == bpf_htonl(0xffff);
}

/* nat64_pool_has: whether a is an address of the NAT64 pool. */
static __always_inline int nat64_pool_has(__be32 a)
{
	return CONFIG.nat64_mask && (a & CONFIG.nat64_mask) == CONFIG.nat64_pool;
}

/* nat64_hash mixes a client's address into the index of its first pool
 * address. */
static __always_inline __u32 nat64_hash(const __be32 *a)
{
	__u32 h = 0x9e3779b1;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		h ^= a[i];
		h *= 0x85ebca6b;
		h ^= h >> 15;
	}
	return h;
}

/* nat64_pool_addr is the i-th candidate of hash h: a pool address that is
 * neither the pool's first nor its last (the pool is at least a /30). */
static __always_inline __be32 nat64_pool_addr(__u32 h, __u32 i)
{
	__u32 span = bpf_ntohl(~CONFIG.nat64_mask) - 1;

	if (!span)
		return 0;
	return CONFIG.nat64_pool | bpf_htonl((h + i) % span + 1);
}

/* nat64_ct4_holds tells whether an IPv4 flow has tuple k live (in ct4 or,
 * unassured, in ct4_syn). */
static __always_inline int nat64_ct4_holds(const struct ct_key *k, __u64 now)
{
	struct ct_entry *e;

	if (ct_lookup_live(k, now))
		return 1;
	e = bpf_map_lookup_elem(&ct4_syn, k);
	return e && e->expires >= now;
}

/* nat64_forged refuses a new IPv4 flow from the uplink (tuple k, to the
 * published target t) whose source is in the pool and whose answers a
 * live NAT64 flow takes: the container could not tell it from that flow's
 * client. 0 or -DROP_SPOOFED. */
static __always_inline int nat64_forged(const struct ct_key *k, const struct port_target *t, __u64 now)
{
	struct ct_key rk = {.saddr = t->addr, .daddr = k->saddr, .sport = t->port, .dport = k->sport,
			    .proto = k->proto};
	struct nat64_rev_entry *rv;

	if (!nat64_pool_has(k->saddr))
		return 0;
	rv = bpf_map_lookup_elem(&nat64_rev, &rk);
	return rv && rv->expires >= now ? -DROP_SPOOFED : 0;
}

/* nat64_create records a new flow of p to the IPv4 target t (an
 * IPv4-mapped address) and fills *f. 0, or -DROP_NAT_EXHAUSTED when every
 * candidate pool address has a live flow with the same IPv4 tuple, or
 * -DROP_CT_FULL. */
static __always_inline int nat64_create(struct pkt6 *p, const struct port6_target *t,
					const struct endpoint *ep, struct nat64_fwd_entry *f, __u64 now)
{
	struct nat64_rev_entry rv = {};
	__u32 h = nat64_hash(p->t.saddr);
	int i;

	ip6_copy(rv.t6.saddr, p->t.daddr);
	ip6_copy(rv.t6.daddr, p->t.saddr);
	rv.t6.sport = p->t.dport;
	rv.t6.dport = p->t.sport;
	rv.t6.proto = p->t.proto;
	rv.expires = now + ct_lifetime(p->t.proto, 0);
	rv.ifindex = ep->ifindex;

	f->t4.daddr = t->addr[3];
	f->t4.sport = p->t.sport;
	f->t4.dport = t->port;
	f->t4.proto = p->t.proto;
	f->ifindex = ep->ifindex;
#pragma unroll
	for (i = 0; i < NAT64_PROBES; i++) {
		struct ct_key rk = {.saddr = t->addr[3], .sport = t->port, .dport = p->t.sport,
				    .proto = p->t.proto};
		struct nat64_rev_entry *o;

		rk.daddr = nat64_pool_addr(h, i);
		if (!rk.daddr)
			break;
		o = bpf_map_lookup_elem(&nat64_rev, &rk);
		/* Held by another flow (another client, or this one to
		 * another host address or port): while its reverse entry
		 * lives, or its forward one (a client that only sends). */
		if (o && (!ip6_eq(o->t6.daddr, rv.t6.daddr) || !ip6_eq(o->t6.saddr, rv.t6.saddr) ||
			  o->t6.sport != rv.t6.sport)) {
			struct ct6_key ok = {.sport = o->t6.dport, .dport = o->t6.sport, .proto = o->t6.proto};
			struct nat64_fwd_entry *of;

			if (o->expires >= now)
				continue;
			ip6_copy(ok.saddr, o->t6.daddr);
			ip6_copy(ok.daddr, o->t6.saddr);
			of = bpf_map_lookup_elem(&nat64_fwd, &ok);
			if (of && of->expires >= now && of->t4.saddr == rk.daddr)
				continue;
		}
		/* Or by an IPv4 flow of the same tuple (a source of the pool
		 * from the uplink, which from_netdev refuses from then on). */
		if (nat64_ct4_holds(&rk, now))
			continue;
		if (bpf_map_update_elem(&nat64_rev, &rk, &rv, BPF_ANY) < 0)
			return -DROP_CT_FULL;
		f->t4.saddr = rk.daddr;
		if (bpf_map_update_elem(&nat64_fwd, &p->t, f, BPF_ANY) < 0)
			return -DROP_CT_FULL;
		count_event(EV_CT_NEW_NAT64);
		return 0;
	}
	return -DROP_NAT_EXHAUSTED;
}

/* nat64_pseudo is the part of the pseudo-header that NAT64 changes: the
 * addresses (length and protocol sum alike in both families). */
struct nat64_addrs6 {
	__be32 s[4];
	__be32 d[4];
};

struct nat64_addrs4 {
	__be32 s;
	__be32 d;
};

/* nat64_l4_pseudo moves the L4 checksum at off from the pseudo-header of
 * from (flen bytes of addresses) to that of to. 0 or -DROP_REWRITE. */
static __always_inline int nat64_l4_pseudo(struct __sk_buff *ctx, __u32 off, __u8 proto,
					   void *from, __u32 flen, void *to, __u32 tlen)
{
	__s64 d = bpf_csum_diff(from, flen, to, tlen, 0);
	__u64 fl = BPF_F_PSEUDO_HDR;

	if (proto == IPPROTO_UDP)
		fl |= BPF_F_MARK_MANGLED_0;
	if (d < 0 || bpf_l4_csum_replace(ctx, off + l4_csum_off(proto), 0, d, fl) < 0)
		return -DROP_REWRITE;
	return 0;
}

/* nat64_6to4 turns the IPv6 packet p into the IPv4 packet of tuple t4
 * with TTL ttl: destination port, L4 checksum, then the headers. 0 or a
 * negative drop reason. */
static __always_inline int nat64_6to4(struct __sk_buff *ctx, struct pkt6 *p,
				      const struct ct_key *t4, __u8 ttl)
{
	struct nat64_addrs6 a6;
	struct nat64_addrs4 a4 = {.s = t4->saddr, .d = t4->daddr};
	struct iphdr ip = {};
	__be16 eth = bpf_htons(ETH_P_IP);
	__u8 w[2];

	if (bpf_skb_load_bytes(ctx, L3_OFF, w, 2) < 0)
		return -DROP_MALFORMED;
	ip6_copy(a6.s, p->t.saddr);
	ip6_copy(a6.d, p->t.daddr);
	if (rewrite6_port(ctx, p, 2, p->t.dport, t4->dport) < 0 ||
	    nat64_l4_pseudo(ctx, p->l4_off, p->t.proto, &a6, sizeof(a6), &a4, sizeof(a4)) < 0)
		return -DROP_REWRITE;
	if (bpf_skb_change_proto(ctx, eth, 0) < 0)
		return -DROP_REWRITE;
	ip.version = 4;
	ip.ihl = 5;
	ip.tos = (w[0] << 4) | (w[1] >> 4); /* the traffic class */
	ip.tot_len = bpf_htons(sizeof(ip) + p->l4_len);
	ip.frag_off = bpf_htons(0x4000); /* DF: IPv6 is never fragmented on the way */
	ip.ttl = ttl;
	ip.protocol = p->t.proto;
	ip.saddr = t4->saddr;
	ip.daddr = t4->daddr;
	ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	if (bpf_skb_store_bytes(ctx, offsetof(struct ethhdr, h_proto), &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, L3_OFF, &ip, sizeof(ip), 0) < 0)
		return -DROP_REWRITE;
	return 0;
}

/* nat64_flow_intact tells whether the live forward entry f of the
 * client's packet p still has its reverse half, its own (not another
 * flow's that took the IPv4 tuple over), and is not a closed TCP flow
 * that p's SYN opens again: else the flow is made anew. */
static __always_inline int nat64_flow_intact(const struct nat64_fwd_entry *f, const struct pkt6 *p,
					     __u64 now)
{
	struct ct_key rk = {.saddr = f->t4.daddr, .daddr = f->t4.saddr, .sport = f->t4.dport,
			    .dport = f->t4.sport, .proto = f->t4.proto};
	struct nat64_rev_entry *rv;

	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN &&
	    (f->tcp_seen & (TCPF_FIN | TCPF_RST)))
		return 0;
	rv = bpf_map_lookup_elem(&nat64_rev, &rk);
	return rv && ip6_eq(rv->t6.daddr, p->t.saddr) && rv->t6.dport == p->t.sport &&
	       ip6_eq(rv->t6.saddr, p->t.daddr) && rv->t6.sport == p->t.dport;
}

/* nat64_from_netdev translates a packet of the client to a NAT64 port
 * (t, an IPv4 container's) and puts it into the container. A TC action
 * or a negative drop reason. */
static __always_inline int nat64_from_netdev(struct __sk_buff *ctx, struct pkt6 *p,
					     const struct port6_target *t, __u64 now)
{
	__be32 a4 = t->addr[3];
	struct nat64_fwd_entry nf = {};
	struct nat64_fwd_entry *f;
	struct endpoint *ep;
	struct ct_key t4;
	int r;

	/* Not a fragment, no extension header, a hop to spend (the client
	 * sees its packet lost: no Time Exceeded from here). */
	if (p->frag != FRAG_NONE || p->l4_off != L3_OFF + IP6_HLEN || p->hlim <= 1)
		return -DROP_NAT64;
	ep = bpf_map_lookup_elem(&endpoints, &a4);
	if (!ep)
		return -DROP_NAT64;
	if (p->t.proto == IPPROTO_UDP) {
		__sum16 c;

		/* A zero UDP checksum is invalid in IPv6 (RFC 8200 8.1): the
		 * stack would drop it, IPv4 would take it as none. */
		if (bpf_skb_load_bytes(ctx, p->l4_off + offsetof(struct udphdr, check), &c, sizeof(c)) <
			    0 ||
		    !c)
			return -DROP_NAT64;
	}
	f = bpf_map_lookup_elem(&nat64_fwd, &p->t);
	if (f && !nat64_flow_intact(f, p, now))
		f = 0;
	if (!f || f->expires < now || f->t4.daddr != a4 || f->t4.dport != t->port) {
		r = nat64_create(p, t, ep, &nf, now);
		if (r < 0)
			return r;
		f = bpf_map_lookup_elem(&nat64_fwd, &p->t);
		if (!f)
			return -DROP_CT_FULL;
	}
	f->tcp_seen |= p->tcp_flags;
	f->expires = now + ct_lifetime(p->t.proto, f->tcp_seen);
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, p->len);
	t4 = f->t4;
	{
		/* The client's packets keep the answers' half alive too. */
		struct ct_key rk = {.saddr = t4.daddr, .daddr = t4.saddr, .sport = t4.dport, .dport = t4.sport,
				    .proto = t4.proto};
		struct nat64_rev_entry *rv = bpf_map_lookup_elem(&nat64_rev, &rk);

		if (rv && rv->expires < now + ct_lifetime(p->t.proto, rv->tcp_seen | f->tcp_seen))
			rv->expires = now + ct_lifetime(p->t.proto, rv->tcp_seen | f->tcp_seen);
	}
	r = nat64_6to4(ctx, p, &t4, p->hlim - 1);
	if (r < 0)
		return r;
	if (bpf_skb_store_bytes(ctx, 0, ep->mac, 2 * ETH_ALEN, 0) < 0)
		return -DROP_REWRITE;
	count_if(ep->ifindex, ctx->len, 1);
	count_event(EV_REDIRECT_PEER);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* handle_nat64_out: the body of the nat64_out program, which from_container
 * tail-calls for an IPv4 packet to a pool address: the answer of a NAT64
 * flow goes out as IPv6, anything else is dropped. */
static __always_inline int handle_nat64_out(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct ipv6hdr ip6 = {};
	struct nat64_addrs4 a4;
	struct nat64_addrs6 a6;
	struct nat64_rev_entry *rv;
	struct pkt p = {};
	struct pkt6 p6 = {};
	__be16 eth = bpf_htons(ETH_P_IPV6);
	__u8 h[4]; /* version and IHL, TOS, total length */
	int r = parse(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS || !has_ports(p.t.proto) || p.frag != FRAG_NONE || p.ihl != 20 ||
	    p.ttl <= 1)
		return -DROP_NAT64;
	rv = bpf_map_lookup_elem(&nat64_rev, &p.t);
	if (!rv || rv->expires < now)
		return -DROP_NAT64;
	/* From the flow's container only. */
	if (rv->ifindex != ctx->ifindex)
		return -DROP_SPOOFED;
	if (p.t.proto == IPPROTO_UDP) {
		__sum16 c;

		if (bpf_skb_load_bytes(ctx, p.l4_off + offsetof(struct udphdr, check), &c,
				       sizeof(c)) < 0 ||
		    !c)
			return -DROP_NAT64;
	}
	if (bpf_skb_load_bytes(ctx, L3_OFF, h, sizeof(h)) < 0)
		return -DROP_MALFORMED;
	rv->tcp_seen |= p.tcp_flags;
	rv->expires = now + ct_lifetime(p.t.proto, rv->tcp_seen);
	__sync_fetch_and_add(&rv->packets, 1);
	__sync_fetch_and_add(&rv->bytes, p.len);
	p6.t = rv->t6;

	a4.s = p.t.saddr;
	a4.d = p.t.daddr;
	ip6_copy(a6.s, p6.t.saddr);
	ip6_copy(a6.d, p6.t.daddr);
	if (rewrite_port(ctx, &p, 0, p.t.sport, p6.t.sport) < 0 ||
	    nat64_l4_pseudo(ctx, p.l4_off, p.t.proto, &a4, sizeof(a4), &a6, sizeof(a6)) < 0)
		return -DROP_REWRITE;
	if (bpf_skb_change_proto(ctx, eth, 0) < 0)
		return -DROP_REWRITE;
	ip6.version = 6;
	ip6.priority = h[1] >> 4;
	ip6.flow_lbl[0] = h[1] << 4;
	ip6.payload_len = bpf_htons((((__u16)h[2] << 8) | h[3]) - sizeof(struct iphdr));
	ip6.nexthdr = p.t.proto;
	/* As the stack would: forward_out6 or the stack's routing spends
	 * the hop. */
	ip6.hop_limit = p.ttl;
	__builtin_memcpy(&ip6.saddr, p6.t.saddr, 16);
	__builtin_memcpy(&ip6.daddr, p6.t.daddr, 16);
	if (bpf_skb_store_bytes(ctx, offsetof(struct ethhdr, h_proto), &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, L3_OFF, &ip6, sizeof(ip6), 0) < 0)
		return -DROP_REWRITE;

	p6.len = ctx->len;
	p6.l4_off = L3_OFF + IP6_HLEN;
	p6.l4_len = bpf_ntohs(ip6.payload_len);
	p6.hlim = p.ttl;
	{
		__u32 ifindex = ctx->ifindex;
		struct endpoint *src = bpf_map_lookup_elem(&veths, &ifindex);

		return forward_out6(ctx, &p6, src ? src->bridge_ifindex : ifindex);
	}
}
