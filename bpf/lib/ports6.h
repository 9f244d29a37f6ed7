/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The IPv6 published ports and host addresses: ports.h's twins, the maps
 * the IPv6 datapath (datapath6.h) and the sock programs (sock.c) both
 * read. */
#pragma once

#include "common.h"

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
