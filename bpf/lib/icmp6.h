/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMPv6 errors (destination unreachable, packet too big, time exceeded,
 * parameter problem) about a translated IPv6 flow: the quoted packet is
 * the flow's as it was translated, so it is translated back, with the
 * quoted L4 checksum, the outer address that was the flow's, and the
 * ICMPv6 checksum (which covers the pseudo-header) kept right. Path-MTU
 * discovery through NAT needs it: a container never learns the uplink's
 * MTU from a Packet Too Big addressed to the host.
 *
 * Quotes with extension headers between the quoted fixed header and its
 * L4 header are not translated (passed as they are), nor quotes of
 * anything but TCP, UDP and ICMPv6 echo. */
#pragma once

#include "common.h"
#include "ipv6.h"
#include "conntrack6.h"

/* The quoted fixed header and the first 8 bytes of its L4 header. */
struct icmp6_quote {
	struct ipv6hdr ip;
	__u8 l4[8];
};

/* csum16_apply returns checksum field csum with the one's-complement
 * difference diff (bpf_csum_diff's) added. */
static __always_inline __u16 csum16_apply(__u16 csum, __s64 diff)
{
	return csum_fold((__u64)(__u16)~csum + (__u32)diff);
}

/* icmp6_error_xlate translates an ICMPv6 error at hook `at` whose quote is
 * of a flow that hook's entries translate. Returns 1 when it translated
 * the error, 0 when the error is about no flow known here, or a negative
 * drop reason. */
static __always_inline int icmp6_error_xlate(struct __sk_buff *ctx, struct pkt6 *p, __u8 at,
					     __u64 now)
{
	__u32 qoff = p->l4_off + 8, l4off = qoff + IP6_HLEN;
	__u32 csum_off = p->l4_off + offsetof(struct icmphdr, checksum);
	struct icmp6_quote q, nq;
	struct ct6_key rk = {};
	struct ct6_entry *e;
	__u32 qlen;
	__s64 d;
	__u8 inner_csum = 0; /* offset of the quoted L4 checksum in q.l4, 0: none there */

	if (p->frag != FRAG_NONE || p->l4_len < 8 + sizeof(q))
		return 0;
	qlen = p->l4_len - 8 - IP6_HLEN; /* quoted L4 bytes */
	if (bpf_skb_load_bytes(ctx, qoff, &q, sizeof(q)) < 0)
		return -DROP_MALFORMED;
	if (q.ip.version != 6)
		return 0;
	rk.proto = q.ip.nexthdr;
	__builtin_memcpy(rk.saddr, &q.ip.daddr, 16);
	__builtin_memcpy(rk.daddr, &q.ip.saddr, 16);
	switch (rk.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		__builtin_memcpy(&rk.sport, &q.l4[2], 2);
		__builtin_memcpy(&rk.dport, &q.l4[0], 2);
		if (rk.proto == IPPROTO_UDP)
			inner_csum = 6;
		break;
	case IPPROTO_ICMPV6:
		/* The quote of an echo request (identifier as its source
		 * port) is answered by the flow's reply key, whose
		 * destination port is the identifier; and the other way. */
		if (q.l4[0] == ICMPV6_ECHO_REQUEST)
			__builtin_memcpy(&rk.dport, &q.l4[4], 2);
		else if (q.l4[0] == ICMPV6_ECHO_REPLY)
			__builtin_memcpy(&rk.sport, &q.l4[4], 2);
		else
			return 0;
		inner_csum = 2;
		break;
	default:
		return 0;
	}
	e = ct6_lookup(&rk, at, now);
	if (!e)
		return 0;

	/* The quote translated back: the reverse of the entry's tuple. */
	nq = q;
	__builtin_memcpy(&nq.ip.saddr, e->ndaddr, 16);
	__builtin_memcpy(&nq.ip.daddr, e->nsaddr, 16);
	if (rk.proto == IPPROTO_ICMPV6) {
		__be16 id = q.l4[0] == ICMPV6_ECHO_REQUEST ? e->ndport : e->nsport;

		__builtin_memcpy(&nq.l4[4], &id, 2);
	} else {
		__builtin_memcpy(&nq.l4[0], &e->ndport, 2);
		__builtin_memcpy(&nq.l4[2], &e->nsport, 2);
	}
	/* The quoted L4 checksum covers its pseudo-header: addresses and
	 * ports (or identifier) changed. A UDP checksum of 0 is none. */
	d = bpf_csum_diff((__be32 *)&q.ip.saddr, 32, (__be32 *)&nq.ip.saddr, 32, 0);
	d = bpf_csum_diff((__be32 *)q.l4, 8, (__be32 *)nq.l4, 8, d);
	if (inner_csum == 6) {
		__u16 c;

		__builtin_memcpy(&c, &q.l4[6], 2);
		if (c) {
			c = csum16_apply(c, d);
			__builtin_memcpy(&nq.l4[6], &c, 2);
		}
	} else if (inner_csum == 2) {
		__u16 c;

		__builtin_memcpy(&c, &q.l4[2], 2);
		c = csum16_apply(c, d);
		__builtin_memcpy(&nq.l4[2], &c, 2);
	} else if (qlen >= 20) {
		/* TCP: its checksum is at byte 16, past the 8 bytes held. */
		__be32 old, neu;
		__u16 c;

		if (bpf_skb_load_bytes(ctx, l4off + 16, &old, 4) < 0)
			return -DROP_MALFORMED;
		neu = old;
		__builtin_memcpy(&c, &neu, 2);
		c = csum16_apply(c, d);
		__builtin_memcpy(&neu, &c, 2);
		if (bpf_l4_csum_replace(ctx, csum_off, old, neu, 4) < 0 ||
		    bpf_skb_store_bytes(ctx, l4off + 16, &neu, 4, 0) < 0)
			return -DROP_REWRITE;
	}
	/* The ICMPv6 checksum covers the quote: its bytes changed. */
	d = bpf_csum_diff((__be32 *)&q, sizeof(q), (__be32 *)&nq, sizeof(nq), 0);
	if (bpf_l4_csum_replace(ctx, csum_off, 0, d, 0) < 0 ||
	    bpf_skb_store_bytes(ctx, qoff, &nq, sizeof(nq), 0) < 0)
		return -DROP_REWRITE;

	/* The outer address that was the flow's: the destination of an
	 * error about what the flow sent, the source of one its end sent. */
	if (ip6_eq(p->t.daddr, rk.daddr) &&
	    rewrite6_addr(ctx, p, IP6_DADDR_OFF, p->t.daddr, e->ndaddr) < 0)
		return -DROP_REWRITE;
	if (ip6_eq(p->t.saddr, rk.saddr) &&
	    rewrite6_addr(ctx, p, IP6_SADDR_OFF, p->t.saddr, e->nsaddr) < 0)
		return -DROP_REWRITE;
	return 1;
}
