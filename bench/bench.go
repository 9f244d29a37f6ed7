// SPDX-License-Identifier: Apache-2.0

// Package bench measures bpfnet's eBPF datapath side by side with
// Docker's iptables NAT and with plain routing, in namespace labs.
//
// Each mode runs in a lab of its own (lab.New, closed after), so that no
// iptables or conntrack state of one touches another, and the modes are
// interleaved run by run so that drift of the machine hits all of them
// alike. The load generators and servers are separate processes pinned to
// different cores: iperf3 for bulk TCP, and for TCP_RR, TCP_CRR and the
// UDP packet rate the netperf-like tools of this package, run as hidden
// `bpfnet perf` subcommands of the bpfnet binary itself.
//
// What it needs: root, bpffs at /sys/fs/bpf, nsenter and taskset
// (util-linux), iperf3, iptables-restore/-save, nft, and Linux 6.6+ for tcx
// (older kernels get clsact). It touches nothing outside the namespaces it
// creates, and never asserts a speed: it reports what it measured.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/daemon"
	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/iptables"
	"github.com/bpfnet/bpfnet/datapath/nftables"
	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
)

// Options are the settings of a benchmark.
type Options struct {
	// Runs is how many times every mode is measured (default 5).
	Runs int
	// Quick marks a CI run (recorded in the report).
	Quick bool
	// Duration of each RR, CRR and UDP measurement (default 5s).
	Duration time.Duration
	// ScaleDuration of each RR and CRR measurement of the scaling
	// figures (default Duration/2).
	ScaleDuration time.Duration
	// BulkSeconds is the length of each iperf3 run, whole seconds as
	// iperf3 takes them (default Duration rounded, at least 1).
	BulkSeconds int
	// PublishOneRepeats is how many times publishing and removing one port
	// is timed in a run; the run's figure is their median (default 3).
	PublishOneRepeats int
	// Modes to measure (default all, in the order of Modes).
	Modes []Mode
	// Binary is the bpfnet executable whose `perf` subcommands generate
	// load (default os.Executable()).
	Binary string
	// ClientCPU and ServerCPU are the cores load generators and servers
	// are pinned to (default 0 and 1; both 0 on a single core).
	ClientCPU, ServerCPU int
	// Congestion is the TCP congestion control of the lab's endpoints
	// (default CongestionAuto; see pickCongestion).
	Congestion string
	// AllowIdle lets idle CPUs enter their idle states during the run.
	// By default Run holds /dev/cpu_dma_latency at 0 (see holdCPULatency)
	// so that wake-ups cost the same small amount in every mode.
	AllowIdle bool
	// Progress receives a line per step (default io.Discard).
	Progress io.Writer
	// Command is recorded in the report.
	Command string
	// Flood adds the SYN flood measurement (flood.go) to the ebpf and
	// iptables modes; FloodSYNs is its size (default 100,000).
	Flood     bool
	FloodSYNs int
	// CNI adds the CNI measurement (cni.go) to the iptables and ebpf
	// modes: a pod's hostPort through portmap and through bpfnet-cni.
	// CNIBinDir holds the plugins (bridge, host-local, portmap, bpfnet)
	// at a version that speaks CNI 1.1.0.
	CNI       bool
	CNIBinDir string
}

func (o *Options) defaults() error {
	if o.Runs <= 0 {
		o.Runs = 5
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.ScaleDuration <= 0 {
		o.ScaleDuration = o.Duration / 2
	}
	if o.BulkSeconds <= 0 {
		o.BulkSeconds = max(1, int(math.Round(o.Duration.Seconds())))
	}
	if o.FloodSYNs <= 0 {
		o.FloodSYNs = 100000
	}
	if o.PublishOneRepeats <= 0 {
		o.PublishOneRepeats = 3
	}
	if len(o.Modes) == 0 {
		o.Modes = Modes
	}
	for _, m := range o.Modes {
		if !slices.Contains(Modes, m) {
			return fmt.Errorf("unknown mode %q", m)
		}
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding the bpfnet binary: %w", err)
		}
		o.Binary = exe
	}
	if o.ClientCPU == 0 && o.ServerCPU == 0 {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() >= 2 {
			var cpus []int
			for i := 0; len(cpus) < 2 && i < 1024; i++ {
				if set.IsSet(i) {
					cpus = append(cpus, i)
				}
			}
			o.ClientCPU, o.ServerCPU = cpus[0], cpus[1]
		}
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Congestion == "" {
		o.Congestion = CongestionAuto
	}
	return nil
}

// Ports of the lab.
const (
	perfPort       = 5001 // perf server in the container: TCP and UDP
	iperfPort      = 5201 // iperf3 in the container
	egressPerfPort = 5002 // perf server in the external namespace
	egressIperf    = 5202 // iperf3 in the external namespace
	scaleBase      = 10000
	controlBase    = 20000
)

// Run measures every mode Runs times, interleaved, and summarises. A
// measurement that fails is recorded in its run's Errors and the others go
// on; Run then returns the report with an error saying how many failed.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if err := checkTools(); err != nil {
		return nil, err
	}
	cc, err := pickCongestion(opts.Congestion)
	if err != nil {
		return nil, err
	}
	opts.Congestion = cc
	fmt.Fprintf(opts.Progress, "TCP congestion control of the lab's endpoints: %s\n", cc)
	rep := &Report{
		Command: opts.Command,
		Started: time.Now().UTC(),
		Kernel:  kernelRelease(),
		CPU:     cpuModel(),
		CPUs:    runtime.NumCPU(),
		Settings: Settings{
			Runs: opts.Runs, Quick: opts.Quick, DurationSec: opts.Duration.Seconds(),
			ScaleDuration: opts.ScaleDuration.Seconds(), BulkSeconds: opts.BulkSeconds,
			ClientCPU: opts.ClientCPU, ServerCPU: opts.ServerCPU, UDPSize: udpSize,
			IdlePolling: !opts.AllowIdle, Congestion: cc,
		},
		Notes:     reportNotes,
		Scenarios: Scenarios(),
	}
	if opts.Flood {
		rep.Scenarios = append(rep.Scenarios, FloodScenarios()...)
		rep.Notes = append(rep.Notes, floodNotes...)
		rep.Settings.FloodSYNs = opts.FloodSYNs
	}
	if opts.CNI {
		if err := checkCNI(&opts); err != nil {
			return nil, err
		}
		rep.Scenarios = append(rep.Scenarios, CNIScenarios()...)
		rep.Notes = append(rep.Notes, cniNotes...)
	}
	if err := lab.Sweep(); err != nil {
		return nil, fmt.Errorf("removing leftover labs: %w", err)
	}
	if !opts.AllowIdle {
		release, err := holdCPULatency()
		if err != nil {
			return nil, fmt.Errorf("keeping idle CPUs polling (or allow idle states): %w", err)
		}
		defer release()
	}
	failed := 0
	for run := 1; run <= opts.Runs; run++ {
		for _, m := range opts.Modes {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			fmt.Fprintf(opts.Progress, "run %d/%d, %s\n", run, opts.Runs, m)
			r := measureMode(ctx, &opts, run, m)
			if opts.Flood && floodModes[m] {
				measureFlood(ctx, &opts, m, &r)
			}
			if _, ok := cniPlugins[m]; opts.CNI && ok {
				measureCNI(ctx, &opts, m, &r)
			}
			for k, e := range r.Errors {
				fmt.Fprintf(opts.Progress, "  %s FAILED: %s\n", k, e)
			}
			failed += len(r.Errors)
			rep.Runs = append(rep.Runs, r)
		}
	}
	rep.Finished = time.Now().UTC()
	rep.Summary = Summary(rep.Scenarios, rep.Runs)
	if failed > 0 {
		return rep, fmt.Errorf("%d measurements failed (see the errors in the report)", failed)
	}
	return rep, nil
}

func checkTools() error {
	for _, t := range []string{"nsenter", "taskset", "iperf3", "iptables-save", "iptables-restore", "nft"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("the benchmark needs %s: %w", t, err)
		}
	}
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// env is one mode's lab with its datapath and servers.
type env struct {
	opts *Options
	mode Mode
	topo *lab.Topology
	c    *lab.Container
	ext  *lab.External
	dp   datapath.Datapath
	pin  string
	// state is the datapath's discovered state without ports.
	state datapath.State
	// target is the address the external host sends to: the host's
	// uplink address through published ports, or the container's;
	// target6 its IPv6 counterpart.
	target, target6 netip.Addr
	// servers to stop when the lab closes.
	servers []*exec.Cmd
}

// measureMode builds a lab for m, takes every figure, and closes the lab.
func measureMode(ctx context.Context, opts *Options, run int, m Mode) RunResult {
	r := RunResult{Run: run, Mode: m, Figures: map[string]float64{}, Errors: map[string]string{}, Notes: map[string]string{}}
	e, err := newEnv(ctx, opts, m, 0)
	if e != nil {
		defer func() {
			if err := e.close(); err != nil {
				fmt.Fprintf(opts.Progress, "  closing the %s lab: %v\n", m, err)
			}
		}()
	}
	if err != nil {
		for _, s := range Scenarios() {
			if s.AppliesTo(m) {
				r.Errors[s.Key] = "setting up the lab: " + err.Error()
			}
		}
		return r
	}
	set := func(key string, v float64) {
		r.Figures[key] = v
		sc := Scenarios()[slices.IndexFunc(Scenarios(), func(s Scenario) bool { return s.Key == key })]
		fmt.Fprintf(opts.Progress, "  %-44s %s %s\n", sc.Name, formatValue(v), sc.Unit)
	}
	fail := func(err error, keys ...string) {
		for _, k := range keys {
			r.Errors[k] = err.Error()
		}
	}
	d := opts.Duration
	began := time.Now()

	// Bulk, one stream, with the CPU it costs.
	if res, cpu, err := e.iperf(ctx, &e.ext.Namespace, &e.c.Namespace, e.target, iperfPort, 1); err != nil {
		fail(err, KeyBulk1, KeyCPUPerGbit)
	} else {
		set(KeyBulk1, res.BitsPerSecond/1e9)
		if gbit := res.Bytes * 8 / 1e9; gbit > 0 {
			set(KeyCPUPerGbit, cpu/gbit)
		}
	}
	if res, _, err := e.iperf(ctx, &e.ext.Namespace, &e.c.Namespace, e.target, iperfPort, 4); err != nil {
		fail(err, KeyBulk4)
	} else {
		set(KeyBulk4, res.BitsPerSecond/1e9)
	}
	var udp UDPResult
	if err := e.perf(ctx, &e.ext.Namespace, "udp", netip.AddrPortFrom(e.target, perfPort), d, &udp); err != nil {
		fail(err, KeyUDP)
	} else {
		set(KeyUDP, udp.Rate/1e3)
		r.Notes[KeyUDP] = fmt.Sprintf("sent %d, received %d", udp.Sent, udp.Received)
	}
	var rr RRResult
	if err := e.perf(ctx, &e.ext.Namespace, "rr", netip.AddrPortFrom(e.target, perfPort), d, &rr); err != nil {
		fail(err, KeyRR, KeyRRp50, KeyRRp99)
	} else {
		set(KeyRR, rr.Rate)
		set(KeyRRp50, rr.P50us)
		set(KeyRRp99, rr.P99us)
	}
	var crr CRRResult
	if err := e.perf(ctx, &e.ext.Namespace, "crr", netip.AddrPortFrom(e.target, perfPort), d, &crr); err != nil {
		fail(err, KeyCRR)
	} else {
		set(KeyCRR, crr.Rate)
		if crr.Failures > 0 {
			r.Notes[KeyCRR] = fmt.Sprintf("%d connections failed", crr.Failures)
		}
	}

	// The same over IPv6: a published [::] port of the host's IPv6
	// address (routing and ebpf-redirect: the container's).
	var rr6 RRResult
	if err := e.perf(ctx, &e.ext.Namespace, "rr", netip.AddrPortFrom(e.target6, perfPort), d, &rr6); err != nil {
		fail(err, KeyRR6)
	} else {
		set(KeyRR6, rr6.Rate)
	}
	var crr6 CRRResult
	if err := e.perf(ctx, &e.ext.Namespace, "crr", netip.AddrPortFrom(e.target6, perfPort), d, &crr6); err != nil {
		fail(err, KeyCRR6)
	} else {
		set(KeyCRR6, crr6.Rate)
		if crr6.Failures > 0 {
			r.Notes[KeyCRR6] = fmt.Sprintf("%d connections failed", crr6.Failures)
		}
	}

	// Egress: the container reaches the external host through masquerade
	// (routing and ebpf-redirect: by route, untranslated).
	extAddr := addrOf(e.ext.Addr)
	if res, _, err := e.iperf(ctx, &e.c.Namespace, &e.ext.Namespace, extAddr, egressIperf, 1); err != nil {
		fail(err, KeyEgressBulk)
	} else {
		set(KeyEgressBulk, res.BitsPerSecond/1e9)
	}
	var ecrr CRRResult
	if err := e.perf(ctx, &e.c.Namespace, "crr", netip.AddrPortFrom(extAddr, egressPerfPort), d, &ecrr); err != nil {
		fail(err, KeyEgressCRR)
	} else {
		set(KeyEgressCRR, ecrr.Rate)
		if ecrr.Failures > 0 {
			r.Notes[KeyEgressCRR] = fmt.Sprintf("%d connections failed", ecrr.Failures)
		}
	}

	// Scaling: the same target, last inserted, behind n other ports. The
	// step from none to 10,000 is the install figure and the way back the
	// removal; the other control-plane figures follow.
	for _, n := range ScalePorts {
		if n == ControlPorts && e.dp != nil {
			if err := e.apply(ctx, e.ports(nil)); err != nil {
				fail(fmt.Errorf("going back to the base ports: %w", err), KeyScaleRR(n), KeyScaleCRR(n), KeyInstall)
				continue
			}
			ms, err := e.timedApply(ctx, e.ports(scalePorts(e.cAddr(), n)))
			if err != nil {
				fail(fmt.Errorf("installing %d mappings: %w", n, err), KeyScaleRR(n), KeyScaleCRR(n), KeyInstall)
				continue
			}
			set(KeyInstall, ms)
		} else if err := e.apply(ctx, e.ports(scalePorts(e.cAddr(), n))); err != nil {
			fail(fmt.Errorf("publishing %d ports: %w", n, err), KeyScaleRR(n), KeyScaleCRR(n))
			continue
		}
		var rr RRResult
		if err := e.perf(ctx, &e.ext.Namespace, "rr", netip.AddrPortFrom(e.target, perfPort), opts.ScaleDuration, &rr); err != nil {
			fail(err, KeyScaleRR(n))
		} else {
			set(KeyScaleRR(n), rr.Rate)
		}
		var crr CRRResult
		if err := e.perf(ctx, &e.ext.Namespace, "crr", netip.AddrPortFrom(e.target, perfPort), opts.ScaleDuration, &crr); err != nil {
			fail(err, KeyScaleCRR(n))
		} else {
			set(KeyScaleCRR(n), crr.Rate)
		}
	}
	if e.dp != nil {
		e.controlPlane(ctx, set, fail)
	}
	fmt.Fprintf(opts.Progress, "  (%s, %s)\n", m, time.Since(began).Round(100*time.Millisecond))
	if len(r.Errors) == 0 {
		r.Errors = nil
	}
	if len(r.Notes) == 0 {
		r.Notes = nil
	}
	return r
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

func (e *env) cAddr() netip.Addr { return addrOf(e.c.Addr) }

// basePorts are what every lab publishes; the perf server's TCP port
// comes last, so that it is the last inserted whatever else is there (its
// IPv6 mapping, on [::], another table's, comes first).
func basePorts(c netip.Addr) []datapath.PortMapping {
	return []datapath.PortMapping{
		{Proto: datapath.TCP, HostPort: perfPort, ContainerIP: ctr6, ContainerPort: perfPort, Container: "c0"},
		{Proto: datapath.TCP, HostPort: iperfPort, ContainerIP: c, ContainerPort: iperfPort, Container: "c0"},
		{Proto: datapath.UDP, HostPort: perfPort, ContainerIP: c, ContainerPort: perfPort, Container: "c0"},
		{Proto: datapath.TCP, HostPort: perfPort, ContainerIP: c, ContainerPort: perfPort, Container: "c0"},
	}
}

// scalePorts are n other TCP ports of the container (nothing listens on
// them).
func scalePorts(c netip.Addr, n int) []datapath.PortMapping {
	out := make([]datapath.PortMapping, n)
	for i := range out {
		p := uint16(scaleBase + i)
		out[i] = datapath.PortMapping{Proto: datapath.TCP, HostPort: p, ContainerIP: c, ContainerPort: p, Container: "c0"}
	}
	return out
}

// ports is the state with extra mappings inserted before the base ones.
func (e *env) ports(extra []datapath.PortMapping) datapath.State {
	s := e.state
	s.Ports = append(slices.Clone(extra), basePorts(e.cAddr())...)
	return s
}

// apply programs the datapath in the lab's host namespace.
func (e *env) apply(ctx context.Context, s datapath.State) error {
	if e.dp == nil {
		return nil
	}
	return e.topo.Host.Do(func() error { return e.dp.Apply(ctx, s) })
}

// timedApply is apply with its wall-clock time in milliseconds.
func (e *env) timedApply(ctx context.Context, s datapath.State) (float64, error) {
	start := time.Now()
	err := e.apply(ctx, s)
	return float64(time.Since(start).Nanoseconds()) / 1e6, err
}

// timedReconcile sets src to s and times the daemon's reconcile to it,
// in the lab's host namespace, in milliseconds.
func (e *env) timedReconcile(ctx context.Context, d *daemon.Daemon, src *daemon.Static, s datapath.State) (float64, error) {
	src.Set(s)
	start := time.Now()
	err := e.topo.Host.Do(func() error {
		_, err := d.Reconcile(ctx, "bench")
		return err
	})
	return float64(time.Since(start).Nanoseconds()) / 1e6, err
}

// controlPlane times removing the 10,000 ports the scaling figures left,
// publishing a 10,000-port range, and publishing and removing one port
// next to it through the daemon's reconcile, as `bpfnet run` does; and
// measures what the ports cost in memory. It leaves the
// range published.
func (e *env) controlPlane(ctx context.Context, set func(string, float64), fail func(error, ...string)) {
	c := e.cAddr()
	base := e.ports(nil)
	allKeys := []string{KeyRemoveAll, KeyRange, KeyPublishOne, KeyRemoveOne, KeyMapBytes, KeyMapMarginal, KeyRulesPort, KeyRuleBytes}
	ms, err := e.timedApply(ctx, base)
	if err != nil {
		fail(fmt.Errorf("removing %d mappings: %w", ControlPorts, err), allKeys...)
		return
	}
	set(KeyRemoveAll, ms)
	memBase, memErr := e.memory(ctx)

	rng, err := datapath.ParsePublish(fmt.Sprintf("%d-%d:%s:%d-%d", controlBase, controlBase+ControlPorts-1, c, controlBase, controlBase+ControlPorts-1))
	if err != nil {
		fail(err, allKeys[1:]...)
		return
	}
	full := e.ports(rng)
	if ms, err := e.timedApply(ctx, full); err != nil {
		fail(fmt.Errorf("publishing a %d-port range: %w", ControlPorts, err), allKeys[1:]...)
		return
	} else {
		set(KeyRange, ms)
	}

	memFull, err := e.memory(ctx)
	if err = errors.Join(memErr, err); err != nil {
		fail(fmt.Errorf("measuring memory: %w", err), KeyMapBytes, KeyMapMarginal, KeyRulesPort, KeyRuleBytes)
	} else if slices.Contains(ruleModes, e.mode) {
		set(KeyRulesPort, float64(memFull.rules-memBase.rules)/ControlPorts)
		set(KeyRuleBytes, float64(memFull.bytes-memBase.bytes)/ControlPorts)
	} else {
		set(KeyMapBytes, float64(memFull.bytes)/float64(len(full.Ports)))
		set(KeyMapMarginal, float64(memFull.bytes-memBase.bytes)/ControlPorts)
	}

	extra := datapath.PortMapping{Proto: datapath.TCP, HostPort: controlBase - 1, ContainerIP: c, ContainerPort: controlBase - 1, Container: "c0"}
	one := e.ports(append(slices.Clone(rng), extra))
	publishOne := func() (float64, error) { return e.timedApply(ctx, one) }
	removeOne := func() (float64, error) { return e.timedApply(ctx, full) }
	if e.dp != nil {
		// What `bpfnet run` does on a Docker event: the daemon's reconcile
		// over the new state, incremental where the datapath allows it.
		src := &daemon.Static{}
		d := daemon.New(daemon.Config{Datapath: e.dp, Source: src, PinPath: e.pin,
			Log: slog.New(slog.NewTextHandler(e.opts.Progress, nil))})
		if err := e.topo.Host.Do(func() error { return d.Start(ctx, full) }); err != nil {
			fail(fmt.Errorf("starting the daemon with the %d-port range: %w", ControlPorts, err), KeyPublishOne, KeyRemoveOne)
			return
		}
		publishOne = func() (float64, error) { return e.timedReconcile(ctx, d, src, one) }
		removeOne = func() (float64, error) { return e.timedReconcile(ctx, d, src, full) }
	}
	var pub, rem []float64
	for range e.opts.PublishOneRepeats {
		p, err := publishOne()
		if err != nil {
			fail(fmt.Errorf("publishing one port: %w", err), KeyPublishOne, KeyRemoveOne)
			return
		}
		r, err := removeOne()
		if err != nil {
			fail(fmt.Errorf("removing one port: %w", err), KeyPublishOne, KeyRemoveOne)
			return
		}
		pub, rem = append(pub, p), append(rem, r)
	}
	set(KeyPublishOne, Summarize(pub).Median)
	set(KeyRemoveOne, Summarize(rem).Median)
}

// memUse is what a datapath holds for its ports: eBPF, the published
// map's memlock in bytes; iptables, the rules and bytes of iptables-save;
// nftables, the rules and bytes of the listing of its table.
type memUse struct {
	bytes, rules int64
}

func (e *env) memory(ctx context.Context) (memUse, error) {
	if e.mode == ModeNftables {
		return e.nftMemory(ctx)
	}
	if e.mode == ModeIptables {
		out, err := e.topo.Host.Command(ctx, "iptables-save").Output()
		if err != nil {
			return memUse{}, fmt.Errorf("running iptables-save: %w", err)
		}
		var u memUse
		u.bytes = int64(len(out))
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "-A ") {
				u.rules++
			}
		}
		return u, nil
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(loader.GlobalsDir(e.pin), "published"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return memUse{}, fmt.Errorf("opening the published map: %w", err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return memUse{}, fmt.Errorf("reading the published map's info: %w", err)
	}
	ml, ok := info.Memlock()
	if !ok {
		return memUse{}, errors.New("the kernel does not report the published map's memlock")
	}
	return memUse{bytes: int64(ml)}, nil
}

// nftMemory is memory for the nftables datapath: the bytes of
// `nft list table`, and its rules, the lines a handle listing numbers
// that are neither a table, a chain, a map nor a set.
func (e *env) nftMemory(ctx context.Context) (memUse, error) {
	d, ok := e.dp.(*nftables.Datapath)
	if !ok {
		return memUse{}, fmt.Errorf("the %s datapath is not an nftables one", e.mode)
	}
	out, err := e.topo.Host.Command(ctx, "nft", "list", "table", "ip", d.Table()).Output()
	if err != nil {
		return memUse{}, fmt.Errorf("listing the nftables table: %w", err)
	}
	u := memUse{bytes: int64(len(out))}
	out, err = e.topo.Host.Command(ctx, "nft", "-a", "list", "table", "ip", d.Table()).Output()
	if err != nil {
		return memUse{}, fmt.Errorf("listing the nftables table: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if !strings.Contains(l, "# handle ") {
			continue
		}
		switch strings.SplitN(l, " ", 2)[0] {
		case "table", "chain", "map", "set":
			continue
		}
		u.rules++
	}
	return u, nil
}

// newEnv builds a lab with one container and one external host, starts
// the datapath of mode m (eBPF: with a ct4 of ctSize entries, 0 for the
// default), and the servers. On error the returned env (if any) must still
// be closed.
func newEnv(ctx context.Context, opts *Options, m Mode, ctSize uint32) (*env, error) {
	topo, err := lab.New(lab.Config{Containers: []lab.ContainerConfig{{Name: "c0"}}})
	if err != nil {
		return nil, fmt.Errorf("building the lab: %w", err)
	}
	e := &env{opts: opts, mode: m, topo: topo, c: topo.Containers[0], ext: topo.Externals[0]}
	// Clients open connections fast: let them reuse TIME_WAIT ports and
	// pick from a wide range, as a load generator must.
	for _, ns := range []*lab.Namespace{&e.ext.Namespace, &e.c.Namespace} {
		if err := ns.WriteSysctl("net/ipv4/tcp_tw_reuse", "1"); err != nil {
			return e, err
		}
		if err := ns.WriteSysctl("net/ipv4/tcp_congestion_control", opts.Congestion); err != nil {
			return e, err
		}
		if err := ns.WriteSysctl("net/ipv4/ip_local_port_range", "10000 65535"); err != nil {
			return e, err
		}
	}
	routed := m == ModeRouting || m == ModeRedirect
	if err := e.addIPv6(routed); err != nil {
		return e, err
	}
	if routed {
		e.target, e.target6 = e.cAddr(), ctr6
		if err := e.routeToContainers(); err != nil {
			return e, err
		}
	} else {
		e.target, e.target6 = addrOf(e.ext.HostAddr), host6
	}
	if m != ModeRouting {
		err := topo.Host.Do(func() error {
			if err := e.discover(); err != nil {
				return err
			}
			// The same checks as bpfnet run's, on the state with its ports.
			if m != ModeIptables && m != ModeNftables {
				e.pin = lab.PinDir(topo.Prefix, "bench")
			}
			return datapath.Preflight(e.ports(nil), datapath.PreflightOptions{PinPath: e.pin})
		})
		if err != nil {
			return e, fmt.Errorf("discovering the lab: %w", err)
		}
		switch m {
		case ModeIptables:
			d, err := iptables.New(iptables.Options{Netns: topo.Host.Path})
			if err != nil {
				return e, fmt.Errorf("starting the iptables datapath: %w", err)
			}
			e.dp = d
		case ModeNftables:
			d, err := nftables.New(nftables.Options{Netns: topo.Host.Path})
			if err != nil {
				return e, fmt.Errorf("starting the nftables datapath: %w", err)
			}
			e.dp = d
		default:
			// Under the lab's prefix, so that a killed run's pins go with
			// its lab at the next lab.Sweep.
			if err = os.Mkdir(e.pin, 0o700); err != nil {
				return e, fmt.Errorf("bpffs: %w (mount it: mount -t bpf bpf /sys/fs/bpf)", err)
			}
			d, err := datapath.NewEBPF(datapath.Options{PinPath: e.pin, FastPath: true, RedirectOnly: m == ModeRedirect, CTSize: ctSize})
			if err != nil {
				return e, fmt.Errorf("loading the eBPF datapath: %w", err)
			}
			e.dp = d
		}
		if err := e.apply(ctx, e.ports(nil)); err != nil {
			return e, fmt.Errorf("programming the %s datapath: %w", m, err)
		}
	}
	if err := e.startPerfServer(ctx, &e.c.Namespace, netip.AddrPortFrom(netip.IPv4Unspecified(), perfPort)); err != nil {
		return e, err
	}
	if err := e.startPerfServer(ctx, &e.c.Namespace, netip.AddrPortFrom(netip.IPv6Unspecified(), perfPort)); err != nil {
		return e, err
	}
	if err := e.startPerfServer(ctx, &e.ext.Namespace, netip.AddrPortFrom(netip.IPv4Unspecified(), egressPerfPort)); err != nil {
		return e, err
	}
	return e, nil
}

// discover reads the lab's state in the calling thread's namespace (the
// lab's host): its network, dual stack (addIPv6), and container, whose
// IPv6 address Discover does not read.
func (e *env) discover() error {
	s, err := datapath.Discover([]string{e.topo.Bridges[0].Name}, nil, nil)
	if err != nil {
		return err
	}
	for i := range s.Endpoints {
		if s.Endpoints[i].HostVeth == e.c.HostVeth {
			s.Endpoints[i].Addr6 = ctr6
		}
	}
	e.state = s
	return nil
}

// routeToContainers gives the external host a route to the container
// subnet through the host's uplink address.
func (e *env) routeToContainers() error {
	h, err := e.ext.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0 of %s: %w", e.ext.Name, err)
	}
	sub := e.topo.Bridges[0].Subnet
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: sub, Gw: e.ext.HostAddr}); err != nil {
		return fmt.Errorf("adding a route to %s via %s in %s: %w", sub, e.ext.HostAddr, e.ext.Name, err)
	}
	return nil
}

func (e *env) close() error {
	for _, s := range e.servers {
		s.Process.Kill()
		s.Wait()
	}
	var errs []error
	if e.dp != nil {
		errs = append(errs, e.topo.Host.Do(e.dp.Remove))
	}
	if e.pin != "" {
		errs = append(errs, os.RemoveAll(e.pin))
	}
	errs = append(errs, e.topo.Close())
	return errors.Join(errs...)
}

// pinned is a command in ns pinned to cpu with taskset.
func pinned(ctx context.Context, ns *lab.Namespace, cpu int, name string, args ...string) *exec.Cmd {
	return ns.Command(ctx, "taskset", append([]string{"-c", strconv.Itoa(cpu), name}, args...)...)
}

// startPerfServer starts `bpfnet perf server` in ns and waits until it
// listens.
func (e *env) startPerfServer(ctx context.Context, ns *lab.Namespace, addr netip.AddrPort) error {
	cmd := pinned(context.WithoutCancel(ctx), ns, e.opts.ServerCPU, e.opts.Binary, "perf", "server", "--listen", addr.String())
	return e.startServer(cmd, "listening", "perf server in "+ns.Name)
}

// startServer starts cmd and waits for a line of its output containing
// ready.
func (e *env) startServer(cmd *exec.Cmd, ready, what string) error {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", what, err)
	}
	e.servers = append(e.servers, cmd)
	lines := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), ready) {
				ok = true
				lines <- true
			}
		}
		if !ok {
			lines <- false
		}
	}()
	select {
	case ok := <-lines:
		if !ok {
			return fmt.Errorf("%s ended before it was ready: %s", what, strings.TrimSpace(stderr.String()))
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s not ready after 10s: %s", what, strings.TrimSpace(stderr.String()))
	}
}

// perf runs `bpfnet perf <kind>` in ns against target and decodes its
// JSON into out.
func (e *env) perf(ctx context.Context, ns *lab.Namespace, kind string, target netip.AddrPort, d time.Duration, out any) error {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	args := []string{"perf", kind, "--target", target.String(), "--duration", d.String()}
	if kind == "udp" {
		args = append(args, "--size", strconv.Itoa(udpSize))
	}
	cmd := pinned(ctx, ns, e.opts.ClientCPU, e.opts.Binary, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("perf %s to %s: %w: %s", kind, target, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("perf %s: parsing %q: %w", kind, b, err)
	}
	return nil
}

// udpSize is the UDP payload of the packet-rate figure.
const udpSize = 64

// iperf runs an iperf3 server in srv (one test, then it exits) and a
// client in cli sending to target:port with streams streams. It returns
// the client's report and the busy CPU seconds of the whole machine while
// the client ran.
func (e *env) iperf(ctx context.Context, cli, srv *lab.Namespace, target netip.Addr, port, streams int) (IperfResult, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(e.opts.BulkSeconds)*time.Second+60*time.Second)
	defer cancel()
	server := pinned(ctx, srv, e.opts.ServerCPU, "iperf3", "-s", "-1", "--forceflush", "-p", strconv.Itoa(port))
	if err := e.startServer(server, "listening", "iperf3 server in "+srv.Name); err != nil {
		return IperfResult{}, 0, err
	}
	defer func() {
		// Normally it has exited after its one test.
		done := make(chan struct{})
		go func() { server.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			server.Process.Kill()
			<-done
		}
		e.servers = slices.DeleteFunc(e.servers, func(c *exec.Cmd) bool { return c == server })
	}()
	client := pinned(ctx, cli, e.opts.ClientCPU, "iperf3", "-c", target.String(), "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(e.opts.BulkSeconds), "-P", strconv.Itoa(streams), "-J")
	before, err := readCPUTimes()
	if err != nil {
		return IperfResult{}, 0, err
	}
	out, err := client.Output()
	after, cerr := readCPUTimes()
	if err != nil {
		if res, perr := ParseIperf(out); perr != nil && res.Bytes == 0 {
			return IperfResult{}, 0, fmt.Errorf("iperf3 to %s:%d: %w (%v)", target, port, err, perr)
		}
		return IperfResult{}, 0, fmt.Errorf("iperf3 to %s:%d: %w", target, port, err)
	}
	if cerr != nil {
		return IperfResult{}, 0, cerr
	}
	res, err := ParseIperf(out)
	if err != nil {
		return IperfResult{}, 0, err
	}
	return res, float64(after.Busy-before.Busy) / userHZ, nil
}
