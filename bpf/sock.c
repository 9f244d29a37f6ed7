// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Published ports for the host's own sockets, in place of docker-proxy.
 *
 * A process of the host that connects to a published port (curl
 * localhost:8080, or a host address) never crosses the TC hooks of the
 * datapath: the packet would be delivered on lo. These cgroup sock_addr
 * programs translate at the socket instead, before any packet exists:
 *
 *   connect4      TCP and connected UDP: the destination becomes the
 *                 container's address and port
 *   sendmsg4      the same for each datagram of an unconnected UDP socket
 *   recvmsg4      the source of a UDP answer becomes what the application
 *                 sent to (127.0.0.1:5353, not the container)
 *   getpeername4  the peer of a translated socket is what it connected to
 *   connect6, sendmsg6, recvmsg6, getpeername6
 *                 the same for IPv6 sockets: to the IPv6 published ports
 *                 (published6) of ::1, [::] and the host's IPv6 addresses,
 *                 and, through mapped addresses (::ffff:127.0.0.1), to the
 *                 IPv4 ones; unconnected datagrams to a mapped address
 *                 take sendmsg4
 *
 * They act only on sockets of the network namespace the daemon manages
 * (SOCK_NETNS_COOKIE), so a bpfnet in a namespace leaves the rest of the
 * machine alone though the programs sit on the root cgroup.
 *
 * The mappings are the TC datapath's maps (published, host_addrs and their
 * IPv6 twins), shared by name. The reverse translation is remembered per
 * socket in sock_rev4 and sock_rev6.
 *
 * Loopback: when the application connects to 127.0.0.1 from an unbound
 * socket, the kernel picks the source for the rewritten destination (the
 * bridge address), so the flow is an ordinary host-to-container one. A
 * socket bound to a loopback address cannot reach a container (the kernel
 * refuses a loopback source off lo: connect fails with EINVAL), so it is
 * left untranslated and counted (SOCK_ST_BOUND_LO). IPv6 alike, with ::1.
 *
 * Source allowlists (lib/allow.h) do not apply here: the host is trusted,
 * as in Docker, where the host's own connections to a published port
 * never cross a DOCKER-USER rule. A port's list limits the sources of the
 * outside and of containers only.
 *
 * Not served: a socket cannot change family, so an IPv6 destination
 * reaches only IPv6 published ports and an IPv4 (or mapped) one only IPv4
 * ones. sock_rev4 and sock_rev6 are LRUs: a socket whose entry was pushed
 * out by many newer ones still works, but its getpeername and answers show
 * the container's address. */

#include "lib/common.h"
#include "lib/ports.h"
#include "lib/ports6.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Cookie of the network namespace whose sockets are translated, set by the
 * loader; 0 translates nothing. */
volatile const __u64 SOCK_NETNS_COOKIE = 0;

/* A translated socket's flow, as the kernel sees it after translation. */
struct sock_rev_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__be32 addr;  /* container address */
	__be16 port;  /* container port */
	__u8 proto;
	__u8 pad;
};

/* What the application asked for. */
struct sock_rev_val {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_rev4 SEC(".maps");

/* sock_rev_key's and sock_rev_val's twins for IPv6 destinations. */
struct sock_rev6_key {
	__u64 cookie;
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct sock_rev6_val {
	__be32 addr[4];
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_rev6_key);
	__type(value, struct sock_rev6_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_rev6 SEC(".maps");

/* The key of sock_stats. */
enum sock_stat {
	SOCK_ST_CONNECT = 0,	 /* connect translated */
	SOCK_ST_SENDMSG = 1,	 /* datagram translated */
	SOCK_ST_RECVMSG = 2,	 /* answer's source restored */
	SOCK_ST_GETPEERNAME = 3, /* peer restored */
	SOCK_ST_BOUND_LO = 4,	 /* published port not translated: socket bound to loopback */
	SOCK_ST_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum sock_stat);
	__type(value, __u64);
	__uint(max_entries, SOCK_ST_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_stats SEC(".maps");

static __always_inline void sock_count(enum sock_stat st)
{
	__u64 *v = bpf_map_lookup_elem(&sock_stats, &st);

	if (v)
		*v += 1;
}

static __always_inline int sock_ours(struct bpf_sock_addr *ctx)
{
	return SOCK_NETNS_COOKIE && bpf_get_netns_cookie(ctx) == SOCK_NETNS_COOKIE;
}

static __always_inline int sock_is_loopback(__be32 a)
{
	return (a & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
}

/* sock_lookup finds the mapping of a destination: a loopback address
 * matches a binding to that address, then one to every address (docker-proxy
 * listens on 0.0.0.0, which includes lo); a host address likewise. 0.0.0.0,
 * which connect() takes for the local host, matches only the wildcard. */
static __always_inline struct port_target *sock_lookup(struct port_key *k)
{
	struct port_target *t;

	if (k->addr && !sock_is_loopback(k->addr) && !bpf_map_lookup_elem(&host_addrs, &k->addr))
		return 0;
	t = bpf_map_lookup_elem(&published, k);
	if (t)
		return t;
	k->addr = 0;
	return bpf_map_lookup_elem(&published, k);
}

/* sock_xlate translates a destination of a connect or sendmsg: when
 * (*daddr, *dport) is a published port it records the reverse translation,
 * replaces them with the container's address and port and returns 1. */
static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, __be32 *daddr, __be16 *dport,
				      __be32 src)
{
	struct sock_rev_key rk = {};
	struct sock_rev_val rv = {};
	struct sock_rev_val *old;
	struct port_target *t;
	struct port_key k = {};
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	k.addr = *daddr;
	k.port = *dport;
	k.proto = proto;
	rv.addr = k.addr ? k.addr : bpf_htonl(0x7f000001);
	rv.port = k.port;

	t = sock_lookup(&k);
	if (!t)
		return 0;
	if (sock_is_loopback(src)) {
		sock_count(SOCK_ST_BOUND_LO);
		return 0;
	}

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = t->addr;
	rk.port = t->port;
	rk.proto = proto;
	old = bpf_map_lookup_elem(&sock_rev4, &rk);
	if (!old || old->addr != rv.addr || old->port != rv.port) {
		/* A failed update only costs the reverse translation. */
		bpf_map_update_elem(&sock_rev4, &rk, &rv, BPF_ANY);
		count_port_conn(&k);
	}
	*daddr = t->addr;
	*dport = t->port;
	return 1;
}

/* sock_restore gives back the address a translated socket asked for: it
 * returns 1 with (*addr, *port) replaced when they are a translation's. */
static __always_inline int sock_restore(struct bpf_sock_addr *ctx, __be32 *addr, __be16 *port)
{
	struct sock_rev_key rk = {};
	struct sock_rev_val *rv;
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = *addr;
	rk.port = *port;
	rk.proto = proto;
	rv = bpf_map_lookup_elem(&sock_rev4, &rk);
	if (!rv)
		return 0;
	*addr = rv->addr;
	*port = rv->port;
	return 1;
}

static __always_inline __be32 sock_bound4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	return sk ? sk->src_ip4 : 0;
}

/* IPv4 sockets. */

static __always_inline void sock_xlate4(struct bpf_sock_addr *ctx, __be32 src, __u32 st)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;

	if (!sock_ours(ctx) || !sock_xlate(ctx, &addr, &port, src))
		return;
	ctx->user_ip4 = addr;
	ctx->user_port = (__u32)port;
	sock_count(st);
}

static __always_inline void sock_restore4(struct bpf_sock_addr *ctx, __u32 st)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;

	if (!sock_ours(ctx) || !sock_restore(ctx, &addr, &port))
		return;
	ctx->user_ip4 = addr;
	ctx->user_port = (__u32)port;
	sock_count(st);
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	sock_xlate4(ctx, sock_bound4(ctx), SOCK_ST_CONNECT);
	return 1;
}

/* Unconnected UDP; a dual-stack (IPv6) socket sending to an IPv4-mapped
 * address comes here too. */
SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	__be32 src = ctx->msg_src_ip4; /* IP_PKTINFO, if any */

	if (!src)
		src = sock_bound4(ctx);
	sock_xlate4(ctx, src, SOCK_ST_SENDMSG);
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock_restore4(ctx, SOCK_ST_RECVMSG);
	return 1;
}

SEC("cgroup/getpeername4")
int sock_peername4(struct bpf_sock_addr *ctx)
{
	sock_restore4(ctx, SOCK_ST_GETPEERNAME);
	return 1;
}

/* IPv6 sockets. An IPv4-mapped destination (::ffff:127.0.0.1, a
 * dual-stack socket reaching IPv4) takes the IPv4 mappings; any other
 * takes the IPv6 ones. Unconnected datagrams to a mapped address take
 * sendmsg4. */

static __always_inline int sock_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int sock_is_zero6(const __be32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int sock_is_loopback6(const __be32 *a)
{
	return (a[0] | a[1] | a[2]) == 0 && a[3] == bpf_htonl(1);
}

/* sock_lookup6 is sock_lookup's twin: ::1 or a host address matches a
 * binding to it, then one to every address; ::, which connect() takes for
 * ::1, matches only the wildcard. */
static __always_inline struct port6_target *sock_lookup6(struct port6_key *k)
{
	struct port6_target *t;

	if (!sock_is_zero6(k->addr) && !sock_is_loopback6(k->addr) &&
	    !bpf_map_lookup_elem(&host_addrs6, k->addr))
		return 0;
	t = bpf_map_lookup_elem(&published6, k);
	if (t)
		return t;
	__builtin_memset(k->addr, 0, sizeof(k->addr));
	return bpf_map_lookup_elem(&published6, k);
}

/* sock_xlate_v6 is sock_xlate's twin for an IPv6 destination (daddr, four
 * words) and source src (all zero: unbound). */
static __always_inline int sock_xlate_v6(struct bpf_sock_addr *ctx, __be32 *daddr, __be16 *dport,
					 const __be32 *src)
{
	struct sock_rev6_key rk = {};
	struct sock_rev6_val rv = {};
	struct sock_rev6_val *old;
	struct port6_target *t;
	struct port6_key k = {};
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	__builtin_memcpy(k.addr, daddr, sizeof(k.addr));
	k.port = *dport;
	k.proto = proto;
	__builtin_memcpy(rv.addr, k.addr, sizeof(rv.addr));
	if (sock_is_zero6(rv.addr))
		rv.addr[3] = bpf_htonl(1);
	rv.port = k.port;

	t = sock_lookup6(&k);
	/* A NAT64 port is for clients from the outside (lib/nat64.h). */
	if (!t || (!t->addr[0] && !t->addr[1] && t->addr[2] == bpf_htonl(0xffff)))
		return 0;
	if (sock_is_loopback6(src)) {
		sock_count(SOCK_ST_BOUND_LO);
		return 0;
	}

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, t->addr, sizeof(rk.addr));
	rk.port = t->port;
	rk.proto = proto;
	old = bpf_map_lookup_elem(&sock_rev6, &rk);
	if (!old || old->port != rv.port || old->addr[0] != rv.addr[0] || old->addr[1] != rv.addr[1] ||
	    old->addr[2] != rv.addr[2] || old->addr[3] != rv.addr[3])
		bpf_map_update_elem(&sock_rev6, &rk, &rv, BPF_ANY);
	__builtin_memcpy(daddr, t->addr, sizeof(t->addr));
	*dport = t->port;
	return 1;
}

/* sock_restore_v6 is sock_restore's twin. */
static __always_inline int sock_restore_v6(struct bpf_sock_addr *ctx, __be32 *addr, __be16 *port)
{
	struct sock_rev6_key rk = {};
	struct sock_rev6_val *rv;
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, addr, sizeof(rk.addr));
	rk.port = *port;
	rk.proto = proto;
	rv = bpf_map_lookup_elem(&sock_rev6, &rk);
	if (!rv)
		return 0;
	__builtin_memcpy(addr, rv->addr, sizeof(rv->addr));
	*port = rv->port;
	return 1;
}

/* The context's IPv6 address fields take 4-byte accesses only. */
static __always_inline void sock_get6(__be32 *a, struct bpf_sock_addr *ctx)
{
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
}

static __always_inline void sock_set6(struct bpf_sock_addr *ctx, const __be32 *a)
{
	ctx->user_ip6[0] = a[0];
	ctx->user_ip6[1] = a[1];
	ctx->user_ip6[2] = a[2];
	ctx->user_ip6[3] = a[3];
}

/* sock_bound6 is the address the socket is bound to (all zero: none). */
static __always_inline void sock_bound6(__be32 *a, struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return;
	a[0] = sk->src_ip6[0];
	a[1] = sk->src_ip6[1];
	a[2] = sk->src_ip6[2];
	a[3] = sk->src_ip6[3];
}

/* sock_xlate6 translates the destination of an IPv6 socket; src is its
 * source (all zero: unbound). */
static __always_inline void sock_xlate6(struct bpf_sock_addr *ctx, const __be32 *src, __u32 st)
{
	__be32 addr[4];
	__be16 port = (__be16)ctx->user_port;

	if (!sock_ours(ctx))
		return;
	if (sock_mapped(ctx)) {
		__be32 a4 = ctx->user_ip6[3];

		/* A socket bound to an IPv6 address shows 127.0.0.6 here. */
		if (!sock_xlate(ctx, &a4, &port, sock_bound4(ctx)))
			return;
		ctx->user_ip6[3] = a4;
	} else {
		sock_get6(addr, ctx);
		if (!sock_xlate_v6(ctx, addr, &port, src))
			return;
		sock_set6(ctx, addr);
	}
	ctx->user_port = (__u32)port;
	sock_count(st);
}

static __always_inline void sock_restore6(struct bpf_sock_addr *ctx, __u32 st)
{
	__be32 addr[4];
	__be16 port = (__be16)ctx->user_port;

	if (!sock_ours(ctx))
		return;
	if (sock_mapped(ctx)) {
		__be32 a4 = ctx->user_ip6[3];

		if (!sock_restore(ctx, &a4, &port))
			return;
		ctx->user_ip6[3] = a4;
	} else {
		sock_get6(addr, ctx);
		if (!sock_restore_v6(ctx, addr, &port))
			return;
		sock_set6(ctx, addr);
	}
	ctx->user_port = (__u32)port;
	sock_count(st);
}

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx)
{
	__be32 src[4] = {};

	sock_bound6(src, ctx);
	sock_xlate6(ctx, src, SOCK_ST_CONNECT);
	return 1;
}

/* Unconnected UDP to an IPv6 destination (a mapped one takes sendmsg4). */
SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	__be32 src[4];

	/* IPV6_PKTINFO, if any */
	src[0] = ctx->msg_src_ip6[0];
	src[1] = ctx->msg_src_ip6[1];
	src[2] = ctx->msg_src_ip6[2];
	src[3] = ctx->msg_src_ip6[3];
	if (sock_is_zero6(src))
		sock_bound6(src, ctx);
	sock_xlate6(ctx, src, SOCK_ST_SENDMSG);
	return 1;
}

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	sock_restore6(ctx, SOCK_ST_RECVMSG);
	return 1;
}

SEC("cgroup/getpeername6")
int sock_peername6(struct bpf_sock_addr *ctx)
{
	sock_restore6(ctx, SOCK_ST_GETPEERNAME);
	return 1;
}
