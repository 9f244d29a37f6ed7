/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared definitions of the bpfnet objects: headers, drop reasons and
 * counted events. The Go constants are generated from these enums
 * (datapath/gen.go). */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* linux/icmp.h pulls in libc's socket headers, which a BPF target does not
 * have: the few ICMP definitions the datapath needs, as in that header. */
#define ICMP_ECHOREPLY	   0
#define ICMP_DEST_UNREACH  3
#define ICMP_ECHO	   8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};

#ifndef AF_INET
#define AF_INET 2
#endif

#define IP_MF	  0x2000
#define IP_OFFSET 0x1fff

/* Why a packet was dropped: the key of the drops map, whose counters are
 * pinned. A number is never reused: a reason that is gone leaves its number
 * reserved.
 *
 * The one return convention of the programs' helpers: 0 on success (or a
 * documented positive result, such as PARSE_PASS or "translated"), or a
 * negative drop reason, which the entry program counts and drops:
 *
 *	r = helper(...);
 *	if (r < 0)
 *		return drop(-r);
 *
 * So no reason is 0. */
enum drop_reason {
	/* 0: reserved (was DROP_MALFORMED before it moved to 12; the Go side
	 * reads an older map's count there as malformed) */
	DROP_NOT_PUBLISHED = 1, /* from outside straight to a container or loopback address */
	DROP_CT_FULL = 2,	/* connection-tracking insert failed */
	DROP_NAT_EXHAUSTED = 3, /* no free translated port */
	/* 4: reserved (was a later fragment of an unseen datagram: such fragments go to the stack) */
	/* 5: reserved (was a failed redirect: the redirect helpers report no failure to the program) */
	DROP_REWRITE = 6,   /* a rewrite helper failed */
	DROP_CT_MISS = 7,   /* TCP without SYN leaving with no flow: never masqueraded */
	DROP_ISOLATION = 8, /* between two container networks (Docker's DOCKER-ISOLATION) */
	DROP_ICC = 9, /* between containers of a network without inter-container communication */
	DROP_INTERNAL = 10, /* leaving or entering an internal network */
	DROP_SPOOFED = 11, /* a container's source address is not its own, or its veth is unknown */
	DROP_MALFORMED = 12, /* truncated or invalid headers */
	DROP_DIRECT_ACCESS =
		13, /* to a container's address from an interface that may not reach it (lib/direct.h) */
	DROP_PORT_DENIED =
		14, /* a new flow to a published port from a source its allowlist leaves out */
	DROP_IPV6_EXTHDR =
		15, /* an IPv6 extension-header chain longer than the datapath walks (lib/ipv6.h) */
	/* 16, 17: reserved (v6direct, v6allow) */
	DROP_NAT64 = 18, /* a NAT64 packet that cannot be translated (lib/nat64.h) */
	DROP_MAX = 19,
};

/* Things worth counting that are not drops: the key of the events map. */
enum event_kind {
	EV_CT_NEW_DNAT = 0,    /* new published-port flow */
	EV_CT_NEW_SNAT = 1,    /* new masqueraded flow */
	EV_CT_NEW_HAIRPIN = 2, /* new hairpin flow */
	EV_CT_RECREATED =
		3, /* mid-stream packet without an entry (evicted or expired): entries made again */
	EV_CT_PEER_RESTORED =
		4, /* one half of a flow was evicted and was restored from the other */
	EV_REDIRECT_PEER = 5,
	EV_REDIRECT_NEIGH = 6,
	EV_FRAG_TRACKED = 7,
	EV_NAT_HOST_SOCKET =
		8, /* a masquerade candidate port refused: a host socket uses its tuple */
	EV_NAT_HOST_REMAP =
		9, /* a host flow whose tuple a translation holds got another source port */
	EV_CT_HALF_OPEN = 10, /* new published-port flow, in ct4_syn until the client answers */
	EV_CT_PROMOTED = 11,  /* unassured flow moved into ct4 */
	EV_CT_NEW_DIRECT =
		12, /* new flow from outside a routed or nat-unprotected network straight to its container */
	EV_CT_NEW_NAT64 = 13, /* new NAT64 flow of a published port (lib/nat64.h) */
	EV_MAX = 16,
};
