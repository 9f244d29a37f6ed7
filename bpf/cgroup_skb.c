// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Per-container traffic of containers that have no veth of their own.
 *
 * A container on a bridge network is counted by the TC programs on the host
 * end of its veth. Two kinds of containers have no such veth:
 *
 *   --network host     its sockets are the host's: its packets cross the
 *                      host's interfaces mixed with everyone else's
 *   macvlan, ipvlan    its device hangs off a parent interface; the parent
 *                      sees every child's traffic mixed with its own, and
 *                      child-to-child traffic never reaches the parent
 *
 * What tells their packets apart is the socket that sends or receives them,
 * and the cgroup of that socket: these programs are attached (cgroup_skb,
 * ingress and egress) to each such container's cgroup v2 folder and count
 * per container and per interface:
 *
 *   cgroup_accounts  cgroup id -> account: the cgroup id the traffic is
 *                    counted to. A container's own cgroup counts to itself;
 *                    the cgroup of a container that shares its network
 *                    namespace (--network container:X) counts to X.
 *   cgroup_stats     (account, ifindex) -> rx/tx packets and bytes, per CPU.
 *                    ifindex is the interface the packet came in or goes out
 *                    through, in the socket's network namespace (1 is
 *                    loopback): user space picks the macvlan device, or
 *                    everything but loopback for host mode.
 *
 * A socket in a cgroup below the container's (systemd in the container, a
 * runtime nested in it) is counted to its deepest registered ancestor.
 *
 * Bytes are the IP packet plus 14, the Ethernet header the TC counters of
 * bridge containers include; a GSO/GRO packet counts once, as there. Only
 * packets that belong to a full socket of the cgroup are seen: forwarded
 * packets, TIME_WAIT answers and raw packet sockets are not. The programs
 * never drop: they return 1 (pass). */

#include "lib/common.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Deepest cgroup level searched for a registered ancestor. */
#define CG_MAX_LEVEL 16

struct cgroup_key {
	__u64 account; /* cgroup id the traffic is counted to */
	__u32 ifindex; /* in the socket's network namespace */
	__u32 pad;
};

struct cgroup_traffic {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cgroup_accounts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct cgroup_key);
	__type(value, struct cgroup_traffic);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cgroup_stats SEC(".maps");

static __always_inline __u64 cg_account(struct __sk_buff *skb)
{
	__u64 id = bpf_skb_cgroup_id(skb);
	__u64 *acct;
	int level;

	if (!id)
		return 0;
	acct = bpf_map_lookup_elem(&cgroup_accounts, &id);
	if (acct)
		return *acct;
	for (level = CG_MAX_LEVEL; level > 0; level--) {
		id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!id)
			continue; /* deeper than the socket's cgroup */
		acct = bpf_map_lookup_elem(&cgroup_accounts, &id);
		if (acct)
			return *acct;
	}
	return 0;
}

static __always_inline void cg_count(struct __sk_buff *skb, int rx)
{
	struct cgroup_key k = {};
	struct cgroup_traffic *t;
	__u64 bytes = (__u64)skb->len + ETH_HLEN;

	k.account = cg_account(skb);
	if (!k.account)
		return;
	k.ifindex = skb->ifindex;
	t = bpf_map_lookup_elem(&cgroup_stats, &k);
	if (!t) {
		struct cgroup_traffic zero = {};

		bpf_map_update_elem(&cgroup_stats, &k, &zero, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&cgroup_stats, &k);
		if (!t)
			return; /* full */
	}
	/* Atomic: an egress program in process context can be interrupted
	 * by an ingress one on the same CPU. */
	if (rx) {
		__sync_fetch_and_add(&t->rx_packets, 1);
		__sync_fetch_and_add(&t->rx_bytes, bytes);
	} else {
		__sync_fetch_and_add(&t->tx_packets, 1);
		__sync_fetch_and_add(&t->tx_bytes, bytes);
	}
}

/* Received by the container. */
SEC("cgroup_skb/ingress")
int cgroup_skb_ingress(struct __sk_buff *skb)
{
	cg_count(skb, 1);
	return 1;
}

/* Transmitted by the container. */
SEC("cgroup_skb/egress")
int cgroup_skb_egress(struct __sk_buff *skb)
{
	cg_count(skb, 0);
	return 1;
}
