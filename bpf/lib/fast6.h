/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The IPv6 fast path: deliver and forward_out (datapath.c) for IPv6.
 * A packet from the uplink to a container (a published port's, a flow's
 * answer, what the gateway mode lets in) goes straight into the
 * container's namespace with bpf_redirect_peer; a packet of a container
 * that leaves through an uplink goes straight to it with
 * bpf_redirect_neigh, where to_netdev still translates it. Either way the
 * hop limit is decremented and, into a container, the MACs rewritten, as
 * the stack would route it.
 *
 * Only plain packets take it: no extension header (a hop-by-hop header is
 * the stack's to act on), not a fragment, not an ICMPv6 error, a hop limit
 * left to spend (else the stack sends Time Exceeded) and, out of an
 * uplink, within its MTU (else the stack sends Packet Too Big). Traffic
 * between containers stays on the bridge: to_container6 judges it. */
#pragma once

#include "common.h"
#include "config.h"
#include "maps.h"
#include "maps6.h"
#include "ipv6.h"

#ifndef AF_INET6
#define AF_INET6 10
#endif

/* fast6_plain: whether p may take the fast path. */
static __always_inline int fast6_plain(const struct pkt6 *p)
{
	return p->l4_off == L3_OFF + sizeof(struct ipv6hdr) && p->frag == FRAG_NONE &&
	       p->icmp != ICMP_K_ERROR && p->hlim > 1;
}

/* hlim_dec decrements the hop limit of a packet routed around the stack
 * (ttl_dec for IPv6: no header checksum covers it). 0 or -DROP_REWRITE. */
static __always_inline int hlim_dec(struct __sk_buff *ctx, struct pkt6 *p)
{
	__u8 hlim = p->hlim - 1;

	if (bpf_skb_store_bytes(ctx, IP6_HLIM_OFF, &hlim, 1, 0) < 0)
		return -DROP_REWRITE;
	p->hlim = hlim;
	return 0;
}

/* deliver6 hands a packet from an uplink to the container whose address
 * it now bears, when the fast path is on and the container is known. A
 * TC action or a negative drop reason. */
static __always_inline int deliver6(struct __sk_buff *ctx, struct pkt6 *p)
{
	struct endpoint6 *ep;
	int r;

	if (!CONFIG.fast_path || !fast6_plain(p))
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&endpoints6, p->t.daddr);
	if (!ep)
		return TC_ACT_OK;
	r = hlim_dec(ctx, p);
	if (r < 0)
		return r;
	/* Destination and source MAC in one write (deliver's assertion
	 * keeps them adjacent). */
	if (bpf_skb_store_bytes(ctx, 0, ep->ep.mac, 2 * ETH_ALEN, 0) < 0)
		return -DROP_REWRITE;
	/* to_container, which counts what the container receives, is
	 * passed by: count here. */
	count_if(ep->ep.ifindex, p->len, 1);
	count_event(EV_REDIRECT_PEER);
	return bpf_redirect_peer(ep->ep.ifindex, 0);
}

/* forward_out6 sends a packet of a container that leaves through an
 * uplink straight to it, when the route says so and it fits. */
static __always_inline int forward_out6(struct __sk_buff *ctx, struct pkt6 *p, __u32 in_ifindex)
{
	struct bpf_fib_lookup fib = {};
	__u32 mtu = 0;
	long r;

	if (!CONFIG.fast_path || !fast6_plain(p))
		return TC_ACT_OK;
	fib.family = AF_INET6;
	fib.l4_protocol = p->t.proto;
	fib.sport = p->t.sport;
	fib.dport = p->t.dport;
	fib.tot_len = p->len - L3_OFF;
	ip6_copy((__be32 *)fib.ipv6_src, p->t.saddr);
	ip6_copy((__be32 *)fib.ipv6_dst, p->t.daddr);
	fib.ifindex = in_ifindex;

	r = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (r != BPF_FIB_LKUP_RET_SUCCESS && r != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&uplinks, &fib.ifindex))
		return TC_ACT_OK;
	if (bpf_check_mtu(ctx, fib.ifindex, &mtu, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;
	r = hlim_dec(ctx, p);
	if (r < 0)
		return r;
	count_event(EV_REDIRECT_NEIGH);
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}
