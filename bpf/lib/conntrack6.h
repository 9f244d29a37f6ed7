/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking of translated IPv6 flows in ct6: conntrack.h's
 * design (two entries a flow, each keyed by the tuple a packet has at
 * the hook that translates it; expired entries ignored here and deleted
 * by the Go garbage collector; a lost half restored from the other), with
 * IPv6 tuples. A new published-port flow from the outside starts in
 * ct6_syn, ct4_syn's twin, and moves to ct6 once its client answers the
 * container (ct_assured), so a SYN flood over IPv6 never pushes an
 * established flow out of ct6. */
#pragma once

#include "common.h"
#include "config.h"
#include "conntrack.h"
#include "maps6.h"

/* Unassured IPv6 flows: ct4_syn's twin (maps.h), sized like it by the
 * loader. Lookups reach it only on a ct6 miss at the uplink's hooks. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct6_key);
	__type(value, struct ct6_entry);
	__uint(max_entries, 32768);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct6_syn SEC(".maps");

static __always_inline __u64 ct6_lifetime(__u8 proto, __u8 seen)
{
	return ct_lifetime(proto == IPPROTO_ICMPV6 ? IPPROTO_ICMP : proto, seen);
}

static __always_inline __u64 ct6_unassured_lifetime(__u8 proto, __u8 seen)
{
	return ct_unassured_lifetime(proto == IPPROTO_ICMPV6 ? IPPROTO_ICMP : proto, seen);
}

static __always_inline void ct6_peer_key(const struct ct6_entry *e, __u8 proto, struct ct6_key *k)
{
	ip6_copy(k->saddr, e->ndaddr);
	ip6_copy(k->daddr, e->nsaddr);
	k->sport = e->ndport;
	k->dport = e->nsport;
	k->proto = proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

static __always_inline void ct6_peer_entry(const struct ct6_key *k, const struct ct6_entry *e,
					   struct ct6_entry *pe)
{
	__builtin_memset(pe, 0, sizeof(*pe));
	ip6_copy(pe->nsaddr, k->daddr);
	ip6_copy(pe->ndaddr, k->saddr);
	pe->nsport = k->dport;
	pe->ndport = k->sport;
	pe->flags = e->peer_flags;
	pe->peer_flags = e->flags;
	pe->kind = e->kind;
	pe->ifindex = e->ifindex;
}

static __always_inline int ct6_key_eq(const struct ct6_key *a, const struct ct6_key *b)
{
	return ip6_eq(a->saddr, b->saddr) && ip6_eq(a->daddr, b->daddr) && a->sport == b->sport &&
	       a->dport == b->dport;
}

/* ct6_lookup returns the live entry for k that hook `at` applies: the one
 * in ct6, else, at the uplink's hooks, the one in ct6_syn (ct_lookup). */
static __always_inline struct ct6_entry *ct6_lookup(const struct ct6_key *k, __u8 at, __u64 now)
{
	struct ct6_entry *e = bpf_map_lookup_elem(&ct6, k);

	if (e && e->expires < now)
		e = 0;
	if (!e && (at & CT_AT_UNASSURED)) {
		e = bpf_map_lookup_elem(&ct6_syn, k);
		if (e && e->expires < now)
			e = 0;
	}
	if (!e || !(e->flags & at))
		return 0;
	return e;
}

/* ct6_delete_pair deletes both halves of the flow of e at k, from the
 * table that holds them. */
static __always_inline void ct6_delete_pair(const struct ct6_key *k, const struct ct6_entry *e)
{
	void *table = (e->flags & CT_UNASSURED) ? (void *)&ct6_syn : (void *)&ct6;
	struct ct6_key pk;

	ct6_peer_key(e, k->proto, &pk);
	bpf_map_delete_elem(table, &pk);
	bpf_map_delete_elem(table, k);
}

/* ct6_lookup_flow is ct6_lookup that forgets a closed TCP flow whose tuple
 * a new SYN opens again (conntrack.h, ct_unless_reopened). */
static __always_inline struct ct6_entry *ct6_lookup_flow(const struct pkt6 *p, __u8 at, __u64 now)
{
	struct ct6_entry *e = ct6_lookup(&p->t, at, now);

	if (e && p->t.proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN &&
	    (e->tcp_seen & (TCPF_FIN | TCPF_RST))) {
		ct6_delete_pair(&p->t, e);
		return 0;
	}
	return e;
}

/* ct6_promote is ct_promote for IPv6: an assured flow, e at k and its peer
 * pe at pk, moves from ct6_syn into ct6; the ct6_syn entries go last, so a
 * failure leaves the flow where it was. pe is the caller's copy, and
 * rewritten here: one copy of an entry fewer than ct_promote's keeps the
 * IPv6 program within its stack. */
static __always_inline void ct6_promote(const struct ct6_key *k, const struct ct6_entry *e,
					const struct ct6_key *pk, struct ct6_entry *pe, __u64 now)
{
	struct ct6_entry ne = *e;

	ne.flags &= ~CT_UNASSURED;
	ne.peer_flags &= ~CT_UNASSURED;
	ne.expires = now + ct6_lifetime(k->proto, ne.tcp_seen);
	pe->flags &= ~CT_UNASSURED;
	pe->peer_flags &= ~CT_UNASSURED;
	pe->expires = now + ct6_lifetime(k->proto, pe->tcp_seen);
	if (ct_insert(&ct6, k, &ne, pk, pe) < 0)
		return;
	bpf_map_delete_elem(&ct6_syn, pk);
	bpf_map_delete_elem(&ct6_syn, k);
	count_event(EV_CT_PROMOTED);
}

/* ct6_touch_unassured is ct_touch_unassured for an entry of ct6_syn: a
 * short life, the other half checked on every packet and restored in
 * ct6_syn if it was evicted, and, when promote is set (the client's
 * packets, at from_netdev), the move to ct6 once the client's packet shows
 * the flow assured. After a move, e is gone. promote is a constant of the
 * caller's, so that to_netdev6, where only the reply half of an
 * unassured flow is found, carries no promotion (its stack has no room for
 * one). */
static __always_inline void ct6_touch_unassured(const struct ct6_key *k, struct ct6_entry *e,
						const struct pkt6 *p, __u64 now, int promote)
{
	struct ct6_key pk, back;
	struct ct6_entry pe, *cur;

	e->expires = now + ct6_unassured_lifetime(p->t.proto, e->tcp_seen);
	ct6_peer_key(e, k->proto, &pk);
	cur = bpf_map_lookup_elem(&ct6_syn, &pk);
	if (cur) {
		ct6_peer_key(cur, k->proto, &back);
		if (ct6_key_eq(&back, k)) {
			if (promote && !(e->flags & CT_REPLY) &&
			    ct_assured_by(p->t.proto, p->tcp_flags, cur->tcp_seen, cur->packets)) {
				pe = *cur;
				ct6_promote(k, e, &pk, &pe, now);
			}
			return;
		}
		bpf_map_delete_elem(&ct6_syn, &back);
	}
	ct6_peer_entry(k, e, &pe);
	pe.expires = now + ct6_unassured_lifetime(k->proto, 0);
	if (bpf_map_update_elem(&ct6_syn, &pk, &pe, BPF_ANY) == 0)
		count_event(EV_CT_PEER_RESTORED);
}

/* ct6_create installs both halves of a flow: e at k and its peer. Returns
 * 0 or -DROP_CT_FULL. */
static __always_inline int ct6_create(const struct ct6_key *k, struct ct6_entry *e, __u64 now)
{
	struct ct6_key pk;
	struct ct6_entry pe;

	e->expires = now + ct6_lifetime(k->proto, 0);
	ct6_peer_key(e, k->proto, &pk);
	ct6_peer_entry(k, e, &pe);
	pe.expires = e->expires;
	return ct_insert(&ct6, k, e, &pk, &pe);
}

/* ct6_create_unassured is ct_create_unassured for IPv6: both halves of a
 * new published-port flow, e at k and its peer, in ct6_syn. Returns 0 or
 * -DROP_CT_FULL. */
static __always_inline int ct6_create_unassured(const struct ct6_key *k, struct ct6_entry *e,
						__u64 now)
{
	struct ct6_key pk;
	struct ct6_entry pe;
	int r;

	e->flags |= CT_UNASSURED;
	e->peer_flags |= CT_UNASSURED;
	e->expires = now + ct6_unassured_lifetime(k->proto, 0);
	ct6_peer_key(e, k->proto, &pk);
	ct6_peer_entry(k, e, &pe);
	pe.expires = e->expires;
	r = ct_insert(&ct6_syn, k, e, &pk, &pe);
	if (r < 0)
		return r;
	count_event(EV_CT_HALF_OPEN);
	return 0;
}

/* ct6_touch_as accounts a packet to its entry, extends its life, and
 * checks the other half as ct_touch does (CT_PEER_CHECK_FIRST), restoring
 * it if it was evicted or taken; an entry of ct6_syn goes to
 * ct6_touch_unassured (see promote there). */
static __always_inline void ct6_touch_as(const struct ct6_key *k, struct ct6_entry *e,
					 const struct pkt6 *p, __u64 now, int promote)
{
	struct ct6_key pk, back;
	struct ct6_entry pe, *cur;
	__u64 seen = e->packets;
	__u8 flags = e->tcp_seen;

	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);
	if (p->t.proto == IPPROTO_TCP)
		e->tcp_seen |= p->tcp_flags;
	if (e->flags & CT_UNASSURED) {
		ct6_touch_unassured(k, e, p, now, promote);
		return;
	}
	e->expires = now + ct6_lifetime(p->t.proto, e->tcp_seen);
	if (seen >= CT_PEER_CHECK_FIRST && e->tcp_seen == flags && seen % CT_PEER_CHECK_EVERY)
		return;
	ct6_peer_key(e, k->proto, &pk);
	cur = bpf_map_lookup_elem(&ct6, &pk);
	if (cur) {
		ct6_peer_key(cur, k->proto, &back);
		if (ct6_key_eq(&back, k))
			return;
		bpf_map_delete_elem(&ct6, &back);
	}
	ct6_peer_entry(k, e, &pe);
	pe.expires = now + ct6_lifetime(k->proto, 0);
	if (bpf_map_update_elem(&ct6, &pk, &pe, BPF_ANY) == 0)
		count_event(EV_CT_PEER_RESTORED);
}

/* ct6_touch is ct6_touch_as for a packet that never assures a flow: any
 * but a client's at from_netdev. */
static __always_inline void ct6_touch(const struct ct6_key *k, struct ct6_entry *e,
				      const struct pkt6 *p, __u64 now)
{
	ct6_touch_as(k, e, p, now, 0);
}

/* ct6_touch_client is ct6_touch_as for a packet from the outside at
 * from_netdev: the client's packet that may assure an unassured flow and
 * move it to ct6, after which e is gone. */
static __always_inline void ct6_touch_client(const struct ct6_key *k, struct ct6_entry *e,
					     const struct pkt6 *p, __u64 now)
{
	ct6_touch_as(k, e, p, now, 1);
}

/* ct6_claim reserves reply key rk unless a live flow holds it. */
static __always_inline int ct6_claim(const struct ct6_key *rk, const struct ct6_entry *re, __u64 now)
{
	struct ct6_entry *old = bpf_map_lookup_elem(&ct6, rk);

	if (old && old->expires >= now)
		return -DROP_NAT_EXHAUSTED;
	if (bpf_map_update_elem(&ct6, rk, re, old ? BPF_EXIST : BPF_NOEXIST) < 0)
		return -DROP_NAT_EXHAUSTED;
	return 0;
}

/* nat6_host_socket is nat_host_socket (conntrack.h) for an IPv6 reply
 * tuple: a host socket that would receive its packets makes the port
 * taken. */
static __always_inline int nat6_host_socket(struct __sk_buff *ctx, const struct ct6_key *rk)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk;
	int used = 1;

	__builtin_memcpy(tup.ipv6.saddr, rk->saddr, 16);
	__builtin_memcpy(tup.ipv6.daddr, rk->daddr, 16);
	tup.ipv6.sport = rk->sport;
	tup.ipv6.dport = rk->dport;
	if (rk->proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(ctx, &tup, sizeof(tup.ipv6), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		used = sk->state != BPF_TCP_LISTEN;
	} else if (rk->proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(ctx, &tup, sizeof(tup.ipv6), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
	} else {
		return 0;
	}
	bpf_sk_release(sk);
	return used;
}

/* nat6_try claims rk for a new flow if its host port is free: not a
 * published IPv6 port of rk->daddr or of every address, not a host
 * socket's, not another live flow's. */
static __always_inline int nat6_try(struct __sk_buff *ctx, struct ct6_key *rk,
				    const struct ct6_entry *re, __u64 now)
{
	if (has_ports(rk->proto)) {
		struct port6_key pk = {.port = rk->dport, .proto = rk->proto};

		ip6_copy(pk.addr, rk->daddr);
		if (bpf_map_lookup_elem(&published6, &pk))
			return -DROP_NAT_EXHAUSTED;
		__builtin_memset(pk.addr, 0, sizeof(pk.addr));
		if (bpf_map_lookup_elem(&published6, &pk))
			return -DROP_NAT_EXHAUSTED;
	}
	if (nat6_host_socket(ctx, rk)) {
		count_event(EV_NAT_HOST_SOCKET);
		return -DROP_NAT_EXHAUSTED;
	}
	return ct6_claim(rk, re, now);
}

/* nat6_alloc is nat_alloc (conntrack.h) for IPv6: the flow's own port when
 * free, else NAT_TRIES ports of the range; never a tuple in use. */
static __always_inline int nat6_alloc(struct __sk_buff *ctx, struct ct6_key *rk,
				      struct ct6_entry *re, __be16 own, __u64 now)
{
	__u32 min = CONFIG.nat_port_min, max = CONFIG.nat_port_max;
	__u32 range, start;

	re->expires = now + ct6_lifetime(rk->proto, 0);
	rk->dport = own;
	if (own && nat6_try(ctx, rk, re, now) == 0)
		return 0;
	if (max < min)
		return -DROP_NAT_EXHAUSTED;
	range = max - min + 1;
	start = bpf_get_prandom_u32();
	for (__u32 i = 0; i < NAT_TRIES && i < range; i++) {
		__u32 off = range > NAT_TRIES ? bpf_get_prandom_u32() : start + i;
		__u32 port = min + off % range;

		rk->dport = bpf_htons((__u16)port);
		if (nat6_try(ctx, rk, re, now) == 0)
			return 0;
	}
	return -DROP_NAT_EXHAUSTED;
}

/* ct6_create_nat is ct_create_nat for IPv6. */
static __always_inline int ct6_create_nat(struct __sk_buff *ctx, const struct ct6_key *k,
					  struct ct6_entry *e, __be16 own, __u64 now)
{
	struct ct6_key rk;
	struct ct6_entry re;
	int r;

	ct6_peer_key(e, k->proto, &rk);
	ct6_peer_entry(k, e, &re);
	r = nat6_alloc(ctx, &rk, &re, own, now);
	if (r < 0)
		return r;
	e->nsport = rk.dport;
	e->expires = re.expires;
	if (bpf_map_update_elem(&ct6, k, e, BPF_ANY) < 0) {
		bpf_map_delete_elem(&ct6, &rk);
		return -DROP_CT_FULL;
	}
	return 0;
}
