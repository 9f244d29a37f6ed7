// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/bpfnet/bpfnet/datapath"
)

// containerJSON is a container without a veth of its own on a bridge
// network: host mode, macvlan, ipvlan, sharing another's network
// namespace, or without a network.
type containerJSON struct {
	Container   string `json:"container"`
	ContainerID string `json:"container_id"`
	// Mode is host, macvlan, ipvlan, container or none.
	Mode string `json:"mode"`
	// Owner is the container whose network namespace a "container" one
	// shares, and whose counters carry its traffic.
	Owner   string `json:"owner,omitempty"`
	OwnerID string `json:"owner_id,omitempty"`
	Cgroup  string `json:"cgroup,omitempty"`
	// Attached: the cgroup skb programs run on the container's cgroup.
	Attached       bool                 `json:"attached"`
	Interfaces     []containerIfaceJSON `json:"interfaces,omitempty"`
	ComposeProject string               `json:"compose_project,omitempty"`
	ComposeService string               `json:"compose_service,omitempty"`
}

// containerIfaceJSON is an interface counted by cgroup, with its counters:
// for host mode every interface but loopback, for macvlan and ipvlan the
// container's device.
type containerIfaceJSON struct {
	Mode      string      `json:"mode"`
	Network   string      `json:"network"`
	Interface string      `json:"interface,omitempty"`
	Ifindex   int         `json:"ifindex,omitempty"`
	Addr      netip.Addr  `json:"address,omitzero"`
	Traffic   trafficJSON `json:"traffic"`
}

// readContainers reads the records of the containers without a veth of
// their own and the counters of those counted by cgroup.
func readContainers(pinPath string) ([]containerJSON, error) {
	recs, err := datapath.ReadContainerRecords(pinPath)
	if err != nil {
		return nil, fmt.Errorf("reading container records: %w", err)
	}
	if len(recs) == 0 {
		return nil, nil
	}
	counters, err := datapath.ReadCgroupTraffic(pinPath)
	if err != nil {
		return nil, err
	}
	out := make([]containerJSON, 0, len(recs))
	for _, r := range recs {
		c := containerJSON{
			Container: r.Container, ContainerID: r.ContainerID, Mode: r.Mode, Owner: r.Owner, OwnerID: r.OwnerID,
			Cgroup: r.CgroupPath, Attached: r.Attached, ComposeProject: r.ComposeProject, ComposeService: r.ComposeService,
		}
		for _, i := range r.Interfaces {
			ci := containerIfaceJSON{Mode: i.Mode, Network: i.Network, Interface: i.Interface, Ifindex: i.Ifindex, Addr: i.Addr}
			if r.Account != 0 {
				ci.Traffic = trafficJSON(datapath.SumCgroupTraffic(counters, r.Account, i.Ifindex))
			}
			c.Interfaces = append(c.Interfaces, ci)
		}
		out = append(out, c)
	}
	return out, nil
}

func shortContainerID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// printContainers prints the containers without a veth of their own: one
// line per counted interface, and one for each container sharing a
// namespace or without a network.
func printContainers(w io.Writer, cs []containerJSON) {
	if len(cs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nCONTAINER\tID\tMODE\tNETWORK\tINTERFACE\tCOUNTED\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, c := range cs {
		counted := "no"
		if c.Attached {
			counted = "cgroup"
		}
		switch c.Mode {
		case datapath.ModeContainer:
			// Its traffic is in its owner's counters; by cgroup (on
			// this container's cgroup too) when the owner's is.
			counted = "owner's"
			if c.Attached {
				counted = "owner's, cgroup"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\tshares %s\t-\t%s\t-\t-\t-\t-\n", c.Container, shortContainerID(c.ContainerID), c.Mode, dash(c.Owner), counted)
			continue
		case datapath.ModeNone:
			fmt.Fprintf(w, "%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\n", c.Container, shortContainerID(c.ContainerID), c.Mode)
			continue
		}
		for _, i := range c.Interfaces {
			t := i.Traffic
			iface := i.Interface
			if i.Mode == datapath.ModeHost {
				iface = "all but lo"
			}
			net := i.Network
			if i.Addr.IsValid() {
				net += " " + i.Addr.String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", c.Container, shortContainerID(c.ContainerID), i.Mode,
				strings.TrimSpace(net), dash(iface), counted, t.RxPackets, t.RxBytes, t.TxPackets, t.TxBytes)
		}
		if len(c.Interfaces) == 0 {
			fmt.Fprintf(w, "%s\t%s\t%s\t-\t-\t%s\t-\t-\t-\t-\n", c.Container, shortContainerID(c.ContainerID), c.Mode, counted)
		}
	}
}
