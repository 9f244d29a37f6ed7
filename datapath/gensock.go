// SPDX-License-Identifier: Apache-2.0

package datapath

// The cgroup sock_addr programs that make published ports reach the host's
// own sockets (bpf/sock.c). A separate object from the TC datapath: it is
// loaded and attached on its own and shares the TC maps by name.
//go:generate go tool bpf2go -go-package datapath -target bpfel -type sock_rev_key -type sock_rev_val sock ../bpf/sock.c -- -I../bpf
