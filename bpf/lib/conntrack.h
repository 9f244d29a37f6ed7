/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking of translated flows. A flow has two entries in ct4,
 * one per direction, each keyed by the tuple a packet has when it reaches
 * the hook that translates it, and each holding the tuple to write. The
 * entries know each other: the peer's key is the reverse of an entry's
 * rewritten tuple. Expired entries are ignored here and deleted by the Go
 * garbage collector; a full table evicts the least recently used entries,
 * and a flow that lost one half gets it back from the other. */
#pragma once

#include "common.h"
#include "config.h"
#include "maps.h"
#include "packet.h"

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 seen)
{
	if (proto == IPPROTO_TCP) {
		if (seen & (TCPF_RST | TCPF_FIN))
			return CONFIG.tcp_close_timeout;
		if ((seen & TCPF_SYN) && !(seen & TCPF_ACK))
			return CONFIG.tcp_syn_timeout;
		return CONFIG.tcp_est_timeout;
	}
	if (proto == IPPROTO_ICMP)
		return CONFIG.icmp_timeout;
	return CONFIG.udp_timeout;
}

/* ct_unassured_lifetime is the life of an entry of ct4_syn: short, and never
 * longer than the flow would have in ct4. */
static __always_inline __u64 ct_unassured_lifetime(__u8 proto, __u8 seen)
{
	__u64 l = ct_lifetime(proto, seen);

	return l < CONFIG.half_open_timeout ? l : CONFIG.half_open_timeout;
}

static __always_inline void ct_peer_key(const struct ct_entry *e, __u8 proto, struct ct_key *k)
{
	k->saddr = e->ndaddr;
	k->daddr = e->nsaddr;
	k->sport = e->ndport;
	k->dport = e->nsport;
	k->proto = proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

/* ct_peer_entry builds the entry of the other direction of the flow whose
 * entry e sits at key k, all but its expiry, which the caller sets. */
static __always_inline void ct_peer_entry(const struct ct_key *k, const struct ct_entry *e,
					  struct ct_entry *pe)
{
	__builtin_memset(pe, 0, sizeof(*pe));
	pe->nsaddr = k->daddr;
	pe->ndaddr = k->saddr;
	pe->nsport = k->dport;
	pe->ndport = k->sport;
	pe->flags = e->peer_flags;
	pe->peer_flags = e->flags;
	pe->kind = e->kind;
	pe->ifindex = e->ifindex;
}

/* ct_lookup_live returns the live entry for k, whichever hook applies it. */
static __always_inline struct ct_entry *ct_lookup_live(const struct ct_key *k, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&ct4, k);

	if (!e || e->expires < now)
		return 0;
	return e;
}

/* CT_AT_UNASSURED: the hooks that apply the entries of ct4_syn, which holds
 * only flows from the outside: published ports' and, on routed and
 * nat-unprotected networks, those straight to a container (gwmode.h). */
#define CT_AT_UNASSURED (CT_AT_FROM_NETDEV | CT_AT_TO_NETDEV)

/* ct_lookup returns the live entry for k that hook `at` applies: the one
 * in ct4, else, at the uplink's hooks, the one in ct4_syn. An established
 * flow is found by the first lookup and never pays for the second. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k, __u8 at, __u64 now)
{
	struct ct_entry *e = ct_lookup_live(k, now);

	if (!e && (at & CT_AT_UNASSURED)) {
		e = bpf_map_lookup_elem(&ct4_syn, k);
		if (e && e->expires < now)
			e = 0;
	}
	if (!e || !(e->flags & at))
		return 0;
	return e;
}

static __always_inline void ct_delete_pair(const struct ct_key *k, const struct ct_entry *e)
{
	struct ct_key pk;

	ct_peer_key(e, k->proto, &pk);
	if (e->flags & CT_UNASSURED) {
		bpf_map_delete_elem(&ct4_syn, &pk);
		bpf_map_delete_elem(&ct4_syn, k);
		return;
	}
	bpf_map_delete_elem(&ct4, &pk);
	bpf_map_delete_elem(&ct4, k);
}

/* ct_insert writes both halves of a flow into one table, e at k and pe at
 * pk: both or neither. Returns 0 or -DROP_CT_FULL. The keys and entries are
 * those of the table's family (ct_key and ct_entry, or their IPv6 twins:
 * conntrack6.h uses it too). */
static __always_inline int ct_insert(void *table, const void *k, const void *e, const void *pk,
				     const void *pe)
{
	if (bpf_map_update_elem(table, pk, pe, BPF_ANY) < 0)
		return -DROP_CT_FULL;
	if (bpf_map_update_elem(table, k, e, BPF_ANY) < 0) {
		bpf_map_delete_elem(table, pk);
		return -DROP_CT_FULL;
	}
	return 0;
}

/* ct_reopened tells whether a TCP SYN opens a new connection on the tuple
 * of a closed one: the old entries must go. */
static __always_inline int ct_reopened(const struct ct_entry *e, const struct pkt *p)
{
	return p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN &&
	       (e->tcp_seen & (TCPF_FIN | TCPF_RST));
}

/* ct_unless_reopened returns e, the entry of the packet's flow, or 0 after
 * dropping the flow's entries when a TCP SYN opens a new connection on the
 * tuple of a closed one, so the connection starts afresh. */
static __always_inline struct ct_entry *ct_unless_reopened(const struct pkt *p, struct ct_entry *e)
{
	if (e && ct_reopened(e, p)) {
		ct_delete_pair(&p->t, e);
		return 0;
	}
	return e;
}

/* ct_lookup_flow returns the live entry of the packet's flow that hook
 * `at` applies (see ct_unless_reopened). */
static __always_inline struct ct_entry *ct_lookup_flow(const struct pkt *p, __u8 at, __u64 now)
{
	return ct_unless_reopened(p, ct_lookup(&p->t, at, now));
}

/* ct_assured tells whether p, a client's packet of an unassured flow whose
 * reply half is re, shows a client that answers: TCP, an ACK without SYN
 * after the container accepted (its SYN|ACK, or its ACK to a segment of a
 * connection whose entries were lost) and did not reset; UDP, any datagram
 * after the container answered. A flood from forged sources never answers
 * the container, so its flows never leave ct4_syn. A UDP flow that only
 * ever goes one way stays unassured: it is made again from its next packet
 * if it is evicted, and loses nothing, as a published port's translation
 * is fixed. */
static __always_inline int ct_assured_by(__u8 proto, __u8 tcp_flags, __u8 re_seen, __u64 re_packets)
{
	if (proto == IPPROTO_TCP)
		return (tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)) == TCPF_ACK &&
		       (re_seen & TCPF_ACK) && !(re_seen & TCPF_RST);
	return re_packets > 0;
}

static __always_inline int ct_assured(const struct pkt *p, const struct ct_entry *re)
{
	return ct_assured_by(p->t.proto, p->tcp_flags, re->tcp_seen, re->packets);
}

/* ct_promote moves an assured flow, e at k and its peer pe at pk, from
 * ct4_syn into ct4. The ct4_syn entries are deleted last, so a failure
 * leaves the flow where it was. */
static __always_inline void ct_promote(const struct ct_key *k, const struct ct_entry *e,
				       const struct ct_key *pk, const struct ct_entry *pe,
				       __u64 now)
{
	struct ct_entry ne = *e, npe = *pe;

	ne.flags &= ~CT_UNASSURED;
	ne.peer_flags &= ~CT_UNASSURED;
	ne.expires = now + ct_lifetime(k->proto, ne.tcp_seen);
	npe.flags &= ~CT_UNASSURED;
	npe.peer_flags &= ~CT_UNASSURED;
	npe.expires = now + ct_lifetime(k->proto, npe.tcp_seen);
	if (ct_insert(&ct4, k, &ne, pk, &npe) < 0)
		return;
	bpf_map_delete_elem(&ct4_syn, pk);
	bpf_map_delete_elem(&ct4_syn, k);
	count_event(EV_CT_PROMOTED);
}

/* ct_touch_unassured is ct_touch for an entry of ct4_syn (its counters are
 * already updated): a short life, the other half checked on every packet
 * (an unassured flow has few) and restored in ct4_syn if it was evicted,
 * and the move to ct4 once the client's packet shows the flow assured.
 * After a move, e is gone: the caller must be done with it. */
static __always_inline void ct_touch_unassured(const struct ct_key *k, struct ct_entry *e,
					       const struct pkt *p, __u64 now)
{
	struct ct_key pk, back;
	struct ct_entry pe, *cur;

	e->expires = now + ct_unassured_lifetime(p->t.proto, e->tcp_seen);
	ct_peer_key(e, k->proto, &pk);
	cur = bpf_map_lookup_elem(&ct4_syn, &pk);
	if (cur) {
		ct_peer_key(cur, k->proto, &back);
		if (back.saddr == k->saddr && back.daddr == k->daddr && back.sport == k->sport &&
		    back.dport == k->dport) {
			if (!(e->flags & CT_REPLY) && ct_assured(p, cur)) {
				pe = *cur;
				ct_promote(k, e, &pk, &pe, now);
			}
			return;
		}
		bpf_map_delete_elem(&ct4_syn, &back);
	}
	ct_peer_entry(k, e, &pe);
	pe.expires = now + ct_unassured_lifetime(k->proto, 0);
	if (bpf_map_update_elem(&ct4_syn, &pk, &pe, BPF_ANY) == 0)
		count_event(EV_CT_PEER_RESTORED);
}

/* A flow's other half is checked on its first CT_PEER_CHECK_FIRST packets in
 * each direction, whenever the TCP flags it has seen change, and on every
 * CT_PEER_CHECK_EVERY-th packet after: often enough that an evicted half of
 * a busy flow comes back within a few packets, rarely enough that an
 * established flow does not read, on every packet, the entry that the other
 * direction writes on another CPU. */
#define CT_PEER_CHECK_FIRST 8
#define CT_PEER_CHECK_EVERY 64

/* ct_touch accounts a packet to its entry and extends the entry's life.
 * It also looks the other half of the flow up (see CT_PEER_CHECK_FIRST),
 * which keeps both halves recently used in the LRU, and restores that half
 * if it was evicted, or if another flow's entry took its key meanwhile (a
 * container's answer that missed its entry and started a flow of its
 * own). */
static __always_inline void ct_touch(const struct ct_key *k, struct ct_entry *e,
				     const struct pkt *p, __u64 now)
{
	struct ct_key pk, back;
	struct ct_entry pe, *cur;
	__u64 seen = e->packets;
	__u8 flags = e->tcp_seen;

	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);
	if (p->t.proto == IPPROTO_TCP)
		e->tcp_seen |= p->tcp_flags;
	if (e->flags & CT_UNASSURED) {
		ct_touch_unassured(k, e, p, now);
		return;
	}
	e->expires = now + ct_lifetime(p->t.proto, e->tcp_seen);

	if (seen >= CT_PEER_CHECK_FIRST && e->tcp_seen == flags && seen % CT_PEER_CHECK_EVERY)
		return;
	ct_peer_key(e, k->proto, &pk);
	cur = bpf_map_lookup_elem(&ct4, &pk);
	if (cur) {
		ct_peer_key(cur, k->proto, &back);
		if (back.saddr == k->saddr && back.daddr == k->daddr && back.sport == k->sport &&
		    back.dport == k->dport)
			return;
		/* A foreign entry: its own other half goes with it. */
		bpf_map_delete_elem(&ct4, &back);
	}
	ct_peer_entry(k, e, &pe);
	pe.expires = now + ct_lifetime(k->proto, 0);
	if (bpf_map_update_elem(&ct4, &pk, &pe, BPF_ANY) == 0)
		count_event(EV_CT_PEER_RESTORED);
}

/* ct_create installs both halves of a flow: e at k and its peer. Returns 0
 * or -DROP_CT_FULL. */
static __always_inline int ct_create(const struct ct_key *k, struct ct_entry *e, __u64 now)
{
	struct ct_key pk;
	struct ct_entry pe;

	e->expires = now + ct_lifetime(k->proto, 0);
	ct_peer_key(e, k->proto, &pk);
	ct_peer_entry(k, e, &pe);
	pe.expires = e->expires;
	return ct_insert(&ct4, k, e, &pk, &pe);
}

/* ct_create_unassured installs both halves of a new published-port flow,
 * e at k and its peer, in ct4_syn (see ct_assured). Returns 0 or
 * -DROP_CT_FULL. */
static __always_inline int ct_create_unassured(const struct ct_key *k, struct ct_entry *e,
					       __u64 now)
{
	struct ct_key pk;
	struct ct_entry pe;
	int r;

	e->flags |= CT_UNASSURED;
	e->peer_flags |= CT_UNASSURED;
	e->expires = now + ct_unassured_lifetime(k->proto, 0);
	ct_peer_key(e, k->proto, &pk);
	ct_peer_entry(k, e, &pe);
	pe.expires = e->expires;
	r = ct_insert(&ct4_syn, k, e, &pk, &pe);
	if (r < 0)
		return r;
	count_event(EV_CT_HALF_OPEN);
	return 0;
}

/* ct_claim reserves the reply-direction key rk for a new translated flow,
 * unless a live flow holds it. Returns 0 or -DROP_NAT_EXHAUSTED. */
static __always_inline int ct_claim(const struct ct_key *rk, const struct ct_entry *re, __u64 now)
{
	struct ct_entry *old = bpf_map_lookup_elem(&ct4, rk);

	if (old && old->expires >= now)
		return -DROP_NAT_EXHAUSTED;
	if (bpf_map_update_elem(&ct4, rk, re, old ? BPF_EXIST : BPF_NOEXIST) < 0)
		return -DROP_NAT_EXHAUSTED;
	return 0;
}

#define NAT_TRIES 32

/* nat_host_socket tells whether a socket of the host would receive the
 * packets of reply tuple rk (rk->saddr:sport is the remote end,
 * rk->daddr:dport the host's), looked up in the namespace of the device the
 * packet is on. A TCP listener is no collision: it only takes new
 * connections, and an answer to a translated flow is never one; an
 * established, request or time-wait socket is. For UDP the socket that a
 * datagram of rk would reach, connected or only bound, is one.
 *
 * ICMP echo identifiers are not looked up: no helper finds the kernel's
 * ping sockets (nor raw sockets, which see every echo reply anyway). A
 * container's echo may so take the identifier of a host ping that started
 * first: the answer on its way to the host then goes to the container, but
 * the host ping's next request finds the identifier held and gets one of
 * its own (host_flow_collides in to_netdev), so the host loses an answer,
 * not the flow. A host ping that starts after is always remapped. */
static __always_inline int nat_host_socket(struct __sk_buff *ctx, const struct ct_key *rk)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk;
	int used = 1;

	tup.ipv4.saddr = rk->saddr;
	tup.ipv4.daddr = rk->daddr;
	tup.ipv4.sport = rk->sport;
	tup.ipv4.dport = rk->dport;
	if (rk->proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(ctx, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		used = sk->state != BPF_TCP_LISTEN;
	} else if (rk->proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(ctx, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
	} else {
		return 0;
	}
	bpf_sk_release(sk);
	return used;
}

/* nat_try claims reply key rk for a new translated flow (entry re) if its
 * host port rk->dport is free: not a published port of the host address
 * rk->daddr (or of every address), not a host socket's, not another live
 * flow's. Returns 0 or -DROP_NAT_EXHAUSTED. */
static __always_inline int nat_try(struct __sk_buff *ctx, struct ct_key *rk,
				   const struct ct_entry *re, __u64 now)
{
	if (has_ports(rk->proto)) {
		struct port_key pk = {.addr = rk->daddr, .port = rk->dport, .proto = rk->proto};

		if (bpf_map_lookup_elem(&published, &pk))
			return -DROP_NAT_EXHAUSTED;
		pk.addr = 0;
		if (bpf_map_lookup_elem(&published, &pk))
			return -DROP_NAT_EXHAUSTED;
	}
	if (nat_host_socket(ctx, rk)) {
		count_event(EV_NAT_HOST_SOCKET);
		return -DROP_NAT_EXHAUSTED;
	}
	return ct_claim(rk, re, now);
}

/* nat_alloc picks the translated port for a flow whose reply key is rk
 * (rk->dport is the port to choose) and claims rk with entry re. The
 * flow's own port is kept when free (own 0: never); otherwise up to
 * NAT_TRIES ports of the configured range are tried. A range no bigger
 * than that is scanned whole from a random place. In a bigger one each
 * try draws its port at random: ports in use come in runs (the host's
 * ephemeral ports, containers' own ports kept, blocks of published ports),
 * and a scan that starts inside a run of NAT_TRIES ports fails although
 * the range is nearly free. Returns -DROP_NAT_EXHAUSTED when no port was
 * free: the flow must be dropped, never given a tuple in use. */
static __always_inline int nat_alloc(struct __sk_buff *ctx, struct ct_key *rk, struct ct_entry *re,
				     __be16 own, __u64 now)
{
	__u32 min = CONFIG.nat_port_min, max = CONFIG.nat_port_max;
	__u32 range, start;

	re->expires = now + ct_lifetime(rk->proto, 0);
	rk->dport = own;
	if (own && nat_try(ctx, rk, re, now) == 0)
		return 0;
	if (max < min)
		return -DROP_NAT_EXHAUSTED;
	range = max - min + 1;
	start = bpf_get_prandom_u32();
	for (__u32 i = 0; i < NAT_TRIES && i < range; i++) {
		__u32 off = range > NAT_TRIES ? bpf_get_prandom_u32() : start + i;
		__u32 port = min + off % range;

		rk->dport = bpf_htons((__u16)port);
		if (nat_try(ctx, rk, re, now) == 0)
			return 0;
	}
	return -DROP_NAT_EXHAUSTED;
}

/* ct_create_nat installs both halves of a new translated flow whose new
 * source port is still to be chosen: e, at the flow's key k, translates to
 * e->nsaddr and e->ndaddr:e->ndport. nat_alloc picks the port (own first,
 * unless 0) whose reply tuple is free and claims the reply entry there;
 * then e is written with that port. Returns 0, -DROP_NAT_EXHAUSTED or
 * -DROP_CT_FULL. */
static __always_inline int ct_create_nat(struct __sk_buff *ctx, const struct ct_key *k,
					 struct ct_entry *e, __be16 own, __u64 now)
{
	struct ct_key rk;
	struct ct_entry re;
	int r;

	ct_peer_key(e, k->proto, &rk);
	ct_peer_entry(k, e, &re);
	r = nat_alloc(ctx, &rk, &re, own, now);
	if (r < 0)
		return r;
	e->nsport = rk.dport;
	e->expires = re.expires;
	if (bpf_map_update_elem(&ct4, k, e, BPF_ANY) < 0) {
		bpf_map_delete_elem(&ct4, &rk);
		return -DROP_CT_FULL;
	}
	return 0;
}
