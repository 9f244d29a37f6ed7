// SPDX-License-Identifier: Apache-2.0

// Package daemon is bpfnet's reconcile loop, written once for every
// datapath.
//
// A Daemon reads the wanted state from a Source (the flags and the kernel
// in standalone mode, Docker's Engine API with --docker, the CNI plugin's
// attachments with --cni, package cni), completes it
// with what only the kernel knows (uplinks, veths the runtime has not
// reported yet), and makes a datapath.Datapath match it: at start, on each
// update of the source, and whenever a link joins or leaves one of the
// bridges. When only the published ports changed and the datapath is a
// datapath.PortPublisher, it publishes and unpublishes just the
// difference, as Docker does on a container event; otherwise it applies
// the whole state. Datapaths that collect their connection tracking (GC)
// are collected on a timer, and those that count traffic (metrics.Reader)
// are served to Prometheus.
//
// It needs root in the network namespace of the bridges (netlink, and
// whatever the datapath needs). It does not parse flags, build the
// datapath, check the host firewall or remove anything: the command does
// (cmd/bpfnet); stopping the loop leaves the datapath working.
package daemon
