// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/hostfw"
	"github.com/bpfnet/bpfnet/loader"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type statusReport struct {
	PinPath     string           `json:"pin_path"`
	Attachments []attachmentJSON `json:"attachments"`
	Endpoints   []endpointJSON   `json:"endpoints"`
	Ports       int              `json:"published_ports"`
	// PortsIPv6 are those of Ports to IPv6 container addresses.
	PortsIPv6  int `json:"published_ports_ipv6"`
	CTEntries  int `json:"conntrack_entries"`
	CTCapacity int `json:"conntrack_capacity"`
	// HalfOpen* are the table of unassured published-port flows.
	HalfOpenEntries  int `json:"conntrack_half_open_entries"`
	HalfOpenCapacity int `json:"conntrack_half_open_capacity"`
	// CT6* and HalfOpen6* are their IPv6 twins, ct6 and ct6_syn.
	CT6Entries        int                    `json:"conntrack_ipv6_entries"`
	CT6Capacity       int                    `json:"conntrack_ipv6_capacity"`
	HalfOpen6Entries  int                    `json:"conntrack_ipv6_half_open_entries"`
	HalfOpen6Capacity int                    `json:"conntrack_ipv6_half_open_capacity"`
	Drops             map[string]uint64      `json:"drops"`
	Events            map[string]uint64      `json:"events"`
	Traffic           map[string]trafficJSON `json:"traffic"`
	// Containers without a veth of their own (status_modes.go).
	Containers []containerJSON `json:"containers"`
	// HostFirewall is the daemon's last check of the host firewall
	// (hostfw.go); null when no daemon has checked.
	HostFirewall *hostfw.Status `json:"host_firewall"`
	// Warnings are what the daemon left out of the state it applied, and
	// why (a container's port binding that cannot be honoured).
	Warnings []string `json:"warnings"`
}

// warningsRecord is where the daemon keeps the warnings of the state it
// applied last, for status to show.
func warningsRecord(pinPath string) string { return loader.WarningsRecord(pinPath) }

// maxWarnings bounds the record: a symbolic link's target is at most a
// page.
const maxWarnings = 4000

// recordWarnings replaces the record status reads with the warnings of
// the state the daemon applied (the source logged them already); the same
// warnings again are not written.
func recordWarnings(pinPath string, warnings []string) {
	if warnings == nil {
		warnings = []string{}
	}
	data, err := json.Marshal(warnings)
	for n := len(warnings); err == nil && len(data) > maxWarnings && n > 0; n-- {
		kept := append(slices.Clone(warnings[:n-1]), fmt.Sprintf("and %d more (see the log)", len(warnings)-n+1))
		data, err = json.Marshal(kept)
	}
	if err != nil {
		slog.Warn("recording warnings", "error", err)
		return
	}
	if old, _ := os.Readlink(warningsRecord(pinPath)); old == string(data) {
		return
	}
	if err := loader.WriteRecord(warningsRecord(pinPath), data); err != nil {
		slog.Warn("recording warnings", "error", err)
	}
}

// readWarnings reads the daemon's record; none is no warning.
func readWarnings(pinPath string) ([]string, error) {
	target, err := os.Readlink(warningsRecord(pinPath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	if err := json.Unmarshal([]byte(target), &out); err != nil {
		return nil, fmt.Errorf("malformed warnings record %s: %w", warningsRecord(pinPath), err)
	}
	return out, nil
}

type attachmentJSON struct {
	Interface string `json:"interface"`
	Direction string `json:"direction"`
	Program   string `json:"program"`
	Mode      string `json:"mode"`
	ProgramID uint32 `json:"program_id"`
}

type endpointJSON struct {
	Addr netip.Addr `json:"address"`
	// Container names the endpoint's container: a pod of the CNI agent
	// as namespace/pod, with its CNI container id; another by its veth.
	Container   string `json:"container,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	Ifindex     uint32 `json:"ifindex"`
	MAC         string `json:"mac"`
	// AllowForeignSource: it may send from addresses not its own.
	AllowForeignSource bool `json:"allow_foreign_source,omitempty"`
}

type trafficJSON struct {
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
}

func newStatusCmd() *cobra.Command {
	var pinPath, stateDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what is attached where, the endpoints and the table use",
		RunE: func(cmd *cobra.Command, _ []string) error {
			dp, err := datapath.OpenPinned(pinPath)
			if err != nil {
				return err
			}
			defer dp.Close()
			r := statusReport{PinPath: pinPath, Drops: map[string]uint64{}, Events: map[string]uint64{}, Traffic: map[string]trafficJSON{}}
			atts, err := loader.List(pinPath)
			if err != nil {
				return err
			}
			for _, a := range atts {
				r.Attachments = append(r.Attachments, attachmentJSON{a.Interface, a.Direction.String(), a.Program, a.Mode.String(), uint32(a.ProgramID)})
			}
			eps, err := dp.Endpoints()
			if err != nil {
				return err
			}
			names, nameWarnings := endpointNames(eps, stateDir)
			for _, e := range eps {
				n := names[e.Addr]
				r.Endpoints = append(r.Endpoints, endpointJSON{Addr: e.Addr, Container: n.Name, ContainerID: n.ContainerID,
					Ifindex: e.Ifindex, MAC: e.MAC.String(), AllowForeignSource: e.AllowForeignSource})
			}
			ports, err := dp.Published()
			if err != nil {
				return err
			}
			r.Ports = len(ports)
			for _, p := range ports {
				if p.ContainerIP.Is6() && !p.ContainerIP.Is4In6() {
					r.PortsIPv6++
				}
			}
			if r.CTEntries, r.CTCapacity, err = dp.CTUsage(); err != nil {
				return err
			}
			if r.HalfOpenEntries, r.HalfOpenCapacity, err = dp.HalfOpenUsage(); err != nil {
				return err
			}
			if r.CT6Entries, r.CT6Capacity, err = dp.CT6Usage(); err != nil {
				return err
			}
			if r.HalfOpen6Entries, r.HalfOpen6Capacity, err = dp.HalfOpen6Usage(); err != nil {
				return err
			}
			drops, err := dp.Drops()
			if err != nil {
				return err
			}
			for k, v := range drops {
				r.Drops[k.String()] = v
			}
			evs, err := dp.Events()
			if err != nil {
				return err
			}
			for k, v := range evs {
				r.Events[k.String()] = v
			}
			tr, err := dp.Traffic()
			if err != nil {
				return err
			}
			for k, v := range tr {
				r.Traffic[fmt.Sprint(k)] = trafficJSON(v)
			}
			if r.Containers, err = readContainers(pinPath); err != nil {
				return err
			}
			if r.HostFirewall, err = readHostFirewall(pinPath); err != nil {
				return err
			}
			if r.Warnings, err = readWarnings(pinPath); err != nil {
				return err
			}
			r.Warnings = append(r.Warnings, nameWarnings...)
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			return printStatus(cmd.OutOrStdout(), r)
		},
	}
	cmd.Flags().StringVar(&pinPath, "pin-path", defaultPinPath, "bpffs folder of the datapath's state")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addCNIStateDirFlag(cmd, &stateDir)
	return cmd
}

func printStatus(out io.Writer, r statusReport) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "pin path\t%s\n", r.PinPath)
	if r.PortsIPv6 > 0 {
		fmt.Fprintf(w, "published ports\t%d (%d IPv6)\n", r.Ports, r.PortsIPv6)
	} else {
		fmt.Fprintf(w, "published ports\t%d\n", r.Ports)
	}
	fmt.Fprintf(w, "conntrack\t%d / %d entries, %d / %d unassured\n", r.CTEntries, r.CTCapacity, r.HalfOpenEntries, r.HalfOpenCapacity)
	if r.CT6Capacity > 0 {
		fmt.Fprintf(w, "conntrack IPv6\t%d / %d entries, %d / %d unassured\n", r.CT6Entries, r.CT6Capacity, r.HalfOpen6Entries, r.HalfOpen6Capacity)
	}
	printHostFirewall(w, r.HostFirewall)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "INTERFACE\tHOOK\tPROGRAM\tMODE\tID")
	for _, a := range r.Attachments {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", a.Interface, a.Direction, a.Program, a.Mode, a.ProgramID)
	}
	fmt.Fprintln(w, "\nENDPOINT\tCONTAINER\tIFINDEX\tMAC\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES")
	for _, e := range r.Endpoints {
		t := r.Traffic[fmt.Sprint(e.Ifindex)]
		name := e.Container
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\n", e.Addr, name, e.Ifindex, e.MAC, t.RxPackets, t.RxBytes, t.TxPackets, t.TxBytes)
	}
	var foreign []string
	for _, e := range r.Endpoints {
		if e.AllowForeignSource {
			foreign = append(foreign, e.Addr.String())
		}
	}
	if len(foreign) > 0 {
		fmt.Fprintf(w, "\nallowed to send from foreign sources: %s\n", strings.Join(foreign, ", "))
	}
	printContainers(w, r.Containers)
	var drops []string
	for k, v := range r.Drops {
		if v > 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", k, v))
		}
	}
	sort.Strings(drops)
	if len(drops) == 0 {
		drops = []string{"none"}
	}
	fmt.Fprintf(w, "\ndrops\t%s\n", strings.Join(drops, " "))
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning\t%s\n", warn)
	}
	return w.Flush()
}

func ifName(index int) string {
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		return ifi.Name
	}
	return ""
}
