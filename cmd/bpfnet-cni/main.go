// SPDX-License-Identifier: Apache-2.0

// Command bpfnet-cni is bpfnet's chained CNI plugin, installed as a
// binary named bpfnet (its CNI type) in the runtime's CNI folder
// (/opt/cni/bin, Debian's /usr/lib/cni). It comes after the bridge plugin
// (with "ipMasq": false) and replaces the portmap plugin and the
// bridge's masquerade with bpfnet's eBPF datapath:
//
//	{"cniVersion":"1.1.0","name":"pods","plugins":[
//	  {"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"hairpinMode":true,
//	   "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
//	  {"type":"bpfnet","capabilities":{"portMappings":true},"pinPath":"/sys/fs/bpf/bpfnet"}]}
//
// It speaks CNI 0.4.0 to 1.1.0. ADD reads the container's IPv4 address
// (and its IPv6 one on a dual-stack network) and the host end of its veth (the interface of prevResult with no
// sandbox that is a port of the bridge) from prevResult, and the ports
// from runtimeConfig.portMappings; it returns prevResult unchanged. The
// plugin holds no state and touches no BPF map: every command is one
// request to the node agent, `bpfnet run --cni`, over its unix socket
// (conflist key "socket", default /run/bpfnet/cni.sock), and the agent
// checks, keeps and applies it (package cni says how). When no agent
// answers, STATUS fails with CNI error 50 and so tells the runtime that
// the network is not ready.
//
// When no agent answers, every command fails with error 50 except DEL,
// which removes the attachment's file from the agent's folder itself and
// succeeds (SPEC.md: DEL completes as far as it can; kubelet would retry
// it and keep the pod terminating); the next agent does not serve it.
//
// Conflist keys besides the standard ones: "pinPath" (the agent refuses
// a network configured for another datapath folder), "socket" and
// "stateDir" (the agent's --cni-state-dir, default /var/lib/bpfnet/cni).
// CNI_ARGS K8S_POD_NAME and K8S_POD_NAMESPACE name the pod in `bpfnet
// status` and the metrics; other CNI_ARGS are ignored.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "CNI plugin bpfnet "+buildVersion)
}

// buildVersion is set at build time with -ldflags "-X main.buildVersion=...".
var buildVersion = "dev"
