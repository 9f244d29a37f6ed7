/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Runtime settings of the TC datapath: read-only globals the loader sets
 * through CollectionSpec.Variables["CONFIG"] before the programs are
 * loaded (datapath.Options.config). The loader sets every field, so the
 * defaults live in one place, datapath.Defaults. */
#pragma once

#include "common.h"

struct config {
	__u32 fast_path; /* 1: redirect translated packets (redirect_peer/neigh); 0: through the stack */
	__u32 redirect_only; /* 1: no NAT, no tracking, only fast-path redirects and counters (bench ceiling) */
	__u16 nat_port_min; /* lowest masquerade source port (and ICMP id) when a flow's own is taken */
	__u16 nat_port_max;	 /* highest masquerade source port (and ICMP id) */
	__u64 tcp_syn_timeout;	 /* ns: TCP with a SYN seen and no answer yet */
	__u64 tcp_est_timeout;	 /* ns: established TCP */
	__u64 tcp_close_timeout; /* ns: TCP with a FIN or RST seen */
	__u64 udp_timeout;	 /* ns: UDP */
	__u64 icmp_timeout;	 /* ns: ICMP echo */
	__u64 half_open_timeout; /* ns: unassured flow (ct4_syn), refreshed by each of its packets */
	__be32 nat64_pool;	 /* NAT64 pool (lib/nat64.h), network byte order */
	__be32 nat64_mask;	 /* its netmask; 0: no NAT64 */
};

volatile const struct config CONFIG = {};
