/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps of the IPv6 datapath (datapath6.h): the twins of maps.h's and
 * ports.h's, keyed by IPv6 addresses. The IPv4 maps keep their layout, so
 * pinned IPv4 state survives an upgrade to a version with these. */
#pragma once

#include "common.h"
#include "maps.h"
#include "ipv6.h"

/* One direction of a translated IPv6 flow: ct_entry's twin. */
struct ct6_entry {
	__be32 nsaddr[4];
	__be32 ndaddr[4];
	__be16 nsport;
	__be16 ndport;
	enum ct_flags flags; /* CT_AT_* | CT_REPLY */
	enum ct_kind kind;
	__u8 tcp_seen;		  /* TCP flags seen in this direction */
	enum ct_flags peer_flags; /* flags of the entry of the other direction */
	__u32 ifindex;		  /* host veth of the container end, 0 if unknown */
	__u32 pad;
	__u64 expires; /* bpf_ktime_get_ns() deadline */
	__u64 packets;
	__u64 bytes;
};

/* IPv6 flows: ct4's twin, sized like it by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct6_key);
	__type(value, struct ct6_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct6 SEC(".maps");

/* A published port on an IPv6 host address (all zero: every one). */
struct port6_key {
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct port6_target {
	__be32 addr[4]; /* container IPv6 address */
	__be16 port;	/* container port */
	__u16 pad;
	__u32 id;	/* mapping id */
	__u32 allow_id; /* source allowlist (allow.h, port_allow6), 0: open to every source */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port6_key);
	__type(value, struct port6_target);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} published6 SEC(".maps");

struct in6_key {
	__be32 a[4];
};

/* IPv6 addresses of the host (not loopback, not link-local). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_key);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} host_addrs6 SEC(".maps");

/* Endpoints by container IPv6 address (struct endpoint's addr and
 * gw_addr are its IPv4 ones; gw6 is here). */
struct endpoint6 {
	struct endpoint ep;
	__be32 gw6[4]; /* bridge's IPv6 gateway address */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_key);
	__type(value, struct endpoint6);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints6 SEC(".maps");

/* The IPv6 address masqueraded traffic leaves an uplink with. */
struct uplink6 {
	__be32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct uplink6);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} uplinks6 SEC(".maps");

/* Container networks' IPv6 prefixes. */
struct net6_key {
	__u32 prefixlen;
	__be32 addr[4];
};

struct net6_info {
	enum net_flags flags; /* as the network's IPv4 entry, with its IPv6 gateway mode */
	__u32 net_id;
	__be32 host_addr[4]; /* source of its masqueraded traffic (host_ipv6); 0: the uplink's */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct net6_key);
	__type(value, struct net6_info);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nets6 SEC(".maps");

/* Ports of an IPv6 datagram's first fragment, by its fragment
 * identification: frags4's twin. */
struct frag6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 id;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag6_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
} frags6 SEC(".maps");

static __always_inline struct net6_info *container_net6(const __be32 *a)
{
	struct net6_key k = {.prefixlen = 128};

	ip6_copy(k.addr, a);
	return bpf_map_lookup_elem(&nets6, &k);
}
