// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/hostfw"
	"github.com/bpfnet/bpfnet/lab"
)

// TestRunHostFirewall: with --fast-path=false a published port's packets
// pass FORWARD, so a DOCKER-USER rule dropping one client stops that
// client's connections and no other's, and the connection works again
// once the rule is gone. With the fast path on, the daemon reports the
// same rule as bypassed, in `bpfnet status`, in its metrics and with one
// warning in the log over several checks, shows it bypassed indeed (the
// client it names connects, the rule's counter stays), and stops
// reporting it once it is removed.
func TestRunHostFirewall(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	topo := lab.Setup(t, lab.Config{
		Containers: []lab.ContainerConfig{{}},
		Externals:  []lab.ExternalConfig{{Subnet: "10.231.0.0/24"}, {Subnet: "10.231.1.0/24"}},
	})
	c0, x0, x1 := topo.Containers[0], topo.Externals[0], topo.Externals[1]
	pin := pinPath(t, topo, bin, "bpfnet-hostfw-test-")
	greetServer(t, &c0.Namespace, c0.Addr.String()+":80", false)
	ctx := context.Background()

	// start runs the daemon; logged counts its log lines containing a
	// string so far.
	start := func(fastPath bool) (stop func(), logged func(string) int) {
		t.Helper()
		cmd := topo.Host.Command(ctx, bin, "run", "--pin-path", pin,
			"--bridge", topo.Bridges[0].Name, "--uplink", x0.Uplink, "--uplink", x1.Uplink,
			"--publish", fmt.Sprintf("8080:%s:80", c0.Addr), "--fast-path="+strconv.FormatBool(fastPath),
			"--host-firewall-interval", "100ms", "--metrics-addr", "127.0.0.1:19475")
		pr, pw := io.Pipe()
		cmd.Stderr = pw
		var mu sync.Mutex
		var lines []string
		ready := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				fmt.Fprintln(os.Stderr, sc.Text())
				mu.Lock()
				lines = append(lines, sc.Text())
				mu.Unlock()
				if strings.Contains(sc.Text(), "datapath attached") {
					select {
					case <-ready:
					default:
						close(ready)
					}
				}
			}
		}()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ready:
		case <-time.After(15 * time.Second):
			t.Fatal("bpfnet run did not report the datapath attached")
		}
		waitAttached(t, topo, bin, pin, 4)
		stop = func() {
			cmd.Process.Signal(syscall.SIGTERM)
			err := cmd.Wait()
			pw.Close()
			if err != nil {
				t.Fatalf("bpfnet run exited with %v after SIGTERM", err)
			}
		}
		logged = func(sub string) int {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, l := range lines {
				if strings.Contains(l, sub) {
					n++
				}
			}
			return n
		}
		return stop, logged
	}
	iptables := func(args ...string) {
		t.Helper()
		if _, err := topo.Host.Run(ctx, "iptables", args...); err != nil {
			t.Fatal(err)
		}
	}
	dropRule := []string{"DOCKER-USER", "-s", x0.Addr.String() + "/32", "-j", "DROP"}
	// The jump and Docker's own RETURN, which the detection ignores.
	iptables("-N", "DOCKER-USER")
	iptables("-A", "DOCKER-USER", "-j", "RETURN")
	iptables("-I", "FORWARD", "-j", "DOCKER-USER")

	// connect dials the published port on ext's uplink address and
	// returns the client address the container saw.
	connect := func(ext *lab.External) (string, error) {
		dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		c, err := ext.DialTCP(dctx, ext.HostAddr.String()+":8080")
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		who, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(who), err
	}
	mustConnect := func(ext *lab.External, why string) {
		t.Helper()
		if who, err := connect(ext); err != nil || who != ext.Addr.String() {
			t.Fatalf("%s: %s to the published port: container saw %q (%v), want %s", why, ext.Name, who, err, ext.Addr)
		}
	}
	// dropped counts the packets the DROP rule matched.
	dropped := func() uint64 {
		t.Helper()
		out, err := topo.Host.Run(ctx, "iptables-save", "-c", "-t", "filter")
		if err != nil {
			t.Fatal(err)
		}
		want := "-A " + strings.Join(dropRule, " ")
		for _, line := range strings.Split(string(out), "\n") {
			pkts, rule, ok := strings.Cut(line, "] ")
			if ok && rule == want {
				n, err := strconv.ParseUint(strings.TrimPrefix(strings.Split(pkts, ":")[0], "["), 10, 64)
				if err != nil {
					t.Fatalf("counter of %q: %v", line, err)
				}
				return n
			}
		}
		t.Fatalf("rule %q not in iptables-save:\n%s", want, out)
		return 0
	}
	mustBeDropped := func(ext *lab.External) {
		t.Helper()
		before := dropped()
		who, err := connect(ext)
		if !lab.IsTimeout(err) {
			t.Fatalf("%s through a DOCKER-USER DROP rule: container saw %q, error %v; want a timeout", ext.Name, who, err)
		}
		if after := dropped(); after <= before {
			t.Fatalf("%s timed out but the DROP rule matched %d -> %d packets: dropped elsewhere", ext.Name, before, after)
		}
	}
	status := func(want func(*hostfw.Status) bool, what string) *hostfw.Status {
		t.Helper()
		var last []byte
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			out, err := topo.Host.Command(ctx, bin, "status", "--json", "--pin-path", pin).Output()
			if err != nil {
				t.Fatalf("bpfnet status --json: %v", err)
			}
			var r statusReport
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatal(err)
			}
			if r.HostFirewall != nil && len(r.HostFirewall.Errors) > 0 {
				t.Fatalf("host firewall check errors: %v", r.HostFirewall.Errors)
			}
			if r.HostFirewall != nil && want(r.HostFirewall) {
				return r.HostFirewall
			}
			last = out
		}
		t.Fatalf("bpfnet status never showed %s:\n%s", what, last)
		return nil
	}
	onlyDockerUser := func(s *hostfw.Status) bool {
		return len(s.Chains) == 1 && s.Chains[0].Chain == "DOCKER-USER" && s.Chains[0].Table == "filter" &&
			strings.HasPrefix(s.Chains[0].Source, "iptables-") && s.Chains[0].Rules == 1 && s.TotalRules == 1
	}

	t.Run("fast_path_off", func(t *testing.T) {
		stop, _ := start(false)
		defer stop()
		status(func(s *hostfw.Status) bool { return !s.Found() && !s.FastPath && !s.Bypassed }, "no rules")
		mustConnect(x0, "without the rule")
		mustConnect(x1, "without the rule")

		iptables(append([]string{"-I"}, dropRule...)...)
		mustBeDropped(x0)
		mustConnect(x1, "a client the rule does not match")
		s := status(func(s *hostfw.Status) bool { return onlyDockerUser(s) && !s.FastPath && !s.Bypassed }, "the rule, not bypassed")
		if text := statusText(t, topo, bin, pin); !strings.Contains(text, "applied (fast path off): 1 rules") {
			t.Errorf("bpfnet status does not say the rule applies:\n%s", text)
		}
		t.Logf("reported: %s", s.Report)

		iptables(append([]string{"-D"}, dropRule...)...)
		mustConnect(x0, "once the rule is gone")
	})

	t.Run("fast_path_on", func(t *testing.T) {
		stop, logged := start(true)
		defer stop()
		status(func(s *hostfw.Status) bool { return !s.Found() && s.FastPath && !s.Bypassed }, "no rules")
		iptables(append([]string{"-I"}, dropRule...)...)
		first := status(func(s *hostfw.Status) bool { return onlyDockerUser(s) && s.FastPath && s.Bypassed }, "the rule, bypassed")
		// Checks go on, the warning is not repeated.
		status(func(s *hostfw.Status) bool { return s.CheckedAt.Sub(first.CheckedAt) >= 300*time.Millisecond }, "three checks more")
		const warning = "host firewall rules do not see translated packets"
		if n := logged(warning); n != 1 {
			t.Errorf("the daemon logged %q %d times over several checks, want once", warning, n)
		}
		if text := statusText(t, topo, bin, pin); !strings.Contains(text, "BYPASSED by the fast path: 1 rules") {
			t.Errorf("bpfnet status does not say the rule is bypassed:\n%s", text)
		}
		// What the report claims: the rule does not see the packets.
		before := dropped()
		mustConnect(x0, "the fast path around the DROP rule")
		if after := dropped(); after != before {
			t.Errorf("the DROP rule matched %d -> %d packets with the fast path on", before, after)
		}
		body := scrape(t, topo)
		for _, want := range []string{
			`bpfnet_host_firewall_bypassed 1`,
			`,table="filter"} 1`,
			`bpfnet_host_firewall_rules{chain="DOCKER-USER",source="iptables-`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q:\n%s", want, grepLines(body, "host_firewall"))
			}
		}
		iptables(append([]string{"-D"}, dropRule...)...)
		status(func(s *hostfw.Status) bool { return !s.Found() && !s.Bypassed }, "the rule gone")
		if body := scrape(t, topo); !strings.Contains(body, "bpfnet_host_firewall_bypassed 0") || strings.Contains(body, "bpfnet_host_firewall_rules{") {
			t.Errorf("metrics once the rule is gone:\n%s", grepLines(body, "host_firewall"))
		}
	})
}

func statusText(t *testing.T, topo *lab.Topology, bin, pin string) string {
	t.Helper()
	out, err := topo.Host.Command(context.Background(), bin, "status", "--pin-path", pin).Output()
	if err != nil {
		t.Fatalf("bpfnet status: %v", err)
	}
	return string(out)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
