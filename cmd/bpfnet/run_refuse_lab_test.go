// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/lab"
)

// TestRunRefusesBadState: each state bpfnet cannot honour is refused by
// `bpfnet run`, with either datapath, with one line naming the problem,
// and leaves nothing: no
// pin folder, no program on any of the lab's interfaces (tcx or clsact),
// no iptables chain. Each refusal's twin, the corrected command, starts
// and attaches.
func TestRunRefusesBadState(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	// The bridge's subnet and the uplink's share 10.231.0.0/16, so that a
	// CIDR can cover a bridge and the uplink's own address at once.
	topo := lab.Setup(t, lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "10.231.200.0/24"}},
		Containers: []lab.ContainerConfig{{}},
	})
	c0, ext, br := topo.Containers[0], topo.Externals[0], topo.Bridges[0].Name
	noAddr := topo.Prefix + "-na"
	if err := topo.Host.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: noAddr}, PeerName: topo.Prefix + "-nb"})
	}); err != nil {
		t.Fatalf("adding %s: %v", noAddr, err)
	}
	c := c0.Addr.String()
	hostAddr := ext.HostAddr.String()
	pin := pinPath(t, topo, bin, "bpfnet-refuse-")
	offBPFFS := filepath.Join(t.TempDir(), "pins")

	for _, tc := range []struct {
		name      string
		bad, good []string
		pin       string // "" is pin
		want      string
	}{
		{"port to no network",
			[]string{"--publish", "8080:10.250.0.2:80"},
			[]string{"--publish", "8080:" + c + ":80"}, "",
			"port 8080->10.250.0.2:80/tcp: container address 10.250.0.2 is in none of the networks"},
		{"host port twice",
			[]string{"--publish", "8080:" + c + ":80", "--publish", "8080:" + c + ":81"},
			[]string{"--publish", "8080:" + c + ":80", "--publish", "8080:" + c + ":81/udp"}, "",
			fmt.Sprintf("port 8080->%s:81/tcp: host port already published by 8080->%s:80/tcp", c, c)},
		{"overlapping ranges",
			[]string{"--publish", "8000-8002:" + c + ":9000-9002", "--publish", "8002-8003:" + c + ":80"},
			[]string{"--publish", "8000-8002:" + c + ":9000-9002", "--publish", "8003-8004:" + c + ":80"}, "",
			fmt.Sprintf("port 8002->%s:80/tcp: host port already published by 8002->%s:9002/tcp", c, c)},
		{"wildcard and specific address",
			[]string{"--publish", "8080:" + c + ":80", "--publish", hostAddr + ":8080:" + c + ":81"},
			[]string{"--publish", "127.0.0.1:8080:" + c + ":80", "--publish", hostAddr + ":8080:" + c + ":81"}, "",
			fmt.Sprintf("port %s:8080->%s:81/tcp: host port already published by 8080->%s:80/tcp (a port on 0.0.0.0 takes it on every address)", hostAddr, c, c)},
		{"masquerade covering the uplink",
			[]string{"--masquerade", "10.231.0.0/16"},
			[]string{"--masquerade", "10.231.200.0/24"}, "",
			fmt.Sprintf("--masquerade 10.231.0.0/16 covers the address %s of uplink %s: the host's own traffic would be taken for a container's", hostAddr, ext.Uplink)},
		{"uplink without an address",
			[]string{"--uplink", noAddr},
			[]string{"--uplink", ext.Uplink}, "",
			fmt.Sprintf("uplink %s has no IPv4 address to masquerade with", noAddr)},
		{"bridge that does not exist",
			[]string{"--bridge", topo.Prefix + "-nobr"},
			[]string{"--bridge", br}, "",
			fmt.Sprintf("bridge %s-nobr does not exist", topo.Prefix)},
		{"pin path off bpffs",
			nil, nil, offBPFFS,
			fmt.Sprintf("pin path %s is not on bpffs (%s is on another filesystem; mount one with mount -t bpf bpf /sys/fs/bpf)", offBPFFS, filepath.Dir(offBPFFS))},
	} {
		for _, dp := range datapaths {
			t.Run(tc.name+"/"+dp, func(t *testing.T) {
				args := func(extra []string, pin string) []string {
					a := []string{"run", "--datapath", dp, "--pin-path", pin, "--metrics-addr", ""}
					if !hasFlag(extra, "--bridge") {
						a = append(a, "--bridge", br)
					}
					if !hasFlag(extra, "--uplink") {
						a = append(a, "--uplink", ext.Uplink)
					}
					return append(a, extra...)
				}
				badPin := pin
				if tc.pin != "" {
					badPin = tc.pin
				}
				var stderr bytes.Buffer
				// A daemon that started instead is stopped, and fails the test.
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				cmd := topo.Host.Command(ctx, bin, args(tc.bad, badPin)...)
				cmd.Stderr = &stderr
				err := cmd.Run()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Fatalf("bpfnet run %v: %v, want exit status 1\n%s", tc.bad, err, stderr.String())
				}
				if got, want := stderr.String(), "bpfnet: "+tc.want+"\n"; got != want {
					t.Errorf("bpfnet run %v said\n%q\nwant the one line\n%q", tc.bad, got, want)
				}
				if _, err := os.Stat(badPin); !os.IsNotExist(err) {
					t.Errorf("the refused start left %s (%v)", badPin, err)
				}
				checkUntouched(t, topo)

				// The corrected command starts; the off-bpffs case's twin is
				// the same command on bpffs.
				good := topo.Host.Command(context.Background(), bin, args(tc.good, pin)...)
				ready := readyWatch(t, good)
				if err := good.Start(); err != nil {
					t.Fatal(err)
				}
				ready()
				good.Process.Signal(syscall.SIGTERM)
				if err := good.Wait(); err != nil {
					t.Fatalf("bpfnet run %v exited with %v", tc.good, err)
				}
				out, err := topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).CombinedOutput()
				if err != nil {
					t.Fatalf("bpfnet down: %v\n%s", err, out)
				}
				checkUntouched(t, topo)
			})
		}
	}
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag {
			return true
		}
	}
	return false
}

// checkUntouched fails unless no interface of the lab's host namespace has
// a tcx program or a clsact qdisc, and iptables has no chain there.
func checkUntouched(t *testing.T, topo *lab.Topology) {
	t.Helper()
	err := topo.Host.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		if len(links) < 4 {
			return fmt.Errorf("only %d interfaces in the lab's host namespace: the check would prove nothing", len(links))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	atts, err := topo.Host.TCAttachments()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		t.Errorf("attached in the lab's host namespace: %s", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := topo.Host.Command(ctx, "iptables-save").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, ":BPFNET") || strings.HasPrefix(line, "-A ") {
			t.Errorf("iptables in the lab's host namespace has %s", line)
		}
	}
}
