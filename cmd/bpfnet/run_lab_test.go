// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot

// buildBinary: see lab.BuildBpfnet.
var buildBinary = lab.BuildBpfnet

// TestRunInLab runs `bpfnet run` as a daemon in a lab's host namespace:
// the published port answers, stopping the daemon keeps the datapath and
// an established connection, a new daemon adopts the pinned state, and
// `bpfnet down` removes it all.
func TestRunInLab(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
	c0, ext := topo.Containers[0], topo.Externals[0]
	pin := pinPath(t, topo, bin, "bpfnet-run-test-")

	greetServer(t, &c0.Namespace, c0.Addr.String()+":80", true)

	start := func() *exec.Cmd {
		cmd := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin,
			"--bridge", topo.Bridges[0].Name, "--uplink", ext.Uplink,
			"--publish", fmt.Sprintf("8080:%s:80", c0.Addr),
			"--container", "web="+c0.Addr.String(), "--metrics-addr", "127.0.0.1:19475")
		ready := readyWatch(t, cmd)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready()
		waitAttached(t, topo, bin, pin, 4)
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("bpfnet run exited with %v after SIGTERM", err)
		}
	}
	hostPort := ext.HostAddr.String() + ":8080"
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := ext.DialTCP(ctx, hostPort)
		if err != nil {
			t.Fatalf("dial %s: %v", hostPort, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		who, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(who) != ext.Addr.String() {
			t.Fatalf("greeting %q %v, want the client address %s", who, err, ext.Addr)
		}
		return c, r
	}
	echo := func(c net.Conn, r *bufio.Reader, msg string) {
		t.Helper()
		fmt.Fprint(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q %v", msg, got, err)
		}
	}

	daemon := start()
	live, r := dial()
	defer live.Close()
	echo(live, r, "before restart")
	// The host's own processes reach the published port without a proxy.
	var local net.Conn
	if err := topo.Host.Do(func() error {
		var err error
		local, err = net.DialTimeout("tcp", "127.0.0.1:8080", 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("curl localhost:8080 on the host: %v", err)
	}
	lr := bufio.NewReader(local)
	if who, err := lr.ReadString('\n'); err != nil || strings.TrimSpace(who) != topo.Bridges[0].Gateway.String() {
		t.Errorf("localhost:8080 from the host: container saw %q %v, want the bridge address", who, err)
	}
	echo(local, lr, "from the host itself")
	local.Close()
	checkOperatorCommands(t, topo, bin, pin, c0.Addr.String(), ext.Addr.String())
	checkMetrics(t, topo, c0.HostVeth)

	stop(daemon)
	echo(live, r, "daemon stopped, datapath still there")
	c2, r2 := dial()
	echo(c2, r2, "new connection while stopped")
	c2.Close()

	daemon = start()
	echo(live, r, "adopted by a new daemon")
	stop(daemon)

	out, err := topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).CombinedOutput()
	if err != nil {
		t.Fatalf("bpfnet down: %v\n%s", err, out)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("bpfnet down left %s", pin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if c, err := ext.DialTCP(ctx, hostPort); err == nil {
		c.Close()
		t.Error("published port still answers after bpfnet down")
	}
}

// statusJSON runs `bpfnet status --json` in the lab's host namespace and
// decodes its report.
func statusJSON(t *testing.T, topo *lab.Topology, bin, pin string) statusReport {
	t.Helper()
	out, err := topo.Host.Command(context.Background(), bin, "status", "--json", "--pin-path", pin).Output()
	if err != nil {
		t.Fatalf("bpfnet status --json: %v", err)
	}
	var r statusReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decoding bpfnet status --json: %v", err)
	}
	return r
}

// waitAttached polls `bpfnet status --json` until n programs are attached.
func waitAttached(t *testing.T, topo *lab.Topology, bin, pin string, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := topo.Host.Command(context.Background(), bin, "status", "--json", "--pin-path", pin).Output()
		if err == nil {
			var r statusReport
			if json.Unmarshal(out, &r) == nil && len(r.Attachments) >= n && r.Ports > 0 {
				return
			}
			last = string(out)
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("bpfnet run did not attach %d programs: %s", n, last)
}

// checkOperatorCommands reads the running datapath through the operator
// commands, in JSON and in tables.
func checkOperatorCommands(t *testing.T, topo *lab.Topology, bin, pin, container, client string) {
	t.Helper()
	run := func(args ...string) []byte {
		t.Helper()
		out, err := topo.Host.Command(context.Background(), bin, append(args, "--pin-path", pin)...).Output()
		if err != nil {
			t.Fatalf("bpfnet %v: %v", args, err)
		}
		return out
	}
	var ports []portJSON
	if err := json.Unmarshal(run("ports", "--json"), &ports); err != nil {
		t.Fatal(err)
	}
	if len(ports) != 1 || ports[0].HostPort != 8080 || ports[0].ContainerIP != container || ports[0].Connections < 1 {
		t.Errorf("bpfnet ports --json = %+v, want 8080 -> %s with a connection", ports, container)
	}
	var flows []ctJSON
	if err := json.Unmarshal(run("ct", "--json", "--proto", "tcp", "--addr", client), &flows); err != nil {
		t.Fatal(err)
	}
	dnat := 0
	for _, f := range flows {
		if f.Kind == "dnat" && !f.Reply && strings.HasPrefix(f.NewDst, container+":") {
			dnat++
		}
	}
	if dnat != 1 {
		t.Errorf("bpfnet ct --json: %d dnat flows of the client to %s, want 1: %+v", dnat, container, flows)
	}
	var none []ctJSON
	if err := json.Unmarshal(run("ct", "--json", "--proto", "udp"), &none); err != nil || len(none) != 0 {
		t.Errorf("bpfnet ct --proto udp: %v %+v, want no entries", err, none)
	}
	var st statusReport
	if err := json.Unmarshal(run("status", "--json"), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Endpoints) != 1 || st.Endpoints[0].Addr.String() != container || st.CTEntries < 2 || st.CTCapacity == 0 {
		t.Errorf("bpfnet status --json: %+v", st)
	}
	for _, table := range [][]string{{"status"}, {"ports"}, {"ct"}} {
		if out := run(table...); !strings.Contains(string(out), container) {
			t.Errorf("bpfnet %s does not show %s:\n%s", table[0], container, out)
		}
	}
}

// TestRunFollowsLinks: a container that appears after the daemon started
// gets the datapath on its veth within a fraction of a second, and a veth
// that goes away is forgotten.
func TestRunFollowsLinks(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
	ext := topo.Externals[0]
	br := topo.Bridges[0]
	pin := pinPath(t, topo, bin, "bpfnet-run-test-")
	newAddr := br.Subnet.IP.To4()
	newAddr = net.IPv4(newAddr[0], newAddr[1], newAddr[2], 99)
	cmd := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin,
		"--bridge", br.Name, "--uplink", ext.Uplink,
		"--publish", fmt.Sprintf("8080:%s:80", newAddr))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	waitAttached(t, topo, bin, pin, 4)

	// A container joins the bridge as Docker joins one: veth pair, the
	// far end moved into the container's namespace and renamed eth0.
	ns, veth, peer := topo.Prefix+"-late", topo.Prefix+"v99", topo.Prefix+"p99"
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh("ip", "-n", topo.Host.Name, "link", "add", peer, "type", "veth", "peer", "name", veth)
	sh("ip", "-n", topo.Host.Name, "link", "set", peer, "netns", ns)
	sh("ip", "-n", ns, "link", "set", peer, "name", "eth0")
	sh("ip", "-n", ns, "addr", "add", newAddr.String()+"/24", "dev", "eth0")
	sh("ip", "-n", ns, "link", "set", "eth0", "up")
	sh("ip", "-n", ns, "link", "set", "lo", "up")
	sh("ip", "-n", ns, "route", "add", "default", "via", br.Gateway.String())
	late := lab.Namespace{Name: ns, Path: "/run/netns/" + ns}
	greetServer(t, &late, newAddr.String()+":80", false)

	pinFile := filepath.Join(pin, "devices", veth, "links", "ingress_from_container")
	began := time.Now()
	sh("ip", "-n", topo.Host.Name, "link", "set", veth, "master", br.Name, "up")
	for {
		if _, err := os.Stat(pinFile); err == nil {
			break
		}
		if time.Since(began) > 5*time.Second {
			t.Fatalf("no program on %s 5 s after it joined the bridge", veth)
		}
		time.Sleep(2 * time.Millisecond)
	}
	took := time.Since(began)
	t.Logf("attached %s %v after it joined the bridge", veth, took)
	if took > time.Second {
		t.Errorf("attaching a new veth took %v", took)
	}
	// The published port reaches the new container with the client's
	// address (the endpoint was discovered from its namespace).
	var got string
	for i := 0; i < 50 && got != ext.Addr.String(); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := ext.DialTCP(ctx, ext.HostAddr.String()+":8080")
		cancel()
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			got = strings.TrimSpace(line)
			c.Close()
		}
		if got != ext.Addr.String() {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got != ext.Addr.String() {
		t.Fatalf("new container via the published port saw %q, want %s", got, ext.Addr)
	}

	sh("ip", "-n", topo.Host.Name, "link", "del", veth)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(pin, "devices", veth)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pins of deleted %s still there", veth)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scrape reads the daemon's /metrics inside its namespace.
func scrape(t *testing.T, topo *lab.Topology) string {
	t.Helper()
	var body string
	err := topo.Host.Do(func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:19475", 2*time.Second)
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
		t.Fatalf("scraping the daemon: %v", err)
	}
	return body
}

// checkMetrics checks the daemon's /metrics for the web container's series.
func checkMetrics(t *testing.T, topo *lab.Topology, veth string) {
	t.Helper()
	body := scrape(t, topo)
	for _, want := range []string{
		`bpfnet_container_receive_bytes_total{compose_project="",compose_service="",container="web",container_id="",interface="` + veth + `"`,
		`bpfnet_published_port_connections_total{container="web",host_ip="0.0.0.0",host_port="8080",protocol="tcp"} 2`, // the external client and the host itself
		`bpfnet_conntrack_capacity{table="ct4"} 262144`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// readyWatch passes the daemon's log through and returns a function that
// waits until the daemon says it attached the datapath: a restarted daemon
// finds the previous one's pins, so they prove nothing.
func readyWatch(t *testing.T, cmd *exec.Cmd) func() {
	t.Helper()
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			fmt.Fprintln(os.Stderr, sc.Text())
			if !once && strings.Contains(sc.Text(), "datapath attached") {
				once = true
				close(ready)
			}
		}
	}()
	t.Cleanup(func() { pw.Close() })
	return func() {
		t.Helper()
		select {
		case <-ready:
		case <-time.After(15 * time.Second):
			t.Fatal("bpfnet run did not report the datapath attached")
		}
	}
}

// startRun starts cmd, a `bpfnet run`, and waits until it reports the
// datapath attached (see readyWatch); it is stopped with SIGTERM and
// waited for at cleanup.
func startRun(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	ready := readyWatch(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	ready()
}

// TestTwoDaemons: two daemons in two namespaces with two pin paths share
// nothing: each forwards its own ports, answers localhost in its own
// namespace only, reports only its own state, and one going down leaves
// the other working.
func TestTwoDaemons(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	type side struct {
		topo *lab.Topology
		pin  string
		name string
	}
	var sides []side
	for _, name := range []string{"alpha", "beta"} {
		topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
		pin := pinPath(t, topo, bin, "bpfnet-two-")
		c0 := topo.Containers[0]
		c0.ServeTCP(t, c0.Addr.String()+":80", func(c net.Conn) { fmt.Fprintf(c, "%s\n", name) })
		cmd := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin,
			"--bridge", topo.Bridges[0].Name, "--uplink", topo.Externals[0].Uplink,
			"--publish", fmt.Sprintf("8080:%s:80", c0.Addr), "--metrics-addr", "")
		startRun(t, cmd)
		sides = append(sides, side{topo, pin, name})
	}
	ask := func(ns *lab.Namespace, addr string) string {
		var line string
		ns.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				line = err.Error()
				return nil
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, _ = bufio.NewReader(c).ReadString('\n')
			return nil
		})
		return strings.TrimSpace(line)
	}
	for _, s := range sides {
		ext := s.topo.Externals[0]
		if got := ask(&ext.Namespace, ext.HostAddr.String()+":8080"); got != s.name {
			t.Errorf("%s's external host got %q through 8080", s.name, got)
		}
		if got := ask(s.topo.Host, "127.0.0.1:8080"); got != s.name {
			t.Errorf("localhost:8080 in %s's namespace reached %q", s.name, got)
		}
		st := statusJSON(t, s.topo, bin, s.pin)
		want := s.topo.Containers[0].Addr.String()
		if len(st.Endpoints) != 1 || st.Endpoints[0].Addr.String() != want {
			t.Errorf("%s's status shows endpoints %+v, want only %s", s.name, st.Endpoints, want)
		}
		for _, a := range st.Attachments {
			if !strings.HasPrefix(a.Interface, s.topo.Prefix) {
				t.Errorf("%s's status shows %s, which is not its own", s.name, a.Interface)
			}
		}
	}
	a, b := sides[0], sides[1]
	if out, err := a.topo.Host.Command(context.Background(), bin, "down", "--pin-path", a.pin).CombinedOutput(); err != nil {
		t.Fatalf("down %s: %v %s", a.name, err, out)
	}
	extB := b.topo.Externals[0]
	if got := ask(&extB.Namespace, extB.HostAddr.String()+":8080"); got != b.name {
		t.Errorf("after %s went down, %s's port answered %q", a.name, b.name, got)
	}
	if got := ask(b.topo.Host, "127.0.0.1:8080"); got != b.name {
		t.Errorf("after %s went down, localhost in %s reached %q", a.name, b.name, got)
	}
}

// pinPath names a pin folder that does not exist yet (bpfnet run creates
// it) and has `bpfnet down` remove it after the test, whatever happened.
func pinPath(t *testing.T, topo *lab.Topology, bin, pattern string) string {
	t.Helper()
	pin, err := os.MkdirTemp("/sys/fs/bpf", pattern)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(pin)
	t.Cleanup(func() {
		topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
		os.RemoveAll(pin)
	})
	return pin
}

// greetServer serves TCP in ns on addr: each connection gets the client's
// address as the server saw it, then (with echo) the echo of what it sends.
func greetServer(t *testing.T, ns *lab.Namespace, addr string, echo bool) {
	t.Helper()
	ns.ServeTCP(t, addr, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
		if echo {
			io.Copy(c, c)
		}
	})
}

// TestRunRuleDatapaths runs the daemon with each rule datapath: the same
// published port answers through Docker-shaped rules (iptables, or the
// nftables table), and `bpfnet down` removes exactly them: with nftables,
// its table goes and a foreign one stays.
func TestRunRuleDatapaths(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	for _, c := range []struct {
		datapath string
		dump     []string // the command that lists the host's rules
		foreign  bool     // a foreign nftables table exists beside bpfnet's
		// installed and removed judge the dump while bpfnet runs and
		// after bpfnet down.
		installed, removed func(dump string, c0 *lab.Container) string
	}{{
		datapath: "iptables",
		dump:     []string{"iptables-save"},
		installed: func(s string, _ *lab.Container) string {
			if !strings.Contains(s, "BPFNET-DOCKER") || !strings.Contains(s, "--dport 8080 -j DNAT") {
				return "iptables-save lacks the DNAT rule"
			}
			return ""
		},
		removed: func(s string, _ *lab.Container) string {
			if strings.Contains(s, "BPFNET") || strings.Contains(s, "-A ") {
				return "rules left after bpfnet down"
			}
			return ""
		},
	}, {
		datapath: "nftables",
		dump:     []string{"nft", "list", "ruleset"},
		foreign:  true,
		installed: func(s string, c0 *lab.Container) string {
			if !strings.Contains(s, "table ip bpfnet-bridges") || !strings.Contains(s, "tcp dport 8080 counter") ||
				!strings.Contains(s, "dnat to "+c0.Addr.String()+":80") {
				return "the ruleset lacks the table or its DNAT rule"
			}
			return ""
		},
		removed: func(s string, _ *lab.Container) string {
			if strings.Contains(s, "bpfnet-bridges") {
				return "table left after bpfnet down"
			}
			if !strings.Contains(s, "table ip foreign") {
				return "the foreign table went with bpfnet down"
			}
			return ""
		},
	}} {
		t.Run(c.datapath, func(t *testing.T) {
			topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
			c0, ext := topo.Containers[0], topo.Externals[0]
			pin := pinPath(t, topo, bin, "bpfnet-"+c.datapath+"-")
			greetServer(t, &c0.Namespace, c0.Addr.String()+":80", false)
			if c.foreign {
				if out, err := topo.Host.Command(context.Background(), "nft", "add table ip foreign").CombinedOutput(); err != nil {
					t.Fatalf("nft: %v %s", err, out)
				}
			}
			cmd := topo.Host.Command(context.Background(), bin, "run", "--datapath", c.datapath, "--pin-path", pin,
				"--bridge", topo.Bridges[0].Name, "--uplink", ext.Uplink, "--publish", fmt.Sprintf("8080:%s:80", c0.Addr))
			ready := readyWatch(t, cmd)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			ready()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			conn, err := ext.DialTCP(ctx, ext.HostAddr.String()+":8080")
			if err != nil {
				t.Fatalf("published port through %s: %v", c.datapath, err)
			}
			line, _ := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if strings.TrimSpace(line) != ext.Addr.String() {
				t.Errorf("container saw %q, want the client %s", line, ext.Addr)
			}
			dump := func() string {
				out, err := topo.Host.Command(context.Background(), c.dump[0], c.dump[1:]...).Output()
				if err != nil {
					t.Fatal(err)
				}
				return string(out)
			}
			if s := dump(); c.installed(s, c0) != "" {
				t.Errorf("%s:\n%s", c.installed(s, c0), s)
			}
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("bpfnet run: %v", err)
			}
			if out, err := topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).CombinedOutput(); err != nil {
				t.Fatalf("bpfnet down: %v %s", err, out)
			}
			if s := dump(); c.removed(s, c0) != "" {
				t.Errorf("%s:\n%s", c.removed(s, c0), s)
			}
		})
	}
}
