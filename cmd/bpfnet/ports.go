// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/datapath"
)

type portJSON struct {
	Proto         string `json:"protocol"`
	HostIP        string `json:"host_ip"`
	HostPort      uint16 `json:"host_port"`
	ContainerIP   string `json:"container_ip"`
	ContainerPort uint16 `json:"container_port"`
	Container     string `json:"container,omitempty"`
	// ContainerID is a pod's CNI container id.
	ContainerID string `json:"container_id,omitempty"`
	Connections uint64 `json:"connections"`
	// Allow is the port's source allowlist; empty: open to every source.
	Allow []string `json:"allow"`
	// Denied counts the new connections the allowlist refused.
	Denied uint64 `json:"denied"`
	// Routed: a container port of a routed network, reached at the
	// container's address; host_ip and host_port are then that address
	// and port (no host port is published).
	Routed bool `json:"routed,omitempty"`
	// NAT64: a host IPv6 port of an IPv4 container, its clients seen
	// from addresses of the NAT64 pool (bpfnet run --nat64-pool).
	NAT64 bool `json:"nat64,omitempty"`
}

func newPortsCmd() *cobra.Command {
	var pinPath, stateDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports",
		Short: "List the published ports with their containers, source allowlists and connection counts",
		RunE: func(cmd *cobra.Command, _ []string) error {
			dp, err := datapath.OpenPinned(pinPath)
			if err != nil {
				return err
			}
			defer dp.Close()
			ports, err := dp.Published()
			if err != nil {
				return err
			}
			conns, err := dp.PortConnections()
			if err != nil {
				return err
			}
			denied, err := dp.PortDenied()
			if err != nil {
				return err
			}
			names, warnings, err := endpointNamesOf(dp, stateDir)
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			out := []portJSON{}
			for _, p := range ports {
				out = append(out, portJSON{
					Proto: p.Binding.Proto.String(), HostIP: p.Binding.HostIP.String(), HostPort: p.Binding.HostPort,
					ContainerIP: p.ContainerIP.String(), ContainerPort: p.ContainerPort,
					Container: names[p.ContainerIP].Name, ContainerID: names[p.ContainerIP].ContainerID, Connections: conns[p.Binding],
					Allow: allowStrings(p.Allow), Denied: denied[p.Binding], Routed: p.Routed, NAT64: p.NAT64,
				})
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			return printPorts(cmd.OutOrStdout(), out)
		},
	}
	cmd.Flags().StringVar(&pinPath, "pin-path", defaultPinPath, "bpffs folder of the datapath's state")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addCNIStateDirFlag(cmd, &stateDir)
	return cmd
}

// printPorts writes the published ports as a table, each address with
// its port as it is dialled: an IPv6 one in brackets ([fd00::2]:80).
func printPorts(out io.Writer, ports []portJSON) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PROTO\tHOST\tCONTAINER\tNAME\tCONNECTIONS\tALLOW\tDENIED")
	for _, p := range ports {
		allow := "all"
		if len(p.Allow) > 0 {
			allow = strings.Join(p.Allow, ",")
		}
		host := joinHostPort(p.HostIP, p.HostPort)
		if p.Routed {
			host = "routed" // no host port: the container's own address
		}
		ctr := joinHostPort(p.ContainerIP, p.ContainerPort)
		if p.NAT64 {
			ctr += "(nat64)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%d\n", p.Proto, host, ctr,
			p.Container, p.Connections, allow, p.Denied)
	}
	return w.Flush()
}

// joinHostPort is an address and a port as they are dialled, an IPv6
// address in brackets; an address that does not parse is written as is.
func joinHostPort(addr string, port uint16) string {
	if a, err := netip.ParseAddr(addr); err == nil {
		return netip.AddrPortFrom(a, port).String()
	}
	return fmt.Sprintf("%s:%d", addr, port)
}

func allowStrings(ps []netip.Prefix) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}
