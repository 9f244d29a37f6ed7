// SPDX-License-Identifier: Apache-2.0

// Package cnilab makes a lab's host namespace a CNI node: pods are
// namespaces of the lab's prefix that libcni attaches, exactly as a
// runtime does, with the reference bridge and host-local plugins and
// either the reference portmap plugin (with the bridge's ipMasq: the
// iptables way) or bpfnet's plugin and its agent, `bpfnet run --cni`. The
// benchmark's CNI figures compare the two; the plugin's own tests drive
// the same setup in more detail (cmd/bpfnet-cni).
//
// What it needs: a lab (package lab), root, and a folder with the plugin
// binaries (bridge, host-local, portmap, and bpfnet for Bpfnet: make
// build's bin/cni/bpfnet, the others built from
// github.com/containernetworking/plugins, go.mod's tools). Everything it
// makes is in the lab's namespaces, under Config.Dir, and in the pin
// folder of the lab's prefix: closing the node and the lab removes it.
package cnilab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/bpfnet/bpfnet/cni"
	"github.com/bpfnet/bpfnet/lab"
)

// ReferencePlugins are the packages of the reference plugins a node
// uses, each built as the binary named after its last element.
var ReferencePlugins = []string{
	"github.com/containernetworking/plugins/plugins/main/bridge",
	"github.com/containernetworking/plugins/plugins/ipam/host-local",
	"github.com/containernetworking/plugins/plugins/main/loopback",
	"github.com/containernetworking/plugins/plugins/meta/portmap",
}

// BuildPlugins builds the reference plugins at the version go.mod pins,
// and bpfnet's as "bpfnet", into dir, with the go command goCmd, from
// within this module: for tests, and for a benchmark run from a checkout.
func BuildPlugins(goCmd, dir string) error {
	for _, args := range [][]string{
		append([]string{"build", "-o", dir + "/"}, ReferencePlugins...),
		{"build", "-o", filepath.Join(dir, "bpfnet"), "github.com/bpfnet/bpfnet/cmd/bpfnet-cni"},
	} {
		if out, err := exec.Command(goCmd, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("go %v: %v\n%s", args, err, out)
		}
	}
	return nil
}

// Plugin is what serves the pods' hostPorts and masquerade.
type Plugin string

const (
	// Portmap is the reference portmap plugin after a bridge with ipMasq.
	Portmap Plugin = "portmap"
	// Bpfnet is bpfnet's plugin after a bridge without ipMasq.
	Bpfnet Plugin = "bpfnet-cni"
)

// Config is a node.
type Config struct {
	Topo   *lab.Topology
	Plugin Plugin
	// BinDir holds the plugins.
	BinDir string
	// Agent is the bpfnet binary whose `run --cni` serves Bpfnet.
	Agent string
	// Dir is where the node keeps libcni's cache, host-local's leases
	// and the agent's socket and attachments; it must exist.
	Dir string
	// Subnet of the pods; default 10.88.0.0/22.
	Subnet string
	// Subnet6, when set, is a second host-local range, an IPv6 prefix:
	// the pods are dual-stack.
	Subnet6 string
}

// Node is a CNI node in a lab's host namespace.
type Node struct {
	cfg    Config
	Pin    string // the agent's datapath (Bpfnet)
	Socket string // the agent's socket (Bpfnet)
	State  string // the agent's attachments (Bpfnet)
	cni    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
	agent  *exec.Cmd
	exited chan error
}

// PortMapping is an entry of runtimeConfig.portMappings.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Pod is a pod's namespace and attachment.
type Pod struct {
	lab.Namespace
	Addr netip.Addr
	// Addr6 is the pod's IPv6 address on a dual-stack node.
	Addr6 netip.Addr
	rt    *libcni.RuntimeConf
}

// Start writes the node's conflist and, for Bpfnet, starts the agent and
// waits until it answers.
func Start(cfg Config) (*Node, error) {
	if cfg.Subnet == "" {
		cfg.Subnet = "10.88.0.0/22"
	}
	n := &Node{cfg: cfg, Pin: lab.PinDir(cfg.Topo.Prefix, "cni"), Socket: filepath.Join(cfg.Dir, "cni.sock"),
		State: filepath.Join(cfg.Dir, "attachments")}
	ranges, routes := fmt.Sprintf(`[[{"subnet":%q}]]`, cfg.Subnet), `[{"dst":"0.0.0.0/0"}]`
	if cfg.Subnet6 != "" {
		ranges = fmt.Sprintf(`[[{"subnet":%q}],[{"subnet":%q}]]`, cfg.Subnet, cfg.Subnet6)
		routes = `[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]`
	}
	bridge := fmt.Sprintf(`{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":%t,"hairpinMode":true,
	 "ipam":{"type":"host-local","dataDir":%q,"ranges":%s,"routes":%s}}`,
		cfg.Topo.Prefix+"-cni", cfg.Plugin == Portmap, filepath.Join(cfg.Dir, "ipam"), ranges, routes)
	var chained string
	switch cfg.Plugin {
	case Portmap:
		chained = `{"type":"portmap","capabilities":{"portMappings":true},"snat":true}`
	case Bpfnet:
		chained = fmt.Sprintf(`{"type":"bpfnet","capabilities":{"portMappings":true},"pinPath":%q,"socket":%q}`, n.Pin, n.Socket)
	default:
		return nil, fmt.Errorf("unknown CNI plugin %q (want %s or %s)", cfg.Plugin, Portmap, Bpfnet)
	}
	list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"pods","plugins":[` + bridge + "," + chained + "]}"))
	if err != nil {
		return nil, err
	}
	n.list = list
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{cfg.BinDir}, filepath.Join(cfg.Dir, "cache"), nil)
	if cfg.Plugin == Bpfnet {
		if err := n.StartAgent(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// StartAgent starts `bpfnet run --cni` in the lab's host namespace and
// waits until it answers STATUS.
func (n *Node) StartAgent() error {
	cmd := n.cfg.Topo.Host.Command(context.Background(), n.cfg.Agent, "run", "--cni", "--pin-path", n.Pin,
		"--cni-socket", n.Socket, "--cni-state-dir", n.State, "--metrics-addr", "")
	log, err := os.Create(filepath.Join(n.cfg.Dir, "agent.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	n.agent, n.exited = cmd, make(chan error, 1)
	go func() { n.exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cni.Call(ctx, n.Socket, cni.Request{Command: cni.CmdStatus})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-n.exited:
			n.agent = nil
			b, _ := os.ReadFile(log.Name())
			return fmt.Errorf("the bpfnet agent exited (%v) before answering: %s", werr, b)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the bpfnet agent does not answer: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StopAgent stops the agent, if it runs, and waits for it.
func (n *Node) StopAgent() error {
	if n.agent == nil {
		return nil
	}
	n.agent.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-n.exited:
	case <-time.After(30 * time.Second):
		n.agent.Process.Kill()
		<-n.exited
		err = errors.New("the bpfnet agent did not stop within 30 s of SIGTERM")
	}
	n.agent = nil
	return err
}

// AddPod makes the pod's namespace <prefix>-<name> and attaches it with
// ports, as kubelet would (CNI_ARGS with the pod's name).
func (n *Node) AddPod(ctx context.Context, name string, ports ...PortMapping) (*Pod, error) {
	ns := n.cfg.Topo.Prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	if ports == nil {
		ports = []PortMapping{}
	}
	p := &Pod{Namespace: lab.Namespace{Name: ns, Path: filepath.Join(lab.NetnsDir, ns)}}
	p.rt = &libcni.RuntimeConf{
		ContainerID: "ctr-" + ns, NetNS: p.Path, IfName: "eth0",
		Args:           [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}},
		CapabilityArgs: map[string]any{"portMappings": ports},
	}
	err := n.cfg.Topo.Host.Do(func() error {
		res, err := n.cni.AddNetworkList(ctx, n.list, p.rt)
		if err != nil {
			return err
		}
		var r struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		b, _ := json.Marshal(res)
		if err := json.Unmarshal(b, &r); err != nil || len(r.IPs) == 0 {
			return fmt.Errorf("result %s: no address", b)
		}
		ip, _, err := net.ParseCIDR(r.IPs[0].Address)
		if err != nil {
			return err
		}
		p.Addr, _ = netip.AddrFromSlice(ip.To4())
		for _, a := range r.IPs[1:] {
			if pre, err := netip.ParsePrefix(a.Address); err == nil && pre.Addr().Is6() {
				p.Addr6 = pre.Addr()
			}
		}
		return nil
	})
	if err != nil {
		exec.Command("ip", "netns", "del", ns).Run()
		return nil, fmt.Errorf("ADD of pod %s: %w", name, err)
	}
	return p, nil
}

// DelPod detaches the pod and removes its namespace.
func (n *Node) DelPod(ctx context.Context, p *Pod) error {
	err := n.cfg.Topo.Host.Do(func() error { return n.cni.DelNetworkList(ctx, n.list, p.rt) })
	if out, nerr := exec.Command("ip", "netns", "del", p.Name).CombinedOutput(); nerr != nil {
		err = errors.Join(err, fmt.Errorf("ip netns del %s: %v: %s", p.Name, nerr, out))
	}
	return err
}

// Close stops the agent and removes its datapath; the lab's Close removes
// the pods' namespaces and the rest.
func (n *Node) Close() error {
	err := n.StopAgent()
	if _, serr := os.Stat(n.Pin); serr == nil && n.cfg.Plugin == Bpfnet {
		if out, derr := n.cfg.Topo.Host.Command(context.Background(), n.cfg.Agent, "down", "--pin-path", n.Pin).CombinedOutput(); derr != nil {
			err = errors.Join(err, fmt.Errorf("bpfnet down: %v: %s", derr, out))
		}
		err = errors.Join(err, os.RemoveAll(n.Pin))
	}
	return err
}
