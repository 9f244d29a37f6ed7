/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Source allowlists of published ports (the container label bpfnet.allow,
 * standalone --publish ...,allow=): a published port whose port_target
 * names a list (allow_id) opens new flows only from the sources in it;
 * so does a routed network's container port, whose routed_ports entry is
 * a port_target too (gwmode.h). Checked on a flow's first packet only,
 * where the mapping is looked up:
 * an established flow keeps going when its port's list changes, as
 * conntrack keeps a flow that a changed iptables rule would refuse.
 *
 * A list is a set of prefixes in an LPM trie keyed by (list id, prefix):
 * the loader writes a new list under a fresh id before a port_target
 * names it and deletes the old one after, so a change is atomic for new
 * flows. IPv6 gets a trie of its own (port_allow6, same ids). The host's
 * own sockets (sock.c) are trusted and not checked, as Docker trusts the
 * host. */
#pragma once

#include "common.h"
#include "ports.h"

/* An entry of a list: prefixlen counts the 32 bits of list, then those
 * of addr. */
struct allow_key {
	__u32 prefixlen;
	__u32 list; /* port_target.allow_id */
	__be32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct allow_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_allow SEC(".maps");

/* New flows refused per published port (key as in port_conns). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct port_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_denied SEC(".maps");

static __always_inline void count_port_denied(const struct port_key *k)
{
	__u64 *v = bpf_map_lookup_elem(&port_denied, k);

	if (v) {
		*v += 1;
	} else {
		__u64 one = 1;

		bpf_map_update_elem(&port_denied, k, &one, BPF_NOEXIST);
	}
}

/* port_allowed tells whether saddr may open a flow to the published port
 * k maps to t: 0 if so (a port without a list is open to all), otherwise
 * -DROP_PORT_DENIED, counted for the port. */
static __always_inline int port_allowed(const struct port_key *k, const struct port_target *t,
					__be32 saddr)
{
	struct allow_key ak = {.prefixlen = 64, .list = t->allow_id, .addr = saddr};

	if (!t->allow_id || bpf_map_lookup_elem(&port_allow, &ak))
		return 0;
	count_port_denied(k);
	return -DROP_PORT_DENIED;
}
