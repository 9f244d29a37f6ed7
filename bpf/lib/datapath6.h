/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The IPv6 half of the entry programs (datapath.c): each program hands an
 * IPv6 frame to its v6_* subprogram here after one ethertype test, so the
 * IPv4 path costs one branch more and the verifier walks the two
 * families apart (static __noinline functions are BPF-to-BPF calls). */
#pragma once

#include "common.h"
#include "ipv6.h"

/* v6_from_netdev: from_netdev for IPv6. */
static __noinline int v6_from_netdev(struct __sk_buff *ctx)
{
	struct pkt6 p = {};
	int r = parse6(ctx, &p);

	if (r < 0)
		return r;
	return TC_ACT_OK;
}

/* v6_to_netdev: to_netdev for IPv6. */
static __noinline int v6_to_netdev(struct __sk_buff *ctx)
{
	struct pkt6 p = {};
	int r = parse6(ctx, &p);

	if (r < 0)
		return r;
	return TC_ACT_OK;
}

/* v6_from_container: from_container for IPv6. */
static __noinline int v6_from_container(struct __sk_buff *ctx)
{
	struct pkt6 p = {};
	int r = parse6(ctx, &p);

	if (r < 0)
		return r;
	return TC_ACT_OK;
}

/* v6_to_container: to_container for IPv6. */
static __noinline int v6_to_container(struct __sk_buff *ctx)
{
	struct pkt6 p = {};
	int r = parse6(ctx, &p);

	if (r < 0)
		return r;
	return TC_ACT_OK;
}
