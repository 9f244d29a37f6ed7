// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The bpfnet datapath: TC programs that do what Docker's bridge networking
 * asks of iptables (published ports, masquerade, hairpin, the isolation of
 * networks) with connection tracking in BPF maps, and count traffic per
 * container.
 *
 * Hooks, named from the container's side:
 *   from_netdev     uplink ingress: DNAT of published ports, reverse SNAT
 *   to_netdev       uplink egress: masquerade (SNAT), reverse DNAT, a
 *                   port of its own for a host flow that clashes with a
 *                   translation
 *   from_container  host veth ingress, which is container egress: the
 *                   sender's endpoint from the veth and its source address
 *                   checked, hairpin, isolation (lib/isolation.h), transmit
 *                   counters, fast path out
 *   to_container    host veth egress, which is container ingress: reverse
 *                   hairpin, direct access from other interfaces
 *                   (lib/direct.h), receive counters
 *
 * Every translation happens at the hook in front of the packet's
 * destination, so the stack never sees a host address arrive from a
 * bridge. With CONFIG.fast_path, translated packets skip the bridge,
 * routing and netfilter: bpf_redirect_peer into the container's namespace,
 * bpf_redirect_neigh out of the uplink (whose egress hook still runs). */

#include "lib/common.h"
#include "lib/config.h"
#include "lib/maps.h"
#include "lib/packet.h"
#include "lib/conntrack.h"
#include "lib/icmp.h"
#include "lib/isolation.h"
#include "lib/allow.h"
#include "lib/gwmode.h"
#include "lib/direct.h"
#include "lib/datapath6.h"
#include "lib/nat64.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* verdict ends a program: a TC action as it is, a negative drop reason
 * counted and dropped (see the return convention in lib/common.h). */
static __always_inline int verdict(int r)
{
	if (r < 0) {
		count_drop(-r);
		return TC_ACT_SHOT;
	}
	return r;
}

/* The IPv6 programs (lib/datapath6.h), which each entry program
 * tail-calls for an IPv6 frame through tc6. The loader never attaches
 * them; cilium/ebpf fills tc6 from its initializer at load. */
enum tc6_index {
	TC6_FROM_NETDEV,
	TC6_TO_NETDEV,
	TC6_FROM_CONTAINER,
	TC6_TO_CONTAINER,
	TC6_NAT64_OUT, /* an IPv4 answer of a NAT64 flow (lib/nat64.h) */
	TC6_NAT64_IN,  /* a client's packet to a NAT64 port (lib/nat64.h) */
	TC6_MAX,
};

int from_netdev6(struct __sk_buff *ctx);
int to_netdev6(struct __sk_buff *ctx);
int from_container6(struct __sk_buff *ctx);
int to_container6(struct __sk_buff *ctx);
int nat64_out(struct __sk_buff *ctx);
int nat64_in(struct __sk_buff *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, TC6_MAX);
	__uint(key_size, sizeof(__u32));
	__array(values, int(struct __sk_buff *));
} tc6 SEC(".maps") = {
	.values =
		{
			[TC6_FROM_NETDEV] = (void *)&from_netdev6,
			[TC6_TO_NETDEV] = (void *)&to_netdev6,
			[TC6_FROM_CONTAINER] = (void *)&from_container6,
			[TC6_TO_CONTAINER] = (void *)&to_container6,
			[TC6_NAT64_OUT] = (void *)&nat64_out,
			[TC6_NAT64_IN] = (void *)&nat64_in,
		},
};

/* to_v6 hands an IPv6 frame to its program; with none there (a failed
 * tail call) the frame passes, as it did before IPv6 was handled. */
static __always_inline int to_v6(struct __sk_buff *ctx, __u32 idx)
{
	bpf_tail_call(ctx, &tc6, idx);
	return TC_ACT_OK;
}

SEC("tc")
int from_netdev6(struct __sk_buff *ctx)
{
	return verdict(handle6_from_netdev(ctx));
}

SEC("tc")
int to_netdev6(struct __sk_buff *ctx)
{
	return verdict(handle6_to_netdev(ctx));
}

SEC("tc")
int from_container6(struct __sk_buff *ctx)
{
	return verdict(handle6_from_container(ctx));
}

SEC("tc")
int to_container6(struct __sk_buff *ctx)
{
	return verdict(handle6_to_container(ctx));
}

SEC("tc")
int nat64_out(struct __sk_buff *ctx)
{
	return verdict(handle_nat64_out(ctx));
}

static __always_inline int nat64_in_tail(struct __sk_buff *ctx)
{
	bpf_tail_call(ctx, &tc6, TC6_NAT64_IN);
	return -DROP_NAT64;
}

/* handle_nat64_in: the body of nat64_in, which from_netdev6 tail-calls
 * for a packet to a NAT64 port whose allowlist let it in: the mapping
 * looked up again, then the translation (lib/nat64.h). */
static __always_inline int handle_nat64_in(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct port6_key pk = {};
	struct port6_target *t;
	struct pkt6 p = {};
	int r = parse6_flow(ctx, &p);

	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	pk.port = p.t.dport;
	pk.proto = p.t.proto;
	ip6_copy(pk.addr, p.t.daddr);
	t = published6_lookup(&pk);
	if (!t || !nat64_target(t))
		return -DROP_NAT64;
	return nat64_from_netdev(ctx, &p, t, now);
}

SEC("tc")
int nat64_in(struct __sk_buff *ctx)
{
	return verdict(handle_nat64_in(ctx));
}

static __always_inline int is_loopback(__be32 a)
{
	return (a & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
}

/* published_lookup finds the mapping of a packet to a host address: the
 * binding to that exact address first, then the one to every address. */
static __always_inline struct port_target *published_lookup(struct port_key *k)
{
	struct port_target *t;

	if (!bpf_map_lookup_elem(&host_addrs, &k->addr))
		return 0;
	t = bpf_map_lookup_elem(&published, k);
	if (t)
		return t;
	k->addr = 0;
	return bpf_map_lookup_elem(&published, k);
}

static __always_inline int apply(struct __sk_buff *ctx, struct pkt *p, const struct ct_entry *e)
{
	return rewrite(ctx, p, e->nsaddr, e->ndaddr, e->nsport, e->ndport);
}

/* to_container_xlate applies what the container's ingress hook applies:
 * the reverse of a hairpin. Returns 0 or -DROP_REWRITE. */
static __always_inline int to_container_xlate(struct __sk_buff *ctx, struct pkt *p, __u64 now)
{
	struct ct_key k = p->t;
	struct ct_entry *e;
	int r;

	if (p->icmp == ICMP_K_ERROR) {
		r = icmp_error_xlate(ctx, p, CT_AT_TO_CONTAINER, now);
		return r < 0 ? r : 0;
	}
	e = ct_lookup(&k, CT_AT_TO_CONTAINER, now);
	if (!e)
		return 0;
	ct_touch(&k, e, p, now);
	r = apply(ctx, p, e);
	if (r < 0)
		return r;
	/* A first fragment: its later ones carry no ports, and find them
	 * by the tuple it arrived with. */
	frag_record(p, &k);
	return 0;
}

/* How deliver hands a packet over, or-ed together. */
enum deliver_flags {
	DELIVER_ROUTED = 1 << 0, /* across a router: TTL decremented, MACs rewritten */
	DELIVER_XLATE = 1 << 1,	 /* the flow's translation is applied here, not in to_container */
	DELIVER_TURN =
		1 << 2, /* turns around on its own veth: redirected even without the fast path */
};

/* turn is DELIVER_TURN for a packet from the veth of its destination. */
static __always_inline __u32 turn(const struct endpoint *dst, __u32 ifindex)
{
	return dst->ifindex == ifindex ? DELIVER_TURN : 0;
}

/* deliver hands a packet to a container: straight into its namespace
 * with the fast path (or always, with DELIVER_TURN), through the stack
 * otherwise. Returns a TC action or a negative drop reason, as the
 * programs' own bodies do. */
static __always_inline int deliver(struct __sk_buff *ctx, struct pkt *p, const struct endpoint *ep,
				   __u32 flags, __u64 now)
{
	int r;

	if (!CONFIG.fast_path && !(flags & DELIVER_TURN))
		return TC_ACT_OK;
	if (flags & DELIVER_XLATE) {
		r = to_container_xlate(ctx, p, now);
		if (r < 0)
			return r;
	}
	if (flags & DELIVER_ROUTED) {
		r = ttl_dec(ctx, p);
		if (r)
			return r < 0 ? r : TC_ACT_OK;
		/* Destination and source MAC in one write: the endpoint keeps
		 * them side by side, in frame order. */
		_Static_assert(offsetof(struct endpoint, gw_mac) ==
				       offsetof(struct endpoint, mac) + ETH_ALEN,
			       "endpoint MACs must be adjacent");
		if (bpf_skb_store_bytes(ctx, 0, ep->mac, 2 * ETH_ALEN, 0) < 0)
			return -DROP_REWRITE;
	}
	if (!CONFIG.fast_path) {
		/* Egress of the host veth: to_container runs there and counts. */
		return bpf_redirect(ep->ifindex, 0);
	}
	count_if(ep->ifindex, p->len, 1);
	count_event(EV_REDIRECT_PEER);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* forward_out sends a packet from a container that leaves through an
 * uplink straight to it with the fast path; to_netdev still runs there and
 * masquerades. Fragments are the stack's. */
static __always_inline int forward_out(struct __sk_buff *ctx, struct pkt *p, __u32 in_ifindex)
{
	struct bpf_fib_lookup fib = {};
	__u32 mtu = 0;
	long r;

	if (!CONFIG.fast_path || p->frag != FRAG_NONE)
		return TC_ACT_OK;

	fib.family = AF_INET;
	fib.l4_protocol = p->t.proto;
	fib.sport = p->t.sport;
	fib.dport = p->t.dport;
	fib.tot_len = p->len - L3_OFF;
	fib.ipv4_src = p->t.saddr;
	fib.ipv4_dst = p->t.daddr;
	fib.ifindex = in_ifindex;

	r = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (r != BPF_FIB_LKUP_RET_SUCCESS && r != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&uplinks, &fib.ifindex))
		return TC_ACT_OK;
	/* Too big for the uplink: the stack sends fragmentation-needed. */
	if (bpf_check_mtu(ctx, fib.ifindex, &mtu, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;
	r = ttl_dec(ctx, p);
	if (r)
		return r < 0 ? r : TC_ACT_OK;
	count_event(EV_REDIRECT_NEIGH);
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

/* track_routed lets a flow from a network without masquerade leave with
 * its own address, and tracks it so that its answers get back in (the
 * outside reaches a container directly only on such a flow's answers, as
 * Docker's conntrack rule allows). A flow that lost its entries gets them
 * back from any packet: there is no translation to lose. */
static __always_inline int track_routed(struct pkt *p, __u64 now)
{
	struct ct_entry ne = {};
	struct ct_entry *e;
	int r;
	struct endpoint *ep = bpf_map_lookup_elem(&endpoints, &p->t.saddr);

	ne.nsaddr = p->t.saddr;
	ne.ndaddr = p->t.daddr;
	ne.nsport = p->t.sport;
	ne.ndport = p->t.dport;
	ne.flags = CT_AT_TO_NETDEV;
	ne.peer_flags = CT_AT_FROM_NETDEV | CT_REPLY;
	ne.kind = CT_ROUTED;
	if (ep)
		ne.ifindex = ep->ifindex;
	r = ct_create(&p->t, &ne, now);
	if (r < 0)
		return r;
	e = bpf_map_lookup_elem(&ct4, &p->t);
	if (e)
		ct_touch(&p->t, e, p, now);
	return TC_ACT_OK;
}

/* from_netdev: packets arriving from the outside on an uplink. */
static __always_inline int handle_from_netdev(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct pkt p = {};
	struct ct_key orig;
	struct ct_entry *e;
	struct endpoint *ep;
	int r;

	if (ctx->protocol == bpf_htons(ETH_P_IPV6))
		return to_v6(ctx, TC6_FROM_NETDEV);
	r = parse(ctx, &p);
	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	if (CONFIG.redirect_only) {
		ep = bpf_map_lookup_elem(&endpoints, &p.t.daddr);
		return ep ? deliver(ctx, &p, ep, DELIVER_ROUTED, now) : TC_ACT_OK;
	}
	orig = p.t;

	if (p.icmp == ICMP_K_ERROR) {
		r = icmp_error_xlate(ctx, &p, CT_AT_FROM_NETDEV, now);
		if (r < 0)
			return r;
		if (r == 0)
			goto unknown;
		goto out;
	}
	if (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport)
		goto unknown;

	e = ct_lookup_flow(&p, CT_AT_FROM_NETDEV, now);
	if (e) {
		/* Rewrite first: touching an unassured entry may move it to
		 * ct4 and free it (ct_touch_unassured). */
		r = apply(ctx, &p, e);
		if (r < 0)
			return r;
		ct_touch(&orig, e, &p, now);
	} else {
		struct port_key pk = {.addr = p.t.daddr, .port = p.t.dport, .proto = p.t.proto};
		struct port_target *t;
		struct ct_entry ne = {};

		if (is_loopback(p.t.daddr))
			return -DROP_NOT_PUBLISHED;
		if (!has_ports(p.t.proto) || p.frag == FRAG_LATER || !(t = published_lookup(&pk)))
			goto unknown;
		r = port_allowed(&pk, t, p.t.saddr);
		if (r < 0)
			return r;
		r = nat64_forged(&p.t, t, now);
		if (r < 0)
			return r;

		ne.nsaddr = p.t.saddr;
		ne.ndaddr = t->addr;
		ne.nsport = p.t.sport;
		ne.ndport = t->port;
		ne.flags = CT_AT_FROM_NETDEV;
		ne.peer_flags = CT_AT_TO_NETDEV | CT_REPLY;
		ne.kind = CT_DNAT;
		ep = bpf_map_lookup_elem(&endpoints, &t->addr);
		if (ep)
			ne.ifindex = ep->ifindex;
		/* Every new flow from the outside, a SYN or a segment of a
		 * connection whose entries were lost alike, starts unassured:
		 * whatever a forged source sends lands in ct4_syn only. */
		r = ct_create_unassured(&p.t, &ne, now);
		if (r < 0)
			return r;
		e = bpf_map_lookup_elem(&ct4_syn, &p.t);
		if (e)
			ct_touch(&p.t, e, &p, now);
		count_event(p.t.proto == IPPROTO_TCP && !(p.tcp_flags & TCPF_SYN) ? EV_CT_RECREATED
										  : EV_CT_NEW_DNAT);
		count_port_conn(&pk);
		r = apply(ctx, &p, &ne);
		if (r < 0)
			return r;
	}
	frag_record(&p, &orig);
out:
	ep = bpf_map_lookup_elem(&endpoints, &p.t.daddr);
	if (ep)
		return deliver(ctx, &p, ep, DELIVER_ROUTED, now);
	return TC_ACT_OK;

unknown:
	/* Not a translated flow. Straight to a container from the outside is
	 * what Docker's FORWARD rules stop; anything else is the host's, the
	 * bridges' gateway addresses included (they are host addresses, which
	 * Docker's rules leave to the host's INPUT chain). */
	{
		struct net_info *net = container_net(p.t.daddr);

		if (net && !bpf_map_lookup_elem(&host_addrs, &p.t.daddr)) {
			/* The network's gateway mode decides (lib/gwmode.h); on
			 * a nat network a trusted uplink may still reach a
			 * published container port (lib/direct.h). */
			int how = gw_direct_allowed(&p, net->flags);

			if (how == -DROP_NOT_PUBLISHED &&
			    direct_trusted_uplink(&p, net, ctx->ifindex))
				how = GW_OPEN;
			if (how < 0)
				return how;
			r = gw_direct_track(&p, how, now);
			if (r < 0)
				return r;
			frag_record(&p, &orig);
			goto out;
		}
	}
	return TC_ACT_OK;
}

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	return verdict(handle_from_netdev(ctx));
}

/* host_flow_collides tells whether a packet that leaves with no entry and
 * not from a container network opens a flow of the host whose answers a
 * translated flow would take: its reply tuple is held by a live entry (the
 * host's connect() or bind() knows nothing of the translations). to_netdev
 * then gives it a source port of its own, as Linux remaps the source port
 * of a local connection that clashes with a NAT mapping. Any other host
 * packet costs this one lookup and is left alone, without an entry. */
static __always_inline int host_flow_collides(const struct pkt *p, __u64 now)
{
	struct ct_key rk = {.saddr = p->t.daddr,
			    .daddr = p->t.saddr,
			    .sport = p->t.dport,
			    .dport = p->t.sport,
			    .proto = p->t.proto};

	if (p->frag == FRAG_LATER)
		return 0;
	if (p->t.proto == IPPROTO_TCP) {
		if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
			return 0;
	} else if (p->t.proto != IPPROTO_UDP && p->icmp != ICMP_K_ECHO_REQ) {
		return 0;
	}
	return ct_lookup(&rk, CT_AT_FROM_NETDEV, now) != 0;
}

/* to_netdev: packets leaving through an uplink. */
static __always_inline int handle_to_netdev(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct pkt p = {};
	struct ct_key orig;
	struct ct_entry *e;
	struct net_info *net;
	struct uplink *up;
	__be16 own;
	int r;

	if (CONFIG.redirect_only)
		return TC_ACT_OK;
	if (ctx->protocol == bpf_htons(ETH_P_IPV6))
		return to_v6(ctx, TC6_TO_NETDEV);
	r = parse(ctx, &p);
	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	orig = p.t;

	if (p.icmp == ICMP_K_ERROR) {
		r = icmp_error_xlate(ctx, &p, CT_AT_TO_NETDEV, now);
		return r < 0 ? r : TC_ACT_OK;
	}
	if (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport)
		return TC_ACT_OK;

	e = ct_lookup_flow(&p, CT_AT_TO_NETDEV, now);
	if (e) {
		ct_touch(&p.t, e, &p, now);
		r = apply(ctx, &p, e);
		if (r < 0)
			return r;
		frag_record(&p, &orig);
		return TC_ACT_OK;
	}

	/* Masquerade: a new flow from a container network, or a host flow
	 * that needs a port of its own. */
	net = container_net(p.t.saddr);
	/* A bridge's gateway address is in its subnet but is the host's: the
	 * host's own packets from it (the RST of a closed port there) are not
	 * a container's to masquerade. */
	if (net && bpf_map_lookup_elem(&host_addrs, &p.t.saddr))
		net = 0;
	if (!net) {
		if (!host_flow_collides(&p, now))
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
			return track_routed(&p, now);
		}
		/* A TCP segment of no known flow: an answer whose entry is gone
		 * (it comes back with the client's next packet), not a new
		 * connection. */
		if (p.t.proto == IPPROTO_TCP && (p.tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
			return -DROP_CT_MISS;
		own = p.t.sport;
	}
	{
		__u32 ifindex = ctx->ifindex;

		up = bpf_map_lookup_elem(&uplinks, &ifindex);
	}
	if (!up || !up->addr || (!net && up->addr != p.t.saddr))
		return TC_ACT_OK;
	{
		struct ct_entry ne = {};
		struct endpoint *ep = net ? bpf_map_lookup_elem(&endpoints, &p.t.saddr) : 0;

		/* A network's own host address (host_ipv4), as Docker's SNAT
		 * --to-source, else the uplink's. */
		ne.nsaddr = net && net->host_addr ? net->host_addr : up->addr;
		ne.ndaddr = p.t.daddr;
		ne.ndport = p.t.dport;
		ne.flags = CT_AT_TO_NETDEV;
		ne.peer_flags = CT_AT_FROM_NETDEV | CT_REPLY;
		ne.kind = CT_SNAT;
		if (ep)
			ne.ifindex = ep->ifindex;
		r = ct_create_nat(ctx, &p.t, &ne, own, now);
		if (r < 0)
			return r;
		e = bpf_map_lookup_elem(&ct4, &p.t);
		if (e)
			ct_touch(&p.t, e, &p, now);
		count_event(net ? EV_CT_NEW_SNAT : EV_NAT_HOST_REMAP);
		r = apply(ctx, &p, &ne);
		if (r < 0)
			return r;
	}
	frag_record(&p, &orig);
	return TC_ACT_OK;
}

SEC("tc")
int to_netdev(struct __sk_buff *ctx)
{
	return verdict(handle_to_netdev(ctx));
}

/* from_container: the host end's ingress, i.e. what the container sends.
 * The sender is the endpoint of the veth, whatever source address the
 * packet claims: every judgement below is about src. */
static __always_inline int handle_from_container(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 ifindex = ctx->ifindex;
	struct pkt p = {};
	struct ct_key orig;
	struct ct_entry *e;
	struct endpoint *src, *dst;
	int r, to_host;

	count_if(ifindex, ctx->len, 0);
	if (ctx->protocol == bpf_htons(ETH_P_IPV6))
		return to_v6(ctx, TC6_FROM_CONTAINER);
	r = parse(ctx, &p);
	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	/* A veth nobody told us about fails closed. */
	src = bpf_map_lookup_elem(&veths, &ifindex);
	if (!src || !src_allowed(src, p.t.saddr))
		return -DROP_SPOOFED;
	/* The answer of a NAT64 flow (lib/nat64.h); anything else to the
	 * pool goes on as before (the pool is RFC 2544 space, which the flood
	 * benchmark's forged sources share). */
	if (nat64_pool_has(p.t.daddr) && !(src->flags & NET_F_INTERNAL)) {
		struct nat64_rev_entry *rv = bpf_map_lookup_elem(&nat64_rev, &p.t);

		if (rv && rv->expires >= now) {
			bpf_tail_call(ctx, &tc6, TC6_NAT64_OUT);
			return -DROP_NAT64;
		}
	}
	orig = p.t;
	if (!CONFIG.redirect_only && p.icmp == ICMP_K_ERROR) {
		/* An error about a flow this hook translates: a hairpin answer
		 * the container got, or a packet that came to it through its
		 * own published port (which it answers to the gateway). */
		r = icmp_error_xlate(ctx, &p, CT_AT_FROM_CONTAINER, now);
		if (r < 0)
			return r;
		if (r > 0) {
			dst = bpf_map_lookup_elem(&endpoints, &p.t.daddr);
			if (!dst)
				return TC_ACT_OK;
			return deliver(ctx, &p, dst, DELIVER_ROUTED | turn(dst, ifindex), now);
		}
	}
	if (CONFIG.redirect_only || p.icmp == ICMP_K_ERROR ||
	    (p.frag == FRAG_LATER && !p.t.sport && !p.t.dport))
		goto plain;

	e = ct_lookup_live(&p.t, now);
	/* A container's SYN|ACK answers a published port's handshake, whose
	 * flow is still unassured (ct4_syn): found there, it goes straight
	 * out like any tracked answer instead of through the hairpin and
	 * isolation lookups. Other packets never look in ct4_syn here. */
	if (!e && p.t.proto == IPPROTO_TCP &&
	    (p.tcp_flags & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK)) {
		e = bpf_map_lookup_elem(&ct4_syn, &p.t);
		if (e && e->expires < now)
			e = 0;
	}
	if (e && !(e->flags & CT_AT_FROM_CONTAINER)) {
		/* A flow the uplink's egress translates: the answer of a
		 * published port, or a masqueraded or routed connection. Its
		 * destination is outside and it is tracked, so neither the
		 * hairpin nor the isolation rules concern it (but for an
		 * internal network's, which never leave): straight out. */
		if ((e->flags & CT_AT_TO_NETDEV) && !(src->flags & NET_F_INTERNAL))
			return forward_out(ctx, &p, src->bridge_ifindex);
		e = 0;
	}
	e = ct_unless_reopened(&p, e);
	if (!e) {
		/* Hairpin: a container to a published port of the host. */
		struct port_key pk = {.addr = p.t.daddr, .port = p.t.dport, .proto = p.t.proto};
		struct port_target *t;
		struct ct_entry ne = {};

		if (!has_ports(p.t.proto) || p.frag == FRAG_LATER || !(t = published_lookup(&pk)))
			goto plain;
		r = iso_hairpin(src, t->addr);
		if (r)
			return r;
		r = port_allowed(&pk, t, p.t.saddr);
		if (r < 0)
			return r;
		ne.nsaddr = p.t.saddr;
		ne.ndaddr = t->addr;
		ne.nsport = p.t.sport;
		ne.ndport = t->port;
		ne.flags = CT_AT_FROM_CONTAINER;
		ne.peer_flags = CT_AT_TO_CONTAINER | CT_REPLY;
		ne.kind = CT_HAIRPIN;
		ne.ifindex = src->ifindex;
		if (t->addr == p.t.saddr) {
			/* To itself: the packet must not come back from its own
			 * address, so it comes from the gateway, as Docker's
			 * MASQUERADE of hairpin traffic does. The answer goes to
			 * the gateway: it comes back through this hook, not
			 * through to_container. */
			ne.nsaddr = src->gw_addr;
			ne.peer_flags = CT_AT_FROM_CONTAINER | CT_REPLY;
			r = ct_create_nat(ctx, &p.t, &ne, p.t.sport, now);
		} else {
			r = ct_create(&p.t, &ne, now);
		}
		if (r < 0)
			return r;
		count_event(EV_CT_NEW_HAIRPIN);
		count_port_conn(&pk);
		e = bpf_map_lookup_elem(&ct4, &p.t);
		if (!e)
			return -DROP_CT_FULL;
	}
	ct_touch(&orig, e, &p, now);
	r = apply(ctx, &p, e);
	if (r < 0)
		return r;
	frag_record(&p, &orig);
	dst = bpf_map_lookup_elem(&endpoints, &p.t.daddr);
	if (!dst)
		return TC_ACT_OK;
	return deliver(ctx, &p, dst, DELIVER_ROUTED | DELIVER_XLATE | turn(dst, ifindex), now);

plain:
	/* Untranslated: Docker's isolation rules, then the fast path. */
	dst = bpf_map_lookup_elem(&endpoints, &p.t.daddr);
	to_host = bpf_map_lookup_elem(&host_addrs, &p.t.daddr) != 0;
	r = gw_isolated_from_container(src, p.t.daddr, to_host);
	if (r)
		return r;
	/* (Redirect-only mode tracks nothing: there, networks stay apart.) */
	r = (to_host || CONFIG.redirect_only) ? 0 : gw_routed_from_other_net(&p, src, dst, now);
	if (r < 0)
		return r;
	if (!r) {
		r = iso_verdict(ctx, &p, src, dst, to_host, now);
		if (r)
			return r;
	}
	if (!CONFIG.fast_path)
		return TC_ACT_OK;
	if (dst) {
		if (dst->ifindex == ifindex)
			return TC_ACT_OK;
		/* On another bridge: routed, as through the host. */
		__u32 how = src->bridge_ifindex != dst->bridge_ifindex ? DELIVER_ROUTED : 0;

		return deliver(ctx, &p, dst, how | DELIVER_XLATE, now);
	}
	/* The host's, or multicast and broadcast, which the bridge floods:
	 * the stack's. */
	if (to_host || iso_link_local(p.t.daddr))
		return TC_ACT_OK;
	return forward_out(ctx, &p, src->bridge_ifindex);
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	return verdict(handle_from_container(ctx));
}

/* to_container: the host end's egress, i.e. what the container receives. */
static __always_inline int handle_to_container(struct __sk_buff *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct pkt p = {};
	int r;

	count_if(ctx->ifindex, ctx->len, 1);
	if (ctx->protocol == bpf_htons(ETH_P_IPV6))
		return CONFIG.redirect_only ? TC_ACT_OK : to_v6(ctx, TC6_TO_CONTAINER);
	r = parse(ctx, &p);
	if (r < 0)
		return r;
	if (r == PARSE_PASS)
		return TC_ACT_OK;
	if (CONFIG.redirect_only)
		return TC_ACT_OK;
	r = gw_isolated_to_container(&p, ctx->ifindex);
	if (r)
		return r;
	r = to_container_xlate(ctx, &p, now);
	if (r < 0)
		return r;
	r = direct_verdict(&p, ctx->ifindex, ctx->ingress_ifindex, now);
	return r < 0 ? r : TC_ACT_OK;
}

SEC("tc")
int to_container(struct __sk_buff *ctx)
{
	return verdict(handle_to_container(ctx));
}
