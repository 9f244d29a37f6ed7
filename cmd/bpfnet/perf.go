// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/bench"
)

// newPerfCmd is the benchmark's load generator and server: netperf-like
// TCP_RR, TCP_CRR and UDP packet-rate tools that `bpfnet bench` runs as
// processes of their own, in a namespace and pinned to a core. Hidden: it
// is an agent of bench, not a user command.
func newPerfCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "perf",
		Short:  "Load generator and server of bpfnet bench",
		Hidden: true,
	}
	var listen string
	server := &cobra.Command{
		Use:   "server",
		Short: "Echo TCP connections and count UDP datagrams on --listen until stopped",
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := netip.ParseAddrPort(listen)
			if err != nil {
				return fmt.Errorf("invalid --listen %q: %w", listen, err)
			}
			s, err := bench.Listen(addr)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]string{"listening": s.Addr().String()}); err != nil {
				return err
			}
			return s.Serve(ctx)
		},
	}
	server.Flags().StringVar(&listen, "listen", "0.0.0.0:5001", "address to serve on, TCP and UDP")

	client := func(use, short string, run func(target netip.AddrPort, d time.Duration, size int) (any, error)) *cobra.Command {
		var target string
		var d time.Duration
		var size int
		c := &cobra.Command{
			Use:   use,
			Short: short,
			RunE: func(cmd *cobra.Command, _ []string) error {
				addr, err := netip.ParseAddrPort(target)
				if err != nil {
					return fmt.Errorf("invalid --target %q: %w", target, err)
				}
				if d <= 0 {
					return fmt.Errorf("invalid --duration %s", d)
				}
				res, err := run(addr, d, size)
				if err != nil {
					return err
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			},
		}
		c.Flags().StringVar(&target, "target", "", "address of the perf server (ip:port)")
		c.Flags().DurationVar(&d, "duration", 5*time.Second, "how long to run")
		if use == "udp" {
			c.Flags().IntVar(&size, "size", 64, "UDP payload bytes")
		}
		c.MarkFlagRequired("target")
		return c
	}
	cmd.AddCommand(server,
		client("rr", "Request/response of 1 byte on one TCP connection; prints rate and p50/p99 latency as JSON",
			func(t netip.AddrPort, d time.Duration, _ int) (any, error) {
				r, err := bench.RR(t, d)
				return r, err
			}),
		client("crr", "Connect, 1-byte request/response, close, repeated; prints the rate as JSON",
			func(t netip.AddrPort, d time.Duration, _ int) (any, error) {
				r, err := bench.CRR(t, d)
				return r, err
			}),
		client("udp", "Send UDP datagrams as fast as possible; prints the rate the server received as JSON",
			func(t netip.AddrPort, d time.Duration, size int) (any, error) {
				r, err := bench.UDP(t, d, size)
				return r, err
			}),
	)
	return cmd
}
