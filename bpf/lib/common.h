/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared definitions of the bpfnet datapath: headers, runtime settings,
 * verdict helpers. */
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
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
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

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* Runtime settings, set by the loader through CollectionSpec.Variables
 * before the programs are loaded. Keep in sync with datapath.Config. */
struct config {
	/* 1: translated packets are redirected to their target interface
	 * (bpf_redirect_peer / bpf_redirect_neigh); 0: they go through the stack. */
	__u32 fast_path;
	/* 1: no NAT and no tracking, only the fast-path redirects and the
	 * counters: the ceiling of the design, for `bpfnet bench`. */
	__u32 redirect_only;
	/* Range of translated source ports (and ICMP ids) used by masquerade
	 * when a flow's own source port is taken. */
	__u16 nat_port_min;
	__u16 nat_port_max;
	/* Connection-tracking lifetimes in nanoseconds. */
	__u64 tcp_syn_timeout;   /* SYN seen, no answer yet */
	__u64 tcp_est_timeout;   /* established */
	__u64 tcp_close_timeout; /* FIN or RST seen */
	__u64 udp_timeout;
	__u64 icmp_timeout;
	__u64 half_open_timeout; /* unassured flow (ct4_syn), refreshed by each of its packets */
};

volatile const struct config CONFIG = {
	.fast_path = 1,
	.redirect_only = 0,
	.nat_port_min = 32768,
	.nat_port_max = 65535,
	.tcp_syn_timeout = 60ULL * 1000000000ULL,
	.tcp_est_timeout = 21600ULL * 1000000000ULL,
	.tcp_close_timeout = 10ULL * 1000000000ULL,
	.udp_timeout = 60ULL * 1000000000ULL,
	.icmp_timeout = 30ULL * 1000000000ULL,
	.half_open_timeout = 10ULL * 1000000000ULL,
};

/* Why a packet was dropped: index of the drops map. Keep in sync with
 * datapath.DropReason. */
enum drop_reason {
	DROP_MALFORMED = 0,      /* truncated or invalid headers */
	DROP_NOT_PUBLISHED = 1,  /* from outside straight to a container or loopback address */
	DROP_CT_FULL = 2,        /* connection-tracking insert failed */
	DROP_NAT_EXHAUSTED = 3,  /* no free translated port */
	DROP_FRAG_UNKNOWN = 4,   /* later fragment of a datagram whose first fragment was not seen */
	DROP_REDIRECT = 5,       /* redirect helper failed */
	DROP_REWRITE = 6,        /* a rewrite helper failed */
	DROP_CT_MISS = 7,        /* TCP without SYN leaving with no flow: never masqueraded */
	DROP_ISOLATION = 8,      /* between two container networks (Docker's DOCKER-ISOLATION) */
	DROP_ICC = 9,            /* between containers of a network without inter-container communication */
	DROP_INTERNAL = 10,      /* leaving or entering an internal network */
	DROP_SPOOFED = 11,       /* a container's source address is not its own, or its veth is unknown */
	DROP_MAX = 16,
};

/* Things worth counting that are not drops: index of the events map. Keep
 * in sync with datapath.Event. */
enum event {
	EV_CT_NEW_DNAT = 0,      /* new published-port flow */
	EV_CT_NEW_SNAT = 1,      /* new masqueraded flow */
	EV_CT_NEW_HAIRPIN = 2,   /* new hairpin flow */
	EV_CT_RECREATED = 3,     /* mid-stream packet without an entry (evicted or expired): entries made again */
	EV_CT_PEER_RESTORED = 4, /* one half of a flow was evicted and was restored from the other */
	EV_REDIRECT_PEER = 5,
	EV_REDIRECT_NEIGH = 6,
	EV_FRAG_TRACKED = 7,
	EV_NAT_HOST_SOCKET = 8,  /* a masquerade candidate port refused: a host socket uses its tuple */
	EV_NAT_HOST_REMAP = 9,   /* a host flow whose tuple a translation holds got another source port */
	EV_CT_HALF_OPEN = 10,    /* new published-port flow, in ct4_syn until the client answers */
	EV_CT_PROMOTED = 11,     /* unassured flow moved into ct4 */
	EV_MAX = 16,
};
