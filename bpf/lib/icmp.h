/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Translation of ICMP errors (destination unreachable, fragmentation
 * needed, time exceeded, parameter problem) that quote a translated flow:
 * the quoted header is rewritten along with the outer one, so path-MTU
 * discovery and traceroute work through the NAT. */
#pragma once

#include "common.h"
#include "maps.h"
#include "packet.h"
#include "conntrack.h"

/* The quoted datagram: its IP header (options are not supported) and the
 * first 8 bytes of its L4 header, which every ICMP error carries. */
struct icmp_quote {
	struct iphdr ip;
	__u8 l4[8];
};

static __always_inline __u16 csum_update(__u16 check, const void *from, const void *to, __u32 size)
{
	__s64 d = bpf_csum_diff((__be32 *)from, size, (__be32 *)to, size, (__u16)~check);

	return csum_fold(d);
}

/* icmp_quote_key reads the datagram an ICMP error quotes into q and sets
 * k to the tuple of the error's direction of the quoted flow (the reverse
 * of the quoted packet's). Returns 1 when it did, 0 when the quote is not
 * one the datapath tracks. */
static __always_inline int icmp_quote_key(struct __sk_buff *ctx, const struct pkt *p,
					  struct icmp_quote *q, struct ct_key *k)
{
	__be16 tot;

	if (p->frag != FRAG_NONE)
		return 0;
	/* The quote must lie in the datagram: what follows its end is
	 * padding, which is neither read nor written, nor summed into the
	 * ICMP checksum. A shorter quote is one no receiver acts on. */
	if (bpf_skb_load_bytes(ctx, L3_OFF + offsetof(struct iphdr, tot_len), &tot, sizeof(tot)) <
	    0)
		return 0;
	if (p->l4_off + sizeof(struct icmphdr) + sizeof(*q) > L3_OFF + (__u32)bpf_ntohs(tot))
		return 0;
	if (bpf_skb_load_bytes(ctx, p->l4_off + sizeof(struct icmphdr), q, sizeof(*q)) < 0)
		return 0;
	if (q->ip.version != 4 || q->ip.ihl != 5)
		return 0;

	/* The quoted packet went the other way: its reverse is the tuple of
	 * the error's direction. */
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = q->ip.daddr;
	k->daddr = q->ip.saddr;
	k->proto = q->ip.protocol;
	if (has_ports(q->ip.protocol)) {
		__builtin_memcpy(&k->sport, &q->l4[2], 2);
		__builtin_memcpy(&k->dport, &q->l4[0], 2);
	} else if (q->ip.protocol == IPPROTO_ICMP && q->l4[0] == ICMP_ECHO) {
		__builtin_memcpy(&k->dport, &q->l4[4], 2);
	} else {
		return 0;
	}
	return 1;
}

/* icmp_error_xlate rewrites an ICMP error whose quoted flow has an entry
 * that hook `at` applies. Returns 1 when translated, 0 when not ours, or
 * -DROP_REWRITE. */
static __always_inline int icmp_error_xlate(struct __sk_buff *ctx, struct pkt *p, __u8 at,
					    __u64 now)
{
	__u32 qoff = p->l4_off + sizeof(struct icmphdr);
	struct icmp_quote q, nq;
	struct ct_key k;
	struct ct_entry *e;
	__be32 osaddr, odaddr;

	if (!icmp_quote_key(ctx, p, &q, &k))
		return 0;
	e = ct_lookup(&k, at, now);
	if (!e)
		return 0;

	nq = q;
	/* Quoted packet: from the new destination to the new source. */
	nq.ip.saddr = e->ndaddr;
	nq.ip.daddr = e->nsaddr;
	nq.ip.check = csum_update(q.ip.check, &q.ip.saddr, &nq.ip.saddr, 8);
	if (has_ports(q.ip.protocol)) {
		__builtin_memcpy(&nq.l4[0], &e->ndport, 2);
		__builtin_memcpy(&nq.l4[2], &e->nsport, 2);
		if (q.ip.protocol == IPPROTO_UDP && (nq.l4[6] | nq.l4[7])) {
			struct {
				__be32 a[2];
				__u8 ports[4];
			} ob = {{q.ip.saddr, q.ip.daddr}}, nb = {{nq.ip.saddr, nq.ip.daddr}};
			__u16 c;

			__builtin_memcpy(ob.ports, q.l4, 4);
			__builtin_memcpy(nb.ports, nq.l4, 4);
			__builtin_memcpy(&c, &q.l4[6], 2);
			c = csum_update(c, &ob, &nb, sizeof(ob));
			if (!c)
				c = 0xffff;
			__builtin_memcpy(&nq.l4[6], &c, 2);
		}
	} else {
		__u16 c;

		__builtin_memcpy(&nq.l4[4], &e->ndport, 2);
		__builtin_memcpy(&c, &q.l4[2], 2);
		c = csum_update(c, &q.l4[4], &nq.l4[4], 4);
		__builtin_memcpy(&nq.l4[2], &c, 2);
	}

	{
		__s64 d = bpf_csum_diff((__be32 *)&q, sizeof(q), (__be32 *)&nq, sizeof(nq), 0);

		if (bpf_skb_store_bytes(ctx, qoff, &nq, sizeof(nq), 0) < 0)
			return -DROP_REWRITE;
		if (bpf_l4_csum_replace(ctx, p->l4_off + offsetof(struct icmphdr, checksum), 0, d,
					0) < 0)
			return -DROP_REWRITE;
	}

	/* Outer header: the error goes to the quoted packet's source; when
	 * the quoted packet's destination itself complains, its address is
	 * translated too (a router in between keeps its own). */
	osaddr = p->t.saddr;
	odaddr = p->t.daddr;
	if (odaddr == q.ip.saddr)
		odaddr = e->ndaddr;
	if (osaddr == q.ip.daddr)
		osaddr = e->nsaddr;
	if (rewrite_addr(ctx, p, IP_SADDR_OFF, p->t.saddr, osaddr) < 0)
		return -DROP_REWRITE;
	p->t.saddr = osaddr;
	if (rewrite_addr(ctx, p, IP_DADDR_OFF, p->t.daddr, odaddr) < 0)
		return -DROP_REWRITE;
	p->t.daddr = odaddr;
	return 1;
}
