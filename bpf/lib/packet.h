/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parsing an IPv4 frame into a flow tuple, and rewriting addresses and
 * ports with checksums kept right. Headers are copied with
 * bpf_skb_load_bytes, which also works on non-linear skbs. */
#pragma once

#include <stddef.h>
#include "common.h"
#include "maps.h"

/* What parse returns besides -DROP_MALFORMED, for IPv4 that no receiver
 * could make sense of. */
enum parse_result {
	PARSE_OK = 0,
	PARSE_PASS = 1, /* not IPv4: not ours, passed untouched */
};

enum frag_kind {
	FRAG_NONE = 0,
	FRAG_FIRST = 1, /* offset 0, more fragments: carries the L4 header */
	FRAG_LATER = 2, /* offset > 0: no L4 header */
};

enum icmp_kind {
	ICMP_K_NONE = 0,
	ICMP_K_ECHO_REQ = 1,
	ICMP_K_ECHO_REPLY = 2,
	ICMP_K_ERROR = 3, /* destination unreachable, time exceeded, parameter problem */
	ICMP_K_OTHER = 4,
};

#define L3_OFF	     ETH_HLEN
#define IP_CSUM_OFF  (L3_OFF + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (L3_OFF + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (L3_OFF + offsetof(struct iphdr, daddr))
#define IP_TTL_OFF   (L3_OFF + offsetof(struct iphdr, ttl))

struct pkt {
	struct ct_key t; /* current tuple; kept up to date by rewrites */
	__u32 len;	 /* skb->len */
	__u32 l4_off;	 /* offset of the L4 header from the frame start */
	__u32 ihl;	 /* IP header length in bytes */
	__be16 ip_id;
	__u8 frag; /* enum frag_kind */
	__u8 icmp; /* enum icmp_kind */
	__u8 tcp_flags;
	__u8 ttl;
};

/* TCP flag bits as in byte 13 of the header. */
#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

static __always_inline int parse_l4(struct __sk_buff *ctx, struct pkt *p, __u32 l4_len)
{
	switch (p->t.proto) {
	case IPPROTO_TCP: {
		__u8 h[14];

		if (l4_len < sizeof(struct tcphdr) ||
		    bpf_skb_load_bytes(ctx, p->l4_off, h, sizeof(h)) < 0)
			return -DROP_MALFORMED;
		/* As tcp_v4_rcv: the header's own length must fit too. */
		if ((h[12] >> 4) < 5 || (__u32)(h[12] >> 4) * 4 > l4_len)
			return -DROP_MALFORMED;
		__builtin_memcpy(&p->t.sport, &h[0], 2);
		__builtin_memcpy(&p->t.dport, &h[2], 2);
		p->tcp_flags = h[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr u;

		if (l4_len < sizeof(u) || bpf_skb_load_bytes(ctx, p->l4_off, &u, sizeof(u)) < 0)
			return -DROP_MALFORMED;
		/* As __udp4_lib_rcv: a length shorter than the header or longer
		 * than the datagram (a first fragment's covers later ones). */
		if (bpf_ntohs(u.len) < sizeof(u) ||
		    (p->frag == FRAG_NONE && bpf_ntohs(u.len) > l4_len))
			return -DROP_MALFORMED;
		p->t.sport = u.source;
		p->t.dport = u.dest;
		return PARSE_OK;
	}
	case IPPROTO_ICMP: {
		struct icmphdr ic;

		if (l4_len < sizeof(ic) || bpf_skb_load_bytes(ctx, p->l4_off, &ic, sizeof(ic)) < 0)
			return -DROP_MALFORMED;
		switch (ic.type) {
		case ICMP_ECHO:
			p->icmp = ICMP_K_ECHO_REQ;
			p->t.sport = ic.un.echo.id;
			break;
		case ICMP_ECHOREPLY:
			p->icmp = ICMP_K_ECHO_REPLY;
			p->t.dport = ic.un.echo.id;
			break;
		case ICMP_DEST_UNREACH:
		case ICMP_TIME_EXCEEDED:
		case ICMP_PARAMETERPROB:
			p->icmp = ICMP_K_ERROR;
			break;
		default:
			p->icmp = ICMP_K_OTHER;
		}
		return PARSE_OK;
	}
	}
	return PARSE_OK;
}

/* parse fills p from the frame. Later fragments get their ports from the
 * frags4 map when their first fragment was seen; otherwise ports are 0. */
static __always_inline int parse(struct __sk_buff *ctx, struct pkt *p)
{
	struct iphdr ip;
	__u32 tot;

	p->len = ctx->len;
	if (ctx->protocol != bpf_htons(ETH_P_IP))
		return PARSE_PASS;
	if (bpf_skb_load_bytes(ctx, L3_OFF, &ip, sizeof(ip)) < 0)
		return -DROP_MALFORMED;
	if (ip.version != 4 || ip.ihl < 5)
		return -DROP_MALFORMED;
	p->ihl = ip.ihl * 4;
	tot = bpf_ntohs(ip.tot_len);
	if (tot < p->ihl || tot > ctx->len - L3_OFF)
		return -DROP_MALFORMED;

	p->t.saddr = ip.saddr;
	p->t.daddr = ip.daddr;
	p->t.proto = ip.protocol;
	p->ip_id = ip.id;
	p->ttl = ip.ttl;
	p->l4_off = L3_OFF + p->ihl;

	if (ip.frag_off & bpf_htons(IP_OFFSET)) {
		struct frag_key fk = {
			.saddr = ip.saddr, .daddr = ip.daddr, .id = ip.id, .proto = ip.protocol};
		struct frag_ports *fp;

		p->frag = FRAG_LATER;
		fp = bpf_map_lookup_elem(&frags4, &fk);
		if (fp) {
			p->t.sport = fp->sport;
			p->t.dport = fp->dport;
		}
		return PARSE_OK;
	}
	if (ip.frag_off & bpf_htons(IP_MF))
		p->frag = FRAG_FIRST;
	return parse_l4(ctx, p, tot - p->ihl);
}

/* frag_record remembers the ports of a first fragment under its tuple as
 * it arrived, for the later fragments of the same datagram. */
static __always_inline void frag_record(const struct pkt *p, const struct ct_key *orig)
{
	struct frag_key fk = {
		.saddr = orig->saddr, .daddr = orig->daddr, .id = p->ip_id, .proto = orig->proto};
	struct frag_ports fp = {.sport = orig->sport, .dport = orig->dport};

	if (p->frag != FRAG_FIRST)
		return;
	bpf_map_update_elem(&frags4, &fk, &fp, BPF_ANY);
	count_event(EV_FRAG_TRACKED);
}

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

static __always_inline __u32 l4_csum_off(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return offsetof(struct tcphdr, check);
	if (proto == IPPROTO_UDP)
		return offsetof(struct udphdr, check);
	return offsetof(struct icmphdr, checksum);
}

static __always_inline int rewrite_addr(struct __sk_buff *ctx, struct pkt *p, __u32 off,
					__be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (p->frag != FRAG_LATER && has_ports(p->t.proto)) {
		__u64 fl = BPF_F_PSEUDO_HDR | sizeof(to);

		if (p->t.proto == IPPROTO_UDP)
			fl |= BPF_F_MARK_MANGLED_0;
		if (bpf_l4_csum_replace(ctx, p->l4_off + l4_csum_off(p->t.proto), from, to, fl) < 0)
			return -DROP_REWRITE;
	}
	if (bpf_l3_csum_replace(ctx, IP_CSUM_OFF, from, to, sizeof(to)) < 0)
		return -DROP_REWRITE;
	if (bpf_skb_store_bytes(ctx, off, &to, sizeof(to), 0) < 0)
		return -DROP_REWRITE;
	return 0;
}

static __always_inline int rewrite_port(struct __sk_buff *ctx, struct pkt *p, __u32 field,
					__be16 from, __be16 to)
{
	__u64 fl = sizeof(to);

	if (from == to || p->frag == FRAG_LATER)
		return 0;
	if (p->t.proto == IPPROTO_UDP)
		fl |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(ctx, p->l4_off + l4_csum_off(p->t.proto), from, to, fl) < 0)
		return -DROP_REWRITE;
	if (bpf_skb_store_bytes(ctx, p->l4_off + field, &to, sizeof(to), 0) < 0)
		return -DROP_REWRITE;
	return 0;
}

/* rewrite turns the packet's tuple into (saddr:sport -> daddr:dport).
 * For ICMP echo the identifier is the source port of a request and the
 * destination port of a reply. Returns 0 or -DROP_REWRITE. */
static __always_inline int rewrite(struct __sk_buff *ctx, struct pkt *p, __be32 saddr, __be32 daddr,
				   __be16 sport, __be16 dport)
{
	if (rewrite_addr(ctx, p, IP_SADDR_OFF, p->t.saddr, saddr) < 0)
		return -DROP_REWRITE;
	p->t.saddr = saddr;
	if (rewrite_addr(ctx, p, IP_DADDR_OFF, p->t.daddr, daddr) < 0)
		return -DROP_REWRITE;
	p->t.daddr = daddr;

	if (has_ports(p->t.proto)) {
		if (rewrite_port(ctx, p, 0, p->t.sport, sport) < 0 ||
		    rewrite_port(ctx, p, 2, p->t.dport, dport) < 0)
			return -DROP_REWRITE;
	} else if (p->t.proto == IPPROTO_ICMP) {
		__u32 id_off = offsetof(struct icmphdr, un.echo.id);

		if (p->icmp == ICMP_K_ECHO_REQ &&
		    rewrite_port(ctx, p, id_off, p->t.sport, sport) < 0)
			return -DROP_REWRITE;
		if (p->icmp == ICMP_K_ECHO_REPLY &&
		    rewrite_port(ctx, p, id_off, p->t.dport, dport) < 0)
			return -DROP_REWRITE;
	}
	p->t.sport = sport;
	p->t.dport = dport;
	return 0;
}

/* ttl_dec decrements the TTL of a packet that is routed around the stack.
 * Returns TTL_EXPIRED when the TTL runs out: the stack must see the packet
 * to send the ICMP time-exceeded. Else 0 or -DROP_REWRITE. */
#define TTL_EXPIRED 1

static __always_inline int ttl_dec(struct __sk_buff *ctx, struct pkt *p)
{
	__u8 ttl = p->ttl;
	__u16 from, to;

	if (ttl <= 1)
		return TTL_EXPIRED;
	from = bpf_htons((__u16)ttl << 8);
	to = bpf_htons((__u16)(ttl - 1) << 8);
	if (bpf_l3_csum_replace(ctx, IP_CSUM_OFF, from, to, 2) < 0)
		return -DROP_REWRITE;
	ttl--;
	if (bpf_skb_store_bytes(ctx, IP_TTL_OFF, &ttl, 1, 0) < 0)
		return -DROP_REWRITE;
	p->ttl = ttl;
	return 0;
}
