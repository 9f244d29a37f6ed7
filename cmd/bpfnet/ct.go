// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/datapath"
)

type ctJSON struct {
	Kind       string `json:"kind"`
	Reply      bool   `json:"reply"`
	Unassured  bool   `json:"unassured"`
	Proto      uint8  `json:"proto"`
	Src        string `json:"src"`
	Dst        string `json:"dst"`
	NewSrc     string `json:"translated_src"`
	NewDst     string `json:"translated_dst"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	ExpiresSec int64  `json:"expires_in_seconds"`
	// Container is the flow's container (the endpoint whose address the
	// entry holds), named as status names it; ContainerID is a pod's CNI
	// container id.
	Container   string `json:"container,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	}
	return fmt.Sprint(p)
}

func newCTCmd() *cobra.Command {
	var pinPath, proto, addr, stateDir string
	var port uint16
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ct",
		Short: "List connection-tracking entries (filter by --proto, --addr, --port)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var want netip.Addr
			if addr != "" {
				a, err := netip.ParseAddr(addr)
				if err != nil {
					return fmt.Errorf("invalid --addr %q: %w", addr, err)
				}
				want = a
			}
			if proto != "" && proto != "tcp" && proto != "udp" && proto != "icmp" {
				return fmt.Errorf("invalid --proto %q: want tcp, udp or icmp", proto)
			}
			dp, err := datapath.OpenPinned(pinPath)
			if err != nil {
				return err
			}
			defer dp.Close()
			entries, err := dp.Conntrack()
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
			match := func(e datapath.CTEntry) bool {
				if proto != "" && protoName(e.Key.Proto) != proto {
					return false
				}
				ts := []netip.AddrPort{e.Key.Src, e.Key.Dst, e.Translated.Src, e.Translated.Dst}
				if want.IsValid() {
					found := false
					for _, t := range ts {
						found = found || t.Addr() == want
					}
					if !found {
						return false
					}
				}
				if port != 0 {
					found := false
					for _, t := range ts {
						found = found || t.Port() == port
					}
					if !found {
						return false
					}
				}
				return true
			}
			var out []ctJSON
			for _, e := range entries {
				if !match(e) {
					continue
				}
				j := ctRow(e)
				for _, t := range []netip.AddrPort{e.Key.Src, e.Key.Dst, e.Translated.Src, e.Translated.Dst} {
					if n, ok := names[t.Addr()]; ok {
						j.Container, j.ContainerID = n.Name, n.ContainerID
						break
					}
				}
				out = append(out, j)
			}
			sort.Slice(out, func(i, j int) bool {
				if out[i].Src != out[j].Src {
					return out[i].Src < out[j].Src
				}
				return out[i].Dst < out[j].Dst
			})
			if asJSON {
				if out == nil {
					out = []ctJSON{}
				}
				return writeJSON(cmd.OutOrStdout(), out)
			}
			return printCT(cmd.OutOrStdout(), out)
		},
	}
	cmd.Flags().StringVar(&pinPath, "pin-path", defaultPinPath, "bpffs folder of the datapath's state")
	cmd.Flags().StringVar(&proto, "proto", "", "only this protocol: tcp, udp or icmp")
	cmd.Flags().StringVar(&addr, "addr", "", "only entries with this address on either side")
	cmd.Flags().Uint16Var(&port, "port", 0, "only entries with this port on either side")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addCNIStateDirFlag(cmd, &stateDir)
	return cmd
}

// ctRow is an entry as ct prints it: each address with its port as it is
// dialled, an IPv6 one in brackets ([fd00::2]:80), in JSON too.
func ctRow(e datapath.CTEntry) ctJSON {
	return ctJSON{
		Kind: e.Kind.String(), Reply: e.Reply, Unassured: e.Unassured, Proto: e.Key.Proto,
		Src: e.Key.Src.String(), Dst: e.Key.Dst.String(),
		NewSrc: e.Translated.Src.String(), NewDst: e.Translated.Dst.String(),
		Packets: e.Packets, Bytes: e.Bytes, ExpiresSec: int64(e.Expires / time.Second),
	}
}

// printCT writes the entries as a table.
func printCT(out io.Writer, entries []ctJSON) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KIND\tDIR\tPROTO\tTUPLE\tTRANSLATED\tCONTAINER\tPKTS\tBYTES\tEXPIRES")
	for _, e := range entries {
		dir := "orig"
		if e.Reply {
			dir = "reply"
		}
		if e.Unassured {
			// In the table of unassured flows: the client has not
			// answered the container yet.
			dir += ",unassured"
		}
		name := e.Container
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s -> %s\t%s -> %s\t%s\t%d\t%d\t%ds\n", e.Kind, dir, protoName(e.Proto), e.Src, e.Dst, e.NewSrc, e.NewDst, name, e.Packets, e.Bytes, e.ExpiresSec)
	}
	return w.Flush()
}
