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
 * flows. IPv6 sources have a trie of their own, port_allow6, under the
 * same ids: a list's IPv4 prefixes go to port_allow and its IPv6 ones to
 * port_allow6, so a list without prefixes of a family lets no source of
 * that family in (it fails closed, as the comparators' rules do). The
 * host's own sockets (sock.c) are trusted and not checked, as Docker
 * trusts the host. */
#pragma once

#include "common.h"
#include "ports.h"
#include "maps6.h"

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
	count_key(&port_denied, k);
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

/* An entry of a list's IPv6 prefixes: allow_key's twin, prefixlen counting
 * the 32 bits of list, then those of addr. */
struct allow6_key {
	__u32 prefixlen;
	__u32 list; /* port6_target.allow_id */
	__be32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct allow6_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_allow6 SEC(".maps");

/* New flows refused per IPv6 published port (key as in port_conns6). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct port6_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_denied6 SEC(".maps");

/* New flows per IPv6 published port: port_conns' twin. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct port6_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_conns6 SEC(".maps");

/* port6_allowed is port_allowed for an IPv6 source: 0 when saddr may open
 * a flow to the IPv6 published port k maps to t, else -DROP_PORT_DENIED,
 * counted for the port. */
static __always_inline int port6_allowed(const struct port6_key *k, const struct port6_target *t,
					 const __be32 *saddr)
{
	struct allow6_key ak = {.prefixlen = 32 + 128, .list = t->allow_id};

	if (!t->allow_id)
		return 0;
	ip6_copy(ak.addr, saddr);
	if (bpf_map_lookup_elem(&port_allow6, &ak))
		return 0;
	count_key(&port_denied6, k);
	return -DROP_PORT_DENIED;
}
