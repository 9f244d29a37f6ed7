/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps of the TC datapath (datapath.c). Every map that is state is pinned
 * by name (the loader points the pin path at <pin-path>/globals) so a
 * restarted daemon adopts it and established flows survive. The maps the
 * sock programs share with it are in ports.h. */
#pragma once

#include "common.h"
#include "ports.h"

/* A flow as seen at one hook, before any translation. For ICMP echo the
 * identifier is the source "port" of a request and the destination "port"
 * of a reply, so a reply's tuple is the reverse of its request's. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Flags of a conntrack entry: which hook applies it, and its direction. */
enum ct_flags : __u8 {
	CT_AT_FROM_NETDEV = 0x01,    /* uplink ingress */
	CT_AT_TO_NETDEV = 0x02,	     /* uplink egress */
	CT_AT_FROM_CONTAINER = 0x04, /* host veth ingress: container egress */
	CT_AT_TO_CONTAINER = 0x08,   /* host veth egress (or redirect into the container) */
	CT_REPLY = 0x10,	     /* entry of the reply direction */
	CT_UNASSURED = 0x20, /* entry of ct4_syn: the client has not answered the container yet */
};

/* Which translation a flow has. */
enum ct_kind : __u8 {
	CT_DNAT = 1,	/* published port */
	CT_SNAT = 2,	/* masquerade */
	CT_HAIRPIN = 3, /* container to a published port of the host */
	CT_ROUTED =
		4, /* untranslated: from a network without masquerade, tracked so its answers get in */
	CT_NAT64 = 5, /* a NAT64 flow (lib/nat64.h: its own maps, never in ct4 or ct6) */
};

/* One direction of a translated flow: a packet whose tuple is the key is
 * rewritten to the tuple in the entry. The entry of the other direction is
 * found by reversing the rewritten tuple. */
struct ct_entry {
	__be32 nsaddr;
	__be32 ndaddr;
	__be16 nsport;
	__be16 ndport;
	enum ct_flags flags; /* CT_AT_* | CT_REPLY */
	enum ct_kind kind;
	__u8 tcp_seen;		  /* TCP flags seen in this direction */
	enum ct_flags peer_flags; /* flags of the entry of the other direction */
	__u32 ifindex;		  /* host veth of the container end, 0 if unknown */
	__u64 expires;		  /* bpf_ktime_get_ns() deadline */
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4 SEC(".maps");

/* Unassured flows: a published-port flow starts here and moves to ct4 when
 * the client's packet follows the container's answer (conntrack.h,
 * ct_assured). Packets from random sources at a published port (a SYN
 * flood) therefore churn only this table, whose entries are short-lived and
 * cheap to evict, and never push an established flow out of ct4: the
 * kernel's conntrack early-drops unassured entries for the same reason.
 * Lookups reach it only on a ct4 miss. The loader sizes it (default: an
 * eighth of ct4). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 32768);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4_syn SEC(".maps");

/* Flags of an endpoint. */
enum ep_flags : __u32 {
	EP_F_FOREIGN_SRC = 0x1, /* may send from addresses not its own: it routes for others */
};

/* Flags of a container network. */
enum net_flags : __u32 {
	NET_F_MASQ = 0x1,   /* traffic from it to the outside is masqueraded */
	NET_F_NO_ICC = 0x2, /* its containers may not reach each other (enable_icc=false) */
	NET_F_INTERNAL =
		0x4, /* no traffic leaves it or enters it (docker network create --internal) */
	/* Gateway modes (com.docker.network.bridge.gateway_mode_ipv4, lib/gwmode.h): */
	NET_F_UNPROTECTED = 0x10, /* nat-unprotected: every port reachable by container address */
	NET_F_ROUTED =
		0x20, /* routed: no NAT; published container ports and ICMP reachable directly */
	NET_F_ISOLATED = 0x40, /* isolated: internal, and the host itself is cut off too */
	NET_F_DIRECT_OPEN =
		0x100, /* its published container ports may be reached from any interface (--allow-direct-routing) */
};

/* A container's end of a veth. */
struct endpoint {
	__u32 ifindex;	      /* host end of the veth */
	__u32 bridge_ifindex; /* bridge the host end is enslaved to */
	__be32 gw_addr;	      /* bridge gateway address */
	__u8 mac[6];	      /* container eth0 */
	__u8 gw_mac[6];	      /* bridge */
	__u32 net_id;	      /* net_info.net_id of its network */
	enum net_flags flags; /* of its network */
	__be32 addr;	      /* the container's address; 0 while the runtime has not reported it */
	enum ep_flags ep_flags;
	__u32 ctr_id; /* the same for every endpoint of one container; 0 while it is not known */
};

/* Endpoints by container address: where a packet to a container goes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct endpoint);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Endpoints by the ifindex of their host veth: who sent a packet. A veth
 * attached before its container is known has an entry with address 0 and
 * the network of the bridge it is enslaved to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} veths SEC(".maps");

/* An uplink (interface towards the outside) and the address masqueraded
 * traffic leaves it with. */
struct uplink {
	__be32 addr;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct uplink);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} uplinks SEC(".maps");

/* Container networks (bridge subnets). */
struct net_key {
	__u32 prefixlen;
	__be32 addr;
};

struct net_info {
	enum net_flags flags;
	__u32 net_id;
	__be32 host_addr; /* source of its masqueraded traffic (host_ipv4); 0: the uplink's */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct net_key);
	__type(value, struct net_info);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nets SEC(".maps");

/* Ports of an IPv4 datagram's first fragment, so later fragments (which
 * carry no L4 header) find their flow. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
} frags4 SEC(".maps");

/* Traffic per container veth (key: host-side ifindex), from the
 * container's point of view. */
struct traffic {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct traffic);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} if_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum drop_reason);
	__type(value, __u64);
	__uint(max_entries, DROP_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum event_kind);
	__type(value, __u64);
	__uint(max_entries, EV_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

static __always_inline void count_drop(enum drop_reason reason)
{
	__u64 *v = bpf_map_lookup_elem(&drops, &reason);
	if (v)
		*v += 1;
}

static __always_inline void count_event(enum event_kind ev)
{
	__u64 *v = bpf_map_lookup_elem(&events, &ev);
	if (v)
		*v += 1;
}

static __always_inline void count_if(__u32 ifindex, __u32 len, int rx)
{
	struct traffic *s = bpf_map_lookup_elem(&if_stats, &ifindex);
	if (!s) {
		struct traffic zero = {};
		bpf_map_update_elem(&if_stats, &ifindex, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&if_stats, &ifindex);
		if (!s)
			return;
	}
	if (rx) {
		s->rx_packets += 1;
		s->rx_bytes += len;
	} else {
		s->tx_packets += 1;
		s->tx_bytes += len;
	}
}
