/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Docker 28's protection of container addresses from direct access: a
 * packet to a container's address that arrives on an interface other than
 * its network's bridge is dropped, which Docker does in the raw table,
 *
 *   -t raw -A PREROUTING -d 172.17.0.2 -i <trusted> -j ACCEPT
 *   -t raw -A PREROUTING -d 172.17.0.2 ! -i docker0 -j DROP
 *
 * with the filter table then letting a trusted interface reach the
 * published container ports only. Uplinks are judged by from_netdev (as
 * DROP_NOT_PUBLISHED, but for a trusted uplink: direct_trusted_uplink);
 * to_container, which every packet to a container
 * passes but for those the fast path redirects into its namespace (which
 * a hook of ours judged), judges the rest by skb->skb_iif
 * (__sk_buff.ingress_ifindex), the interface the packet last arrived on
 * (__netif_receive_skb_core sets it at every receive; a redirect keeps it):
 *
 *   0               sent by the host itself (never received)
 *   lo              looped back by the host
 *   the bridge      routed by the host from the bridge's own side
 *   a bridge port   bridged from a container, or redirected to this veth
 *                   by from_container on that port (bpf_redirect)
 *   an uplink       judged by from_netdev
 *   another bridge  routed from another network: dropped but for the
 *                   flows a hook of ours tracks (a hairpin through a
 *                   published port, its answers), which from_container
 *                   judged
 *   anything else   a second NIC, a tunnel, a bridge or veth that is not
 *                   Docker's: dropped, but for a trusted interface of the
 *                   network to a published container port (direct_trusted)
 *
 * With NET_F_DIRECT_OPEN (--allow-direct-routing) Docker installs no raw
 * drop, and its filter table lets every interface reach the published
 * container ports, and no other: here every interface is trusted, through
 * the entries of ifindex 0. Networks without masquerade (Docker's routed
 * networks), nat-unprotected and internal ones are not protected this
 * way. */
#pragma once

#include "common.h"
#include "maps.h"
#include "packet.h"
#include "isolation.h"
#include "gwmode.h"

/* A published container port a trusted interface may reach directly. */
struct trusted_key {
	__u32 ifindex; /* the trusted interface; 0: every one (--allow-direct-routing) */
	__be32 addr;   /* container address */
	__be16 port;   /* container port */
	__u8 proto;
	__u8 pad;
};

/* The network's com.docker.network.bridge.trusted_host_interfaces times its
 * published container ports, resolved by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct trusted_key);
	__type(value, __u32);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} direct_trusted SEC(".maps");

#define LOOPBACK_IFINDEX 1

/* direct_tracked tells whether a packet belongs to a live flow a hook of
 * ours tracks: the entry of its answers is keyed by its reversed tuple. */
static __always_inline int direct_tracked(const struct pkt *p, __u64 now)
{
	struct ct_key rk = {.saddr = p->t.daddr,
			    .daddr = p->t.saddr,
			    .sport = p->t.dport,
			    .dport = p->t.sport,
			    .proto = p->t.proto};
	struct ct_entry *e = bpf_map_lookup_elem(&ct4, &rk);

	return e && e->expires >= now;
}

/* direct_inside tells whether a packet to the container behind the host
 * veth ifindex that arrived on in_ifindex comes from where Docker's raw
 * drop lets it: the container's bridge or a port of it, or an uplink
 * (which from_netdev judges). Both families ask it. */
static __always_inline int direct_inside(__u32 ifindex, __u32 in_ifindex)
{
	struct endpoint *ep, *from;

	ep = bpf_map_lookup_elem(&veths, &ifindex);
	if (!ep || in_ifindex == ep->bridge_ifindex)
		return 1;
	if (bpf_map_lookup_elem(&uplinks, &in_ifindex))
		return 1;
	from = bpf_map_lookup_elem(&veths, &in_ifindex);
	return from && from->bridge_ifindex == ep->bridge_ifindex;
}

/* direct_verdict judges a packet to_container hands to the container whose
 * host veth is ifindex, which arrived on in_ifindex, after to_container's
 * own translation: 0 when it may go on, else -DROP_DIRECT_ACCESS (for a
 * routed network, what gw_direct_allowed gives). A later
 * fragment carries no port, and from a trusted interface only its first
 * fragment passes. */
static __always_inline int direct_verdict(const struct pkt *p, __u32 ifindex, __u32 in_ifindex,
					  __u64 now)
{
	struct net_info *net;

	if (in_ifindex == 0 || in_ifindex == LOOPBACK_IFINDEX)
		return 0;
	net = container_net(p->t.daddr);
	/* Docker writes no direct-access drop for internal and
	 * nat-unprotected networks (lib/gwmode.h), nor for one without
	 * masquerade; a routed network's filter rules are judged below. */
	if (!net || (net->flags & (NET_F_INTERNAL | NET_F_UNPROTECTED)) ||
	    !(net->flags & (NET_F_MASQ | NET_F_ROUTED)))
		return 0;
	if (direct_inside(ifindex, in_ifindex))
		return 0;
	if (direct_tracked(p, now))
		return 0;
	/* routed: from any interface but its bridge, what its DOCKER chain
	 * lets in from an uplink, as from_netdev judges it (gw_direct_allowed:
	 * published container ports, behind their allowlists, and ICMP). Nothing
	 * tracks such a flow: each of its packets is judged here. */
	if (net->flags & NET_F_ROUTED) {
		int r = gw_direct_allowed(p, net->flags);

		return r < 0 ? r : 0;
	}
	if (has_ports(p->t.proto)) {
		struct trusted_key tk = {.ifindex =
						 (net->flags & NET_F_DIRECT_OPEN) ? 0 : in_ifindex,
					 .addr = p->t.daddr,
					 .port = p->t.dport,
					 .proto = p->t.proto};

		if (bpf_map_lookup_elem(&direct_trusted, &tk))
			return 0;
	}
	return -DROP_DIRECT_ACCESS;
}

/* direct_trusted_uplink tells whether a new flow from the uplink ifindex
 * straight to container address p->t.daddr of net, which from_netdev drops
 * on a nat network (DROP_NOT_PUBLISHED), may go in: the uplink is a
 * trusted interface of the network (every interface with
 * NET_F_DIRECT_OPEN) and the port a published container port. from_netdev
 * then tracks it untranslated (gw_direct_track), so that its answers leave
 * through to_netdev untouched rather than masqueraded. */
static __always_inline int direct_trusted_uplink(const struct pkt *p, const struct net_info *net,
						 __u32 ifindex)
{
	struct trusted_key tk = {.ifindex = (net->flags & NET_F_DIRECT_OPEN) ? 0 : ifindex,
				 .addr = p->t.daddr,
				 .port = p->t.dport,
				 .proto = p->t.proto};

	return (net->flags & NET_F_MASQ) && has_ports(p->t.proto) && p->frag != FRAG_LATER &&
	       bpf_map_lookup_elem(&direct_trusted, &tk);
}

/* The IPv6 half, judged the same way by interface: Docker 28's ip6tables
 * raw table holds the same drops for a container's IPv6 address. */

/* trusted_key's twin for a container IPv6 address. */
struct trusted6_key {
	__u32 ifindex; /* the trusted interface; 0: every one (--allow-direct-routing) */
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct trusted6_key);
	__type(value, __u32);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} direct_trusted6 SEC(".maps");

/* direct6_trusted tells whether the interface ifindex (any one with
 * NET_F_DIRECT_OPEN in flags) may reach the container port p goes to. A
 * later fragment carries no port of its own: only its first passes. */
static __always_inline int direct6_trusted(const struct pkt6 *p, __u32 flags, __u32 ifindex)
{
	struct trusted6_key tk = {.ifindex = (flags & NET_F_DIRECT_OPEN) ? 0 : ifindex,
				  .port = p->t.dport,
				  .proto = p->t.proto};

	if (!has_ports(p->t.proto) || p->frag == FRAG_LATER)
		return 0;
	ip6_copy(tk.addr, p->t.daddr);
	return bpf_map_lookup_elem(&direct_trusted6, &tk) != 0;
}

/* direct6_verdict is direct_verdict for IPv6: 0 when a packet to_container6
 * hands to the container behind ifindex, which arrived on in_ifindex, may
 * go on, else the negative drop reason. */
static __always_inline int direct6_verdict(const struct pkt6 *p, __u32 ifindex, __u32 in_ifindex,
					   __u64 now)
{
	struct net6_info *net;
	struct ct6_key rk = {.sport = p->t.dport, .dport = p->t.sport, .proto = p->t.proto};
	struct ct6_entry *e;

	if (in_ifindex == 0 || in_ifindex == LOOPBACK_IFINDEX)
		return 0;
	net = container_net6(p->t.daddr);
	if (!net || (net->flags & (NET_F_INTERNAL | NET_F_UNPROTECTED)) ||
	    !(net->flags & (NET_F_MASQ | NET_F_ROUTED)))
		return 0;
	if (direct_inside(ifindex, in_ifindex))
		return 0;
	/* A live flow a hook of ours tracks: the entry of its answers. */
	ip6_copy(rk.saddr, p->t.daddr);
	ip6_copy(rk.daddr, p->t.saddr);
	e = bpf_map_lookup_elem(&ct6, &rk);
	if (e && e->expires >= now)
		return 0;
	if (net->flags & NET_F_ROUTED) {
		int r = gw6_direct_allowed(p, net->flags);

		return r < 0 ? r : 0;
	}
	return direct6_trusted(p, net->flags, in_ifindex) ? 0 : -DROP_DIRECT_ACCESS;
}
