// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/cni"
	"github.com/bpfnet/bpfnet/datapath"
)

// endpointName is how status, ports and ct name the container behind an
// endpoint: a pod of the CNI agent as namespace/pod (or its shortened
// CNI container id) with its full container id, any other endpoint by
// its host veth, the best a reader of the pinned maps alone knows.
type endpointName struct {
	Name        string
	ContainerID string
}

// addCNIStateDirFlag is the flag of the commands that name pods: the
// agent's --cni-state-dir.
func addCNIStateDirFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "cni-state-dir", cni.DefaultStateDir, "folder of the CNI agent's attachments, to name pods (the agent's --cni-state-dir)")
}

// endpointNames names the endpoints eps. A pod's attachment names its
// endpoint only while its host veth is the endpoint's interface, so a file
// left behind never names another container. A state folder that cannot
// be read is a warning: the endpoints are then named by their veths. A
// dual-stack pod names both its endpoints, IPv4 and IPv6.
func endpointNames(eps []datapath.EndpointInfo, stateDir string) (map[netip.Addr]endpointName, []string) {
	out := map[netip.Addr]endpointName{}
	for _, e := range eps {
		if name := ifName(int(e.Ifindex)); name != "" {
			out[e.Addr] = endpointName{Name: name}
		}
	}
	atts, err := cni.Store{Dir: stateDir}.List()
	if err != nil {
		return out, []string{fmt.Sprintf("pods are named by their veths: reading the CNI attachments: %v", err)}
	}
	for _, a := range atts {
		for _, e := range eps {
			if (e.Addr == a.Addr || (a.Addr6.IsValid() && e.Addr == a.Addr6)) && ifName(int(e.Ifindex)) == a.HostVeth {
				out[e.Addr] = endpointName{Name: a.Name(), ContainerID: a.ContainerID}
			}
		}
	}
	return out, nil
}

// endpointNamesOf is endpointNames of the datapath's endpoints.
func endpointNamesOf(dp *datapath.EBPF, stateDir string) (map[netip.Addr]endpointName, []string, error) {
	eps, err := dp.Endpoints()
	if err != nil {
		return nil, nil, err
	}
	names, warnings := endpointNames(eps, stateDir)
	return names, warnings, nil
}
