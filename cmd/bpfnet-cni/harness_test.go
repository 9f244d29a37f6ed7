// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/bpfnet/bpfnet/cni"
	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/lab/cnilab"
)

// The tests drive the plugin exactly as a runtime does: libcni runs the
// reference plugins (bridge, host-local, loopback, portmap, built from
// github.com/containernetworking/plugins at the version go.mod's tool
// block pins, which speaks CNI 1.1.0: cnilab.BuildPlugins) and this
// plugin as processes, in a
// lab's host namespace, for pods that are namespaces of the lab's prefix;
// the agent is `bpfnet run --cni` in the same namespace.

var (
	binDir     string // the plugins, this one as "bpfnet"
	agentBin   string // cmd/bpfnet
	buildOnce  sync.Once
	buildError error
)

func TestMain(m *testing.M) {
	// Go probes once per process whether the system has IPv6 (a bind of
	// [::1]): probed here, not first in a lab namespace whose lo is down,
	// where it would make every later wildcard listener IPv4-only.
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func goCmd() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// plugins builds the plugins and the agent once for every test.
func plugins(t *testing.T) {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildError = os.MkdirTemp("", "bpfnet-cni-bin-"); buildError != nil {
			return
		}
		if buildError = cnilab.BuildPlugins(goCmd(), binDir); buildError != nil {
			return
		}
		args := []string{"build", "-o", filepath.Join(binDir, "bpfnet-agent"), "github.com/bpfnet/bpfnet/cmd/bpfnet"}
		if out, err := exec.Command(goCmd(), args...).CombinedOutput(); err != nil {
			buildError = fmt.Errorf("go %v: %v\n%s", args, err, out)
			return
		}
		agentBin = filepath.Join(binDir, "bpfnet-agent")
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
}

// node is a lab host namespace with the agent and a CNI network.
type node struct {
	t      *testing.T
	topo   *lab.Topology
	ext    *lab.External
	pin    string
	state  string // the agent's attachments
	socket string
	cache  string // libcni's cache
	ipam   string // host-local's
	bridge string
	cfg    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
	lo     *libcni.NetworkConfigList
	agent  *exec.Cmd
	exited chan error
	conf   string // the conflist
}

const podSubnet = "10.88.0.0/24"

// newNode builds the lab and starts the agent; the conflist speaks CNI
// 1.1.0.
func newNode(t *testing.T) *node {
	t.Helper()
	return newNodeVersion(t, "1.1.0")
}

// newNodeVersion is newNode with a conflist of cniVersion version.
func newNodeVersion(t *testing.T, version string) *node {
	t.Helper()
	return newNodeWith(t, version, false)
}

// The dual-stack node's IPv6 addresses: host-local's range for the pods,
// the host's uplink and the external namespace on it.
var (
	podSubnet6 = netip.MustParsePrefix("fd00:88::/64")
	host6      = netip.MustParseAddr("2001:db8:231::1")
	ext6       = netip.MustParseAddr("2001:db8:231::2")
)

// newDualStackNode is newNode whose conflist gives each pod an IPv6
// address of podSubnet6 too (a second host-local range, as kubelet's
// dual-stack pod CIDRs), with the host's uplink and the external
// namespace on host6 and ext6.
func newDualStackNode(t *testing.T) *node {
	t.Helper()
	return newNodeWith(t, "1.1.0", true)
}

func newNodeWith(t *testing.T, version string, dualStack bool) *node {
	t.Helper()
	lab.RequireRoot(t)
	lab.RequireTools(t, "nsenter", "ip")
	plugins(t)
	topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	dir := t.TempDir()
	n := &node{t: t, topo: topo, ext: topo.Externals[0], pin: lab.PinDir(topo.Prefix, "cni"),
		state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "run", "cni.sock"),
		cache: filepath.Join(dir, "cache"), ipam: filepath.Join(dir, "ipam"), bridge: topo.Prefix + "-cni"}
	t.Cleanup(func() {
		n.stopAgent()
		topo.Host.Command(context.Background(), agentBin, "down", "--pin-path", n.pin).Run()
		os.RemoveAll(n.pin)
	})
	ranges, routes := fmt.Sprintf(`[[{"subnet":%q}]]`, podSubnet), `[{"dst":"0.0.0.0/0"}]`
	if dualStack {
		ranges, routes = fmt.Sprintf(`[[{"subnet":%q}],[{"subnet":%q}]]`, podSubnet, podSubnet6), `[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]`
		for _, step := range []func() error{
			func() error { return topo.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1") },
			func() error { return topo.Host.AddAddr6(n.ext.Uplink, host6, 64) },
			func() error { return n.ext.Namespace.AddAddr6("eth0", ext6, 64) },
		} {
			if err := step(); err != nil {
				t.Fatalf("setting up IPv6: %v", err)
			}
		}
	}
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":"pods","plugins":[
	{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":false,"hairpinMode":true,
	 "ipam":{"type":"host-local","dataDir":%q,"ranges":%s,"routes":%s}},
	{"type":"bpfnet","capabilities":{"portMappings":true},"pinPath":%q,"socket":%q,"stateDir":%q}]}`,
		version, n.bridge, n.ipam, ranges, routes, n.pin, n.socket, n.state)
	n.conf = conf
	var err error
	if n.list, err = libcni.ConfListFromBytes([]byte(conf)); err != nil {
		t.Fatal(err)
	}
	if n.lo, err = libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"lo","plugins":[{"type":"loopback"}]}`)); err != nil {
		t.Fatal(err)
	}
	n.cfg = libcni.NewCNIConfigWithCacheDir([]string{binDir}, n.cache, nil)
	n.startAgent()
	return n
}

// startAgent starts `bpfnet run --cni` and waits until it answers STATUS.
func (n *node) startAgent() {
	t := n.t
	t.Helper()
	cmd := n.topo.Host.Command(context.Background(), agentBin, "run", "--cni", "--pin-path", n.pin,
		"--cni-socket", n.socket, "--cni-state-dir", n.state, "--metrics-addr", "127.0.0.1:19477", "--gc-interval", "1s")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.agent, n.exited = cmd, make(chan error, 1)
	go func() { n.exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cni.Call(ctx, n.socket, cni.Request{Command: cni.CmdStatus})
		cancel()
		if err == nil {
			return
		}
		select {
		case err := <-n.exited:
			n.agent = nil
			t.Fatalf("the agent exited before answering: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not answer STATUS: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopAgent stops the agent with SIGTERM and waits for it to exit.
func (n *node) stopAgent() {
	if n.agent == nil {
		return
	}
	n.agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.exited:
		if err != nil {
			n.t.Errorf("the agent exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		n.agent.Process.Kill()
		<-n.exited
		n.t.Error("the agent did not stop within 30 s of SIGTERM")
	}
	n.agent = nil
}

// pod is a pod's namespace and its attachment.
type pod struct {
	lab.Namespace
	name  string
	rt    *libcni.RuntimeConf
	addr  net.IP
	addr6 netip.Addr // on a dual-stack node
	ports []map[string]any
}

// port is a runtimeConfig.portMappings entry.
func port(host, ctr int, proto, hostIP string) map[string]any {
	m := map[string]any{"hostPort": host, "containerPort": ctr, "protocol": proto}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

// newPod makes a pod's namespace (deleted with the lab) and its runtime
// configuration, as kubelet passes it.
func (n *node) newPod(name string, ports ...map[string]any) *pod {
	t := n.t
	t.Helper()
	ns := n.topo.Prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	p := &pod{Namespace: lab.Namespace{Name: ns, Path: "/run/netns/" + ns}, name: name, ports: ports}
	p.rt = &libcni.RuntimeConf{
		ContainerID: "ctr-" + n.topo.Prefix + "-" + name, NetNS: p.Path, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", "ctr-" + name}},
		CapabilityArgs: map[string]any{"portMappings": ports},
	}
	return p
}

// inHost runs fn in the lab's host namespace, where the runtime runs the
// plugins.
func (n *node) inHost(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return n.topo.Host.Do(func() error { return fn(ctx) })
}

// add is the runtime's ADD of the pod: loopback, then the network.
func (n *node) add(p *pod) error {
	return n.inHost(func(ctx context.Context) error {
		if _, err := n.cfg.AddNetworkList(ctx, n.lo, p.rt); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		res, err := n.cfg.AddNetworkList(ctx, n.list, p.rt)
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
		p.addr = ip
		for _, a := range r.IPs[1:] {
			if pre, perr := netip.ParsePrefix(a.Address); perr == nil && pre.Addr().Is6() {
				p.addr6 = pre.Addr()
			}
		}
		return err
	})
}

func (n *node) mustAdd(p *pod) {
	n.t.Helper()
	if err := n.add(p); err != nil {
		n.t.Fatalf("ADD %s: %v", p.name, err)
	}
}

func (n *node) del(p *pod) error {
	return n.inHost(func(ctx context.Context) error {
		if err := n.cfg.DelNetworkList(ctx, n.list, p.rt); err != nil {
			return err
		}
		return n.cfg.DelNetworkList(ctx, n.lo, p.rt)
	})
}

func (n *node) check(p *pod) error {
	return n.inHost(func(ctx context.Context) error { return n.cfg.CheckNetworkList(ctx, n.list, p.rt) })
}

func (n *node) status() error {
	return n.inHost(func(ctx context.Context) error { return n.cfg.GetStatusNetworkList(ctx, n.list) })
}

func (n *node) gc(valid ...*pod) error {
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.rt.ContainerID, IfName: p.rt.IfName})
	}
	return n.inHost(func(ctx context.Context) error { return n.cfg.GCNetworkList(ctx, n.list, args) })
}

// cniCode is the CNI error code of err, or -1.
func cniCode(err error) int {
	var e *types.Error
	if errors.As(err, &e) {
		return int(e.Code)
	}
	var ce *cni.Error
	if errors.As(err, &ce) {
		return int(ce.Code)
	}
	return -1
}

// greet serves TCP on addr in ns: each connection gets the client's
// address as the server saw it, then the echo of what it sends.
func greet(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	ns.ServeTCP(t, addr, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
		io.Copy(c, c)
	})
}

// greeting is ns's greeting from addr, retried for a few seconds while
// the dial times out or is refused (the datapath being programmed).
func greeting(t *testing.T, ns *lab.Namespace, addr string) (string, error) {
	t.Helper()
	var got string
	var err error
	for i := 0; i < 5; i++ {
		if got, err = ns.Greeting(addr); err == nil {
			return got, nil
		}
	}
	return got, err
}

// wantGreeting fails unless addr answers ns with want.
func wantGreeting(t *testing.T, ns *lab.Namespace, addr, want string) {
	t.Helper()
	got, err := greeting(t, ns, addr)
	if err != nil || got != want {
		t.Fatalf("%s from %s: greeting %q (%v), want %q", addr, ns.Name, got, err, want)
	}
}

// wantNoAnswer fails if addr answers ns within a second and a half; the
// dial must time out, so a check that could not run does not pass.
func wantNoAnswer(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	got, err := ns.Greeting(addr)
	if err == nil {
		t.Fatalf("%s from %s answers (%q), want no answer", addr, ns.Name, got)
	}
	if !lab.IsTimeout(err) && !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s from %s: %v, want a timeout or a refusal", addr, ns.Name, err)
	}
}

// bpfnet runs the agent binary's operator command in the host namespace,
// on the agent's pin path and state folder.
func (n *node) bpfnet(args ...string) []byte {
	n.t.Helper()
	out, err := n.topo.Host.Command(context.Background(), agentBin, append(args, "--pin-path", n.pin, "--cni-state-dir", n.state)...).Output()
	if err != nil {
		n.t.Fatalf("bpfnet %v: %v", args, err)
	}
	return out
}

// portsJSON is `bpfnet ports --json`.
func (n *node) portsJSON() []map[string]any {
	var out []map[string]any
	if err := json.Unmarshal(n.bpfnet("ports", "--json"), &out); err != nil {
		n.t.Fatal(err)
	}
	return out
}

// scrape reads the agent's /metrics in the host namespace.
func (n *node) scrape() string {
	n.t.Helper()
	var body string
	err := n.topo.Host.Do(func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:19477", 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
		b, err := io.ReadAll(c)
		body = string(b)
		return err
	})
	if err != nil {
		n.t.Fatalf("scraping the agent: %v", err)
	}
	return body
}

// stateFiles are the agent's attachment files (not the folder's lock,
// .lock, nor a temporary file).
func (n *node) stateFiles() []string {
	ents, err := os.ReadDir(n.state)
	if err != nil && !os.IsNotExist(err) {
		n.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// conn is an established connection through a hostPort.
type conn struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, ns *lab.Namespace, addr string) (*conn, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.DialTCP(ctx, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	who, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting of %s: %v", addr, err)
	}
	return &conn{c, r}, strings.TrimSpace(who)
}

func (c *conn) echo(t *testing.T, msg string) {
	t.Helper()
	fmt.Fprint(c, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c.r, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q: %q %v", msg, got, err)
	}
}
