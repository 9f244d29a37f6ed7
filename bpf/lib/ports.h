/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The published ports and the host's addresses: the maps the TC datapath
 * and the sock programs (sock.c) both read, and the counter of new
 * connections per published port they both write. */
#pragma once

#include "common.h"

/* A published port: host address (0 for every host address), port and
 * protocol, as `docker run -p [ip:]port:cport/proto` gives it. */
struct port_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct port_target {
	__be32 addr; /* container address */
	__be16 port; /* container port */
	__u16 pad;
	__u32 id;	/* mapping id, for counters and for dropping its flows */
	__u32 allow_id; /* source allowlist (allow.h, port_allow), 0: open to every source */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port_key);
	__type(value, struct port_target);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} published SEC(".maps");

/* Addresses of the host (every interface but loopback): a wildcard
 * published port matches a packet only when its destination is one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} host_addrs SEC(".maps");

/* New connections per published port. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct port_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_conns SEC(".maps");

/* count_key adds one to the per-CPU counter at k of map, making it on the
 * first count (port_conns, port_denied and their IPv6 twins). */
static __always_inline void count_key(void *map, const void *k)
{
	__u64 *v = bpf_map_lookup_elem(map, k);

	if (v) {
		*v += 1;
	} else {
		__u64 one = 1;

		bpf_map_update_elem(map, k, &one, BPF_NOEXIST);
	}
}

/* count_port_conn counts a new flow of a published port. */
static __always_inline void count_port_conn(const struct port_key *k)
{
	count_key(&port_conns, k);
}
