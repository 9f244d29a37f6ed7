// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/cni"
	"github.com/bpfnet/bpfnet/lab"
)

// agentCheck is CHECK as the agent answers it, without libcni's cache
// in front (libcni refuses a CHECK it has no cached result for itself).
func (n *node) agentCheck(p *pod, veth string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := cni.Attachment{ContainerID: p.rt.ContainerID, IfName: p.rt.IfName, Network: n.list.Name,
		HostVeth: veth, Addr: netip.MustParseAddr(p.addr.String())}
	for _, m := range p.ports {
		a.Ports = append(a.Ports, cni.Port{HostPort: m["hostPort"].(int), ContainerPort: m["containerPort"].(int),
			Protocol: m["protocol"].(string), HostIP: fmt.Sprint(m["hostIP"])})
		if _, ok := m["hostIP"]; !ok {
			a.Ports[len(a.Ports)-1].HostIP = ""
		}
	}
	_, err := cni.Call(ctx, n.socket, cni.Request{Command: cni.CmdCheck, Attachment: a})
	return err
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// hostVeth is the host veth the agent keeps for p.
func (n *node) hostVeth(p *pod) string {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.state, p.rt.ContainerID+"_"+p.rt.IfName+".json"))
	if err != nil {
		n.t.Fatalf("the agent keeps no attachment of %s: %v", p.name, err)
	}
	var a cni.Attachment
	if err := json.Unmarshal(b, &a); err != nil {
		n.t.Fatal(err)
	}
	return a.HostVeth
}

// TestCNIHostPort: a pod's hostPort answers an external client, which the
// pod sees with its own address; CHECK passes; the operator commands show
// the pod's endpoint, port and flow. DEL takes the port away (it no longer
// answers, and the agent's CHECK fails), and a second DEL succeeds.
func TestCNIHostPort(t *testing.T) {
	n := newNode(t)
	p := n.newPod("web", port(8080, 80, "tcp", ""))
	n.mustAdd(p)
	greet(t, &p.Namespace, ":80")
	hostPort := n.ext.HostAddr.String() + ":8080"
	c, who := dial(t, &n.ext.Namespace, hostPort)
	if who != n.ext.Addr.String() {
		t.Errorf("the pod saw the client as %s, want its own address %s", who, n.ext.Addr)
	}
	c.echo(t, "through the hostPort")
	if err := n.check(p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	veth := n.hostVeth(p)
	if err := n.agentCheck(p, veth); err != nil {
		t.Fatalf("the agent's CHECK: %v", err)
	}

	// The operator commands show the pod as namespace/pod, from CNI_ARGS,
	// with its container id in their JSON.
	const name = "default/web"
	id := p.rt.ContainerID
	ports := n.portsJSON()
	if len(ports) != 1 || ports[0]["host_port"] != 8080.0 || ports[0]["container_ip"] != p.addr.String() ||
		ports[0]["container"] != name || ports[0]["container_id"] != id {
		t.Errorf("bpfnet ports --json = %v, want 8080 -> %s of %s (%s)", ports, p.addr, name, id)
	}
	var st struct {
		Endpoints []struct {
			Addr        string `json:"address"`
			Container   string `json:"container"`
			ContainerID string `json:"container_id"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(n.bpfnet("status", "--json"), &st); err != nil || len(st.Endpoints) != 1 || st.Endpoints[0].Addr != p.addr.String() ||
		st.Endpoints[0].Container != name || st.Endpoints[0].ContainerID != id {
		t.Errorf("bpfnet status --json endpoints %+v (%v), want %s of %s (%s)", st.Endpoints, err, p.addr, name, id)
	}
	var flows []struct {
		Kind        string `json:"kind"`
		Reply       bool   `json:"reply"`
		NewDst      string `json:"translated_dst"`
		Container   string `json:"container"`
		ContainerID string `json:"container_id"`
	}
	if err := json.Unmarshal(n.bpfnet("ct", "--json", "--addr", n.ext.Addr.String()), &flows); err != nil {
		t.Fatal(err)
	}
	dnat := 0
	for _, f := range flows {
		if f.Kind == "dnat" && !f.Reply && f.NewDst == p.addr.String()+":80" && f.Container == name && f.ContainerID == id {
			dnat++
		}
	}
	if dnat != 1 {
		t.Errorf("bpfnet ct --json: %d dnat flows of %s (%s) to %s:80, want 1: %+v", dnat, name, id, p.addr, flows)
	}
	// The tables name the pod where they named its veth.
	for _, cmd := range []string{"status", "ports", "ct"} {
		out := string(n.bpfnet(cmd))
		if line := grepLines(out, p.addr.String()); !strings.Contains(line, name) || strings.Contains(line, veth) {
			t.Errorf("bpfnet %s: the lines of %s are %q, want them to name %s, not %s:\n%s", cmd, p.addr, line, name, veth, out)
		}
	}
	// Without the agent's folder, the pod is named by its veth.
	out, err := n.topo.Host.Command(context.Background(), agentBin, "ports", "--json", "--pin-path", n.pin, "--cni-state-dir", t.TempDir()).Output()
	if err != nil || !strings.Contains(string(out), `"container": "`+veth+`"`) {
		t.Errorf("bpfnet ports --json with an empty state folder: %s (%v), want the pod named %s", out, err, veth)
	}
	c.Close()
	// Per-pod series, labelled from CNI_ARGS as kubelet passes them.
	series := fmt.Sprintf(`bpfnet_container_receive_bytes_total{compose_project="",compose_service="",container="default/web",container_id="%s",interface="%s",namespace="default",network="pods",pod="web"} `, id[:12], veth)
	if body := n.scrape(); !strings.Contains(body, series) {
		t.Errorf("/metrics lacks %s:\n%s", series, grepLines(body, "bpfnet_container_"))
	}

	if err := n.del(p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	wantNoAnswer(t, &n.ext.Namespace, hostPort)
	if err := n.agentCheck(p, veth); cniCode(err) != cni.CodeNotServed {
		t.Errorf("the agent's CHECK after DEL: %v, want code %d", err, cni.CodeNotServed)
	}
	if err := n.del(p); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	if f := n.stateFiles(); len(f) != 0 {
		t.Errorf("agent state files %v after DEL", f)
	}
	if ps := n.portsJSON(); len(ps) != 0 {
		t.Errorf("bpfnet ports after DEL: %v", ps)
	}
	if err := json.Unmarshal(n.bpfnet("ct", "--json", "--addr", p.addr.String()), &flows); err != nil || len(flows) != 0 {
		t.Errorf("bpfnet ct --addr %s after DEL: %+v (%v), want none", p.addr, flows, err)
	}
}

// TestCNIEgressHairpin: a pod's connections to the outside leave with the
// host's address (the network's subnet is masqueraded, the bridge's
// ipMasq being off), and a pod reaches its own hostPort through the
// host's address (hairpin), as does another pod. A pod that the runtime
// does not name (no K8S_POD_* in CNI_ARGS, as with ctr or Podman) shows
// by its container id, shortened as Docker's are.
func TestCNIEgressHairpin(t *testing.T) {
	n := newNode(t)
	p := n.newPod("web", port(8080, 80, "tcp", ""))
	q := n.newPod("client")
	q.rt.Args = nil
	n.mustAdd(p)
	n.mustAdd(q)
	var st struct {
		Endpoints []struct {
			Addr        string `json:"address"`
			Container   string `json:"container"`
			ContainerID string `json:"container_id"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(n.bpfnet("status", "--json"), &st); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, e := range st.Endpoints {
		names[e.Addr] = e.Container + " " + e.ContainerID
	}
	if want := "default/web " + p.rt.ContainerID; names[p.addr.String()] != want {
		t.Errorf("bpfnet status --json names %s %q, want %q", p.addr, names[p.addr.String()], want)
	}
	if want := q.rt.ContainerID[:12] + " " + q.rt.ContainerID; names[q.addr.String()] != want {
		t.Errorf("bpfnet status --json names %s %q, want %q", q.addr, names[q.addr.String()], want)
	}
	greet(t, &p.Namespace, ":80")
	greet(t, &n.ext.Namespace, n.ext.Addr.String()+":9000")

	wantGreeting(t, &p.Namespace, n.ext.Addr.String()+":9000", n.ext.HostAddr.String())
	hostPort := n.ext.HostAddr.String() + ":8080"
	for _, from := range []*pod{p, q} {
		c, who := dial(t, &from.Namespace, hostPort)
		if who == "" {
			t.Errorf("hairpin from %s: no greeting", from.name)
		}
		c.echo(t, "hairpin from "+from.name)
		c.Close()
	}
}

// TestCNIHostIP: a port bound to one host address answers there and not
// on the host's other address, where a port bound to every address
// answers.
func TestCNIHostIP(t *testing.T) {
	n := newNode(t)
	second := netip.MustParseAddr(n.ext.HostAddr.String()).Next().Next()
	if _, err := n.topo.Host.Run(context.Background(), "ip", "addr", "add", second.String()+"/24", "dev", n.ext.Uplink); err != nil {
		t.Fatal(err)
	}
	p := n.newPod("web", port(8081, 80, "tcp", n.ext.HostAddr.String()), port(8082, 80, "tcp", ""))
	n.mustAdd(p)
	greet(t, &p.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8081", n.ext.Addr.String())
	wantGreeting(t, &n.ext.Namespace, second.String()+":8082", n.ext.Addr.String())
	wantNoAnswer(t, &n.ext.Namespace, second.String()+":8081")
}

// TestCNIPortTaken: a hostPort mapped by a pod is refused to another with
// a CNI error, and the first pod keeps it; the refused pod, once deleted,
// is added again with a free port.
func TestCNIPortTaken(t *testing.T) {
	n := newNode(t)
	a := n.newPod("first", port(8080, 80, "tcp", ""))
	b := n.newPod("second", port(8080, 80, "tcp", ""))
	n.mustAdd(a)
	greet(t, &a.Namespace, ":80")
	err := n.add(b)
	if cniCode(err) != cni.CodePortTaken {
		t.Fatalf("ADD of a second pod on 8080: %v, want CNI error %d", err, cni.CodePortTaken)
	}
	t.Logf("refused as wanted: %v", err)
	if err := n.del(b); err != nil {
		t.Fatalf("DEL of the refused pod: %v", err)
	}
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8080", n.ext.Addr.String())
	if err := n.check(a); err != nil {
		t.Errorf("CHECK of the first pod: %v", err)
	}

	b = n.newPod("third", port(8090, 80, "tcp", ""))
	n.mustAdd(b)
	greet(t, &b.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8090", n.ext.Addr.String())
}

// TestCNIConcurrent: 40 pods added at once, as a runtime starting a node's
// pods does, each served on its hostPort; then deleted at once, leaving
// no port, endpoint, flow or file behind.
func TestCNIConcurrent(t *testing.T) {
	n := newNode(t)
	const count = 40
	pods := make([]*pod, count)
	for i := range pods {
		pods[i] = n.newPod(fmt.Sprintf("p%d", i), port(20000+i, 80, "tcp", ""))
	}
	parallel := func(what string, fn func(*pod) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, count)
		for i, p := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = fn(p)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s %s: %v", what, pods[i].name, err)
			}
		}
	}
	began := time.Now()
	parallel("ADD", n.add)
	t.Logf("%d ADDs in %v", count, time.Since(began))
	if ps := n.portsJSON(); len(ps) != count {
		t.Fatalf("bpfnet ports: %d ports, want %d", len(ps), count)
	}
	if f := n.stateFiles(); len(f) != count {
		t.Fatalf("%d state files, want %d", len(f), count)
	}
	for _, i := range []int{0, count / 2, count - 1} {
		greet(t, &pods[i].Namespace, ":80")
		wantGreeting(t, &n.ext.Namespace, fmt.Sprintf("%s:%d", n.ext.HostAddr, 20000+i), n.ext.Addr.String())
	}
	// The agent's CHECK: the bridge plugin's own fails here, its cached
	// results holding the bridge's MAC of before the later pods' veths
	// joined it (the bridge takes the lowest MAC of its ports).
	veths := map[*pod]string{}
	for _, p := range pods {
		veths[p] = n.hostVeth(p)
	}
	parallel("CHECK", func(p *pod) error { return n.agentCheck(p, veths[p]) })

	began = time.Now()
	parallel("DEL", n.del)
	t.Logf("%d DELs in %v", count, time.Since(began))
	if ps := n.portsJSON(); len(ps) != 0 {
		t.Errorf("bpfnet ports after DEL: %v", ps)
	}
	var st struct {
		Endpoints []any `json:"endpoints"`
	}
	if err := json.Unmarshal(n.bpfnet("status", "--json"), &st); err != nil || len(st.Endpoints) != 0 {
		t.Errorf("bpfnet status endpoints after DEL: %v (%v)", st.Endpoints, err)
	}
	var flows []any
	if err := json.Unmarshal(n.bpfnet("ct", "--json", "--addr", n.ext.Addr.String()), &flows); err != nil || len(flows) != 0 {
		t.Errorf("bpfnet ct after DEL: %v (%v)", flows, err)
	}
	if f := n.stateFiles(); len(f) != 0 {
		t.Errorf("state files after DEL: %v", f)
	}
	wantNoAnswer(t, &n.ext.Namespace, fmt.Sprintf("%s:%d", n.ext.HostAddr, 20000))
}

// TestCNIGC: GC, as containerd and CRI-O call it through libcni with the
// attachments still valid, removes the pods whose DEL never came (one
// still running, one whose namespace is gone) even when the runtime's
// cache has forgotten them, and keeps the valid ones.
func TestCNIGC(t *testing.T) {
	n := newNode(t)
	keep := n.newPod("keep", port(8080, 80, "tcp", ""))
	lost := n.newPod("lost", port(8081, 80, "tcp", ""))
	n.mustAdd(keep)
	n.mustAdd(lost)
	greet(t, &keep.Namespace, ":80")
	greet(t, &lost.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8081", n.ext.Addr.String())
	// A pod whose node-side namespace went away with its veth (a crash):
	// its attachment stays kept, and does not keep the others from being
	// served.
	dead := n.newPod("dead", port(8082, 80, "tcp", ""))
	n.mustAdd(dead)
	if out, err := exec.Command("ip", "netns", "del", dead.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v\n%s", dead.Name, err, out)
	}
	late := n.newPod("late", port(8083, 80, "tcp", ""))
	n.mustAdd(late)
	greet(t, &late.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8083", n.ext.Addr.String())
	if f := n.stateFiles(); len(f) != 4 {
		t.Fatalf("state files %v, want 4", f)
	}
	// libcni's GC deletes what its cache holds itself: forget the lost
	// and the dead pods there, so that only the plugin's GC can remove
	// them.
	for _, p := range []*pod{lost, dead} {
		cached, _ := filepath.Glob(filepath.Join(n.cache, "results", "*"+p.rt.ContainerID+"*"))
		if len(cached) == 0 {
			t.Fatalf("no cached result of %s in %s", p.name, n.cache)
		}
		for _, f := range cached {
			os.Remove(f)
		}
	}
	if err := n.gc(keep, late); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if f := n.stateFiles(); len(f) != 2 {
		t.Errorf("state files after GC: %v, want %s's and %s's", f, keep.name, late.name)
	}
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8083", n.ext.Addr.String())
	if err := n.del(late); err != nil {
		t.Fatal(err)
	}
	if ps := n.portsJSON(); len(ps) != 1 || ps[0]["host_port"] != 8080.0 {
		t.Errorf("bpfnet ports after GC: %v, want only 8080", ps)
	}
	if f := n.stateFiles(); len(f) != 1 || !strings.HasPrefix(f[0], keep.rt.ContainerID+"_") {
		t.Errorf("state files after GC: %v, want only %s's", f, keep.name)
	}
	wantNoAnswer(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8081")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8080", n.ext.Addr.String())
	if err := n.check(keep); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}
}

// TestCNIStatus: STATUS passes while the agent runs; with the agent
// stopped, the plugin's own answer is CNI error 50, through libcni and
// read from the plugin's JSON on its stdout.
//
// DEL with the agent stopped succeeds (SPEC.md: DEL completes as far as
// it can; kubelet would retry it and keep the pod terminating): the
// plugin removes the attachment's file, so that the next agent serves
// the pod no more, while the pod DEL left alone is served again.
func TestCNIStatus(t *testing.T) {
	n := newNode(t)
	if err := n.status(); err != nil {
		t.Fatalf("STATUS with the agent running: %v", err)
	}
	// The plugin run by hand, as libcni runs it, in the node's host
	// namespace: with the agent running, it exits 0 and prints nothing.
	statusByHand := func() ([]byte, error) {
		conf := n.list.Plugins[1].Bytes
		var m map[string]any
		if err := json.Unmarshal(conf, &m); err != nil {
			t.Fatal(err)
		}
		m["name"], m["cniVersion"] = n.list.Name, n.list.CNIVersion
		conf, _ = json.Marshal(m)
		cmd := n.topo.Host.Command(context.Background(), filepath.Join(binDir, "bpfnet"))
		cmd.Env = append(os.Environ(), "CNI_COMMAND=STATUS", "CNI_PATH="+binDir)
		cmd.Stdin = strings.NewReader(string(conf))
		return cmd.Output()
	}
	if out, err := statusByHand(); err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("the plugin's STATUS with the agent running: exit %v, stdout %q, want success and no output", err, out)
	}
	gone := n.newPod("gone", port(8080, 80, "tcp", ""))
	kept := n.newPod("kept", port(8081, 80, "tcp", ""))
	n.mustAdd(gone)
	n.mustAdd(kept)
	n.stopAgent()
	if err := n.status(); cniCode(err) != 50 {
		t.Errorf("STATUS with the agent stopped: %v, want CNI error 50", err)
	}
	if err := n.add(n.newPod("late")); cniCode(err) != 50 {
		t.Errorf("ADD with the agent stopped: %v, want CNI error 50", err)
	}
	if err := n.del(gone); err != nil {
		t.Errorf("DEL with the agent stopped: %v", err)
	}
	if f := n.stateFiles(); len(f) != 1 || !strings.HasPrefix(f[0], kept.rt.ContainerID+"_") {
		t.Errorf("state files after DEL with the agent stopped: %v, want only %s's", f, kept.name)
	}
	out, err := statusByHand()
	var answer struct {
		CNIVersion string `json:"cniVersion"`
		Code       int    `json:"code"`
		Msg        string `json:"msg"`
	}
	if jerr := json.Unmarshal(out, &answer); err == nil || jerr != nil || answer.Code != 50 || answer.Msg == "" {
		t.Errorf("the plugin's STATUS without the agent: exit %v, stdout %q, want a JSON error of code 50", err, out)
	}
	n.startAgent()
	if err := n.status(); err != nil {
		t.Errorf("STATUS with the agent started again: %v", err)
	}
	if ps := n.portsJSON(); len(ps) != 1 || ps[0]["host_port"] != 8081.0 {
		t.Errorf("bpfnet ports after the restart: %v, want only %s's 8081", ps, kept.name)
	}
	greet(t, &gone.Namespace, ":80")
	greet(t, &kept.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8081", n.ext.Addr.String())
	wantNoAnswer(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8080")
}

// TestCNIAgentRestart: a connection through a pod's hostPort lives on
// while the agent is stopped and after a new one starts, which serves
// the pods of the old one from its files (CHECK, DEL) and new ones.
func TestCNIAgentRestart(t *testing.T) {
	n := newNode(t)
	p := n.newPod("web", port(8080, 80, "tcp", ""))
	n.mustAdd(p)
	greet(t, &p.Namespace, ":80")
	hostPort := n.ext.HostAddr.String() + ":8080"
	c, _ := dial(t, &n.ext.Namespace, hostPort)
	defer c.Close()
	c.echo(t, "before the restart")
	old := n.agent.Process.Pid

	n.stopAgent()
	if err := n.agent; err != nil {
		t.Fatal("the agent is still recorded as running")
	}
	c.echo(t, "while no agent runs")
	n.startAgent()
	if n.agent.Process.Pid == old {
		t.Fatal("the same agent process answers")
	}
	c.echo(t, "after the restart")
	if err := n.check(p); err != nil {
		t.Errorf("CHECK through the new agent: %v", err)
	}
	q := n.newPod("late", port(8081, 80, "tcp", ""))
	n.mustAdd(q)
	greet(t, &q.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8081", n.ext.Addr.String())
	c.echo(t, "after another pod came")

	if err := n.del(p); err != nil {
		t.Fatalf("DEL through the new agent: %v", err)
	}
	wantNoAnswer(t, &n.ext.Namespace, hostPort)
}

// TestCNIVersions: the older spec versions the plugin speaks, 0.4.0 and
// 1.0.0 (prevResult in their formats), through ADD, CHECK and DEL: the
// hostPort answers, then no longer does.
func TestCNIVersions(t *testing.T) {
	for _, v := range []string{"0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			n := newNodeVersion(t, v)
			p := n.newPod("web", port(8080, 80, "tcp", ""))
			n.mustAdd(p)
			greet(t, &p.Namespace, ":80")
			hostPort := n.ext.HostAddr.String() + ":8080"
			wantGreeting(t, &n.ext.Namespace, hostPort, n.ext.Addr.String())
			if err := n.check(p); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := n.del(p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			wantNoAnswer(t, &n.ext.Namespace, hostPort)
			if f := n.stateFiles(); len(f) != 0 {
				t.Errorf("state files after DEL: %v", f)
			}
		})
	}
}

// TestCNIHostSocket: a hostPort that a process of the host holds (a TCP
// listener on every address, a UDP socket on the hostIP) is refused with
// a CNI error and nothing kept, and the host's process keeps serving the
// port; its twins, a free port and the same ports in the other protocol,
// are accepted and served.
func TestCNIHostSocket(t *testing.T) {
	n := newNode(t)
	hostIP := n.ext.HostAddr.String()
	ln := n.topo.Host.ServeTCP(t, "0.0.0.0:8080", func(c net.Conn) { fmt.Fprintln(c, "host") })
	defer ln.Close()
	udp, err := n.topo.Host.ListenUDP(hostIP + ":5353")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, p := range []*pod{
		n.newPod("tcp", port(8080, 80, "tcp", "")),
		n.newPod("udp", port(5353, 53, "udp", hostIP)),
		n.newPod("udpall", port(9000, 90, "tcp", ""), port(5353, 53, "udp", "")),
	} {
		err := n.add(p)
		if cniCode(err) != cni.CodePortTaken || !strings.Contains(err.Error(), "process of the host") {
			t.Errorf("ADD of %s on a host socket's port: %v, want CNI error %d naming the host's process", p.name, err, cni.CodePortTaken)
		} else {
			t.Logf("refused as wanted: %v", err)
		}
		if err := n.del(p); err != nil {
			t.Errorf("DEL of the refused pod %s: %v", p.name, err)
		}
	}
	if f := n.stateFiles(); len(f) != 0 {
		t.Errorf("refused ADDs kept %v", f)
	}
	if ps := n.portsJSON(); len(ps) != 0 {
		t.Errorf("refused ADDs published %v", ps)
	}
	wantGreeting(t, &n.ext.Namespace, hostIP+":8080", "host")

	p := n.newPod("free", port(8081, 80, "tcp", ""), port(8080, 80, "udp", ""), port(5353, 80, "tcp", hostIP))
	n.mustAdd(p)
	greet(t, &p.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, hostIP+":8081", n.ext.Addr.String())
	wantGreeting(t, &n.ext.Namespace, hostIP+":5353", n.ext.Addr.String())
	wantGreeting(t, &n.ext.Namespace, hostIP+":8080", "host")
	if err := n.check(p); err != nil {
		t.Errorf("CHECK of the pod on free ports: %v", err)
	}
}

// TestCNIAddressClaimed: an ADD whose prevResult claims an address that
// another pod's attachment holds (here from a second host-local store
// that hands the same address out again) is refused, and the first pod
// keeps its address, port and state through the refused pod's DEL; its
// twin, a pod with an address of its own from the first store, is
// served.
func TestCNIAddressClaimed(t *testing.T) {
	n := newNode(t)
	a := n.newPod("first", port(8080, 80, "tcp", ""))
	n.mustAdd(a)
	greet(t, &a.Namespace, ":80")

	other := strings.Replace(n.conf, fmt.Sprintf("%q", n.ipam), fmt.Sprintf("%q", filepath.Join(t.TempDir(), "ipam")), 1)
	list, err := libcni.ConfListFromBytes([]byte(other))
	if err != nil {
		t.Fatal(err)
	}
	b := n.newPod("claimer", port(8081, 80, "tcp", ""))
	err = n.inHost(func(ctx context.Context) error {
		_, err := n.cfg.AddNetworkList(ctx, list, b.rt)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), a.addr.String()) || !strings.Contains(err.Error(), "default/first") {
		t.Errorf("ADD of a pod given %s again: %v, want a refusal naming the address and default/first", a.addr, err)
	} else {
		t.Logf("refused as wanted: %v", err)
	}
	if err := n.inHost(func(ctx context.Context) error { return n.cfg.DelNetworkList(ctx, list, b.rt) }); err != nil {
		t.Errorf("DEL of the refused pod: %v", err)
	}
	if f := n.stateFiles(); len(f) != 1 {
		t.Errorf("agent state files %v, want the first pod's alone", f)
	}
	if err := n.check(a); err != nil {
		t.Errorf("CHECK of the first pod after the refused claim: %v", err)
	}
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8080", n.ext.Addr.String())

	c := n.newPod("third", port(8081, 80, "tcp", ""))
	n.mustAdd(c)
	greet(t, &c.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, n.ext.HostAddr.String()+":8081", n.ext.Addr.String())
}

// TestCNISpoofedSource: a pod that sends with another pod's address (a
// raw socket keeps the source as given) is dropped at its veth, counted
// as spoofed, to a pod of its network and to the outside alike; its
// twin, the same datagrams from its own address, arrive.
func TestCNISpoofedSource(t *testing.T) {
	n := newNode(t)
	a, b, c := n.newPod("victim"), n.newPod("forger"), n.newPod("target")
	for _, p := range []*pod{a, b, c} {
		n.mustAdd(p)
	}
	addrOf := func(p *pod) netip.Addr { ip, _ := netip.AddrFromSlice(p.addr.To4()); return ip }
	spoofed := func() float64 {
		var st struct {
			Drops map[string]float64 `json:"drops"`
		}
		if err := json.Unmarshal(n.bpfnet("status", "--json"), &st); err != nil {
			t.Fatal(err)
		}
		return st.Drops["spoofed"]
	}
	ext := netip.MustParseAddr(n.ext.Addr.String())
	for _, to := range []struct {
		ns   *lab.Namespace
		addr netip.Addr
	}{{&c.Namespace, addrOf(c)}, {&n.ext.Namespace, ext}} {
		conn, err := to.ns.ListenUDP(netip.AddrPortFrom(to.addr, 5000).String())
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 64)
		go func() {
			buf := make([]byte, 64)
			for {
				k, _, err := conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					close(got)
					return
				}
				got <- string(buf[:k])
			}
		}()
		count := func(what string, want int) int {
			deadline := time.After(2 * time.Second)
			seen := 0
			for {
				select {
				case m := <-got:
					if m == what {
						seen++
					}
					if seen == want {
						return seen
					}
				case <-deadline:
					return seen
				}
			}
		}
		before := spoofed()
		forged := make([][]byte, 10)
		own := make([][]byte, 10)
		for i := range forged {
			forged[i] = lab.UDPv4(addrOf(a), to.addr, 40000, 5000, []byte("forged"))
			own[i] = lab.UDPv4(addrOf(b), to.addr, 40000, 5000, []byte("own"))
		}
		if err := b.SendIPv4(to.addr, forged...); err != nil {
			t.Fatal(err)
		}
		if k := count("forged", 1); k != 0 {
			t.Errorf("%s received %d datagrams from %s with %s's address, want none", to.addr, k, b.name, a.name)
		}
		if d := spoofed() - before; d != 10 {
			t.Errorf("%v drops counted spoofed after 10 forged datagrams to %s, want 10", d, to.addr)
		}
		if err := b.SendIPv4(to.addr, own...); err != nil {
			t.Fatal(err)
		}
		if k := count("own", 10); k != 10 {
			t.Errorf("%s received %d of %s's 10 datagrams from its own address", to.addr, k, b.name)
		}
		conn.Close()
	}
}

// TestCNIDualStack: a dual-stack conflist (host-local with an IPv6
// range) gives the pod an IPv6 address, which bpfnet serves beside the
// IPv4 one: a hostPort on every address ("" or ::) answers on both
// families with the client's address kept, one on 0.0.0.0 on IPv4 alone
// (its IPv6 twin gets no answer); the pod's IPv6 egress leaves with the
// uplink's IPv6 address; CHECK passes; status, ports and ct show the IPv6
// endpoint, ports and flows named by the pod. Another pod reaches the
// hostPort through the host's IPv6 address (hairpin) and cannot send
// with the first pod's IPv6 address (its own arrives). An IPv6-only host
// listener refuses a hostPort on both families, not one on 0.0.0.0. DEL
// takes the IPv6 port and flows away too.
func TestCNIDualStack(t *testing.T) {
	n := newDualStackNode(t)
	p := n.newPod("web", port(8080, 80, "tcp", ""), port(8081, 80, "tcp", "::"), port(8082, 80, "tcp", "0.0.0.0"))
	n.mustAdd(p)
	if !podSubnet6.Contains(p.addr6) {
		t.Fatalf("the pod's IPv6 address %s is not in %s", p.addr6, podSubnet6)
	}
	greet(t, &p.Namespace, ":80")
	v6 := func(port int) string { return netip.AddrPortFrom(host6, uint16(port)).String() }
	v4 := func(port int) string { return fmt.Sprintf("%s:%d", n.ext.HostAddr, port) }
	for _, hp := range []int{8080, 8081} {
		wantGreeting(t, &n.ext.Namespace, v6(hp), ext6.String())
		wantGreeting(t, &n.ext.Namespace, v4(hp), n.ext.Addr.String())
	}
	wantGreeting(t, &n.ext.Namespace, v4(8082), n.ext.Addr.String())
	wantNoAnswer(t, &n.ext.Namespace, v6(8082))

	// Egress over IPv6 leaves with the uplink's address.
	greet(t, &n.ext.Namespace, "[::]:9000")
	wantGreeting(t, &p.Namespace, netip.AddrPortFrom(ext6, 9000).String(), host6.String())
	if err := n.check(p); err != nil {
		t.Errorf("CHECK of the dual-stack pod: %v", err)
	}

	const name = "default/web"
	id := p.rt.ContainerID
	var v6ports []string
	for _, pj := range n.portsJSON() {
		if pj["container_ip"] == p.addr6.String() {
			if pj["container"] != name || pj["container_id"] != id || pj["host_ip"] != "::" {
				t.Errorf("bpfnet ports --json: %v, want [::] to %s named %s (%s)", pj, p.addr6, name, id)
			}
			v6ports = append(v6ports, fmt.Sprint(pj["host_port"]))
		}
	}
	if strings.Join(v6ports, " ") != "8080 8081" {
		t.Errorf("bpfnet ports --json: IPv6 host ports %v, want 8080 and 8081", v6ports)
	}
	var st struct {
		Endpoints []struct {
			Addr        string `json:"address"`
			Container   string `json:"container"`
			ContainerID string `json:"container_id"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(n.bpfnet("status", "--json"), &st); err != nil {
		t.Fatal(err)
	}
	named := map[string]string{}
	for _, e := range st.Endpoints {
		named[e.Addr] = e.Container + " " + e.ContainerID
	}
	for _, a := range []string{p.addr.String(), p.addr6.String()} {
		if named[a] != name+" "+id {
			t.Errorf("bpfnet status --json names %s %q, want %q (endpoints %+v)", a, named[a], name+" "+id, st.Endpoints)
		}
	}
	type flow struct {
		Kind        string `json:"kind"`
		Reply       bool   `json:"reply"`
		Src         string `json:"src"`
		NewSrc      string `json:"translated_src"`
		NewDst      string `json:"translated_dst"`
		Container   string `json:"container"`
		ContainerID string `json:"container_id"`
	}
	var flows []flow
	if err := json.Unmarshal(n.bpfnet("ct", "--json", "--addr", p.addr6.String()), &flows); err != nil {
		t.Fatal(err)
	}
	var dnat, snat int
	for _, f := range flows {
		switch {
		case f.Reply || f.Container != name || f.ContainerID != id:
		case f.Kind == "dnat" && f.NewDst == netip.AddrPortFrom(p.addr6, 80).String():
			dnat++
		case f.Kind == "snat" && strings.HasPrefix(f.Src, "["+p.addr6.String()+"]:") && strings.HasPrefix(f.NewSrc, "["+host6.String()+"]:"):
			snat++
		}
	}
	if dnat < 2 || snat < 1 {
		t.Errorf("bpfnet ct --json --addr %s: %d dnat flows to [%s]:80 and %d masqueraded ones named %s, want 2 and 1: %+v", p.addr6, dnat, p.addr6, snat, name, flows)
	}
	if out := grepLines(string(n.bpfnet("ports")), p.addr6.String()); !strings.Contains(out, name) {
		t.Errorf("bpfnet ports: the lines of %s are %q, want them to name %s", p.addr6, out, name)
	}

	// One series per pod, not one per address family.
	body := n.scrape()
	if !strings.HasPrefix(body, "HTTP/1.0 200") && !strings.HasPrefix(body, "HTTP/1.1 200") {
		t.Errorf("/metrics of a dual-stack pod: %.200s", body)
	}
	if k := strings.Count(body, `bpfnet_container_receive_bytes_total{compose_project="",compose_service="",container="default/web"`); k != 1 {
		t.Errorf("/metrics has %d receive series of default/web, want 1:\n%s", k, grepLines(body, "bpfnet_container_receive"))
	}

	// Another pod: hairpin through the host's IPv6 address, seen with its
	// own address; its datagrams with the first pod's IPv6 address are
	// dropped as spoofed, its own arrive (masqueraded).
	q := n.newPod("client")
	n.mustAdd(q)
	wantGreeting(t, &q.Namespace, v6(8080), q.addr6.String())
	spoofed := func() float64 {
		var st struct {
			Drops map[string]float64 `json:"drops"`
		}
		if err := json.Unmarshal(n.bpfnet("status", "--json"), &st); err != nil {
			t.Fatal(err)
		}
		return st.Drops["spoofed"]
	}
	got := listenUDP6(t, &n.ext.Namespace, netip.AddrPortFrom(ext6, 5000))
	before := spoofed()
	if err := sendUDP6(&q.Namespace, p.addr6, netip.AddrPortFrom(ext6, 5000), "forged", 10); err != nil {
		t.Fatal(err)
	}
	if k := got("forged", 1); k != 0 {
		t.Errorf("the outside received %d IPv6 datagrams forged with %s's address", k, p.name)
	}
	if d := spoofed() - before; d != 10 {
		t.Errorf("%v drops counted spoofed after 10 forged IPv6 datagrams, want 10", d)
	}
	if err := sendUDP6(&q.Namespace, q.addr6, netip.AddrPortFrom(ext6, 5000), "own", 10); err != nil {
		t.Fatal(err)
	}
	if k := got("own", 10); k != 10 {
		t.Errorf("the outside received %d of 10 IPv6 datagrams from %s's own address", k, q.name)
	}

	// A host socket on [::] that is IPv6-only holds the IPv6 half of a
	// hostPort on every address, not an IPv4 one.
	var ln net.Listener
	if err := n.topo.Host.Do(func() error {
		var err error
		ln, err = net.Listen("tcp6", "[::]:8090") // Go's tcp6 sets IPV6_V6ONLY
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := n.add(n.newPod("both", port(8090, 80, "tcp", ""))); cniCode(err) != cni.CodePortTaken {
		t.Errorf("ADD of 8090 on both families beside an IPv6 listener on it: %v, want CNI error %d", err, cni.CodePortTaken)
	}
	four := n.newPod("four", port(8090, 80, "tcp", "0.0.0.0"))
	n.mustAdd(four)
	greet(t, &four.Namespace, ":80")
	wantGreeting(t, &n.ext.Namespace, v4(8090), n.ext.Addr.String())

	if err := n.del(p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	wantNoAnswer(t, &n.ext.Namespace, v6(8080))
	if err := json.Unmarshal(n.bpfnet("ct", "--json", "--addr", p.addr6.String()), &flows); err != nil || len(flows) != 0 {
		t.Errorf("bpfnet ct --addr %s after DEL: %+v (%v), want none", p.addr6, flows, err)
	}
	for _, pj := range n.portsJSON() {
		if pj["container"] == name {
			t.Errorf("bpfnet ports after DEL: %v is still %s's", pj, name)
		}
	}
	wantGreeting(t, &n.ext.Namespace, v4(8090), n.ext.Addr.String())
}

// listenUDP6 receives datagrams on addr in ns; the function it returns
// counts those whose payload is what, up to want, waiting two seconds at
// most.
func listenUDP6(t *testing.T, ns *lab.Namespace, addr netip.AddrPort) func(what string, want int) int {
	t.Helper()
	conn, err := ns.ListenUDP(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	got := make(chan string, 64)
	go func() {
		buf := make([]byte, 64)
		for {
			k, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			got <- string(buf[:k])
		}
	}()
	return func(what string, want int) int {
		deadline := time.After(2 * time.Second)
		seen := 0
		for {
			select {
			case m := <-got:
				if m == what {
					seen++
				}
				if seen == want {
					return seen
				}
			case <-deadline:
				return seen
			}
		}
	}
}

// sendUDP6 sends count UDP datagrams from src to dst out of a raw socket
// of ns (IPPROTO_RAW implies IPV6_HDRINCL), so that the source is kept as
// given; the UDP checksum, which IPv6 requires, is computed here.
func sendUDP6(ns *lab.Namespace, src netip.Addr, dst netip.AddrPort, payload string, count int) error {
	d := make([]byte, 40+8+len(payload))
	d[0] = 0x60
	binary.BigEndian.PutUint16(d[4:], uint16(8+len(payload)))
	d[6], d[7] = unix.IPPROTO_UDP, 64
	s16, d16 := src.As16(), dst.Addr().As16()
	copy(d[8:], s16[:])
	copy(d[24:], d16[:])
	u := d[40:]
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	// The pseudo-header (addresses, length, next header) and the datagram.
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(d[8:40])
	sum += uint32(len(u)) + unix.IPPROTO_UDP
	add(u)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	csum := ^uint16(sum)
	if csum == 0 {
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], csum)
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw IPv6 socket in namespace %s: %w", ns.Name, err)
		}
		defer unix.Close(fd)
		for range count {
			if err := unix.Sendto(fd, d, 0, &unix.SockaddrInet6{Addr: d16}); err != nil {
				return fmt.Errorf("sending to %s from namespace %s: %w", dst, ns.Name, err)
			}
		}
		return nil
	})
}
