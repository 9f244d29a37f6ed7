// Command bpfnet runs Docker's bridge networking (published ports,
// masquerade, hairpin) in eBPF instead of iptables, and shows what it does.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "bpfnet",
		Short:         "Docker bridge networking in eBPF: published ports, masquerade, conntrack",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newDownCmd(), newStatusCmd(), newPortsCmd(), newCTCmd(), newDemoCmd())
	return root
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "bpfnet:", err)
		os.Exit(1)
	}
}
