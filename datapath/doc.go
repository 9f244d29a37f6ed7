// SPDX-License-Identifier: Apache-2.0

// Package datapath is the Go side of bpfnet's datapath: the desired state
// (networks, container endpoints, uplinks, published ports) and the
// Datapath interface that makes the kernel match it.
//
// The ebpf implementation loads the TC programs of ../bpf (compiled by
// bpf2go into bpf_bpfel.o, committed), pins their state maps under
// <pin-path>/globals so a restarted daemon keeps every flow, programs the
// maps and attaches the programs through package loader. It needs Linux
// 5.10+ with BTF for the redirect helpers, 6.6+ for tcx (older kernels get
// clsact), and CAP_NET_ADMIN + CAP_BPF. It handles IPv4 only: IPv6 is
// passed untouched.
//
// Everything runs in the calling thread's network namespace.
package datapath
