// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/lab/cnilab"
)

// The CNI measurement (bpfnet bench --cni): in a fresh lab per mode, the
// lab's host is a CNI node whose pods libcni attaches with the reference
// bridge and host-local plugins, and either the reference portmap plugin
// after a bridge with ipMasq (the iptables way every runtime ships) or
// bpfnet's plugin and agent (package cnilab). An external host runs TCP_RR
// and TCP_CRR against a pod's hostPort with no other pod, then with
// cniOtherPods pods of cniPortsPerPod hostPorts each attached before the
// target, which is attached last, as the other ports' figures have it:
// portmap appends one chain per pod, and a packet to the last one walks
// past all the others.

// Scenario keys of the CNI measurement.
const (
	KeyCNIRR        = "cni_hostport_rr"
	KeyCNICRR       = "cni_hostport_crr"
	KeyCNIRROthers  = "cni_hostport_rr_others"
	KeyCNICRROthers = "cni_hostport_crr_others"
	// cniOtherPods with cniPortsPerPod hostPorts each, from
	// cniOtherBase: 1,000 other pods' hostPorts.
	cniOtherPods   = 100
	cniPortsPerPod = 10
	cniOtherBase   = 30000
)

// cniPlugins are the modes the CNI figures are measured in, and the
// plugin each stands for: the iptables column is portmap's, the ebpf
// column bpfnet-cni's.
var cniPlugins = map[Mode]cnilab.Plugin{ModeIptables: cnilab.Portmap, ModeEBPF: cnilab.Bpfnet}

var cniNotes = []string{
	"cni: the iptables column is the reference plugins' portmap after bridge with ipMasq, the ebpf column bpfnet-cni after bridge without; " +
		"a pod's hostPort from the external host, then with " + strconv.Itoa(cniOtherPods) + " other pods of " + strconv.Itoa(cniPortsPerPod) +
		" hostPorts each attached before it (the target attached last)",
}

// CNIScenarios are the figures of the CNI measurement, in table order.
func CNIScenarios() []Scenario {
	m := []Mode{ModeIptables, ModeEBPF}
	others := strconv.Itoa(cniOtherPods*cniPortsPerPod) + " other pods' hostPorts"
	return []Scenario{
		{Key: KeyCNIRR, Name: "CNI hostPort TCP_RR (portmap | bpfnet-cni)", Unit: "trans/s", Modes: m},
		{Key: KeyCNICRR, Name: "CNI hostPort TCP_CRR (portmap | bpfnet-cni)", Unit: "conn/s", Modes: m},
		{Key: KeyCNIRROthers, Name: "CNI hostPort TCP_RR, " + others, Unit: "trans/s", Modes: m},
		{Key: KeyCNICRROthers, Name: "CNI hostPort TCP_CRR, " + others, Unit: "conn/s", Modes: m},
	}
}

// checkCNI checks that the plugins are in opts.CNIBinDir.
func checkCNI(opts *Options) error {
	if opts.CNIBinDir == "" {
		return errors.New("the CNI measurement needs the folder of the plugins (bridge, host-local, portmap, bpfnet)")
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "bpfnet"} {
		if _, err := os.Stat(opts.CNIBinDir + "/" + p); err != nil {
			return fmt.Errorf("the CNI measurement needs the %s plugin: %w", p, err)
		}
	}
	return nil
}

// measureCNI takes the CNI figures of mode m into r.
func measureCNI(ctx context.Context, opts *Options, m Mode, r *RunResult) {
	keys := []string{KeyCNIRR, KeyCNICRR, KeyCNIRROthers, KeyCNICRROthers}
	if r.Figures == nil {
		r.Figures = map[string]float64{}
	}
	if r.Notes == nil {
		r.Notes = map[string]string{}
	}
	fail := func(err error, ks ...string) {
		if r.Errors == nil {
			r.Errors = map[string]string{}
		}
		for _, k := range ks {
			r.Errors[k] = "cni: " + err.Error()
		}
	}
	set := func(key string, v float64) {
		r.Figures[key] = v
		sc := CNIScenarios()[slices.IndexFunc(CNIScenarios(), func(s Scenario) bool { return s.Key == key })]
		fmt.Fprintf(opts.Progress, "  %-44s %s %s\n", sc.Name, formatValue(v), sc.Unit)
	}
	began := time.Now()
	topo, err := lab.New(lab.Config{})
	if err != nil {
		fail(fmt.Errorf("building the lab: %w", err), keys...)
		return
	}
	e := &env{opts: opts, mode: m, topo: topo, ext: topo.Externals[0]}
	dir, err := os.MkdirTemp("", "bpfnet-bench-cni-")
	if err != nil {
		e.close()
		fail(err, keys...)
		return
	}
	var node *cnilab.Node
	defer func() {
		var errs []error
		if node != nil {
			errs = append(errs, node.Close())
		}
		errs = append(errs, e.close(), os.RemoveAll(dir))
		if err := errors.Join(errs...); err != nil {
			fmt.Fprintf(opts.Progress, "  closing the %s CNI lab: %v\n", m, err)
		}
	}()
	if err := endpointSysctls(&e.ext.Namespace, opts); err != nil {
		fail(err, keys...)
		return
	}
	node, err = cnilab.Start(cnilab.Config{Topo: topo, Plugin: cniPlugins[m], BinDir: opts.CNIBinDir, Agent: opts.Binary, Dir: dir})
	if err != nil {
		fail(fmt.Errorf("starting the %s node: %w", cniPlugins[m], err), keys...)
		return
	}
	target := netip.AddrPortFrom(addrOf(e.ext.HostAddr), perfPort)
	// addTarget attaches the pod of the hostPort and starts its server;
	// the returned stop kills the server and detaches the pod.
	addTarget := func(name string) (stop func() error, err error) {
		p, err := node.AddPod(ctx, name, cnilab.PortMapping{HostPort: perfPort, ContainerPort: perfPort, Protocol: "tcp"})
		if err != nil {
			return nil, err
		}
		if err := endpointSysctls(&p.Namespace, opts); err != nil {
			return nil, err
		}
		if err := e.startPerfServer(ctx, &p.Namespace, netip.AddrPortFrom(netip.IPv4Unspecified(), perfPort)); err != nil {
			return nil, err
		}
		srv := e.servers[len(e.servers)-1]
		return func() error {
			srv.Process.Kill()
			srv.Wait()
			e.servers = slices.DeleteFunc(e.servers, func(c *exec.Cmd) bool { return c == srv })
			return node.DelPod(ctx, p)
		}, nil
	}
	measure := func(rrKey, crrKey string) {
		var rr RRResult
		if err := e.perf(ctx, &e.ext.Namespace, "rr", target, opts.Duration, &rr); err != nil {
			fail(err, rrKey)
		} else {
			set(rrKey, rr.Rate)
		}
		var crr CRRResult
		if err := e.perf(ctx, &e.ext.Namespace, "crr", target, opts.Duration, &crr); err != nil {
			fail(err, crrKey)
		} else {
			set(crrKey, crr.Rate)
			if crr.Failures > 0 {
				r.Notes[crrKey] = fmt.Sprintf("%d connections failed", crr.Failures)
			}
		}
	}

	stop, err := addTarget("t0")
	if err != nil {
		fail(err, keys...)
		return
	}
	measure(KeyCNIRR, KeyCNICRR)
	if err := stop(); err != nil {
		fail(fmt.Errorf("removing the target pod: %w", err), KeyCNIRROthers, KeyCNICRROthers)
		return
	}
	for i := range cniOtherPods {
		var ports []cnilab.PortMapping
		for j := range cniPortsPerPod {
			hp := cniOtherBase + i*cniPortsPerPod + j
			ports = append(ports, cnilab.PortMapping{HostPort: hp, ContainerPort: 80, Protocol: "tcp"})
		}
		if _, err := node.AddPod(ctx, "o"+strconv.Itoa(i), ports...); err != nil {
			fail(fmt.Errorf("attaching the other pods: %w", err), KeyCNIRROthers, KeyCNICRROthers)
			return
		}
	}
	if _, err := addTarget("t1"); err != nil {
		fail(err, KeyCNIRROthers, KeyCNICRROthers)
		return
	}
	measure(KeyCNIRROthers, KeyCNICRROthers)
	fmt.Fprintf(opts.Progress, "  (%s CNI, %s)\n", cniPlugins[m], time.Since(began).Round(100*time.Millisecond))
}

// endpointSysctls are the settings of the lab's endpoints (newEnv's): a
// client opens connections fast, reusing TIME_WAIT ports from a wide
// range, and every endpoint has the run's congestion control.
func endpointSysctls(ns *lab.Namespace, opts *Options) error {
	for _, kv := range [][2]string{
		{"net/ipv4/tcp_tw_reuse", "1"},
		{"net/ipv4/tcp_congestion_control", opts.Congestion},
		{"net/ipv4/ip_local_port_range", "10000 65535"},
	} {
		if err := ns.WriteSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}
