// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/daemon"
	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/docker"
	"github.com/bpfnet/bpfnet/loader"
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
	nat64Pool   string
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
	// allowDirectRouting turns the protection of container addresses
	// from direct access off, as dockerd --allow-direct-routing.
	allowDirectRouting bool
	// ignoreDockerFirewall starts under --docker even when Docker does
	// NAT itself (dockercheck.go).
	ignoreDockerFirewall bool
	// cni serves the chained CNI plugin (run_cni.go).
	cni cniFlags
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
		Example: `  bpfnet run --bridge docker0 --publish 8080:172.17.0.2:80 --publish 127.0.0.1:5353:172.17.0.3:53/udp
  bpfnet run --bridge docker0 --publish 8443:172.17.0.2:443,allow=192.0.2.0/24+198.51.100.7`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.bridges, "bridge", nil, "bridge whose containers to serve: NAME[,gateway_mode=nat|nat-unprotected|routed|isolated] (repeatable; Docker's com.docker.network.bridge.gateway_mode_ipv4)")
	fl.StringArrayVar(&f.uplinks, "uplink", nil, "interface towards the outside (repeatable; default: those of the default routes)")
	fl.StringArrayVar(&f.masquerade, "masquerade", nil, "masquerade traffic from this CIDR (repeatable; default: the bridges' subnets)")
	fl.StringArrayVar(&f.publish, "publish", nil, "publish a port: [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp][,allow=CIDR[+CIDR...]] (repeatable), IPv6 addresses in brackets ([::]:8080:[fd00::2]:80); "+
		"allow= limits the sources that may open new connections to it (the host itself is always allowed; with --docker, the container label "+docker.LabelAllow+"=CIDR[,CIDR...] or "+docker.LabelAllowPort+"<hostPort>/<proto>=...)")
	fl.StringVar(&f.pinPath, "pin-path", defaultPinPath, "bpffs folder of the datapath's state")
	fl.BoolVar(&f.fastPath, "fast-path", true, "redirect translated packets around the bridge, routing and netfilter")
	fl.StringVar(&f.natPorts, "nat-ports", fmt.Sprintf("%d-%d", datapath.DefaultNATPortMin, datapath.DefaultNATPortMax), "source ports masquerade may choose from")
	fl.StringVar(&f.nat64Pool, "nat64-pool", datapath.DefaultNAT64Pool.String(), "IPv4 range the clients of a host IPv6 port published to an IPv4 container (--publish [::]:8080:172.17.0.2:80) appear from; must not overlap a network, an uplink address or a route of the host")
	fl.Uint32Var(&f.ctSize, "ct-size", datapath.DefaultCTSize, "connection-tracking table capacity (entries; two per flow)")
	fl.Uint32Var(&f.halfOpen, "ct-half-open-size", 0, "capacity of the table of unassured published-port flows, where a SYN flood stays (entries; default: --ct-size/8)")
	fl.StringVar(&f.attach, "attach", "auto", "attach mechanism: auto (tcx, else clsact), tcx or legacy")
	fl.DurationVar(&f.gcInterval, "gc-interval", 10*time.Second, "how often expired connection-tracking entries are collected")
	fl.StringVar(&f.metrics, "metrics-addr", "127.0.0.1:9475", "address of the Prometheus /metrics endpoint (\"\" turns it off)")
	fl.StringVar(&f.datapath, "datapath", "ebpf", "datapath: "+strings.Join(datapaths, ", ")+" (iptables: rules shaped like Docker's, for comparison)")
	fl.StringVar(&f.docker, "docker", "", "follow Docker: containers, networks and port bindings from the Engine API (--docker alone: DOCKER_HOST or the default socket; or --docker=unix:///path)")
	fl.Lookup("docker").NoOptDefVal = "default"
	fl.BoolVar(&f.hostSockets, "host-sockets", true, "serve published ports to the host's own processes (docker-proxy's job) with cgroup programs")
	fl.StringVar(&f.cgroupPath, "cgroup-path", "", "cgroup v2 folder of those programs (default: the root, /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	fl.DurationVar(&f.hostFWInterval, "host-firewall-interval", 30*time.Second, "how often the host firewall (DOCKER-USER, ufw, nftables forward chains) is checked for rules the fast path goes around (0: once, at start)")
	fl.StringArrayVar(&f.containers, "container", nil, "name a container for metrics and status without a runtime: NAME=ADDRESS (repeatable)")
	fl.StringArrayVar(&f.foreignSrc, "allow-foreign-source", nil, "let the container of this address send from addresses not its own, as a router does (repeatable; with --docker, the label "+docker.LabelAllowForeignSource+"=true)")
	addCNIFlags(cmd, &f.cni)
	fl.BoolVar(&f.allowDirectRouting, "allow-direct-routing", false, "let every interface reach the published container ports by the containers' addresses, as dockerd --allow-direct-routing (default: only a network's trusted_host_interfaces may)")
	fl.BoolVar(&f.ignoreDockerFirewall, "ignore-docker-firewall", false, "with --docker, start even when dockerd does NAT itself (iptables on, its NAT rules for the bridges present): both would translate the same packets")
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
	pool, err := netip.ParsePrefix(f.nat64Pool)
	if err != nil {
		return opts, nil, fmt.Errorf("invalid --nat64-pool %q: want an IPv4 CIDR", f.nat64Pool)
	}
	if err := datapath.CheckNAT64Pool(pool); err != nil {
		return opts, nil, fmt.Errorf("invalid --nat64-pool: %w", err)
	}
	opts.NAT64Pool = pool
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
	if _, _, err := bridgeSpecs(f.bridges); err != nil {
		return opts, nil, err
	}
	for _, c := range f.masquerade {
		if _, err := netip.ParsePrefix(c); err != nil {
			return opts, nil, fmt.Errorf("invalid --masquerade %q: %w", c, err)
		}
	}
	if !slices.Contains(datapaths, f.datapath) {
		return opts, nil, fmt.Errorf("invalid --datapath %q: want %s", f.datapath, strings.Join(datapaths, ", "))
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
	if f.docker == "" && f.ignoreDockerFirewall {
		return opts, nil, errors.New("--ignore-docker-firewall is for --docker")
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
	if f.cni.on {
		if len(f.bridges) > 0 || len(f.publish) > 0 || len(f.masquerade) > 0 {
			return opts, nil, errors.New("--bridge, --publish and --masquerade are for standalone mode: with --cni, the pods' networks and ports come from the plugin")
		}
		return opts, nil, nil
	}
	if len(f.bridges) == 0 {
		return opts, nil, errors.New("at least one --bridge is required (or --docker, or --cni)")
	}
	return opts, ports, nil
}

// bridgeSpecs parses the --bridge values, NAME[,gateway_mode=MODE]: the
// names, and the gateway modes of those that give one.
func bridgeSpecs(specs []string) (names []string, modes map[string]datapath.GatewayMode, _ error) {
	for _, spec := range specs {
		name, rest, _ := strings.Cut(spec, ",")
		if name == "" {
			return nil, nil, fmt.Errorf("invalid --bridge %q: no bridge name", spec)
		}
		names = append(names, name)
		if rest == "" {
			continue
		}
		for _, field := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(field, "=")
			if k != "gateway_mode" {
				return nil, nil, fmt.Errorf("invalid --bridge %q: unknown field %q (want gateway_mode=MODE)", spec, field)
			}
			m, err := datapath.ParseGatewayMode(v)
			if err != nil || v == "" {
				return nil, nil, fmt.Errorf("invalid --bridge %q: gateway_mode: want nat, nat-unprotected, routed or isolated", spec)
			}
			if modes == nil {
				modes = map[string]datapath.GatewayMode{}
			}
			modes[name] = m
		}
	}
	return names, modes, nil
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

// standalone is the source the flags name, checked by options.
func standalone(f *runFlags, ports []datapath.PortMapping) *daemon.Standalone {
	names, modes, _ := bridgeSpecs(f.bridges)
	s := &daemon.Standalone{Bridges: names, GatewayModes: modes, Uplinks: f.uplinks, Masquerade: masqueradePrefixes(f), Ports: ports,
		Containers: map[netip.Addr]string{}}
	for _, c := range f.containers {
		name, addr, _ := strings.Cut(c, "=")
		s.Containers[netip.MustParseAddr(addr)] = name
	}
	for _, a := range f.foreignSrc {
		s.ForeignSource = append(s.ForeignSource, netip.MustParseAddr(a))
	}
	return s
}

func runDaemon(ctx context.Context, f *runFlags) error {
	opts, ports, err := f.options()
	if err != nil {
		return err
	}
	var src daemon.Source
	var ds *docker.Source
	if f.docker != "" {
		host := f.docker
		if host == "default" {
			host = ""
		}
		ds, err = docker.New(host)
		if err != nil {
			return err
		}
		defer ds.Close()
		src = &daemon.Docker{Source: ds, Uplinks: f.uplinks}
	} else if !f.cni.on {
		src = standalone(f, ports)
	}
	var cniSrv *cniServer
	if f.cni.on {
		if cniSrv, err = newCNIServer(&f.cni, src, f.uplinks, f.pinPath); err != nil {
			return err
		}
		defer cniSrv.close()
		src = cniSrv.src
	}
	state, err := src.State(ctx)
	if err != nil {
		return err
	}
	// At start, an exception must name a container that is there: a
	// mistyped address would otherwise leave the exception off unnoticed.
	// Later, one whose container is gone is simply not applied.
	if sa, ok := src.(*daemon.Standalone); ok {
		if unknown := daemon.MarkForeignSources(&state, sa.ForeignSource); len(unknown) > 0 {
			var names []string
			for _, u := range unknown {
				names = append(names, u.String())
			}
			return fmt.Errorf("--allow-foreign-source %s: no container on the bridges %v has that address", strings.Join(names, ", "), f.bridges)
		}
	}
	// Everything that can be checked is, before anything is loaded,
	// pinned, attached or written: a refused start leaves no trace.
	if ds != nil {
		if err := checkDocker(ctx, ds, state, f.pinPath, f.ignoreDockerFirewall); err != nil {
			return err
		}
	}
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
	_, statErr := os.Stat(f.pinPath)
	fresh := errors.Is(statErr, os.ErrNotExist)
	dp, applied, err := newDatapath(f.datapath, opts)
	if err != nil {
		if fresh {
			os.RemoveAll(f.pinPath)
		}
		return err
	}
	hostFW := &hostFirewall{pinPath: f.pinPath, fastPath: f.fastPath}
	d := daemon.New(daemon.Config{
		Datapath: dp, Source: src, PinPath: f.pinPath, GCInterval: f.gcInterval, Metrics: metricsLn,
		Version: version, HostFirewall: hostFW.status, AllowDirectRouting: f.allowDirectRouting,
		Applied: func(s datapath.State) { recordWarnings(f.pinPath, s.Warnings) },
	})
	if err := d.Start(ctx, state); err != nil {
		// A first start that fails leaves nothing behind; a restart keeps
		// what was forwarding before.
		if fresh {
			dp.Remove()
		} else {
			dp.Close()
		}
		return fmt.Errorf("applying the %s datapath: %w", dp.Name(), err)
	}
	defer dp.Close()
	if applied != nil {
		if err := applied(); err != nil {
			return errors.Join(fmt.Errorf("recording the %s datapath: %w", dp.Name(), err), dp.Remove())
		}
	}
	if cniSrv != nil {
		cniSrv.serve(ctx, d, dp)
	}
	if dp.Name() == "ebpf" {
		// The fast path is the eBPF datapath's: only it takes packets
		// around the host firewall.
		hostFW.check(ctx)
		if f.hostFWInterval > 0 {
			go hostFW.watch(ctx, f.hostFWInterval)
		}
	}
	slog.Info("datapath attached", "datapath", dp.Name(), "bridges", bridgesOf(state), "uplinks", len(state.Uplinks),
		"endpoints", len(state.Endpoints), "ports", len(state.Ports), "pin_path", f.pinPath, "fast_path", f.fastPath,
		"cgroup_endpoints", len(state.CgroupEndpoints), "shared_netns", len(state.Shared), "no_network", len(state.NoNetwork))
	err = d.Run(ctx)
	if cniSrv != nil {
		// The datapath is closed after the requests begun are answered.
		cniSrv.close()
		cniSrv.wait()
	}
	slog.Info("stopping; the datapath stays (bpfnet down removes it)", "datapath", dp.Name())
	return err
}

func bridgesOf(s datapath.State) []string {
	var out []string
	for _, n := range s.Networks {
		out = append(out, n.Bridge)
	}
	return out
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"
