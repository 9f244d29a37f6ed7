// SPDX-License-Identifier: Apache-2.0

package datapath

// The C sources live in ../bpf. BPF2GO_CC and BPF2GO_CFLAGS come from the
// Makefile (make generate); the outputs are committed so the project builds
// without clang.
//go:generate go tool bpf2go -go-package datapath -target bpfel -type ct_key -type ct_entry -type port_key -type port_target -type endpoint -type uplink -type net_key -type net_info -type traffic bpf ../bpf/datapath.c -- -I../bpf
