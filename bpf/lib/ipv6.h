/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parsing an IPv6 frame into a flow tuple: the fixed header, then the
 * extension headers (hop-by-hop, routing, destination options, fragment,
 * authentication) walked up to IPV6_EXT_MAX of them. The IPv6 path of
 * every entry program starts here (datapath.c dispatches on the
 * ethertype; the IPv4 path never reaches this code).
 *
 * What is never translated nor dropped: Neighbour Discovery (RS, RA, NS,
 * NA, redirect), MLD, and link-local, multicast, loopback or unspecified
 * addresses: parse6 returns PARSE_PASS for them, and the programs let the
 * stack have them as they are. */
#pragma once

#include <stddef.h>
#include <linux/ipv6.h>
#include "common.h"
#include "packet.h"

#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif

/* Next-header values of linux/in6.h, and ICMPv6's (linux/icmpv6.h pulls
 * in libc headers). */
#define NEXTHDR_HOP	 0
#define NEXTHDR_ROUTING	 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH	 51
#define NEXTHDR_DEST	 60
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

#define ICMPV6_DEST_UNREACH	1
#define ICMPV6_PKT_TOOBIG	2
#define ICMPV6_TIME_EXCEED	3
#define ICMPV6_PARAMPROB	4
#define ICMPV6_ECHO_REQUEST	128
#define ICMPV6_ECHO_REPLY	129
#define ICMPV6_MLD_QUERY	130 /* 130..132: MLDv1 */
#define ICMPV6_MLD2_REPORT	143
#define ICMPV6_ND_FIRST		133 /* router solicitation */
#define ICMPV6_ND_LAST		137 /* redirect */

/* IPV6_EXT_MAX: the extension headers parse6 walks before the L4 header.
 * RFC 8200's recommended order has at most six (hop-by-hop, destination
 * options, routing, fragment, authentication, destination options); a
 * longer chain is dropped with DROP_IPV6_EXTHDR, never passed on with a
 * tuple the datapath could not read. */
#define IPV6_EXT_MAX 6

#define IP6_SADDR_OFF (L3_OFF + offsetof(struct ipv6hdr, saddr))
#define IP6_DADDR_OFF (L3_OFF + offsetof(struct ipv6hdr, daddr))
#define IP6_HLIM_OFF  (L3_OFF + offsetof(struct ipv6hdr, hop_limit))
#define IP6_HLEN      40

/* A flow of IPv6 as seen at one hook: ct_key's twin (ct6 is keyed by it). */
struct ct6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct pkt6 {
	struct ct6_key t; /* current tuple; kept up to date by rewrites */
	__u32 len;	  /* skb->len */
	__u32 l4_off;	  /* offset of the L4 header from the frame start */
	__u32 l4_len;	  /* bytes from the L4 header to the end of the payload */
	__be32 frag_id;	  /* the fragment header's identification */
	__u8 frag;	  /* enum frag_kind */
	__u8 icmp;	  /* enum icmp_kind */
	__u8 tcp_flags;
	__u8 hlim;
};

static __always_inline int ip6_is_zero(const __be32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int ip6_eq(const __be32 *a, const __be32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

static __always_inline void ip6_copy(__be32 *d, const __be32 *s)
{
	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

/* ip6_local tells whether an address is only of the link or the host:
 * unspecified, loopback, link-local unicast (fe80::/10) or multicast
 * (ff00::/8). A packet from or to one is never translated. */
static __always_inline int ip6_local(const __be32 *a)
{
	__u32 w0 = bpf_ntohl(a[0]);

	if ((w0 & 0xffc00000) == 0xfe800000 || (w0 & 0xff000000) == 0xff000000)
		return 1;
	if (w0 || a[1] || a[2])
		return 0;
	return a[3] == 0 || a[3] == bpf_htonl(1);
}

/* ip6_ext_len reads the extension header at off whose type is nh: its
 * length in bytes, its next header in *next, and for a fragment header
 * the fragment's kind and identification in p. Returns the length, or
 * -DROP_MALFORMED. */
static __always_inline int ip6_ext_len(struct __sk_buff *ctx, struct pkt6 *p, __u32 off, __u8 nh,
				       __u8 *next)
{
	__u8 h[8];

	if (bpf_skb_load_bytes(ctx, off, h, sizeof(h)) < 0)
		return -DROP_MALFORMED;
	*next = h[0];
	switch (nh) {
	case NEXTHDR_FRAGMENT: {
		__u16 fo = ((__u16)h[2] << 8) | h[3];

		/* One fragment header a datagram (RFC 8200 4.5). */
		if (p->frag != FRAG_NONE)
			return -DROP_MALFORMED;
		__builtin_memcpy(&p->frag_id, &h[4], 4);
		if (fo & 0xfff8)
			p->frag = FRAG_LATER;
		else if (fo & 1)
			p->frag = FRAG_FIRST;
		else
			p->frag = FRAG_NONE; /* an atomic fragment: a whole datagram */
		return 8;
	}
	case NEXTHDR_AUTH:
		return ((__u32)h[1] + 2) * 4;
	}
	return ((__u32)h[1] + 1) * 8;
}

static __always_inline int ip6_is_ext(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_FRAGMENT ||
	       nh == NEXTHDR_AUTH || nh == NEXTHDR_DEST;
}

static __always_inline int parse6_icmp(struct __sk_buff *ctx, struct pkt6 *p)
{
	struct icmphdr ic; /* ICMPv6's first 8 bytes have ICMP's layout */

	if (p->l4_len < sizeof(ic) || bpf_skb_load_bytes(ctx, p->l4_off, &ic, sizeof(ic)) < 0)
		return -DROP_MALFORMED;
	switch (ic.type) {
	case ICMPV6_ECHO_REQUEST:
		p->icmp = ICMP_K_ECHO_REQ;
		p->t.sport = ic.un.echo.id;
		return PARSE_OK;
	case ICMPV6_ECHO_REPLY:
		p->icmp = ICMP_K_ECHO_REPLY;
		p->t.dport = ic.un.echo.id;
		return PARSE_OK;
	case ICMPV6_DEST_UNREACH:
	case ICMPV6_PKT_TOOBIG:
	case ICMPV6_TIME_EXCEED:
	case ICMPV6_PARAMPROB:
		p->icmp = ICMP_K_ERROR;
		return PARSE_OK;
	}
	/* Neighbour Discovery and MLD are the link's: never ours. */
	if ((ic.type >= ICMPV6_ND_FIRST && ic.type <= ICMPV6_ND_LAST) ||
	    (ic.type >= ICMPV6_MLD_QUERY && ic.type < ICMPV6_ND_FIRST) ||
	    ic.type == ICMPV6_MLD2_REPORT)
		return PARSE_PASS;
	p->icmp = ICMP_K_OTHER;
	return PARSE_OK;
}

/* parse6 fills p from an IPv6 frame. Returns PARSE_OK, PARSE_PASS (link
 * traffic, see above), -DROP_MALFORMED (truncated headers, a payload
 * length beyond the frame, a second fragment header, a hop-by-hop header
 * not first) or -DROP_IPV6_EXTHDR (more than IPV6_EXT_MAX extension
 * headers). A later fragment has ports 0 here (the caller finds them in
 * frags6). */
static __always_inline int parse6(struct __sk_buff *ctx, struct pkt6 *p)
{
	struct ipv6hdr ip;
	__u32 off = L3_OFF + IP6_HLEN, end;
	__u8 nh;
	int i;

	p->len = ctx->len;
	if (bpf_skb_load_bytes(ctx, L3_OFF, &ip, sizeof(ip)) < 0)
		return -DROP_MALFORMED;
	if (ip.version != 6)
		return -DROP_MALFORMED;
	end = off + bpf_ntohs(ip.payload_len);
	/* A jumbogram (payload length 0) is for links we do not serve. */
	if (end > ctx->len || end == off)
		return -DROP_MALFORMED;
	__builtin_memcpy(p->t.saddr, &ip.saddr, 16);
	__builtin_memcpy(p->t.daddr, &ip.daddr, 16);
	p->hlim = ip.hop_limit;
	if (ip6_local(p->t.saddr) || ip6_local(p->t.daddr))
		return PARSE_PASS;

	nh = ip.nexthdr;
#pragma unroll
	for (i = 0; i < IPV6_EXT_MAX; i++) {
		__u8 next;
		int len;

		if (!ip6_is_ext(nh) || p->frag == FRAG_LATER)
			break;
		if (nh == NEXTHDR_HOP && i)
			return -DROP_MALFORMED;
		len = ip6_ext_len(ctx, p, off, nh, &next);
		if (len < 0)
			return len;
		off += len;
		if (off > end)
			return -DROP_MALFORMED;
		nh = next;
	}
	if (ip6_is_ext(nh) && p->frag != FRAG_LATER)
		return -DROP_IPV6_EXTHDR;
	p->t.proto = nh;
	p->l4_off = off;
	p->l4_len = end - off;
	if (p->frag == FRAG_LATER)
		return PARSE_OK;

	switch (nh) {
	case IPPROTO_TCP: {
		__u8 h[14];

		if (p->l4_len < sizeof(struct tcphdr) || bpf_skb_load_bytes(ctx, off, h, sizeof(h)) < 0)
			return -DROP_MALFORMED;
		if ((h[12] >> 4) < 5 || (__u32)(h[12] >> 4) * 4 > p->l4_len)
			return -DROP_MALFORMED;
		__builtin_memcpy(&p->t.sport, &h[0], 2);
		__builtin_memcpy(&p->t.dport, &h[2], 2);
		p->tcp_flags = h[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr u;

		if (p->l4_len < sizeof(u) || bpf_skb_load_bytes(ctx, off, &u, sizeof(u)) < 0)
			return -DROP_MALFORMED;
		if (bpf_ntohs(u.len) < sizeof(u) ||
		    (p->frag == FRAG_NONE && bpf_ntohs(u.len) > p->l4_len))
			return -DROP_MALFORMED;
		p->t.sport = u.source;
		p->t.dport = u.dest;
		return PARSE_OK;
	}
	case IPPROTO_ICMPV6:
		return parse6_icmp(ctx, p);
	}
	return PARSE_OK;
}

static __always_inline __u32 l4_csum_off6(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return offsetof(struct tcphdr, check);
	if (proto == IPPROTO_UDP)
		return offsetof(struct udphdr, check);
	return offsetof(struct icmphdr, checksum);
}

/* l4_csummed6: the packet carries an L4 checksum that covers the
 * pseudo-header (a later fragment carries none). */
static __always_inline int l4_csummed6(const struct pkt6 *p)
{
	return p->frag != FRAG_LATER && (has_ports(p->t.proto) || p->t.proto == IPPROTO_ICMPV6);
}

/* rewrite6_addr writes address `to` at off in place of *cur (the tuple's),
 * fixing the L4 checksum over the pseudo-header; IPv6 has no header
 * checksum. Returns 0 or -DROP_REWRITE. */
static __always_inline int rewrite6_addr(struct __sk_buff *ctx, struct pkt6 *p, __u32 off,
					 __be32 *cur, const __be32 *to)
{
	if (ip6_eq(cur, to))
		return 0;
	if (l4_csummed6(p)) {
		__s64 d = bpf_csum_diff(cur, 16, (__be32 *)to, 16, 0);
		__u64 fl = BPF_F_PSEUDO_HDR;

		if (p->t.proto == IPPROTO_UDP)
			fl |= BPF_F_MARK_MANGLED_0;
		if (d < 0 ||
		    bpf_l4_csum_replace(ctx, p->l4_off + l4_csum_off6(p->t.proto), 0, d, fl) < 0)
			return -DROP_REWRITE;
	}
	if (bpf_skb_store_bytes(ctx, off, to, 16, 0) < 0)
		return -DROP_REWRITE;
	ip6_copy(cur, to);
	return 0;
}

static __always_inline int rewrite6_port(struct __sk_buff *ctx, struct pkt6 *p, __u32 field,
					 __be16 from, __be16 to)
{
	__u64 fl = sizeof(to);

	if (from == to || p->frag == FRAG_LATER)
		return 0;
	if (p->t.proto == IPPROTO_UDP)
		fl |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(ctx, p->l4_off + l4_csum_off6(p->t.proto), from, to, fl) < 0)
		return -DROP_REWRITE;
	if (bpf_skb_store_bytes(ctx, p->l4_off + field, &to, sizeof(to), 0) < 0)
		return -DROP_REWRITE;
	return 0;
}

/* rewrite6 turns the packet's tuple into (saddr:sport -> daddr:dport), as
 * rewrite does for IPv4 (ICMPv6 echo: the identifier). Returns 0 or
 * -DROP_REWRITE. */
static __always_inline int rewrite6(struct __sk_buff *ctx, struct pkt6 *p, const __be32 *saddr,
				    const __be32 *daddr, __be16 sport, __be16 dport)
{
	if (rewrite6_addr(ctx, p, IP6_SADDR_OFF, p->t.saddr, saddr) < 0 ||
	    rewrite6_addr(ctx, p, IP6_DADDR_OFF, p->t.daddr, daddr) < 0)
		return -DROP_REWRITE;
	if (has_ports(p->t.proto)) {
		if (rewrite6_port(ctx, p, 0, p->t.sport, sport) < 0 ||
		    rewrite6_port(ctx, p, 2, p->t.dport, dport) < 0)
			return -DROP_REWRITE;
	} else if (p->t.proto == IPPROTO_ICMPV6) {
		__u32 id_off = offsetof(struct icmphdr, un.echo.id);

		if (p->icmp == ICMP_K_ECHO_REQ &&
		    rewrite6_port(ctx, p, id_off, p->t.sport, sport) < 0)
			return -DROP_REWRITE;
		if (p->icmp == ICMP_K_ECHO_REPLY &&
		    rewrite6_port(ctx, p, id_off, p->t.dport, dport) < 0)
			return -DROP_REWRITE;
	}
	p->t.sport = sport;
	p->t.dport = dport;
	return 0;
}
