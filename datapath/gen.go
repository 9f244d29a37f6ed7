// SPDX-License-Identifier: Apache-2.0

package datapath

// Every bpf2go invocation of the project. The C sources live in ../bpf;
// BPF2GO_CC and BPF2GO_CFLAGS come from the Makefile (make generate). The
// outputs are committed so the project builds without clang. The Go
// constants of the C enums (drop reasons, events, conntrack and endpoint
// flags, sock counters) are generated with the structs: -type names them.

// The TC datapath (bpf/datapath.c).
//go:generate go tool bpf2go -go-package datapath -target bpfel -type ct_key -type ct_entry -type ct_flags -type ct_kind -type port_key -type port_target -type allow_key -type allow6_key -type endpoint -type ep_flags -type net_flags -type uplink -type net_key -type net_info -type trusted_key -type traffic -type drop_reason -type event_kind -type ct6_key -type ct6_entry -type port6_key -type port6_target -type in6_key -type endpoint6 -type uplink6 -type net6_key -type net6_info -type frag6_key -type nat64_fwd_entry -type nat64_rev_entry bpf ../bpf/datapath.c -- -I../bpf

// The cgroup skb programs that count the traffic of containers without a
// veth of their own (bpf/cgroup_skb.c): host mode, macvlan, ipvlan. A
// separate object from the TC datapath, loaded and attached on its own.
//go:generate go tool bpf2go -go-package datapath -target bpfel -type cgroup_key -type cgroup_traffic cgroup ../bpf/cgroup_skb.c -- -I../bpf

// The cgroup sock_addr programs that make published ports reach the host's
// own sockets (bpf/sock.c). A separate object from the TC datapath: it is
// loaded and attached on its own and shares the published-port maps
// (bpf/lib/ports.h) with it by name.
//go:generate go tool bpf2go -go-package datapath -target bpfel -type sock_rev_key -type sock_rev_val -type sock_rev6_key -type sock_rev6_val -type sock_stat sock ../bpf/sock.c -- -I../bpf
