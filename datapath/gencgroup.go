// SPDX-License-Identifier: Apache-2.0

package datapath

// The cgroup skb programs that count the traffic of containers without a
// veth of their own (bpf/cgroup_skb.c): host mode, macvlan, ipvlan. A
// separate object from the TC datapath, loaded and attached on its own.
//go:generate go tool bpf2go -go-package datapath -target bpfel -type cgroup_key -type cgroup_traffic cgroup ../bpf/cgroup_skb.c -- -I../bpf
