// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/docker"
	"github.com/bpfnet/bpfnet/loader"
	"github.com/bpfnet/bpfnet/metrics"
)

const defaultPinPath = "/sys/fs/bpf/bpfnet"

// runFlags are the settings of `bpfnet run`.
type runFlags struct {
	bridges     []string
	uplinks     []string
	masquerade  []string
	publish     []string
	pinPath     string
	fastPath    bool
	natPorts    string
	ctSize      uint32
	halfOpen    uint32
	attach      string
	gcInterval  time.Duration
	metrics     string
	containers  []string
	foreignSrc  []string
	hostSockets bool
	cgroupPath  string
	docker      string
	datapath    string
	// hostFWInterval is how often the host firewall is checked for rules
	// the fast path takes packets around; 0 checks once, at start.
	hostFWInterval time.Duration
}

func newRunCmd() *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Load the eBPF datapath, attach it and keep it in step with the bridges",
		Long: `run loads the datapath, programs it with the bridges, uplinks and
published ports given, attaches it, and follows veths joining and leaving
the bridges. Stopping it (SIGTERM, Ctrl-C) leaves the datapath forwarding;
'bpfnet down' removes it.`,
		Example: `  bpfnet run --bridge docker0 --publish 8080:172.17.0.2:80 --publish 127.0.0.1:5353:172.17.0.3:53/udp`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.bridges, "bridge", nil, "bridge whose containers to serve (repeatable)")
	fl.StringArrayVar(&f.uplinks, "uplink", nil, "interface towards the outside (repeatable; default: those of the default routes)")
	fl.StringArrayVar(&f.masquerade, "masquerade", nil, "masquerade traffic from this CIDR (repeatable; default: the bridges' subnets)")
	fl.StringArrayVar(&f.publish, "publish", nil, "publish a port: [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp] (repeatable)")
	fl.StringVar(&f.pinPath, "pin-path", defaultPinPath, "bpffs folder of the datapath's state")
	fl.BoolVar(&f.fastPath, "fast-path", true, "redirect translated packets around the bridge, routing and netfilter")
	fl.StringVar(&f.natPorts, "nat-ports", fmt.Sprintf("%d-%d", datapath.DefaultNATPortMin, datapath.DefaultNATPortMax), "source ports masquerade may choose from")
	fl.Uint32Var(&f.ctSize, "ct-size", datapath.DefaultCTSize, "connection-tracking table capacity (entries; two per flow)")
	fl.Uint32Var(&f.halfOpen, "ct-half-open-size", 0, "capacity of the table of unassured published-port flows, where a SYN flood stays (entries; default: --ct-size/8)")
	fl.StringVar(&f.attach, "attach", "auto", "attach mechanism: auto (tcx, else clsact), tcx or legacy")
	fl.DurationVar(&f.gcInterval, "gc-interval", 10*time.Second, "how often expired connection-tracking entries are collected")
	fl.StringVar(&f.metrics, "metrics-addr", "127.0.0.1:9475", "address of the Prometheus /metrics endpoint (\"\" turns it off)")
	fl.StringVar(&f.datapath, "datapath", "ebpf", "datapath: ebpf, or iptables (rules shaped like Docker's, for comparison)")
	fl.StringVar(&f.docker, "docker", "", "follow Docker: containers, networks and port bindings from the Engine API (--docker alone: DOCKER_HOST or the default socket; or --docker=unix:///path)")
	fl.Lookup("docker").NoOptDefVal = "default"
	fl.BoolVar(&f.hostSockets, "host-sockets", true, "serve published ports to the host's own processes (docker-proxy's job) with cgroup programs")
	fl.StringVar(&f.cgroupPath, "cgroup-path", "", "cgroup v2 folder of those programs (default: the root, /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	fl.DurationVar(&f.hostFWInterval, "host-firewall-interval", 30*time.Second, "how often the host firewall (DOCKER-USER, ufw, nftables forward chains) is checked for rules the fast path goes around (0: once, at start)")
	fl.StringArrayVar(&f.containers, "container", nil, "name a container for metrics and status without a runtime: NAME=ADDRESS (repeatable)")
	fl.StringArrayVar(&f.foreignSrc, "allow-foreign-source", nil, "let the container of this address send from addresses not its own, as a router does (repeatable; with --docker, the label "+docker.LabelAllowForeignSource+"=true)")
	return cmd
}

// options checks the flags that need no kernel and turns them into
// datapath options and port mappings.
func (f *runFlags) options() (datapath.Options, []datapath.PortMapping, error) {
	opts := datapath.Options{PinPath: f.pinPath, FastPath: f.fastPath, CTSize: f.ctSize, HalfOpenSize: f.halfOpen,
		HostSockets: f.hostSockets, CgroupPath: f.cgroupPath}
	if f.pinPath == "" {
		return opts, nil, errors.New("--pin-path must not be empty")
	}
	lo, hi, ok := strings.Cut(f.natPorts, "-")
	min, err1 := strconv.ParseUint(lo, 10, 16)
	max, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || min == 0 || max < min {
		return opts, nil, fmt.Errorf("invalid --nat-ports %q: want MIN-MAX within 1-65535", f.natPorts)
	}
	opts.NATPortMin, opts.NATPortMax = uint16(min), uint16(max)
	if f.hostFWInterval < 0 {
		return opts, nil, fmt.Errorf("invalid --host-firewall-interval %s: must not be negative", f.hostFWInterval)
	}
	if f.ctSize < 1024 {
		return opts, nil, fmt.Errorf("invalid --ct-size %d: at least 1024", f.ctSize)
	}
	if f.halfOpen != 0 && f.halfOpen < 128 {
		return opts, nil, fmt.Errorf("invalid --ct-half-open-size %d: at least 128", f.halfOpen)
	}
	switch f.attach {
	case "auto":
		opts.AttachMode = loader.ModeAuto
	case "tcx":
		opts.AttachMode = loader.ModeTCX
	case "legacy":
		opts.AttachMode = loader.ModeLegacy
	default:
		return opts, nil, fmt.Errorf("invalid --attach %q: want auto, tcx or legacy", f.attach)
	}
	var ports []datapath.PortMapping
	for _, p := range f.publish {
		m, err := datapath.ParsePublish(p)
		if err != nil {
			return opts, nil, err
		}
		ports = append(ports, m...)
	}
	for _, c := range f.masquerade {
		if _, err := netip.ParsePrefix(c); err != nil {
			return opts, nil, fmt.Errorf("invalid --masquerade %q: %w", c, err)
		}
	}
	if f.datapath != "ebpf" && f.datapath != "iptables" {
		return opts, nil, fmt.Errorf("invalid --datapath %q: want ebpf or iptables", f.datapath)
	}
	if f.metrics != "" {
		if _, _, err := net.SplitHostPort(f.metrics); err != nil {
			return opts, nil, fmt.Errorf("invalid --metrics-addr %q: %w", f.metrics, err)
		}
	}
	for _, c := range f.containers {
		name, addr, ok := strings.Cut(c, "=")
		if _, err := netip.ParseAddr(addr); !ok || name == "" || err != nil {
			return opts, nil, fmt.Errorf("invalid --container %q: want NAME=ADDRESS", c)
		}
	}
	for _, a := range f.foreignSrc {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is4() {
			return opts, nil, fmt.Errorf("invalid --allow-foreign-source %q: want the IPv4 address of a container", a)
		}
	}
	if f.docker != "" {
		if len(f.bridges) > 0 || len(f.publish) > 0 || len(f.masquerade) > 0 {
			return opts, nil, errors.New("--bridge, --publish and --masquerade are for standalone mode: with --docker, Docker's networks and port bindings are used")
		}
		if len(f.foreignSrc) > 0 {
			return opts, nil, fmt.Errorf("--allow-foreign-source is for standalone mode: with --docker, label the container %s=true", docker.LabelAllowForeignSource)
		}
		return opts, nil, nil
	}
	if len(f.bridges) == 0 {
		return opts, nil, errors.New("at least one --bridge is required (or --docker)")
	}
	return opts, ports, nil
}

// masqueradePrefixes are the --masquerade CIDRs, checked by options.
func masqueradePrefixes(f *runFlags) []netip.Prefix {
	var masq []netip.Prefix
	for _, c := range f.masquerade {
		p, _ := netip.ParsePrefix(c)
		masq = append(masq, p)
	}
	return masq
}

// standaloneState reads the kernel for what the flags name.
func standaloneState(f *runFlags, ports []datapath.PortMapping) (datapath.State, error) {
	s, err := datapath.Discover(f.bridges, f.uplinks, masqueradePrefixes(f))
	if err != nil {
		return s, err
	}
	names := map[netip.Addr]string{}
	for _, c := range f.containers {
		name, addr, _ := strings.Cut(c, "=")
		names[netip.MustParseAddr(addr)] = name
	}
	for i := range s.Endpoints {
		if n, ok := names[s.Endpoints[i].Addr]; ok {
			s.Endpoints[i].Container = n
		}
	}
	markForeignSources(&s, f.foreignSrc)
	for i := range ports {
		for _, e := range s.Endpoints {
			if e.Addr == ports[i].ContainerIP {
				ports[i].Container = e.Container
			}
		}
	}
	s.Ports = ports
	return s, nil
}

// markForeignSources sets Endpoint.AllowForeignSource on the endpoints of
// the addresses (--allow-foreign-source) and returns those that name no
// endpoint of s.
func markForeignSources(s *datapath.State, addrs []string) []string {
	var unknown []string
	for _, a := range addrs {
		ip := netip.MustParseAddr(a)
		found := false
		for i := range s.Endpoints {
			if s.Endpoints[i].Addr == ip {
				s.Endpoints[i].AllowForeignSource, found = true, true
			}
		}
		if !found {
			unknown = append(unknown, a)
		}
	}
	return unknown
}

// desired builds the state to apply: from the flags and the kernel in
// standalone mode, from Docker's last word plus the uplinks and the veths
// Docker has not reported yet in Docker mode.
func desired(f *runFlags, ports []datapath.PortMapping, fromDocker *datapath.State) (datapath.State, error) {
	if fromDocker == nil {
		return standaloneState(f, ports)
	}
	s := *fromDocker
	s.Uplinks = nil
	uplinks := f.uplinks
	if len(uplinks) == 0 {
		var err error
		if uplinks, err = datapath.DefaultUplinks(); err != nil {
			return s, err
		}
	}
	for _, u := range uplinks {
		s.Uplinks = append(s.Uplinks, datapath.Uplink{Name: u})
	}
	s.PendingVeths = nil
	if err := s.AddPendingVeths(); err != nil {
		return s, err
	}
	return s, s.Validate()
}

func bridgesOf(s datapath.State) []string {
	var out []string
	for _, n := range s.Networks {
		out = append(out, n.Bridge)
	}
	return out
}

func runDaemon(ctx context.Context, f *runFlags) error {
	opts, ports, err := f.options()
	if err != nil {
		return err
	}
	var src *docker.Source
	var fromDocker *datapath.State
	if f.docker != "" {
		host := f.docker
		if host == "default" {
			host = ""
		}
		if src, err = docker.New(host); err != nil {
			return err
		}
		defer src.Close()
		s, err := src.State(ctx)
		if err != nil {
			return err
		}
		fromDocker = &s
	}
	state, err := desired(f, ports, fromDocker)
	if err != nil {
		return err
	}
	// At start, an exception must name a container that is there: a
	// mistyped address would otherwise leave the exception off unnoticed.
	// Later, one whose container is gone is simply not applied.
	if fromDocker == nil {
		if unknown := markForeignSources(&state, f.foreignSrc); len(unknown) > 0 {
			return fmt.Errorf("--allow-foreign-source %s: no container on the bridges %v has that address", strings.Join(unknown, ", "), f.bridges)
		}
	}
	// Everything that can be checked is, before anything is loaded,
	// pinned, attached or written: a refused start leaves no trace.
	if err := datapath.Preflight(state, datapath.PreflightOptions{PinPath: f.pinPath, Masquerade: masqueradePrefixes(f)}); err != nil {
		return err
	}
	// Taken before anything is attached, so a busy port changes nothing.
	var metricsLn net.Listener
	if f.metrics != "" {
		metricsLn, err = net.Listen("tcp", f.metrics)
		if err != nil {
			return fmt.Errorf("metrics endpoint: %w", err)
		}
		defer metricsLn.Close()
	}
	if f.datapath == "iptables" {
		if metricsLn != nil {
			metricsLn.Close()
			slog.Warn("no metrics with the iptables datapath: its counters are iptables'")
		}
		return runIptables(ctx, f, ports, fromDocker, state)
	}
	_, statErr := os.Stat(f.pinPath)
	fresh := errors.Is(statErr, os.ErrNotExist)
	dp, err := datapath.NewEBPF(opts)
	if err != nil {
		if fresh {
			os.RemoveAll(f.pinPath)
		}
		return err
	}
	if err := dp.Apply(ctx, state); err != nil {
		// A first start that fails leaves nothing behind; a restart keeps
		// what was forwarding before.
		if fresh {
			dp.Remove()
		} else {
			dp.Close()
		}
		return fmt.Errorf("applying the datapath: %w", err)
	}
	defer dp.Close()
	recordWarnings(f.pinPath, state.Warnings)
	var current atomic.Pointer[datapath.State]
	current.Store(&state)
	hostFW := &hostFirewall{pinPath: f.pinPath, fastPath: f.fastPath}
	hostFW.check(ctx)
	if f.hostFWInterval > 0 {
		go hostFW.watch(ctx, f.hostFWInterval)
	}
	if metricsLn != nil {
		coll := metrics.NewCollector(dp, func() datapath.State { return *current.Load() },
			func() ([]loader.Attachment, error) { return loader.List(f.pinPath) },
			metrics.BuildInfo{Version: version})
		reg := metrics.NewRegistry(coll)
		reg.MustRegister(metrics.NewHostFirewallCollector(hostFW.status))
		srv := &http.Server{Handler: metricsMux(reg), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(metricsLn)
		defer srv.Close()
		slog.Info("serving metrics", "addr", metricsLn.Addr().String())
	}
	slog.Info("datapath attached", "bridges", bridgesOf(state), "uplinks", len(state.Uplinks),
		"endpoints", len(state.Endpoints), "ports", len(state.Ports), "pin_path", f.pinPath, "fast_path", f.fastPath,
		"cgroup_endpoints", len(state.CgroupEndpoints), "shared_netns", len(state.Shared), "no_network", len(state.NoNetwork))

	// Docker's updates: the newest replaces one not yet applied.
	updates := make(chan datapath.State, 1)
	if src != nil {
		go func() {
			err := src.Watch(ctx, func(s datapath.State) {
				select {
				case <-updates:
				default:
				}
				updates <- s
			})
			if err != nil && ctx.Err() == nil {
				slog.Error("following Docker", "error", err)
			}
		}()
	}

	// Link events: a veth joining a bridge gets the programs at once.
	changed := make(chan struct{}, 1)
	poke := func(netlink.Link) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	var stopWatch context.CancelFunc = func() {}
	watching := ""
	watch := func(bridges []string) {
		if key := strings.Join(bridges, ","); key != watching {
			stopWatch()
			watching = key
			wctx, cancel := context.WithCancel(ctx)
			stopWatch = cancel
			go func() {
				for wctx.Err() == nil {
					if err := loader.WatchLinks(wctx, netns.None(), bridges, poke, poke); err != nil {
						slog.Warn("watching links", "error", err)
						time.Sleep(time.Second)
					}
				}
			}()
		}
	}
	watch(bridgesOf(state))
	defer func() { stopWatch() }()

	apply := func(reason string) {
		s, err := desired(f, ports, fromDocker)
		if err == nil {
			err = dp.Apply(ctx, s)
		}
		if err != nil {
			slog.Warn("resync", "reason", reason, "error", err)
			return
		}
		current.Store(&s)
		recordWarnings(f.pinPath, s.Warnings)
		watch(bridgesOf(s))
		slog.Info("resynced", "reason", reason, "endpoints", len(s.Endpoints), "ports", len(s.Ports), "pending_veths", len(s.PendingVeths),
			"cgroup_endpoints", len(s.CgroupEndpoints), "shared_netns", len(s.Shared), "no_network", len(s.NoNetwork))
	}
	gc := time.NewTicker(f.gcInterval)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			slog.Info("stopping; the datapath stays attached (bpfnet down removes it)")
			return nil
		case <-gc.C:
			if n, err := dp.GC(); err != nil {
				slog.Warn("conntrack gc", "error", err)
			} else if n > 0 {
				slog.Debug("conntrack gc", "deleted", n)
			}
		case s := <-updates:
			fromDocker = &s
			apply("docker")
		case <-changed:
			apply("links")
		}
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func metricsMux(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(reg))
	return mux
}

// iptablesMarker marks, under the pin path, that the iptables datapath
// holds rules, so that `bpfnet down` removes them (bpffs takes folders,
// not files).
func iptablesMarker(pinPath string) string { return loader.IptablesMarker(pinPath) }

// runIptables is the daemon with the iptables datapath: Docker-shaped rules
// for the same state, kept in step the same way. Stopping it leaves the
// rules; `bpfnet down` removes them.
func runIptables(ctx context.Context, f *runFlags, ports []datapath.PortMapping, fromDocker *datapath.State, state datapath.State) error {
	dp, err := datapath.NewIptables(datapath.IptablesOptions{})
	if err != nil {
		return err
	}
	if err := dp.Apply(ctx, state); err != nil {
		return fmt.Errorf("applying the iptables datapath: %w", err)
	}
	if err := os.MkdirAll(iptablesMarker(f.pinPath), 0o700); err != nil {
		return errors.Join(fmt.Errorf("marking the iptables datapath: %w", err), dp.Remove())
	}
	recordWarnings(f.pinPath, state.Warnings)
	slog.Info("datapath attached", "datapath", "iptables", "bridges", bridgesOf(state), "ports", len(state.Ports))
	changed := make(chan struct{}, 1)
	poke := func(netlink.Link) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	go func() {
		for ctx.Err() == nil {
			if err := loader.WatchLinks(ctx, netns.None(), bridgesOf(state), poke, poke); err != nil {
				slog.Warn("watching links", "error", err)
				time.Sleep(time.Second)
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			slog.Info("stopping; the rules stay (bpfnet down removes them)")
			return nil
		case <-changed:
			s, err := desired(f, ports, fromDocker)
			if err == nil {
				err = dp.Apply(ctx, s)
			}
			if err != nil {
				slog.Warn("resync", "error", err)
			}
		}
	}
}
