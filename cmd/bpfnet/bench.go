// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/bench"
	"github.com/bpfnet/bpfnet/lab/cnilab"
)

// benchFlags are the settings of `bpfnet bench`.
type benchFlags struct {
	quick    bool
	runs     int
	duration time.Duration
	jsonPath string
	plotPath string
	render   string
	modes    []string
	idle     bool
	cc       string
	flood    bool
	syns     int
	cni      bool
	cniBin   string
}

func newBenchCmd() *cobra.Command {
	f := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure routing, iptables NAT and the eBPF datapath side by side in namespace labs",
		Long: `bench builds a namespace lab per mode and measures, through a published
port from an external namespace: TCP bulk (iperf3, 1 and 4 streams) and its
CPU cost, the UDP 64-byte packet rate, TCP_RR with p50/p99 latency, TCP_CRR,
container egress through masquerade, RR and CRR with up to 10,000 other
published ports, and the control plane (installing, publishing and removing
ports; memory per port). --flood adds, for iptables and ebpf, a SYN flood
from forged sources at a published port, in a lab of its own: the rate it
reached, the table it fills, the established connections that survived it
and the latency of new connections made during it. --cni adds, for
iptables and ebpf, a pod's hostPort on a CNI node (TCP_RR and TCP_CRR, with
no other pod and with 1,000 other pods' hostPorts): the reference portmap
plugin after bridge with ipMasq in the iptables column, bpfnet-cni in the
ebpf column.

Modes: routing (no datapath; the external host routes to the container's
address: the ceiling), iptables (Docker's NAT rules, kernel only),
nftables (the same rules as Docker 29's nftables table), ebpf (bpfnet with the fast path) and ebpf-redirect (bpfnet redirecting
only, no NAT; the external host addresses the container). Each mode runs in
a fresh lab, and the modes are interleaved run by run. Load generators and
servers are pinned to different cores. While it runs, bench holds
/dev/cpu_dma_latency at 0 (as tuned's latency-performance profile does):
idle CPUs poll instead of halting, so a cross-core wake-up costs little in
every mode and request/response figures show the datapath, not the idle
states (on a VM, waking a halted vCPU goes through the hypervisor).
--allow-idle measures with the machine's idle states instead.

The lab's TCP endpoints use one congestion control in every mode:
--congestion-control auto (the default) takes cubic, the kernel's default,
where namespaces may use it and reno otherwise, never a host default of
bbr: without the fq qdisc bbr paces with a timer per burst, which on a VM
caps every mode alike (see docs/benchmarks.md).

The table goes to stdout (median [min-max] of the runs, and the ratios
ebpf/iptables, ebpf/routing, ebpf/ebpf-redirect, ebpf/nftables); progress to stderr.`,
		Example: `  bpfnet bench --quick
  bpfnet bench --json docs/bench.json --plot docs/benchmarks.svg
  bpfnet bench --render docs/bench.json --plot docs/benchmarks.svg`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.render != "" {
				return renderReport(cmd, f)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			opts, err := f.options(cmd)
			if err != nil {
				return err
			}
			if opts.CNI && opts.CNIBinDir == "" {
				dir, err := os.MkdirTemp("", "bpfnet-bench-cni-bin-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				fmt.Fprintln(cmd.ErrOrStderr(), "building the CNI plugins (go build, from this checkout)")
				if err := cnilab.BuildPlugins("go", dir); err != nil {
					return fmt.Errorf("building the CNI plugins (or give --cni-bin-dir): %w", err)
				}
				opts.CNIBinDir = dir
			}
			opts.Command = "bpfnet " + strings.Join(os.Args[1:], " ")
			opts.Progress = cmd.ErrOrStderr()
			rep, runErr := bench.Run(ctx, opts)
			if rep == nil {
				return runErr
			}
			if err := rep.WriteTable(cmd.OutOrStdout()); err != nil {
				return err
			}
			if f.jsonPath != "" {
				if err := writeFile(f.jsonPath, rep.WriteJSON); err != nil {
					return err
				}
			}
			if f.plotPath != "" {
				if err := writeFile(f.plotPath, chartWriter(rep, f.plotPath)); err != nil {
					return err
				}
			}
			return runErr
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.quick, "quick", false, "3 runs of short measurements (CI)")
	fl.IntVar(&f.runs, "runs", 0, "runs of every mode (default 5, 3 with --quick)")
	fl.DurationVar(&f.duration, "duration", 0, "length of each RR, CRR and UDP measurement; iperf3 runs take it in whole seconds (default 5s, 500ms with --quick)")
	fl.StringVar(&f.jsonPath, "json", "", "write every run's figures and the summary as JSON to this file")
	fl.StringVar(&f.plotPath, "plot", "", "write the chart to this file: PNG if it ends in .png, else SVG")
	fl.StringVar(&f.render, "render", "", "measure nothing: read a report that --json wrote, print its table and draw its chart (--plot)")
	fl.BoolVar(&f.idle, "allow-idle", false, "let idle CPUs enter idle states instead of polling during the run")
	fl.StringVar(&f.cc, "congestion-control", bench.CongestionAuto, "TCP congestion control of the lab's endpoints (auto: cubic, else reno; or one of net.ipv4.tcp_allowed_congestion_control)")
	fl.StringSliceVar(&f.modes, "mode", nil, "measure only these modes (routing, iptables, ebpf, ebpf-redirect, nftables)")
	fl.BoolVar(&f.flood, "flood", false, "also measure a SYN flood from forged sources at a published port (iptables and ebpf): rate, table use, established flows kept, new-connection latency")
	fl.IntVar(&f.syns, "flood-syns", 100000, "SYNs of the --flood measurement")
	fl.BoolVar(&f.cni, "cni", false, "also measure a pod's hostPort on a CNI node: the reference portmap plugin (iptables column) against bpfnet-cni (ebpf column)")
	fl.StringVar(&f.cniBin, "cni-bin-dir", "", "folder of the CNI plugins for --cni: bridge, host-local, portmap (speaking CNI 1.1.0, not Debian's 1.1.1) and bpfnet (default: built with go from this checkout)")
	return cmd
}

func (f *benchFlags) options(cmd *cobra.Command) (bench.Options, error) {
	opts := bench.Options{Quick: f.quick, Runs: 5, Duration: 5 * time.Second}
	if f.quick {
		opts = quickBenchOptions()
	}
	if cmd.Flags().Changed("runs") {
		if f.runs < 1 {
			return opts, fmt.Errorf("invalid --runs %d: at least 1", f.runs)
		}
		opts.Runs = f.runs
	}
	if cmd.Flags().Changed("duration") {
		if f.duration < 100*time.Millisecond {
			return opts, fmt.Errorf("invalid --duration %s: at least 100ms", f.duration)
		}
		opts.Duration = f.duration
		opts.ScaleDuration = 0
	}
	opts.AllowIdle = f.idle
	opts.Flood = f.flood
	if f.syns < 1000 {
		return opts, fmt.Errorf("invalid --flood-syns %d: at least 1000", f.syns)
	}
	opts.FloodSYNs = f.syns
	opts.CNI, opts.CNIBinDir = f.cni, f.cniBin
	opts.Congestion = f.cc
	for _, m := range f.modes {
		opts.Modes = append(opts.Modes, bench.Mode(m))
	}
	return opts, nil
}

// renderReport prints the table of the report in f.render and draws its
// chart to f.plotPath.
func renderReport(cmd *cobra.Command, f *benchFlags) error {
	data, err := os.ReadFile(f.render)
	if err != nil {
		return err
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return fmt.Errorf("reading %s: %w", f.render, err)
	}
	if err := rep.WriteTable(cmd.OutOrStdout()); err != nil {
		return err
	}
	if f.plotPath == "" {
		return nil
	}
	return writeFile(f.plotPath, chartWriter(&rep, f.plotPath))
}

// chartWriter draws rep's chart in the format path's extension names.
func chartWriter(rep *bench.Report, path string) func(io.Writer) error {
	if strings.EqualFold(filepath.Ext(path), ".png") {
		return rep.WritePNG
	}
	return rep.WriteSVG
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(w io.Writer) error) error {
	fh, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if err := write(fh); err != nil {
		fh.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := fh.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// quickBenchOptions are the settings of `bpfnet bench --quick`, which the
// demo uses too.
func quickBenchOptions() bench.Options {
	return bench.Options{
		Quick:             true,
		Runs:              3,
		Duration:          500 * time.Millisecond,
		ScaleDuration:     250 * time.Millisecond,
		PublishOneRepeats: 1,
	}
}
