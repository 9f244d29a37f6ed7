// SPDX-License-Identifier: Apache-2.0

// Command bpfnet runs Docker's bridge networking (published ports,
// masquerade, hairpin) in eBPF instead of iptables, and shows what it does.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "bpfnet",
		Short:         "Docker bridge networking in eBPF: published ports, masquerade, conntrack",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newDownCmd(), newStatusCmd(), newPortsCmd(), newCTCmd(), newDemoCmd(), newBenchCmd(), newPerfCmd())
	return root
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	// Signals are caught from the start, so a daemon stopped while it is
	// still attaching finishes cleanly instead of dying half-way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bpfnet:", err)
		os.Exit(exitCode(err))
	}
}
